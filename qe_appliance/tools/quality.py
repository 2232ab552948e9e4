"""The quality tools: code metrics for Python sources and a deterministic release gate (issue 5).

Measuring is a `@compute` job (an agent of the fleet, or a worker thread); stored reports are read on the
event loop and handed to the job as data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec

from qe_appliance.coverage.gaps import find_gaps
from qe_appliance.coverage.model import Report, report_totals
from qe_appliance.quality import junit
from qe_appliance.quality.gate import GateMetrics, GatePolicy, GateResult, evaluate, exact_percent, needs
from qe_appliance.quality.metrics import (
    CoverageJoin,
    FileMetrics,
    FunctionRow,
    MetricsTotals,
    join_coverage,
    measure,
)
from qe_appliance.store.database import retrying
from qe_appliance.tools.base import Name, ToolContext, ToolError, ToolSpec
from qe_appliance.tools.coverage import decode_report, read_report, stored_report
from qe_appliance.tools.jobs import fleet_job, user_errors
from qe_appliance.tools.memory import store_failures
from qe_appliance.workspace import Workspace, WorkspaceSpec

QUALITY_GATE = "qe_quality_gate"
QUALITY_METRICS = "qe_quality_metrics"
DEFAULT_POLICY = "default"
MAX_METRICS_FILES = 5_000

Text = Annotated[str, msgspec.Meta(min_length=1)]
Glob = Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]
Globs = Annotated[list[Glob], msgspec.Meta(min_length=1, max_length=100)]


class GateInputs(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Artifacts to measure instead of giving metrics; paths are under the server's workspace roots."""

    coverage_report: Annotated[
        Text | None, msgspec.Meta(description="reportId from qe_coverage_analyze, or a report path.")
    ] = None
    junit_xml: Annotated[
        Text | None,
        msgspec.Meta(
            description="JUnit XML test results (pytest, jest-junit, Maven Surefire): a path, or the "
            "XML itself."
        ),
    ] = None
    source_path: Annotated[
        Text | None,
        msgspec.Meta(description="Python file or directory to measure complexity and maintainability on."),
    ] = None


class QualityGateInput(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Judge a build against a policy (inline `policy` or a configured `policyName`), using `metrics`
    given directly or computed from `inputs`."""

    policy: Annotated[
        GatePolicy | None, msgspec.Meta(description="Thresholds inline; or name a configured policy.")
    ] = None
    policy_name: Annotated[
        Name | None,
        msgspec.Meta(
            description="Name of a policy in the server config (quality.policies); with neither "
            "policy nor policyName, the one named 'default'."
        ),
    ] = None
    metrics: Annotated[
        GateMetrics | None,
        msgspec.Meta(
            description="Measured values to judge; they take precedence over values measured from inputs."
        ),
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
        Globs | None,
        msgspec.Meta(
            description="Only files whose path relative to `path` matches one of these globs, e.g. "
            "['src/**/*.py'] (** spans directories)."
        ),
    ] = None
    exclude: Annotated[
        Globs | None, msgspec.Meta(description="Skip files matching these globs, e.g. ['**/migrations/*'].")
    ] = None
    junit_xml: Annotated[
        Text | None,
        msgspec.Meta(description="JUnit XML results to join with the metrics: a path or the XML."),
    ] = None
    max_files: Annotated[
        int,
        msgspec.Meta(ge=1, le=MAX_METRICS_FILES, description="Per-file rows to return (totals cover all)."),
    ] = 200


class QualityMetricsResult(msgspec.Struct, rename="camel", frozen=True):
    path: str
    totals: MetricsTotals
    worst_functions: Annotated[list[FunctionRow], msgspec.Meta(description="Highest complexity first.")]
    files: list[FileMetrics]
    files_truncated: bool
    coverage: Annotated[
        CoverageJoin | None,
        msgspec.Meta(
            description="The latest qe_coverage_analyze report for this tree; null when there is none."
        ),
    ]
    tests: junit.TestResults | None
    errors: Annotated[list[str], msgspec.Meta(description="Files that could not be measured, and why.")]


def read_junit(workspace: Workspace, given: str) -> junit.TestResults:
    """JUnit results from a workspace path, or from the XML itself when `given` starts with '<'."""
    data = given.encode() if given.lstrip().startswith("<") else workspace.read_bytes(given)
    return junit.parse(data)


def python_files(
    workspace: Workspace, path: str, include: list[str] | None = None, exclude: list[str] | None = None
) -> tuple[Path, Path, list[Path]]:
    """`path` resolved, the directory result paths are relative to, and the .py files under `path` (or
    `path` itself when it is a file)."""
    target = workspace.resolve(path)
    if target.is_file():
        if target.suffix != ".py":
            raise ToolError(f"{path} is not a Python file; give a .py file or a directory")
        return target, target.parent, [workspace.file(target)]
    if not target.is_dir():
        raise ToolError(f"{path} is neither a Python file nor a directory ({target}); give one of those")
    files = workspace.walk(target, (".py",), include, exclude, MAX_METRICS_FILES)
    if not files:
        raise ToolError(
            f"no Python files under {path}" + (" match include/exclude" if include or exclude else "")
        )
    return target, target, files


class _MetricsJob(msgspec.Struct, frozen=True):
    workspace: WorkspaceSpec
    args: QualityMetricsInput
    report_id: str | None
    report_body: bytes | None


@fleet_job
def metrics_job(task: _MetricsJob) -> QualityMetricsResult:
    args, workspace = task.args, Workspace.from_spec(task.workspace)
    target, base, files = python_files(workspace, args.path, args.include, args.exclude)
    joined: CoverageJoin | None = None
    per_file = None
    if task.report_id is not None and task.report_body is not None:
        joined, per_file = join_coverage(decode_report(task.report_body), task.report_id, files)
        if joined.files_matched == 0:
            joined, per_file = None, None
    measured = measure(workspace, files, base, per_file)
    result = QualityMetricsResult(
        path=str(target),
        totals=measured.totals,
        worst_functions=measured.worst,
        files=measured.files[: args.max_files],
        files_truncated=len(measured.files) > args.max_files,
        coverage=joined,
        tests=read_junit(workspace, args.junit_xml) if args.junit_xml is not None else None,
        errors=measured.errors,
    )
    return result


async def quality_metrics(ctx: ToolContext, args: QualityMetricsInput) -> QualityMetricsResult:
    services = ctx.services
    with user_errors():
        target = services.workspace.resolve(args.path)
    reports = services.reports
    with store_failures(reports.path):
        latest = await retrying(reports.latest_for, str(target))
        stored = await retrying(reports.get, latest.id) if latest is not None else None
    work = _MetricsJob(
        services.workspace.spec(), args, stored[0].id if stored else None, stored[1] if stored else None
    )
    return await metrics_job.run(ctx, work)


def resolve_policy(ctx: ToolContext, args: QualityGateInput) -> tuple[str, GatePolicy]:
    if args.policy is not None and args.policy_name is not None:
        raise ToolError("give policy or policyName, not both")
    if args.policy is not None:
        return "inline", args.policy
    name = args.policy_name or DEFAULT_POLICY
    policies: dict[str, GatePolicy] = ctx.services.config.quality.policies
    if name not in policies:
        known = sorted(policies)
        from rapidfuzz import process  # only a misspelt policy name needs it: kept off start-up

        guess = process.extractOne(name, known, score_cutoff=70)
        hint = f"did you mean {guess[0]!r}? " if guess else ""
        raise ToolError(f"no policy named {name!r} in the configuration; {hint}known: {', '.join(known)}")
    return name, policies[name]


class _GateJob(msgspec.Struct, frozen=True):
    workspace: WorkspaceSpec
    policy: GatePolicy
    inputs: GateInputs
    report_body: bytes | None


@fleet_job
def gate_job(task: _GateJob) -> GateMetrics:
    """The metrics the policy judges, measured from the inputs that can give them."""
    workspace, inputs, wanted = Workspace.from_spec(task.workspace), task.inputs, needs(task.policy)
    found = GateMetrics()
    report: Report | None = None
    if inputs.coverage_report is not None and wanted & {"line_coverage", "branch_coverage", "critical_gaps"}:
        if task.report_body is not None:
            report = decode_report(task.report_body)
        else:
            report = read_report(workspace, inputs.coverage_report, None, "auto", None)[0]
        totals = report_totals(report.files)
        found.line_coverage = exact_percent(totals.lines.covered, totals.lines.total)
        branches = totals.branches
        found.branch_coverage = exact_percent(branches.covered, branches.total) if branches else None
    if inputs.source_path is not None and wanted & {"max_complexity", "maintainability"}:
        _, base, files = python_files(workspace, inputs.source_path)
        source_totals = measure(workspace, files, base).totals
        found.max_complexity = source_totals.complexity_max
        found.maintainability = source_totals.maintainability
    if report is not None and "critical_gaps" in wanted:
        gaps = find_gaps(report, workspace, Path(report.root)).gaps
        found.critical_gaps = sum(gap.severity == "critical" for gap in gaps)
    if inputs.junit_xml is not None and wanted & {"failed_tests", "pass_rate", "skipped_ratio"}:
        tests = read_junit(workspace, inputs.junit_xml)
        found.failed_tests = tests.failures + tests.errors
        found.pass_rate = tests.pass_rate
        found.skipped_ratio = tests.skipped_ratio
    return found


async def quality_gate(ctx: ToolContext, args: QualityGateInput) -> GateResult:
    name, policy = resolve_policy(ctx, args)
    if not needs(policy):
        raise ToolError(f"policy {name} sets no thresholds; give at least one, e.g. minLineCoverage")
    if args.metrics is None and args.inputs is None:
        raise ToolError(
            "give metrics (measured values) or inputs (coverageReport, junitXml, sourcePath) to judge"
        )
    metrics = GateMetrics()
    if args.inputs is not None:
        given = args.inputs.coverage_report
        body = await stored_report(ctx, given) if given is not None else None
        work = _GateJob(ctx.services.workspace.spec(), policy, args.inputs, body)
        metrics = await gate_job.run(ctx, work)
    if args.metrics is not None:
        for field in args.metrics.__struct_fields__:
            value = getattr(args.metrics, field)
            if value is not None:
                setattr(metrics, field, value)
    return evaluate(policy, metrics, name)


TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        name=QUALITY_GATE,
        title="Quality gate",
        description=(
            "Decide pass, warn or fail for a build: compares line/branch coverage, complexity, "
            "maintainability, failed tests, pass rate, critical gaps and skipped ratio with a policy's "
            "thresholds. Returns each criterion's actual value, threshold and verdict (warn when the value "
            "could not be measured), and a one-line summary for CI. Deterministic."
        ),
        input_type=QualityGateInput,
        handler=quality_gate,
        output_type=GateResult,
        read_only=True,
        idempotent=True,
        task_support="optional",
    ),
    ToolSpec(
        name=QUALITY_METRICS,
        title="Code quality metrics",
        description=(
            "Measure Python code: lines of code, source lines, comments, cyclomatic complexity (average, "
            "maximum, worst functions) and maintainability index, per file and in total, joined with the "
            "latest coverage report for the same root and with test results when JUnit XML is given."
        ),
        input_type=QualityMetricsInput,
        handler=quality_metrics,
        output_type=QualityMetricsResult,
        read_only=True,
        idempotent=True,
        task_support="optional",
    ),
)
