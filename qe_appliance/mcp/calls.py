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
from qe_appliance.mcp.subscriptions import TASKS_EXTENSION
from qe_appliance.mcp.tasks import (
    TASKS_VERSION,
    Notify,
    ToolTasks,
    background_result,
    create_task_result,
    split_background,
)
from qe_appliance.monitoring.monitor import Monitor
from qe_appliance.registry import ToolRegistry, UnknownToolError
from qe_appliance.sandbox import STDIO, Caller
from qe_appliance.tools.base import ToolSpec, no_log, no_progress
from qe_appliance.tools.runner import CallResult, ToolRunner

REQUEST_CANCELLED = rpc.REQUEST_CANCELLED
# resource_link content items exist from this revision on.
RESOURCE_LINK_VERSIONS = frozenset({"2025-06-18", "2025-11-25", *rpc.MODERN_VERSIONS})

_plain = msgspec.json.Decoder()


class CallParams(msgspec.Struct):
    name: Any = None
    arguments: msgspec.Raw = msgspec.Raw(b"")
    meta: Any = msgspec.field(default=None, name="_meta")
    # 2025-11-25 task augmentation: {"ttl": ms} asks for the call to run as a task.
    task: Any = None


class ToolCalls:
    """The tools/call method of both eras."""

    def __init__(self, registry: ToolRegistry, runner: ToolRunner, monitor: Monitor | None, tasks: ToolTasks) -> None:
        self.runner = runner
        self.tasks = tasks
        self.monitor = monitor
        self.registry = registry
        self._header_params: dict[str, tuple[HeaderParam, ...]] = {}
        self.set_registry(registry)

    def set_registry(self, registry: ToolRegistry) -> None:
        self.registry = registry
        self._header_params = {tool.name: header_params(tool) for tool in registry.tools()}

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
        if modern and exch.headers is not None and self._header_params.get(tool.name):
            # A client mirrors only the headers of tools it listed: a typo it sent has none to mirror.
            try:
                arguments = _plain.decode(raw_args or b"{}")
            except rpc.UNREADABLE:
                pass  # the runner reports unreadable arguments in the caller's terms
            else:
                check_param_headers(
                    self._header_params[tool.name], arguments, exch.headers, exch.duplicated, absent_ok=fuzzy
                )
        try:
            arguments, background = split_background(tool, arguments)
        except ValueError as exc:
            return CallResult("caller-error", message=str(exc)).wire()
        augmented = self._augmented(tool, modern, params.task, meta, session)
        if background or augmented:
            record = await self.tasks.start(
                tool, _plain.decode(arguments or b"{}") if isinstance(arguments, bytes) else arguments,
                caller=self._caller(exch), principal=exch.principal, notify=_status_channel(modern, exch, session),
                ttl_ms=params.task.get("ttl") if augmented and not modern else None,
            )
            if background:
                version = rpc.MODERN_VERSIONS[0] if modern or session is None else session.protocol_version
                return background_result(record, version in RESOURCE_LINK_VERSIONS)
            return create_task_result(record, modern)
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
        result = outcome.wire()
        if fuzzy:
            result.setdefault("_meta", {}).update({"io.aqe/requestedTool": name, "io.aqe/resolvedTool": tool.name})
        return result

    @staticmethod
    def _augmented(tool: ToolSpec, modern: bool, task: Any, meta: dict[str, Any], session: Session | None) -> bool:
        """Whether this call runs as a task: asked for with params.task (2025-11-25), or chosen by the server
        for a tool that may run as one when the client declares the tasks extension (2026-07-28)."""
        if modern:
            capabilities = meta.get(rpc.META_CLIENT_CAPABILITIES)
            extensions = capabilities.get("extensions") if isinstance(capabilities, dict) else None
            return tool.task_support == "optional" and isinstance(extensions, dict) and TASKS_EXTENSION in extensions
        if task is None or session is None or session.protocol_version != TASKS_VERSION:
            return False  # an era without tasks ignores the field, as the specification says
        if not isinstance(task, dict) or not isinstance(task.get("ttl", 0), int | None):
            raise RpcError(rpc.INVALID_PARAMS, 'params.task must be an object such as {"ttl": 60000} (ms)')
        if tool.task_support != "optional":
            raise RpcError(
                rpc.METHOD_NOT_FOUND,
                f"{tool.name} does not run as a task (execution.taskSupport is forbidden): call it without "
                "params.task",
            )
        return True

    def _caller(self, exch: Inbound) -> Caller:
        """stdio has no headers; over HTTP a caller is authenticated when the server checks tokens (the
        HTTP guard refuses /mcp without a valid one)."""
        if exch.headers is None:
            return STDIO
        return Caller("http", authenticated=self.runner.services.config.server.auth.enabled, principal=exch.principal)


def _status_channel(modern: bool, exch: Inbound, session: Session | None) -> Notify | None:
    """Where notifications/tasks/status for a 2025-11-25 task go: the stdio connection, or the session's
    GET /mcp stream when one is open then. (2026-07-28 clients hear of tasks on subscriptions/listen.)"""
    if modern or session is None:
        return None
    send = exch.send
    if exch.headers is None and send is not None:
        pending: set[asyncio.Task[None]] = set()

        def to_stdout(event: bytes) -> None:
            write = asyncio.ensure_future(send(event))
            pending.add(write)
            write.add_done_callback(pending.discard)

        return to_stdout

    def to_stream(event: bytes) -> None:
        for queue in session.listeners:
            queue.put_nowait(event)

    return to_stream


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
