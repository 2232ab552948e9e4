"""Code metrics of a set of Python files, per file and in total, optionally joined with the line
coverage a report measured for the same files.

Totals: line counts are sums; complexity average and maximum are over every function, method and closure;
the maintainability index is the SLOC-weighted mean of the files' (a file without code weighs 1).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import msgspec

from qe_appliance.coverage.model import Measure, Report, file_totals, report_totals
from qe_appliance.quality.pysource import SOURCES, PySource, SourceError
from qe_appliance.workspace import Workspace, WorkspaceError

WORST_PER_FILE: Final = 3
WORST_OVERALL: Final = 10


class FunctionRow(msgspec.Struct, rename="camel", frozen=True):
    file: str
    name: str
    kind: str
    line: int
    complexity: int


class FileMetrics(msgspec.Struct, rename="camel", frozen=True):
    path: str
    loc: int
    lloc: int
    sloc: int
    comments: int
    multi: int
    blank: int
    functions: int
    complexity_average: float | None
    complexity_max: int | None
    maintainability: float
    line_coverage: float | None
    worst_functions: list[FunctionRow]


class MetricsTotals(msgspec.Struct, rename="camel", frozen=True):
    files: int
    loc: int
    lloc: int
    sloc: int
    comments: int
    multi: int
    blank: int
    functions: int
    complexity_average: float | None
    complexity_max: int | None
    maintainability: float | None
    maintainability_min: float | None


class CoverageJoin(msgspec.Struct, rename="camel", frozen=True):
    """The latest coverage report covering these files, over the files it names (filesMatched)."""

    report_id: str
    format: str
    files_matched: int
    lines: Measure
    branches: Measure | None


class Measured(msgspec.Struct, frozen=True):
    files: list[FileMetrics]
    totals: MetricsTotals
    worst: list[FunctionRow]
    errors: list[str]


def measure(
    workspace: Workspace,
    files: Sequence[Path],
    base: Path,
    coverage: dict[Path, float] | None = None,
) -> Measured:
    """Measure `files` (resolved, inside the workspace); paths in the result are relative to `base`."""
    rows: list[FileMetrics] = []
    sources: list[PySource] = []
    errors: list[str] = []
    worst: list[FunctionRow] = []
    complexities: list[int] = []
    for path in files:
        name = _relative(path, base)
        try:
            source = SOURCES.get(workspace, path)
        except (SourceError, WorkspaceError) as exc:
            errors.append(str(exc))
            continue
        functions = source.functions()
        values = [fn.complexity for fn in functions if fn.complexity is not None]
        complexities += values
        ranked = sorted(functions, key=lambda fn: (-(fn.complexity or 0), fn.start))
        file_worst = [FunctionRow(name, fn.name, fn.kind, fn.start, fn.complexity or 0) for fn in ranked]
        worst += file_worst[:WORST_OVERALL]
        sources.append(source)
        rows.append(
            FileMetrics(
                path=name,
                loc=source.loc,
                lloc=source.lloc,
                sloc=source.sloc,
                comments=source.comments,
                multi=source.multi,
                blank=source.blank,
                functions=len(functions),
                complexity_average=_mean(values),
                complexity_max=max(values, default=None),
                maintainability=source.maintainability,
                line_coverage=coverage.get(path) if coverage is not None else None,
                worst_functions=file_worst[:WORST_PER_FILE],
            )
        )
    worst.sort(key=lambda row: (-row.complexity, row.file, row.line))
    return Measured(rows, _totals(sources, complexities), worst[:WORST_OVERALL], errors)


def _totals(sources: list[PySource], complexities: list[int]) -> MetricsTotals:
    weights = [max(source.sloc, 1) for source in sources]
    weighted = sum(source.maintainability * weight for source, weight in zip(sources, weights, strict=True))
    return MetricsTotals(
        files=len(sources),
        loc=sum(s.loc for s in sources),
        lloc=sum(s.lloc for s in sources),
        sloc=sum(s.sloc for s in sources),
        comments=sum(s.comments for s in sources),
        multi=sum(s.multi for s in sources),
        blank=sum(s.blank for s in sources),
        functions=len(complexities),
        complexity_average=_mean(complexities),
        complexity_max=max(complexities, default=None),
        maintainability=round(weighted / sum(weights), 2) if sources else None,
        maintainability_min=min((s.maintainability for s in sources), default=None),
    )


def _mean(values: list[int]) -> float | None:
    return round(sum(values) / len(values), 2) if values else None


def _relative(path: Path, base: Path) -> str:
    return path.relative_to(base).as_posix() if path != base and path.is_relative_to(base) else path.name


def join_coverage(
    report: Report, report_id: str, files: Sequence[Path]
) -> tuple[CoverageJoin, dict[Path, float]]:
    """Coverage totals over the report entries that are among `files`, and each such file's line
    coverage % (files with no executable lines are left out)."""
    root = Path(report.root)
    bases = [root / directory for directory in report.source_dirs] + [root]
    wanted = set(files)
    matched = []
    per_file: dict[Path, float] = {}
    for entry in report.files:
        for base in bases:
            path = Path(os.path.normpath(base / entry.path))
            if path in wanted:
                matched.append(entry)
                share = file_totals(entry).lines.percent
                if share is not None:
                    per_file[path] = share
                break
    totals = report_totals(matched)
    return CoverageJoin(report_id, report.format, len(matched), totals.lines, totals.branches), per_file
