"""Start to ready, side by side: spawn our server and the SDK peer N times each (alternating) and time spawn to
the first 200 on GET /readyz. Our server is ready only once its agent fleet is warm.

The package's bytecode is compiled first, as `pip install .` does: with PYTHONDONTWRITEBYTECODE set (the
systemd unit sets it) an editable tree would otherwise recompile every module at every start.

    python bench/startup_bench.py [--runs 10]
"""

from __future__ import annotations

import argparse
import compileall
import statistics
import sys
import tempfile
from pathlib import Path

import http_bench as hb


def measure(name: str, state_dir: Path, workdir: Path) -> float:
    port = hb.free_port()
    command = (
        hb.ours_command(hb.write_config(state_dir, port), port) if name == "ours" else hb.peer_command(state_dir, port)
    )
    server = hb.start_server(name, command, port, workdir)
    try:
        return hb.wait_ready(server)
    finally:
        hb.stop_server(server)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="starts per server (default 10)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    compileall.compile_dir(hb.REPO / "qe_appliance", quiet=1)
    times: dict[str, list[float]] = {"ours": [], "peer": []}
    with tempfile.TemporaryDirectory(prefix="aqe-startup-") as tmp:
        workdir = Path(tmp)
        state_dir = workdir / "state"
        state_dir.mkdir(mode=0o700)
        hb.seed_store(state_dir, 100)
        try:
            for _ in range(args.runs):
                for name in times:
                    times[name].append(measure(name, state_dir, workdir))
        except hb.BenchError as exc:
            print(f"startup_bench: {exc}", file=sys.stderr)
            return 1
    print(f"start to /readyz 200, {args.runs} runs each, alternating (ms)")
    print(f"{'server':<6} {'median':>7} {'min':>7} {'max':>7}")
    for name, values in times.items():
        ms = [v * 1000 for v in values]
        print(f"{name:<6} {statistics.median(ms):7.0f} {min(ms):7.0f} {max(ms):7.0f}")
    ratio = statistics.median(times["peer"]) / statistics.median(times["ours"])
    print(f"ours is ready {ratio:.2f}x sooner than the peer (median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
