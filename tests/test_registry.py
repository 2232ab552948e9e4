"""ToolRegistry: exact, cached and fuzzy resolution, refusals with suggestions, categories, reload, stats."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest

from qe_appliance.config import TOOL_DEFAULTS
from qe_appliance.registry import RegistryStats, ToolRegistry, UnknownToolError
from qe_appliance.tools.base import ToolContext, ToolSpec

# The 14 tools of the design's table, in its order (the config holds the table).
DESIGN_TOOLS = [(name, tool.category) for name, tool in TOOL_DEFAULTS.items()]


class NoInput(msgspec.Struct):
    pass


async def handler(ctx: ToolContext, args: Any) -> None:
    return None


def spec(name: str, category: str) -> ToolSpec:
    return ToolSpec(
        name=name,
        title=name,
        description=f"{name} tool",
        category=category,
        input_type=NoInput,
        handler=handler,
    )


def make_registry(**options: Any) -> ToolRegistry:
    return ToolRegistry([spec(name, category) for name, category in DESIGN_TOOLS], **options)


def counts(stats: RegistryStats) -> tuple[int, int, int, int, int]:
    return (stats.lookups, stats.exact_hits, stats.cache_hits, stats.fuzzy_resolutions, stats.misses)


def test_exact_name_resolves_from_the_index_and_never_fills_the_cache() -> None:
    registry = make_registry(cache_size=1)
    tool, by_fuzzy = registry.resolve("qe_memroy_store")
    assert (tool.name, by_fuzzy) == ("qe_memory_store", True)
    for _ in range(2):
        tool, by_fuzzy = registry.resolve("qe_quality_gate")
        assert (tool.name, tool.category, by_fuzzy) == ("qe_quality_gate", "quality-assessment", False)
    # The one cache slot still holds the typo: exact names went to the index and left it alone.
    assert registry.resolve("qe_memroy_store")[1] is True
    stats = registry.stats()
    assert counts(stats) == (4, 2, 1, 1, 0)
    assert stats.cache_hit_rate == 0.25


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("qe_memory_retreive", "qe_memory_retrieve"),
        ("qe_memroy_store", "qe_memory_store"),
        ("qe_test_genrate", "qe_test_generate"),
        ("QE_FLEET_STATUS", "qe_fleet_status"),
        ("qe-coverage-gaps", "qe_coverage_gaps"),
        ("memory_store", "qe_memory_store"),
        ("qe_agent_spwan", "qe_agent_spawn"),
    ],
)
def test_typo_resolves_to_the_clear_winner_and_is_cached(typed: str, meant: str) -> None:
    registry = make_registry()
    tool, by_fuzzy = registry.resolve(typed)
    assert (tool.name, by_fuzzy) == (meant, True)
    assert registry.resolve(typed) == (tool, True)
    assert counts(registry.stats()) == (2, 0, 1, 1, 0)


@pytest.mark.parametrize(
    ("typed", "suggestions"),
    [
        ("qe_memory", ["qe_memory_store", "qe_memory_search", "qe_memory_retrieve"]),
        ("qe_learn", ["qe_learn_status", "qe_learn_pattern"]),
        ("qe_quality", ["qe_quality_gate", "qe_quality_metrics"]),
        ("qe_coverage", ["qe_coverage_gaps", "qe_coverage_analyze"]),
    ],
)
def test_ambiguous_name_is_refused_with_suggestions_and_not_cached(
    typed: str, suggestions: list[str]
) -> None:
    registry = make_registry()
    for _ in range(2):
        with pytest.raises(UnknownToolError) as caught:
            registry.resolve(typed)
        assert caught.value.name == typed
        assert caught.value.suggestions == suggestions
        assert str(caught.value) == f"unknown tool '{typed}'; did you mean: {', '.join(suggestions)}?"
    assert counts(registry.stats()) == (2, 0, 0, 0, 2)


def test_name_close_to_nothing_says_so() -> None:
    registry = make_registry()
    with pytest.raises(UnknownToolError, match="no tool is close") as caught:
        registry.resolve("deploy_to_production")
    assert caught.value.suggestions == []


def test_huge_name_is_refused_quickly_and_shortened_in_the_message() -> None:
    registry = make_registry()
    huge = "qe_memory_store" * 50_000
    started = time.perf_counter()
    with pytest.raises(UnknownToolError) as caught:
        registry.resolve(huge)
    assert time.perf_counter() - started < 0.05
    assert caught.value.suggestions == []
    assert len(str(caught.value)) < 200


def test_fuzzy_disabled_resolves_only_exact_names_but_still_suggests() -> None:
    registry = make_registry(fuzzy_enabled=False)
    assert registry.resolve("qe_memory_store")[0].name == "qe_memory_store"
    with pytest.raises(UnknownToolError) as caught:
        registry.resolve("qe_memroy_store")
    assert caught.value.suggestions[0] == "qe_memory_store"
    assert registry.stats().fuzzy_resolutions == 0


def test_switching_fuzzy_off_forgets_cached_typos() -> None:
    registry = make_registry()
    assert registry.resolve("qe_memroy_store")[1] is True
    registry.configure(cache_enabled=True, cache_size=1000, fuzzy_enabled=False)
    with pytest.raises(UnknownToolError):
        registry.resolve("qe_memroy_store")
    registry.configure(cache_enabled=True, cache_size=1000, fuzzy_enabled=True)
    assert registry.resolve("qe_memroy_store")[0].name == "qe_memory_store"


def test_cache_disabled_serves_every_lookup_from_the_index() -> None:
    registry = make_registry(cache_enabled=False)
    for _ in range(3):
        registry.resolve("qe_fleet_init")
    registry.resolve("qe_fleet_stauts")
    registry.resolve("qe_fleet_stauts")
    assert counts(registry.stats()) == (5, 3, 0, 2, 0)
    assert registry.stats().cache_hit_rate == 0.0


def test_configure_shrinking_the_cache_keeps_only_the_most_recent_names() -> None:
    registry = make_registry(cache_size=10)
    typos = ["qe_memory_retreive", "qe_memroy_store", "qe_test_genrate", "qe_agent_spwan", "qe_lern_pattern"]
    for typo in typos:
        registry.resolve(typo)
    registry.configure(cache_enabled=True, cache_size=2, fuzzy_enabled=True)
    before = registry.stats()
    for typo in typos[-2:]:
        registry.resolve(typo)
    registry.resolve(typos[0])
    after = registry.stats()
    assert after.cache_hits - before.cache_hits == 2
    assert after.fuzzy_resolutions - before.fuzzy_resolutions == 1


def test_configure_refuses_a_negative_cache_size() -> None:
    registry = make_registry()
    with pytest.raises(ValueError, match="registry.cacheSize"):
        registry.configure(cache_enabled=True, cache_size=-1, fuzzy_enabled=True)


def test_tools_and_categories_keep_registration_order() -> None:
    registry = make_registry()
    assert [tool.name for tool in registry.tools()] == [name for name, _ in DESIGN_TOOLS]
    assert registry.categories() == [
        "test-generation",
        "coverage-analysis",
        "quality-assessment",
        "coordination",
        "memory",
        "learning",
    ]
    assert [tool.name for tool in registry.by_category("coordination")] == [
        "qe_fleet_init",
        "qe_fleet_status",
        "qe_agent_spawn",
        "qe_task_orchestrate",
    ]
    assert registry.by_category("security") == []


def test_get_is_exact_and_leaves_stats_alone() -> None:
    registry = make_registry()
    tool = registry.get("qe_learn_status")
    assert tool is not None and tool.name == "qe_learn_status"
    assert registry.get("qe_learn_statsu") is None
    assert registry.get("QE_LEARN_STATUS") is None
    assert registry.stats().lookups == 0


def test_duplicate_tool_names_are_refused() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        ToolRegistry([spec("qe_fleet_init", "coordination"), spec("qe_fleet_init", "coordination")])


def test_names_equal_after_normalisation_are_ambiguous() -> None:
    registry = ToolRegistry([spec("qe-scan", "security"), spec("qe_scan", "security")])
    assert registry.resolve("qe-scan")[0].name == "qe-scan"
    with pytest.raises(UnknownToolError) as caught:
        registry.resolve("QE_SCAN")
    assert sorted(caught.value.suggestions) == ["qe-scan", "qe_scan"]


def test_fuzzy_threshold_outside_range_is_refused() -> None:
    with pytest.raises(ValueError, match="threshold"):
        make_registry(fuzzy_threshold=1.5)


def test_stricter_threshold_refuses_looser_typos() -> None:
    registry = make_registry(fuzzy_threshold=0.95)
    with pytest.raises(UnknownToolError) as caught:
        registry.resolve("qe_memroy_store")  # scores 93 against qe_memory_store
    assert caught.value.suggestions[0] == "qe_memory_store"
    assert registry.resolve("qe_task_orchestrat")[0].name == "qe_task_orchestrate"  # scores 97


def test_stats_encode_camel_case_and_time_exact_lookups_under_a_microsecond() -> None:
    registry = make_registry()
    for _ in range(2000):
        for name, _ in DESIGN_TOOLS:
            registry.resolve(name)
        registry.resolve("qe_memroy_store")
    stats = registry.stats()
    assert stats.lookups == stats.exact_hits + stats.cache_hits + stats.fuzzy_resolutions + stats.misses
    assert 0 < stats.avg_lookup_ns < 1000
    wire = msgspec.json.decode(msgspec.json.encode(stats))
    assert set(wire) == {
        "totalTools",
        "categories",
        "lookups",
        "exactHits",
        "cacheHits",
        "cacheHitRate",
        "fuzzyResolutions",
        "misses",
        "avgLookupNs",
    }
    assert wire["totalTools"] == 14 and wire["exactHits"] == 28_000 and wire["cacheHits"] == 1999
