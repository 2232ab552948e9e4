"""Compute functions the fleet tests run on real agents (loaded through fleet.preload)."""

from __future__ import annotations

import os
import time
from typing import Any

from qe_appliance.fleet.compute import compute
from qe_appliance.tools.base import ToolError


@compute
def echo(payload: Any) -> dict[str, Any]:
    return {"payload": payload, "pid": os.getpid()}


@compute
def hold(seconds: float) -> int:
    """Keeps the agent busy (or, with a long time, hung)."""
    time.sleep(seconds)
    return os.getpid()


@compute
def burn(n: int) -> int:
    """CPU-bound work: sums squares."""
    return sum(i * i for i in range(n))


@compute
def refuse(reason: str) -> None:
    raise ToolError(f"bad input: {reason}")


@compute
def crash(_: Any) -> None:
    raise RuntimeError("the agent hit a bug")
