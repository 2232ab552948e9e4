"""The learning tools: a store of test patterns that improve with reported outcomes (issue 4)."""

from __future__ import annotations

from typing import Annotated, Literal, NoReturn

import msgspec

from qe_appliance.tools.base import NotAvailable, ToolContext, ToolSpec

CATEGORY = "learning"
LEARN_PATTERN = "qe_learn_pattern"
LEARN_STATUS = "qe_learn_status"

PatternType = Literal["test-template", "assertion", "mock", "edge-case", "flaky-fix", "anti-pattern"]
Domain = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Language = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
_DOMAIN = "Problem area, e.g. 'api', 'auth', 'parsing'."
_LANGUAGE = "Programming language, e.g. 'python'."


class PatternOutcome(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Whether applying a stored pattern worked, to update its usage count and success rate."""

    pattern_id: Annotated[str, msgspec.Meta(min_length=1, description="Id of the pattern that was applied.")]
    success: Annotated[bool, msgspec.Meta(description="True when the test built from it passed and helped.")]


class LearnPatternInput(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Teach a pattern (merged into a near-duplicate when one exists), optionally reporting an outcome."""

    pattern: Annotated[
        str,
        msgspec.Meta(min_length=1, max_length=65_536, description="The pattern as text or a code template."),
    ]
    pattern_type: Annotated[PatternType, msgspec.Meta(description="What kind of pattern this is.")]
    domain: Annotated[Domain, msgspec.Meta(description=_DOMAIN)]
    language: Annotated[Language, msgspec.Meta(description=_LANGUAGE)]
    confidence: Annotated[float, msgspec.Meta(ge=0, le=1, description="How sure you are it is good, 0..1.")]
    framework: Annotated[
        Annotated[str, msgspec.Meta(min_length=1, max_length=32)] | None,
        msgspec.Meta(description="Test framework, e.g. 'pytest'."),
    ] = None
    example: Annotated[
        Annotated[str, msgspec.Meta(min_length=1, max_length=65_536)] | None,
        msgspec.Meta(description="A concrete use of the pattern."),
    ] = None
    outcome: Annotated[
        PatternOutcome | None,
        msgspec.Meta(description="Report how applying an existing pattern went, to update its success rate."),
    ] = None


class LearnStatusInput(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Summarise what has been learned, optionally for one domain or language."""

    domain: Annotated[Domain | None, msgspec.Meta(description=f"Only this domain. {_DOMAIN}")] = None
    language: Annotated[Language | None, msgspec.Meta(description=f"Only this language. {_LANGUAGE}")] = None


async def learn_pattern(ctx: ToolContext, args: LearnPatternInput) -> NoReturn:
    raise NotAvailable(LEARN_PATTERN)


async def learn_status(ctx: ToolContext, args: LearnStatusInput) -> NoReturn:
    raise NotAvailable(LEARN_STATUS)


TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        name=LEARN_PATTERN,
        title="Learn test pattern",
        description=(
            "Store a reusable testing pattern (test template, assertion, mock, edge case, flaky-test fix or "
            "anti-pattern) for a domain and language; a near-duplicate is merged instead of added, and an "
            "outcome updates a pattern's usage and success rate. Returns the pattern with its quality score "
            "and tier (short-term or long-term)."
        ),
        category=CATEGORY,
        input_type=LearnPatternInput,
        handler=learn_pattern,
    ),
    ToolSpec(
        name=LEARN_STATUS,
        title="Learning status",
        description=(
            "Summarise learned patterns: totals by type, domain and tier, average confidence and success "
            "rate, the top patterns by quality, and the latest learning events."
        ),
        category=CATEGORY,
        input_type=LearnStatusInput,
        handler=learn_status,
        read_only=True,
        idempotent=True,
    ),
)
