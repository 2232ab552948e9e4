"""Microbenchmark of the Cython latency Histogram against pure-Python baselines: ns per record, µs per
percentile, recent(60) and Prometheus buckets.

Run from the repository root after `python setup.py build_ext --inplace`:
    python bench/bench_histogram.py [--repeat 5] [--calls 500000]
Goals (issue 7, "Latency histograms"): record <= 200 ns, percentile <= 20 µs.
"""

from __future__ import annotations

import argparse
import math
import platform
import random
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernel_twins import PyLogLinear  # noqa: E402

from qe_appliance._core.histogram import HIGHEST, LOWEST, Histogram  # noqa: E402
from qe_appliance.monitoring.monitor import REQUEST_BOUNDS  # noqa: E402

RECORD_GOAL_NS = 200.0
PERCENTILE_GOAL_US = 20.0
# Latencies spread like a busy server's: log-normal around 5 ms, a tail into seconds.
SAMPLES = 100_000


class PyRawSamples:
    """The naive way: keep every sample, sort to answer a percentile."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def record(self, seconds: float) -> None:
        self.samples.append(seconds)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.samples)
        return ordered[max(math.ceil(q * len(ordered) / 100), 1) - 1]


def loop_overhead_ns(calls: int) -> int:
    start = time.perf_counter_ns()
    for _ in range(calls):
        pass
    return time.perf_counter_ns() - start


def best_ns(fn: Callable[[], None], calls: int, repeat: int) -> float:
    """Best-of-`repeat` ns per call of `fn`, the empty loop subtracted."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter_ns() - start - loop_overhead_ns(calls))
    return max(best, 0.0) / calls


def record_ns(record: Callable[[float], None], calls: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for _ in range(calls):
            record(0.0123)
        best = min(best, time.perf_counter_ns() - start - loop_overhead_ns(calls))
    return max(best, 0.0) / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="timing repeats; the best one counts (default 5)")
    parser.add_argument("--calls", type=int, default=500_000, help="record calls per repeat (default 500000)")
    args = parser.parse_args()
    print("$ " + shlex.join([Path(sys.executable).name, *sys.argv]))
    print(f"python {platform.python_version()} on {platform.machine()}, best of {args.repeat}, "
          f"{args.calls:,} records, percentiles over {SAMPLES:,} log-normal latencies")

    rng = random.Random(7)
    latencies = [rng.lognormvariate(math.log(0.005), 1.2) for _ in range(SAMPLES)]
    windowed, plain, py_log, py_raw = Histogram(), Histogram(windows=0), PyLogLinear(), PyRawSamples()
    for histogram in (windowed, plain, py_log, py_raw):
        for value in latencies:
            histogram.record(value)
    queries = max(args.calls // 100, 100)

    rows = [
        ("Histogram, 60 x 1 s windows", record_ns(Histogram().record, args.calls, args.repeat),
         best_ns(lambda: windowed.percentile(99), queries, args.repeat)),
        ("Histogram, no windows", record_ns(Histogram(windows=0).record, args.calls, args.repeat),
         best_ns(lambda: plain.percentile(99), queries, args.repeat)),
        ("Python log-linear (same buckets)", record_ns(PyLogLinear().record, args.calls, args.repeat),
         best_ns(lambda: py_log.percentile(99), max(queries // 10, 10), args.repeat)),
        ("Python raw samples + sort", record_ns(PyRawSamples().record, args.calls, args.repeat),
         best_ns(lambda: py_raw.percentile(99), 5, 1)),
    ]
    print(f"\n  {'implementation':34} {'record ns':>10} {'p99 µs':>10}")
    for name, record, p99 in rows:
        print(f"  {name:34} {record:10,.1f} {p99 / 1000:10,.2f}")
    # Worst case for a percentile: values over the whole range, so the scan crosses nearly every bucket.
    extremes = Histogram(windows=0)
    steps = 10_000
    for i in range(steps):
        extremes.record(LOWEST * (HIGHEST / LOWEST) ** (i / (steps - 1)))
    worst_us = best_ns(lambda: extremes.percentile(99.9), queries, args.repeat) / 1000
    # recent(60) over a full ring: the same latencies spread over 60 one-second windows (test clock hook).
    spread = Histogram()
    for i, value in enumerate(latencies):
        spread._record_at(value, 1000.0 + i % 60)
    recent_us = best_ns(lambda: spread._recent_at(60, 1059.5), queries, args.repeat) / 1000
    buckets_us = best_ns(lambda: windowed.cumulative(REQUEST_BOUNDS), queries, args.repeat) / 1000
    print(f"\n  percentile, worst case (whole range in use): {worst_us:,.2f} µs")
    print(f"  recent(60) over 60 filled windows:           {recent_us:,.2f} µs")
    print(f"  Prometheus buckets ({len(REQUEST_BOUNDS)} bounds):            {buckets_us:,.2f} µs")

    record, p99 = rows[0][1], max(rows[0][2] / 1000, worst_us)
    missed = []
    if record > RECORD_GOAL_NS:
        missed.append(f"record {record:,.0f} ns > {RECORD_GOAL_NS:,.0f} ns")
    if p99 > PERCENTILE_GOAL_US:
        missed.append(f"percentile {p99:,.2f} µs > {PERCENTILE_GOAL_US:,.0f} µs")
    print("\nall goals met" if not missed else f"\ngoals missed: {'; '.join(missed)}")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
