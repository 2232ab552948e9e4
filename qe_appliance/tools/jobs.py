"""A tool's heavy step, declared once: `@fleet_job def step(work: In) -> Out`, In and Out msgspec Structs.

The step is registered as a `@compute` function (agents run only registered functions, looked up by name),
travels as msgpack both ways, and runs where the tool's `execution` says: on an agent of the fleet or in a
worker thread (`await step.run(ctx, work)`). An InputError it raises (a bad path, report or source file)
reaches the caller as a ToolError and is not held against the agent that ran it.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

import msgspec

from qe_appliance.fleet.compute import compute
from qe_appliance.tools.base import ToolContext, ToolError
from qe_appliance.workspace import InputError

In = TypeVar("In")
Out = TypeVar("Out")

_encoder = msgspec.msgpack.Encoder()


@contextmanager
def user_errors() -> Iterator[None]:
    """An InputError becomes a ToolError: an isError result that tells the caller what to fix."""
    try:
        yield
    except InputError as exc:
        raise ToolError(str(exc)) from None


class FleetJob(Generic[In, Out]):
    def __init__(self, fn: Callable[[In], Out]) -> None:
        hints = typing.get_type_hints(fn)
        (argument,) = (name for name in hints if name != "return")
        self.fn = fn
        self._work = msgspec.msgpack.Decoder(hints[argument])
        self._result: msgspec.msgpack.Decoder[Out] = msgspec.msgpack.Decoder(hints["return"])

        @functools.wraps(fn)
        def on_agent(payload: bytes) -> bytes:
            with user_errors():
                return _encoder.encode(fn(self._work.decode(payload)))

        # What crosses to the agent: bytes in, bytes out, registered under the step's own name.
        self.remote: Callable[[bytes], bytes] = compute(on_agent)

    def __call__(self, work: In) -> Out:
        """Run here, now (tests and callers already off the event loop)."""
        return self.fn(work)

    async def run(self, ctx: ToolContext, work: In) -> Out:
        raw: Any = await ctx.compute(self.remote, _encoder.encode(work))
        return self._result.decode(raw)


def fleet_job(fn: Callable[[In], Out]) -> FleetJob[In, Out]:
    return FleetJob(fn)
