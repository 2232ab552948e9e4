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


@compute
def misframe(kind: str) -> None:
    """Makes this agent's reply to this call break the protocol: `id` answers for another call, `size`
    announces a frame over the limit (what a faulty or subverted agent might send)."""
    from qe_appliance.fleet import rpc

    original = rpc.frame

    def wrong(message: Any) -> bytes:
        rpc.frame = original  # this reply only
        if kind == "id":
            message.id += 1000
            return original(message)
        return rpc.HEADER.pack(rpc.MAX_FRAME + 1) + b"\0" * 64

    rpc.frame = wrong  # type: ignore[assignment]
