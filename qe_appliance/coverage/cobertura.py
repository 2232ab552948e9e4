"""Cobertura XML (coverage-04.dtd), as written by coverage.py `coverage xml`, istanbul/c8, Cobertura,
gcovr and many CI tools: per class a file name, its methods with their lines, and its lines with hits and
`condition-coverage="50% (1/2)"` on branch lines.
"""

from __future__ import annotations

import html
import itertools
import math
import operator
import re
from typing import Final, NamedTuple

from qe_appliance.coverage import xmlscan
from qe_appliance.coverage.model import (
    BranchBudget,
    FileCoverage,
    Function,
    ReportError,
    lines_and_missed,
    merge_files,
)

FORMAT: Final = "cobertura"
_CLASS: Final = xmlscan.start_of("class")
_METHOD: Final = xmlscan.start_of("method")
# `[^<]*` then a literal: one forward scan (the text is stripped after; a lazy group between two `\s*`
# made `<source>` + spaces + `<b/>` cubic).
_SOURCE: Final = re.compile(rb"<source>([^<]*)</source>")
_BRANCH_LINE: Final = re.compile(rb"""<line\s[^>]*branch\s*=\s*["']true["'][^>]*>""")
_CONDITION: Final = re.compile(rb"\(\s*(\d+)\s*/\s*(\d+)\s*\)")
_TAKEN: Final = re.compile(rb"\(\s*(\d+)\s*/")
_TOTAL: Final = re.compile(rb"/\s*(\d+)\s*\)")
_ANY_METHOD: Final = re.compile(rb"<method[\s/>]")
# Literal-first patterns are what keep a million-line report fast; the exact ones (attribute after white
# space) are the fallback when a document has other attributes ending in the same name.
_NUMBER: Final = re.compile(rb"""number\s*=\s*["']([^"']*)["']""")
_HITS: Final = re.compile(rb"""hits\s*=\s*["']([^"']*)["']""")
_NUMBER_EXACT: Final = xmlscan.attribute_pattern("number")
_HITS_EXACT: Final = xmlscan.attribute_pattern("hits")


class Parsed(NamedTuple):
    files: list[FileCoverage]
    sources: list[str]


def parse(data: bytes) -> Parsed:
    text = xmlscan.document(data, FORMAT, "coverage")
    head, pieces = xmlscan.split(text, _CLASS)
    top, _ = xmlscan.start_tag(head, head.find(b"<coverage") + len(b"<coverage"))
    sources = [
        html.unescape(source.strip().decode("utf-8", errors="replace")) for source in _SOURCE.findall(head)
    ]
    has_branches = (b"branch" in text and _BRANCH_LINE.search(text) is not None) or _positive(
        top.get("branches-valid")
    )
    has_functions = _ANY_METHOD.search(text) is not None
    budget = BranchBudget(FORMAT, len(data))
    files = [_class(where, piece, has_branches, has_functions, budget) for where, piece in pieces]
    return Parsed(merge_files(files), sources)


def _positive(value: str | None) -> bool:
    try:
        return value is not None and math.isfinite(number := float(value)) and number > 0
    except ValueError:
        return False


def _class(
    where: str, piece: bytes, has_branches: bool, has_functions: bool, budget: BranchBudget
) -> FileCoverage:
    attrs, body_start = xmlscan.start_tag(piece)
    filename = attrs.get("filename")
    if not filename:
        raise ReportError(FORMAT, where, "a <class> element has no filename attribute")
    body = piece[body_start:]
    end = body.find(b"</class>")
    body = body[:end] if end != -1 else b""  # no closing tag: <class .../> has no lines
    methods_text, lines_text = _split_methods(body)
    numbers, missed = lines_and_missed(*_line_columns(lines_text, where))
    if numbers and numbers[0] < 1:
        raise ReportError(FORMAT, where, f"{filename}: line number {numbers[0]}; lines start at 1")
    points: list[int] | None = None
    never: list[int] | None = None
    if has_branches:
        points, never = _branches(lines_text, where, budget)
    functions = _methods(methods_text, where) if has_functions else None
    return FileCoverage(filename, numbers, missed, points, never, functions)


def _split_methods(body: bytes) -> tuple[bytes, bytes]:
    """(the <methods> section, the rest) of a class body."""
    start = body.find(b"<methods")
    if start == -1:
        return b"", body
    close = body.find(b"</methods>", start)
    if close == -1:  # <methods/>
        tag_end = body.find(b">", start) + 1
        return b"", body[:start] + body[tag_end:]
    return body[start:close], body[:start] + body[close + len(b"</methods>") :]


def _line_columns(lines_text: bytes, where: str) -> tuple[list[int], list[int] | list[float]]:
    """Line numbers and hit counts of every <line> element, in document order."""
    if b"<condition" in lines_text:
        lines_text = xmlscan.without(lines_text, xmlscan.elements(lines_text, "conditions"))
    count = lines_text.count(b"<line") - lines_text.count(b"<lines")
    raw_numbers = _NUMBER.findall(lines_text)
    raw_hits = _HITS.findall(lines_text)
    if len(raw_numbers) != count or len(raw_hits) != count:
        raw_numbers = _NUMBER_EXACT.findall(lines_text)
        raw_hits = _HITS_EXACT.findall(lines_text)
        if len(raw_numbers) != count or len(raw_hits) != count:
            raise ReportError(FORMAT, where, "every <line> element needs a number and a hits attribute")
    return xmlscan.ints(raw_numbers, FORMAT, "a line number", where), xmlscan.numbers(
        raw_hits, FORMAT, "hits", where
    )


def _branches(lines_text: bytes, where: str, budget: BranchBudget) -> tuple[list[int], list[int]]:
    """Branch points per line from `condition-coverage="50% (1/2)"`: the line repeated once per point."""
    tags = _BRANCH_LINE.findall(lines_text)
    if not tags:
        return [], []
    joined = b"\n".join(tags)
    raw_lines = _NUMBER.findall(joined)
    taken_raw, total_raw = _TAKEN.findall(joined), _TOTAL.findall(joined)
    if not len(raw_lines) == len(taken_raw) == len(total_raw) == len(tags):
        # Some branch line lacks condition-coverage (it then says nothing countable): go tag by tag.
        pairs = [(_NUMBER_EXACT.search(tag), _CONDITION.search(tag)) for tag in tags]
        found = [
            (number.group(1), *condition.groups()) for number, condition in pairs if number and condition
        ]
        raw_lines = [line for line, _, _ in found]
        taken_raw = [taken for _, taken, _ in found]
        total_raw = [total for _, _, total in found]
    lines = xmlscan.ints(raw_lines, FORMAT, "a line number", where)
    taken = xmlscan.ints(taken_raw, FORMAT, "a condition-coverage count", where)
    totals = xmlscan.ints(total_raw, FORMAT, "a condition-coverage count", where)
    if any(map(operator.gt, taken, totals)):
        raise ReportError(FORMAT, where, "a condition-coverage takes more branches than the line has")
    budget.take(lines, totals, where)
    points = list(itertools.chain.from_iterable(map(itertools.repeat, lines, totals)))
    never = list(
        itertools.chain.from_iterable(map(itertools.repeat, lines, map(operator.sub, totals, taken)))
    )
    return points, never


def _methods(methods_text: bytes, where: str) -> list[Function]:
    functions: list[Function] = []
    for method in _METHOD.split(methods_text)[1:]:
        attrs, body_start = xmlscan.start_tag(method)
        numbers, hits = _line_columns(method[body_start:], where)
        method_hits = attrs.get("hits")
        executed = any(hits) or (method_hits is not None and _positive(method_hits))
        start, end = (min(numbers), max(numbers)) if numbers else (None, None)
        # Tools that do not measure complexity write complexity="0"; only a positive value is one.
        complexity = attrs.get("complexity", "")
        measured = int(float(complexity)) if _positive(complexity) else None
        functions.append(Function(attrs.get("name", "?"), start, end, executed, measured))
    return functions
