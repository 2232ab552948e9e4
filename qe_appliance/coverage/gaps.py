"""Coverage gaps: a file's missed lines merged into blocks (a block breaks at an executed line and at a
function boundary), each attributed to its innermost function or class and ranked by risk.

Risk is a weighted mean, over the factors that could be measured, of five numbers in 0..1:

  size        0.20  missed lines in the block / 20 (capped at 1)
  uncovered   0.25  missed / executable lines of the enclosing function (of the whole file for a
                    block outside every function)
  branches    0.15  branch points never taken / branch points in the enclosing function (0 if it has
                    none); left out when the report has no branch data
  complexity  0.25  (cyclomatic complexity - 1) / 19, capped at 1: radon for Python sources, the
                    report's own value for JaCoCo and Cobertura methods; left out when unknown
  churn       0.15  log(1 + lines changed) / log(1 + 500) over the last 500 commits of the file's git
                    repository, capped at 1; left out when the source is not in a git work tree
  api         0.10  1 for public API (exported, in `__all__`, no leading underscore), 0 for a private
                    helper; left out without a Python source
  calls       0.10  log(1 + call sites) / log(1 + 20), capped at 1: calls naming the function anywhere in
                    the project's Python files (an AST call graph); left out without a Python source

Gaps nobody tests on purpose rank last whatever their risk, with the reason (`rankedLast`): `__main__` and
`TYPE_CHECKING` blocks, `# pragma: no cover`, abstract methods, NotImplementedError stubs, vendored or
third-party copies and test files. Each gap lists the value of every factor of its score (`score`).

Severity: critical from 0.75, high from 0.5, medium from 0.3, low below.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Final, Literal

import msgspec

from qe_appliance.coverage import churn as git_churn
from qe_appliance.coverage import priority
from qe_appliance.coverage.model import FileCoverage, Report, missed_runs
from qe_appliance.coverage.sources import ProjectLayout, locate
from qe_appliance.quality.pysource import SOURCES, Scope, SourceError
from qe_appliance.workspace import Workspace, WorkspaceError

Severity = Literal["critical", "high", "medium", "low"]
WEIGHTS: Final = {
    "size": 0.20,
    "uncovered": 0.25,
    "branches": 0.15,
    "complexity": 0.25,
    "churn": 0.15,
    "api": 0.10,
    "calls": 0.10,
}
CALLS_FULL: Final = 20
SIZE_FULL: Final = 20
COMPLEXITY_FULL: Final = 20
CHURN_FULL: Final = 500
SEVERITIES: Final[tuple[tuple[float, Severity], ...]] = ((0.75, "critical"), (0.5, "high"), (0.3, "medium"))
MAX_WARNINGS: Final = 20


class GapFactors(msgspec.Struct, rename="camel", frozen=True):
    """The measurements behind a gap's risk; null where they could not be measured."""

    missed_lines: int
    scope_lines: int
    scope_missed_lines: int
    branch_points: int | None
    branch_points_missed: int | None
    complexity: int | None
    churn_lines: int | None
    public: bool | None = None
    call_sites: int | None = None


class Gap(msgspec.Struct, rename="camel", frozen=True):
    file: str
    start_line: int
    end_line: int
    function: str | None
    kind: str | None
    risk: float
    severity: Severity
    factors: GapFactors
    suggested_test: str
    ranked_last: Annotated[
        str | None, msgspec.Meta(description="Why this gap ranks last whatever its risk; null if it does not.")
    ] = None
    score: Annotated[
        dict[str, float], msgspec.Meta(description="Each measured factor of the risk, 0..1, by name.")
    ] = msgspec.field(default_factory=dict)


class GapAnalysis(msgspec.Struct, frozen=True):
    gaps: list[Gap]  # riskiest first
    files_with_gaps: int
    sources_found: int
    churn_measured: bool
    warnings: list[str]


def severity_of(risk: float) -> Severity:
    for floor, name in SEVERITIES:
        if risk >= floor:
            return name
    return "low"


def risk_of(factors: GapFactors) -> float:
    parts = score_parts(factors)
    weight = sum(WEIGHTS[name] for name in parts)
    return round(sum(WEIGHTS[name] * value for name, value in parts.items()) / weight, 3)


def score_parts(factors: GapFactors) -> dict[str, float]:
    """The value (0..1) of each factor that could be measured."""
    parts = {
        "size": min(1.0, factors.missed_lines / SIZE_FULL),
        "uncovered": factors.scope_missed_lines / factors.scope_lines if factors.scope_lines else 1.0,
    }
    if factors.branch_points is not None and factors.branch_points_missed is not None:
        parts["branches"] = (
            factors.branch_points_missed / factors.branch_points if factors.branch_points else 0.0
        )
    if factors.complexity is not None:
        parts["complexity"] = min(1.0, max(0, factors.complexity - 1) / (COMPLEXITY_FULL - 1))
    if factors.churn_lines is not None:
        parts["churn"] = min(1.0, math.log1p(factors.churn_lines) / math.log1p(CHURN_FULL))
    if factors.public is not None:
        parts["api"] = 1.0 if factors.public else 0.0
    if factors.call_sites is not None:
        parts["calls"] = min(1.0, math.log1p(factors.call_sites) / math.log1p(CALLS_FULL))
    return parts


def find_gaps(report: Report, workspace: Workspace, source_root: Path) -> GapAnalysis:
    """Every gap of the report, riskiest first."""
    changes = git_churn.churn(source_root)
    calls = priority.call_sites(source_root, workspace) if source_root.is_dir() else None
    layout = ProjectLayout(source_root)
    warnings: list[str] = []
    gaps: list[Gap] = []
    files_with_gaps = sources_found = 0
    for entry in report.files:
        if not entry.missed:
            continue
        files_with_gaps += 1
        source = locate(workspace, entry.path, source_root, report.source_dirs)
        sources_found += source is not None
        spans = _spans(entry, source, workspace, warnings)
        file_churn = None
        if changes is not None and source is not None:
            file_churn = changes.get(source, 0)
        test = layout.suggest(source, entry.path)
        facts = _facts(entry.path, source, workspace)
        gaps += _file_gaps(entry, spans, file_churn, test, facts, calls)
    gaps.sort(key=lambda gap: (gap.ranked_last is not None, -gap.risk, gap.file, gap.start_line))
    return GapAnalysis(gaps, files_with_gaps, sources_found, changes is not None, warnings[:MAX_WARNINGS])


def _facts(path: str, source: Path | None, workspace: Workspace) -> priority.FileFacts:
    """What the source says about ranking (from the report's path alone when there is no source)."""
    if source is not None and source.suffix == ".py":
        try:
            return priority.read_facts(str(source), workspace.read_text(source))
        except (OSError, WorkspaceError):
            pass
    return priority.FileFacts(priority.file_reason(path), {}, None)


def _spans(
    entry: FileCoverage, source: Path | None, workspace: Workspace, warnings: list[str]
) -> list[Scope]:
    """Functions and classes of the file: from the Python source when there is one that matches the
    report, else from the report's own function list (ends inferred from the next function's start)."""
    if source is not None and source.suffix == ".py":
        try:
            parsed = SOURCES.get(workspace, source)
        except (SourceError, WorkspaceError) as exc:
            warnings.append(f"{entry.path}: source not used: {exc}")
        else:
            if entry.lines and entry.lines[-1] > parsed.loc:
                warnings.append(
                    f"{entry.path}: the report names line {entry.lines[-1]} but {source} has {parsed.loc} "
                    "lines; the source changed since the report was made, so re-run coverage"
                )
            else:
                return list(parsed.scopes)
    return _report_spans(entry)


def _report_spans(entry: FileCoverage) -> list[Scope]:
    functions = sorted(
        (fn for fn in entry.functions or () if fn.start is not None), key=lambda fn: fn.start or 0
    )
    last_line = entry.lines[-1] if entry.lines else 0
    spans = []
    for index, fn in enumerate(functions):
        assert fn.start is not None
        end = fn.end
        if end is None:
            following = [
                other.start for other in functions[index + 1 :] if other.start and other.start > fn.start
            ]
            end = following[0] - 1 if following else max(last_line, fn.start)
        spans.append(Scope(fn.name, "function", fn.start, end, fn.complexity))
    spans.sort(key=lambda span: (span.start, -span.end))
    return spans


def _innermost(lines: Sequence[int], spans: Sequence[Scope]) -> list[Scope | None]:
    """The innermost span holding each line (lines ascending, spans by start then widest first)."""
    found: list[Scope | None] = []
    stack: list[Scope] = []
    position = 0
    for line in lines:
        while position < len(spans) and spans[position].start <= line:
            stack.append(spans[position])
            position += 1
        while stack and stack[-1].end < line:
            stack.pop()
        found.append(stack[-1] if stack and stack[-1].start <= line else None)
    return found


def _count_between(values: Sequence[int], start: int, end: int) -> int:
    return bisect.bisect_right(values, end) - bisect.bisect_left(values, start)


def _file_gaps(
    entry: FileCoverage,
    spans: list[Scope],
    file_churn: int | None,
    test: str,
    facts: priority.FileFacts,
    calls: Counter[str] | None,
) -> list[Gap]:
    owners = _innermost(entry.missed, spans)
    owner_of = dict(zip(entry.missed, owners, strict=True))
    reasons = facts.line_reasons

    def gap(block: list[int]) -> Gap:
        owner = owner_of[block[0]]
        why = facts.file_reason or reasons.get(block[0])
        public = sites = None
        if owner is not None and facts.parsed:
            public = priority.is_public(owner.name, facts.exported)
            sites = calls.get(owner.name.rsplit(".", 1)[-1], 0) if calls is not None else None
        return _gap(entry, block, owner, points, never, file_churn, test, why, public, sites)

    points = sorted(entry.branch_points) if entry.branch_points is not None else None
    never = sorted(entry.branch_missed or ()) if entry.branch_points is not None else None
    gaps = []
    for run_start, run_end, _ in missed_runs(entry.lines, entry.missed):
        block: list[int] = []
        for line in entry.missed[
            bisect.bisect_left(entry.missed, run_start) : bisect.bisect_right(entry.missed, run_end)
        ]:
            if block and (
                owner_of[line] is not owner_of[block[0]] or reasons.get(line) != reasons.get(block[0])
            ):
                gaps.append(gap(block))
                block = []
            block.append(line)
        if block:
            gaps.append(gap(block))
    return gaps


def _gap(
    entry: FileCoverage,
    block: list[int],
    owner: Scope | None,
    points: list[int] | None,
    never: list[int] | None,
    file_churn: int | None,
    test: str,
    ranked_last: str | None,
    public: bool | None,
    sites: int | None,
) -> Gap:
    start, end = (owner.start, owner.end) if owner else (1, entry.lines[-1])
    factors = GapFactors(
        missed_lines=len(block),
        scope_lines=_count_between(entry.lines, start, end),
        scope_missed_lines=_count_between(entry.missed, start, end),
        branch_points=_count_between(points, start, end) if points is not None else None,
        branch_points_missed=_count_between(never, start, end) if never is not None else None,
        complexity=owner.complexity if owner else None,
        churn_lines=file_churn,
        public=public,
        call_sites=sites,
    )
    risk = risk_of(factors)
    return Gap(
        file=entry.path,
        start_line=block[0],
        end_line=block[-1],
        function=owner.name if owner else None,
        kind=owner.kind if owner else None,
        risk=risk,
        severity="low" if ranked_last else severity_of(risk),
        factors=factors,
        suggested_test=test,
        ranked_last=ranked_last,
        score={name: round(value, 3) for name, value in score_parts(factors).items()},
    )
