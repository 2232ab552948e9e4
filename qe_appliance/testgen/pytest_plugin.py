"""The conftest of a verification run (copied beside the generated tests; standard library and pytest only).

It imports the module under test before collection, so a module that cannot be imported is reported as
such; stops any test that runs longer than its time limit; writes each test's outcome as it finishes, one
JSON object a line, so a run cut short still tells what it ran; and ends the run at its deadline, or when
the process that started it is gone.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import threading
import time
import traceback
from collections.abc import Generator
from types import FrameType
from typing import Any

import pytest

SUBJECT = os.environ.get("AQE_TESTGEN_SUBJECT", "")
RESULTS = os.environ.get("AQE_TESTGEN_RESULTS", "")
TEST_SECONDS = float(os.environ.get("AQE_TESTGEN_TEST_SECONDS", "10"))
DEADLINE = time.monotonic() + float(os.environ.get("AQE_TESTGEN_SECONDS", "60"))
MESSAGE_CHARS = 600

_lock = threading.Lock()
_phases: dict[str, dict[str, Any]] = {}


class TimeLimitExceeded(BaseException):
    """Raised into a test that runs too long. A BaseException, so that neither the code under test nor
    hypothesis mistakes it for an ordinary failure to retry or shrink."""


def _write(record: dict[str, Any]) -> None:
    with _lock, open(RESULTS, "a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")


def _watch(parent: int) -> None:
    while time.monotonic() < DEADLINE:
        if os.getppid() != parent:
            # The agent is gone (PR_SET_PDEATHSIG normally ends us first): take the whole run with us.
            os.killpg(0, signal.SIGKILL)
        time.sleep(0.1)
    _write({"event": "deadline"})
    os._exit(124)


def pytest_configure(config: pytest.Config) -> None:
    threading.Thread(target=_watch, args=(os.getppid(),), daemon=True).start()


def pytest_sessionstart(session: pytest.Session) -> None:
    try:
        importlib.import_module(SUBJECT)
    except BaseException as exc:  # whatever the module's import raises is the user's to see
        if isinstance(exc, KeyboardInterrupt):
            raise
        _write({"event": "import-error", "message": _import_error(exc)})
        pytest.exit(f"cannot import {SUBJECT}", returncode=3)


def _import_error(exc: BaseException) -> str:
    """`Type: message (file, line N)`, with the location inside the module's own code."""
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    if isinstance(exc, SyntaxError):
        return " ".join(text.split())
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<frozen")]
    own = [f for f in frames if os.path.abspath(f.filename) != os.path.abspath(__file__)]
    if own:
        text += f" ({own[-1].filename}, line {own[-1].lineno})"
    return text


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _write({"event": "collect-error", "message": _message(report)})


def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    _write({"event": "start", "nodeid": nodeid})


def _expire(signum: int, frame: FrameType | None) -> None:
    raise TimeLimitExceeded(f"the test ran longer than {TEST_SECONDS:g} s and was stopped")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    timed = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if timed:
        previous = signal.signal(signal.SIGALRM, _expire)
        signal.setitimer(signal.ITIMER_REAL, TEST_SECONDS)
    try:
        yield
    finally:
        if timed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    phases = _phases.setdefault(report.nodeid, {})
    phases[report.when] = report
    if report.when != "teardown":
        return
    del _phases[report.nodeid]
    setup, call = phases.get("setup"), phases.get("call")
    if setup is not None and setup.failed:
        outcome, source = "error", setup
    elif setup is not None and setup.skipped:
        outcome, source = "skipped", setup
    elif call is not None and call.failed:
        outcome, source = "failed", call
    elif call is not None and call.skipped:
        outcome, source = "skipped", call
    elif report.failed:
        outcome, source = "error", report
    else:
        outcome, source = "passed", None
    message = _message(source) if source is not None else None
    _write({"event": "test", "nodeid": report.nodeid, "outcome": outcome, "message": message})


def _message(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The failure's last line (`AssertionError: assert 3 == 4`) and hypothesis's falsifying example."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # a skip: (file, line, reason)
        return str(longrepr[2])
    crash = getattr(longrepr, "reprcrash", None)
    text = str(getattr(crash, "message", "") or "").strip()
    full = report.longreprtext
    if not text:
        errors = [line[1:].strip() for line in full.splitlines() if line.startswith("E ")]
        rest = full.strip().splitlines()
        text = "\n".join(errors[-3:]) if errors else rest[-1] if rest else ""
    example = max(full.find("Falsifying example:"), full.find("Failing test case:"))
    if example != -1:
        end = full.find("\n)", example)
        text += "\n" + full[example : end + 2 if end != -1 else example + 300].strip()
    return text[:MESSAGE_CHARS]
