"""JaCoCo XML (report.dtd 1.1): packages hold classes (methods with METHOD counters) and source files
(`<line nr mi ci mb cb/>`: missed/covered instructions and branches per line).

A line counts as covered when at least one of its instructions ran (ci > 0), as in JaCoCo's own LINE
counter; its branch points are mb + cb, of which cb were taken.
"""

from __future__ import annotations

import itertools
import operator
import re
from typing import Final

from qe_appliance.coverage import xmlscan
from qe_appliance.coverage.model import (
    BranchBudget,
    FileCoverage,
    Function,
    ReportError,
    function_order,
    merge_files,
)

FORMAT: Final = "jacoco"
_PACKAGE: Final = xmlscan.start_of("package")
_CLASS: Final = xmlscan.start_of("class")
_SOURCEFILE: Final = xmlscan.start_of("sourcefile")
_METHOD_COUNTER: Final = re.compile(rb"""<counter\s[^>]*type\s*=\s*["']METHOD["'][^>]*>""")
_COMPLEXITY_COUNTER: Final = re.compile(rb"""<counter\s[^>]*type\s*=\s*["']COMPLEXITY["'][^>]*>""")
_COLUMNS: Final = {name: xmlscan.attribute_pattern(name) for name in ("nr", "mi", "ci", "mb", "cb")}
_COVERED: Final = xmlscan.attribute_pattern("covered")


def parse(data: bytes) -> list[FileCoverage]:
    text = xmlscan.document(data, FORMAT, "report")
    _, pieces = xmlscan.split(text, _PACKAGE)
    budget = BranchBudget(FORMAT, len(data))
    files: list[FileCoverage] = []
    for where, piece in pieces:
        files += _package(where, piece, budget)
    return merge_files(files)


def _package(where: str, piece: bytes, budget: BranchBudget) -> list[FileCoverage]:
    attrs, body_start = xmlscan.start_tag(piece)
    package = attrs.get("name", "")
    body = piece[body_start:]
    end = body.find(b"</package>")
    body = body[:end] if end != -1 else b""
    first_source = _SOURCEFILE.search(body)
    classes_text = body[: first_source.start()] if first_source else body
    methods: dict[str, list[Function]] = {}
    for class_piece in _CLASS.split(classes_text)[1:]:
        class_attrs, class_start = xmlscan.start_tag(class_piece)
        source = class_attrs.get("sourcefilename")
        if source is None:
            continue  # a class compiled without debug information has no lines to attribute
        simple = class_attrs.get("name", "").rsplit("/", 1)[-1]
        methods.setdefault(source, []).extend(_methods(simple, class_piece[class_start:], where))
    files = []
    if first_source is not None:
        for source_piece in _SOURCEFILE.split(body[first_source.start() :])[1:]:
            files.append(_sourcefile(package, source_piece, methods, where, budget))
    return files


def _methods(simple_class: str, class_body: bytes, where: str) -> list[Function]:
    functions = []
    for method in xmlscan.elements(class_body, "method"):
        attrs = xmlscan.attributes(method.attrs)
        inner = class_body[slice(*method.inner)]
        counter = _METHOD_COUNTER.search(inner)
        if counter is None:
            raise ReportError(FORMAT, where, f"method {attrs.get('name')} has no METHOD counter")
        covered = _COVERED.search(counter.group())
        line = attrs.get("line")
        functions.append(
            Function(
                f"{simple_class}.{attrs.get('name', '?')}",
                int(line) if line and line.isascii() and line.isdigit() and len(line) <= 10 else None,
                None,
                covered is not None and covered.group(1).strip() not in (b"0", b""),
                _complexity(inner),
            )
        )
    return functions


def _complexity(method_body: bytes) -> int | None:
    """A method's cyclomatic complexity: missed + covered of its COMPLEXITY counter."""
    counter = _COMPLEXITY_COUNTER.search(method_body)
    if counter is None:
        return None
    attrs = xmlscan.attributes(counter.group())
    try:
        return int(attrs["missed"]) + int(attrs["covered"])
    except (KeyError, ValueError):
        return None


def _sourcefile(
    package: str, piece: bytes, methods: dict[str, list[Function]], where: str, budget: BranchBudget
) -> FileCoverage:
    attrs, body_start = xmlscan.start_tag(piece)
    name = attrs.get("name")
    if not name:
        raise ReportError(FORMAT, where, f"a <sourcefile> in package {package!r} has no name attribute")
    body = piece[body_start:]
    count = body.count(b"<line")
    columns = {key: pattern.findall(body) for key, pattern in _COLUMNS.items()}
    if any(len(values) != count for values in columns.values()):
        raise ReportError(
            FORMAT, where, f"{name}: every <line> element needs nr, mi, ci, mb and cb attributes"
        )
    nr, ci, mb, cb = (xmlscan.ints(columns[key], FORMAT, key, where) for key in ("nr", "ci", "mb", "cb"))
    if nr != sorted(nr) or len(set(nr)) != len(nr) or (nr and nr[0] < 1):
        raise ReportError(FORMAT, where, f"{name}: line numbers must be positive, ascending and unique")
    missed = list(itertools.compress(nr, map(operator.not_, ci)))
    totals = list(map(operator.add, mb, cb))
    budget.take(nr, totals, where)
    points = list(itertools.chain.from_iterable(map(itertools.repeat, nr, totals)))
    never = list(itertools.chain.from_iterable(map(itertools.repeat, nr, mb)))
    path = f"{package}/{name}" if package else name
    functions = sorted(methods.get(name, []), key=function_order)
    return FileCoverage(path, nr, missed, points, never, functions)
