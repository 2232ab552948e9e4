"""The quality tools: code metrics for Python sources and a deterministic release gate (issue 5)."""

from __future__ import annotations

from typing import Annotated, NoReturn

import msgspec

from qe_appliance.tools.base import NotAvailable, ToolContext, ToolSpec

CATEGORY = "quality-assessment"
QUALITY_GATE = "qe_quality_gate"
QUALITY_METRICS = "qe_quality_metrics"

Text = Annotated[str, msgspec.Meta(min_length=1)]
Percent = Annotated[float, msgspec.Meta(ge=0, le=100)]
Ratio = Annotated[float, msgspec.Meta(ge=0, le=1)]
Count = Annotated[int, msgspec.Meta(ge=0)]
Globs = Annotated[list[Text], msgspec.Meta(min_length=1, max_length=100)]


class GatePolicy(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Thresholds to enforce; any subset. Coverage and maintainability in percent, rates as ratios 0..1."""

    min_line_coverage: Annotated[Percent | None, msgspec.Meta(description="Line coverage %, at least.")] = (
        None
    )
    min_branch_coverage: Annotated[
        Percent | None, msgspec.Meta(description="Branch coverage %, at least.")
    ] = None
    max_complexity: Annotated[
        Count | None, msgspec.Meta(description="Cyclomatic complexity of the worst function, at most.")
    ] = None
    min_maintainability: Annotated[
        Percent | None, msgspec.Meta(description="Maintainability index (0..100), at least.")
    ] = None
    max_failed_tests: Annotated[
        Count | None, msgspec.Meta(description="Failed plus errored tests, at most.")
    ] = None
    min_pass_rate: Annotated[
        Ratio | None, msgspec.Meta(description="Passed / run tests (0..1), at least.")
    ] = None
    max_critical_gaps: Annotated[
        Count | None, msgspec.Meta(description="Coverage gaps of critical severity, at most.")
    ] = None
    max_skipped_ratio: Annotated[
        Ratio | None, msgspec.Meta(description="Skipped / all tests (0..1), at most.")
    ] = None


class GateMetrics(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Measured values to judge, when the caller already has them; same units as the policy."""

    line_coverage: Percent | None = None
    branch_coverage: Percent | None = None
    max_complexity: Count | None = None
    maintainability: Percent | None = None
    failed_tests: Count | None = None
    pass_rate: Ratio | None = None
    critical_gaps: Count | None = None
    skipped_ratio: Ratio | None = None


class GateInputs(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Artifacts to measure instead of giving metrics; paths are under the server's workspace roots."""

    coverage_report: Annotated[
        Text | None, msgspec.Meta(description="reportId from qe_coverage_analyze, or a report path.")
    ] = None
    junit_xml: Annotated[
        Text | None, msgspec.Meta(description="JUnit XML test results (pytest, jest-junit, Maven Surefire).")
    ] = None
    source_path: Annotated[
        Text | None, msgspec.Meta(description="Python sources to measure complexity and maintainability on.")
    ] = None


class QualityGateInput(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Judge a build against a policy (inline `policy` or a configured `policyName`), using `metrics`
    given directly or computed from `inputs`."""

    policy: Annotated[
        GatePolicy | None, msgspec.Meta(description="Thresholds inline; or name a configured policy.")
    ] = None
    policy_name: Annotated[
        Text | None, msgspec.Meta(description="Name of a policy in the server config; or give policy.")
    ] = None
    metrics: Annotated[
        GateMetrics | None, msgspec.Meta(description="Measured values to judge; or give inputs to measure.")
    ] = None
    inputs: Annotated[
        GateInputs | None, msgspec.Meta(description="Report, test results and sources to measure.")
    ] = None


class QualityMetricsInput(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Measure the Python code under `path`."""

    path: Annotated[
        Text, msgspec.Meta(description="Python file or directory under the server's workspace roots.")
    ]
    include: Annotated[
        Globs | None, msgspec.Meta(description="Only files matching these globs, e.g. ['src/**/*.py'].")
    ] = None
    exclude: Annotated[
        Globs | None, msgspec.Meta(description="Skip files matching these globs, e.g. ['**/migrations/*'].")
    ] = None
    junit_xml: Annotated[
        Text | None, msgspec.Meta(description="JUnit XML results to join with the metrics.")
    ] = None


async def quality_gate(ctx: ToolContext, args: QualityGateInput) -> NoReturn:
    raise NotAvailable(QUALITY_GATE)


async def quality_metrics(ctx: ToolContext, args: QualityMetricsInput) -> NoReturn:
    raise NotAvailable(QUALITY_METRICS)


TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        name=QUALITY_GATE,
        title="Quality gate",
        description=(
            "Decide pass, warn or fail for a build: compares line/branch coverage, complexity, "
            "maintainability, failed tests, pass rate, critical gaps and skipped ratio with a policy's "
            "thresholds. Returns each criterion's actual value, threshold and verdict, and a one-line "
            "summary for CI. Deterministic."
        ),
        category=CATEGORY,
        input_type=QualityGateInput,
        handler=quality_gate,
        read_only=True,
        idempotent=True,
    ),
    ToolSpec(
        name=QUALITY_METRICS,
        title="Code quality metrics",
        description=(
            "Measure Python code: lines of code, source lines, comments, cyclomatic complexity (average, "
            "maximum, worst functions) and maintainability index, per file and in total, joined with the "
            "latest coverage report for the same root and with test results when JUnit XML is given."
        ),
        category=CATEGORY,
        input_type=QualityMetricsInput,
        handler=quality_metrics,
        read_only=True,
        idempotent=True,
    ),
)
