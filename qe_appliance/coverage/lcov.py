"""LCOV tracefiles (geninfo(1) format, as written by lcov, c8/istanbul, coverage.py, llvm-cov, grcov).

A 50 MB tracefile has millions of `DA:` lines, so the common layout (each record's DA and BRDA lines in
one run) is decoded in bulk by msgspec; any other line, and any run that does not decode, goes through
the line-by-line reader, which is also what reports where a broken file breaks.
"""

from __future__ import annotations

import itertools
import operator
import re
from typing import Final

import msgspec

from qe_appliance.coverage.model import FileCoverage, Function, ReportError, lines_and_missed, merge_files

FORMAT: Final = "lcov"
END: Final = b"end_of_record"
_INTS: Final = msgspec.json.Decoder(list[int])
_TO_JSON: Final = {
    b"DA:": bytes.maketrans(b"DA:\n", b"   ,"),
    # BRDA's `-` (the block never ran) counts as a branch not taken.
    b"BRDA:": bytes.maketrans(b"BRDA:\n-", b"     ,0"),
}
_KEY: Final = re.compile(rb"[A-Z][A-Z0-9_]*")
# Run over text that starts with a newline, so every line starts after one.
_FN_LINE: Final = re.compile(rb"\nFN:(\d+),(?:(\d+),)?([^\n]*)")
_FN_WITH_END: Final = re.compile(rb"\nFN:\d+,\d+,")
_FN_START: Final = re.compile(rb"\nFN:(\d+),")
_FN_NAME: Final = re.compile(rb"\nFN:\d+,([^\n]*)")
_FNDA_COUNT: Final = re.compile(rb"\nFNDA:(\d+),")
_FNDA_NAME: Final = re.compile(rb"\nFNDA:\d+,([^\n]*)")
_SF_LINE: Final = re.compile(rb"\nSF:([^\n]*)")
_NAME: Final = operator.methodcaller("decode", "utf-8", "replace")
# A line that is neither blank nor KEY:value, or a count line whose value is not a count.
_ODD_LINE: Final = re.compile(
    rb"\n(?![A-Z][A-Z0-9_]*:|[ \t\r]*(?:\n|$))|\n(?:LF|LH|BRF|BRH|FNF|FNH):(?![0-9]+[ \t\r]*(?:\n|$))"
)


class _Record:
    """What one record (SF .. end_of_record) says, before it becomes a FileCoverage."""

    def __init__(self, data: bytes, offset: int) -> None:
        self.data = data  # the whole file, for line numbers in errors
        self.offset = offset
        self.path: str | None = None
        self.lines: list[int] = []
        self.hits: list[int] = []
        self.branch_lines: list[int] = []
        self.branch_taken: list[int] = []
        self.has_branches = False
        self.has_functions = False
        # First and last line by function name; kept as two dicts of ints, which the garbage collector
        # does not track (a dict of tuples would make it run over and over on a large file).
        # Keyed by the name's bytes, decoded once when the Function is built.
        self.fn_start: dict[bytes, int | None] = {}
        self.fn_end: dict[bytes, int | None] = {}
        self.fn_hits: dict[bytes, int] = {}
        self.fn_by_index: dict[bytes, tuple[int | None, int | None]] = {}

    def fail(self, at: int, problem: str) -> ReportError:
        line = self.data.count(b"\n", 0, self.offset + at) + 1
        return ReportError(FORMAT, f"line {line}", problem)

    def to_file(self) -> FileCoverage:
        assert self.path is not None
        lines, missed = lines_and_missed(self.lines, self.hits)
        if lines and lines[0] < 1:
            raise self.fail(0, f"the record for {self.path} has DA line number {lines[0]}; lines start at 1")
        points = never = None
        if self.has_branches:
            points = self.branch_lines
            never = list(itertools.compress(points, map(operator.not_, self.branch_taken)))
        functions = None
        if self.has_functions:
            starts, ends, calls = self.fn_start, self.fn_end, self.fn_hits
            functions = [
                Function(_NAME(name), start, ends.get(name), calls.get(name, 0) > 0)
                for name, start in starts.items()
            ]
            functions += [
                Function(_NAME(name), None, None, count > 0)
                for name, count in calls.items()
                if name not in starts
            ]
        return FileCoverage(self.path, lines, missed, points, never, functions)


def parse(data: bytes) -> list[FileCoverage]:
    """Every record of an LCOV tracefile; records naming the same file are merged."""
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    files: list[FileCoverage] = []
    offset = 0
    chunks = data.split(END)
    for index, chunk in enumerate(chunks):
        last = index == len(chunks) - 1
        if last:
            if chunk.strip():
                raise _unterminated(data, offset, chunk)
            break
        record = _Record(data, offset)
        _read(record, chunk)
        if record.path is None:
            raise record.fail(len(chunk), "end_of_record without an SF: line naming the source file")
        files.append(record.to_file())
        offset += len(chunk) + len(END)
    if not files:
        raise ReportError(FORMAT, "", "no records (SF: ... end_of_record) found; is this an LCOV tracefile?")
    return merge_files(files)


def _unterminated(data: bytes, offset: int, chunk: bytes) -> ReportError:
    """The error for text after the last end_of_record: a record cut off, or stray text."""
    record = _Record(data, offset)
    start = chunk.find(b"SF:")
    if start == -1:
        at = len(chunk) - len(chunk.lstrip())
        return record.fail(at, "text after the last end_of_record; the file ends with a partial record")
    name = chunk[start + 3 :].split(b"\n", 1)[0].decode(errors="replace").strip()
    return record.fail(start, f"the record for {name} has no end_of_record; the file is truncated")


def _read(record: _Record, chunk: bytes) -> None:
    """Fill `record` from one record's text (without its end_of_record)."""
    runs = sorted(run for run in (_run(chunk, b"DA:"), _run(chunk, b"BRDA:")) if run is not None)
    if len(runs) == 2 and runs[1][0] < runs[0][1]:
        runs = []  # DA and BRDA lines interleave: read the record line by line
    rest: list[tuple[int, int]] = []
    position = 0
    for start, end, key, count in runs:
        rest.append((position, start))
        if not _bulk(record, key, chunk[start:end], count):
            _read_lines(record, chunk, start, end)
        position = end
    rest.append((position, len(chunk)))
    _read_rest(record, chunk, rest)


def _read_rest(record: _Record, chunk: bytes, spans: list[tuple[int, int]]) -> None:
    """The lines around the DA and BRDA runs, mostly FN and FNDA, read with one regex pass per kind.
    Anything unusual (lcov 2.2 FNL/FNA, stray DA lines, a malformed line) goes to the line reader."""
    text = b"\n" + b"\n".join(chunk[start:end] for start, end in spans)
    sf = _SF_LINE.findall(text)
    # One pass per column (lists of bytes, not of tuples: a tuple per function would keep the garbage
    # collector busy on large files); lcov 2.0's FN:<line>,<end line>,<name> takes the tuple pattern.
    with_ends = _FN_WITH_END.search(text) is not None
    functions = _FN_LINE.findall(text) if with_ends else []
    starts = [first for first, _, _ in functions] if with_ends else _FN_START.findall(text)
    fn_names = [name for _, _, name in functions] if with_ends else _FN_NAME.findall(text)
    call_counts, call_names = _FNDA_COUNT.findall(text), _FNDA_NAME.findall(text)
    fn_lines, fnda_lines = text.count(b"\nFN:"), text.count(b"\nFNDA:")
    if (
        len(sf) > 1
        or len(starts) != fn_lines
        or len(fn_names) != fn_lines
        or len(call_counts) != fnda_lines
        or len(call_names) != fnda_lines
        or any(key in text for key in (b"\nDA:", b"\nBRDA:", b"\nFNL:", b"\nFNA:"))
        or _ODD_LINE.search(text)
    ):
        for start, end in spans:
            _read_lines(record, chunk, start, end)
        return
    if sf:
        _sf(record, sf[0])
    if fn_lines or fnda_lines or b"\nFNF:" in text:
        record.has_functions = True
    if b"\nBRF:" in text:
        record.has_branches = True
    if fn_lines:
        record.fn_start.update(zip(fn_names, map(int, starts), strict=True))
        if with_ends:
            ends = (int(last) if last else None for _, last, _ in functions)
            record.fn_end.update(zip(fn_names, ends, strict=True))
    if fnda_lines:
        counts = map(int, call_counts)
        hits = record.fn_hits
        if not hits and len(set(call_names)) == len(call_names):
            hits.update(zip(call_names, counts, strict=False))
        else:  # a name reported twice (merged runs): its counts add up
            for name, count in zip(call_names, counts, strict=False):
                hits[name] = hits.get(name, 0) + count


def _run(chunk: bytes, key: bytes) -> tuple[int, int, bytes, int] | None:
    """(start, end, key, `key` lines) of the text from the chunk's first `key` line to its last.

    Other lines inside that span make the bulk decode fail, which sends the span to the line reader.
    """
    marker = b"\n" + key
    first = chunk.find(marker)
    if first == -1:
        return None
    last = chunk.rfind(marker)
    end = chunk.find(b"\n", last + 1)
    end = len(chunk) if end == -1 else end
    return first + 1, end, key, chunk.count(marker, first + 1, end) + 1


def _bulk(record: _Record, key: bytes, block: bytes, count: int) -> bool:
    """Decode a run of DA or BRDA lines in one msgspec call; False when it needs the line reader.

    The run becomes a JSON array by blanking the key's letters and turning newlines into commas. A
    stray line makes the decode fail or the count of numbers come out wrong, so nothing slips through.
    """
    try:
        numbers = _INTS.decode(b"[" + block.translate(_TO_JSON[key]) + b"]")
    except msgspec.DecodeError:
        return False
    if key == b"DA:":
        if len(numbers) != 2 * count:
            return False
        record.lines += numbers[0::2]
        record.hits += numbers[1::2]
        return True
    if len(numbers) != 4 * count:
        return False
    record.has_branches = True
    record.branch_lines += numbers[0::4]
    record.branch_taken += numbers[3::4]
    return True


def _read_lines(record: _Record, chunk: bytes, start: int, end: int) -> None:
    lines = chunk[start:end].split(b"\n")
    for index, raw in enumerate(lines):
        key, colon, value = raw.partition(b":")
        reader = _READERS.get(key)
        try:
            if reader is not None:
                reader(record, value.rstrip())
                continue
        except (ValueError, IndexError):
            problem = f"malformed {key.decode()} line `{_shown(raw)}`: {_SHAPES[key]}"
        else:
            if not raw.strip() or (colon and _KEY.fullmatch(key.strip())):
                continue  # blank, or a record type this reader has no use for (TN, VER, MCDC, ...)
            problem = f"`{_shown(raw)}` is not an LCOV line (expected KEY:value, e.g. DA:12,1)"
        at = start + sum(len(line) + 1 for line in lines[:index])
        raise record.fail(at, problem)


def _shown(raw: bytes) -> str:
    return raw.strip()[:60].decode(errors="replace")


def _sf(record: _Record, value: bytes) -> None:
    if record.path is not None:
        raise ValueError("second SF")
    # As in the XML formats: a byte that is not UTF-8 becomes U+FFFD, which every encoder can carry.
    path = value.decode("utf-8", errors="replace").strip()
    if not path:
        raise ValueError("empty path")
    record.path = path


def _da(record: _Record, value: bytes) -> None:
    parts = value.split(b",")
    record.lines.append(int(parts[0]))
    record.hits.append(int(parts[1]))


def _brda(record: _Record, value: bytes) -> None:
    parts = value.split(b",")
    if len(parts) < 4:
        raise ValueError("too few fields")
    line = int(parts[0])
    taken_text = parts[-1].strip()
    taken = 0 if taken_text == b"-" else int(taken_text)
    record.has_branches = True
    record.branch_lines.append(line)
    record.branch_taken.append(taken)


def _fn(record: _Record, value: bytes) -> None:
    # FN:<line>,<name> or, since lcov 2.0, FN:<line>,<end line>,<name>.
    first, rest = value.split(b",", 1)
    end: int | None = None
    second, _, tail = rest.partition(b",")
    if tail and second.isdigit():
        end, rest = int(second), tail
    record.has_functions = True
    record.fn_start[rest] = int(first)
    record.fn_end[rest] = end


def _fnda(record: _Record, value: bytes) -> None:
    hits, name = value.split(b",", 1)
    record.has_functions = True
    record.fn_hits[name] = record.fn_hits.get(name, 0) + int(hits)


def _fnl(record: _Record, value: bytes) -> None:
    # lcov 2.2: FNL:<index>,<line>[,<end line>] then FNA:<index>,<hits>,<name>.
    parts = value.split(b",")
    record.has_functions = True
    record.fn_by_index[parts[0]] = (int(parts[1]), int(parts[2]) if len(parts) > 2 else None)


def _fna(record: _Record, value: bytes) -> None:
    index, hits, name = value.split(b",", 2)
    record.has_functions = True
    record.fn_start[name], record.fn_end[name] = record.fn_by_index.get(index, (None, None))
    record.fn_hits[name] = record.fn_hits.get(name, 0) + int(hits)


def _summary(record: _Record, value: bytes) -> None:
    int(value)  # a count the tool computed itself: checked for shape, recomputed from the data


def _branch_summary(record: _Record, value: bytes) -> None:
    int(value)
    record.has_branches = True


def _function_summary(record: _Record, value: bytes) -> None:
    int(value)
    record.has_functions = True


_READERS: Final = {
    b"SF": _sf,
    b"DA": _da,
    b"BRDA": _brda,
    b"FN": _fn,
    b"FNDA": _fnda,
    b"FNL": _fnl,
    b"FNA": _fna,
    b"LF": _summary,
    b"LH": _summary,
    b"BRF": _branch_summary,
    b"BRH": _branch_summary,
    b"FNF": _function_summary,
    b"FNH": _function_summary,
}
_SHAPES: Final = {
    b"SF": "one SF: line per record, naming the source file",
    b"DA": "expected DA:<line>,<hits>[,<checksum>]",
    b"BRDA": "expected BRDA:<line>,<block>,<branch>,<taken or ->",
    b"FN": "expected FN:<line>[,<end line>],<name>",
    b"FNDA": "expected FNDA:<hits>,<name>",
    b"FNL": "expected FNL:<index>,<line>[,<end line>]",
    b"FNA": "expected FNA:<index>,<hits>,<name>",
    b"LF": "expected a count",
    b"LH": "expected a count",
    b"BRF": "expected a count",
    b"BRH": "expected a count",
    b"FNF": "expected a count",
    b"FNH": "expected a count",
}
