"""Start to ready, side by side: spawn our server and the peers N times each (alternating) and time spawn to
the first 200 on GET /readyz. Our server is ready only once its agent fleet is warm. The peers: the official
Python SDK (`sdk`) and the official TypeScript SDK on Node 22 (`ts`, installed by bench/node_peer.py on first use).

The package's bytecode is compiled first, as `pip install .` does: with PYTHONDONTWRITEBYTECODE set (the
systemd unit sets it) an editable tree would otherwise recompile every module at every start.

    python bench/startup_bench.py [--runs 10] [--peers sdk,ts]
"""

from __future__ import annotations

import argparse
import compileall
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import http_bench as hb
import node_peer
from peers_bench import tree_cpu_s

Command = Callable[[Path, int], tuple[list[str], dict[str, str] | None]]


def commands(peers: list[str]) -> dict[str, Command]:
    """(state dir, port) -> (command, environment) of ours and each peer asked for."""
    found: dict[str, Command] = {
        "ours": lambda state_dir, port: (hb.ours_command(hb.write_config(state_dir, port), port), None)
    }
    if "sdk" in peers:
        found["sdk"] = lambda state_dir, port: (hb.peer_command(state_dir, port), None)
    if "ts" in peers:
        runtime = node_peer.ensure()
        found["ts"] = lambda state_dir, port: (
            runtime.command(hb.BENCH / "ts_peer.cjs", "--port", str(port), "--state-dir", str(state_dir)),
            runtime.env(),
        )
    return found


def measure(name: str, command: Command, state_dir: Path, workdir: Path) -> tuple[float, float]:
    """(seconds from spawn to ready, CPU seconds its process tree used by then): the CPU is steadier than
    the time on a shared machine, and on a busy one it is what the time follows."""
    port = hb.free_port()
    argv, env = command(state_dir, port)
    server = hb.start_server(name, argv, port, workdir, env)
    try:
        ready = hb.wait_ready(server)
        return ready, tree_cpu_s(server.process.pid)
    finally:
        hb.stop_server(server)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="starts per server (default 10)")
    parser.add_argument("--peers", default="sdk,ts", help="comma-separated: sdk, ts (default both)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    peers = [p for p in args.peers.split(",") if p]
    if unknown := set(peers) - {"sdk", "ts"}:
        parser.error(f"unknown peer(s) {', '.join(sorted(unknown))}; use sdk and/or ts")
    compileall.compile_dir(hb.REPO / "qe_appliance", quiet=1)
    try:
        servers = commands(peers)
    except node_peer.NodeSetupError as exc:
        print(f"startup_bench: {exc}", file=sys.stderr)
        return 1
    times: dict[str, list[float]] = {name: [] for name in servers}
    cpu: dict[str, list[float]] = {name: [] for name in servers}
    with tempfile.TemporaryDirectory(prefix="aqe-startup-") as tmp:
        workdir = Path(tmp)
        state_dir = workdir / "state"
        state_dir.mkdir(mode=0o700)
        hb.seed_store(state_dir, 100)
        try:
            for _ in range(args.runs):
                for name, command in servers.items():
                    ready, used = measure(name, command, state_dir, workdir)
                    times[name].append(ready)
                    cpu[name].append(used)
        except hb.BenchError as exc:
            print(f"startup_bench: {exc}", file=sys.stderr)
            return 1
    print(f"start to /readyz 200, {args.runs} runs each, alternating (ms)")
    print(f"{'server':<6} {'median':>7} {'min':>7} {'max':>7} {'CPU ms to ready (median)':>25}")
    for name, values in times.items():
        ms = [v * 1000 for v in values]
        print(f"{name:<6} {statistics.median(ms):7.0f} {min(ms):7.0f} {max(ms):7.0f} "
              f"{statistics.median(cpu[name]) * 1000:25.0f}")
    for name in servers:
        if name != "ours":
            ratio = statistics.median(times[name]) / statistics.median(times["ours"])
            print(f"ours is ready {ratio:.2f}x sooner than {name} (median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
