"""System components the tests start (PostgreSQL, Chromium, promtool, systemd-analyze): on a developer machine
without one, its tests skip; in CI (`CI` set, as .ci/run's caller does), which installs them all, they fail."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(component: str, package: str) -> NoReturn:
    """Skip the test for want of `component` — or, in CI, fail it: a skipped test there proves nothing."""
    message = f"{component} is not installed (Debian package {package})"
    if in_ci():
        pytest.fail(f"{message}; .ci/run installs it, so CI may not skip these tests")
    pytest.skip(message)
