"""Running callers' code: who may ask for it (`refusal`), and the limits it runs under (`run_sandboxed`).

Interface (for every tool that executes code a caller sent, e.g. generated tests or candidate calls):

- `refusal(server, caller) -> str | None`: None when this caller may have code run, else the message to
  answer. Over stdio (a server the user started for themselves) it is allowed; over HTTP only for a caller
  that authenticated with a bearer token, or when `server.allowUnauthenticatedCodeExecution: true` says
  every local user may run code as the service user. `server.allowCodeExecution: false` refuses it always.
- `run_sandboxed(argv, cwd, env=..., timeout_s=..., limits=Limits(...), output=path) -> Outcome`: runs
  `argv` in a new session (its own process group), with RLIMIT_CPU / RLIMIT_AS / RLIMIT_FSIZE, no core
  files, PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG (it dies with the thread that started it) and, when the
  platform allows an unprivileged user namespace, no network (a new, empty network namespace). What could
  not be applied is in `Outcome.isolation` and logged once with the reason. At the deadline, or when the
  calling `Scope` is cancelled, the whole process group is killed; it is killed after a normal exit too,
  so nothing the code started outlives the run.
- `Scope`: the agent opens one per call (`with Scope() as scope:`) in the thread running it; `cancel()`
  from another thread kills every group the call started and makes further runs refuse to start.
- `record_groups(path)` / `kill_recorded_groups(path)`: an agent lists its running groups in a file, so
  whoever sees the agent die (the fleet) kills what it left behind.

It does not protect the file system (the code runs as the service user and can read and write what that
user can), nor stop a process that leaves its group with setsid(); it bounds time, memory, file size and,
where available, the network.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

import msgspec

log = logging.getLogger("aqe_mcp.sandbox")

_PR_SET_PDEATHSIG: Final = 1
_PR_SET_NO_NEW_PRIVS: Final = 38
_CLONE_NEWUSER: Final = 0x10000000
_CLONE_NEWNET: Final = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
# Reported by the child through a pipe: what it could not apply, and why.
_NETWORK_NOT_ISOLATED: Final = b"N"


class ServerPolicy(Protocol):
    """The part of `server.*` the policy reads (read-only: the config Structs are frozen)."""

    @property
    def allow_code_execution(self) -> bool: ...
    @property
    def allow_unauthenticated_code_execution(self) -> bool: ...


class Caller(msgspec.Struct, frozen=True):
    """Who asked: over which transport, and whether the server authenticated them (a bearer token)."""

    transport: str  # "stdio", "http" or "in-process"
    authenticated: bool = False
    # The bearer token's digest (None without auth): tasks a caller starts are shown to that caller only.
    principal: str | None = None


STDIO: Final = Caller("stdio", True)
# The server's own user calling a tool in its process (the CLI, tests): as trusted as stdio.
IN_PROCESS: Final = Caller("in-process", True)
UNAUTHENTICATED_HTTP: Final = Caller("http", False)


def refusal(server: ServerPolicy, caller: Caller) -> str | None:
    """Why `caller` may not have code run on this server, or None when it may."""
    if not server.allow_code_execution:
        return (
            "this server does not run callers' code (server.allowCodeExecution: false); call again without "
            "the option that runs code (verify)"
        )
    if caller.transport == "stdio" or caller.authenticated or server.allow_unauthenticated_code_execution:
        return None
    return (
        "running code (verify) needs an authenticated caller over HTTP: configure server.auth tokens and send "
        "Authorization: Bearer <token>, or set server.allowUnauthenticatedCodeExecution: true to let every "
        "client that reaches this port run code as the service user; or call again without verify"
    )


class Limits(msgspec.Struct, frozen=True):
    """Resource limits of one run; None leaves that limit as inherited."""

    cpu_seconds: int | None = None
    address_space_bytes: int | None = 4 * 1024**3
    file_size_bytes: int | None = 256 * 1024**2
    network: bool = False


class Outcome(msgspec.Struct):
    returncode: int
    seconds: float
    timed_out: bool = False
    cancelled: bool = False
    # What was not applied, e.g. "network: not isolated (unshare: Operation not permitted)".
    isolation: list[str] = msgspec.field(default_factory=list)


class Cancelled(Exception):
    """The call this run belongs to was cancelled."""


class Scope:
    """The process groups one call started; `cancel()` (any thread) kills them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: set[int] = set()
        self._cancelled = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, waking early when cancelled; True when cancelled."""
        return self._cancelled.wait(seconds)

    def __enter__(self) -> Scope:
        _local.scope = self
        return self

    def __exit__(self, *exc: object) -> None:
        _local.scope = None

    def _add(self, pgid: int) -> None:
        with self._lock:
            if self.cancelled:
                _kill_group(pgid)
                raise Cancelled("the call was cancelled")
            self._groups.add(pgid)
        _REGISTRY.add(pgid)

    def _remove(self, pgid: int) -> None:
        with self._lock:
            self._groups.discard(pgid)
        _REGISTRY.remove(pgid)

    def cancel(self) -> None:
        with self._lock:
            self._cancelled.set()
            groups = list(self._groups)
        for pgid in groups:
            _kill_group(pgid)


_local = threading.local()


def current_scope() -> Scope | None:
    scope: Scope | None = getattr(_local, "scope", None)
    return scope


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class _GroupRegistry:
    """Every running group of this process, mirrored to a file when `record_groups` named one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: dict[int, str] = {}
        self.path: Path | None = None

    def add(self, pgid: int) -> None:
        with self._lock:
            self._groups[pgid] = _start_time(pgid) or "?"
            self._write()

    def remove(self, pgid: int) -> None:
        with self._lock:
            self._groups.pop(pgid, None)
            self._write()

    def _write(self) -> None:
        if self.path is None:
            return
        text = "".join(f"{pgid} {started}\n" for pgid, started in self._groups.items())
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(text)
        temporary.replace(self.path)


_REGISTRY: Final = _GroupRegistry()


def groups_file(socket_path: Path) -> Path:
    """Where the agent listening on `socket_path` lists its running process groups."""
    return socket_path.with_name(socket_path.name + ".groups")


def record_groups(path: Path) -> None:
    """List this process's running groups in `path` (the agent's `<socket>.groups`)."""
    _REGISTRY.path = path
    path.unlink(missing_ok=True)


def kill_recorded_groups(path: Path) -> int:
    """Kill the groups a dead process recorded in `path`; returns how many were still there.

    A group whose leader still runs with another start time is someone else's (the pid was reused) and
    is left alone; a group whose leader is gone can only be ours while members remain (Linux does not
    reuse a pid that is still a process group id).
    """
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return 0
    killed = 0
    for line in lines:
        pgid_text, _, started = line.partition(" ")
        if not pgid_text.isdigit():
            continue
        pgid = int(pgid_text)
        now = _start_time(pgid)
        if now is not None and now != started:
            continue
        try:
            os.killpg(pgid, signal.SIGKILL)
            killed += 1
        except (ProcessLookupError, PermissionError):
            pass
    path.unlink(missing_ok=True)
    return killed


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot); None when there is no such pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _child_setup(limits: Limits, parent: int, report_fd: int) -> Any:
    """The function run in the child between fork and exec: single-threaded, so unshare() may be called."""

    def setup() -> None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before PDEATHSIG was armed
            os._exit(1)
        _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        for which, value in (
            (resource.RLIMIT_CPU, limits.cpu_seconds),
            (resource.RLIMIT_AS, limits.address_space_bytes),
            (resource.RLIMIT_FSIZE, limits.file_size_bytes),
        ):
            if value is not None:
                _, hard = resource.getrlimit(which)
                capped = value if hard == resource.RLIM_INFINITY else min(value, hard)
                resource.setrlimit(which, (capped, hard))
        if not limits.network:
            problem = _unshare_network()
            if problem:
                os.write(report_fd, _NETWORK_NOT_ISOLATED + problem.encode())
        os.close(report_fd)

    return setup


def _unshare_network() -> str:
    """Enter a new user and network namespace (no interfaces up: no network); '' or why not."""
    uid, gid = os.geteuid(), os.getegid()
    if _libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
        return f"unshare: {os.strerror(ctypes.get_errno())}"
    try:
        # Keep our own uid and gid inside, so files the code writes are owned as before.
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            fd = os.open(f"/proc/self/{name}", os.O_WRONLY)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
    except OSError as exc:
        return f"user namespace mapping: {exc.strerror}"
    return ""


_warned: set[str] = set()


def run_sandboxed(
    argv: Sequence[str],
    cwd: Path,
    *,
    env: Mapping[str, str],
    timeout_s: float,
    limits: Limits,
    output: Path,
) -> Outcome:
    """Run `argv` under `limits` (stdout and stderr to `output`) until it exits, the deadline passes or
    the current Scope is cancelled; its whole process group is killed in every case."""
    scope = current_scope()
    if scope is not None and scope.cancelled:
        raise Cancelled("the call was cancelled")
    started = time.monotonic()
    read_fd, write_fd = os.pipe()
    try:
        with open(output, "wb") as out:
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=(write_fd,),
                preexec_fn=_child_setup(limits, os.getpid(), write_fd),  # noqa: PLW1509 (see _child_setup)
            )
        os.close(write_fd)
        write_fd = -1
        report = _read_all(read_fd)
    finally:
        os.close(read_fd)
        if write_fd != -1:
            os.close(write_fd)
    outcome = Outcome(returncode=0, seconds=0.0)
    if report.startswith(_NETWORK_NOT_ISOLATED):
        reason = f"network: not isolated ({report[1:].decode(errors='replace')})"
        outcome.isolation.append(reason)
        if reason not in _warned:
            _warned.add(reason)
            log.warning("running callers' code without network isolation: %s", reason)
    pgid = proc.pid
    try:
        if scope is not None:
            scope._add(pgid)
        else:
            _REGISTRY.add(pgid)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            outcome.timed_out = True
    except Cancelled:
        pass
    finally:
        _kill_group(pgid)
        proc.wait()
        if scope is not None:
            scope._remove(pgid)
        else:
            _REGISTRY.remove(pgid)
    outcome.returncode = proc.returncode
    outcome.cancelled = scope is not None and scope.cancelled
    outcome.seconds = time.monotonic() - started
    return outcome


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError as exc:
            if exc.errno == errno.EINTR:
                continue
            raise
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
