"""Balancer (Cython): strategies and their spread, capacity, categories, availability, outlier ejection,
bookkeeping, run-time strategy changes, argument errors, and a stateful check of the in-flight counts.
"""

from __future__ import annotations

from collections import Counter

import msgspec
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from qe_appliance._core.balancer import STRATEGIES, Balancer, BalancerStats

CAT = "test-generation"


def fleet(count: int, strategy: str = "least-connections", capacity: int = 4, **options: object) -> Balancer:
    balancer = Balancer(strategy, seed=42, **options)
    for i in range(count):
        balancer.add(f"a{i}", capacity, [CAT])
    return balancer


def in_flight(balancer: Balancer, now: float = 0.0) -> dict[str, int]:
    return {agent.id: agent.in_flight for agent in balancer.agents(now)}


def spread(balancer: Balancer, picks: int, category: str = CAT, now: float = 0.0) -> Counter[str]:
    """Which agent each of `picks` picks chooses when every call is cancelled straight away."""
    chosen: Counter[str] = Counter()
    for _ in range(picks):
        agent = balancer.pick(category, now)
        assert agent is not None
        chosen[agent] += 1
        balancer.release(agent)
    return chosen


def fail(balancer: Balancer, agent: str, times: int, now: float) -> None:
    for _ in range(times):
        balancer.finish(agent, 0.01, False, now)


def ejected(balancer: Balancer, now: float) -> set[str]:
    return {agent.id for agent in balancer.agents(now) if agent.ejected}


# ---- least-connections ------------------------------------------------------------------------------


def test_least_connections_always_picks_the_least_loaded_agent() -> None:
    balancer = fleet(4, capacity=10)
    for _ in range(30):
        balancer.pick(CAT, 0.0)
        loads = in_flight(balancer).values()
        assert max(loads) - min(loads) <= 1
    balancer.finish("a2", 0.01, True, 0.0)
    balancer.finish("a2", 0.01, True, 0.0)
    assert balancer.pick(CAT, 0.0) == "a2"


def test_capacity_aware_load_is_in_flight_over_capacity() -> None:
    balancer = Balancer(seed=1)
    balancer.add("small", 2, [CAT])
    balancer.add("big", 6, [CAT])
    for _ in range(8):
        balancer.pick(CAT, 0.0)
    assert in_flight(balancer) == {"small": 2, "big": 6}
    assert [agent.load for agent in balancer.agents(0.0)] == [1.0, 1.0]


def test_without_capacity_awareness_load_is_the_raw_in_flight_count() -> None:
    balancer = Balancer(capacity_aware=False, seed=1)
    balancer.add("small", 1, [CAT])
    balancer.add("big", 6, [CAT])
    for _ in range(8):
        balancer.pick(CAT, 0.0)
    assert in_flight(balancer) == {"small": 4, "big": 4}  # past the small agent's capacity


def test_least_connections_breaks_ties_at_random() -> None:
    chosen = spread(fleet(4), 4000)
    assert set(chosen) == {"a0", "a1", "a2", "a3"}
    assert all(800 < count < 1200 for count in chosen.values()), chosen


def test_up_to_16_agents_every_pick_finds_the_idle_one() -> None:
    balancer = fleet(15, capacity_aware=False)
    for _ in range(15 * 3):
        balancer.pick(CAT, 0.0)
    balancer.add("idle", 4, [CAT])
    assert spread(balancer, 500) == {"idle": 500}


def test_above_16_agents_power_of_two_choices_samples_two() -> None:
    balancer = fleet(16, capacity_aware=False)
    for _ in range(16 * 3):
        balancer.pick(CAT, 0.0)
    balancer.pick(CAT, 0.0)  # one agent now has 4 in flight, the most of all
    heaviest = max(in_flight(balancer).items(), key=lambda item: item[1])[0]
    balancer.add("idle", 4, [CAT])
    chosen = spread(balancer, 4000)
    # The idle agent wins whenever it is one of the two sampled: 2 of 17 agents, about 12%.
    assert 0.08 < chosen["idle"] / 4000 < 0.16, chosen["idle"]
    assert heaviest not in chosen  # it loses against whichever other agent it is paired with
    assert len(chosen) == 16


def test_power_of_two_choices_still_finds_the_last_free_agent() -> None:
    balancer = fleet(40, capacity=1)
    picked = {balancer.pick(CAT, 0.0) for _ in range(40)}
    assert len(picked) == 40
    assert balancer.pick(CAT, 0.0) is None


# ---- response-time ----------------------------------------------------------------------------------


def trained(latencies: dict[str, float]) -> Balancer:
    balancer = Balancer("response-time", seed=7, capacity_aware=False)
    for agent, latency in latencies.items():
        balancer.add(agent, 4, [CAT])
        balancer.finish(agent, latency, True, 0.0)
    return balancer


def test_response_time_favours_fast_agents_in_proportion_to_inverse_latency() -> None:
    chosen = spread(trained({"fast": 0.010, "slow": 0.040}), 8000)
    assert 0.77 < chosen["fast"] / 8000 < 0.83, chosen  # weights 1/10 : 1/40 -> 80%


def test_response_time_gives_a_new_agent_the_best_known_weight() -> None:
    balancer = trained({"fast": 0.010, "slow": 0.040})
    balancer.add("new", 4, [CAT])
    chosen = spread(balancer, 9000)
    # Weights 4 : 1 : 4 (the new agent counts as fast until it has a latency).
    assert 0.41 < chosen["new"] / 9000 < 0.48, chosen
    assert 0.41 < chosen["fast"] / 9000 < 0.48, chosen


def test_ewma_follows_successful_latencies_only() -> None:
    balancer = fleet(1, ewma_alpha=0.2)
    assert balancer.agents(0.0)[0].ewma_ms is None
    balancer.finish("a0", 0.100, True, 0.0)
    balancer.finish("a0", 0.200, True, 0.0)
    balancer.finish("a0", 5.0, False, 0.0)
    assert balancer.agents(0.0)[0].ewma_ms == pytest.approx(120.0)


# ---- round-robin ------------------------------------------------------------------------------------


def test_round_robin_rotates_in_the_order_agents_were_added() -> None:
    balancer = fleet(3, "round-robin")
    order = []
    for _ in range(7):
        agent = balancer.pick(CAT, 0.0)
        assert agent is not None
        order.append(agent)
        balancer.finish(agent, 0.01, True, 0.0)
    assert order == ["a0", "a1", "a2", "a0", "a1", "a2", "a0"]


def test_round_robin_keeps_one_cursor_per_category_and_skips_unpickable_agents() -> None:
    balancer = Balancer("round-robin", seed=1)
    balancer.add("a", 4, ["x"])
    balancer.add("b", 4, ["x", "y"])
    balancer.add("c", 4, ["x", "y"])
    picks = [balancer.pick(category, 0.0) for category in ("x", "y", "x", "y", "x")]
    assert picks == ["a", "b", "b", "c", "c"]
    balancer.set_available("a", False)
    assert [balancer.pick("x", 0.0) for _ in range(3)] == ["b", "c", "b"]


# ---- capacity, categories, availability -------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_never_past_capacity_and_none_when_all_are_full(strategy: str) -> None:
    balancer = Balancer(strategy, seed=3)
    for agent, capacity in (("a", 1), ("b", 2), ("c", 3)):
        balancer.add(agent, capacity, [CAT])
    assert all(balancer.pick(CAT, 0.0) is not None for _ in range(6))
    assert in_flight(balancer) == {"a": 1, "b": 2, "c": 3}
    assert balancer.pick(CAT, 0.0) is None
    balancer.finish("b", 0.01, True, 0.0)
    assert balancer.pick(CAT, 0.0) == "b"
    assert balancer.stats().no_candidate == 1


def test_only_agents_serving_the_category_are_picked() -> None:
    balancer = Balancer(seed=1)
    balancer.add("coverage", 8, ["coverage-analysis"])
    balancer.add("generalist", 8, ["coverage-analysis", CAT])
    assert {balancer.pick(CAT, 0.0) for _ in range(5)} == {"generalist"}
    assert balancer.pick("security-scanning", 0.0) is None


def test_unavailable_agents_are_never_picked_until_available_again() -> None:
    balancer = fleet(2)
    balancer.set_available("a0", False)
    assert set(spread(balancer, 50)) == {"a1"}
    balancer.set_available("a1", False)
    assert balancer.pick(CAT, 0.0) is None
    balancer.set_available("a0", True)
    assert balancer.pick(CAT, 0.0) == "a0"
    assert [agent.available for agent in balancer.agents(0.0)] == [True, False]


def test_removed_agents_are_no_longer_picked_or_listed() -> None:
    balancer = fleet(3, "round-robin")
    balancer.remove("a1")
    balancer.remove("not-there")
    assert len(balancer) == 2
    assert {balancer.pick(CAT, 0.0) for _ in range(6)} == {"a0", "a2"}
    assert [agent.id for agent in balancer.agents(0.0)] == ["a0", "a2"]
    balancer.finish("a1", 0.01, True, 0.0)  # a call that outlived its agent is simply dropped


# ---- outlier ejection -------------------------------------------------------------------------------


def test_consecutive_failures_eject_the_agent_for_the_base_time() -> None:
    balancer = fleet(4, failures_to_eject=3, base_ejection_s=10.0)
    fail(balancer, "a0", 2, now=100.0)
    assert ejected(balancer, 100.0) == set()
    fail(balancer, "a0", 1, now=100.0)
    assert ejected(balancer, 100.0) == {"a0"}
    report = balancer.agents(104.0)[0]
    assert (report.ejected_for_s, report.ejections, report.failed) == (6.0, 1, 3)
    assert "a0" not in spread(balancer, 200, now=104.0)
    assert "a0" in spread(balancer, 200, now=110.0)  # back once its time is up
    assert balancer.stats().ejections == 1


def test_ejection_back_off_doubles_up_to_the_maximum() -> None:
    balancer = fleet(2, failures_to_eject=2, base_ejection_s=10.0, max_ejection_s=35.0)
    durations = []
    now = 0.0
    for _ in range(4):
        fail(balancer, "a0", 2, now)
        durations.append(balancer.agents(now)[0].ejected_for_s)
        now += durations[-1]
    assert durations == [10.0, 20.0, 35.0, 35.0]


def test_a_success_resets_the_failure_streak() -> None:
    balancer = fleet(4, failures_to_eject=3)
    fail(balancer, "a0", 2, 0.0)
    balancer.finish("a0", 0.01, True, 0.0)
    assert balancer.agents(0.0)[0].consecutive_failures == 0
    fail(balancer, "a0", 2, 0.0)
    assert ejected(balancer, 0.0) == set()


def test_failures_of_calls_running_during_an_ejection_do_not_extend_it() -> None:
    balancer = fleet(4, failures_to_eject=2)
    fail(balancer, "a0", 2, 0.0)
    fail(balancer, "a0", 5, 1.0)  # calls picked before the ejection, failing late
    assert balancer.agents(1.0)[0].ejections == 1
    assert balancer.agents(10.0)[0].consecutive_failures == 0


def test_never_more_than_half_the_fleet_is_ejected() -> None:
    balancer = fleet(5, failures_to_eject=1)
    for i in range(5):
        fail(balancer, f"a{i}", 1, 0.0)
    assert len(ejected(balancer, 0.0)) == 2
    assert balancer.pick(CAT, 0.0) is not None


def test_the_fleet_wide_half_holds_even_when_each_category_could_spare_one() -> None:
    balancer = Balancer(failures_to_eject=1, seed=1)
    balancer.add("generalist", 4, ["x", "y", "z"])
    for category in ("x", "y", "z"):
        balancer.add(f"{category}-only", 4, [category])
    for category in ("x", "y", "z"):
        fail(balancer, f"{category}-only", 1, 0.0)
    assert ejected(balancer, 0.0) == {"x-only", "y-only"}  # a third would be 3 of 4 agents


def test_never_more_than_half_of_a_category_is_ejected() -> None:
    balancer = Balancer(failures_to_eject=1, seed=1)
    for i in range(6):
        balancer.add(f"cov{i}", 4, ["coverage-analysis"])
    for i in range(3):
        balancer.add(f"gen{i}", 4, [CAT])
    fail(balancer, "gen0", 1, 0.0)
    fail(balancer, "gen1", 1, 0.0)
    assert ejected(balancer, 0.0) == {"gen0"}
    assert balancer.agents(0.0)[7].consecutive_failures == 1  # still counting, ejected once room frees


def test_an_ejection_never_leaves_a_category_without_an_agent() -> None:
    balancer = Balancer(failures_to_eject=1, seed=1)
    for i in range(4):
        balancer.add(f"cov{i}", 4, ["coverage-analysis"])
    balancer.add("tester", 4, [CAT])
    balancer.add("generalist", 4, [CAT, "coverage-analysis"])
    fail(balancer, "tester", 1, 0.0)
    assert ejected(balancer, 0.0) == {"tester"}
    fail(balancer, "generalist", 1, 0.0)
    assert ejected(balancer, 0.0) == {"tester"}


def test_the_last_available_agent_is_never_ejected() -> None:
    balancer = fleet(2, failures_to_eject=1)
    balancer.set_available("a1", False)
    fail(balancer, "a0", 10, 0.0)
    assert ejected(balancer, 0.0) == set()
    assert balancer.pick(CAT, 0.0) == "a0"


def test_a_lone_agent_is_never_ejected() -> None:
    balancer = fleet(1, failures_to_eject=1)
    fail(balancer, "a0", 3, 0.0)
    assert balancer.pick(CAT, 0.0) == "a0"


# ---- bookkeeping ------------------------------------------------------------------------------------


def test_finish_and_release_never_drive_in_flight_below_zero() -> None:
    balancer = fleet(1)
    balancer.release("a0")
    balancer.finish("a0", 0.01, True, 0.0)
    balancer.release("ghost")
    assert balancer.pick(CAT, 0.0) == "a0"
    balancer.release("a0")
    balancer.release("a0")
    report = balancer.agents(0.0)[0]
    assert (report.in_flight, report.completed, report.failed) == (0, 1, 0)


def test_stats_count_picks_and_misses() -> None:
    balancer = fleet(2, capacity=1)
    for _ in range(3):
        balancer.pick(CAT, 0.0)
    balancer.pick("unknown", 0.0)
    stats = balancer.stats()
    assert stats == BalancerStats(
        strategy="least-connections", capacity_aware=True, picks=2, no_candidate=2, ejections=0, agents=2
    )
    # camelCase is for the wire: the status page and the admin socket encode the report.
    assert msgspec.to_builtins(stats) == {
        "strategy": "least-connections",
        "capacityAware": True,
        "picks": 2,
        "noCandidate": 2,
        "ejections": 0,
        "agents": 2,
    }


def test_same_seed_same_picks() -> None:
    def sequence() -> list[str | None]:
        balancer = fleet(8, "response-time", capacity=100)
        return [balancer.pick(CAT, 0.0) for _ in range(50)]

    assert sequence() == sequence()


# ---- run-time changes and errors --------------------------------------------------------------------


def test_strategy_and_capacity_awareness_change_at_run_time() -> None:
    balancer = fleet(3, capacity=1)
    balancer.strategy = "round-robin"
    balancer.capacity_aware = False
    assert [balancer.pick(CAT, 0.0) for _ in range(4)] == ["a0", "a1", "a2", "a0"]
    assert balancer.stats().strategy == "round-robin"
    assert balancer.stats().capacity_aware is False


def test_unknown_strategy_names_the_valid_ones_and_keeps_the_current_one() -> None:
    balancer = fleet(1)
    with pytest.raises(ValueError, match="least-connections, response-time, round-robin"):
        balancer.strategy = "fastest"
    assert balancer.strategy == "least-connections"
    with pytest.raises(ValueError, match="unknown balancer strategy 'random'"):
        Balancer("random")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"failures_to_eject": 0}, "failures_to_eject must be 1 or more"),
        ({"base_ejection_s": 0.0}, "base_ejection_s must be a positive"),
        ({"base_ejection_s": 20.0, "max_ejection_s": 10.0}, "max_ejection_s must be at least"),
        ({"ewma_alpha": 0.0}, r"ewma_alpha must be in \(0, 1\]"),
        ({"ewma_alpha": 1.5}, r"ewma_alpha must be in \(0, 1\]"),
    ],
)
def test_bad_settings_are_refused_with_the_rule(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Balancer(**options)


def test_bad_agents_are_refused_with_what_to_do() -> None:
    balancer = fleet(1)
    with pytest.raises(ValueError, match="already registered; remove it first"):
        balancer.add("a0", 4, [CAT])
    with pytest.raises(ValueError, match="capacity of 1 or more, got 0"):
        balancer.add("b", 0, [CAT])
    with pytest.raises(TypeError, match="wrap it in a list"):
        balancer.add("b", 4, CAT)
    with pytest.raises(KeyError, match="add\\(\\) it to the balancer first"):
        balancer.set_available("b", True)
    with pytest.raises(ValueError, match="latency_s must be"):
        balancer.finish("a0", -1.0, True, 0.0)
    assert len(balancer) == 1


# ---- stateful property ------------------------------------------------------------------------------

AGENT_IDS = [f"agent{i}" for i in range(6)]
CATEGORIES = ["x", "y", "z"]


class BalancerBookkeeping(RuleBasedStateMachine):
    """Random pick/finish/release/add/remove/availability sequences against a model of outstanding picks."""

    def __init__(self) -> None:
        super().__init__()
        self.balancer = Balancer(seed=5, failures_to_eject=2, base_ejection_s=1.0)
        self.capacity: dict[str, int] = {}
        self.outstanding: Counter[str] = Counter()
        self.now = 0.0

    @rule(
        agent=st.sampled_from(AGENT_IDS),
        capacity=st.integers(1, 3),
        categories=st.lists(st.sampled_from(CATEGORIES), max_size=3),
    )
    def add(self, agent: str, capacity: int, categories: list[str]) -> None:
        if agent in self.capacity:
            with pytest.raises(ValueError):
                self.balancer.add(agent, capacity, categories)
            return
        self.balancer.add(agent, capacity, categories)
        self.capacity[agent] = capacity

    @rule(agent=st.sampled_from(AGENT_IDS))
    def remove(self, agent: str) -> None:
        self.balancer.remove(agent)
        self.capacity.pop(agent, None)
        del self.outstanding[agent]

    @rule(category=st.sampled_from(CATEGORIES), strategy=st.sampled_from(STRATEGIES))
    def pick(self, category: str, strategy: str) -> None:
        self.balancer.strategy = strategy
        agent = self.balancer.pick(category, self.now)
        if agent is not None:
            assert category in self.balancer.agents(self.now)[list(self.capacity).index(agent)].categories
            self.outstanding[agent] += 1

    @rule(data=st.data(), ok=st.booleans(), elapsed=st.floats(0.0, 2.0))
    def finish(self, data: st.DataObject, ok: bool, elapsed: float) -> None:
        self.now += elapsed
        busy = sorted(agent for agent, count in self.outstanding.items() if count)
        if busy:
            agent = data.draw(st.sampled_from(busy))
            self.balancer.finish(agent, elapsed, ok, self.now)
            self.outstanding[agent] -= 1

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        busy = sorted(agent for agent, count in self.outstanding.items() if count)
        if busy:
            agent = data.draw(st.sampled_from(busy))
            self.balancer.release(agent)
            self.outstanding[agent] -= 1

    @rule(agent=st.sampled_from(AGENT_IDS), available=st.booleans())
    def set_available(self, agent: str, available: bool) -> None:
        if agent in self.capacity:
            self.balancer.set_available(agent, available)

    @invariant()
    def in_flight_matches_outstanding_picks_within_capacity(self) -> None:
        reports = self.balancer.agents(self.now)
        assert [report.id for report in reports] == list(self.capacity)
        for report in reports:
            assert 0 <= report.in_flight <= self.capacity[report.id]
            assert report.in_flight == self.outstanding[report.id]
        assert sum(report.in_flight for report in reports) == sum(self.outstanding.values())
        assert len(self.balancer) == len(self.capacity)

    @invariant()
    def never_more_than_half_ejected(self) -> None:
        reports = [report for report in self.balancer.agents(self.now) if report.categories]
        assert 2 * sum(report.ejected for report in reports) <= len(reports)


BalancerBookkeeping.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_balancer_bookkeeping = BalancerBookkeeping.TestCase
