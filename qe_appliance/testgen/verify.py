"""Verification: the generated module run by pytest in a sandboxed subprocess (qe_appliance.sandbox), in
a temporary directory, with the module under test importable, a time limit per test and a deadline for the
whole run; a cancelled call kills the run."""

from __future__ import annotations

import math
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Final, Literal

import msgspec

from qe_appliance.sandbox import Cancelled, Limits, run_sandboxed
from qe_appliance.workspace import InputError

Status = Literal["passed", "failed", "error", "skipped", "not-run"]

TEST_FILE: Final = "test_aqe_generated.py"
# Copied in as the run's conftest.py; read as a file, so the server never imports pytest.
PLUGIN: Final = Path(__file__).with_name("pytest_plugin.py")
# A single generated test has no business running longer than this, deadline permitting.
MAX_TEST_SECONDS: Final = 10.0
OUTPUT_TAIL_CHARS: Final = 2000
# Exit codes: pytest's own (0 all passed, 1 some failed, 5 none collected), and the plugin's.
_CLEAN_EXITS: Final = frozenset({0, 1, 5})


class ImportFailed(InputError):
    """The module under test cannot be imported; the message is its import error."""


class TestOutcome(msgspec.Struct):
    __test__ = False  # not a pytest test class

    status: Status
    message: str | None = None


class RunResult(msgspec.Struct):
    """What a verification run found: each test's outcome by its pytest name (`test_x`, `TestX::test_y`)."""

    outcomes: dict[str, TestOutcome]
    seconds: float
    timed_out: bool
    problems: list[str] = msgspec.field(default_factory=list)


class RunSpec(msgspec.Struct, frozen=True):
    """Where the module under test comes from: `import_root` (a directory on the import path) or its
    `source` text, written into the run's directory as `module`."""

    module: str
    import_root: str | None
    source: str | None
    seconds: float


def run(test_text: str, names: list[str], spec: RunSpec) -> RunResult:
    """Run the generated tests; ImportFailed when the module under test cannot be imported."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="aqe-testgen-") as tmp:
        work = Path(tmp)
        paths = _lay_out(work, test_text, spec)
        results = work / "results.jsonl"
        output = work / "pytest.out"
        env = {
            key: value for key, value in os.environ.items() if key not in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS")
        }
        inherited = [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []
        env.update(
            PYTHONPATH=os.pathsep.join(paths + inherited),
            PYTHONDONTWRITEBYTECODE="1",  # leave no __pycache__ in the user's source tree
            PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
            AQE_TESTGEN_SUBJECT=spec.module,
            AQE_TESTGEN_RESULTS=str(results),
            AQE_TESTGEN_TEST_SECONDS=f"{min(MAX_TEST_SECONDS, max(spec.seconds / 3, 0.5)):.3f}",
            AQE_TESTGEN_SECONDS=f"{spec.seconds:.3f}",
        )
        command = [
            sys.executable,
            "-m",
            "pytest",
            TEST_FILE,
            "-q",
            "-p",
            "no:cacheprovider",
            "-c",
            "pytest.ini",
            "--rootdir",
            str(work),
            "-o",
            "console_output_style=classic",
        ]
        ran = run_sandboxed(
            command,
            work,
            env=env,
            timeout_s=spec.seconds + 1.0,  # the plugin's own deadline normally ends it first
            limits=Limits(cpu_seconds=math.ceil(spec.seconds) + 1),
            output=output,
        )
        if ran.cancelled:
            raise Cancelled("the verification run was cancelled")
        records = _records(results)
        outcome = _collect(records, names)
        outcome.seconds = time.monotonic() - started
        outcome.timed_out = (
            ran.timed_out
            or ran.returncode in (124, -signal.SIGXCPU)
            or any(r.get("event") == "deadline" for r in records)
        )
        if not outcome.timed_out and ran.returncode not in _CLEAN_EXITS and not outcome.problems:
            tail = output.read_text(errors="replace")[-OUTPUT_TAIL_CHARS:].strip()
            outcome.problems.append(f"pytest exited with code {ran.returncode}: {tail}")
        return outcome


def _lay_out(work: Path, test_text: str, spec: RunSpec) -> list[str]:
    """Write the test module, the plugin (as conftest.py) and an empty pytest.ini (so no configuration of
    the user's is picked up); returns the import path for the run."""
    (work / TEST_FILE).write_text(test_text, encoding="utf-8")
    (work / "conftest.py").write_text(PLUGIN.read_text(encoding="utf-8"), encoding="utf-8")
    (work / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    if spec.source is None:
        assert spec.import_root is not None
        return [spec.import_root]
    source_root = work / "src"
    *packages, last = spec.module.split(".")
    directory = source_root
    for package in packages:
        directory = directory / package
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "__init__.py").touch()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{last}.py").write_text(spec.source, encoding="utf-8")
    return [str(source_root)]


def _records(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    found = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = msgspec.json.decode(line)
        except msgspec.DecodeError:
            continue  # a line cut short by a kill
        if isinstance(record, dict):
            found.append(record)
    return found


def _collect(records: list[dict[str, object]], names: list[str]) -> RunResult:
    outcomes: dict[str, TestOutcome] = {}
    problems: list[str] = []
    running: str | None = None
    for record in records:
        event = record.get("event")
        message = record.get("message")
        text = message if isinstance(message, str) else None
        if event == "import-error":
            raise ImportFailed(text or "the module could not be imported")
        if event == "collect-error":
            problems.append(f"collecting the tests failed: {text}")
        elif event == "start":
            running = _name(record.get("nodeid"))
        elif event == "test":
            name = _name(record.get("nodeid"))
            status = record.get("outcome")
            if name is not None and status in ("passed", "failed", "error", "skipped"):
                outcomes[name] = TestOutcome(status, text)
            running = None
    if running is not None and running not in outcomes:
        outcomes[running] = TestOutcome("error", "the run's deadline passed while this test ran")
    for name in names:
        if name not in outcomes:
            why = problems[0] if problems else "not run: the run ended first"
            outcomes[name] = TestOutcome("error" if problems else "not-run", why)
    return RunResult(outcomes, 0.0, False, problems)


def _name(nodeid: object) -> str | None:
    """`test_aqe_generated.py::TestX::test_y` -> `TestX::test_y`."""
    if not isinstance(nodeid, str) or "::" not in nodeid:
        return None
    return nodeid.split("::", 1)[1]
