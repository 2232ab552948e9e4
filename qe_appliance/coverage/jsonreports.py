"""The JSON formats: coverage.py's `coverage json` and Istanbul's coverage-final.json (nyc, c8, jest,
vitest). Both are decoded by msgspec straight into the shapes below; a wrong shape is reported with the
JSON path where it broke.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeVar

import msgspec

from qe_appliance.coverage.model import FileCoverage, Function, ReportError, not_utf8

COVERAGEPY: Final = "coveragepy-json"
ISTANBUL: Final = "istanbul"
T = TypeVar("T")


class _PyRegion(msgspec.Struct):
    executed_lines: list[int]
    missing_lines: list[int]
    start_line: int | None = None


class _PyFile(msgspec.Struct):
    executed_lines: list[int]
    missing_lines: list[int]
    executed_branches: list[tuple[int, int]] | None = None
    missing_branches: list[tuple[int, int]] | None = None
    functions: dict[str, _PyRegion] | None = None


class _PyMeta(msgspec.Struct):
    branch_coverage: bool = False


class _PyReport(msgspec.Struct):
    meta: _PyMeta
    files: dict[str, _PyFile]


class _Position(msgspec.Struct):
    line: int | None = None


class _Span(msgspec.Struct):
    start: _Position
    end: _Position


class _IstanbulFunction(msgspec.Struct):
    name: str = "(anonymous)"
    loc: _Span | None = None
    decl: _Span | None = None
    line: int | None = None


class _IstanbulBranch(msgspec.Struct):
    loc: _Span | None = None
    locations: list[_Span] = []
    line: int | None = None


class _IstanbulFile(msgspec.Struct, rename="camel"):
    statement_map: dict[str, _Span]
    fn_map: dict[str, _IstanbulFunction]
    branch_map: dict[str, _IstanbulBranch]
    s: dict[str, int]
    f: dict[str, int]
    b: dict[str, list[int]]
    path: str | None = None


_PY_DECODER: Final = msgspec.json.Decoder(_PyReport)
_ISTANBUL_DECODER: Final = msgspec.json.Decoder(dict[str, _IstanbulFile])


def _decode(decoder: Callable[[bytes], T], data: bytes, fmt: str) -> T:
    try:
        return decoder(data)
    except msgspec.ValidationError as exc:
        raise ReportError(fmt, "", f"unexpected shape: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ReportError(fmt, "", _json_problem(data, str(exc))) from None
    except UnicodeDecodeError:
        raise ReportError(fmt, *not_utf8(data)) from None


def _json_problem(data: bytes, message: str) -> str:
    """msgspec's decode error with its byte offset turned into a line and column."""
    if "truncated" in message:
        last_line = data.count(b"\n") + 1
        return f"line {last_line}: the JSON ends early; the file is truncated"
    marker = "(byte "
    if marker in message:
        offset = int(message.rsplit(marker, 1)[1].rstrip(")"))
        line = data.count(b"\n", 0, offset) + 1
        column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
        return f"line {line}, column {column}: {message.split(' (byte ')[0]}"
    return message


def parse_coveragepy(data: bytes) -> list[FileCoverage]:
    report = _decode(_PY_DECODER.decode, data, COVERAGEPY)
    branches = report.meta.branch_coverage
    files = []
    for path, entry in report.files.items():
        lines = sorted({*entry.executed_lines, *entry.missing_lines})
        missed = sorted(set(entry.missing_lines))
        points = never = None
        if branches:
            executed_arcs = entry.executed_branches or []
            missing_arcs = entry.missing_branches or []
            points = sorted(source for source, _ in (*executed_arcs, *missing_arcs))
            never = sorted(source for source, _ in missing_arcs)
        functions = None
        if entry.functions is not None:
            # The "" region is the module's own code, not a function.
            functions = [
                Function(name, region.start_line, max(statements, default=None), bool(region.executed_lines))
                for name, region in entry.functions.items()
                if name and (statements := [*region.executed_lines, *region.missing_lines])
            ]
        if lines and lines[0] < 1:
            raise ReportError(COVERAGEPY, f"files[{path!r}]", f"line number {lines[0]}; lines start at 1")
        files.append(FileCoverage(path, lines, missed, points, never, functions))
    return files


def parse_istanbul(data: bytes) -> list[FileCoverage]:
    """Lines as istanbul-lib-coverage counts them: a line is executable when a statement starts on it,
    and covered when any statement starting on it ran."""
    report = _decode(_ISTANBUL_DECODER.decode, data, ISTANBUL)
    files = []
    for key, entry in report.items():
        path = entry.path or key
        executed: dict[int, bool] = {}
        for statement, span in entry.statement_map.items():
            line = span.start.line
            if line is None or statement not in entry.s:
                continue
            executed[line] = executed.get(line, False) or entry.s[statement] > 0
        lines = sorted(executed)
        if lines and lines[0] < 1:
            raise ReportError(ISTANBUL, f"{key}.statementMap", f"line number {lines[0]}; lines start at 1")
        points: list[int] = []
        never: list[int] = []
        for branch_id, counts in entry.b.items():
            branch = entry.branch_map.get(branch_id)
            line = _branch_line(branch)
            if line is None:
                raise ReportError(
                    ISTANBUL, f"{key}.b[{branch_id!r}]", "counts for a branch missing from branchMap"
                )
            points += [line] * len(counts)
            never += [line] * sum(1 for count in counts if count <= 0)
        functions = []
        for fn_id, fn in entry.fn_map.items():
            where = fn.loc or fn.decl
            start = where.start.line if where else fn.line
            end = where.end.line if where else None
            functions.append(Function(fn.name, start, end, entry.f.get(fn_id, 0) > 0))
        files.append(
            FileCoverage(
                path,
                lines,
                [line for line in lines if not executed[line]],
                sorted(points),
                sorted(never),
                functions,
            )
        )
    return files


def _branch_line(branch: _IstanbulBranch | None) -> int | None:
    if branch is None:
        return None
    if branch.line is not None:
        return branch.line
    if branch.loc is not None:
        return branch.loc.start.line
    return branch.locations[0].start.line if branch.locations else None


def looks_like(data: bytes) -> str | None:
    """Which JSON coverage format a document is, judged from its opening; None when neither."""
    head = data[:65536]
    if b'"meta"' in head and (b'"files"' in data[: 1 << 20] or b'"format"' in head):
        return COVERAGEPY
    if b'"statementMap"' in head or b'"fnMap"' in head:
        return ISTANBUL
    return None


def summary_hint(data: bytes) -> str | None:
    """The error for a json-summary (totals only) file, which has no per-line data to analyse."""
    if b'"total"' in data[:4096] and b'"pct"' in data[:4096]:
        return (
            "this is an Istanbul json-summary (totals only); give coverage-final.json, written by the "
            "`json` reporter, instead"
        )
    return None
