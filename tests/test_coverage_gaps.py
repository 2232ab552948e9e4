"""Gaps: missed lines merged into blocks, attributed to their function, ranked by the documented risk."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from radon.complexity import cc_visit

from qe_appliance.coverage.formats import parse_report
from qe_appliance.coverage.gaps import GapFactors, find_gaps, risk_of, severity_of
from qe_appliance.workspace import Workspace
from tests.fixtures.coverage.samples import java_sample, js_sample, python_sample


def python_gaps(root: Path, report_name: str = "coverage.json"):
    report = parse_report((root / report_name).read_bytes(), "auto", str(root))
    return find_gaps(report, Workspace([root], 1 << 26), root)


def test_the_untested_rebalance_method_is_the_riskiest_gap() -> None:
    sample = python_sample()
    analysis = python_gaps(sample.root)
    top = analysis.gaps[0]
    assert (top.file, top.function, top.kind) == ("shop/inventory.py", "Inventory.rebalance", "method")
    assert (top.start_line, top.end_line) == (29, 47)
    # Public, but no call site in the project reaches it: high rather than critical.
    assert top.severity == "high" and top.factors.public is True and top.factors.call_sites == 0
    assert top.score == {"size": 0.95, "uncovered": 0.95, "branches": 1.0, "complexity": 0.316, "api": 1.0,
                         "calls": 0.0}
    source = (sample.root / "shop" / "inventory.py").read_text()
    radon_cc = {block.fullname: block.complexity for block in cc_visit(source)}
    assert top.factors.complexity == radon_cc["Inventory.rebalance"]
    assert top.factors.missed_lines == 19
    assert top.suggested_test == "tests/test_inventory.py"  # the project's existing test file
    assert analysis.sources_found == analysis.files_with_gaps == 3


def test_blocks_hold_only_missed_lines_and_stop_at_executed_ones() -> None:
    sample = python_sample()
    analysis = python_gaps(sample.root)
    assert [gap.risk for gap in analysis.gaps] == sorted((gap.risk for gap in analysis.gaps), reverse=True)
    for gap in analysis.gaps:
        statements, missing = sample.analysis[gap.file]
        inside = [line for line in statements if gap.start_line <= line <= gap.end_line]
        assert inside and set(inside) <= set(missing), gap
        assert gap.factors.missed_lines == len(inside)
        length = (sample.root / gap.file).read_text().count("\n")
        assert 1 <= gap.start_line <= gap.end_line <= length
        assert 0.0 <= gap.risk <= 1.0 and gap.severity == severity_of(gap.risk)
    # Every missed line of the run is in exactly one gap.
    covered_by_gaps = sorted(
        line
        for gap in analysis.gaps
        for line in sample.analysis[gap.file][1]
        if gap.start_line <= line <= gap.end_line
    )
    assert len(covered_by_gaps) == sum(len(missing) for _, missing in sample.analysis.values())


def test_a_block_splits_at_a_function_boundary_and_module_code_has_no_function() -> None:
    analysis = python_gaps(python_sample().root)
    report_gaps = sorted((g for g in analysis.gaps if g.file == "shop/report.py"), key=lambda g: g.start_line)
    assert [(g.start_line, g.end_line, g.function) for g in report_gaps] == [
        (3, 5, None),
        (8, 14, "stock_report"),
    ]
    assert {g.suggested_test for g in report_gaps} == {"tests/test_report.py"}


def test_a_source_edited_since_the_report_is_not_trusted(tmp_path: Path) -> None:
    root = tmp_path / "project"
    shutil.copytree(python_sample().root, root)
    (root / "shop" / "inventory.py").write_text("class Inventory:\n    pass\n")
    analysis = python_gaps(root)
    assert any("shop/inventory.py" in w and "re-run coverage" in w for w in analysis.warnings)
    rebalance = next(g for g in analysis.gaps if g.file == "shop/inventory.py" and g.start_line == 29)
    # Attribution falls back to the report's own function list (coverage.py JSON has one).
    assert rebalance.function == "Inventory.rebalance" and rebalance.factors.complexity is None


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def test_git_churn_is_measured_when_the_root_is_a_repository(tmp_path: Path) -> None:
    root = tmp_path / "project"
    shutil.copytree(python_sample().root, root)
    assert not python_gaps(root).churn_measured
    git(root, "init", "-q")
    git(root, "add", "shop")
    git(root, "commit", "-q", "-m", "first")
    pricing = root / "shop" / "pricing.py"
    pricing.write_text(pricing.read_text() + "\n\n# a note\n")
    git(root, "commit", "-q", "-am", "second")
    expected = sum(
        int(added) + int(deleted)
        for added, deleted, _ in (
            line.split("\t")
            for line in git(root, "log", "--numstat", "--format=", "--", "shop/pricing.py").split("\n")
            if line
        )
    )
    analysis = python_gaps(root)
    assert analysis.churn_measured
    pricing_gaps = [g for g in analysis.gaps if g.file == "shop/pricing.py"]
    assert pricing_gaps and {g.factors.churn_lines for g in pricing_gaps} == {expected}


def test_javascript_gaps_use_the_reports_function_ranges(tmp_path: Path) -> None:
    root = js_sample(tmp_path / "js")
    report = parse_report((root / "coverage-final.json").read_bytes(), "auto", str(root))
    analysis = find_gaps(report, Workspace([root], 1 << 26), root)
    estimate = next(g for g in analysis.gaps if g.function == "estimateDays")
    assert (estimate.start_line, estimate.end_line) == (20, 28)
    assert estimate.file.endswith("src/shipping.js")
    assert estimate.suggested_test == "src/shipping.test.js"
    assert estimate.factors.complexity is None  # radon measures Python only; Istanbul has no complexity


def test_java_gaps_use_jacoco_methods_and_complexity(tmp_path: Path) -> None:
    root = java_sample(tmp_path / "java")
    report = parse_report((root / "jacoco.xml").read_bytes(), "auto", str(root))
    analysis = find_gaps(report, Workspace([root], 1 << 26), root)
    describe = next(g for g in analysis.gaps if g.function == "Cart.describe")
    assert (describe.start_line, describe.end_line, describe.factors.complexity) == (32, 39, 3)
    assert describe.suggested_test == "src/test/java/com/example/shop/CartTest.java"
    assert analysis.sources_found == analysis.files_with_gaps  # found under src/main/java


def test_risk_is_the_weighted_mean_of_the_measured_factors() -> None:
    everything = GapFactors(
        missed_lines=10,
        scope_lines=20,
        scope_missed_lines=10,
        branch_points=4,
        branch_points_missed=4,
        complexity=11,
        churn_lines=500,
    )
    # size 0.5, uncovered 0.5, branches 1.0, complexity 10/19, churn 1.0
    expected = (0.20 * 0.5 + 0.25 * 0.5 + 0.15 * 1.0 + 0.25 * 10 / 19 + 0.15 * 1.0) / 1.0
    assert risk_of(everything) == round(expected, 3)
    unknown = GapFactors(
        missed_lines=10,
        scope_lines=20,
        scope_missed_lines=10,
        branch_points=None,
        branch_points_missed=None,
        complexity=None,
        churn_lines=None,
    )
    assert risk_of(unknown) == 0.5  # only size and uncovered were measured
    assert [severity_of(r) for r in (0.75, 0.749, 0.5, 0.3, 0.29)] == [
        "critical",
        "high",
        "high",
        "medium",
        "low",
    ]


@pytest.mark.parametrize("name", ["coverage.json", "coverage.lcov", "coverage.xml"])
def test_the_three_coveragepy_formats_give_the_same_gaps(name: str) -> None:
    reference = python_gaps(python_sample().root, "coverage.json").gaps
    gaps = python_gaps(python_sample().root, name).gaps
    assert [(g.file, g.start_line, g.end_line, g.function) for g in gaps] == [
        (g.file, g.start_line, g.end_line, g.function) for g in reference
    ]


PROJECT_MODULE = '''
import abc
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from decimal import Decimal

__all__ = ["api", "Base"]


def api(x):
    if x > 1:
        x = x * 2
        x = x + 1
    return _helper(x)


def _helper(x):
    if x > 1:
        x = x * 2
        x = x + 1
    return x


def unused(x):  # pragma: no cover
    if x > 1:
        x = x * 2
    return x


class Base(abc.ABC):
    @abc.abstractmethod
    def run(self):
        return 1

    def later(self):
        """Subclasses do this."""
        raise NotImplementedError("later")


if __name__ == "__main__":
    print(api(3))
'''


def test_untested_on_purpose_ranks_last_and_public_called_code_first(tmp_path: Path) -> None:
    root = tmp_path / "project"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "core.py").write_text(PROJECT_MODULE)
    (root / "pkg" / "vendor").mkdir()
    (root / "pkg" / "vendor" / "__init__.py").write_text("")
    (root / "pkg" / "vendor" / "six.py").write_text("def helper(x):\n    if x:\n        return 1\n    return 2\n")
    (root / "pkg" / "use.py").write_text(
        "from pkg.core import api\n\n\ndef go():\n    return api(1) + api(2) + api(3)\n"
    )
    (root / "tests").mkdir()
    (root / "tests" / "test_core.py").write_text("def check(x):\n    if x:\n        return 1\n    return 2\n")
    (root / "drive.py").write_text("import pkg.core, pkg.use, pkg.vendor.six\nimport tests.test_core\n")
    # coverage.py leaves `# pragma: no cover` lines out of its reports; other tools do not.
    (root / ".coveragerc").write_text("[report]\nexclude_lines =\n    matches_nothing_here\n")
    subprocess.run(
        [sys.executable, "-m", "coverage", "run", "--branch", "--include=pkg/*,tests/*", "drive.py"],
        cwd=root, check=True, capture_output=True,
    )
    subprocess.run([sys.executable, "-m", "coverage", "json", "-o", "coverage.json"], cwd=root, check=True,
                   capture_output=True)
    analysis = python_gaps(root)
    by_function = {(g.file, g.function): g for g in analysis.gaps}
    reasons = {g.ranked_last for g in analysis.gaps}
    assert {
        "__main__ block",
        "pragma: no cover",
        "abstract method",
        "NotImplementedError stub",
        "vendored or third-party copy",
        "test file",
    } <= reasons
    order = [g.ranked_last is not None for g in analysis.gaps]
    assert order == sorted(order)  # every ranked-last gap after every other
    api, helper = by_function[("pkg/core.py", "api")], by_function[("pkg/core.py", "_helper")]
    assert api.ranked_last is None and helper.ranked_last is None
    assert (api.factors.public, api.factors.call_sites) == (True, 4)  # three in use.py, one in __main__
    assert (helper.factors.public, helper.factors.call_sites) == (False, 1)
    assert analysis.gaps.index(api) < analysis.gaps.index(helper)
    assert api.score["api"] == 1.0 and helper.score["api"] == 0.0
    assert all(g.severity == "low" for g in analysis.gaps if g.ranked_last)
