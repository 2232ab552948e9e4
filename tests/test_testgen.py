"""qe_test_generate in process: modules generated for real code (a fixture package and standard-library
modules copied into the fixtures) that pytest collects, verification that agrees with an independent pytest
run, the kinds of tests derived from the source, learned patterns and their outcomes, and bad input."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
import pytest

from qe_appliance.config import TOOL_DEFAULTS, Config, ServerConfig
from qe_appliance.quality import junit
from qe_appliance.services import Services
from qe_appliance.store.patterns import PatternDraft
from qe_appliance.tools import testgen as testgen_tool
from qe_appliance.tools.base import Offload, ToolError, bare_context, in_thread
from qe_appliance.tools.testgen import TEST_GENERATE, TOOLS, target_job
from tests.fixtures.testgen.samples import MODULES
from tests.fixtures.testgen.samples import ROOT as FIXTURES

SPEC = TOOLS[0]


def make_services(tmp: Path, timeout_ms: int = 60_000) -> Services:
    tools = dict(TOOL_DEFAULTS)
    tools[TEST_GENERATE] = msgspec.structs.replace(tools[TEST_GENERATE], timeout_ms=timeout_ms)
    config = Config(
        server=ServerConfig(state_dir=str(tmp / "state"), workspace_roots=(str(FIXTURES),)), tools=tools
    )
    return Services(config)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    svc = make_services(tmp_path)
    yield svc
    svc.close()


def generate(services: Services, *, offload: Offload = in_thread, **arguments: Any) -> dict[str, Any]:
    """Call the tool as the dispatcher does; the result as the client sees it (camelCase JSON). These tests
    are of the static generator unless they ask for the observed one (tests/test_testgen_observed.py)."""
    arguments.setdefault("oracle", "static")
    args = msgspec.json.decode(msgspec.json.encode(arguments), type=SPEC.input_type)
    context = replace(bare_context(services, TEST_GENERATE), offload=offload)
    result = asyncio.run(SPEC.handler(context, args))
    return msgspec.json.decode(msgspec.json.encode(result))


def refused(services: Services, **arguments: Any) -> str:
    with pytest.raises(ToolError) as caught:
        generate(services, **arguments)
    return str(caught.value)


def run_pytest(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(FIXTURES), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-c",
        os.devnull,
        "--rootdir",
        str(directory),
    ]
    return subprocess.run(
        [*command, *args], cwd=directory, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def by_name(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {test["name"]: test for test in result["tests"]}


def test_every_fixture_module_gets_tests_pytest_collects_as_listed(
    services: Services, tmp_path: Path
) -> None:
    expected: set[str] = set()
    for index, module in enumerate(MODULES):
        for framework in ("pytest", "unittest"):
            result = generate(services, path=module, style="both", framework=framework)
            assert result["subject"]["module"] == module and result["tests"], module
            assert result["fileName"] == f"test_{module.rsplit('.', 1)[1]}.py"
            name = f"test_gen_{index}_{framework}.py"
            (tmp_path / name).write_text(result["module"])
            expected |= {f"{name}::{test['name']}" for test in result["tests"]}
    collected = run_pytest(tmp_path, "--collect-only", "-q")
    assert collected.returncode == 0, collected.stdout[-3000:]
    listed = {line for line in collected.stdout.splitlines() if "::" in line}
    assert listed == expected


@pytest.mark.parametrize(
    ("module", "style", "framework"),
    [("shopkit.textutil", "both", "pytest"), ("stdcopy.textwrap", "unit", "unittest")],
)
def test_verify_agrees_with_an_independent_pytest_run(
    services: Services, tmp_path: Path, module: str, style: str, framework: str
) -> None:
    result = generate(services, path=module, style=style, framework=framework, verify=True)
    verification = result["verification"]
    statuses = {test["name"]: test["status"] for test in result["tests"]}
    (tmp_path / "test_generated.py").write_text(result["module"])
    independent = run_pytest(tmp_path, "test_generated.py", "-q", "--junitxml=junit.xml")
    assert independent.returncode in (0, 1), independent.stdout[-3000:]
    counted = junit.parse((tmp_path / "junit.xml").read_bytes())
    assert counted.tests == len(result["tests"]) == len(statuses)
    assert (verification["passed"], verification["failed"] + verification["errors"]) == (
        counted.passed,
        counted.failures + counted.errors,
    )
    # Both runs name the same failures (junit lists the first 20).
    failed_here = {
        name.rsplit("::", 1)[-1] for name, status in statuses.items() if status in ("failed", "error")
    }
    assert {failure.name for failure in counted.failed} <= failed_here
    assert verification["status"] == ("passed" if counted.passed == counted.tests else "failed")
    for test in result["tests"]:
        if test["status"] != "passed":
            assert test["message"], test["name"]


def test_the_passing_module_keeps_exactly_the_tests_that_passed(services: Services, tmp_path: Path) -> None:
    result = generate(services, path="stdcopy.textwrap", verify=True)
    verification = result["verification"]
    assert 0 < verification["passed"] < len(result["tests"])  # textwrap has tests that fail
    (tmp_path / "test_passing.py").write_text(verification["passingModule"])
    again = run_pytest(tmp_path, "test_passing.py", "-q")
    assert again.returncode == 0, again.stdout[-3000:]
    assert f"{verification['passed']} passed" in again.stdout


def test_boundary_values_and_raises_come_from_the_conditions_in_the_code(services: Services) -> None:
    result = generate(services, path="shopkit.pricing", targets=["apply_discount", "split_bill"])
    module = result["module"]
    tests = by_name(result)
    # `if percent < 0 or percent > MAX_DISCOUNT_PERCENT (90)`: the values either side of both limits.
    raises = {name for name, test in tests.items() if test["kind"] == "raises"}
    assert {
        "test_apply_discount_percent_minus_1_0_raises",
        "test_apply_discount_percent_91_0_raises",
    } <= raises
    assert {"test_apply_discount_percent_89_0", "test_apply_discount_percent_90_0"} <= tests.keys()
    assert "with pytest.raises(pricing.PricingError, match='^discount'):" in module
    assert "pricing.apply_discount(1.5, percent=91.0)" in module
    source = (FIXTURES / "shopkit" / "pricing.py").read_text().splitlines()
    line = next(i for i, text in enumerate(source, 1) if 'raise PricingError(f"discount' in text)
    assert f"line {line}" in tests["test_apply_discount_percent_91_0_raises"]["rationale"]
    assert "with pytest.raises(ValueError, match='at least one person pays'):" in module
    # The declared result type is checked.
    assert "assert all(isinstance(item, int) for item in result)" in module


def test_docstring_examples_become_asserts(services: Services) -> None:
    module = generate(services, path="shopkit.textutil")["module"]
    assert "assert textutil.parse_duration('1h 30m') == 5400" in module
    assert "with pytest.raises(ValueError, match=\"no duration in 'soon'\"):" in module
    # Printed output is captured and compared.
    assert "with contextlib.redirect_stdout(buffer):" in module
    assert "assert buffer.getvalue() == '59s\\n1h\\n'" in module
    pricing = generate(services, path="shopkit.pricing", targets=["split_bill"])["module"]
    assert "assert pricing.split_bill(1000, 3) == [334, 333, 333]" in pricing


def test_docstring_examples_keep_the_effects_of_earlier_lines(services: Services) -> None:
    source = (
        "def counter(start: int = 0):\n"
        '    """\n'
        "    >>> it = counter(5)\n"
        "    >>> next(it)\n"
        "    5\n"
        "    >>> next(it)\n"
        "    6\n"
        '    """\n'
        "    while True:\n"
        "        yield start\n"
        "        start += 1\n"
    )
    result = generate(services, source=source, verify=True)
    doctests = [t for t in result["tests"] if t["kind"] == "doctest"]
    assert len(doctests) == 2 and all(t["status"] == "passed" for t in doctests)
    # The second check runs after the first next(it), as in the docstring.
    assert "    next(it)\n    assert next(it) == 6" in result["module"]


def test_property_tests_follow_the_ghostwriter_rules(services: Services) -> None:
    pricing = generate(services, path="shopkit.pricing", style="property")
    kinds = {(test["target"], test["kind"]) for test in pricing["tests"]}
    assert {
        ("to_cents", "roundtrip"),
        ("encode_order_id", "roundtrip"),
        ("normalize_sku", "idempotent"),
    } <= kinds
    assert {test["kind"] for test in pricing["tests"]} <= {
        "property",
        "roundtrip",
        "idempotent",
        "equivalence",
    }
    module = pricing["module"]
    assert "decoded = pricing.decode_order_id(encoded)" in module
    # The raise conditions of the code become assumptions.
    assert "assume(not (quantity <= 0))" in module
    # A parameter the code only accepts from a fixed collection is drawn from it.
    assert "@given(currency=st.sampled_from(['EUR', 'USD', 'GBP']))" in module
    textutil = generate(services, path="shopkit.textutil", style="property")
    kinds = {(test["target"], test["kind"]) for test in textutil["tests"]}
    assert {("word_count", "equivalence"), ("camel_to_snake", "roundtrip")} <= kinds
    assert "actual = textutil.word_count_fast(text)" in textutil["module"]


def test_every_kind_of_annotation_gives_values_and_strategies_that_run(services: Services) -> None:
    result = generate(services, path="shopkit.kinds", style="both", verify=True)
    assert result["verification"]["status"] == "passed", [
        t for t in result["tests"] if t["status"] != "passed"
    ]
    module = result["module"]
    for written in (
        "kinds.describe(value=-1)",  # Optional[int]: None is its default
        "kinds.describe(tag=b'abc')",  # Union[str, bytes]
        "kinds.describe(mode='b')",  # Literal
        "@given(pair=st.tuples(st.integers(min_value=-1000, max_value=1000), st.integers(",
        "kinds.pair_sum((1, 1), more=(1.5, 0.0, -1.5))",  # tuple[float, ...]
        "st.sets(st.text(max_size=20), max_size=5)",
        "st.dictionaries(st.text(max_size=20), st.floats(min_value=-1e6, max_value=1e6), max_size=5)",
        "kinds.days_between(datetime.date(2024, 2, 29), datetime.date(2024, 2, 29))",
        "st.datetimes()",
        "kinds.suffix(pathlib.Path('example.txt'))",
        "kinds.scaled(decimal.Decimal('1.5'), fractions.Fraction(1, 2))",
        "kinds.norm(kinds.Point(1, 1))",
        "st.builds(kinds.Point, x=st.integers(min_value=-1000, max_value=1000)",
        "result = asyncio.run(kinds.later(1))",
        "result = list(itertools.islice(kinds.countdown(1), 100))",
    ):
        assert written in module, written
    # unique() returns an int, so unique(unique(x)) is no property even though its name says so.
    assert "test_unique_idempotent" not in module


def test_unittest_modules_use_testcase_assertions(services: Services) -> None:
    result = generate(
        services, path="shopkit.pricing", framework="unittest", targets=["apply_discount", "Cart"]
    )
    module = result["module"]
    assert "import unittest" in module and "import pytest" not in module
    assert "class TestApplyDiscount(unittest.TestCase):" in module
    assert "with self.assertRaisesRegex(pricing.PricingError, '^discount'):" in module
    assert "self.assertIsInstance(result, (int, float))" in module
    assert module.rstrip().endswith("unittest.main()")
    names = {test["name"] for test in result["tests"]}
    assert "TestCart::test_add_smoke" in names and "TestApplyDiscount::test_smoke" in names


def test_max_tests_takes_the_targets_in_turns(services: Services) -> None:
    everything = generate(services, path="shopkit.pricing")
    cut = generate(services, path="shopkit.pricing", maxTests=12)
    assert len(cut["tests"]) == 12 and cut["testsGenerated"] == len(everything["tests"]) > 12
    assert len({test["target"] for test in cut["tests"]}) == 12
    assert sum(target["tests"] for target in cut["targets"]) == 12


def test_learned_patterns_are_applied_and_their_outcomes_recorded(services: Services) -> None:
    store, rules = services.patterns, services.config.learning

    def teach(text: str, pattern_type: str, domain: str = "pricing") -> str:
        draft = PatternDraft(text, pattern_type, domain, "python", 0.8, framework="pytest")
        return store.learn(draft, rules).pattern.id

    deterministic = teach("first = $call\nassert $call == first", "test-template")
    wrong = teach("assert $call is None", "test-template")
    negative_zero = teach("-0.0", "edge-case")
    elsewhere = teach("assert $call == $call", "test-template", domain="auth")
    unfit = teach("assert isinstance($call, $returns)", "test-template", domain="textutil")

    plain = generate(services, path="shopkit.pricing", targets=["net_price", "clamp"])
    used = {use["id"]: use for use in plain["patterns"]}
    assert set(used) == {deterministic, wrong, negative_zero}
    assert all(use["outcome"] is None for use in used.values())
    assert store.get(deterministic).usage_count == 0  # nothing is recorded without verify
    assert "first = pricing.net_price(1.5, 1)" in plain["module"]
    assert "pricing.clamp(-0.0)" in plain["module"]

    verified = generate(services, path="shopkit.pricing", targets=["net_price", "clamp"], verify=True)
    outcomes = {use["id"]: use["outcome"] for use in verified["patterns"]}
    assert outcomes == {deterministic: "success", wrong: "failure", negative_zero: "success"}
    for pattern_id, successes in ((deterministic, 1), (wrong, 0), (negative_zero, 1)):
        pattern = store.get(pattern_id)
        assert (pattern.usage_count, pattern.success_count) == (1, successes)
    assert store.get(elsewhere).usage_count == 0
    # A template whose placeholders a target cannot fill is not applied; textutil's functions are annotated.
    text = generate(services, path="shopkit.textutil", targets=["word_count"])
    assert unfit not in {use["id"] for use in text["patterns"]}


def test_a_failing_job_reaches_the_caller_as_its_own_error(services: Services) -> None:
    async def offload(fn: Any, payload: Any) -> Any:
        if fn is target_job.remote:
            raise ToolError("fleet saturated: 2 in flight of 2; retry later")
        return fn(payload)

    assert refused(services, offload=offload, path="shopkit.textutil") == (
        "fleet saturated: 2 in flight of 2; retry later"
    )


def test_a_generator_fault_on_one_target_leaves_the_others(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = testgen_tool.target_tests

    def flaky(facts: Any, target: Any, style: Any, patterns: Any) -> Any:
        if target.name == "slugify":
            raise RuntimeError("boom")
        return real(facts, target, style, patterns)

    monkeypatch.setattr(testgen_tool, "target_tests", flaky)
    result = generate(services, path="shopkit.textutil")
    assert (
        "slugify: no tests: the generator failed (RuntimeError: boom); please report this" in result["notes"]
    )
    assert {t["target"] for t in result["tests"]} >= {"excerpt", "parse_duration"}
    assert "slugify" not in {t["target"] for t in result["tests"]}


def test_bad_input_is_an_error_that_says_what_to_fix(services: Services) -> None:
    syntax = refused(services, source="def f(x:\n    return x\n")
    assert "does not parse" in syntax and "line 1, column 6" in syntax
    assert "nothing public to test" in refused(services, source="def _helper(x: int) -> int:\n    return x\n")
    assert "outside the workspace roots" in refused(services, path="/etc/passwd")
    assert "did you mean apply_discount" in refused(
        services, path="shopkit.pricing", targets=["apply_discont"]
    )
    assert "exactly one of source or path" in refused(services, source="x = 1", path="shopkit.pricing")
    assert "not an importable module name" in refused(services, source="def f(): pass", module="my-module")
    assert "no module shopkit.nothing" in refused(services, path="shopkit.nothing")


def test_a_module_that_cannot_be_imported_reports_its_import_error(services: Services) -> None:
    source = "import not_a_real_module_xyz\n\n\ndef f(x: int) -> int:\n    return x\n"
    message = refused(services, source=source, verify=True)
    assert "cannot import module_under_test" in message
    assert "ModuleNotFoundError: No module named 'not_a_real_module_xyz'" in message
    assert "module_under_test.py, line 1" in message and "Traceback" not in message
    # Without verify nothing is imported: the module is still generated.
    assert generate(services, source=source)["tests"]


HANGS = """
def spin(n: int) -> int:
    while n < 0:
        pass
    return n
"""


def test_a_test_that_hangs_is_stopped_and_the_run_keeps_its_deadline(tmp_path: Path) -> None:
    # timeoutMs 3000: the run gets 2 s and each test 2/3 s; every spin function hangs for n = -1.
    source = "\n".join(HANGS.replace("spin", f"spin{i}") for i in range(5))
    services = make_services(tmp_path, timeout_ms=3000)
    try:
        started = time.monotonic()
        result = generate(services, source=source, verify=True)
        elapsed = time.monotonic() - started
    finally:
        services.close()
    assert elapsed < 3.5
    tests = by_name(result)
    first_hang = tests["test_spin0_n_minus_1"]
    assert first_hang["status"] == "failed" and "longer than 0.667 s" in first_hang["message"]
    assert tests["test_spin0_smoke"]["status"] == "passed"
    assert result["verification"]["status"] == "timed-out"
    assert tests["test_spin4_smoke"]["status"] == "not-run"
    assert result["verification"]["notRun"] >= 1


def test_generated_names_are_unique_and_lines_point_at_the_definitions(services: Services) -> None:
    result = generate(services, path="stdcopy.statistics", style="both")
    lines = result["module"].splitlines()
    names = [test["name"] for test in result["tests"]]
    assert len(names) == len(set(names))
    for test in result["tests"]:
        function = test["name"].rsplit("::", 1)[-1]
        assert re.match(rf"\s*(@settings|def {function}\()", lines[test["line"] - 1]), test["name"]
