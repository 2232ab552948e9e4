"""Before/after on the HTTP hot path: this tree's server against another checkout's, both up at once, wrk
alternating between them (the order flips each round); req/s and server CPU per request from /proc.

    git archive main | tar -x -C /tmp/base && cp qe_appliance/_core/*.so /tmp/base/qe_appliance/_core/
    .venv/bin/python bench/http_ab.py --base /tmp/base [--rounds 6] [--duration 4]

Each tree's own bench/http_bench.py seeds its store, writes its config (rate limit off) and starts its server,
so each server runs that tree's code. CPU per request (user + system time of the server process over the run,
divided by requests) moves less with other load on the machine than req/s does.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import statistics
import sys
import tempfile
from pathlib import Path
from types import ModuleType

THIS_TREE = Path(__file__).resolve().parent.parent
CONNECTIONS = 16
THREADS = 2
KEYS = 1000


def http_bench_of(tree: Path, name: str) -> ModuleType:
    """`tree`'s bench/http_bench.py, imported under `name` (each tree's copy starts its own tree's server)."""
    sys.path.insert(0, str(tree / "bench"))
    spec = importlib.util.spec_from_file_location(name, tree / "bench" / "http_bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="the checkout to compare against")
    parser.add_argument("--rounds", type=int, default=6, help="rounds, each one wrk run per tree (default 6)")
    parser.add_argument("--duration", type=int, default=4, help="seconds per wrk run (default 4)")
    args = parser.parse_args()
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    trees = {"base": args.base.resolve(), "this": THIS_TREE}
    work = Path(tempfile.mkdtemp(prefix="aqe-http-ab-"))
    benches = {name: http_bench_of(tree, f"http_bench_{name}") for name, tree in trees.items()}
    servers = {}
    try:
        for name, bench in benches.items():
            port = bench.free_port()
            bench.seed_store(work / name, KEYS)
            config = bench.write_config(work / name, port, {"rateLimit": {"requestsPerSecond": 0}})
            servers[name] = bench.start_server(name, bench.ours_command(config, port), port, work)
        for name, bench in benches.items():
            bench.wait_ready(servers[name])
            bench.run_wrk(f"http://127.0.0.1:{servers[name].port}/mcp", CONNECTIONS, THREADS, 1, KEYS)  # warm-up
        rps: dict[str, list[float]] = {name: [] for name in trees}
        cpu_us: dict[str, list[float]] = {name: [] for name in trees}
        for n in range(args.rounds):
            for name in list(trees) if n % 2 == 0 else list(reversed(trees)):
                server = servers[name]
                before = cpu_s(server.process.pid)
                run = benches[name].run_wrk(f"http://127.0.0.1:{server.port}/mcp", CONNECTIONS, THREADS,
                                            args.duration, KEYS)
                rps[name].append(run.rps)
                cpu_us[name].append((cpu_s(server.process.pid) - before) / max(run.requests, 1) * 1e6)
                print(f"round {n + 1} {name}: {run.rps:.0f} req/s, {cpu_us[name][-1]:.1f} us CPU/req, "
                      f"p99 {run.p99_us / 1000:.2f} ms, errors {run.errors}", flush=True)
    finally:
        for name, server in servers.items():
            benches[name].stop_server(server)
    for name in trees:
        print(f"{name}: median {statistics.median(rps[name]):.0f} req/s, {statistics.median(cpu_us[name]):.1f} us "
              f"CPU/req (wrk -c{CONNECTIONS} -t{THREADS}, {args.rounds} rounds of {args.duration} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
