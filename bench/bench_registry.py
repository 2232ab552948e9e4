"""Microbenchmark of ToolRegistry.resolve: exact, cached typo and fresh fuzzy lookups vs. a plain dict.

Run from the repository root after `python setup.py build_ext --inplace`:
    python bench/bench_registry.py [--repeat 5]
Goals (architecture.md, design targets): exact resolve <= 1 us, fuzzy resolve <= 50 us.
"""

from __future__ import annotations

import argparse
import platform
import random
import shlex
import string
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qe_appliance.config import TOOL_DEFAULTS  # noqa: E402
from qe_appliance.registry import ToolRegistry, UnknownToolError  # noqa: E402
from qe_appliance.tools.base import ToolContext, ToolSpec  # noqa: E402

# The 14 tools of the design's table, in its order (the config holds the table).
DESIGN_TOOLS = [(name, tool.category) for name, tool in TOOL_DEFAULTS.items()]
DESIGN_TYPOS = [
    "qe_memory_retreive",
    "qe_memroy_store",
    "qe_test_genrate",
    "QE_FLEET_STATUS",
    "qe-coverage-gaps",
    "qe_agent_spwan",
    "qe_task_orchestrat",
    "qe_lern_pattern",
]
DOMAINS = ["memory", "learn", "coverage", "quality", "fleet", "agent", "task", "test", "security", "perf"]
EXACT_GOAL_NS = 1_000.0
FUZZY_GOAL_NS = 50_000.0
# Every measurement runs this many lookups per repeat, cycling through the names.
LOOKUPS = {"fast": 200_000, "fuzzy": 2_000}


class NoInput(msgspec.Struct):
    pass


async def _handler(ctx: ToolContext, args: Any) -> None:
    return None


def _spec(name: str, category: str) -> ToolSpec:
    return ToolSpec(
        name=name, title=name, description=name, category=category, input_type=NoInput, handler=_handler
    )


def synthetic_tools(count: int, rng: random.Random) -> list[tuple[str, str]]:
    """Names like qe_fleet_kowbqtre: a domain plus a random word, so typos of one have a clear winner."""
    tools: dict[str, str] = {}
    while len(tools) < count:
        domain = rng.choice(DOMAINS)
        word = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(6, 12)))
        tools[f"qe_{domain}_{word}"] = domain
    return list(tools.items())


def transpose_typo(name: str, rng: random.Random) -> str:
    """Swap two adjacent letters of the last word, the most common typing slip."""
    cut = name.rindex("_") + 1
    i = rng.randrange(cut, len(name) - 1)
    return name[:i] + name[i + 1] + name[i] + name[i + 2 :]


def ns_per_call(fn: Callable[[str], Any], names: list[str], lookups: int, repeat: int) -> float:
    """Best-of-`repeat` ns per fn(name), minus the cost of the bare loop around it."""
    rounds = max(1, lookups // len(names))
    loop = timeit.Timer("for n in names: f(n)", globals={"names": names, "f": fn})
    empty = timeit.Timer("for n in names: f", globals={"names": names, "f": fn})
    best = min(loop.repeat(repeat, rounds))
    overhead = min(empty.repeat(repeat, rounds))
    return max(best - overhead, 0.0) / (rounds * len(names)) * 1e9


def resolving(registry: ToolRegistry, typos: list[str]) -> list[str]:
    """The typos this registry resolves (a benchmark of fuzzy hits must not time refusals)."""
    kept = []
    for typo in typos:
        try:
            registry.resolve(typo)
        except UnknownToolError:
            continue
        kept.append(typo)
    return kept


def bench_set(label: str, tools: list[tuple[str, str]], typos: list[str], repeat: int) -> list[str]:
    """Print one table of timings; return the rows that missed their goal."""
    specs = [_spec(name, category) for name, category in tools]
    names = [name for name, _ in tools]
    reference = {spec.name: spec for spec in specs}
    cached = ToolRegistry(specs, cache_size=max(1000, 2 * len(tools)))
    uncached = ToolRegistry(specs, cache_enabled=False)
    good_typos = resolving(uncached, typos)
    print(f"\n{label}: {len(tools)} tools, {len(good_typos)}/{len(typos)} typos resolve")
    fast, fuzzy = LOOKUPS["fast"], LOOKUPS["fuzzy"]
    rows: list[tuple[str, float, float | None]] = [
        ("dict[name] (reference)", ns_per_call(reference.__getitem__, names, fast, repeat), None),
        ("exact resolve (cache on)", ns_per_call(cached.resolve, names, fast, repeat), EXACT_GOAL_NS),
        ("exact resolve (cache off)", ns_per_call(uncached.resolve, names, fast, repeat), EXACT_GOAL_NS),
        ("cached typo resolve", ns_per_call(cached.resolve, good_typos, fast, repeat), EXACT_GOAL_NS),
        (
            "fresh fuzzy resolve (cache off)",
            ns_per_call(uncached.resolve, good_typos, fuzzy, repeat),
            FUZZY_GOAL_NS,
        ),
    ]
    missed = []
    for row, ns, goal in rows:
        verdict = "" if goal is None else ("ok" if ns <= goal else f"OVER goal {goal:,.0f} ns")
        print(f"  {row:34} {ns:12,.1f} ns   {verdict}")
        if goal is not None and ns > goal:
            missed.append(f"{label}: {row}")
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repeat", type=int, default=5, help="timing repeats; the best one counts (default 5)"
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic tool names (default 7)")
    args = parser.parse_args()
    print("$ " + shlex.join([Path(sys.executable).name, *sys.argv]))
    print(f"python {platform.python_version()} on {platform.machine()}, best of {args.repeat}")
    rng = random.Random(args.seed)
    synthetic = synthetic_tools(1000, rng)
    synthetic_typos = [transpose_typo(name, rng) for name, _ in rng.sample(synthetic, 200)]
    missed = bench_set("design tools", DESIGN_TOOLS, DESIGN_TYPOS, args.repeat)
    missed += bench_set("synthetic tools", synthetic, synthetic_typos, args.repeat)
    print("\nall goals met" if not missed else f"\ngoals missed: {'; '.join(missed)}")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
