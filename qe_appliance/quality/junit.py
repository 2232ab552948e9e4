"""JUnit XML test results as pytest (`--junitxml`), jest-junit and Maven Surefire write them: counts
measured from the <testcase> elements, reruns from Surefire's rerun/flaky elements and from a test
reported more than once in the same suite (the last record is its result).

Read in one streaming pass of expat (no tree): memory grows with the number of distinct tests (a few
dozen bytes each, at most MAX_TESTS of them), not with the file, so a 64 MiB report costs tens of MiB.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

from qe_appliance.coverage import xmlscan
from qe_appliance.coverage.model import MAX_NUMBER, ReportError, percent

FORMAT: Final = "junit"
MAX_LISTED_FAILURES: Final = 20
_RERUN_TAGS: Final = ("rerunFailure", "rerunError", "flakyFailure", "flakyError")

Outcome = Literal["passed", "failed", "error", "skipped"]


class FailedTest(msgspec.Struct, rename="camel", frozen=True, gc=False):
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


MAX_TESTS: Final = 1_000_000
# Failures whose details are kept while reading: the listed ones are among the first of them, unless
# nearly all of those pass on a later rerun; keeps memory flat when most of a huge report fails.
MAX_KEPT_FAILURES: Final = 1_000
# Text kept of a failure without a message attribute: enough for its first line.
_TEXT_CHARS: Final = 4096
_OUTCOMES: Final[tuple[Outcome, ...]] = ("passed", "failed", "error", "skipped")
_PASSED, _FAILED, _ERROR, _SKIPPED = range(4)
_SUITE_COUNTS: Final = ("tests", "failures", "errors", "skipped")


class _Case:
    """The <testcase> being read: its name, what its children say, and the text of a failure."""

    __slots__ = ("name", "classname", "key", "outcome", "failure_tag", "message", "text", "reruns")

    def __init__(self, name: str, classname: str | None, key: int) -> None:
        self.name, self.classname, self.key = name, classname, key
        self.outcome = _PASSED
        self.failure_tag: str | None = None
        self.message: str | None = None
        self.text: list[str] | None = None
        self.reruns = 0


class _Reader:
    """expat handlers that keep counts, not elements."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.root = ""
        self.root_time: str | None = None
        self.root_totals: dict[str, str] = {}
        self.root_gives_totals = False
        self.suites = 0
        self.suite_stack: list[int] = []  # suite index per open <testsuite>
        self.top_times: list[float | None] = []
        self.suite_sums = dict.fromkeys(_SUITE_COUNTS, 0)
        self.suite_problem: str | None = None
        # Last outcome per distinct test: keyed by the hash of (suite, classname, name), which is salted per
        # process, so a report cannot be made to collide; values are outcome | flaky << 2.
        self.outcomes: dict[int, int] = {}
        self.failures: dict[int, FailedTest] = {}
        self.records = 0
        self.rerun_elements = 0
        self.case_time = 0.0
        self.case_times_complete = True
        self.any_case = False
        self.case: _Case | None = None
        self.case_depth = -1
        self.collect_text = False

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        depth = len(self.stack)
        parent = self.stack[-1] if self.stack else None
        self.stack.append(tag)
        if depth == 0:
            self.root, self.root_time = tag, attrs.get("time")
            self.root_totals = {key: attrs.get(key, "0") for key in _SUITE_COUNTS}
            self.root_gives_totals = "tests" in attrs
        if tag == "testsuite":
            index = self.suites
            self.suites += 1
            self.suite_stack.append(index)
            if depth == 1:
                self.top_times.append(_seconds(attrs.get("time")))
            for key in _SUITE_COUNTS:
                raw = attrs.get(key, "0").strip()
                if _count(raw) is None:
                    self.suite_problem = self.suite_problem or f"<testsuite> {key}={raw[:40]!r} is not a count"
                else:
                    self.suite_sums[key] += int(raw)
        elif tag == "testcase" and self.case is None:
            seconds = _seconds(attrs.get("time"))
            if seconds is None:
                self.case_times_complete = False
            else:
                self.case_time += seconds
            self.any_case = True
            if parent == "testsuite":
                suite_key = self.suite_stack[-1]
            elif depth == 1 and self.root == "testsuites":
                suite_key = -1  # a test case outside any suite
            else:
                return
            name, classname = attrs.get("name", ""), attrs.get("classname")
            self.case = _Case(name, classname, hash((suite_key, classname, name)))
            self.case_depth = depth
        elif self.case is not None and depth == self.case_depth + 1:
            self._child(self.case, tag, attrs)
        elif self.collect_text:
            self.collect_text = False  # text after a nested element is not the failure's own text

    def _child(self, case: _Case, tag: str, attrs: dict[str, str]) -> None:
        if tag in _RERUN_TAGS:
            case.reruns += 1
            return
        rank = {"error": _ERROR, "failure": _FAILED, "skipped": _SKIPPED}.get(tag)
        if rank is None:
            return
        # error outranks failure, which outranks skipped; the last element of the deciding kind speaks.
        order = {_PASSED: 0, _SKIPPED: 1, _FAILED: 2, _ERROR: 3}
        if order[rank] < order[case.outcome]:
            return
        case.outcome = rank
        if rank != _SKIPPED:
            case.failure_tag, case.message = tag, attrs.get("message")
            case.text = []
            self.collect_text = True

    def text(self, data: str) -> None:
        case = self.case
        if self.collect_text and case is not None and case.text is not None:
            if sum(map(len, case.text)) < _TEXT_CHARS:
                case.text.append(data)

    def end(self, tag: str) -> None:
        self.stack.pop()
        depth = len(self.stack)
        if tag == "testsuite":
            self.suite_stack.pop()
        case = self.case
        if case is None:
            return
        if depth == self.case_depth + 1:
            self.collect_text = False
        if depth != self.case_depth or tag != "testcase":
            return
        self.case = None
        self.records += 1
        self.rerun_elements += case.reruns
        if case.key not in self.outcomes and len(self.outcomes) >= MAX_TESTS:
            raise ReportError(
                FORMAT, "", f"more than {MAX_TESTS:,} distinct test cases; split the report or give fewer suites"
            )
        self.outcomes[case.key] = case.outcome | (4 if case.reruns else 0)
        if case.outcome in (_FAILED, _ERROR) and (
            case.key in self.failures or len(self.failures) < MAX_KEPT_FAILURES
        ):
            message = case.message or "".join(case.text or ())
            self.failures[case.key] = FailedTest(
                case.name, case.classname, _OUTCOMES[case.outcome], _first_line(message)  # type: ignore[arg-type]
            )
        elif case.outcome not in (_FAILED, _ERROR):
            self.failures.pop(case.key, None)


def parse(data: bytes) -> TestResults:
    reader = _Reader()
    expat = xmlscan.parser()
    expat.buffer_text = True
    expat.StartElementHandler = reader.start
    expat.EndElementHandler = reader.end
    expat.CharacterDataHandler = reader.text
    xmlscan.run(expat, data, FORMAT)
    if reader.root not in ("testsuites", "testsuite"):
        raise ReportError(
            FORMAT, "line 1", f"the document element is <{reader.root}>, not <testsuites> or <testsuite>"
        )
    counts = [0, 0, 0, 0]
    flaky = 0
    for value in reader.outcomes.values():
        counts[value & 3] += 1
        flaky += value == (_PASSED | 4)
    tests = len(reader.outcomes)
    time = _total_time(reader)
    if tests == 0:
        return _from_attributes(reader, time)
    failed = [reader.failures[key] for key in reader.outcomes if key in reader.failures][:MAX_LISTED_FAILURES]
    run = tests - counts[_SKIPPED]
    return TestResults(
        tests=tests,
        passed=counts[_PASSED],
        failures=counts[_FAILED],
        errors=counts[_ERROR],
        skipped=counts[_SKIPPED],
        reruns=reader.rerun_elements + reader.records - tests,
        flaky=flaky,
        time=time,
        suites=reader.suites,
        pass_rate=_ratio(counts[_PASSED], run),
        skipped_ratio=_ratio(counts[_SKIPPED], tests),
        failed=failed,
    )


def _first_line(text: str) -> str | None:
    text = text.strip()
    return text.splitlines()[0][:200] if text else None


def _total_time(reader: _Reader) -> float | None:
    """The report's own total when it gives one, else the top-level suites' sum, else the tests' sum."""
    if reader.root_time is not None:
        top: list[float | None] = [_seconds(reader.root_time)]
    else:
        top = reader.top_times
    if top and None not in top:
        return round(sum(value or 0.0 for value in top), 3)
    if reader.any_case and reader.case_times_complete:
        return round(reader.case_time, 3)
    return None


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value.replace(",", ""))  # Surefire writes 1,234.5 for long runs
    except ValueError:
        return None


def _count(raw: str) -> int | None:
    if raw.isascii() and raw.isdigit() and len(raw) <= 10 and int(raw) <= MAX_NUMBER:
        return int(raw)
    return None


def _ratio(part: int, whole: int) -> float | None:
    share = percent(part, whole)
    return None if share is None else round(share / 100, 4)


def _from_attributes(reader: _Reader, time: float | None) -> TestResults:
    """A report with suite totals but no <testcase> elements (some aggregators write these)."""
    if reader.root == "testsuite" or reader.root_gives_totals:
        totals: dict[str, int] = {}
        for key in _SUITE_COUNTS:
            raw = reader.root_totals[key].strip()
            value = _count(raw)
            if value is None:
                raise ReportError(FORMAT, "", f"<{reader.root}> {key}={raw[:40]!r} is not a count")
            totals[key] = value
    else:
        if reader.suite_problem is not None:
            raise ReportError(FORMAT, "", reader.suite_problem)
        totals = reader.suite_sums
    tests, failures, errors, skipped = (totals[key] for key in _SUITE_COUNTS)
    passed = max(0, tests - failures - errors - skipped)
    return TestResults(
        tests=tests,
        passed=passed,
        failures=failures,
        errors=errors,
        skipped=skipped,
        reruns=0,
        flaky=0,
        time=time,
        suites=reader.suites,
        pass_rate=_ratio(passed, tests - skipped),
        skipped_ratio=_ratio(skipped, tests),
        failed=[],
    )
