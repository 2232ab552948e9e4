"""The five report formats, parsed from reports the real tools wrote, against the tools' own numbers;
and broken reports of each format, which must say which format and where it broke."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qe_appliance.coverage import lcov
from qe_appliance.coverage.formats import detect, parse_report
from qe_appliance.coverage.model import FileCoverage, Report, ReportError, report_totals
from tests.fixtures.coverage.samples import java_sample, js_sample, python_sample


def by_path(report: Report) -> dict[str, FileCoverage]:
    return {entry.path: entry for entry in report.files}


# --- coverage.py: JSON, Cobertura and LCOV of one real run ------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt"), [("json", "coveragepy-json"), ("xml", "cobertura"), ("lcov", "lcov")]
)
def test_coveragepy_reports_match_coveragepy_itself(name: str, fmt: str) -> None:
    sample = python_sample()
    report = parse_report(getattr(sample, name).read_bytes(), "auto", str(sample.root))
    assert report.format == fmt
    files = by_path(report)
    assert set(files) == set(sample.analysis)
    for path, (statements, missing) in sample.analysis.items():
        assert list(files[path].lines) == statements, path
        assert list(files[path].missed) == missing, path
    totals = report_totals(report.files)
    assert (totals.lines.covered, totals.lines.total) == (
        sample.totals["covered_lines"],
        sample.totals["num_statements"],
    )
    assert totals.lines.percent == round(sample.totals["percent_statements_covered"], 2)
    assert totals.branches is not None
    assert (totals.branches.covered, totals.branches.total) == (
        sample.totals["covered_branches"],
        sample.totals["num_branches"],
    )


def test_functions_come_from_the_formats_that_carry_them() -> None:
    sample = python_sample()
    from_json = report_totals(parse_report(sample.json.read_bytes(), "auto", str(sample.root)).files)
    from_lcov = report_totals(parse_report(sample.lcov.read_bytes(), "auto", str(sample.root)).files)
    from_xml = report_totals(parse_report(sample.xml.read_bytes(), "auto", str(sample.root)).files)
    # coverage.py's LCOV writes FNF/FNH itself: 12 functions, 9 of them run.
    lcov_text = sample.lcov.read_text()
    fnf = sum(int(n) for n in re.findall(r"^FNF:(\d+)$", lcov_text, re.M))
    fnh = sum(int(n) for n in re.findall(r"^FNH:(\d+)$", lcov_text, re.M))
    assert from_lcov.functions is not None and (from_lcov.functions.covered, from_lcov.functions.total) == (
        fnh,
        fnf,
    )
    assert from_json.functions == from_lcov.functions
    # coverage.py's Cobertura output has empty <methods/>: functions are unknown, not 0 of 0.
    assert from_xml.functions is None


def test_inventory_rebalance_is_reported_as_a_function_that_never_ran() -> None:
    sample = python_sample()
    entry = by_path(parse_report(sample.json.read_bytes(), "auto", str(sample.root)))["shop/inventory.py"]
    assert entry.functions is not None
    rebalance = next(fn for fn in entry.functions if fn.name == "Inventory.rebalance")
    assert (rebalance.start, rebalance.executed) == (28, False)
    source_lines = (sample.root / "shop" / "inventory.py").read_text().count("\n")
    assert max(entry.lines) <= source_lines


# --- c8 (Istanbul JSON, LCOV, Cobertura) against c8's own summary ------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("coverage-final.json", "istanbul"), ("lcov.info", "lcov"), ("cobertura-coverage.xml", "cobertura")],
)
def test_c8_reports_match_c8s_summary(tmp_path: Path, name: str, fmt: str) -> None:
    root = js_sample(tmp_path / "js")
    summary = json.loads((root / "coverage-summary.json").read_text())
    report = parse_report((root / name).read_bytes(), "auto", str(root))
    assert report.format == fmt
    totals = report_totals(report.files)
    expected = summary["total"]
    assert (totals.lines.covered, totals.lines.total) == (
        expected["lines"]["covered"],
        expected["lines"]["total"],
    )
    assert totals.branches is not None and totals.functions is not None
    assert (totals.branches.covered, totals.branches.total) == (
        expected["branches"]["covered"],
        expected["branches"]["total"],
    )
    assert (totals.functions.covered, totals.functions.total) == (
        expected["functions"]["covered"],
        expected["functions"]["total"],
    )
    for entry in report.files:
        absolute = entry.path if entry.path.startswith("/") else str(root / entry.path)
        per_file = summary[absolute]
        assert len(entry.lines) - len(entry.missed) == per_file["lines"]["covered"], entry.path
        assert len(entry.lines) == per_file["lines"]["total"], entry.path


def test_istanbul_function_ranges_and_missed_lines(tmp_path: Path) -> None:
    root = js_sample(tmp_path / "js")
    files = by_path(parse_report((root / "coverage-final.json").read_bytes(), "auto", str(root)))
    shipping = files[str(root / "src" / "shipping.js")]
    # c8's own text report: "Uncovered Line #s 8-9,11-12,20-28".
    assert list(shipping.missed) == [8, 9, 11, 12, *range(20, 29)]
    assert shipping.functions is not None
    estimate = next(fn for fn in shipping.functions if fn.name == "estimateDays")
    assert (estimate.start, estimate.end, estimate.executed) == (20, 28, False)


# --- JaCoCo against its own counters ------------------------------------------------------------------


def test_jacoco_matches_jacocos_counters(tmp_path: Path) -> None:
    root = java_sample(tmp_path / "java")
    data = (root / "jacoco.xml").read_bytes()
    report = parse_report(data, "auto", str(root))
    assert report.format == "jacoco"
    # The report-level counters (JaCoCo's own totals) follow the last package.
    tail = data[data.rindex(b"</package>") :]
    counters = {
        kind.decode(): (int(missed), int(covered))
        for kind, missed, covered in re.findall(
            rb'<counter type="(\w+)" missed="(\d+)" covered="(\d+)"/>', tail
        )
    }
    totals = report_totals(report.files)
    assert (totals.lines.total - totals.lines.covered, totals.lines.covered) == counters["LINE"]
    assert totals.branches is not None and totals.functions is not None
    assert (totals.branches.total - totals.branches.covered, totals.branches.covered) == counters["BRANCH"]
    assert (totals.functions.total - totals.functions.covered, totals.functions.covered) == counters["METHOD"]
    cart = by_path(report)["com/example/shop/Cart.java"]
    assert cart.functions is not None
    describe = next(fn for fn in cart.functions if fn.name == "Cart.describe")
    assert (describe.start, describe.executed, describe.complexity) == (32, False, 3)


# --- detection, choices, encodings --------------------------------------------------------------------


def test_detection_and_a_wrong_explicit_format(tmp_path: Path) -> None:
    root = js_sample(tmp_path / "js")
    assert detect((root / "lcov.info").read_bytes()) == "lcov"
    assert detect(b"\n  " + (root / "coverage-final.json").read_bytes()) == "istanbul"
    with pytest.raises(ReportError, match="looks like lcov, not cobertura; pass format: lcov or auto"):
        parse_report((root / "lcov.info").read_bytes(), "cobertura", str(root))
    with pytest.raises(ReportError, match="json-summary"):
        parse_report((root / "coverage-summary.json").read_bytes(), "auto", str(root))
    with pytest.raises(ReportError, match="JUnit test results, not coverage"):
        detect(b'<?xml version="1.0"?><testsuites><testsuite name="x" tests="0"/></testsuites>')
    with pytest.raises(ReportError, match="the report is empty"):
        detect(b"  \n")


def test_a_bom_and_windows_line_endings_change_nothing(tmp_path: Path) -> None:
    root = js_sample(tmp_path / "js")
    plain = (root / "lcov.info").read_bytes()
    windows = b"\xef\xbb\xbf" + plain.replace(b"\n", b"\r\n")
    assert parse_report(windows, "auto", str(root)).files == parse_report(plain, "auto", str(root)).files


# --- broken reports -------------------------------------------------------------------------------------


def truncated(data: bytes) -> bytes:
    return data[: len(data) * 2 // 3]


def test_truncated_reports_of_each_format_name_the_format_and_the_place(tmp_path: Path) -> None:
    sample = python_sample()
    js = js_sample(tmp_path / "js")
    java = java_sample(tmp_path / "java")
    cases = {
        "coveragepy-json": sample.json,
        "istanbul": js / "coverage-final.json",
        "lcov": js / "lcov.info",
        "cobertura": sample.xml,
        "jacoco": java / "jacoco.xml",
    }
    for fmt, path in cases.items():
        with pytest.raises(ReportError) as caught:
            parse_report(truncated(path.read_bytes()), fmt, str(tmp_path))  # type: ignore[arg-type]
        message = str(caught.value)
        assert message.startswith(f"{fmt} report: "), message
        assert "truncated" in message or "ends early" in message, message
        assert re.search(r"line \d+", message), message


def test_malformed_lines_and_elements_are_located() -> None:
    with pytest.raises(ReportError, match=r"^lcov report: line 4: malformed DA line `DA:x,1`"):
        lcov.parse(b"TN:\nSF:a.py\nDA:1,1\nDA:x,1\nend_of_record\n")
    with pytest.raises(ReportError, match=r"^lcov report: line 3: `garbage here` is not an LCOV line"):
        lcov.parse(b"TN:\nSF:a.py\ngarbage here\nend_of_record\n")
    with pytest.raises(ReportError, match=r"end_of_record without an SF"):
        lcov.parse(b"DA:1,1\nend_of_record\n")
    bad_xml = b'<?xml version="1.0"?>\n<coverage>\n<packages><package name="p"><classes>\n<class name="a">\n'
    with pytest.raises(ReportError, match=r"^cobertura report: line \d+, column \d+: "):
        parse_report(bad_xml, "cobertura", "/")
    no_filename = (
        b'<coverage><packages><package><classes><class name="a"><lines/></class></classes></package>'
        b"</packages></coverage>"
    )
    with pytest.raises(ReportError, match=r"^cobertura report: line 1: a <class> element has no filename"):
        parse_report(no_filename, "cobertura", "/")
    hits_missing = (
        b'<coverage><packages><package><classes><class filename="a.py"><lines><line number="1"/></lines>'
        b"</class></classes></package></packages></coverage>"
    )
    with pytest.raises(ReportError, match="needs a number and a hits attribute"):
        parse_report(hits_missing, "cobertura", "/")
    with pytest.raises(
        ReportError, match=r"^coveragepy-json report: unexpected shape: Expected `array`, got `str`"
    ):
        parse_report(
            b'{"meta": {"format": 3}, "files": {"a.py": {"executed_lines": "1", "missing_lines": []}}}',
            "auto",
            "/",
        )
    with pytest.raises(ReportError, match=r"^istanbul report: line 2, column \d+: "):
        parse_report(b'{"a.js": {"statementMap": {},\n "fnMap": {}, ]}', "istanbul", "/")


def test_xml_entity_declarations_are_refused() -> None:
    bomb = (
        b'<?xml version="1.0"?>\n<!DOCTYPE coverage [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>\n'
        b"<coverage><sources><source>&b;</source></sources><packages/></coverage>"
    )
    with pytest.raises(ReportError, match="declares XML entities, which are refused"):
        parse_report(bomb, "auto", "/")


# --- LCOV details: the fast path must agree with the plain reading ------------------------------------


def test_lcov_variants_checksums_fnl_fna_and_duplicate_records() -> None:
    text = (
        b"TN:\nSF:a.c\nFNL:0,3,9\nFNA:0,2,main\nFNL:1,11\nFNA:1,0,helper\n"
        b"DA:3,2,abcdef\nDA:4,0,123456\nDA:11,0\nBRDA:4,e0,0,-\nBRDA:4,0,1,3\nend_of_record\n"
        b"TN:second\nSF:a.c\nDA:3,0\nDA:4,1\nDA:11,0\nend_of_record\n"
    )
    (entry,) = lcov.parse(text)
    assert list(entry.lines) == [3, 4, 11]
    assert list(entry.missed) == [11]  # line 4 ran in the second test run
    assert entry.functions is not None
    assert {(fn.name, fn.start, fn.end, fn.executed) for fn in entry.functions} == {
        ("main", 3, 9, True),
        ("helper", 11, None, False),
    }
    assert entry.branches_by_line() == {4: (2, 1)}


def _naive_lcov(text: str) -> dict[str, tuple[list[int], list[int], int, int]]:
    """An independent, line-by-line reading: lines, missed, branch points, branch points taken."""
    files: dict[str, tuple[dict[int, bool], list[int]]] = {}
    current = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "SF":
            current = files.setdefault(value, ({}, [0, 0]))
        elif key == "DA" and current is not None:
            number, hits = (int(v) for v in value.split(",")[:2])
            current[0][number] = current[0].get(number, False) or hits > 0
        elif key == "BRDA" and current is not None:
            taken = value.rsplit(",", 1)[1]
            current[1][0] += 1
            current[1][1] += taken not in ("-", "0")
    return {
        name: (sorted(hits), sorted(n for n, ran in hits.items() if not ran), branches[0], branches[1])
        for name, (hits, branches) in files.items()
    }


record = st.tuples(
    st.sampled_from(["src/a.ts", "src/b.ts", "lib/c.ts"]),
    st.lists(st.tuples(st.integers(1, 400), st.integers(0, 3)), min_size=1, max_size=40),
    st.lists(st.tuples(st.integers(1, 400), st.sampled_from(["-", "0", "1", "7"])), max_size=10),
    st.booleans(),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(record, min_size=1, max_size=3, unique_by=lambda r: r[0]))
def test_lcov_parse_agrees_with_a_line_by_line_reading(records: list) -> None:
    chunks = []
    for name, da, brda, interleave in records:
        da_lines = [f"DA:{line},{hits}" for line, hits in da]
        br_lines = [f"BRDA:{line},0,{i},{taken}" for i, (line, taken) in enumerate(brda)]
        body = [x for pair in zip(da_lines, br_lines, strict=False) for x in pair] if interleave else []
        if interleave:
            body += da_lines[len(br_lines) :] + br_lines[len(da_lines) :]
        else:
            body = br_lines + da_lines
        chunks.append("\n".join(["TN:", f"SF:{name}", *body, "end_of_record"]))
    text = "\n".join(chunks) + "\n"
    expected = _naive_lcov(text)
    parsed = {entry.path: entry for entry in lcov.parse(text.encode())}
    assert set(parsed) == set(expected)
    for name, (lines, missed, points, taken) in expected.items():
        entry = parsed[name]
        assert (list(entry.lines), list(entry.missed)) == (lines, missed)
        branch_points, branch_missed = entry.branch_points or [], entry.branch_missed or []
        assert (len(branch_points), len(branch_points) - len(branch_missed)) == (points, taken)
