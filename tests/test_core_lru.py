"""LRUCache (Cython): eviction order, resizing, counters, and a stateful comparison with an OrderedDict."""

from __future__ import annotations

import gc
import weakref
from collections import OrderedDict
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from qe_appliance._core.lru import LRUCache


class Payload:
    """A value that can be weakly referenced, to see when the cache lets go of it."""


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_full_cache_evicts_least_recently_used() -> None:
    cache = LRUCache(3)
    for key in "abc":
        cache.put(key, key.upper())
    assert cache.get("a") == "A"  # "a" is now the newest, so "b" goes first
    cache.put("d", "D")
    assert cache.keys() == ["c", "a", "d"]
    assert "b" not in cache
    assert cache.evictions == 1


def test_put_existing_key_replaces_value_without_eviction() -> None:
    cache = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("a", 10)
    assert cache.keys() == ["b", "a"]
    assert cache.get("a") == 10
    assert cache.evictions == 0


def test_get_counts_hits_and_misses_and_returns_default() -> None:
    cache = LRUCache(2)
    cache.put("a", None)
    assert cache.get("a", "absent") is None  # a stored None is a hit, not a miss
    assert cache.get("zz", "absent") == "absent"
    assert cache.get("zz") is None
    assert (cache.hits, cache.misses) == (1, 2)


def test_pop_removes_and_counts_nothing() -> None:
    cache = LRUCache(3)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.pop("a") == 1
    assert cache.pop("a", "gone") == "gone"
    assert cache.keys() == ["b"]
    assert (cache.hits, cache.misses, cache.evictions) == (0, 0, 0)


def test_shrinking_capacity_evicts_oldest_and_growing_keeps_all() -> None:
    cache = LRUCache(5)
    for i in range(5):
        cache.put(i, i)
    cache.capacity = 2
    assert cache.keys() == [3, 4]
    assert cache.evictions == 3
    cache.capacity = 10
    for i in range(5, 10):
        cache.put(i, i)
    assert len(cache) == 7
    assert cache.capacity == 10


def test_zero_capacity_stores_nothing() -> None:
    cache = LRUCache(0)
    cache.put("a", 1)
    assert len(cache) == 0
    assert cache.get("a") is None


def test_negative_capacity_is_refused() -> None:
    with pytest.raises(ValueError, match="0 or more"):
        LRUCache(-1)
    cache = LRUCache(1)
    with pytest.raises(ValueError, match="0 or more"):
        cache.capacity = -5
    assert cache.capacity == 1


def test_unhashable_key_raises_type_error() -> None:
    with pytest.raises(TypeError):
        LRUCache(2).put(["list"], 1)


def test_clear_keeps_counters_and_cache_stays_usable() -> None:
    cache = LRUCache(2)
    cache.put("a", 1)
    cache.get("a")
    cache.clear()
    assert len(cache) == 0 and cache.keys() == []
    assert cache.hits == 1
    cache.put("b", 2)
    assert cache.keys() == ["b"]


def test_values_are_released_without_the_cycle_collector(no_gc: None) -> None:
    cache = LRUCache(4)
    first, second = Payload(), Payload()
    first_ref, second_ref = weakref.ref(first), weakref.ref(second)
    cache.put("first", first)
    cache.put("second", second)
    del first, second
    cache.clear()
    assert first_ref() is None
    kept = Payload()
    kept_ref = weakref.ref(kept)
    cache.put("kept", kept)
    cache.put("other", Payload())
    del kept, cache
    assert kept_ref() is None
    assert second_ref() is None


KEYS = st.integers(min_value=0, max_value=7)


class LRUAgainstOrderedDict(RuleBasedStateMachine):
    """Random get/put/pop/resize/clear sequences must leave the cache and the model identical."""

    def __init__(self) -> None:
        super().__init__()
        self.cache = LRUCache(3)
        self.model: OrderedDict[int, int] = OrderedDict()
        self.capacity = 3
        self.hits = self.misses = self.evictions = 0

    def _trim(self) -> None:
        while len(self.model) > self.capacity:
            self.model.popitem(last=False)
            self.evictions += 1

    @rule(key=KEYS, value=st.integers())
    def put(self, key: int, value: int) -> None:
        self.cache.put(key, value)
        if self.capacity == 0:
            return
        self.model[key] = value
        self.model.move_to_end(key)
        self._trim()

    @rule(key=KEYS)
    def get(self, key: int) -> None:
        got = self.cache.get(key, -1)
        if key in self.model:
            self.hits += 1
            self.model.move_to_end(key)
            assert got == self.model[key]
        else:
            self.misses += 1
            assert got == -1

    @rule(key=KEYS)
    def pop(self, key: int) -> None:
        assert self.cache.pop(key, -1) == self.model.pop(key, -1)

    @rule(capacity=st.integers(min_value=0, max_value=6))
    def resize(self, capacity: int) -> None:
        self.cache.capacity = capacity
        self.capacity = capacity
        self._trim()

    @precondition(lambda self: len(self.model) > 0)
    @rule()
    def clear(self) -> None:
        self.cache.clear()
        self.model.clear()

    @invariant()
    def same_contents_order_and_counters(self) -> None:
        assert self.cache.keys() == list(self.model)
        assert len(self.cache) == len(self.model)
        assert all((key in self.cache) == (key in self.model) for key in range(8))
        assert (self.cache.hits, self.cache.misses, self.cache.evictions) == (
            self.hits,
            self.misses,
            self.evictions,
        )


LRUAgainstOrderedDict.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_lru_matches_ordered_dict = LRUAgainstOrderedDict.TestCase
