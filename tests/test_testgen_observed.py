"""qe_test_generate with observed oracles: calls run in a child process, the tests assert what they did, and
what is returned passes on the code it came from — checked by an independent pytest run on each module."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from qe_appliance.app import Services
from qe_appliance.config import TOOL_DEFAULTS, Config, ServerConfig
from qe_appliance.tools.base import ToolError, bare_context
from qe_appliance.tools.testgen import TEST_GENERATE, TOOLS

SPEC = TOOLS[0]
BUDGET = 3.0

# A package that re-exports a function under its submodule's name (`from .camel import camel`), so
# `from shadow import camel` binds the function; with several things the oracles must get right.
CAMEL = '''
import itertools


class Tally:
    """No __eq__: two tallies are never equal, so tests must look at its fields."""

    def __init__(self, start: int = 0) -> None:
        self.count = start

    def add(self, items: list) -> int:
        for item in items:
            self.count += 1 if item else 0
        items.clear()
        return self.count


def camel(text: str, upper: bool = True) -> str:
    """
    >>> camel("hello_world")
    'HelloWorld'
    """
    if upper:
        return text[0].upper() + text[1:].title().replace("_", "")
    parts = text.split("_")
    return parts[0] + "".join(p.title() for p in parts[1:])


def ratio(a: float, b: float) -> float:
    if b == 0:
        raise ZeroDivisionError(f"cannot divide {a} by zero")
    return a / b / 3


def chained(first: list, second: list):
    return itertools.chain(first, second)
'''


def make_services(tmp: Path, allow: bool = True) -> Services:
    config = Config(
        server=ServerConfig(
            state_dir=str(tmp / "state"), workspace_roots=(str(tmp / "work"),), allow_code_execution=allow
        ),
        tools=dict(TOOL_DEFAULTS),
    )
    return Services(config)


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Path]:
    package = tmp_path / "work" / "shadow"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("from .camel import camel\n")
    (package / "camel.py").write_text(CAMEL)
    yield tmp_path


def generate(services: Services, **arguments: Any) -> dict[str, Any]:
    args = msgspec.json.decode(msgspec.json.encode(arguments), type=SPEC.input_type)
    result = asyncio.run(SPEC.handler(bare_context(services, TEST_GENERATE), args))
    return msgspec.json.decode(msgspec.json.encode(result))


def run_pytest(module: str, directory: Path, import_root: Path) -> subprocess.CompletedProcess[str]:
    (directory / "test_generated.py").write_text(module)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", "/dev/null",
         "--rootdir", str(directory), "test_generated.py"],
        cwd=directory,
        env={"PYTHONPATH": str(import_root), "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_observed_tests_pass_on_a_shadowing_package_and_check_values(workspace: Path, tmp_path: Path) -> None:
    services = make_services(workspace)
    try:
        result = generate(services, path="shadow/camel.py", budgetSeconds=BUDGET)
        again = generate(services, path="shadow/camel.py", budgetSeconds=BUDGET)
    finally:
        services.close()
    module = result["module"]
    assert result["oracle"] == "observed"
    # The submodule by its full name, not whatever the package exports under that name.
    assert "camel = importlib.import_module('shadow.camel')" in module
    run = run_pytest(module, tmp_path, workspace / "work")
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{len(result['tests'])} passed" in run.stdout
    # Values, not just calls: returns, exceptions with their messages, approximate floats, drained
    # iterators, what a call did to its argument and to the instance.
    assert "assert result == 'helloWorld'" in module
    assert "pytest.raises(ZeroDivisionError, match=" in module
    assert "pytest.approx(" in module
    assert "list(itertools.islice(result, 100)) ==" in module
    assert "assert items == []" in module and "assert instance.count ==" in module
    # A Tally defines no __eq__: its fields are compared, never the object.
    assert "assert result == camel.Tally" not in module and "result.count ==" in module
    measured = result["measured"]
    assert measured["after"]["linesCovered"] == measured["after"]["lines"]
    assert measured["after"]["branchesCovered"] > measured["before"]["branchesCovered"]
    assert measured["mutants"]["killed"] > 0.7 * measured["mutants"]["evaluated"]
    # Same input, same module.
    assert again["module"] == module


def test_inline_source_is_observed_too(tmp_path: Path, workspace: Path) -> None:
    services = make_services(workspace)
    try:
        result = generate(services, source=CAMEL, module="shop.camel", budgetSeconds=BUDGET)
    finally:
        services.close()
    src = tmp_path / "inline"
    (src / "shop").mkdir(parents=True)
    (src / "shop" / "__init__.py").write_text("")
    (src / "shop" / "camel.py").write_text(CAMEL)
    run = run_pytest(result["module"], tmp_path, src)
    assert run.returncode == 0, run.stdout + run.stderr


def test_without_code_execution_the_tests_are_static_and_say_so(workspace: Path) -> None:
    services = make_services(workspace, allow=False)
    try:
        result = generate(services, path="shadow/camel.py")
        with pytest.raises(ToolError, match="oracle: static"):
            generate(services, path="shadow/camel.py", oracle="observed")
    finally:
        services.close()
    assert result["oracle"] == "static" and result["measured"] is None
    assert "allowCodeExecution: false" in result["notes"][0]


def test_a_module_whose_every_test_fails_says_why(workspace: Path, tmp_path: Path) -> None:
    # The answer depends on a counter each call moves on: nothing observed holds the second time.
    source = "import itertools\n_TICKS = itertools.count()\n\n\ndef tick() -> int:\n    return next(_TICKS)\n"
    services = make_services(workspace)
    try:
        result = generate(services, source=source, budgetSeconds=BUDGET)
    finally:
        services.close()
    assert "assert result ==" not in result["module"]
    run = run_pytest(result["module"], tmp_path, _inline(tmp_path, source))
    assert run.returncode in (0, 5), run.stdout + run.stderr


def _inline(tmp_path: Path, source: str) -> Path:
    root = tmp_path / "tick"
    root.mkdir()
    (root / "module_under_test.py").write_text(source)
    return root


def test_a_coverage_report_aims_generation_at_its_gaps(workspace: Path) -> None:
    work = workspace / "work"
    (work / "drive.py").write_text("from shadow import camel\n\ncamel('ab')\n")
    subprocess.run(
        [sys.executable, "-m", "coverage", "run", "--branch", "--include=shadow/*", "drive.py"],
        cwd=work, check=True, capture_output=True,
    )
    subprocess.run([sys.executable, "-m", "coverage", "json", "-o", "coverage.json"], cwd=work, check=True,
                   capture_output=True)
    services = make_services(workspace)
    try:
        aimed = generate(services, path="shadow/camel.py", coverageReport="coverage.json", budgetSeconds=BUDGET)
        plain = generate(services, path="shadow/camel.py", budgetSeconds=BUDGET)
        with pytest.raises(ToolError, match="give the file as path"):
            generate(services, source=CAMEL, coverageReport="coverage.json")
    finally:
        services.close()
    before, after = aimed["measured"]["before"], aimed["measured"]["after"]
    # Before: what the report says of the file (the import and one call of camel).
    assert before["linesCovered"] < before["lines"] and before["branchesCovered"] < before["branches"]
    assert after["linesCovered"] == after["lines"] and after["branchesCovered"] > before["branchesCovered"]
    # What the report already covers needs no new test: camel's typical call is not repeated.
    assert "test_camel_typical" in {t["name"] for t in plain["tests"]}
    assert "test_camel_typical" not in {t["name"] for t in aimed["tests"]}
