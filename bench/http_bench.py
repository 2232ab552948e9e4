"""Side-by-side HTTP benchmark: our server against the official SDK peer, both serving qe_memory_retrieve.

Both read the same seeded `memory.db`; wrk drives each with bench/wrk_tools_call.lua (a 2026-07-28 tools/call)
and this prints req/s, p50, p99 and errors per connection count, plus startup-to-ready time and idle RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
LUA = BENCH / "wrk_tools_call.lua"
HOST = "127.0.0.1"
PROTOCOL = "2026-07-28"
# The newest revision of the handshake era: what peers built on SDKs without 2026-07-28 speak.
HANDSHAKE_PROTOCOL = "2025-11-25"
NAMESPACE = "bench"
KEY_PREFIX = "key-"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
TARGETS = ("ours", "peer")


class BenchError(Exception):
    """A failure that stops the benchmark; its message says what to do next."""


@dataclass
class WrkRun:
    connections: int
    threads: int
    requests: int
    duration_s: float
    p50_us: int
    p99_us: int
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


@dataclass
class TargetResult:
    name: str
    command: list[str]
    ready_s: float = 0.0
    idle_rss_kib: int = 0
    idle_tree_rss_kib: int = 0
    idle_procs: int = 0
    loaded_rss_kib: int = 0
    runs: list[WrkRun] = field(default_factory=list)


@dataclass
class Server:
    name: str
    command: list[str]
    port: int
    log: Path
    process: subprocess.Popen[bytes]
    started: float


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def ours_command(config: Path, port: int | None) -> list[str]:
    """The installed console script when present (what operators run), else the module from this tree.
    Port None: serve stdio."""
    script = Path(sys.executable).parent / "aqe-v3"
    head = [str(script)] if script.exists() else [sys.executable, "-m", "qe_appliance.cli"]
    transport = ["--stdio"] if port is None else ["--port", str(port)]
    return [*head, "mcp", "start", "--config", str(config), *transport]


def peer_command(state_dir: Path, port: int) -> list[str]:
    return [
        sys.executable,
        str(BENCH / "sdk_peer.py"),
        "--host",
        HOST,
        "--port",
        str(port),
        "--state-dir",
        str(state_dir),
    ]


def write_config(state_dir: Path, port: int, server: dict[str, Any] | None = None) -> Path:
    """`server`: further server.* keys as the YAML spells them, e.g. {"rateLimit": {"requestsPerSecond": 0}}."""
    config = state_dir / "qe-mcp.yaml"
    keys = {"port": port, "stateDir": str(state_dir), **(server or {})}
    config.write_text(json.dumps({"server": keys}, indent=2) + "\n")  # JSON is YAML
    return config


def seed_store(state_dir: Path, count: int) -> None:
    # Imported here: peer_data puts the repository root on sys.path for the appliance's MemoryStore.
    import peer_data

    peer_data.seed(state_dir, count, NAMESPACE, KEY_PREFIX)


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:]) or "(empty log)"


def start_server(
    name: str, command: list[str], port: int, workdir: Path, base_env: dict[str, str] | None = None
) -> Server:
    log = workdir / f"{name}.log"
    env = dict(os.environ if base_env is None else base_env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    started = time.monotonic()
    with log.open("wb") as out:
        # A session of its own, so stopping the server also stops any worker processes it forked.
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env=env, start_new_session=True
        )
    return Server(name, command, port, log, process, started)


def wait_ready(server: Server) -> float:
    """Seconds from spawn to the first 200 on GET /readyz."""
    url = f"http://{HOST}:{server.port}/readyz"
    deadline = server.started + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise BenchError(
                f"{server.name} exited with code {server.process.returncode} before it was ready; "
                f"its log ({server.log}):\n{log_tail(server.log)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if response.status == 200:
                    return time.monotonic() - server.started
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.005)
    raise BenchError(
        f"{server.name} did not answer 200 on {url} within {READY_TIMEOUT_S:.0f} s; "
        f"its log ({server.log}):\n{log_tail(server.log)}"
    )


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        try:
            os.killpg(server.process.pid, signal.SIGTERM)
            server.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=STOP_TIMEOUT_S)
        except ProcessLookupError:
            pass
    # Workers that outlived their parent still carry its session id.
    for pid in session_pids(server.process.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def session_pids(session: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 6 (session) follows the parenthesised command, which may itself contain spaces.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == session:
            pids.append(int(entry.name))
    return pids


def rss_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) if match else 0


def call_message(request_id: int, key: str, protocol: str = PROTOCOL) -> dict[str, Any]:
    """The tools/call wrk sends: with the 2026-07-28 `_meta` envelope, or bare for a handshake-era `protocol`."""
    params: dict[str, Any] = {"name": "qe_memory_retrieve", "arguments": {"key": key, "namespace": NAMESPACE}}
    if protocol == PROTOCOL:
        params["_meta"] = {
            "io.modelcontextprotocol/protocolVersion": PROTOCOL,
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "wrk-bench", "version": "1.0"},
        }
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def request_body(request_id: int, key: str, protocol: str = PROTOCOL) -> bytes:
    return json.dumps(call_message(request_id, key, protocol)).encode()


def request_headers(protocol: str = PROTOCOL) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": protocol,
        "Mcp-Method": "tools/call",
        "Mcp-Name": "qe_memory_retrieve",
        "Mcp-Param-Namespace": NAMESPACE,
    }


REQUEST_HEADERS = request_headers()


def found_entry(result: Any, key: str) -> bool:
    """Whether a tools/call result is the found entry for `key` (structured, or as JSON text)."""
    try:
        content = result.get("structuredContent") or json.loads(result["content"][0]["text"])
    except (AttributeError, ValueError, KeyError, IndexError, TypeError):
        return False
    return (
        isinstance(content, dict)
        and content.get("found") is True
        and content.get("key") == key
        and not result.get("isError")
    )


def check_answer(server: Server, key: str, token: str | None = None, protocol: str = PROTOCOL) -> None:
    """One request shaped like wrk's (with `token` as its bearer token); the result must be a found entry."""
    headers = request_headers(protocol)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"http://{HOST}:{server.port}/mcp", data=request_body(1, key, protocol), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10.0) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        raise BenchError(f"{server.name} did not answer the tools/call check: {exc}") from exc
    try:
        result = json.loads(raw)["result"]
    except (ValueError, KeyError, TypeError):
        result = None
    if status != 200 or not found_entry(result, key):
        raise BenchError(
            f"{server.name} answered the tools/call check with HTTP {status}: "
            f"{raw[:500].decode(errors='replace')}\n(expected a found result for key {key!r}; "
            f"its log is {server.log})"
        )


def wrk_command(
    url: str,
    connections: int,
    threads: int,
    duration: float,
    keys: int,
    token: str | None = None,
    protocol: str = PROTOCOL,
) -> list[str]:
    command = [
        "wrk",
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--latency",
        "-s",
        str(LUA),
        url,
        "--",
        NAMESPACE,
        KEY_PREFIX,
        str(keys),
    ]
    if protocol != PROTOCOL:
        return [*command, token or "-", protocol]
    return [*command, token] if token else command


def run_wrk(
    url: str,
    connections: int,
    threads: int,
    duration: float,
    keys: int,
    token: str | None = None,
    protocol: str = PROTOCOL,
    prefix: Sequence[str] = (),
) -> WrkRun:
    """`prefix`: what runs wrk, e.g. ("taskset", "-c", "0") to pin it to one core."""
    command = [*prefix, *wrk_command(url, connections, threads, duration, keys, token, protocol)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish within {duration + 60:g} s: {shlex.join(command)}") from exc
    match = re.search(r"^WRK_SUMMARY (\{.*\})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or match is None:
        raise BenchError(f"wrk failed (exit {done.returncode}): {shlex.join(command)}\n{done.stdout}{done.stderr}")
    summary: dict[str, Any] = json.loads(match.group(1))
    errors = sum(
        summary[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts", "bad_bodies")
    )
    return WrkRun(
        connections=connections,
        threads=min(threads, connections),
        requests=summary["requests"],
        duration_s=summary["duration_us"] / 1e6,
        p50_us=summary["p50_us"],
        p99_us=summary["p99_us"],
        errors=errors,
    )


def bench_target(
    name: str, command: list[str], port: int, args: argparse.Namespace, workdir: Path, started: list[Server]
) -> TargetResult:
    result = TargetResult(name, command)
    print(f"\n[{name}] {shlex.join(command)}", flush=True)
    server = start_server(name, command, port, workdir)
    started.append(server)
    result.ready_s = wait_ready(server)
    check_answer(server, f"{KEY_PREFIX}0")
    check_answer(server, f"{KEY_PREFIX}{args.entries - 1}")
    pids = session_pids(server.process.pid)
    result.idle_rss_kib = rss_kib(server.process.pid)
    result.idle_tree_rss_kib = sum(rss_kib(pid) for pid in pids)
    result.idle_procs = len(pids)
    print(
        f"[{name}] ready in {result.ready_s * 1000:.0f} ms, idle RSS {result.idle_rss_kib / 1024:.1f} MiB "
        f"({result.idle_procs} process(es), {result.idle_tree_rss_kib / 1024:.1f} MiB together)",
        flush=True,
    )
    url = f"http://{HOST}:{port}/mcp"
    if args.warmup > 0:
        run_wrk(url, max(args.connections), args.threads, args.warmup, args.entries)
    for connections in args.connections:
        run = run_wrk(url, connections, args.threads, args.duration, args.entries)
        result.runs.append(run)
        print(
            f"[{name}] c={connections}: {run.rps:.0f} req/s, p50 {run.p50_us / 1000:.2f} ms, "
            f"p99 {run.p99_us / 1000:.2f} ms, errors {run.errors}",
            flush=True,
        )
    result.loaded_rss_kib = rss_kib(server.process.pid)
    if server.process.poll() is not None:
        raise BenchError(f"{name} died during the run; its log ({server.log}):\n{log_tail(server.log)}")
    stop_server(server)
    return result


def print_report(results: dict[str, TargetResult]) -> None:
    print("\ntarget  conns     req/s    p50 ms    p99 ms   errors  ours/peer req/s")
    peer = {run.connections: run for run in results["peer"].runs} if "peer" in results else {}
    for name, result in results.items():
        for run in result.runs:
            other = peer.get(run.connections)
            ratio = f"{run.rps / other.rps:.2f}x" if name == "ours" and other and other.rps else ""
            print(
                f"{name:<6} {run.connections:>6} {run.rps:>9.0f} {run.p50_us / 1000:>9.3f} "
                f"{run.p99_us / 1000:>9.3f} {run.errors:>8}  {ratio}".rstrip()
            )
    print("\ntarget  ready ms  idle RSS MiB  processes  all processes MiB  RSS after load MiB")
    for name, result in results.items():
        print(
            f"{name:<6} {result.ready_s * 1000:>9.0f} {result.idle_rss_kib / 1024:>13.1f} "
            f"{result.idle_procs:>10} {result.idle_tree_rss_kib / 1024:>18.1f} "
            f"{result.loaded_rss_kib / 1024:>19.1f}"
        )


def connection_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, like 1,16,64: {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"connection counts must be 1 or more: {text!r}")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (default 10)")
    parser.add_argument(
        "--connections",
        type=connection_list,
        default=[1, 16, 64],
        help="connection counts, comma-separated (default 1,16,64)",
    )
    parser.add_argument("--threads", type=int, default=2, help="wrk threads, at most the connections (default 2)")
    parser.add_argument("--entries", type=int, default=1000, help="memory entries seeded and cycled (default 1000)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unreported wrk seconds before measuring")
    parser.add_argument("--only", choices=TARGETS, help="benchmark one server only")
    parser.add_argument("--keep-state", action="store_true", help="keep the temporary state dir and logs")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.threads < 1 or args.entries < 1:
        parser.error("--duration, --threads and --entries must be positive")
    return args


@contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """SIGTERM takes the same cleanup path as Ctrl-C."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print("command:", shlex.join([sys.executable, *sys.argv]))
    if shutil.which("wrk") is None:
        print(
            "error: wrk is not installed; install it with `apt-get install -y wrk` and run again",
            file=sys.stderr,
        )
        return 2
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False).stdout
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {wrk_version.splitlines()[0]}")
    print(
        f"load: {args.duration:g} s per run, connections {args.connections}, {args.threads} wrk threads, "
        f"{args.entries} keys cycled, example: "
        f"{shlex.join(wrk_command(f'http://{HOST}:PORT/mcp', 16, args.threads, args.duration, args.entries))}"
    )

    workdir = Path(tempfile.mkdtemp(prefix="aqe-http-bench-"))
    state_dir = workdir / "state"
    started: list[Server] = []
    results: dict[str, TargetResult] = {}
    code = 0
    with interrupt_on_sigterm():
        try:
            seed_store(state_dir, args.entries)
            for name in TARGETS:
                if args.only and name != args.only:
                    continue
                port = free_port()
                # One wrk client far exceeds the default per-client rate limit, and the peer has none;
                # bench/security_bench.py measures what the limit costs.
                no_limit = {"rateLimit": {"requestsPerSecond": 0}}
                command = (
                    ours_command(write_config(state_dir, port, no_limit), port)
                    if name == "ours"
                    else peer_command(state_dir, port)
                )
                results[name] = bench_target(name, command, port, args, workdir, started)
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            code = 2
        except KeyboardInterrupt:
            print("interrupted: stopping the servers", file=sys.stderr)
            code = 130
        finally:
            for server in started:
                stop_server(server)
            if args.keep_state or code == 2:
                print(f"state and logs kept in {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    if results:
        print_report(results)
    if code == 0 and any(run.errors for result in results.values() for run in result.runs):
        print(
            "error: a server answered with errors (non-2xx, socket errors or results that were not found)",
            file=sys.stderr,
        )
        code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
