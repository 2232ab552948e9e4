"""tools/call in MCP terms: resolve the name (typos included), check the argument headers, hand the call to the
runner with the caller's progress and log channels, make it cancellable on its session, and shape the result."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from qe_appliance import SERVER_NAME
from qe_appliance.mcp import jsonrpc as rpc
from qe_appliance.mcp.headers import HeaderParam, check_param_headers, header_params
from qe_appliance.mcp.inbound import Inbound, Send
from qe_appliance.mcp.jsonrpc import RpcError
from qe_appliance.mcp.sessions import LOG_LEVELS, Session
from qe_appliance.mcp.sizing import fits, links_supported, sized
from qe_appliance.mcp.tasks import ToolTasks, split_background, wants_task
from qe_appliance.monitoring.monitor import Monitor
from qe_appliance.registry import ToolRegistry, UnknownToolError
from qe_appliance.sandbox import STDIO, Caller
from qe_appliance.tools.base import ToolSpec, no_log, no_progress
from qe_appliance.tools.runner import CallResult, ToolRunner

REQUEST_CANCELLED = rpc.REQUEST_CANCELLED

_plain = msgspec.json.Decoder()


class CallParams(msgspec.Struct):
    name: Any = None
    arguments: msgspec.Raw = msgspec.Raw(b"")
    meta: Any = msgspec.field(default=None, name="_meta")
    # 2025-11-25 task augmentation: {"ttl": ms} asks for the call to run as a task.
    task: Any = None


MAX_CALLERS = 1024


class ToolCalls:
    """The tools/call method of both eras."""

    def __init__(self, registry: ToolRegistry, runner: ToolRunner, monitor: Monitor | None, tasks: ToolTasks) -> None:
        self.runner = runner
        self.tasks = tasks
        self.monitor = monitor
        self.registry = registry
        self._header_params: dict[str, tuple[HeaderParam, ...]] = {}
        # HTTP callers by (auth on, principal): a Caller is immutable, so each is made once.
        self._callers: dict[tuple[bool, str | None], Caller] = {}
        self.set_registry(registry)

    def set_registry(self, registry: ToolRegistry) -> None:
        self.registry = registry
        # Filled per tool by its first call (from its input schema, itself made on first use).
        self._header_params = {}

    def _params_of(self, tool: ToolSpec) -> tuple[HeaderParam, ...]:
        params = self._header_params.get(tool.name)
        if params is None:
            params = self._header_params[tool.name] = header_params(tool)
        return params

    async def call(
        self,
        modern: bool,
        params: CallParams,
        meta: dict[str, Any],
        exch: Inbound,
        log_level: int | None,
        session: Session | None,
        msg_id: Any,
    ) -> dict[str, Any]:
        name = params.name
        if not isinstance(name, str) or not name:
            raise RpcError(rpc.INVALID_PARAMS, "tools/call needs params.name (the tool's name, a string)")
        monitor = self.monitor
        started = time.perf_counter()
        try:
            tool, fuzzy = self.registry.resolve(name)
        except UnknownToolError as exc:
            raise RpcError(rpc.INVALID_PARAMS, str(exc), {"name": name, "suggestions": exc.suggestions}) from None
        if monitor is not None:
            monitor.record_lookup(time.perf_counter() - started)
        raw_args = bytes(params.arguments)
        if raw_args == b"null":
            raw_args = b""
        arguments: bytes | Any = raw_args
        if modern and exch.headers is not None and (params_of := self._params_of(tool)):
            # A client mirrors only the headers of tools it listed: a typo it sent has none to mirror.
            try:
                arguments = _plain.decode(raw_args or b"{}")
            except rpc.UNREADABLE:
                pass  # the runner reports unreadable arguments in the caller's terms
            else:
                check_param_headers(
                    params_of, arguments, exch.headers, exch.duplicated, absent_ok=fuzzy
                )
        try:
            arguments, background = split_background(tool, arguments)
        except ValueError as exc:
            return CallResult("caller-error", message=str(exc)).wire()
        if background or wants_task(tool, modern, params.task, meta, session):
            # Answered at once; the call runs in the background through the runner all the same.
            return await self.tasks.accept(
                tool, arguments, background, modern, params.task, exch, session, self._caller(exch)
            )
        token = meta.get("progressToken")
        send = exch.send
        progress = no_progress if token is None or send is None else _progress_fn(token, send)
        log_fn = no_log if log_level is None or send is None else _log_fn(log_level, send)
        call = self.runner.call(tool, arguments, progress=progress, log=log_fn, caller=self._caller(exch))
        if session is None:
            outcome = await call
        else:
            # A separate task so notifications/cancelled can stop this call and only this call.
            task = asyncio.ensure_future(call)
            session.inflight[msg_id] = task
            try:
                outcome = await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if task.cancelled() and not (current and current.cancelling()):
                    raise RpcError(REQUEST_CANCELLED, "request cancelled by the client") from None
                raise
            finally:
                session.inflight.pop(msg_id, None)
        exch.tool, exch.call = tool.name, outcome
        links = modern or session is None or links_supported(session.protocol_version)
        services = self.runner.services
        # Most results fit: their CallToolResult needs no awaiting.
        result = outcome.wire() if fits(services, outcome) else await sized(services, tool, outcome, links)
        if fuzzy:
            result.setdefault("_meta", {}).update({"io.aqe/requestedTool": name, "io.aqe/resolvedTool": tool.name})
        return result

    def _caller(self, exch: Inbound) -> Caller:
        """stdio has no headers; over HTTP a caller is authenticated when the server checks tokens (the
        HTTP guard refuses /mcp without a valid one)."""
        if exch.headers is None:
            return STDIO
        key = (self.runner.services.config.server.auth.enabled, exch.principal)
        caller = self._callers.get(key)
        if caller is None:
            if len(self._callers) >= MAX_CALLERS:
                self._callers.clear()  # principals are token digests: bounded by the tokens file, but stay safe
            caller = self._callers[key] = Caller("http", authenticated=key[0], principal=key[1])
        return caller


def _progress_fn(token: Any, send: Send) -> Callable[[float, float | None, str | None], Awaitable[None]]:
    last = [float("-inf")]

    async def progress(value: float, total: float | None = None, message: str | None = None) -> None:
        if value <= last[0]:
            return  # progress must increase; a repeat would confuse the client's bar
        last[0] = value
        params: dict[str, Any] = {"progressToken": token, "progress": value}
        if total is not None:
            params["total"] = total
        if message is not None:
            params["message"] = message
        await send(rpc.notification_bytes("notifications/progress", params))

    return progress


def _log_fn(level: int, send: Send) -> Callable[[str, str], Awaitable[None]]:
    async def emit(name: str, text: str) -> None:
        if name in LOG_LEVELS and LOG_LEVELS.index(name) >= level:
            params = {"level": name, "logger": SERVER_NAME, "data": text}
            await send(rpc.notification_bytes("notifications/message", params))

    return emit
