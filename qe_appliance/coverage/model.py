"""The parsed form every coverage format becomes: per file the executable and missed lines, the branch
points and functions (`None` when the format does not carry them); every total is derived from these.
"""

from __future__ import annotations

import itertools
import operator
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Final, Literal

import msgspec

from qe_appliance.workspace import InputError

Format = Literal["coveragepy-json", "cobertura", "lcov", "istanbul", "jacoco"]

# Bounds on what a report may state, so a forged one can neither exhaust memory (branch points are kept
# one per point) nor carry numbers the encoders refuse: line numbers and counts fit in 31 bits (10 digits).
MAX_NUMBER: Final = 2**31 - 1
MAX_BRANCHES_PER_LINE: Final = 10_000


class ReportError(InputError):
    """A report that cannot be parsed; the message names the format and where it broke."""

    def __init__(self, fmt: str, where: str, problem: str) -> None:
        super().__init__(f"{fmt} report: {where}: {problem}" if where else f"{fmt} report: {problem}")


def not_utf8(data: bytes) -> tuple[str, str]:
    """(where, problem) for a report that holds bytes that are not UTF-8."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return f"line {line}", f"byte {data[exc.start]:#04x} is not UTF-8; save the report as UTF-8"
    return "", "the report is not UTF-8; save it as UTF-8"


class BranchBudget:
    """The branch points a report may claim: at most MAX_BRANCHES_PER_LINE on one line and, over the whole
    report, about one per byte of it (real reports state far fewer). Without it a forged count such as
    `condition-coverage="50% (1/4000000000)"` would be expanded into billions of points."""

    def __init__(self, fmt: str, size: int) -> None:
        self.fmt = fmt
        self.left = size + MAX_BRANCHES_PER_LINE

    def take(self, lines: Sequence[int], counts: Sequence[int], where: str) -> None:
        """Spend `counts` (branch points per line of `lines`); ReportError when they are not believable."""
        most = max(counts, default=0)
        if most > MAX_BRANCHES_PER_LINE:
            line = lines[list(counts).index(most)]
            raise ReportError(
                self.fmt,
                where,
                f"line {line} claims {most} branch points, more than the {MAX_BRANCHES_PER_LINE} any real "
                "line has; the report is corrupt",
            )
        self.left -= sum(count for count in counts if count > 0)
        if self.left < 0:
            raise ReportError(
                self.fmt, where, "the report claims more branch points than it has bytes; it is corrupt"
            )


def check_numbers(files: Iterable[FileCoverage], fmt: str) -> None:
    """ReportError unless every line number, function line and complexity is within 0..MAX_NUMBER."""
    for entry in files:
        numbers = [*entry.lines[:1], *entry.lines[-1:]]  # ascending
        if entry.branch_points:
            numbers += [min(entry.branch_points), max(entry.branch_points)]
        for fn in entry.functions or ():
            numbers += [n for n in (fn.start, fn.end, fn.complexity) if n is not None]
        bad = next((n for n in numbers if not 0 <= n <= MAX_NUMBER), None)
        if bad is not None:
            shown = str(bad) if len(str(bad)) <= 20 else f"{str(bad)[:20]}... ({len(str(bad))} digits)"
            raise ReportError(
                fmt, "", f"{entry.path}: {shown} is not a line number or count (those are 0 to {MAX_NUMBER})"
            )


class Function(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A function as the report names it; `start` and `end` are its first and last lines and
    `complexity` its cyclomatic complexity, when the format gives them."""

    name: str
    start: int | None
    end: int | None
    executed: bool
    complexity: int | None = None


class FileCoverage(msgspec.Struct, array_like=True, gc=False):
    """One source file. `lines` are the executable lines, ascending and unique; `missed` the subset never
    run. Branches are kept per branch point: `branch_points` holds the line of every branch point and
    `branch_missed` the line of every point never taken (a line appears once per point)."""

    path: str
    lines: Sequence[int]
    missed: Sequence[int]
    branch_points: Sequence[int] | None
    branch_missed: Sequence[int] | None
    functions: list[Function] | None

    def __post_init__(self) -> None:
        # Kept as tuples: a tuple of ints drops out of the garbage collector's tracking after its first
        # look, while a list of a million line numbers would be walked again by every collection.
        self.lines = tuple(self.lines)
        self.missed = tuple(self.missed)
        if self.branch_points is not None:
            self.branch_points = tuple(self.branch_points)
            self.branch_missed = tuple(self.branch_missed or ())

    def branches_by_line(self) -> dict[int, tuple[int, int]]:
        """{line: (branch points, points taken)} for the lines that have branches."""
        if not self.branch_points:
            return {}
        points = Counter(self.branch_points)
        missed = Counter(self.branch_missed or ())
        return {line: (count, count - missed[line]) for line, count in points.items()}


class Report(msgspec.Struct, gc=False):
    """A parsed report. Relative file names start from `root` (absolute) or from one of `source_dirs`
    (the report's own list of source directories, e.g. Cobertura's <sources>)."""

    format: Format
    root: str
    files: list[FileCoverage]
    source_dirs: list[str] = []


class Measure(msgspec.Struct, frozen=True):
    """How much of something was covered; percent is None when there is nothing to cover."""

    covered: int
    total: int
    percent: float | None

    @classmethod
    def of(cls, covered: int, total: int) -> Measure:
        return cls(covered, total, percent(covered, total))


class Totals(msgspec.Struct, frozen=True):
    lines: Measure
    branches: Measure | None
    functions: Measure | None


def percent(covered: int, total: int) -> float | None:
    """covered / total as a percentage rounded to 2 decimals; None for 0 of 0 (nothing to cover)."""
    return round(100.0 * covered / total, 2) if total else None


def file_totals(entry: FileCoverage) -> Totals:
    return report_totals((entry,))


def report_totals(files: Iterable[FileCoverage]) -> Totals:
    """Totals over files; branches or functions are None when no file carries them."""
    line_cov = line_total = 0
    branch_missed = branch_total = 0
    fn_cov = fn_total = 0
    has_branches = has_functions = False
    for entry in files:
        line_total += len(entry.lines)
        line_cov += len(entry.lines) - len(entry.missed)
        if entry.branch_points is not None:
            has_branches = True
            branch_total += len(entry.branch_points)
            branch_missed += len(entry.branch_missed or ())
        if entry.functions is not None:
            has_functions = True
            fn_total += len(entry.functions)
            fn_cov += sum(f.executed for f in entry.functions)
    return Totals(
        Measure.of(line_cov, line_total),
        Measure.of(branch_total - branch_missed, branch_total) if has_branches else None,
        Measure.of(fn_cov, fn_total) if has_functions else None,
    )


def lines_and_missed(numbers: list[int], hits: Sequence[float]) -> tuple[list[int], list[int]]:
    """Executable lines (ascending, unique) and the missed ones, from line numbers and hit counts in
    report order; a line listed twice counts as executed when any listing ran it."""
    if numbers == sorted(numbers) and len(set(numbers)) == len(numbers):
        return numbers, list(itertools.compress(numbers, map(operator.not_, hits)))
    executed: dict[int, bool] = {}
    for line, count in zip(numbers, hits, strict=True):
        executed[line] = executed.get(line, False) or count != 0
    lines = sorted(executed)
    return lines, [line for line in lines if not executed[line]]


def missed_runs(lines: Sequence[int], missed: Sequence[int]) -> list[tuple[int, int, int]]:
    """Missed lines merged into runs: (first line, last line, missed lines in it). A run continues
    across non-executable lines (blank, comments) and breaks at the first executed line."""
    if not missed:
        return []
    missed_set = set(missed)
    runs: list[tuple[int, int, int]] = []
    start = last = -1
    count = 0
    for line in lines:
        if line in missed_set:
            if count == 0:
                start = line
            last = line
            count += 1
        elif count:
            runs.append((start, last, count))
            count = 0
    if count:
        runs.append((start, last, count))
    return runs


def ranges_text(runs: Iterable[tuple[int, int, int]], limit: int = 240) -> str:
    """Runs as `18-19,23-29`, cut with a trailing `,...` when longer than `limit` characters."""
    out = ""
    for start, end, _ in runs:
        piece = str(start) if start == end else f"{start}-{end}"
        if len(out) + len(piece) + 1 > limit:
            return out + ",..."
        out = f"{out},{piece}" if out else piece
    return out


def merge_files(files: Iterable[FileCoverage]) -> list[FileCoverage]:
    """One entry per path: reports may list a file twice (several test runs, inner classes). A line counts
    as executed when any entry executed it; a line's branch points are the most any entry saw, and its
    missed points the fewest any entry missed."""
    by_path: dict[str, list[FileCoverage]] = {}
    for entry in files:
        by_path.setdefault(entry.path, []).append(entry)
    merged: list[FileCoverage] = []
    for path, entries in by_path.items():
        if len(entries) == 1:
            merged.append(entries[0])
            continue
        executed: dict[int, bool] = {}
        for entry in entries:
            missed = set(entry.missed)
            for line in entry.lines:
                executed[line] = executed.get(line, False) or line not in missed
        lines = sorted(executed)
        points: list[int] | None = None
        never: list[int] | None = None
        with_branches = [entry for entry in entries if entry.branch_points is not None]
        if with_branches:
            points, never = [], []
            # One pass over each entry's lines (not every line against every entry: a file listed in
            # 10,000 classes would make that 10^8 lookups).
            most: dict[int, list[int]] = {}
            for entry in with_branches:
                for line, (count, taken) in entry.branches_by_line().items():
                    seen = most.setdefault(line, [0, 0])
                    seen[0], seen[1] = max(seen[0], count), max(seen[1], taken)
            for line in sorted(most):
                total, taken = most[line][0], min(most[line][0], most[line][1])
                points += [line] * total
                never += [line] * (total - taken)
        functions: dict[tuple[str, int | None], Function] | None = None
        for entry in entries:
            if entry.functions is not None:
                functions = {} if functions is None else functions
                for fn in entry.functions:
                    old = functions.get((fn.name, fn.start))
                    if old is None or (fn.executed and not old.executed):
                        functions[(fn.name, fn.start)] = fn
        fns = sorted(functions.values(), key=function_order) if functions is not None else None
        merged.append(
            FileCoverage(path, lines, [line for line in lines if not executed[line]], points, never, fns)
        )
    return merged


def function_order(fn: Function) -> tuple[int, str]:
    return (fn.start or 0, fn.name)
