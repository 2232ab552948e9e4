"""JUnit XML test results as pytest (`--junitxml`), jest-junit and Maven Surefire write them: counts
measured from the <testcase> elements, reruns from Surefire's rerun/flaky elements and from a test
reported more than once in the same suite (the last record is its result).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Final, Literal

import msgspec

from qe_appliance.coverage import xmlscan
from qe_appliance.coverage.model import MAX_NUMBER, ReportError, percent

FORMAT: Final = "junit"
MAX_LISTED_FAILURES: Final = 20
_RERUN_TAGS: Final = ("rerunFailure", "rerunError", "flakyFailure", "flakyError")

Outcome = Literal["passed", "failed", "error", "skipped"]


class FailedTest(msgspec.Struct, rename="camel", frozen=True):
    name: str
    classname: str | None
    outcome: Literal["failed", "error"]
    message: str | None


class TestResults(msgspec.Struct, rename="camel", frozen=True):
    """Counts of distinct tests; `passRate` is passed / (tests - skipped) and `skippedRatio` skipped /
    tests, both 0..1 and null when there is nothing to divide by. `time` is in seconds, null when the
    report gives none. `flaky` tests failed, were rerun and passed (they count as passed)."""

    tests: int
    passed: int
    failures: int
    errors: int
    skipped: int
    reruns: int
    flaky: int
    time: float | None
    suites: int
    pass_rate: float | None
    skipped_ratio: float | None
    failed: list[FailedTest]


def parse(data: bytes) -> TestResults:
    text = xmlscan.check(data, FORMAT)
    root = ET.fromstring(text)
    if root.tag not in ("testsuites", "testsuite"):
        raise ReportError(
            FORMAT, "line 1", f"the document element is <{root.tag}>, not <testsuites> or <testsuite>"
        )
    suites = list(root.iter("testsuite"))
    outcomes: dict[tuple[int, str | None, str], tuple[Outcome, FailedTest | None, bool]] = {}
    records = rerun_elements = 0
    if root.tag == "testsuites":  # test cases outside any suite
        records, rerun_elements = _cases(root, -1, outcomes, records, rerun_elements)
    for index, suite in enumerate(suites):
        records, rerun_elements = _cases(suite, index, outcomes, records, rerun_elements)
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    failed: list[FailedTest] = []
    flaky = 0
    for outcome, failure, was_flaky in outcomes.values():
        counts[outcome] += 1
        flaky += was_flaky and outcome == "passed"
        if failure is not None and len(failed) < MAX_LISTED_FAILURES:
            failed.append(failure)
    tests = len(outcomes)
    if tests == 0:
        return _from_attributes(root, suites)
    run = tests - counts["skipped"]
    return TestResults(
        tests=tests,
        passed=counts["passed"],
        failures=counts["failed"],
        errors=counts["error"],
        skipped=counts["skipped"],
        reruns=rerun_elements + records - tests,
        flaky=flaky,
        time=_total_time(root, suites),
        suites=len(suites),
        pass_rate=_ratio(counts["passed"], run),
        skipped_ratio=_ratio(counts["skipped"], tests),
        failed=failed,
    )


def _cases(
    suite: ET.Element,
    suite_key: int,
    outcomes: dict[tuple[int, str | None, str], tuple[Outcome, FailedTest | None, bool]],
    records: int,
    rerun_elements: int,
) -> tuple[int, int]:
    for case in suite.findall("testcase"):
        records += 1
        name = case.get("name", "")
        classname = case.get("classname")
        reruns = sum(1 for child in case if child.tag in _RERUN_TAGS)
        rerun_elements += reruns
        outcome, failure = _outcome(case, name, classname)
        # A repeated (suite, classname, name) is a rerun of the same test: the last record decides.
        outcomes[(suite_key, classname, name)] = (outcome, failure, reruns > 0)
    return records, rerun_elements


def _outcome(case: ET.Element, name: str, classname: str | None) -> tuple[Outcome, FailedTest | None]:
    tags = {child.tag: child for child in case}
    if "error" in tags:
        return "error", FailedTest(name, classname, "error", _message(tags["error"]))
    if "failure" in tags:
        return "failed", FailedTest(name, classname, "failed", _message(tags["failure"]))
    if "skipped" in tags:
        return "skipped", None
    return "passed", None


def _message(element: ET.Element) -> str | None:
    text = (element.get("message") or element.text or "").strip()
    return text.splitlines()[0][:200] if text else None


def _total_time(root: ET.Element, suites: list[ET.Element]) -> float | None:
    """The report's own total when it gives one, else the top-level suites' sum, else the tests' sum."""
    if root.get("time") is not None:
        top = [root]
    else:
        top = [child for child in root if child.tag == "testsuite"]
    for elements in (top, list(root.iter("testcase"))):
        values = [_seconds(element.get("time")) for element in elements]
        if values and None not in values:
            return round(sum(value or 0.0 for value in values), 3)
    return None


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value.replace(",", ""))  # Surefire writes 1,234.5 for long runs
    except ValueError:
        return None


def _ratio(part: int, whole: int) -> float | None:
    share = percent(part, whole)
    return None if share is None else round(share / 100, 4)


def _from_attributes(root: ET.Element, suites: list[ET.Element]) -> TestResults:
    """A report with suite totals but no <testcase> elements (some aggregators write these)."""
    top = [root] if root.tag == "testsuite" or root.get("tests") is not None else suites

    def total(attribute: str) -> int:
        values = []
        for element in top:
            raw = element.get(attribute, "0").strip()
            if not (raw.isascii() and raw.isdigit() and len(raw) <= 10 and int(raw) <= MAX_NUMBER):
                raise ReportError(FORMAT, "", f"<{element.tag}> {attribute}={raw[:40]!r} is not a count")
            values.append(int(raw))
        return sum(values)

    tests, failures, errors = total("tests"), total("failures"), total("errors")
    skipped = total("skipped")
    passed = max(0, tests - failures - errors - skipped)
    return TestResults(
        tests=tests,
        passed=passed,
        failures=failures,
        errors=errors,
        skipped=skipped,
        reruns=0,
        flaky=0,
        time=_total_time(root, suites),
        suites=len(suites),
        pass_rate=_ratio(passed, tests - skipped),
        skipped_ratio=_ratio(skipped, tests),
        failed=[],
    )
