"""Microbenchmark of the Cython Balancer: ns per pick and per pick+finish, by strategy and fleet size.

Run from the repository root after `python setup.py build_ext --inplace`:
    python bench/bench_balancer.py [--repeat 5] [--calls 200000]
Goal (issue 3, "Load balancer"): pick() <= 1 us with 50 agents, for every strategy.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qe_appliance._core.balancer import STRATEGIES, Balancer  # noqa: E402

SIZES = (5, 16, 50, 200)
GOAL_SIZE = 50
PICK_GOAL_NS = 1_000.0
CATEGORY = "test-generation"
# Large enough that timed picks never fill an agent, so every pick takes the normal path.
CAPACITY = 1_000_000_000


def warmed(strategy: str, agents: int) -> Balancer:
    """A fleet with a latency history (1..5 ms) and a few calls in flight, like one under load."""
    balancer = Balancer(strategy, seed=1)
    for i in range(agents):
        balancer.add(f"agent-{i}", CAPACITY, [CATEGORY, "coverage-analysis"])
    for i in range(agents * 4):
        agent = balancer.pick(CATEGORY, 0.0)
        balancer.finish(agent, 0.001 * (1 + i % 5), True, 0.0)
    for _ in range(agents):
        balancer.pick(CATEGORY, 0.0)
    return balancer


def loop_overhead_ns(calls: int) -> int:
    start = time.perf_counter_ns()
    for _ in range(calls):
        pass
    return time.perf_counter_ns() - start


def pick_ns(strategy: str, agents: int, calls: int, repeat: int) -> float:
    """Best-of-`repeat` ns per pick(); each repeat starts from a fresh warmed fleet."""
    best = float("inf")
    for _ in range(repeat):
        pick = warmed(strategy, agents).pick
        start = time.perf_counter_ns()
        for _ in range(calls):
            pick(CATEGORY, 1.0)
        best = min(best, time.perf_counter_ns() - start - loop_overhead_ns(calls))
    return max(best, 0.0) / calls


def pick_finish_ns(strategy: str, agents: int, calls: int, repeat: int) -> float:
    """Best-of-`repeat` ns per pick() followed by finish() of the picked agent (steady state)."""
    balancer = warmed(strategy, agents)
    pick, finish = balancer.pick, balancer.finish
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for _ in range(calls):
            finish(pick(CATEGORY, 1.0), 0.002, True, 1.0)
        best = min(best, time.perf_counter_ns() - start - loop_overhead_ns(calls))
    return max(best, 0.0) / calls


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repeat", type=int, default=5, help="timing repeats; the best one counts (default 5)"
    )
    parser.add_argument("--calls", type=int, default=200_000, help="calls per repeat (default 200000)")
    args = parser.parse_args()
    print("$ " + shlex.join([Path(sys.executable).name, *sys.argv]))
    print(
        f"python {platform.python_version()} on {platform.machine()}, best of {args.repeat}, "
        f"{args.calls:,} calls each, capacity-aware, agents serving 2 categories"
    )
    print(f"\n  {'strategy':18} {'agents':>6} {'pick ns':>10} {'pick+finish ns':>15}")
    missed = []
    for strategy in STRATEGIES:
        for agents in SIZES:
            pick = pick_ns(strategy, agents, args.calls, args.repeat)
            both = pick_finish_ns(strategy, agents, args.calls, args.repeat)
            verdict = ""
            if agents == GOAL_SIZE:
                verdict = "ok" if pick <= PICK_GOAL_NS else f"OVER goal {PICK_GOAL_NS:,.0f} ns"
                if pick > PICK_GOAL_NS:
                    missed.append(f"{strategy} at {agents} agents")
            print(f"  {strategy:18} {agents:6} {pick:10,.1f} {both:15,.1f}   {verdict}")
    print("\nall goals met" if not missed else f"\ngoals missed: {'; '.join(missed)}")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
