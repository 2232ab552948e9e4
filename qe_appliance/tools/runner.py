"""One tool call, whoever asks for it (the MCP dispatcher, the orchestrator, later tasks and jobs).

The runner decodes the arguments into the tool's input Struct, runs its handler with a context whose heavy
steps go where the ToolSpec says (an agent of the fleet, or a worker thread), records the call's latency and
outcome, and turns every failure into a result of a known kind: `ok`, `caller-error` (invalid arguments, a
ToolError) or `server-error` (a timeout, a crashed agent, a bug). New ways of calling tools hook in here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import msgspec

from qe_appliance.fleet.compute import ComputeFn, name_of
from qe_appliance.mcp import jsonrpc as rpc
from qe_appliance.sandbox import IN_PROCESS, UNAUTHENTICATED_HTTP, Caller
from qe_appliance.services import Services
from qe_appliance.tools.base import (
    LogFn,
    ProgressFn,
    ToolContext,
    ToolError,
    ToolFault,
    ToolSpec,
    invalid_arguments,
    no_log,
    no_progress,
)

log = logging.getLogger("aqe_mcp.runner")

Outcome = Literal["ok", "caller-error", "server-error"]


class Recorder(Protocol):
    """Where calls are counted (the Monitor)."""

    def record_tool(self, tool: str, seconds: float, outcome: Outcome, mode: str = "") -> None: ...


@dataclass(slots=True)
class CallResult:
    """A finished call: its outcome, and the value as JSON (`ok`) or the message for the caller."""

    outcome: Outcome
    value: bytes | None = None
    message: str = ""
    # The tools.<name>.modes entry the arguments selected ("" for none): its latency has its own target.
    mode: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    def wire(self) -> dict[str, Any]:
        """The MCP CallToolResult: structured content plus the same JSON as text, or an isError text."""
        if self.value is None:
            return {"content": [{"type": "text", "text": self.message}], "isError": True}
        return {
            "content": [{"type": "text", "text": self.value.decode()}],
            "structuredContent": msgspec.Raw(self.value),
            "isError": False,
        }


class ToolRunner:
    def __init__(self, services: Services, recorder: Recorder | None = None) -> None:
        self.services = services
        self.recorder = recorder
        # Per tool name: the tool it was made for, its arguments' decoder and its offload (made by its first call;
        # a reload's new spec of the same name replaces them).
        self._bound: dict[str, tuple[ToolSpec, msgspec.json.Decoder[Any], Any]] = {}

    async def call(
        self,
        tool: ToolSpec,
        arguments: bytes | Any,
        *,
        progress: ProgressFn = no_progress,
        log: LogFn = no_log,
        caller: Caller = UNAUTHENTICATED_HTTP,
    ) -> CallResult:
        """Run `tool` on `arguments`: JSON bytes (from the wire) or decoded JSON values (already parsed)."""
        started = time.perf_counter()
        result = await self._call(tool, arguments, progress, log, caller)
        if self.recorder is not None:
            self.recorder.record_tool(tool.name, time.perf_counter() - started, result.outcome, result.mode)
        return result

    async def _call(
        self, tool: ToolSpec, arguments: bytes | Any, progress: ProgressFn, log_fn: LogFn, caller: Caller
    ) -> CallResult:
        bound = self._bound.get(tool.name)
        if bound is None or bound[0] is not tool:
            bound = self._bound[tool.name] = (tool, msgspec.json.Decoder(tool.input_type), self._offload(tool))
        try:
            if isinstance(arguments, bytes):
                args = bound[1].decode(arguments or b"{}")
            else:
                args = msgspec.convert({} if arguments is None else arguments, tool.input_type)
        except msgspec.ValidationError as exc:
            return CallResult("caller-error", message=invalid_arguments(tool.name, exc))
        except rpc.UNREADABLE as exc:
            reason = rpc.unreadable_reason(exc)
            return CallResult("caller-error", message=f"invalid arguments for {tool.name}: {reason}")
        ctx = ToolContext(self.services, progress, log_fn, tool.name, caller=caller, offload=bound[2])
        mode = self._mode(tool, args)
        try:
            value = await tool.handler(ctx, args)
        except ToolFault as exc:
            return CallResult("server-error", message=str(exc), mode=mode)
        except ToolError as exc:
            return CallResult("caller-error", message=str(exc), mode=mode)
        except Exception as exc:
            log.exception("tool %s failed", tool.name)
            return CallResult("server-error", message=f"{tool.name} failed: {type(exc).__name__}: {exc}", mode=mode)
        return CallResult("ok", rpc.encoder.encode(value), mode=mode)

    def context(self, tool: ToolSpec) -> ToolContext:
        """A context for work done on a tool's behalf outside a call (reading its resources): the tool's
        heavy steps go where its calls' go, with no progress or log channel."""
        offload = self._offload(tool)
        return ToolContext(self.services, no_progress, no_log, tool.name, caller=IN_PROCESS, offload=offload)

    def _mode(self, tool: ToolSpec, args: Any) -> str:
        """The tool's own choice among tools.<name>.modes, else the first mode whose boolean argument is true
        in `args`, else ""."""
        config = self.services.config.tools.get(tool.name)
        if config is not None and tool.latency_mode is not None:
            chosen = tool.latency_mode(args)
            return chosen if chosen in config.modes else ""
        if config is not None:
            for mode in config.modes:
                if getattr(args, mode, None) is True:
                    return mode
        return ""

    def _offload(self, tool: ToolSpec) -> Any:
        services = self.services

        async def offload(fn: ComputeFn, payload: Any) -> Any:
            fleet = services.fleet
            if tool.execution == "fleet" and fleet is not None and services.overrides.fleet_enabled:
                return await fleet.run(tool.category, name_of(fn), payload, tool.timeout_s, idempotent=tool.idempotent)
            try:
                return await asyncio.wait_for(asyncio.to_thread(fn, payload), tool.timeout_s)
            except TimeoutError:
                raise ToolFault(
                    f"{tool.name} did not finish within {tool.timeout_s:g} s (tools.{tool.name}.timeoutMs)"
                ) from None

        return offload

