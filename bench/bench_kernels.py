"""Each Cython kernel of _core/ against its pure-Python twin (bench/kernel_twins.py), in the same run.

Run from the repository root after `python setup.py build_ext --inplace`:
    python bench/bench_kernels.py [--rounds 7] [--ms 30]
Rounds are interleaved (every case once per round, the order rotated each round) and each figure is the
median over rounds of the process CPU time per call (steadier than wall time on a shared machine), minus
the empty loop around the call. Before timing, each twin is checked to answer as its kernel does.
"""

from __future__ import annotations

import argparse
import math
import platform
import random
import shlex
import statistics
import sys
import time
import timeit
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_registry import DESIGN_TOOLS, DESIGN_TYPOS, _spec, resolving  # noqa: E402
from kernel_twins import PyBalancer, PyLogLinear, PyLRU, PyToolIndex, py_exceeds_depth  # noqa: E402

from qe_appliance._core.balancer import STRATEGIES, Balancer  # noqa: E402
from qe_appliance._core.histogram import Histogram  # noqa: E402
from qe_appliance._core.jsondepth import exceeds_depth  # noqa: E402
from qe_appliance._core.lru import LRUCache  # noqa: E402
from qe_appliance.mcp.dispatcher import DEFAULT_MAX_JSON_DEPTH  # noqa: E402
from qe_appliance.registry import ToolRegistry  # noqa: E402

CATEGORY = "test-generation"
AGENTS = 50
# The body bench/wrk_tools_call.lua sends: a 2026-07-28 tools/call of qe_memory_retrieve.
TOOLS_CALL = (
    b'{"jsonrpc":"2.0","id":12345,"method":"tools/call","params":{"name":"qe_memory_retrieve",'
    b'"arguments":{"key":"key-17","namespace":"bench"},"_meta":{"io.modelcontextprotocol/protocolVersion":'
    b'"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":'
    b'{"name":"wrk-bench","version":"1.0"}}}}'
)


@dataclass
class Case:
    """`stmt` run once per item of `xs` (bound to `x`), `loops` times per measurement."""

    group: str
    label: str
    stmt: str
    env: dict[str, Any]
    xs: list[Any]
    loops: int = 1
    kernel: bool | None = None  # True: the kernel; False: its twin; None: a reference point

    def measure(self) -> float:
        env = {**self.env, "xs": self.xs}
        timed = timeit.Timer(f"for x in xs: {self.stmt}", globals=env, timer=time.process_time)
        empty = timeit.Timer("for x in xs: pass", globals=env, timer=time.process_time)
        spent = timed.timeit(self.loops) - empty.timeit(self.loops)
        return max(spent, 0.0) / (self.loops * len(self.xs)) * 1e9


def sized(case: Case, ms: float) -> Case:
    """Set `loops` so one measurement takes about `ms` milliseconds."""
    once = max(case.measure(), 1.0) * len(case.xs) / 1e6
    case.loops = max(1, math.ceil(ms / once))
    return case


def body_cases() -> list[Case]:
    cases = []
    limit = DEFAULT_MAX_JSON_DEPTH
    # A memory store of a 1 MiB document: long strings, few brackets.
    document = msgspec.json.encode({"text": "x\\\"y [not a bracket] " * 50_000, "tags": ["a", "b"]})
    big = TOOLS_CALL.replace(b'"arguments":{', b'"arguments":{"value":' + document + b",")
    # 2,000 small objects in an array: many brackets, shallow.
    rows = msgspec.json.encode({"rows": [{"id": i, "tags": ["x"]} for i in range(2_000)]})
    many = TOOLS_CALL.replace(b'"arguments":{', b'"arguments":{"value":' + rows + b",")
    bodies = {
        f"typical tools/call ({len(TOOLS_CALL)} B)": TOOLS_CALL,
        f"1 MiB string argument ({len(big) / 2**20:.1f} MiB)": big,
        f"2,000 objects in an array ({len(many) // 1000} kB)": many,
    }
    for name, body in bodies.items():
        assert exceeds_depth(body, limit) == py_exceeds_depth(body, limit) is False
        env = {"kernel": exceeds_depth, "twin": py_exceeds_depth, "decode": msgspec.json.decode, "limit": limit}
        group = f"jsondepth: {name}"
        cases += [
            Case(group, "exceeds_depth (kernel)", "kernel(x, limit)", env, [body], kernel=True),
            Case(group, "py_exceeds_depth (twin)", "twin(x, limit)", env, [body], kernel=False),
            Case(group, "msgspec.json.decode of the body", "decode(x)", env, [body]),
        ]
    deep = b"[" * 100 + b"]" * 100
    assert exceeds_depth(deep, limit) and py_exceeds_depth(deep, limit)
    return cases


def registry_cases() -> list[Case]:
    specs = [_spec(name, category) for name, category in DESIGN_TOOLS]
    names = [spec.name for spec in specs]
    kernel = ToolRegistry(specs)
    typos = resolving(kernel, DESIGN_TYPOS)
    twin = PyToolIndex(specs, kernel._matcher.resolve)
    for name in names + typos:
        assert kernel.resolve(name) == twin.resolve(name), name
    env = {"kernel": kernel.resolve, "twin": twin.resolve, "reference": {s.name: s for s in specs}.__getitem__}
    exact = "registry: exact name (14 design tools)"
    typo = "registry: cached typo"
    return [
        Case(exact, "dict[name] (reference)", "reference(x)", env, names),
        Case(exact, "ToolRegistry.resolve (kernel)", "kernel(x)", env, names, kernel=True),
        Case(exact, "PyToolIndex.resolve (twin)", "twin(x)", env, names, kernel=False),
        Case(typo, "ToolRegistry.resolve (kernel)", "kernel(x)", env, typos, kernel=True),
        Case(typo, "PyToolIndex.resolve (twin)", "twin(x)", env, typos, kernel=False),
    ]


def lru_cases() -> list[Case]:
    keys = [f"key-{i}" for i in range(800)]
    churn = [f"churn-{i}" for i in range(1000)]
    kernel_hot, twin_hot = LRUCache(1000), PyLRU(1000)
    kernel_small, twin_small = LRUCache(100), PyLRU(100)
    for key in keys:
        kernel_hot.put(key, key)
        twin_hot.put(key, key)
    for key in churn:
        kernel_small.put(key, key)
        twin_small.put(key, key)
    assert kernel_small.keys() == list(twin_small._map) and kernel_small.evictions == twin_small.evictions
    env = {"kh": kernel_hot.get, "th": twin_hot.get, "ks": kernel_small.put, "ts": twin_small.put}
    return [
        Case("lru: get, hit (800 of 1,000 held)", "LRUCache.get (kernel)", "kh(x)", env, keys, kernel=True),
        Case("lru: get, hit (800 of 1,000 held)", "PyLRU.get (twin)", "th(x)", env, keys, kernel=False),
        Case("lru: put, evicting (1,000 keys, 100 held)", "LRUCache.put (kernel)", "ks(x, x)", env, churn,
             kernel=True),
        Case("lru: put, evicting (1,000 keys, 100 held)", "PyLRU.put (twin)", "ts(x, x)", env, churn,
             kernel=False),
    ]


def warmed(cls: Any, strategy: str) -> Any:
    """50 agents with a latency history, as bench_balancer.py warms its fleet."""
    balancer = cls(strategy, seed=1)
    for i in range(AGENTS):
        balancer.add(f"agent-{i}", 1_000_000_000, [CATEGORY, "coverage-analysis"])
    for i in range(AGENTS * 4):
        balancer.finish(balancer.pick(CATEGORY, 0.0), 0.001 * (1 + i % 5), True, 0.0)
    return balancer


def balancer_cases() -> list[Case]:
    cases = []
    steps = list(range(1000))
    for strategy in STRATEGIES:
        kernel, twin = warmed(Balancer, strategy), warmed(PyBalancer, strategy)
        if strategy == "round-robin":
            assert [kernel.pick(CATEGORY, 1.0) for _ in range(60)] == [twin.pick(CATEGORY, 1.0) for _ in range(60)]
        env = {"kp": kernel.pick, "kf": kernel.finish, "tp": twin.pick, "tf": twin.finish, "cat": CATEGORY}
        group = f"balancer: pick + finish, {strategy}, {AGENTS} agents"
        cases += [
            Case(group, "Balancer (kernel)", "kf(kp(cat, 1.0), 0.002, True, 1.0)", env, steps, kernel=True),
            Case(group, "PyBalancer (twin)", "tf(tp(cat, 1.0), 0.002, True, 1.0)", env, steps, kernel=False),
        ]
    return cases


def histogram_cases() -> list[Case]:
    rng = random.Random(7)
    latencies = [rng.lognormvariate(math.log(0.005), 1.2) for _ in range(100_000)]
    full_kernel, full_twin = Histogram(windows=0), PyLogLinear()
    for value in latencies:
        full_kernel.record(value)
        full_twin.record(value)
    for q in (50.0, 99.0, 99.9):
        assert full_kernel.percentile(q) == full_twin.percentile(q), q
    values = latencies[:1000]
    env = {
        "kw": Histogram().record, "tw": PyLogLinear(windows=60).record,
        "kn": Histogram(windows=0).record, "tn": PyLogLinear().record,
        "kp": full_kernel.percentile, "tp": full_twin.percentile,
    }
    windowed = "histogram: record, 60 x 1 s windows (the Monitor's per-tool series)"
    plain = "histogram: record, no windows"
    p99 = "histogram: p99 of 100,000 latencies"
    return [
        Case(windowed, "Histogram (kernel)", "kw(x)", env, values, kernel=True),
        Case(windowed, "PyLogLinear (twin)", "tw(x)", env, values, kernel=False),
        Case(plain, "Histogram (kernel)", "kn(x)", env, values, kernel=True),
        Case(plain, "PyLogLinear (twin)", "tn(x)", env, values, kernel=False),
        Case(p99, "Histogram.percentile (kernel)", "kp(99.0)", env, [None], kernel=True),
        Case(p99, "PyLogLinear.percentile (twin)", "tp(99.0)", env, [None], kernel=False),
    ]


def show(ns: float) -> str:
    return f"{ns / 1000:,.2f} µs" if ns >= 10_000 else f"{ns:,.1f} ns"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds; the median counts (default 7)")
    parser.add_argument("--ms", type=float, default=30.0, help="CPU ms per measurement (default 30)")
    args = parser.parse_args()
    print("$ " + shlex.join([Path(sys.executable).name, *sys.argv]))
    print(f"python {platform.python_version()} on {platform.machine()}, median of {args.rounds} interleaved "
          "rounds, process CPU time per call")
    cases = [sized(case, args.ms) for case in
             registry_cases() + lru_cases() + balancer_cases() + histogram_cases() + body_cases()]
    samples: dict[int, list[float]] = {i: [] for i in range(len(cases))}
    for round_no in range(args.rounds):
        shift = round_no % len(cases)
        for i in list(range(shift, len(cases))) + list(range(shift)):
            samples[i].append(cases[i].measure())
    medians = [statistics.median(samples[i]) for i in range(len(cases))]

    losing = []
    group = None
    for i, case in enumerate(cases):
        if case.group != group:
            group = case.group
            print(f"\n{group}")
            kernel = next((m for c, m in zip(cases, medians, strict=True) if c.group == group and c.kernel), None)
        ratio = ""
        if case.kernel is False and kernel is not None:
            ratio = f"  twin/kernel {medians[i] / kernel:5.1f}x"
            if medians[i] <= kernel:
                losing.append(group)
        elif case.kernel is None and kernel is not None and case.label.startswith("dict"):
            ratio = f"  kernel/dict {kernel / medians[i]:5.2f}x"
        print(f"  {case.label:34} {show(medians[i]):>12}{ratio}")
    print("\nevery kernel beats its twin" if not losing else f"\nthe twin is as fast or faster: {'; '.join(losing)}")
    return 1 if losing else 0


if __name__ == "__main__":
    raise SystemExit(main())
