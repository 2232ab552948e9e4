"""An agent: a worker process serving compute calls on a unix socket, one thread per connection.

Started from the forkserver (tool modules preloaded, so a new agent is ready in milliseconds). It runs
until its parent closes the listening socket or sends SIGTERM; it never touches the server's databases.
"""

from __future__ import annotations

import ctypes
import importlib
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from qe_appliance import sandbox
from qe_appliance.fleet import rpc
from qe_appliance.fleet.compute import lookup
from qe_appliance.proctitle import set_title
from qe_appliance.tools.base import ToolError

# Marks an error that is the caller's input, not the agent's fault (it does not count toward ejection).
INPUT_ERROR = "input: "


# How long a cancelled call may take to stop before the agent gives up on it and exits (the fleet then
# starts a fresh agent): its process groups are killed at once, pure Python gets an exception raised into
# it, and only code stuck in one long C call outlasts both.
CANCEL_GRACE_S = 1.5


class _InFlight:
    """The call a connection is running: its worker thread and the sandbox scope of its child processes."""

    def __init__(self, conn: socket.socket, call: rpc.Call) -> None:
        self.conn = conn
        self.call = call
        self.scope = sandbox.Scope()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._work, daemon=True, name=f"call-{call.id}")

    def _work(self) -> None:
        # A traced call's times go back with its result: the server records the span (see tracing.py).
        started = time.time_ns() if self.call.trace else 0
        with self.scope:
            try:
                result = _run(self.call)
            except _CallCancelled:
                result = None
        if result is not None and started:
            result.started_ns, result.ended_ns = started, time.time_ns()
        self.done.set()
        if result is None or self.scope.cancelled:
            return
        try:
            self.conn.sendall(rpc.frame(result))
        except OSError:
            pass  # the server closed the connection: it no longer wants this answer

    def cancel(self) -> None:
        """Stop the call: kill its process groups, then interrupt its Python code; exit if both fail."""
        self.scope.cancel()
        if self.done.wait(0.2):
            return
        ident = self.thread.ident
        if ident is not None:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(_CallCancelled))
        if not self.done.wait(CANCEL_GRACE_S):
            print(f"agent: cancelled call {self.call.id} ({self.call.fn}) did not stop; exiting", file=sys.stderr)
            os._exit(3)


class _CallCancelled(BaseException):
    """Raised into a call's thread when the server cancels it (a BaseException, so tools do not catch it)."""


def _serve_connection(conn: socket.socket) -> None:
    """Read calls and run each in its own thread; the connection closing while one runs cancels it."""
    running: _InFlight | None = None
    with conn:
        while True:
            try:
                raw = rpc.recv_frame(conn)
            except (OSError, ValueError):
                raw = None
            if raw is None:
                if running is not None and not running.done.is_set():
                    running.cancel()
                return
            try:
                call = rpc.call_decoder.decode(raw)
            except Exception as exc:  # a malformed frame ends this connection only
                conn.sendall(rpc.frame(rpc.Result(0, False, error=f"bad request frame: {exc}")))
                return
            if call.op == "ping":
                conn.sendall(rpc.frame(_run(call)))
                continue
            # One call in flight per connection: the next frame comes after this call's answer, or never.
            running = _InFlight(conn, call)
            running.thread.start()


def _run(call: rpc.Call) -> rpc.Result:
    try:
        if call.op == "ping":
            return rpc.Result(call.id, True, os.getpid())
        if call.op == "sleep":  # lets tests hold an agent busy or make it hang
            scope = sandbox.current_scope()
            if scope is None:
                time.sleep(float(call.payload))
            else:
                scope.wait(float(call.payload))
            return rpc.Result(call.id, True, None)
        if call.op == "call":
            return rpc.Result(call.id, True, lookup(call.fn)(call.payload))
        return rpc.Result(call.id, False, error=f"unknown op {call.op!r}")
    except ToolError as exc:
        return rpc.Result(call.id, False, error=INPUT_ERROR + str(exc))
    except Exception as exc:
        # The message travels back to the caller; the traceback stays in this agent's stderr, with the trace
        # it belongs to when the server traces.
        if call.trace:
            print(f"agent: {call.fn} failed (traceparent {call.trace})", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        return rpc.Result(call.id, False, error=f"{type(exc).__name__}: {exc}")


def main(socket_path: str, agent_id: str, preload: Sequence[str] = ()) -> None:
    """Entry point in the agent process; `preload` names plugin modules (fleet.preload) to import."""
    _release_forkserver()
    set_title(multiprocessing.current_process().name)  # "agent-2 generalist", named so by the fleet
    # Die with the forkserver at once (it ends with the server), and list the process groups our calls
    # start, so the fleet can kill them if we die first.
    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    sandbox.record_groups(sandbox.groups_file(Path(socket_path)))
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    for module in preload:
        importlib.import_module(module)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the server, which stops us in order
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    os.chmod(socket_path, 0o600)
    listener.listen(128)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_serve_connection, args=(conn,), daemon=True, name=f"{agent_id}-conn").start()


def _release_forkserver() -> None:
    """Close our copy of the forkserver's "alive" pipe.

    CPython hands every forked child that pipe's write end, so the forkserver lives as long as any agent,
    while agents live as long as the forkserver (their parent): after a kill -9 of the server neither
    would ever exit. Without our copy, the forkserver ends with the server and the agents follow it.
    """
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(fd, int):
        try:
            os.close(fd)
        except OSError:
            pass
        setattr(server, "_forkserver_alive_fd", None)  # noqa: B010 (a private attribute of CPython's)


def _watch_parent(parent: int) -> None:
    # The forkserver is our parent and exits with the server, even on kill -9: then so do we.
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)
