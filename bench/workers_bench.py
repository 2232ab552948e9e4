"""One worker against several (server.workers), in interleaved rounds: wrk pinned to one core (`taskset -c 0`)
calls qe_memory_retrieve over HTTP; the server (supervisor, workers, agents) runs on the cores given with
--server-cores (default: every core). Reports req/s, p50/p99 and CPU µs per call (user + system of the
server's whole process tree from /proc, over the requests wrk completed).

    python bench/workers_bench.py                         # 1 vs 2 workers, server on all cores
    python bench/workers_bench.py --server-cores 1        # both on core 1 alone: what a worker costs
    python bench/workers_bench.py --workers 1,2,4 --rounds 5 --duration 5 --connections 32
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import http_bench as hb
from peers_bench import tree_cpu_s

SUPERVISING = re.compile(r"supervising \d+ workers")


def start(workers: int, cores: str | None, state_dir: Path, workdir: Path) -> hb.Server:
    port = hb.free_port()
    config = hb.write_config(state_dir, port, {"rateLimit": {"requestsPerSecond": 0}, "workers": workers})
    command = hb.ours_command(config, port)
    if cores is not None:
        command = ["taskset", "-c", cores, *command]
    server = hb.start_server(f"workers-{workers}", command, port, workdir)
    hb.wait_ready(server)
    if workers > 1:  # /readyz answered by one worker: wait for the supervisor to report them all
        deadline = time.monotonic() + hb.READY_TIMEOUT_S
        while not SUPERVISING.search(server.log.read_text(errors="replace")):
            if time.monotonic() > deadline or server.process.poll() is not None:
                raise hb.BenchError(f"{workers} workers were not ready:\n{hb.log_tail(server.log)}")
            time.sleep(0.02)
    return server


def measure(server: hb.Server, args: argparse.Namespace) -> tuple[float, float, int, int]:
    """(req/s, CPU µs per call, p50 µs, p99 µs) of one wrk run pinned to core 0."""
    url = f"http://{hb.HOST}:{server.port}/mcp"
    if args.warmup:
        hb.run_wrk(url, args.connections, 1, args.warmup, 100, prefix=("taskset", "-c", "0"))
    before = tree_cpu_s(server.process.pid)
    result = hb.run_wrk(url, args.connections, 1, args.duration, 100, prefix=("taskset", "-c", "0"))
    cpu = tree_cpu_s(server.process.pid) - before
    if result.errors:
        raise hb.BenchError(f"wrk saw {result.errors} errors")
    return result.rps, cpu * 1e6 / max(result.requests, 1), result.p50_us, result.p99_us


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    parser.add_argument("--server-cores", help="taskset list for the server, e.g. 1 (default: all cores)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measured wrk run")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured wrk seconds per start")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    results: dict[int, list[tuple[float, float, int, int]]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory(prefix="aqe-workers-") as tmp:
        workdir = Path(tmp)
        state_dir = workdir / "state"
        state_dir.mkdir(mode=0o700)
        hb.seed_store(state_dir, 100)
        try:
            for _ in range(args.rounds):
                for n in counts:
                    server = start(n, args.server_cores, state_dir, workdir)
                    try:
                        results[n].append(measure(server, args))
                    finally:
                        hb.stop_server(server)
        except hb.BenchError as exc:
            print(f"workers_bench: {exc}", file=sys.stderr)
            return 1
    print(f"wrk -c{args.connections} on core 0, server on cores {args.server_cores or 'all'}, "
          f"{args.rounds} rounds x {args.duration:g} s, medians")
    print(f"{'workers':>7} {'req/s':>9} {'CPU µs/call':>12} {'p50 µs':>8} {'p99 µs':>8}")
    base = statistics.median(r[0] for r in results[counts[0]])
    for n in counts:
        rows = results[n]
        rps = statistics.median(r[0] for r in rows)
        print(f"{n:>7} {rps:9.0f} {statistics.median(r[1] for r in rows):12.1f} "
              f"{statistics.median(r[2] for r in rows):8.0f} {statistics.median(r[3] for r in rows):8.0f}"
              f"   ({rps / base:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
