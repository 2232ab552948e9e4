"""The learning tools: a store of test patterns that merges near-duplicates and improves with reported
outcomes."""

from __future__ import annotations

from typing import Annotated

import msgspec

from qe_appliance.config import LearningConfig
from qe_appliance.store.database import retrying
from qe_appliance.store.interface import PatternBackend
from qe_appliance.store.patterns import (
    LearningStatus,
    LearnResult,
    PatternDraft,
    PatternType,
    UnknownPatternError,
    normalise,
)
from qe_appliance.testgen.learned import TEMPLATE_FIELDS, TEMPLATE_SYNTAX, template_problems
from qe_appliance.tools.base import ToolContext, ToolError, ToolSpec
from qe_appliance.tools.memory import store_failures

LEARN_PATTERN = "qe_learn_pattern"
LEARN_STATUS = "qe_learn_status"
TOP_PATTERNS = 10
RECENT_EVENTS = 10

Domain = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Language = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
_DOMAIN = "Problem area, e.g. 'api', 'auth', 'parsing' (compared case-insensitively)."
_LANGUAGE = "Programming language, e.g. 'python' (compared case-insensitively)."


class PatternOutcome(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Whether applying a stored pattern worked, to update its usage count and success rate."""

    pattern_id: Annotated[str, msgspec.Meta(min_length=1, description="Id of the pattern that was applied.")]
    success: Annotated[bool, msgspec.Meta(description="True when the test built from it passed and helped.")]


class LearnPatternInput(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Teach a pattern (merged into a near-duplicate when one exists), optionally reporting an outcome."""

    pattern: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=65_536,
            description="The pattern as text or a code template. " + TEMPLATE_SYNTAX + " An edge-case is a "
            "Python literal tried as a value of every parameter of its type, e.g. '' or float('nan').",
        ),
    ]
    pattern_type: Annotated[PatternType, msgspec.Meta(description="What kind of pattern this is.")]
    domain: Annotated[Domain, msgspec.Meta(description=_DOMAIN)]
    language: Annotated[Language, msgspec.Meta(description=_LANGUAGE)]
    confidence: Annotated[float, msgspec.Meta(ge=0, le=1, description="How sure you are it is good, 0..1.")]
    framework: Annotated[
        Annotated[str, msgspec.Meta(min_length=1, max_length=32)] | None,
        msgspec.Meta(description="Test framework, e.g. 'pytest'; omit for a framework-agnostic pattern."),
    ] = None
    example: Annotated[
        Annotated[str, msgspec.Meta(min_length=1, max_length=65_536)] | None,
        msgspec.Meta(description="A concrete use of the pattern."),
    ] = None
    replaces: Annotated[
        Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None,
        msgspec.Meta(
            description="Id of a stored pattern this one corrects: its text (and the other fields) are "
            "replaced and its uses and successes start again, instead of merging into it."
        ),
    ] = None
    outcome: Annotated[
        PatternOutcome | None,
        msgspec.Meta(
            description="Report how applying a stored pattern (this one or another, by id) went; it updates "
            "that pattern's usage count, success rate, quality score and tier."
        ),
    ] = None


class LearnStatusInput(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Summarise what has been learned, optionally for one domain or language."""

    domain: Annotated[Domain | None, msgspec.Meta(description=f"Only this domain. {_DOMAIN}")] = None
    language: Annotated[Language | None, msgspec.Meta(description=f"Only this language. {_LANGUAGE}")] = None


def _name(field: str, value: str) -> str:
    if not normalise(value):
        raise ToolError(f"{field} is blank; give a name such as 'python' or 'api'.")
    return value


async def learn_pattern(ctx: ToolContext, args: LearnPatternInput) -> LearnResult:
    if not args.pattern.strip():
        raise ToolError("pattern is blank; give the pattern's text or code template.")
    if not 0 <= args.confidence <= 1:
        raise ToolError(f"confidence is {args.confidence}; it must be between 0 and 1.")
    draft = PatternDraft(
        text=args.pattern,
        pattern_type=args.pattern_type,
        domain=_name("domain", args.domain),
        language=_name("language", args.language),
        confidence=args.confidence,
        framework=None if args.framework is None else _name("framework", args.framework),
        example=args.example,
    )
    if args.pattern_type == "test-template":
        problems = template_problems(args.pattern)
        if problems:
            known = ", ".join(f"${name}" for name in TEMPLATE_FIELDS)
            raise ToolError(f"the template has {'; '.join(problems)}; the placeholders are {known}")
    store: PatternBackend = ctx.services.patterns
    rules: LearningConfig = ctx.services.config.learning
    outcome = None if args.outcome is None else (args.outcome.pattern_id, args.outcome.success)
    if args.replaces is not None and outcome is not None:
        raise ToolError("replaces corrects a pattern and starts its record again; report outcomes separately")
    try:
        with store_failures(store.path):
            if args.replaces is not None:
                return await retrying(store.replace, args.replaces, draft)
            return await retrying(store.learn, draft, rules, outcome)
    except UnknownPatternError as exc:
        raise ToolError(str(exc)) from None


async def learn_status(ctx: ToolContext, args: LearnStatusInput) -> LearningStatus:
    store: PatternBackend = ctx.services.patterns
    with store_failures(store.path):
        return await retrying(
            store.status,
            domain=args.domain, language=args.language, top=TOP_PATTERNS, recent=RECENT_EVENTS
        )


TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        name=LEARN_PATTERN,
        title="Learn test pattern",
        description=(
            "Store a reusable testing pattern (test template, assertion, mock, edge case, flaky-test fix or "
            "anti-pattern) for a domain and language; a near-duplicate of the same language, type, domain "
            "and framework is merged instead of added, and an outcome updates a pattern's usage and success "
            "rate; replaces gives a stored pattern corrected text instead of merging. "
            + TEMPLATE_SYNTAX
            + " Returns the pattern with its quality score (0.3 confidence + 0.2 min(uses/100, 1) + 0.5 success "
            "rate) and tier (short-term, or long-term after enough successful uses)."
        ),
        input_type=LearnPatternInput,
        handler=learn_pattern,
        output_type=LearnResult,
    ),
    ToolSpec(
        name=LEARN_STATUS,
        title="Learning status",
        description=(
            "Summarise learned patterns: totals by type, domain and tier, average confidence and success "
            f"rate, the top {TOP_PATTERNS} patterns by quality, and the latest {RECENT_EVENTS} learning "
            "events."
        ),
        input_type=LearnStatusInput,
        handler=learn_status,
        output_type=LearningStatus,
        read_only=True,
        idempotent=True,
    ),
)
