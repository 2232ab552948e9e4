"""Every peer in one run: our server, the official Python SDK, fastmcp, the official TypeScript SDK and the raw
uvloop + httptools ceiling, each serving qe_memory_retrieve from the same seeded memory.db, in interleaved rounds
(ours, peer 1, peer 2, ..., ours, ...), with the medians and the ratio of ours to each peer.

HTTP (wrk, bench/wrk_tools_call.lua): req/s, p50/p99, CPU µs per call (utime + stime of the server's process
tree from /proc, over the requests wrk completed: the steadiest figure on a shared machine) and start-up (spawn to
the first 200 on GET /readyz; ours is ready only with its fleet warm). stdio (a newline-JSON client in this
process): spawn to the first tool answer, sequential round trips p50/p99, and throughput with 32 calls in flight.

    python bench/peers_bench.py --quick      # ~1.5 min: 2 rounds, 1 s runs, 16 connections
    python bench/peers_bench.py              # 3 rounds, 3 s runs, 1 and 16 connections, stdio too

The TypeScript SDK predates 2026-07-28, so it is called as its era's clients call it (2025-11-25, no handshake
over stateless HTTP; initialize first over stdio); our server is also timed that way over stdio (`ours-2025`).
Node 22 and the TypeScript SDK come from bench/node_peer.py, fastmcp from its own venv (bench/fastmcp_peer.py);
both are installed on first use.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import fastmcp_peer
import http_bench as hb
import node_peer

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STDIO_TIMEOUT_S = 30.0
IN_FLIGHT = 32


@dataclass(frozen=True)
class Target:
    name: str
    protocol: str
    http: Callable[[Path, int], list[str]] | None  # (state dir, port) -> command
    stdio: Callable[[Path], list[str]] | None  # (state dir) -> command
    env: dict[str, str] | None = None


@dataclass
class HttpSample:
    rps: float
    p50_us: int
    p99_us: int
    cpu_us: float
    errors: int


@dataclass
class StdioSample:
    first_answer_s: float
    p50_us: float
    p99_us: float
    calls_per_s: float
    cpu_us: float


@dataclass
class Results:
    ready_s: dict[str, list[float]] = field(default_factory=dict)
    http: dict[tuple[str, int], list[HttpSample]] = field(default_factory=dict)
    stdio: dict[str, list[StdioSample]] = field(default_factory=dict)


def tree_cpu_s(session: int) -> float:
    """CPU seconds (user + system, with reaped children) of every live process in the server's session."""
    total = 0
    for pid in hb.session_pids(session):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        # Fields 14-17 (utime, stime, cutime, cstime) follow the parenthesised command name.
        fields = stat.rsplit(")", 1)[1].split()
        total += sum(int(value) for value in fields[11:15])
    return total / CLOCK_TICKS


def ours_targets() -> list[Target]:
    def http(state_dir: Path, port: int) -> list[str]:
        # One wrk client far exceeds the default per-client rate limit, and no peer has one;
        # bench/security_bench.py measures what the limit costs.
        return hb.ours_command(hb.write_config(state_dir, port, {"rateLimit": {"requestsPerSecond": 0}}), port)

    def stdio(state_dir: Path) -> list[str]:
        return hb.ours_command(hb.write_config(state_dir, hb.free_port()), None)

    return [
        Target("ours", hb.PROTOCOL, http, stdio),
        # The same server called as a 2025-11-25 client calls it, next to the peers of that era (stdio only:
        # over HTTP that era needs a session, which the wrk script does not keep).
        Target("ours-2025", hb.HANDSHAKE_PROTOCOL, None, stdio),
    ]


def peer(name: str, protocol: str, head: list[str], env: dict[str, str] | None = None) -> Target:
    """A peer script taking `--port N --state-dir DIR` for HTTP and `--stdio --state-dir DIR` for stdio."""
    return Target(
        name,
        protocol,
        lambda state_dir, port: [*head, "--port", str(port), "--state-dir", str(state_dir)],
        lambda state_dir: [*head, "--stdio", "--state-dir", str(state_dir)],
        env,
    )


def peer_targets(skip: set[str]) -> list[Target]:
    """The peers not in `skip`, installing Node 22 + the TypeScript SDK and the fastmcp venv when missing."""
    targets: list[Target] = []
    if "sdk" not in skip:
        targets.append(peer("sdk", hb.PROTOCOL, [sys.executable, str(hb.BENCH / "sdk_peer.py")]))
    if "fastmcp" not in skip:
        targets.append(peer("fastmcp", hb.PROTOCOL, [str(fastmcp_peer.python()), str(hb.BENCH / "fastmcp_peer.py")]))
    if "ts" not in skip:
        runtime = node_peer.ensure()
        targets.append(peer("ts", hb.HANDSHAKE_PROTOCOL, runtime.command(hb.BENCH / "ts_peer.cjs"), runtime.env()))
    if "ceiling" not in skip:
        ceiling = [sys.executable, str(hb.BENCH / "ceiling_peer.py")]
        targets.append(Target("ceiling", hb.PROTOCOL, lambda state_dir, port: [*ceiling, "--port", str(port)], None))
    return targets


def http_round(target: Target, args: argparse.Namespace, state_dir: Path, workdir: Path, results: Results) -> None:
    assert target.http is not None
    port = hb.free_port()
    command = target.http(state_dir, port)
    server = hb.start_server(target.name, command, port, workdir, target.env)
    try:
        ready = hb.wait_ready(server)
        results.ready_s.setdefault(target.name, []).append(ready)
        if target.name != "ceiling":  # the ceiling answers one fixed body, whatever the key
            hb.check_answer(server, f"{hb.KEY_PREFIX}0", protocol=target.protocol)
            hb.check_answer(server, f"{hb.KEY_PREFIX}{args.entries - 1}", protocol=target.protocol)
        url = f"http://{hb.HOST}:{port}/mcp"
        if args.warmup > 0:
            hb.run_wrk(url, max(args.connections), args.threads, args.warmup, args.entries, None, target.protocol)
        line = [f"{target.name}: ready {ready * 1000:.0f} ms"]
        for connections in args.connections:
            before = tree_cpu_s(server.process.pid)
            run = hb.run_wrk(url, connections, args.threads, args.duration, args.entries, None, target.protocol)
            cpu = tree_cpu_s(server.process.pid) - before
            sample = HttpSample(run.rps, run.p50_us, run.p99_us, cpu / max(run.requests, 1) * 1e6, run.errors)
            results.http.setdefault((target.name, connections), []).append(sample)
            line.append(
                f"c={connections} {sample.rps:.0f} req/s p50 {sample.p50_us / 1000:.2f} ms "
                f"p99 {sample.p99_us / 1000:.2f} ms {sample.cpu_us:.1f} µs CPU/call errors {sample.errors}"
            )
        if server.process.poll() is not None:
            raise hb.BenchError(
                f"{target.name} died during the run; its log ({server.log}):\n{hb.log_tail(server.log)}"
            )
        print("  " + "; ".join(line), flush=True)
    finally:
        hb.stop_server(server)


class StdioClient:
    """Newline-delimited JSON-RPC over a server's stdin/stdout pipes, read with a timeout."""

    def __init__(self, process: subprocess.Popen[bytes], name: str, log: Path) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process, self.name, self.log = process, name, log
        self.out, self.inp = process.stdin.fileno(), process.stdout.fileno()
        self.buffer = b""

    def send(self, message: dict[str, object]) -> None:
        os.write(self.out, json.dumps(message).encode() + b"\n")

    def send_raw(self, data: bytes) -> None:
        os.write(self.out, data)

    def receive(self) -> dict[str, object]:
        """The next response (notifications and server requests are skipped)."""
        while True:
            while b"\n" not in self.buffer:
                ready, _, _ = select.select([self.inp], [], [], STDIO_TIMEOUT_S)
                chunk = os.read(self.inp, 1 << 16) if ready else b""
                if not chunk:
                    raise hb.BenchError(
                        f"{self.name} over stdio sent no answer within {STDIO_TIMEOUT_S:.0f} s or closed stdout; "
                        f"its log ({self.log}):\n{hb.log_tail(self.log)}"
                    )
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\n", 1)
            message = json.loads(line)
            if "id" in message and ("result" in message or "error" in message):
                return dict(message)

    def call(self, request_id: int, key: str, protocol: str) -> None:
        self.send(hb.call_message(request_id, key, protocol))
        self.expect(self.receive(), key)

    def expect(self, answer: dict[str, object], key: str) -> None:
        if not hb.found_entry(answer.get("result"), key):
            raise hb.BenchError(
                f"{self.name} over stdio answered {str(answer)[:500]} (expected a found entry for {key!r})"
            )


def handshake(client: StdioClient) -> None:
    client.send(
        {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": hb.HANDSHAKE_PROTOCOL,
                "capabilities": {},
                "clientInfo": {"name": "peers-bench", "version": "1.0"},
            },
        }
    )
    answer = client.receive()
    if "result" not in answer:
        raise hb.BenchError(f"{client.name} refused initialize over stdio: {str(answer)[:500]}")
    client.send({"jsonrpc": "2.0", "method": "notifications/initialized"})


def stdio_round(target: Target, args: argparse.Namespace, state_dir: Path, workdir: Path, results: Results) -> None:
    assert target.stdio is not None
    command = target.stdio(state_dir)
    log = workdir / f"{target.name}-stdio.log"
    env = dict(os.environ if target.env is None else target.env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(hb.REPO), env.get("PYTHONPATH", "")) if p)
    key = f"{hb.KEY_PREFIX}0"
    with log.open("wb") as err:
        started = time.monotonic()
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=workdir,
            env=env,
            start_new_session=True,
        )
    try:
        client = StdioClient(process, target.name, log)
        if target.protocol != hb.PROTOCOL:
            handshake(client)
        client.call(1, key, target.protocol)
        first = time.monotonic() - started
        for i in range(args.stdio_warmup):
            client.call(2 + i, f"{hb.KEY_PREFIX}{i % args.entries}", target.protocol)
        # Each phase stops at its call count or after --stdio-seconds, whichever comes first: the slowest
        # peers answer ~100 calls/s here.
        times: list[float] = []
        deadline = time.perf_counter() + args.stdio_seconds
        for i in range(args.stdio_calls):
            begin = time.perf_counter()
            client.call(10_000 + i, f"{hb.KEY_PREFIX}{i % args.entries}", target.protocol)
            times.append(time.perf_counter() - begin)
            if begin > deadline:
                break
        # 32 in flight: each answer sends the next call. One body per key, prepared beforehand so the client
        # does little between reads; its id names the key, and ids in flight differ as --entries > 32.
        # Every answer is still checked.
        bodies = [
            json.dumps(hb.call_message(100_000 + i, f"{hb.KEY_PREFIX}{i}", target.protocol)).encode() + b"\n"
            for i in range(args.entries)
        ]
        cpu_before = tree_cpu_s(process.pid)
        begin = time.perf_counter()
        deadline = begin + args.stdio_seconds
        client.send_raw(b"".join(bodies[:IN_FLIGHT]))
        sent = outstanding = IN_FLIGHT
        total = 0
        while outstanding:
            answer = client.receive()
            client.expect(answer, f"{hb.KEY_PREFIX}{int(str(answer['id'])) - 100_000}")
            total += 1
            outstanding -= 1
            if total + outstanding < args.stdio_calls * 4 and time.perf_counter() < deadline:
                client.send_raw(bodies[sent % args.entries])
                sent += 1
                outstanding += 1
        elapsed = time.perf_counter() - begin
        cpu = tree_cpu_s(process.pid) - cpu_before
        times.sort()
        sample = StdioSample(
            first,
            times[len(times) // 2] * 1e6,
            times[min(len(times) - 1, int(len(times) * 0.99))] * 1e6,
            total / elapsed,
            cpu / total * 1e6,
        )
        results.stdio.setdefault(target.name, []).append(sample)
        print(
            f"  {target.name} stdio: first answer {first * 1000:.0f} ms, p50 {sample.p50_us:.0f} µs, "
            f"p99 {sample.p99_us:.0f} µs, {sample.calls_per_s:.0f} calls/s with {IN_FLIGHT} in flight, "
            f"{sample.cpu_us:.1f} µs CPU/call",
            flush=True,
        )
    finally:
        assert process.stdin is not None
        process.stdin.close()  # an MCP stdio server exits when its stdin closes
        try:
            process.wait(timeout=hb.STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=hb.STOP_TIMEOUT_S)
        for pid in hb.session_pids(process.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if process.stdout is not None:
            process.stdout.close()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio(ours: float, peer: float, higher_is_better: bool) -> str:
    if not ours or not peer or ours != ours or peer != peer:
        return ""
    return f"{ours / peer if higher_is_better else peer / ours:.2f}x"


def print_report(targets: list[Target], args: argparse.Namespace, results: Results) -> None:
    names = [t.name for t in targets if t.http is not None]
    print(f"\nHTTP, medians of {args.rounds} rounds (ratios: how many times better ours is; <1x: the peer is better)")
    for connections in args.connections:
        print(f"\n{connections} connections")
        print(
            "| server | req/s | p50 ms | p99 ms | CPU µs/call | errors | start → ready ms | ours: req/s | CPU | start |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        ours = results.http.get(("ours", connections), [])
        ours_rps = median([s.rps for s in ours])
        ours_cpu = median([s.cpu_us for s in ours])
        ours_ready = median(results.ready_s.get("ours", []))
        for name in names:
            samples = results.http.get((name, connections), [])
            if not samples:
                continue
            rps, cpu = median([s.rps for s in samples]), median([s.cpu_us for s in samples])
            ready = median(results.ready_s.get(name, []))
            ratios = (
                ["", "", ""]
                if name == "ours"
                else [ratio(ours_rps, rps, True), ratio(ours_cpu, cpu, False), ratio(ours_ready, ready, False)]
            )
            print(
                f"| {name} | {rps:,.0f} | {median([s.p50_us for s in samples]) / 1000:.3f} | "
                f"{median([s.p99_us for s in samples]) / 1000:.3f} | {cpu:.1f} | {sum(s.errors for s in samples)} | "
                f"{ready * 1000:.0f} | " + " | ".join(ratios) + " |"
            )
    if not results.stdio:
        return
    print(
        f"\nstdio, medians of {args.rounds} rounds (up to {args.stdio_calls} sequential calls, then up to "
        f"{args.stdio_calls * 4} with {IN_FLIGHT} in flight, each phase at most {args.stdio_seconds:g} s)"
    )
    print(
        f"| server | first answer ms | p50 µs | p99 µs | calls/s ({IN_FLIGHT} in flight) | CPU µs/call "
        "| ours: p50 | p99 | calls/s | CPU | first answer |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = results.stdio.get("ours", [])
    for name, stdio_samples in results.stdio.items():
        first = median([s.first_answer_s for s in stdio_samples])
        p50, rate = median([s.p50_us for s in stdio_samples]), median([s.calls_per_s for s in stdio_samples])
        ratios = ["", "", "", "", ""]
        if name != "ours" and base:
            ratios = [
                ratio(median([s.p50_us for s in base]), p50, False),
                ratio(median([s.p99_us for s in base]), median([s.p99_us for s in stdio_samples]), False),
                ratio(median([s.calls_per_s for s in base]), rate, True),
                ratio(median([s.cpu_us for s in base]), median([s.cpu_us for s in stdio_samples]), False),
                ratio(median([s.first_answer_s for s in base]), first, False),
            ]
        print(
            f"| {name} | {first * 1000:.0f} | {p50:.0f} | {median([s.p99_us for s in stdio_samples]):.0f} | "
            f"{rate:,.0f} | {median([s.cpu_us for s in stdio_samples]):.1f} | " + " | ".join(ratios) + " |"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds, 1 s runs at 16 connections, short stdio")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3; --quick 2)")
    parser.add_argument("--duration", type=int, help="seconds per wrk run, whole (default 3; --quick 1)")
    parser.add_argument("--connections", type=hb.connection_list, help="comma-separated (default 1,16; --quick 16)")
    parser.add_argument(
        "--threads", type=int, default=1, help="wrk threads (default 1: the server gets the other core)"
    )
    parser.add_argument("--warmup", type=int, help="unreported wrk seconds per start, whole (default 1; 0: none)")
    parser.add_argument("--entries", type=int, default=1000, help="memory entries seeded and cycled (default 1000)")
    parser.add_argument(
        "--stdio-calls", type=int, help="sequential stdio calls per round, 4x in flight (default 2000; --quick 500)"
    )
    parser.add_argument("--stdio-seconds", type=float, help="at most this per stdio phase (default 2; --quick 1)")
    parser.add_argument("--stdio-warmup", type=int, default=50, help="unmeasured stdio calls per start (default 50)")
    parser.add_argument("--skip", default="", help="comma-separated peers to leave out: sdk,fastmcp,ts,ceiling")
    parser.add_argument("--no-stdio", action="store_true", help="HTTP only")
    parser.add_argument("--keep-state", action="store_true", help="keep the temporary state dir and logs")
    args = parser.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds or (2 if quick else 3)
    args.duration = args.duration or (1 if quick else 3)
    args.connections = args.connections or ([16] if quick else [1, 16])
    args.warmup = 1 if args.warmup is None else args.warmup
    args.stdio_calls = args.stdio_calls or (500 if quick else 2000)
    args.stdio_seconds = args.stdio_seconds or (1.0 if quick else 2.0)
    args.skip = {name for name in args.skip.split(",") if name}
    unknown = args.skip - {"sdk", "fastmcp", "ts", "ceiling"}
    if unknown:
        parser.error(f"--skip takes sdk, fastmcp, ts or ceiling, not {', '.join(sorted(unknown))}")
    if args.rounds < 1 or args.duration < 1 or args.threads < 1 or args.stdio_calls < 10 or args.stdio_seconds <= 0:
        parser.error("--rounds, --duration, --threads and --stdio-seconds must be positive, --stdio-calls at least 10")
    if args.entries <= IN_FLIGHT:
        parser.error(f"--entries must be more than {IN_FLIGHT}: the calls in flight each read a key of their own")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print("command:", shlex.join([sys.executable, *sys.argv]))
    if shutil.which("wrk") is None:
        print("error: wrk is not installed; install it with `apt-get install -y wrk` and run again", file=sys.stderr)
        return 2
    try:
        targets = [*ours_targets(), *peer_targets(args.skip)]
    except (node_peer.NodeSetupError, RuntimeError) as exc:
        print(f"error: a peer could not be set up: {exc}\n(leave it out with --skip)", file=sys.stderr)
        return 2
    load = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} CPUs, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (other work "
        f"shares the machine), Python {sys.version.split()[0]}"
    )
    # Bytecode first, as `pip install .` leaves it (the peers' site-packages have theirs): with
    # PYTHONDONTWRITEBYTECODE set, an editable tree would otherwise recompile at every start.
    compileall.compile_dir(hb.REPO / "qe_appliance", quiet=1)
    workdir = Path(tempfile.mkdtemp(prefix="aqe-peers-bench-"))
    state_dir = workdir / "state"
    results = Results()
    code = 0
    with hb.interrupt_on_sigterm():
        try:
            hb.seed_store(state_dir, args.entries)
            for number in range(1, args.rounds + 1):
                print(f"round {number}/{args.rounds}", flush=True)
                for target in targets:
                    if target.http is not None:
                        http_round(target, args, state_dir, workdir, results)
                if not args.no_stdio:
                    for target in targets:
                        if target.stdio is not None:
                            stdio_round(target, args, state_dir, workdir, results)
        except hb.BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            code = 2
        except KeyboardInterrupt:
            print("interrupted: stopping the servers", file=sys.stderr)
            code = 130
        finally:
            if args.keep_state or code == 2:
                print(f"state and logs kept in {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    print_report(targets, args, results)
    if code == 0 and any(s.errors for samples in results.http.values() for s in samples):
        print("error: a server answered with errors (non-2xx, socket errors or results not found)", file=sys.stderr)
        code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
