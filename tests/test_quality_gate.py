"""qe_quality_gate: verdicts per criterion, configured policies, metrics measured from real artifacts,
and JUnit XML from pytest, jest-junit and Maven Surefire."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from qe_appliance.config import Config, ConfigError, load_config
from qe_appliance.coverage.model import ReportError
from qe_appliance.quality import junit
from qe_appliance.quality.gate import GateMetrics, GatePolicy, evaluate
from qe_appliance.store.reports import ReportStore
from qe_appliance.tools.base import ToolError
from qe_appliance.workspace import Workspace
from tests.conftest import call_tool as call
from tests.fixtures.coverage.samples import python_sample

QUALITY = Path(__file__).resolve().parent / "fixtures" / "quality"


@pytest.fixture
def services(tmp_path: Path) -> Iterator[SimpleNamespace]:
    store = ReportStore(tmp_path / "reports.db")
    workspace = Workspace([python_sample().root, QUALITY], 1 << 26)
    yield SimpleNamespace(workspace=workspace, reports=store, config=Config())
    store.close()



# --- the verdict ------------------------------------------------------------------------------------


def test_each_criterion_gets_a_verdict_and_the_summary_names_the_failures() -> None:
    policy = GatePolicy(
        min_line_coverage=80, max_failed_tests=0, min_branch_coverage=50, max_skipped_ratio=0.1
    )
    metrics = GateMetrics(line_coverage=72.5, failed_tests=0, skipped_ratio=0.25)
    result = evaluate(policy, metrics, "default")
    verdicts = {c.criterion: (c.actual, c.threshold, c.comparison, c.verdict) for c in result.criteria}
    assert verdicts == {
        "minLineCoverage": (72.5, 80, ">=", "fail"),
        "minBranchCoverage": (None, 50, ">=", "warn"),
        "maxFailedTests": (0, 0, "<=", "pass"),
        "maxSkippedRatio": (0.25, 0.1, "<=", "fail"),
    }
    assert result.verdict == "fail"
    assert result.summary == (
        "quality gate FAIL (policy default): line coverage 72.5 < 80; branch coverage not measured; "
        "skipped ratio 0.25 > 0.1 [1/4 criteria passed]"
    )
    assert evaluate(GatePolicy(min_line_coverage=80), GateMetrics(line_coverage=80), "p").verdict == "pass"
    assert evaluate(
        GatePolicy(min_line_coverage=80, max_complexity=5), GateMetrics(line_coverage=90), "p"
    ).verdict == ("warn")


def test_the_gate_is_fast_with_given_metrics(services: SimpleNamespace) -> None:
    started = time.perf_counter()
    result = call(
        services,
        "qe_quality_gate",
        {
            "metrics": {
                "lineCoverage": 91,
                "branchCoverage": 88,
                "maxComplexity": 6,
                "maintainability": 55,
                "failedTests": 0,
                "passRate": 1,
                "criticalGaps": 0,
                "skippedRatio": 0.01,
            },
            "policyName": "strict",
        },
    )
    assert time.perf_counter() - started < 0.1
    assert result["verdict"] == "pass" and result["policy"] == "strict" and len(result["criteria"]) == 8


# --- policies -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            {"policyName": "strcit", "metrics": {}},
            "no policy named 'strcit' in the configuration; did you mean 'strict'?",
        ),
        (
            {"policy": {"minLineCoverage": 1}, "policyName": "default", "metrics": {}},
            "give policy or policyName, not both",
        ),
        ({"policy": {}, "metrics": {}}, "policy inline sets no thresholds"),
        ({"policyName": "default"}, "give metrics (measured values) or inputs"),
        ({"inputs": {"coverageReport": "cov-00000000000000ff"}}, "no stored report 'cov-00000000000000ff'"),
        (
            {"inputs": {"junitXml": "../../etc/hosts"}, "policy": {"maxFailedTests": 0}},
            "outside the workspace roots",
        ),
    ],
)
def test_policy_and_argument_mistakes(
    services: SimpleNamespace, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ToolError) as caught:
        call(services, "qe_quality_gate", arguments)
    assert message in str(caught.value)


def test_policies_come_from_the_configuration(tmp_path: Path, services: SimpleNamespace) -> None:
    path = tmp_path / "qe-mcp.yaml"
    path.write_text(
        "quality:\n"
        "  policies:\n"
        "    nightly: {minLineCoverage: 60, maxFailedTests: 3}\n"
        "    default: {minLineCoverage: 50, minBranchCoverage: null}\n"
    )
    config = load_config(path)
    assert set(config.quality.policies) == {"default", "strict", "nightly"}
    assert config.quality.policies["default"] == GatePolicy(min_line_coverage=50)  # replaced, not merged
    services.config = config
    result = call(services, "qe_quality_gate", {"metrics": {"lineCoverage": 55}})
    assert result["policy"] == "default" and result["verdict"] == "pass"
    nightly = call(
        services,
        "qe_quality_gate",
        {"policyName": "nightly", "metrics": {"lineCoverage": 55, "failedTests": 2}},
    )
    assert nightly["verdict"] == "fail" and "line coverage 55 < 60" in nightly["summary"]


def test_bad_policies_in_the_configuration_are_reported_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / "qe-mcp.yaml"
    path.write_text(
        "quality:\n"
        "  policies:\n"
        "    release: {minLineCoverag: 90}\n"
        "    fast: {minLineCoverage: 120, maxFailedTests: -1}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.errors == [
        f"{path}:3: quality.policies.release.minLineCoverag: unknown key `minLineCoverag`; "
        "did you mean `minLineCoverage`?",
        f"{path}:4: quality.policies.fast.minLineCoverage: must be between 0 and 100, got 120",
        f"{path}:4: quality.policies.fast.maxFailedTests: must be at least 0, got -1",
    ]


# --- measuring from artifacts -------------------------------------------------------------------------


def test_metrics_measured_from_a_report_junit_and_sources(services: SimpleNamespace) -> None:
    sample = python_sample()
    analyzed = call(services, "qe_coverage_analyze", {"path": "coverage.json"})
    gaps = call(services, "qe_coverage_gaps", {"reportId": analyzed["reportId"], "minRisk": 0})
    result = call(
        services,
        "qe_quality_gate",
        {
            "policyName": "default",
            "inputs": {"coverageReport": analyzed["reportId"], "junitXml": "junit.xml", "sourcePath": "shop"},
        },
    )
    metrics = result["metrics"]
    assert round(metrics["lineCoverage"], 2) == analyzed["totals"]["lines"]["percent"]
    assert metrics["branchCoverage"] == pytest.approx(sample.totals["percent_branches_covered"])
    # The riskiest gap (Inventory.rebalance) is high, not critical: nothing in the project calls it.
    assert metrics["criticalGaps"] == gaps["severities"]["critical"] == 0
    assert gaps["gaps"][0]["severity"] == "high"
    assert (metrics["failedTests"], metrics["passRate"], metrics["skippedRatio"]) == (
        1,
        round(6 / 7, 4),
        0.125,
    )
    assert metrics["maxComplexity"] == 7
    assert result["verdict"] == "fail"
    assert result["summary"].startswith("quality gate FAIL (policy default): line coverage 53.75 < 80; ")
    # A report path works as well as a reportId, and given metrics take precedence over measured ones.
    by_path = call(
        services,
        "qe_quality_gate",
        {
            "policy": {"minLineCoverage": 50, "maxFailedTests": 1},
            "inputs": {"coverageReport": "coverage.lcov", "junitXml": "junit.xml"},
            "metrics": {"failedTests": 0},
        },
    )
    assert by_path["metrics"]["lineCoverage"] == 53.75 and by_path["metrics"]["failedTests"] == 0
    assert by_path["verdict"] == "pass"


def test_coverage_is_judged_unrounded(services: SimpleNamespace) -> None:
    # 1543 of 2029 lines is 76.0473%: shown as 76.05, but short of a 76.049 minimum.
    lines = "".join(f"DA:{n},{1 if n <= 1543 else 0}\n" for n in range(1, 2030))
    analyzed = call(
        services, "qe_coverage_analyze", {"content": f"SF:big.py\n{lines}end_of_record\n", "format": "lcov"}
    )
    assert analyzed["totals"]["lines"]["percent"] == 76.05
    result = call(
        services,
        "qe_quality_gate",
        {"policy": {"minLineCoverage": 76.049}, "inputs": {"coverageReport": analyzed["reportId"]}},
    )
    assert result["verdict"] == "fail"
    assert result["metrics"]["lineCoverage"] == 100 * 1543 / 2029
    assert "line coverage 76.0473 < 76.049" in result["summary"]
    passing = call(
        services,
        "qe_quality_gate",
        {"policy": {"minLineCoverage": 76.047}, "inputs": {"coverageReport": analyzed["reportId"]}},
    )
    assert passing["verdict"] == "pass"


def test_junit_xml_can_be_given_inline(services: SimpleNamespace) -> None:
    xml = (QUALITY / "jest-junit.xml").read_text()
    result = call(services, "qe_quality_gate", {"policy": {"minPassRate": 0.9}, "inputs": {"junitXml": xml}})
    assert result["metrics"]["passRate"] == 0.875 and result["verdict"] == "fail"


# --- JUnit XML --------------------------------------------------------------------------------------------


def test_pytest_junit_matches_pytests_summary() -> None:
    results = junit.parse(python_sample().junit.read_bytes())
    assert (results.tests, results.passed, results.failures, results.errors, results.skipped) == (
        8,
        6,
        1,
        0,
        1,
    )
    assert results.failed[0].name == "test_minus_discount_is_wrong_on_purpose"
    assert results.failed[0].message is not None and "AssertionError" in results.failed[0].message
    assert results.time is not None and results.time > 0


def test_jest_junit() -> None:
    results = junit.parse((QUALITY / "jest-junit.xml").read_bytes())
    # jest-junit writes the todo test as a plain test case, so the file holds 9 cases: 7 pass.
    assert (results.tests, results.passed, results.failures, results.skipped, results.suites) == (
        9,
        7,
        1,
        1,
        2,
    )
    assert results.time == 0.476 and results.failed[0].name == "cart describes an empty cart"


def test_surefire_reruns_and_flaky_tests() -> None:
    results = junit.parse((QUALITY / "TEST-com.example.shop.CartTest.xml").read_bytes())
    assert (results.tests, results.passed, results.failures, results.errors, results.skipped) == (
        5,
        2,
        1,
        1,
        1,
    )
    assert (results.reruns, results.flaky) == (3, 1)
    assert results.time == 1021.507  # Surefire's "1,021.507"
    assert (results.pass_rate, results.skipped_ratio) == (0.5, 0.2)


def test_a_test_reported_again_is_a_rerun_and_its_last_result_counts() -> None:
    xml = b"""<testsuites><testsuite name="pytest" tests="4">
      <testcase classname="t" name="flaky" time="0.1"><failure message="boom"/></testcase>
      <testcase classname="t" name="flaky" time="0.1"/>
      <testcase classname="t" name="broken" time="0.1"/>
      <testcase classname="t" name="broken" time="0.1"><failure message="still"/></testcase>
    </testsuite></testsuites>"""
    results = junit.parse(xml)
    assert (results.tests, results.passed, results.failures, results.reruns) == (2, 1, 1, 2)
    assert results.time == 0.4


def test_totals_only_and_broken_junit() -> None:
    totals_only = junit.parse(
        b'<testsuites><testsuite name="a" tests="10" failures="2" errors="1" skipped="1"/>'
        b'<testsuite name="b" tests="5" failures="0" errors="0" skipped="0"/></testsuites>'
    )
    assert (totals_only.tests, totals_only.passed, totals_only.failures, totals_only.errors) == (15, 11, 2, 1)
    data = (QUALITY / "jest-junit.xml").read_bytes()
    with pytest.raises(ReportError, match=r"^junit report: line \d+, column \d+: .*truncated"):
        junit.parse(data[: len(data) // 2])
    with pytest.raises(ReportError, match=r"^junit report: line 1: the document element is <coverage>"):
        junit.parse(b"<coverage/>")
