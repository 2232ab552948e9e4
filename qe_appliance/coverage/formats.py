"""Which coverage format a document is, and parsing it into a Report whatever the format."""

from __future__ import annotations

from typing import Final, Literal

from qe_appliance.coverage import jsonreports, xmlscan
from qe_appliance.coverage.model import FileCoverage, Format, Report, ReportError, check_numbers

FormatChoice = Literal["auto", "coveragepy-json", "cobertura", "lcov", "istanbul", "jacoco"]
_BOM: Final = b"\xef\xbb\xbf"
_LCOV_KEYS: Final = (b"TN:", b"SF:", b"VER:")


def detect(data: bytes) -> Format:
    """The format of a coverage report, judged from its content; ReportError when it is none of them."""
    head = data.lstrip()[:4096]
    if not head:
        raise ReportError("coverage", "", "the report is empty")
    if head.startswith((b"{", b"[")):
        found = jsonreports.looks_like(data)
        if found == jsonreports.COVERAGEPY:
            return "coveragepy-json"
        if found == jsonreports.ISTANBUL:
            return "istanbul"
        hint = jsonreports.summary_hint(data)
        raise ReportError(
            "coverage",
            "",
            hint
            or "JSON, but neither coverage.py's `coverage json` output nor Istanbul's coverage-final.json",
        )
    if head.startswith(b"<"):
        root = xmlscan.root_name(data)
        if root == "coverage":
            return "cobertura"
        if root == "report":
            return "jacoco"
        if root in ("testsuites", "testsuite"):
            raise ReportError(
                "coverage",
                "",
                "this is JUnit test results, not coverage; pass it to "
                "qe_quality_gate as inputs.junitXml or to qe_quality_metrics as junitXml",
            )
        raise ReportError(
            "coverage",
            "",
            f"XML with document element <{root}>; expected Cobertura <coverage> or JaCoCo <report>",
        )
    if head.startswith(_LCOV_KEYS) or b"\nSF:" in data[:65536] or b"end_of_record" in data[: 1 << 20]:
        return "lcov"
    raise ReportError(
        "coverage",
        "",
        "not a coverage report this server reads (coverage.py JSON, Cobertura "
        "XML, LCOV, Istanbul JSON or JaCoCo XML)",
    )


def parse_report(data: bytes, choice: FormatChoice, root: str) -> Report:
    """Parse `data` as `choice` (or the detected format); relative file names are taken from `root`."""
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    fmt: Format
    if choice == "auto":
        fmt = detect(data)
    else:
        fmt = choice
        try:
            detected: Format | None = detect(data)
        except ReportError:
            detected = None  # the chosen parser says precisely what is wrong
        if detected is not None and detected != fmt:
            raise ReportError(
                fmt, "", f"the content looks like {detected}, not {fmt}; pass format: {detected} or auto"
            )
    return _parse(data, fmt, root)


def _parse(data: bytes, fmt: Format, root: str) -> Report:
    # The parsers (and their patterns) are imported by the agents' forkserver (fleet/forkserver.py PRELOAD),
    # not by every server start.
    from qe_appliance.coverage import cobertura, jacoco, lcov

    source_dirs: list[str] = []
    files: list[FileCoverage]
    if fmt == "coveragepy-json":
        files = jsonreports.parse_coveragepy(data)
    elif fmt == "istanbul":
        files = jsonreports.parse_istanbul(data)
    elif fmt == "lcov":
        files = lcov.parse(data)
    elif fmt == "cobertura":
        parsed = cobertura.parse(data)
        files, source_dirs = parsed.files, parsed.sources
    else:
        files = jacoco.parse(data)
    check_numbers(files, fmt)
    return Report(fmt, root, _uniform(files), source_dirs)


def _uniform(files: list[FileCoverage]) -> list[FileCoverage]:
    """When the report carries branches or functions for some files, the others have none (not unknown)."""
    if any(entry.branch_points is not None for entry in files):
        for entry in files:
            if entry.branch_points is None:
                entry.branch_points, entry.branch_missed = (), ()
    if any(entry.functions is not None for entry in files):
        for entry in files:
            if entry.functions is None:
                entry.functions = []
    return files
