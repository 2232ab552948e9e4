"""Pure-Python twins of the Cython kernels in _core/, for bench/bench_kernels.py: the same algorithms and
bookkeeping written the way a careful Python programmer would, so each kernel is timed against what it
replaces. Not part of the package; the tests of the kernels are the behaviour these follow.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

_MISSING = object()


class PyLRU:
    """LRUCache on an OrderedDict (itself C code in CPython), with the same hit/miss/eviction counters."""

    def __init__(self, capacity: int = 1000) -> None:
        self._map: OrderedDict[Any, Any] = OrderedDict()
        self.capacity = capacity
        self.hits = self.misses = self.evictions = 0

    def get(self, key: Any, default: Any = None) -> Any:
        value = self._map.get(key, _MISSING)
        if value is _MISSING:
            self.misses += 1
            return default
        self.hits += 1
        self._map.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        if self.capacity == 0:
            return
        if key in self._map:
            self._map[key] = value
            self._map.move_to_end(key)
            return
        while len(self._map) >= self.capacity:
            self._map.popitem(last=False)
            self.evictions += 1
        self._map[key] = value


class PyToolIndex:
    """ToolIndex: the exact dict, then the LRU of fuzzy-resolved names, then `fuzzy`; same counters and
    sampled timing (one fast lookup in 64 timed, fuzzy ones always)."""

    SAMPLE = 64

    def __init__(self, tools: Iterable[Any], fuzzy: Callable[[str], Any], *, cache_size: int = 1000) -> None:
        self._exact = {tool.name: (tool, False) for tool in tools}
        self.cache = PyLRU(cache_size)
        self.fuzzy = fuzzy
        self.lookups = self.exact_hits = self.cache_hits = self.fuzzy_resolutions = self.misses = 0
        self.total_ns = 0

    def resolve(self, name: str) -> tuple[Any, bool]:
        timed = not self.lookups & (self.SAMPLE - 1)
        start = time.perf_counter_ns() if timed else 0
        self.lookups += 1
        hit = self._exact.get(name)
        if hit is not None:
            self.exact_hits += 1
            if timed:
                self.total_ns += (time.perf_counter_ns() - start) * self.SAMPLE
            return hit
        hit = self.cache.get(name)
        if hit is not None:
            self.cache_hits += 1
            if timed:
                self.total_ns += (time.perf_counter_ns() - start) * self.SAMPLE
            return hit  # type: ignore[no-any-return]
        if not timed:
            start = time.perf_counter_ns()
        try:
            hit = (self.fuzzy(name), True)
        except BaseException:
            self.misses += 1
            self.total_ns += time.perf_counter_ns() - start
            raise
        self.fuzzy_resolutions += 1
        self.cache.put(name, hit)
        self.total_ns += time.perf_counter_ns() - start
        return hit


class _PyAgent:
    __slots__ = ("id", "capacity", "in_flight", "consecutive_failures", "ejections", "available", "has_latency",
                 "ewma_s", "weight", "ejected_until", "completed", "failed", "categories")

    def __init__(self, agent_id: str, capacity: int, categories: tuple[str, ...]) -> None:
        self.id = agent_id
        self.capacity = capacity
        self.in_flight = self.consecutive_failures = self.ejections = self.completed = self.failed = 0
        self.available = True
        self.has_latency = False
        self.ewma_s = self.weight = self.ejected_until = 0.0
        self.categories = categories


class PyBalancer:
    """Balancer: least-connections (scan with random tie-breaks, two random choices above 16 agents),
    response-time (weighted by 1/EWMA latency) and round-robin, capacity awareness, outlier ejection."""

    P2C_THRESHOLD = 16
    P2C_DRAWS = 8

    def __init__(self, strategy: str = "least-connections", *, capacity_aware: bool = True,
                 failures_to_eject: int = 5, base_ejection_s: float = 10.0, max_ejection_s: float = 300.0,
                 ewma_alpha: float = 0.2, seed: int | None = None) -> None:
        self.strategy = strategy
        self.capacity_aware = capacity_aware
        self._failures_to_eject = failures_to_eject
        self._base_ejection_s = base_ejection_s
        self._max_ejection_s = max_ejection_s
        self._alpha = ewma_alpha
        self._random = random.Random(seed)
        self._agents: dict[str, _PyAgent] = {}
        self._groups: dict[str, list[_PyAgent]] | None = None
        self._cursors: dict[str, int] = {}
        self.picks = self.no_candidate = self.ejections = 0

    def add(self, agent_id: str, capacity: int, categories: Iterable[str]) -> None:
        self._agents[agent_id] = _PyAgent(agent_id, capacity, tuple(dict.fromkeys(categories)))
        self._groups = None

    def _pickable(self, agent: _PyAgent, now: float) -> bool:
        return agent.available and agent.ejected_until <= now and (
            not self.capacity_aware or agent.in_flight < agent.capacity
        )

    def _compare_load(self, a: _PyAgent, b: _PyAgent) -> int:
        if self.capacity_aware:
            left, right = a.in_flight * b.capacity, b.in_flight * a.capacity
        else:
            left, right = a.in_flight, b.in_flight
        return (left > right) - (left < right)

    def pick(self, category: str, now: float) -> str | None:
        if self._groups is None:
            self._groups = {}
            for agent in self._agents.values():
                for served in agent.categories:
                    self._groups.setdefault(served, []).append(agent)
        group = self._groups.get(category)
        chosen = None
        if group is not None:
            if self.strategy == "least-connections":
                chosen = self._least_connections(group, now)
            elif self.strategy == "response-time":
                chosen = self._response_time(group, now)
            else:
                chosen = self._round_robin(category, group, now)
        if chosen is None:
            self.no_candidate += 1
            return None
        chosen.in_flight += 1
        self.picks += 1
        return chosen.id

    def _least_connections(self, group: list[_PyAgent], now: float) -> _PyAgent | None:
        if len(group) > self.P2C_THRESHOLD:
            first = None
            for _ in range(self.P2C_DRAWS):
                agent = group[self._random.randrange(len(group))]
                if agent is first or not self._pickable(agent, now):
                    continue
                if first is None:
                    first = agent
                    continue
                order = self._compare_load(agent, first)
                return agent if order < 0 or (order == 0 and self._random.random() < 0.5) else first
        best = None
        ties = 0
        for agent in group:
            if not self._pickable(agent, now):
                continue
            if best is None:
                best, ties = agent, 1
                continue
            order = self._compare_load(agent, best)
            if order < 0:
                best, ties = agent, 1
            elif order == 0:
                ties += 1
                if self._random.randrange(ties) == 0:
                    best = agent
        return best

    def _response_time(self, group: list[_PyAgent], now: float) -> _PyAgent | None:
        pickable = [agent for agent in group if self._pickable(agent, now)]
        if not pickable:
            return None
        best = max((agent.weight for agent in pickable if agent.has_latency), default=0.0)
        unmeasured = best if best > 0.0 else 1.0
        weights = [agent.weight if agent.has_latency else unmeasured for agent in pickable]
        return self._random.choices(pickable, weights)[0]

    def _round_robin(self, category: str, group: list[_PyAgent], now: float) -> _PyAgent | None:
        cursor = self._cursors.get(category, 0)
        for step in range(len(group)):
            i = (cursor + step) % len(group)
            if self._pickable(group[i], now):
                self._cursors[category] = (i + 1) % len(group)
                return group[i]
        return None

    def release(self, agent_id: str) -> None:
        agent = self._agents.get(agent_id)
        if agent is not None and agent.in_flight > 0:
            agent.in_flight -= 1

    def finish(self, agent_id: str, latency_s: float, ok: bool, now: float) -> None:
        if not (math.isfinite(latency_s) and latency_s >= 0.0):
            raise ValueError(f"latency_s must be a finite number of seconds, 0 or more, got {latency_s}")
        agent = self._agents.get(agent_id)
        if agent is None:
            return
        if agent.in_flight > 0:
            agent.in_flight -= 1
        if ok:
            agent.completed += 1
            agent.consecutive_failures = 0
            if agent.has_latency:
                agent.ewma_s += self._alpha * (latency_s - agent.ewma_s)
            else:
                agent.ewma_s = latency_s
                agent.has_latency = True
            agent.weight = 1.0 / max(agent.ewma_s, 1e-6)
            return
        agent.failed += 1
        if agent.ejected_until > now:
            return
        agent.consecutive_failures += 1
        if agent.consecutive_failures >= self._failures_to_eject and self._may_eject(agent, now):
            agent.ejected_until = now + min(self._base_ejection_s * 2.0**agent.ejections, self._max_ejection_s)
            agent.ejections += 1
            agent.consecutive_failures = 0
            self.ejections += 1

    def _may_eject(self, candidate: _PyAgent, now: float) -> bool:
        serving = [agent for agent in self._agents.values() if agent.categories]
        if (sum(agent.ejected_until > now for agent in serving) + 1) * 2 > len(serving):
            return False
        assert self._groups is not None
        for category in candidate.categories:
            group = self._groups[category]
            ejected = sum(agent.ejected_until > now for agent in group)
            other_left = any(
                agent is not candidate and agent.available and agent.ejected_until <= now for agent in group
            )
            if not other_left or (ejected + 1) * 2 > len(group):
                return False
        return True


class PyLogLinear:
    """The histogram's log-linear scheme (64 linear buckets per power of two, 1 µs .. 60 s) in plain
    Python, with the same count, total, min and max; `windows` > 0 adds the ring of per-second windows."""

    SUB = 64
    MIN_EXP = -20
    LOWEST = 1e-6
    HIGHEST = 60.0

    def __init__(self, windows: int = 0) -> None:
        self.counts = [0] * (26 * self.SUB)
        self.count = 0
        self.total = 0.0
        self.min = self.max = 0.0
        self.windows = windows
        self._epochs = [-1] * windows
        self._ring: list[dict[int, int]] = [{} for _ in range(windows)]

    def record(self, seconds: float) -> None:
        if not seconds >= 0.0:
            seconds = 0.0
        mantissa, exponent = math.frexp(min(max(seconds, self.LOWEST), self.HIGHEST))  # mantissa in [0.5, 1)
        index = (exponent - 1 - self.MIN_EXP) * self.SUB + int((mantissa * 2 - 1) * self.SUB)
        self.counts[index] += 1
        if self.count == 0 or seconds < self.min:
            self.min = seconds
        if seconds > self.max:
            self.max = seconds
        self.count += 1
        self.total += seconds
        if self.windows:
            epoch = int(time.monotonic())
            slot = epoch % self.windows
            window = self._ring[slot]
            if self._epochs[slot] != epoch:
                window.clear()
                self._epochs[slot] = epoch
            window[index] = window.get(index, 0) + 1

    def percentile(self, q: float) -> float:
        rank = max(math.ceil(q * self.count / 100), 1)
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                octave, sub = divmod(index, self.SUB)
                return min(max(math.ldexp(1 + (sub + 0.5) / self.SUB, octave + self.MIN_EXP), self.min), self.max)
        return self.max


# A string (escapes honoured) or a bracket: the tokens a depth scan needs, found by the C regex engine.
# The string pattern is the unrolled form, which runs through plain characters without backtracking.
_DEPTH_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]', re.DOTALL)
_OPENERS = frozenset(b"[{")


def py_exceeds_depth(data: bytes, limit: int) -> bool:
    """exceeds_depth in Python: a free bound first (fewer openers than the limit cannot nest past it),
    then a regex tokenizer that skips strings whole."""
    if len(data) <= limit or data.count(b"[") + data.count(b"{") <= limit:
        return False
    depth = 0
    for token in _DEPTH_TOKENS.finditer(data):
        c = token.group()[0]
        if c in _OPENERS:
            depth += 1
            if depth > limit:
                return True
        elif c != 0x22 and depth > 0:  # a closer; 0x22 is a string's opening quote
            depth -= 1
    return False
