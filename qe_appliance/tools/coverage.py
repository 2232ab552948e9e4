"""The coverage tools: parse real coverage reports, then rank the riskiest uncovered code (issue 5).

Parsing and gap analysis are `@compute` jobs (an agent of the fleet, or a worker thread): they get the
workspace and any stored report as data and never touch the server's databases; the handlers read and
write the reports store on the event loop.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from qe_appliance.coverage.formats import FormatChoice, parse_report
from qe_appliance.coverage.gaps import Gap, find_gaps
from qe_appliance.coverage.model import (
    FileCoverage,
    Measure,
    Report,
    Totals,
    file_totals,
    missed_runs,
    ranges_text,
    report_totals,
)
from qe_appliance.store.database import retrying
from qe_appliance.store.reports import StoredReport
from qe_appliance.tools.base import Name, ToolContext, ToolError, ToolSpec
from qe_appliance.tools.jobs import fleet_job
from qe_appliance.tools.memory import store_failures
from qe_appliance.workspace import Workspace, WorkspaceSpec

COVERAGE_ANALYZE = "qe_coverage_analyze"
COVERAGE_GAPS = "qe_coverage_gaps"

SortKey = Literal["lineCoverage", "branchCoverage", "functionCoverage", "missedLines", "path"]

Text = Annotated[str, msgspec.Meta(min_length=1)]
_PATH = "Coverage report file under the server's workspace roots; or give content."
_CONTENT = "The coverage report itself, inline; or give path."
_REPORTS = msgspec.msgpack.Decoder(Report)
_ENCODER = msgspec.msgpack.Encoder()
REPORT_ID = re.compile(r"cov-[0-9a-f]{16}")


class CoverageAnalyzeInput(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Parse a coverage report given as a file `path` or inline `content`."""

    path: Annotated[Text | None, msgspec.Meta(description=_PATH)] = None
    content: Annotated[Text | None, msgspec.Meta(description=_CONTENT)] = None
    format: Annotated[
        FormatChoice, msgspec.Meta(description="Report format; auto detects it from the content.")
    ] = "auto"
    root: Annotated[
        Text | None,
        msgspec.Meta(
            description="Project root that the report's file names are relative to; default: the report "
            "file's directory (for inline content, the first workspace root)."
        ),
    ] = None
    sort_by: Annotated[
        SortKey,
        msgspec.Meta(
            description="Order of the per-file table; coverage sorts put files with nothing to cover last."
        ),
    ] = "lineCoverage"
    descending: Annotated[
        bool, msgspec.Meta(description="Sort the table high to low (default low first).")
    ] = False
    max_files: Annotated[
        int, msgspec.Meta(ge=1, le=10_000, description="Rows of the per-file table to return.")
    ] = 50


class FileRow(msgspec.Struct, rename="camel", frozen=True):
    path: str
    lines: Measure
    branches: Measure | None
    functions: Measure | None
    missed: Annotated[str, msgspec.Meta(description="Missed line ranges, e.g. '18-19,23-29'.")]


class CoverageAnalyzeResult(msgspec.Struct, rename="camel", frozen=True):
    report_id: Annotated[str, msgspec.Meta(description="Give to qe_coverage_gaps or qe_quality_gate.")]
    format: str
    root: str
    files: int
    totals: Annotated[
        Totals,
        msgspec.Meta(
            description="branches / functions are null when the format or "
            "this report does not carry them; percent is null for 0 of 0."
        ),
    ]
    table: list[FileRow]
    table_truncated: bool


class CoverageGapsInput(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Find and rank uncovered code from a stored report (`reportId`) or a report `path` or `content`."""

    report_id: Annotated[
        Name | None, msgspec.Meta(description="reportId returned by qe_coverage_analyze.")
    ] = None
    path: Annotated[Text | None, msgspec.Meta(description=_PATH)] = None
    content: Annotated[Text | None, msgspec.Meta(description=_CONTENT)] = None
    source_root: Annotated[
        Text | None,
        msgspec.Meta(
            description="Source tree the report covers, so gaps name their function and git churn counts; "
            "default: the report's root."
        ),
    ] = None
    min_risk: Annotated[
        float, msgspec.Meta(ge=0, le=1, description="Leave out gaps whose risk score (0..1) is below this.")
    ] = 0.3
    limit: Annotated[int, msgspec.Meta(ge=1, le=500, description="Most gaps to return, riskiest first.")] = 20


class SeverityCounts(msgspec.Struct, frozen=True):
    critical: int
    high: int
    medium: int
    low: int


class CoverageGapsResult(msgspec.Struct, rename="camel", frozen=True):
    report_id: str | None
    format: str
    source_root: str
    files_with_gaps: int
    sources_found: Annotated[int, msgspec.Meta(description="Files with gaps whose source was read.")]
    churn_measured: bool
    gaps_total: int
    severities: SeverityCounts
    gaps: Annotated[
        list[Gap], msgspec.Meta(description="At or above minRisk, riskiest first, at most limit.")
    ]
    warnings: list[str]


def one_source(**given: str | None) -> str:
    """The name of the single argument given among `given`; ToolError naming them otherwise."""
    present = [name for name, value in given.items() if value is not None]
    if len(present) != 1:
        names = " or ".join(given)
        raise ToolError(f"give exactly one of {names} (got {', '.join(present) or 'none'})")
    return present[0]


def report_id(fmt: str, root: str, data: bytes) -> str:
    digest = hashlib.blake2b(data, digest_size=8, person=b"aqe-report")
    digest.update(f"\x00{fmt}\x00{root}".encode())
    return f"cov-{digest.hexdigest()}"


def read_report(
    workspace: Workspace, path: str | None, content: str | None, fmt: FormatChoice, root: str | None
) -> tuple[Report, bytes]:
    """Parse a report from a workspace file or inline text; returns it and the bytes it came from."""
    if path is not None:
        report_file = workspace.file(path)
        data = workspace.read_bytes(report_file)
        default_root = report_file.parent
    else:
        assert content is not None
        data = content.encode()
        default_root = workspace.roots[0]
    root_dir = workspace.directory(root) if root is not None else default_root
    return parse_report(data, fmt, str(root_dir)), data


class _AnalyzeJob(msgspec.Struct, frozen=True):
    workspace: WorkspaceSpec
    args: CoverageAnalyzeInput


class _AnalyzeOutcome(msgspec.Struct, frozen=True):
    result: CoverageAnalyzeResult
    meta: StoredReport
    body: bytes


class _GapsJob(msgspec.Struct, frozen=True):
    workspace: WorkspaceSpec
    args: CoverageGapsInput
    body: bytes | None


@fleet_job
def analyze_job(task: _AnalyzeJob) -> _AnalyzeOutcome:
    args = task.args
    report, data = read_report(
        Workspace.from_spec(task.workspace), args.path, args.content, args.format, args.root
    )
    rid = report_id(report.format, report.root, data)
    rows = [(entry, file_totals(entry)) for entry in report.files]
    rows.sort(key=_sort_key(args.sort_by), reverse=args.descending)
    if args.sort_by != "path":  # files with nothing to measure stay last whichever way the sort goes
        rows.sort(key=lambda row: _value(row, args.sort_by) is None)
    # Missed ranges only for the rows returned: on a 50 MB report, all of them would cost more than the parse.
    table = [
        FileRow(
            entry.path,
            totals.lines,
            totals.branches,
            totals.functions,
            ranges_text(missed_runs(entry.lines, entry.missed)),
        )
        for entry, totals in rows[: args.max_files]
    ]
    result = CoverageAnalyzeResult(
        report_id=rid,
        format=report.format,
        root=report.root,
        files=len(report.files),
        totals=report_totals(report.files),
        table=table,
        table_truncated=len(rows) > args.max_files,
    )
    meta = StoredReport(rid, report.format, report.root, args.path or "inline", time.time())
    return _AnalyzeOutcome(result, meta, _ENCODER.encode(report))


def _value(row: tuple[FileCoverage, Totals], key: SortKey) -> float | str | None:
    entry, totals = row
    if key == "path":
        return entry.path
    if key == "missedLines":
        return len(entry.missed)
    measure = {
        "lineCoverage": totals.lines,
        "branchCoverage": totals.branches,
        "functionCoverage": totals.functions,
    }
    chosen = measure[key]
    return chosen.percent if chosen is not None else None


def _sort_key(key: SortKey) -> Callable[[tuple[FileCoverage, Totals]], tuple[Any, str]]:
    def sort_key(row: tuple[FileCoverage, Totals]) -> tuple[Any, str]:
        value = _value(row, key)
        return (0 if value is None else value, row[0].path)

    return sort_key


async def coverage_analyze(ctx: ToolContext, args: CoverageAnalyzeInput) -> CoverageAnalyzeResult:
    one_source(path=args.path, content=args.content)
    outcome = await analyze_job.run(ctx, _AnalyzeJob(ctx.services.workspace.spec(), args))
    reports = ctx.services.reports
    with store_failures(reports.path):
        await retrying(reports.put, outcome.meta, outcome.body)
    return outcome.result


async def stored_report(ctx: ToolContext, rid: str) -> bytes | None:
    """The encoded report stored under `rid` (read on the loop thread). None when `rid` is not shaped
    like a reportId; ToolError when it is but no such report is kept."""
    reports = ctx.services.reports
    with store_failures(reports.path):
        found = await retrying(reports.get, rid)
    if found is not None:
        return found[1]
    if REPORT_ID.fullmatch(rid):
        raise ToolError(
            f"no stored report {rid!r}; run qe_coverage_analyze to get a reportId (the newest "
            f"{ctx.services.reports.max_reports} reports are kept)"
        )
    return None


def decode_report(body: bytes) -> Report:
    return _REPORTS.decode(body)


@fleet_job
def gaps_job(task: _GapsJob) -> CoverageGapsResult:
    args, workspace = task.args, Workspace.from_spec(task.workspace)
    if task.body is not None:
        report = decode_report(task.body)
    else:
        report = read_report(workspace, args.path, args.content, "auto", None)[0]
    source_root = workspace.directory(args.source_root) if args.source_root else Path(report.root)
    analysis = find_gaps(report, workspace, source_root)
    counts = {"critical": 0, "high": 0, "medium": 0, "low": 0}
    for gap in analysis.gaps:
        counts[gap.severity] += 1
    kept = [gap for gap in analysis.gaps if gap.risk >= args.min_risk]
    result = CoverageGapsResult(
        report_id=args.report_id,
        format=report.format,
        source_root=str(source_root),
        files_with_gaps=analysis.files_with_gaps,
        sources_found=analysis.sources_found,
        churn_measured=analysis.churn_measured,
        gaps_total=len(analysis.gaps),
        severities=SeverityCounts(**counts),
        gaps=kept[: args.limit],
        warnings=analysis.warnings,
    )
    return result


async def coverage_gaps(ctx: ToolContext, args: CoverageGapsInput) -> CoverageGapsResult:
    one_source(reportId=args.report_id, path=args.path, content=args.content)
    body = None
    if args.report_id is not None:
        body = await stored_report(ctx, args.report_id)
        if body is None:
            raise ToolError(f"{args.report_id!r} is not a reportId (they look like cov-0123456789abcdef)")
    return await gaps_job.run(ctx, _GapsJob(ctx.services.workspace.spec(), args, body))


class _AllGapsJob(msgspec.Struct, frozen=True):
    workspace: WorkspaceSpec
    report_id: str
    body: bytes
    file: str | None


@fleet_job
def all_gaps_job(task: _AllGapsJob) -> bytes:
    """Every gap (of one file, or all), encoded as JSON where it was ranked: tens of thousands of gaps never
    cross back as Structs to decode on the event loop."""
    # Built here, not decoded: the tool's limit argument stops at 500, this ranking has none.
    args = CoverageGapsInput(report_id=task.report_id, min_risk=0.0, limit=2**62)
    ranked = gaps_job(_GapsJob(task.workspace, args, task.body))
    if task.file is not None:
        kept = [gap for gap in ranked.gaps if gap.file == task.file]
        ranked = msgspec.structs.replace(ranked, gaps=kept, gaps_total=len(kept))
    return msgspec.json.encode(ranked)


async def rank_all_gaps(ctx: ToolContext, report_id: str, body: bytes, file: str | None = None) -> bytes:
    """Every gap of a stored report, riskiest first, as qe_coverage_gaps' JSON (minRisk 0, no limit: the
    aqe://coverage/{id}/gaps resource); only `file`'s when given."""
    return await all_gaps_job.run(ctx, _AllGapsJob(ctx.services.workspace.spec(), report_id, body, file))


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
        input_type=CoverageAnalyzeInput,
        handler=coverage_analyze,
        output_type=CoverageAnalyzeResult,
        # Keeps the parsed report for later calls, so it writes state and each call may add a report.
        read_only=False,
        idempotent=False,
        task_support="optional",
    ),
    ToolSpec(
        name=COVERAGE_GAPS,
        title="Find coverage gaps",
        description=(
            "List uncovered code as contiguous line ranges, each with its enclosing function or class, a "
            "risk score 0..1 (weighted mean of gap size 0.20, the function's uncovered share 0.25, its "
            "missed branches 0.15, cyclomatic complexity 0.25 and git churn 0.15, over the factors that "
            "could be measured), a severity (critical >= 0.75, high >= 0.5, medium >= 0.3) and the test "
            "file to add it to, riskiest first."
        ),
        input_type=CoverageGapsInput,
        handler=coverage_gaps,
        output_type=CoverageGapsResult,
        read_only=True,
        idempotent=True,
        task_support="optional",
    ),
)
