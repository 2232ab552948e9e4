"""The pattern store: reusable test patterns that merge near-duplicates and improve with reported outcomes,
plus the lookup test generation uses (`PatternStore.best`: the best patterns for a language, framework,
domain and pattern type). SQLite in WAL mode beside memory.db, one transaction per learning step.
"""

from __future__ import annotations

import pathlib
import secrets
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import msgspec

from qe_appliance.config import LearningConfig
from qe_appliance.store.database import Database, open_database, transaction

PatternType = Literal["test-template", "assertion", "mock", "edge-case", "flaky-fix", "anti-pattern"]
PATTERN_TYPES: tuple[str, ...] = get_args(PatternType)
Tier = Literal["short-term", "long-term"]
TIERS: tuple[str, ...] = get_args(Tier)
EventKind = Literal["created", "merged", "outcome", "promoted", "replaced"]

# The event log is for "what happened lately", so only the newest events are kept.
EVENTS_KEPT = 1000
PREVIEW_CHARS = 160

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE patterns (
            id TEXT PRIMARY KEY,
            text TEXT NOT NULL,
            norm TEXT NOT NULL,
            pattern_type TEXT NOT NULL,
            domain TEXT NOT NULL,
            language TEXT NOT NULL,
            framework TEXT,
            example TEXT,
            confidence REAL NOT NULL,
            times_taught INTEGER NOT NULL,
            usage_count INTEGER NOT NULL,
            success_count INTEGER NOT NULL,
            quality REAL NOT NULL,
            tier TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            promoted_at REAL
        )""",
        # Near-duplicates are only looked for among patterns of the same group.
        "CREATE INDEX patterns_group ON patterns (language, pattern_type, domain, framework)",
        "CREATE INDEX patterns_best ON patterns (language, pattern_type, quality DESC)",
        "CREATE INDEX patterns_quality ON patterns (quality DESC)",
        # Covers the status totals, so they read this narrow index in group order instead of every row.
        """CREATE INDEX patterns_stats ON patterns
            (pattern_type, domain, tier, language, confidence, usage_count, success_count)""",
        """CREATE TABLE learning_events (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            pattern_id TEXT NOT NULL,
            domain TEXT NOT NULL,
            language TEXT NOT NULL,
            detail TEXT NOT NULL
        )""",
    ),
)

_RATE = "CASE WHEN usage_count > 0 THEN CAST(success_count AS REAL) / usage_count ELSE 0.0 END"
# In the order of Pattern's fields; scores rounded to 4 places for display.
_PATTERN_COLUMNS = (
    "id, text, pattern_type, domain, language, framework, example, round(confidence, 4), times_taught, "
    f"usage_count, success_count, round({_RATE}, 4), round(quality, 4), tier, created_at, updated_at, "
    "promoted_at"
)
_INSERT = """
INSERT INTO patterns (id, text, norm, pattern_type, domain, language, framework, example, confidence,
                      times_taught, usage_count, success_count, quality, tier, created_at, updated_at)
VALUES (:id, :text, :norm, :pattern_type, :domain, :language, :framework, :example, :confidence,
        1, 0, 0, :quality, 'short-term', :now, :now)
"""
_PRUNE_EVENTS = "DELETE FROM learning_events WHERE id <= (SELECT max(id) FROM learning_events) - :kept"


class UnknownPatternError(LookupError):
    """An outcome names a pattern id that is not stored; the message says where ids come from."""


class Pattern(msgspec.Struct, frozen=True, rename="camel"):
    """One stored pattern with its scores, as tools return it and test generation reads it."""

    id: str
    pattern: str
    pattern_type: str
    domain: str
    language: str
    framework: str | None
    example: str | None
    confidence: float
    times_taught: int
    usage_count: int
    success_count: int
    success_rate: float
    quality_score: float
    tier: str
    created_at: datetime
    updated_at: datetime
    promoted_at: datetime | None


class PatternSummary(msgspec.Struct, frozen=True, rename="camel"):
    """A pattern in a listing: the start of its text and its scores."""

    id: str
    preview: str
    pattern_type: str
    domain: str
    language: str
    framework: str | None
    tier: str
    quality_score: float
    usage_count: int
    success_rate: float


class LearningEvent(msgspec.Struct, frozen=True, rename="camel"):
    """Something that happened to a pattern: created, merged, outcome or promoted."""

    at: datetime
    kind: str
    pattern_id: str
    domain: str
    language: str
    detail: str


class LearningTotals(msgspec.Struct, frozen=True, rename="camel"):
    patterns: int
    by_type: dict[str, int]
    by_domain: dict[str, int]
    by_tier: dict[str, int]


class LearningStatus(msgspec.Struct, frozen=True, rename="camel"):
    """What has been learned (optionally for one domain and/or language)."""

    totals: LearningTotals
    average_confidence: float | None
    average_success_rate: float | None
    total_uses: int
    total_successes: int
    top_patterns: list[PatternSummary]
    recent_events: list[LearningEvent]


class LearnResult(msgspec.Struct, frozen=True, rename="camel"):
    """The outcome of teaching one pattern (and of the outcome reported with it, if any)."""

    action: Literal["created", "merged", "replaced"]
    similarity: float | None
    pattern: Pattern
    outcome_pattern: Pattern | None
    promoted: list[str]


class PatternDraft(msgspec.Struct, frozen=True):
    """A pattern as taught, before it is stored or merged."""

    text: str
    pattern_type: str
    domain: str
    language: str
    confidence: float
    framework: str | None = None
    example: str | None = None


def quality_score(confidence: float, usage_count: int, success_count: int) -> float:
    """0.3 x confidence + 0.2 x min(uses / 100, 1) + 0.5 x success rate (0 before any use)."""
    rate = success_count / usage_count if usage_count else 0.0
    return 0.3 * confidence + 0.2 * min(usage_count / 100, 1.0) + 0.5 * rate


def normalise(text: str) -> str:
    """How names (language, domain, framework) and pattern texts are compared: whitespace runs
    collapsed, trimmed, lower case."""
    return " ".join(text.split()).lower()


def when(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def pattern_from_row(row: Any) -> Pattern:
    *fields, created, updated, promoted = row
    times = [when(created), when(updated), None if promoted is None else when(promoted)]
    return Pattern(*fields, *times)


def pattern_filters(domain: str | None, language: str | None) -> tuple[list[str], dict[str, object]]:
    """WHERE clauses (and their :named parameters) for an optional domain and language; both backends."""
    clauses: list[str] = ["TRUE"]
    params: dict[str, object] = {}
    if domain is not None:
        clauses.append("domain = :domain")
        params["domain"] = normalise(domain)
    if language is not None:
        clauses.append("language = :language")
        params["language"] = normalise(language)
    return clauses, params


def best_filters(
    language: str, framework: str | None, domain: str | None, pattern_type: str | None, limit: int
) -> tuple[str, dict[str, object]]:
    """The WHERE ... ORDER BY ... LIMIT of `best` (and its :named parameters); both backends."""
    clauses, params = pattern_filters(domain, language)
    params["limit"] = limit
    if pattern_type is None:
        clauses.append("pattern_type != 'anti-pattern'")
    else:
        clauses.append("pattern_type = :pattern_type")
        params["pattern_type"] = pattern_type
    if framework is not None:
        clauses.append("(framework = :framework OR framework IS NULL)")
        params["framework"] = normalise(framework)
    where = f"WHERE {' AND '.join(clauses)} ORDER BY quality DESC, framework IS NULL, updated_at DESC LIMIT :limit"
    return where, params


class PatternStore:
    """Learned patterns with usage, success rate, quality score and tier; durable once a call returns."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.database: Database = open_database(path, _MIGRATIONS, "pattern database")
        self._db = self.database.conn

    def get(self, pattern_id: str) -> Pattern | None:
        """The pattern with this id, or None."""
        row = self._db.execute(
            f"SELECT {_PATTERN_COLUMNS} FROM patterns WHERE id = ?", (pattern_id,)
        ).fetchone()
        return None if row is None else pattern_from_row(row)

    def learn(
        self, draft: PatternDraft, rules: LearningConfig, outcome: tuple[str, bool] | None = None
    ) -> LearnResult:
        """Store `draft`, or merge it into a near-duplicate of its group; then record `outcome`
        (pattern id, success) if given. All of it commits together or not at all.

        Raises UnknownPatternError (and changes nothing) when the outcome's pattern id is not stored.
        """
        now = time.time()
        fields = {
            "text": draft.text,
            "norm": normalise(draft.text),
            "pattern_type": draft.pattern_type,
            "domain": normalise(draft.domain),
            "language": normalise(draft.language),
            "framework": None if draft.framework is None else normalise(draft.framework),
        }
        # One IMMEDIATE transaction: the near-duplicate search and promotion see no other process's
        # half-done step, so two processes teaching the same pattern merge instead of both creating it.
        with self.database.durable(), transaction(self._db) as db:
            if outcome is not None and self.get(outcome[0]) is None:
                raise UnknownPatternError(
                    f"no pattern has id {outcome[0]!r}; use an id returned by qe_learn_pattern or listed by "
                    "qe_learn_status"
                )
            similar = self._near_duplicate(fields, rules.dedupe_threshold)
            if similar is None:
                pattern_id = self._insert(fields, draft, now)
                action: Literal["created", "merged"] = "created"
                similarity = None
            else:
                pattern_id, similarity = similar
                self._merge(pattern_id, draft, similarity, now)
                action = "merged"
            touched = [pattern_id]
            if outcome is not None:
                self._record_outcome(*outcome, now)
                if outcome[0] != pattern_id:
                    touched.append(outcome[0])
            promoted = [pid for pid in touched if self._promote_if_due(pid, rules, now)]
            db.execute(_PRUNE_EVENTS, {"kept": EVENTS_KEPT})
        learned = self.get(pattern_id)
        assert learned is not None
        return LearnResult(
            action=action,
            similarity=similarity,
            pattern=learned,
            outcome_pattern=None if outcome is None else self.get(outcome[0]),
            promoted=promoted,
        )

    def replace(self, pattern_id: str, draft: PatternDraft) -> LearnResult:
        """Give a stored pattern corrected text (and the draft's type, domain, language, framework,
        example and confidence). Its uses and successes start again from zero: they were the broken text's.
        Never merges into another pattern. UnknownPatternError when no pattern has the id."""
        now = time.time()
        with transaction(self._db):
            if self.get(pattern_id) is None:
                raise UnknownPatternError(
                    f"no pattern has id {pattern_id!r} to replace; use an id returned by qe_learn_pattern or "
                    "listed by qe_learn_status"
                )
            self._db.execute(
                "UPDATE patterns SET text = :text, norm = :norm, pattern_type = :pattern_type, "
                "domain = :domain, language = :language, framework = :framework, example = :example, "
                "confidence = :confidence, times_taught = 1, usage_count = 0, success_count = 0, "
                "quality = :quality, tier = 'short-term', promoted_at = NULL, updated_at = :now WHERE id = :id",
                {
                    "id": pattern_id,
                    "text": draft.text,
                    "norm": normalise(draft.text),
                    "pattern_type": draft.pattern_type,
                    "domain": normalise(draft.domain),
                    "language": normalise(draft.language),
                    "framework": None if draft.framework is None else normalise(draft.framework),
                    "example": draft.example,
                    "confidence": draft.confidence,
                    "quality": quality_score(draft.confidence, 0, 0),
                    "now": now,
                },
            )
            self._event(now, "replaced", pattern_id, "text replaced; uses and successes start again")
        replaced = self.get(pattern_id)
        assert replaced is not None
        return LearnResult(action="replaced", similarity=None, pattern=replaced, outcome_pattern=None, promoted=[])

    def _near_duplicate(self, fields: dict[str, Any], threshold: float) -> tuple[str, float] | None:
        rows = self._db.execute(
            "SELECT id, norm FROM patterns WHERE language = :language AND pattern_type = :pattern_type "
            "AND domain = :domain AND framework IS :framework",
            fields,
        ).fetchall()
        if not rows:
            return None
        from rapidfuzz import fuzz, process  # on the first comparison, not at start-up (~10 ms)

        best = process.extractOne(
            fields["norm"], [norm for _, norm in rows], scorer=fuzz.ratio, score_cutoff=threshold * 100
        )
        if best is None:
            return None
        _, score, index = best
        return rows[index][0], round(score / 100, 4)

    def _insert(self, fields: dict[str, Any], draft: PatternDraft, now: float) -> str:
        pattern_id = f"pat_{secrets.token_hex(8)}"
        self._db.execute(
            _INSERT,
            {
                **fields,
                "id": pattern_id,
                "example": draft.example,
                "confidence": draft.confidence,
                "quality": quality_score(draft.confidence, 0, 0),
                "now": now,
            },
        )
        framework = f"/{fields['framework']}" if fields["framework"] else ""
        detail = f"new {draft.pattern_type} for {fields['language']}{framework} in {fields['domain']}"
        self._event(now, "created", pattern_id, f"{detail} (confidence {draft.confidence:.2f})")
        return pattern_id

    def _merge(self, pattern_id: str, draft: PatternDraft, similarity: float, now: float) -> None:
        # Confidence becomes the mean of every confidence the pattern was taught with.
        confidence, taught = self._db.execute(
            "UPDATE patterns SET "
            "confidence = (confidence * times_taught + :confidence) / (times_taught + 1), "
            "times_taught = times_taught + 1, example = coalesce(example, :example), updated_at = :now "
            "WHERE id = :id RETURNING confidence, times_taught",
            {"id": pattern_id, "confidence": draft.confidence, "example": draft.example, "now": now},
        ).fetchone()
        self._rescore(pattern_id)
        detail = f"confidence now {confidence:.2f}, taught {taught} times"
        self._event(
            now, "merged", pattern_id, f"merged a near-duplicate (similarity {similarity:.2f}); {detail}"
        )

    def _record_outcome(self, pattern_id: str, success: bool, now: float) -> None:
        uses, successes = self._db.execute(
            "UPDATE patterns SET usage_count = usage_count + 1, success_count = success_count + :success, "
            "updated_at = :now WHERE id = :id RETURNING usage_count, success_count",
            {"id": pattern_id, "success": int(success), "now": now},
        ).fetchone()
        self._rescore(pattern_id)
        verdict = "success" if success else "failure"
        self._event(now, "outcome", pattern_id, f"{verdict}: {successes} of {uses} uses succeeded")

    def _rescore(self, pattern_id: str) -> None:
        confidence, uses, successes = self._db.execute(
            "SELECT confidence, usage_count, success_count FROM patterns WHERE id = ?", (pattern_id,)
        ).fetchone()
        self._db.execute(
            "UPDATE patterns SET quality = ? WHERE id = ?",
            (quality_score(confidence, uses, successes), pattern_id),
        )

    def _promote_if_due(self, pattern_id: str, rules: LearningConfig, now: float) -> bool:
        row = self._db.execute(
            "UPDATE patterns SET tier = 'long-term', promoted_at = :now "
            f"WHERE id = :id AND tier = 'short-term' "
            f"AND success_count >= :successes AND {_RATE} >= :rate AND confidence >= :confidence "
            f"RETURNING success_count, {_RATE}, confidence",
            {
                "id": pattern_id,
                "now": now,
                "successes": rules.promotion_min_successes,
                "rate": rules.promotion_min_success_rate,
                "confidence": rules.promotion_min_confidence,
            },
        ).fetchone()
        if row is None:
            return False
        successes, rate, confidence = row
        detail = f"{successes} successful uses, success rate {rate:.2f}, confidence {confidence:.2f}"
        self._event(now, "promoted", pattern_id, f"promoted to long-term: {detail}")
        return True

    def _event(self, now: float, kind: EventKind, pattern_id: str, detail: str) -> None:
        self._db.execute(
            "INSERT INTO learning_events (at, kind, pattern_id, domain, language, detail) "
            "SELECT :at, :kind, id, domain, language, :detail FROM patterns WHERE id = :pattern_id",
            {"at": now, "kind": kind, "pattern_id": pattern_id, "detail": detail},
        )

    def best(
        self,
        language: str,
        *,
        framework: str | None = None,
        domain: str | None = None,
        pattern_type: str | None = None,
        limit: int = 5,
    ) -> list[Pattern]:
        """The highest-quality patterns for test generation, best first.

        `framework`: patterns for that framework plus framework-agnostic ones (the specific one first
        on equal quality). `domain` and `pattern_type`: exact matches; without a pattern type,
        anti-patterns are left out (ask for them by type). None means any.
        """
        where, params = best_filters(language, framework, domain, pattern_type, limit)
        rows = self._db.execute(f"SELECT {_PATTERN_COLUMNS} FROM patterns {where}", params).fetchall()
        return [pattern_from_row(row) for row in rows]

    def status(
        self, *, domain: str | None = None, language: str | None = None, top: int = 10, recent: int = 10
    ) -> LearningStatus:
        """Totals, averages, the `top` patterns by quality and the `recent` latest events."""
        clauses, params = pattern_filters(domain, language)
        where = " AND ".join(clauses)
        groups = self._db.execute(
            "SELECT pattern_type, domain, tier, count(*), sum(confidence), sum(usage_count), "
            "sum(success_count), "
            f"sum(CASE WHEN usage_count > 0 THEN {_RATE} END), sum(usage_count > 0) "
            f"FROM patterns WHERE {where} GROUP BY pattern_type, domain, tier",
            params,
        ).fetchall()
        top_rows = self._db.execute(
            f"SELECT id, substr(text, 1, {PREVIEW_CHARS + 1}), pattern_type, domain, language, framework, "
            "tier, "
            f"quality, usage_count, {_RATE} FROM patterns WHERE {where} "
            "ORDER BY quality DESC, updated_at DESC LIMIT :top",
            {**params, "top": top},
        ).fetchall()
        events = self._db.execute(
            f"SELECT at, kind, pattern_id, domain, language, detail FROM learning_events WHERE {where} "
            "ORDER BY id DESC LIMIT :recent",
            {**params, "recent": recent},
        ).fetchall()
        return learning_status(groups, top_rows, events)

    def close(self) -> None:
        """Close the database; later calls raise sqlite3.ProgrammingError."""
        self.database.close()


def preview(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= PREVIEW_CHARS else flat[: PREVIEW_CHARS - 1] + "…"


def learning_status(
    groups: Iterable[Sequence[Any]], top_rows: Iterable[Sequence[Any]], events: Iterable[Sequence[Any]]
) -> LearningStatus:
    """The status both backends report, from the same three queries' rows: counts per (type, domain, tier)
    group, the top patterns by quality and the latest events."""
    by_type = dict.fromkeys(PATTERN_TYPES, 0)
    by_tier = dict.fromkeys(TIERS, 0)
    by_domain: dict[str, int] = {}
    count = uses = successes = used = 0
    confidence_sum = rate_sum = 0.0
    for kind, dom, tier, n, conf, use, ok, rates, n_used in groups:
        by_type[kind] = by_type.get(kind, 0) + n
        by_tier[tier] = by_tier.get(tier, 0) + n
        by_domain[dom] = by_domain.get(dom, 0) + n
        count, uses, successes, used = count + n, uses + use, successes + ok, used + n_used
        confidence_sum += conf
        rate_sum += rates or 0.0
    return LearningStatus(
        totals=LearningTotals(
            patterns=count,
            by_type=by_type,
            by_domain=dict(sorted(by_domain.items(), key=lambda item: (-item[1], item[0]))),
            by_tier=by_tier,
        ),
        average_confidence=round(confidence_sum / count, 4) if count else None,
        average_success_rate=round(rate_sum / used, 4) if used else None,
        total_uses=uses,
        total_successes=successes,
        top_patterns=[
            PatternSummary(pid, preview(text), kind, dom, lang, fw, tier, round(quality, 4), use, round(rate, 4))
            for pid, text, kind, dom, lang, fw, tier, quality, use, rate in top_rows
        ],
        recent_events=[
            LearningEvent(when(at), kind, pid, dom, lang, detail) for at, kind, pid, dom, lang, detail in events
        ],
    )
