"""qe_coverage_analyze and qe_coverage_gaps through their handlers: stored reports, the per-file table,
argument mistakes, and results that match the declared output schemas."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from qe_appliance.config import Config
from qe_appliance.store.reports import ReportStore
from qe_appliance.tools.base import ToolError
from qe_appliance.workspace import Workspace
from tests.conftest import call_tool as call
from tests.fixtures.coverage.samples import python_sample


@pytest.fixture
def services(tmp_path: Path) -> Iterator[SimpleNamespace]:
    store = ReportStore(tmp_path / "reports.db")
    yield SimpleNamespace(
        workspace=Workspace([python_sample().root], 1 << 26), reports=store, config=Config()
    )
    store.close()



def test_analyze_returns_totals_a_sorted_table_and_stores_the_report(services: SimpleNamespace) -> None:
    sample = python_sample()
    result = call(services, "qe_coverage_analyze", {"path": "coverage.json"})
    assert result["format"] == "coveragepy-json" and result["root"] == str(sample.root)
    assert result["totals"]["lines"] == {
        "covered": sample.totals["covered_lines"],
        "total": sample.totals["num_statements"],
        "percent": round(sample.totals["percent_statements_covered"], 2),
    }
    paths = [row["path"] for row in result["table"]]
    # Worst first; the empty __init__.py (nothing to cover) goes last.
    assert paths == ["shop/report.py", "shop/inventory.py", "shop/pricing.py", "shop/__init__.py"]
    # Missed ranges read like coverage.py's own "Missing" column.
    assert {row["path"]: row["missed"] for row in result["table"]} == {
        name: text.replace(" ", "") for name, text in sample.missing_text.items()
    }
    assert result["table"][-1]["lines"] == {"covered": 0, "total": 0, "percent": None}
    stored = services.reports.get(result["reportId"])
    assert stored is not None and stored[0].root == str(sample.root)
    again = call(services, "qe_coverage_analyze", {"path": str(sample.json)})
    assert again["reportId"] == result["reportId"]  # same report, same id
    assert services.reports.count() == 1


def test_the_table_sorts_by_other_keys_and_is_cut_at_max_files(services: SimpleNamespace) -> None:
    by_missed = call(
        services,
        "qe_coverage_analyze",
        {"path": "coverage.lcov", "sortBy": "missedLines", "descending": True, "maxFiles": 2},
    )
    assert [row["path"] for row in by_missed["table"]] == ["shop/inventory.py", "shop/report.py"]
    assert by_missed["tableTruncated"] is True and by_missed["files"] == 4
    by_path = call(services, "qe_coverage_analyze", {"path": "coverage.xml", "sortBy": "path"})
    assert [row["path"] for row in by_path["table"]] == sorted(row["path"] for row in by_path["table"])
    assert by_path["totals"]["functions"] is None


def test_inline_content_with_a_root(services: SimpleNamespace) -> None:
    sample = python_sample()
    result = call(
        services, "qe_coverage_analyze", {"content": sample.lcov.read_text(), "root": str(sample.root)}
    )
    assert result["format"] == "lcov" and result["root"] == str(sample.root)
    gaps = call(services, "qe_coverage_gaps", {"reportId": result["reportId"]})
    assert gaps["gaps"][0]["function"] == "Inventory.rebalance"


def test_gaps_from_a_stored_report_or_a_path_agree_and_filter(services: SimpleNamespace) -> None:
    analyzed = call(services, "qe_coverage_analyze", {"path": "coverage.json"})
    by_id = call(services, "qe_coverage_gaps", {"reportId": analyzed["reportId"], "minRisk": 0})
    by_path = call(services, "qe_coverage_gaps", {"path": "coverage.json", "minRisk": 0})
    assert by_id["gaps"] == by_path["gaps"] and by_id["reportId"] == analyzed["reportId"]
    assert by_id["gapsTotal"] == len(by_id["gaps"]) == sum(by_id["severities"].values())
    risky = call(services, "qe_coverage_gaps", {"reportId": analyzed["reportId"], "minRisk": 0.5, "limit": 2})
    assert len(risky["gaps"]) == 2 and all(gap["risk"] >= 0.5 for gap in risky["gaps"])
    assert risky["gaps"][0]["severity"] == "high"


@pytest.mark.parametrize(
    ("name", "arguments", "message"),
    [
        ("qe_coverage_analyze", {}, "give exactly one of path or content (got none)"),
        (
            "qe_coverage_analyze",
            {"path": "a", "content": "b"},
            "give exactly one of path or content (got path, content)",
        ),
        ("qe_coverage_analyze", {"path": "/etc/passwd"}, "outside the workspace roots"),
        ("qe_coverage_analyze", {"path": "nope.json"}, "no such file or directory: nope.json"),
        ("qe_coverage_analyze", {"content": "hello"}, "not a coverage report this server reads"),
        (
            "qe_coverage_analyze",
            {"content": "TN:\nSF:a.py\nDA:1,1\n"},
            "lcov report: line 2: the record for a.py",
        ),
        ("qe_coverage_gaps", {"reportId": "cov-0123456789abcdef"}, "no stored report 'cov-0123456789abcdef'"),
        ("qe_coverage_gaps", {"reportId": "r1"}, "'r1' is not a reportId"),
        ("qe_coverage_gaps", {"path": "coverage.json", "sourceRoot": "/tmp"}, "outside the workspace roots"),
    ],
)
def test_mistakes_are_tool_errors_that_say_what_to_fix(
    services: SimpleNamespace, name: str, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ToolError) as caught:
        call(services, name, arguments)
    assert message in str(caught.value)


def test_the_store_keeps_only_the_newest_reports(tmp_path: Path) -> None:
    sample = python_sample()
    store = ReportStore(tmp_path / "bounded.db", max_reports=2)
    services = SimpleNamespace(workspace=Workspace([sample.root], 1 << 26), reports=store, config=Config())
    ids = [
        call(services, "qe_coverage_analyze", {"path": name})["reportId"]
        for name in ("coverage.json", "coverage.xml", "coverage.lcov")
    ]
    assert store.count() == 2 and store.get(ids[0]) is None and store.get(ids[2]) is not None
    latest = store.latest_for(str(sample.root / "shop"))
    assert latest is not None and latest.id == ids[2]
    assert store.latest_for("/nowhere/else") is None
    store.close()
