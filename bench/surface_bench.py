"""Resources and the result size rule under load: how long reading a large coverage report and its gaps as
resources takes, what the size rule (summary + resource links past server.maxResultTextBytes) costs a large
tool result, and whether /healthz keeps answering while the large reads run (nothing blocks the event loop).

    .venv/bin/python bench/surface_bench.py [--files 5000] [--rounds 9]

Servers on loopback, one after the other and alternating: the default limit (32 KiB) and a limit no result
reaches (64 MiB), each asked the same calls through the official Python client (2026-07-28). Prints medians in
ms (the lower of the alternating runs of each kind, as is the slowest /healthz).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import http_bench as hb
from mcp import Client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.sample_reports import lcov_gaps as lcov  # noqa: E402


class Prober(threading.Thread):
    """GET /healthz every 10 ms; the slowest answer says how long the event loop was held."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.url = f"http://{hb.HOST}:{port}/healthz"
        self.worst = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            with urllib.request.urlopen(self.url, timeout=10) as response:
                response.read()
            self.worst = max(self.worst, time.perf_counter() - started)
            time.sleep(0.01)


async def timed(rounds: int, call: Any) -> float:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


async def measure(url: str, report: str, rounds: int) -> dict[str, float]:
    async with Client(url) as client:
        analyzed = await client.call_tool("qe_coverage_analyze", {"content": report, "maxFiles": 10_000})
        rid = analyzed.structured_content["reportId"]
        out: dict[str, float] = {}
        started = time.perf_counter()
        await client.read_resource(f"aqe://coverage/{rid}/gaps", cache_mode="bypass")
        out["read gaps resource (1st, 1 sample: ranking)"] = (time.perf_counter() - started) * 1000
        out["read gaps resource (cached ranking)"] = await timed(
            rounds, lambda: client.read_resource(f"aqe://coverage/{rid}/gaps", cache_mode="bypass"))
        out["read coverage report resource (markdown)"] = await timed(
            rounds, lambda: client.read_resource(f"aqe://coverage/{rid}", cache_mode="bypass"))
        out["qe_coverage_analyze, table of every file"] = await timed(
            rounds, lambda: client.call_tool("qe_coverage_analyze", {"content": report, "maxFiles": 10_000}))
        out["qe_coverage_gaps, 500 gaps"] = await timed(
            rounds, lambda: client.call_tool("qe_coverage_gaps", {"reportId": rid, "minRisk": 0, "limit": 500}))
        out["resources/list"] = await timed(rounds, lambda: client.list_resources(cache_mode="bypass"))
        return out


def run_one(label: str, limit: int, report: str, rounds: int, workdir: Path) -> tuple[dict[str, float], float]:
    port = hb.free_port()
    state = workdir / label
    state.mkdir()
    config = hb.write_config(state, port, {"maxResultTextBytes": limit, "maxBodyBytes": 64 << 20})
    server = hb.start_server(label, hb.ours_command(config, port), port, state)
    try:
        hb.wait_ready(server)
        prober = Prober(port)
        prober.start()
        results = asyncio.run(measure(f"http://{hb.HOST}:{port}/mcp", report, rounds))
        prober.stop.set()
        prober.join()
        return results, prober.worst * 1000
    finally:
        hb.stop_server(server)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=5000, help="files in the coverage report (10 gaps each)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--repeat", type=int, default=2, help="servers of each kind, alternating; the best kept")
    args = parser.parse_args(argv)
    report = lcov(args.files)
    print(f"report: {args.files} files, {args.files * 10} gaps, {len(report.encode()) / 1e6:.1f} MB of LCOV")
    with tempfile.TemporaryDirectory() as tmp:
        # Alternating servers, each measured args.repeat times: a shared machine's load drifts.
        runs: dict[str, tuple[dict[str, float], float]] = {}
        for round_ in range(args.repeat):
            for label, name, limit in (("size rule (32 KiB)", "default", 32_768),
                                       ("no size rule (64 MiB)", "unbounded", 64 << 20)):
                results, worst = run_one(f"{name}-{round_}", limit, report, args.rounds, Path(tmp))
                if label in runs:
                    before, worst_before = runs[label]
                    results = {key: min(value, before[key]) for key, value in results.items()}
                    worst = min(worst, worst_before)
                runs[label] = (results, worst)
    names = list(next(iter(runs.values()))[0])
    print(f"{'median ms':46}" + "".join(f"{label:>24}" for label in runs))
    for name in names:
        print(f"{name:46}" + "".join(f"{results[name]:24.1f}" for results, _ in runs.values()))
    print(f"{'slowest /healthz during the run':46}" + "".join(f"{worst:24.1f}" for _, worst in runs.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
