"""The pattern store and the learning tools: near-duplicate merging, outcomes, quality score, promotion,
status, the lookup test generation uses, and persistence."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
from pg import blocking_pg_stores

from qe_appliance.config import Config, LearningConfig, ServerConfig
from qe_appliance.services import Services
from qe_appliance.store import patterns as patterns_module
from qe_appliance.store.patterns import PatternDraft, PatternStore, UnknownPatternError, quality_score
from qe_appliance.tools.base import ToolError
from tests.conftest import call_tool as call

RULES = LearningConfig()

TEMPLATE = "def test_{name}_rejects_empty_input():\n    with pytest.raises(ValueError):\n        {name}('')\n"
# The same template re-indented, with double quotes and a capital: above the 0.9 default threshold.
NEAR_TEMPLATE = (
    'def test_{name}_rejects_empty_input():\n  with pytest.raises(ValueError):\n      {name}("")\n'
)
OTHER_TEMPLATE = (
    "@pytest.mark.parametrize('n', [0, -1, 2**31])\ndef test_{name}_bounds(n): assert {name}(n) >= 0"
)


def draft(text: str = TEMPLATE, **fields: Any) -> PatternDraft:
    values: dict[str, Any] = {
        "pattern_type": "edge-case",
        "domain": "parsing",
        "language": "python",
        "framework": "pytest",
        "confidence": 0.8,
    }
    values.update(fields)
    return PatternDraft(text=text, **values)


@pytest.fixture
def sqlite_store(tmp_path: pathlib.Path) -> Iterator[PatternStore]:
    patterns = PatternStore(tmp_path / "patterns.db")
    yield patterns
    patterns.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest) -> Iterator[PatternStore]:
    """The same tests on both backends: the PostgreSQL store's coroutines are called as plain methods."""
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_store")
        return
    with blocking_pg_stores(request.getfixturevalue("postgres")) as stores:
        yield stores.patterns  # type: ignore[misc]


def test_quality_score_follows_the_formula() -> None:
    assert quality_score(0.8, 0, 0) == pytest.approx(0.24)
    assert quality_score(0.5, 10, 7) == pytest.approx(0.3 * 0.5 + 0.2 * 0.1 + 0.5 * 0.7)
    assert quality_score(1.0, 250, 250) == pytest.approx(1.0)  # usage saturates at 100


def test_a_new_pattern_starts_short_term_with_its_scores(store: PatternStore) -> None:
    result = store.learn(draft(example="test_parse_rejects_empty_input"), RULES)
    p = result.pattern
    assert (result.action, result.similarity, result.outcome_pattern, result.promoted) == (
        "created",
        None,
        None,
        [],
    )
    assert p.id.startswith("pat_") and p.pattern == TEMPLATE
    assert (p.pattern_type, p.domain, p.language, p.framework) == ("edge-case", "parsing", "python", "pytest")
    assert (p.tier, p.times_taught, p.usage_count, p.success_rate) == ("short-term", 1, 0, 0.0)
    assert p.quality_score == pytest.approx(0.24)
    assert p.example == "test_parse_rejects_empty_input"
    assert store.get(p.id) == p


def test_a_near_duplicate_is_merged_and_says_how_similar_it_was(store: PatternStore) -> None:
    first = store.learn(draft(confidence=0.9), RULES).pattern
    merged = store.learn(draft(NEAR_TEMPLATE, confidence=0.5, language=" Python ", domain="PARSING"), RULES)
    assert merged.action == "merged" and merged.pattern.id == first.id
    assert merged.similarity is not None and 0.9 <= merged.similarity < 1
    assert merged.pattern.pattern == TEMPLATE  # the stored text is kept
    assert (merged.pattern.times_taught, merged.pattern.confidence) == (2, pytest.approx(0.7))
    assert store.status().totals.patterns == 1


def test_different_text_or_group_is_a_new_pattern(store: PatternStore) -> None:
    base = store.learn(draft(), RULES).pattern.id
    variants = [
        draft(OTHER_TEMPLATE),
        draft(language="typescript"),
        draft(pattern_type="assertion"),
        draft(domain="auth"),
        draft(framework="unittest"),
        draft(framework=None),
    ]
    ids = {store.learn(variant, RULES).pattern.id for variant in variants}
    assert base not in ids and len(ids) == len(variants)


def test_the_dedupe_threshold_comes_from_the_rules(store: PatternStore) -> None:
    store.learn(draft(), RULES)
    strict = LearningConfig(dedupe_threshold=1.0)
    assert store.learn(draft(NEAR_TEMPLATE), strict).action == "created"
    assert store.learn(draft(TEMPLATE.replace("\n", "  \n")), strict).action == "merged"  # whitespace only
    loose = LearningConfig(dedupe_threshold=0.3)
    assert store.learn(draft(OTHER_TEMPLATE), loose).action == "merged"


def test_outcomes_update_usage_success_rate_and_quality(store: PatternStore) -> None:
    pid = store.learn(draft(confidence=0.6), RULES).pattern.id
    for success in (True, False, True, True):
        result = store.learn(draft(OTHER_TEMPLATE), RULES, outcome=(pid, success))
    assert result.outcome_pattern is not None
    after = result.outcome_pattern
    assert (after.id, after.usage_count, after.success_count, after.success_rate) == (pid, 4, 3, 0.75)
    assert after.quality_score == pytest.approx(0.3 * 0.6 + 0.2 * 0.04 + 0.5 * 0.75)
    assert result.pattern.id != pid and result.pattern.usage_count == 0


def test_promotion_needs_three_successes_a_good_rate_and_confidence(store: PatternStore) -> None:
    pid = store.learn(draft(confidence=0.8), RULES).pattern.id
    tiers = []
    for success in (True, True, False, True):
        result = store.learn(draft(), RULES, outcome=(pid, success))
        tiers.append((result.pattern.tier, result.promoted))
    # 2/2 is not enough successes; 2/3 is below 0.7; 3/4 = 0.75 with confidence 0.8 qualifies.
    assert tiers == [("short-term", []), ("short-term", []), ("short-term", []), ("long-term", [pid])]
    assert result.pattern.promoted_at is not None

    timid = store.learn(draft(OTHER_TEMPLATE, confidence=0.5), RULES).pattern.id
    for _ in range(5):
        result = store.learn(draft(OTHER_TEMPLATE, confidence=0.5), RULES, outcome=(timid, True))
    assert result.pattern.tier == "short-term"  # confidence 0.5 < 0.6

    lenient = LearningConfig(promotion_min_successes=1, promotion_min_confidence=0.5)
    assert store.learn(draft(OTHER_TEMPLATE, confidence=0.5), lenient).promoted == [timid]


def test_an_outcome_for_an_unknown_pattern_changes_nothing(store: PatternStore) -> None:
    with pytest.raises(UnknownPatternError, match="no pattern has id 'pat_nope'.*qe_learn_status"):
        store.learn(draft(), RULES, outcome=("pat_nope", True))
    status = store.status()
    assert status.totals.patterns == 0 and status.recent_events == []


def test_best_returns_the_highest_quality_patterns_for_test_generation(store: PatternStore) -> None:
    def teach(text: str, successes: int, **fields: Any) -> str:
        pid = store.learn(draft(text, **fields), RULES).pattern.id
        for _ in range(successes):
            store.learn(draft(text, **fields), RULES, outcome=(pid, True))
        return pid

    good = teach("assert parse('') raises", 3)
    fair = teach("check bounds of the parser with ints", 1)
    generic = teach("generic boundary edge case", 2, framework=None)
    other_framework = teach("self.assertRaises(ValueError, parse, '')", 5, framework="unittest")
    teach("never sleep in tests", 5, pattern_type="anti-pattern")
    teach("edge cases for login", 5, domain="auth")

    best = store.best("Python", framework="PyTest", domain="parsing", pattern_type="edge-case")
    assert [p.id for p in best] == [good, generic, fair]
    assert other_framework not in [p.id for p in store.best("python", framework="pytest")]
    assert [p.pattern_type for p in store.best("python", pattern_type="anti-pattern")] == ["anti-pattern"]
    assert all(p.pattern_type != "anti-pattern" for p in store.best("python", limit=50))
    assert len(store.best("python", limit=2)) == 2
    assert store.best("rust") == []


def test_status_totals_averages_top_patterns_and_recent_events(store: PatternStore) -> None:
    a = store.learn(draft(confidence=1.0), RULES).pattern.id
    store.learn(draft(OTHER_TEMPLATE, confidence=0.5, pattern_type="mock"), RULES)
    store.learn(draft("login mock", confidence=0.6, pattern_type="mock", domain="auth", language="go"), RULES)
    for success in (True, True, True, False):
        store.learn(draft(confidence=1.0), RULES, outcome=(a, success))

    status = store.status()
    totals = status.totals
    assert totals.patterns == 3
    assert totals.by_type == {
        "test-template": 0,
        "assertion": 0,
        "mock": 2,
        "edge-case": 1,
        "flaky-fix": 0,
        "anti-pattern": 0,
    }
    assert totals.by_domain == {"parsing": 2, "auth": 1}
    assert totals.by_tier == {"short-term": 2, "long-term": 1}
    # `a` was taught five times at 1.0 (creation and four merges with outcomes).
    assert status.average_confidence == pytest.approx((1.0 + 0.5 + 0.6) / 3, abs=1e-4)
    assert status.average_success_rate == 0.75  # only patterns that were used count
    assert (status.total_uses, status.total_successes) == (4, 3)
    assert status.top_patterns[0].id == a and status.top_patterns[0].tier == "long-term"
    kinds = [event.kind for event in status.recent_events]
    assert kinds[:5] == ["outcome", "merged", "promoted", "outcome", "merged"]  # newest first
    assert len(status.recent_events) == 10

    only_go = store.status(language="Go")
    assert only_go.totals.patterns == 1 and only_go.totals.by_domain == {"auth": 1}
    assert {event.language for event in only_go.recent_events} == {"go"}
    assert store.status(domain="auth", language="python").totals.patterns == 0


def test_long_pattern_texts_are_previewed_in_the_status(store: PatternStore) -> None:
    store.learn(draft("x = 1\n" * 500), RULES)
    (top,) = store.status().top_patterns
    assert len(top.preview) == patterns_module.PREVIEW_CHARS and top.preview.endswith("…")


def test_the_event_log_keeps_only_the_newest_events(
    sqlite_store: PatternStore, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = sqlite_store
    monkeypatch.setattr(patterns_module, "EVENTS_KEPT", 5)
    for word in ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"):
        assert store.learn(draft(f"check the {word} case"), RULES).action == "created"
    # The open store holds its file exclusively: count through its own connection.
    assert store._db.execute("SELECT count(*) FROM learning_events").fetchone() == (5,)
    assert store.status(top=0, recent=3).recent_events[0].detail.startswith("new edge-case for python/pytest")


def test_patterns_persist_across_reopen(tmp_path: pathlib.Path) -> None:
    store = PatternStore(tmp_path / "patterns.db")
    pid = store.learn(draft(), RULES).pattern.id
    store.learn(draft(), RULES, outcome=(pid, True))
    store.close()
    reopened = PatternStore(tmp_path / "patterns.db")
    try:
        again = reopened.get(pid)
        assert again is not None and (again.usage_count, again.times_taught) == (1, 2)
        assert reopened.learn(draft(NEAR_TEMPLATE), RULES).pattern.id == pid
    finally:
        reopened.close()


# --- through the tools ---------------------------------------------------------------------------------


@pytest.fixture
def services(tmp_path: pathlib.Path) -> Iterator[Services]:
    svc = Services(Config(server=ServerConfig(state_dir=str(tmp_path))))
    yield svc
    svc.close()



def teach_args(**extra: Any) -> dict[str, Any]:
    return {
        "pattern": TEMPLATE,
        "patternType": "edge-case",
        "domain": "parsing",
        "language": "python",
        "framework": "pytest",
        "confidence": 0.8,
        **extra,
    }


def test_learn_pattern_tool_creates_merges_and_reports_outcomes(services: Services) -> None:
    created = call(services, "qe_learn_pattern", teach_args(example="test_parse_rejects_empty_input"))
    pid = created["pattern"]["id"]
    assert created["action"] == "created" and created["pattern"]["qualityScore"] == 0.24
    assert created["pattern"]["tier"] == "short-term" and created["outcomePattern"] is None

    for _ in range(3):
        merged = call(
            services,
            "qe_learn_pattern",
            teach_args(pattern=NEAR_TEMPLATE, outcome={"patternId": pid, "success": True}),
        )
    assert merged["action"] == "merged" and merged["similarity"] >= 0.9
    assert merged["pattern"]["id"] == merged["outcomePattern"]["id"] == pid
    assert (merged["pattern"]["usageCount"], merged["pattern"]["successRate"]) == (3, 1.0)
    assert merged["pattern"]["tier"] == "long-term" and merged["promoted"] == [pid]

    status = call(services, "qe_learn_status", {"domain": "Parsing"})
    assert status["totals"]["patterns"] == 1 and status["topPatterns"][0]["id"] == pid
    assert status["recentEvents"][0]["kind"] == "promoted"
    assert services.patterns.best("python", framework="pytest")[0].id == pid


def test_a_corrected_template_replaces_the_broken_one_instead_of_merging(services: Services) -> None:
    broken = "def test_${name}_runs():\n    assert ${call} is None\n"
    template = {"patternType": "test-template", "domain": "parsing", "pattern": broken}
    first = call(services, "qe_learn_pattern", teach_args(**template))
    pid = first["pattern"]["id"]
    call(services, "qe_learn_pattern", teach_args(outcome={"patternId": pid, "success": False}, **template))
    fixed = "def test_${name}_runs():\n    assert ${call} is not None\n"
    # Taught plainly, the fix is a near-duplicate and would merge into the broken text.
    replaced = call(
        services, "qe_learn_pattern", teach_args(**{**template, "pattern": fixed}, replaces=pid)
    )
    assert replaced["action"] == "replaced" and replaced["pattern"]["id"] == pid
    assert replaced["pattern"]["pattern"] == fixed
    assert (replaced["pattern"]["usageCount"], replaced["pattern"]["successCount"]) == (0, 0)
    status = call(services, "qe_learn_status", {})
    assert status["totals"]["patterns"] == 1 and status["recentEvents"][0]["kind"] == "replaced"


def test_learning_rules_come_from_the_config(tmp_path: pathlib.Path) -> None:
    config = Config(
        server=ServerConfig(state_dir=str(tmp_path)),
        learning=LearningConfig(dedupe_threshold=1.0, promotion_min_successes=1),
    )
    svc = Services(config)
    try:
        pid = call(svc, "qe_learn_pattern", teach_args())["pattern"]["id"]
        again = call(
            svc,
            "qe_learn_pattern",
            teach_args(pattern=NEAR_TEMPLATE, outcome={"patternId": pid, "success": True}),
        )
        assert again["action"] == "created"  # 0.97 similar is below a threshold of 1.0
        assert again["promoted"] == [pid]  # one success is enough here
    finally:
        svc.close()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            teach_args(outcome={"patternId": "pat_missing", "success": True}),
            "no pattern has id 'pat_missing'",
        ),
        (teach_args(domain="   "), "domain is blank"),
        (teach_args(language="\t"), "language is blank"),
        (teach_args(framework=" "), "framework is blank"),
        (teach_args(pattern=" \n "), "pattern is blank"),
        (
            teach_args(patternType="test-template", pattern="def test_x():\n    assert $cal is not None\n"),
            r"unknown placeholder \$cal; the placeholders are \$call, \$function",
        ),
        (
            teach_args(patternType="test-template", pattern="def test_x():\n    assert $call != '$'\n"),
            r"a \$ on line 2 starts no placeholder \(write \$\$ for a literal \$\)",
        ),
        (teach_args(replaces="pat_missing"), "no pattern has id 'pat_missing' to replace"),
    ],
)
def test_learn_pattern_refuses_what_it_cannot_use(
    services: Services, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ToolError, match=message):
        call(services, "qe_learn_pattern", arguments)
    assert services.patterns.status().totals.patterns == 0


def test_learn_status_of_an_empty_store_has_zero_totals_and_no_averages(services: Services) -> None:
    status = call(services, "qe_learn_status", {})
    assert status["totals"]["patterns"] == 0 and status["totals"]["byTier"] == {
        "short-term": 0,
        "long-term": 0,
    }
    assert (status["averageConfidence"], status["averageSuccessRate"]) == (None, None)
    assert status["topPatterns"] == [] and status["recentEvents"] == []


def test_replace_gives_a_pattern_new_text_and_a_fresh_record(store: PatternStore) -> None:
    created = store.learn(draft(), RULES).pattern
    store.learn(draft(), RULES, (created.id, True))
    fixed = draft(OTHER_TEMPLATE.format(name="parse"), confidence=0.9)
    result = store.replace(created.id, fixed)
    assert (result.action, result.pattern.id, result.similarity, result.promoted) == ("replaced", created.id, None, [])
    p = result.pattern
    assert (p.pattern, p.usage_count, p.success_count, p.times_taught, p.tier) == (
        fixed.text, 0, 0, 1, "short-term",
    )
    assert p.confidence == pytest.approx(0.9) and p.quality_score == pytest.approx(quality_score(0.9, 0, 0))
    assert store.status(top=0, recent=1).recent_events[0].kind == "replaced"
    with pytest.raises(UnknownPatternError, match="to replace"):
        store.replace("pat_missing", fixed)
