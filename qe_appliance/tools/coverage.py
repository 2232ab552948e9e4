"""The coverage tools: parse real coverage reports, then rank the riskiest uncovered code (issue 5)."""

from __future__ import annotations

from typing import Annotated, Literal, NoReturn

import msgspec

from qe_appliance.tools.base import NotAvailable, ToolContext, ToolSpec

CATEGORY = "coverage-analysis"
COVERAGE_ANALYZE = "qe_coverage_analyze"
COVERAGE_GAPS = "qe_coverage_gaps"

ReportFormat = Literal["auto", "coveragepy-json", "cobertura", "lcov", "istanbul", "jacoco"]

Text = Annotated[str, msgspec.Meta(min_length=1)]
_PATH = "Coverage report file under the server's workspace roots; or give content."
_CONTENT = "The coverage report itself, inline; or give path."


class CoverageAnalyzeInput(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Parse a coverage report given as a file `path` or inline `content`."""

    path: Annotated[Text | None, msgspec.Meta(description=_PATH)] = None
    content: Annotated[Text | None, msgspec.Meta(description=_CONTENT)] = None
    format: Annotated[
        ReportFormat, msgspec.Meta(description="Report format; auto detects it from the content.")
    ] = "auto"
    root: Annotated[
        Text | None,
        msgspec.Meta(description="Project root that the report's file names are relative to."),
    ] = None


class CoverageGapsInput(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Find and rank uncovered code from a stored report (`reportId`) or a report `path` or `content`."""

    report_id: Annotated[
        Text | None, msgspec.Meta(description="reportId returned by qe_coverage_analyze.")
    ] = None
    path: Annotated[Text | None, msgspec.Meta(description=_PATH)] = None
    content: Annotated[Text | None, msgspec.Meta(description=_CONTENT)] = None
    source_root: Annotated[
        Text | None,
        msgspec.Meta(
            description="Source tree the report covers, so gaps name their function and git churn counts."
        ),
    ] = None
    min_risk: Annotated[
        float, msgspec.Meta(ge=0, le=1, description="Leave out gaps whose risk score (0..1) is below this.")
    ] = 0.3
    limit: Annotated[int, msgspec.Meta(ge=1, le=500, description="Most gaps to return, riskiest first.")] = 20


async def coverage_analyze(ctx: ToolContext, args: CoverageAnalyzeInput) -> NoReturn:
    raise NotAvailable(COVERAGE_ANALYZE)


async def coverage_gaps(ctx: ToolContext, args: CoverageGapsInput) -> NoReturn:
    raise NotAvailable(COVERAGE_GAPS)


TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        name=COVERAGE_ANALYZE,
        title="Analyze coverage report",
        description=(
            "Parse a coverage report (coverage.py JSON, Cobertura XML, LCOV, Istanbul JSON or JaCoCo XML; "
            "format auto-detected) into line, branch and function totals and a per-file table. Numbers are "
            "measured from the report; null where the format does not carry them. Returns a reportId that "
            "qe_coverage_gaps and qe_quality_gate accept."
        ),
        category=CATEGORY,
        input_type=CoverageAnalyzeInput,
        handler=coverage_analyze,
        # Keeps the parsed report for later calls, so it writes state and each call may add a report.
        read_only=False,
        idempotent=False,
    ),
    ToolSpec(
        name=COVERAGE_GAPS,
        title="Find coverage gaps",
        description=(
            "List uncovered code as contiguous line ranges, each with its enclosing function or class, a "
            "risk score 0..1 (gap size, uncovered fraction, branch gaps, complexity, git churn), a severity, "
            "and the test file to add it to, riskiest first."
        ),
        category=CATEGORY,
        input_type=CoverageGapsInput,
        handler=coverage_gaps,
        read_only=True,
        idempotent=True,
    ),
)
