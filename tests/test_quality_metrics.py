"""qe_quality_metrics: radon's numbers per file and in total, the cache, and the joins with the latest
coverage report and with JUnit results."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from radon.complexity import cc_visit
from radon.metrics import mi_visit
from radon.raw import analyze

from qe_appliance.config import Config
from qe_appliance.quality import pysource
from qe_appliance.store.reports import ReportStore
from qe_appliance.tools.base import ToolError
from qe_appliance.workspace import Workspace
from tests.conftest import call_tool as call
from tests.fixtures.coverage.samples import python_sample


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(python_sample().root, root)
    return root


@pytest.fixture
def services(project: Path, tmp_path: Path) -> Iterator[SimpleNamespace]:
    store = ReportStore(tmp_path / "reports.db")
    yield SimpleNamespace(workspace=Workspace([project], 1 << 26), reports=store, config=Config())
    store.close()



def test_per_file_numbers_are_radons(services: SimpleNamespace, project: Path) -> None:
    result = call(services, "qe_quality_metrics", {"path": "shop"})
    rows = {row["path"]: row for row in result["files"]}
    assert set(rows) == {"__init__.py", "inventory.py", "pricing.py", "report.py"}
    for name, row in rows.items():
        source = (project / "shop" / name).read_text()
        raw = analyze(source)
        assert (row["loc"], row["lloc"], row["sloc"], row["comments"], row["multi"], row["blank"]) == (
            raw.loc,
            raw.lloc,
            raw.sloc,
            raw.comments,
            raw.multi,
            raw.blank,
        )
        assert row["maintainability"] == round(mi_visit(source, True), 2)
        functions = [b.complexity for b in cc_visit(source) if not hasattr(b, "methods")]
        assert row["functions"] == len(functions)
        assert row["complexityMax"] == (max(functions) if functions else None)
    totals = result["totals"]
    assert totals["files"] == 4 and totals["sloc"] == sum(row["sloc"] for row in rows.values())
    assert totals["complexityMax"] == 7
    assert result["worstFunctions"][0] == {
        "file": "inventory.py",
        "name": "Inventory.rebalance",
        "kind": "method",
        "line": 28,
        "complexity": 7,
    }
    weighted = sum(r["maintainability"] * max(r["sloc"], 1) for r in rows.values())
    assert totals["maintainability"] == round(weighted / sum(max(r["sloc"], 1) for r in rows.values()), 2)
    assert result["coverage"] is None and result["tests"] is None and result["errors"] == []


def test_include_exclude_and_single_files(services: SimpleNamespace) -> None:
    only = call(
        services,
        "qe_quality_metrics",
        {"path": ".", "include": ["shop/**/*.py"], "exclude": ["**/report.py"]},
    )
    assert sorted(row["path"] for row in only["files"]) == [
        "shop/__init__.py",
        "shop/inventory.py",
        "shop/pricing.py",
    ]
    single = call(services, "qe_quality_metrics", {"path": "shop/pricing.py"})
    assert [row["path"] for row in single["files"]] == ["pricing.py"]
    with pytest.raises(ToolError, match="not a Python file"):
        call(services, "qe_quality_metrics", {"path": "coverage.json"})
    with pytest.raises(ToolError, match="no Python files under shop match include/exclude"):
        call(services, "qe_quality_metrics", {"path": "shop", "include": ["*.pyx"]})


def test_a_file_that_does_not_parse_is_listed_and_the_rest_measured(
    services: SimpleNamespace, project: Path
) -> None:
    (project / "shop" / "broken.py").write_text("def f(:\n    pass\n")
    result = call(services, "qe_quality_metrics", {"path": "shop"})
    assert result["totals"]["files"] == 4
    assert len(result["errors"]) == 1 and "broken.py: line 1" in result["errors"][0]


def test_joined_with_the_latest_coverage_report_and_junit(services: SimpleNamespace) -> None:
    analyzed = call(services, "qe_coverage_analyze", {"path": "coverage.json"})
    result = call(services, "qe_quality_metrics", {"path": "shop", "junitXml": "junit.xml"})
    coverage = result["coverage"]
    assert coverage["reportId"] == analyzed["reportId"] and coverage["filesMatched"] == 4
    assert coverage["lines"] == analyzed["totals"]["lines"]
    table = {row["path"].removeprefix("shop/"): row["lines"]["percent"] for row in analyzed["table"]}
    assert {row["path"]: row["lineCoverage"] for row in result["files"]} == table
    tests = result["tests"]
    # pytest's own summary of the sample: 1 failed, 6 passed, 1 skipped.
    assert (tests["tests"], tests["passed"], tests["failures"], tests["skipped"]) == (8, 6, 1, 1)


def test_a_repeated_call_reads_only_changed_files(
    services: SimpleNamespace, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = project / "big"
    package.mkdir()
    template = (project / "shop" / "pricing.py").read_text()
    for index in range(200):
        (package / f"module_{index:03}.py").write_text(template.replace("PriceList", f"PriceList{index}"))
    analysed: list[str] = []
    real = pysource.analyze_text

    def counting(text: str, name: str = "<source>") -> pysource.PySource:
        analysed.append(name)
        return real(text, name)

    monkeypatch.setattr(pysource, "analyze_text", counting)
    started = time.perf_counter()
    first = call(services, "qe_quality_metrics", {"path": "big", "maxFiles": 5})
    cold = time.perf_counter() - started
    assert first["totals"]["files"] == 200 and len(first["files"]) == 5 and first["filesTruncated"]
    assert len(analysed) == 200
    started = time.perf_counter()
    second = call(services, "qe_quality_metrics", {"path": "big", "maxFiles": 5})
    warm = time.perf_counter() - started
    assert second == first and len(analysed) == 200
    assert warm < cold / 3, (warm, cold)
    changed = package / "module_007.py"
    changed.write_text(template + "\n\ndef extra(x):\n    return x if x else -x\n")
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    third = call(services, "qe_quality_metrics", {"path": "big", "maxFiles": 5})
    assert analysed[200:] == [str(changed.resolve())]
    assert third["totals"]["functions"] == first["totals"]["functions"] + 1
