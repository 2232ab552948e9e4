"""Tool calls run as MCP tasks, in both eras, and `background: true` for clients that have neither.

2025-11-25 has the tasks utility: a `tools/call` with `params.task` is answered at once with a CreateTaskResult,
then `tasks/get`, `tasks/result` (blocks until the task ends), `tasks/list` and `tasks/cancel`, and
`notifications/tasks/status` to the session that created it. 2026-07-28 moves tasks to the
`io.modelcontextprotocol/tasks` extension: the server answers a `tools/call` from a client that declares it with
`resultType: "task"`, `tasks/get` carries the result or error inline, `tasks/update` and `tasks/cancel`
acknowledge, and `notifications/tasks` goes to subscriptions that name the task. Tools declare
`execution.taskSupport` ("optional" for the long ones).

A task is one row of the task store (a one-subtask task, so `qe_fleet_status {taskId}` shows it), written before
the call is answered: after a restart, or from another instance on the same store, `tasks/get` is answered from
it. The call runs through the runner like any other, in the background of the process that accepted it;
cancelling the task cancels that call, which stops its agent work as `notifications/cancelled` does. A task
belongs to the principal (bearer token) that created it: to anyone else it does not exist.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import msgspec

from qe_appliance.mcp import jsonrpc as rpc
from qe_appliance.mcp.inbound import Inbound
from qe_appliance.mcp.jsonrpc import RpcError
from qe_appliance.mcp.sessions import Session
from qe_appliance.mcp.subscriptions import TASKS_EXTENSION, Subscriptions, declares_tasks
from qe_appliance.sandbox import Caller
from qe_appliance.store.database import retrying
from qe_appliance.tools.base import BACKGROUND, ToolSpec
from qe_appliance.tools.runner import CallResult, ToolRunner
from qe_appliance.uris import task_uri

if TYPE_CHECKING:
    from qe_appliance.store.interface import TaskBackend

log = logging.getLogger("aqe_mcp.tasks")

RELATED_TASK: Final = "io.modelcontextprotocol/related-task"
IMMEDIATE_RESPONSE: Final = "io.modelcontextprotocol/model-immediate-response"
# The handshake revision that has the tasks utility, and what its servers declare for it.
TASKS_VERSION: Final = "2025-11-25"
HANDSHAKE_CAPABILITY: Final[dict[str, Any]] = {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}
EXTENSION_CAPABILITY: Final[dict[str, Any]] = {TASKS_EXTENSION: {}}
# A task is kept this long after its creation unless the client asks otherwise (within the bounds).
DEFAULT_TTL_MS: Final = 3_600_000
MIN_TTL_MS: Final = 1_000
MAX_TTL_MS: Final = 7 * 24 * 3_600_000
POLL_INTERVAL_MS: Final = 1_000
LIST_PAGE: Final = 50
# How often the process running a task looks for a cancel (or expiry) recorded by another instance.
WATCH_S: Final = 2.0
PURGE_INTERVAL_S: Final = 60.0
INTERRUPTED: Final = (
    "the server process running this task stopped before it finished (a restart, crash or drain); call the tool "
    "again"
)
MCP_STATUS: Final = {
    "running": "working",
    "completed": "completed",
    "failed": "completed",  # the tool answered with isError: a result, not a JSON-RPC failure
    "cancelled": "cancelled",
    "interrupted": "failed",
}

# resource_link content items exist from this revision on.
RESOURCE_LINK_VERSIONS: Final = frozenset({"2025-06-18", "2025-11-25", *rpc.MODERN_VERSIONS})

Notify = Callable[[bytes], None]

_plain = msgspec.json.Decoder()


class Running(msgspec.Struct, eq=False):
    """A task this process runs: who owns it, where its legacy status notifications go, its last progress."""

    principal: str | None
    notify: Notify | None
    message: str | None = None
    work: asyncio.Task[None] | None = None


class ToolTasks:
    def __init__(self, runner: ToolRunner, subscriptions: Subscriptions) -> None:
        self.runner = runner
        self.subscriptions = subscriptions
        self._running: dict[str, Running] = {}
        self._closed = False

    @property
    def store(self) -> TaskBackend:
        return self.runner.services.tasks

    # ---- starting and running ----------------------------------------------------------------------

    async def start(
        self, tool: ToolSpec, arguments: Any, *, caller: Caller, principal: str | None, ttl_ms: int | None,
        notify: Notify | None,
    ) -> dict[str, Any]:
        """Record the task (durably), start the call in the background, and return the task's record."""
        if self._closed:
            raise RpcError(rpc.INVALID_REQUEST, "the server is stopping: start the task on another instance",
                           http_status=503)
        ttl = DEFAULT_TTL_MS if ttl_ms is None else min(max(ttl_ms, MIN_TTL_MS), MAX_TTL_MS)
        record: dict[str, Any] = await retrying(self.store.create_call, tool.name, arguments, principal, ttl)
        task_id = record["taskId"]
        running = Running(principal, notify)
        running.work = asyncio.create_task(self._run(task_id, tool, arguments, caller, running))
        self._running[task_id] = running
        return record

    async def accept(
        self, tool: ToolSpec, arguments: bytes | Any, background: bool, modern: bool, task: Any, exch: Inbound,
        session: Session | None, caller: Caller,
    ) -> dict[str, Any]:
        """Start a call as a task and return its answer: a CreateTaskResult in the era's shape, or for
        `background: true` a normal result that points at the task."""
        record = await self.start(
            tool, _plain.decode(arguments or b"{}") if isinstance(arguments, bytes) else arguments,
            caller=caller, principal=exch.principal, notify=status_channel(modern, exch, session),
            ttl_ms=task.get("ttl") if isinstance(task, dict) and not modern and not background else None,
        )
        if background:
            version = rpc.MODERN_VERSIONS[0] if modern or session is None else session.protocol_version
            return background_result(record, version in RESOURCE_LINK_VERSIONS)
        return create_task_result(record, modern)

    async def _run(self, task_id: str, tool: ToolSpec, arguments: Any, caller: Caller, running: Running) -> None:
        async def progress(value: float, total: float | None = None, message: str | None = None) -> None:
            running.message = message or (f"{value:g} of {total:g}" if total else f"{value:g}")

        call = asyncio.ensure_future(self.runner.call(tool, arguments, progress=progress, caller=caller))
        try:
            while not call.done():
                await asyncio.wait({call}, timeout=WATCH_S)
                if not call.done() and not await self._still_running(task_id):
                    call.cancel()  # cancelled or expired through another instance: stop the work here too
                    return
            outcome = call.result()
            status = "completed" if outcome.ok else "failed"
            error = None if outcome.ok else outcome.message
            if await retrying(self.store.finish_call, task_id, status, outcome.value, error):
                await self._changed(task_id, running)
        except asyncio.CancelledError:
            call.cancel()
            raise
        except Exception as exc:
            # A bug or a store that failed: say so in the task rather than leave it working for ever.
            log.exception("task %s (%s) failed inside the server", task_id, tool.name)
            message = f"{tool.name} failed inside the server ({type(exc).__name__}); the server log has the details"
            with contextlib.suppress(Exception):
                await retrying(self.store.finish_call, task_id, "interrupted", None, message)
        finally:
            self._running.pop(task_id, None)

    async def _still_running(self, task_id: str) -> bool:
        record = await retrying(self.store.get_call, task_id)
        return record is not None and record["status"] == "running"

    async def _changed(self, task_id: str, running: Running | None) -> None:
        """Status notifications for a task that reached a final state: the creating session's (2025-11-25),
        subscriptions naming it (2026-07-28), and subscribers of its resource."""
        record = await retrying(self.store.get_call, task_id)
        if record is None:
            return
        if running is not None and running.notify is not None:
            running.notify(rpc.notification_bytes("notifications/tasks/status", task_wire(record, False)))
        self.subscriptions.task_status(task_id, record["principal"], detailed(record, None))
        self.runner.services.changes.changed(task_uri(task_id))

    # ---- the methods -------------------------------------------------------------------------------

    async def handle(
        self, method: str, params: dict[str, Any], principal: str | None, modern: bool, meta: dict[str, Any]
    ) -> dict[str, Any]:
        """tasks/* of either era (the dispatcher has checked the era has them)."""
        if modern:
            if not declares_tasks(meta):
                raise RpcError(
                    rpc.MISSING_CLIENT_CAPABILITY,
                    f"{method} belongs to the tasks extension: declare clientCapabilities.extensions"
                    f"[{TASKS_EXTENSION!r}]",
                    {"requiredCapabilities": {"extensions": EXTENSION_CAPABILITY}},
                )
            if method == "tasks/get":
                record = await self._owned(params.get("taskId"), principal)
                return detailed(record, self._message(record))
            if method == "tasks/cancel":
                await self.cancel(params.get("taskId"), principal, strict=False)
                return {}
            if method == "tasks/update":
                # No task of this server ever waits for input, so there is nothing outstanding to answer.
                await self._owned(params.get("taskId"), principal)
                return {}
            raise RpcError(rpc.METHOD_NOT_FOUND, f"method {method!r} is not in the tasks extension "
                           "(tasks/get, tasks/update, tasks/cancel)")
        if method == "tasks/get":
            record = await self._owned(params.get("taskId"), principal)
            return task_wire(record, False, self._message(record))
        if method == "tasks/result":
            return await self.result(params.get("taskId"), principal)
        if method == "tasks/list":
            return await self.list(principal, params.get("cursor"))
        if method == "tasks/cancel":
            return task_wire(await self.cancel(params.get("taskId"), principal, strict=True), False)
        raise RpcError(rpc.METHOD_NOT_FOUND, f"method {method!r} not found (tasks/get, tasks/result, tasks/list, "
                       "tasks/cancel)")

    async def _owned(self, task_id: Any, principal: str | None) -> dict[str, Any]:
        if not isinstance(task_id, str) or not task_id:
            raise RpcError(rpc.INVALID_PARAMS, "params.taskId must be the taskId of a CreateTaskResult (a string)")
        record: dict[str, Any] | None = await retrying(self.store.get_call, task_id)
        if record is None or record["principal"] != principal:
            raise RpcError(
                rpc.INVALID_PARAMS,
                f"Failed to retrieve task: no task {task_id!r} for this caller (unknown, expired after its ttl, or "
                "created with another token)",
            )
        return record

    def _message(self, record: dict[str, Any]) -> str | None:
        running = self._running.get(record["taskId"])
        return running.message if running is not None else None

    async def result(self, task_id: Any, principal: str | None) -> dict[str, Any]:
        """What the call returned, once the task has ended (2025-11-25 tasks/result blocks until then)."""
        record = await self._owned(task_id, principal)
        while record["status"] == "running":
            running = self._running.get(record["taskId"])
            if running is not None and running.work is not None:
                await asyncio.wait({running.work})  # never cancels the work, whatever happens to this request
            else:
                await asyncio.sleep(POLL_INTERVAL_MS / 1000)  # run by another process: follow the store
            record = await self._owned(task_id, principal)
        status = MCP_STATUS[record["status"]]
        if status == "cancelled":
            raise RpcError(rpc.REQUEST_CANCELLED, f"task {record['taskId']} was cancelled before it finished")
        if status == "failed":
            raise RpcError(rpc.INTERNAL_ERROR, record["error"] or INTERRUPTED)
        result = call_result(record).wire()
        result["_meta"] = {RELATED_TASK: {"taskId": record["taskId"]}}
        return result

    async def list(self, principal: str | None, cursor: Any) -> dict[str, Any]:
        after = None if cursor is None else _decode_cursor(cursor)
        rows = await retrying(self.store.list_calls, principal, after, LIST_PAGE + 1)
        page = rows[:LIST_PAGE]
        result: dict[str, Any] = {"tasks": [task_wire(row, False, self._message(row)) for row in page]}
        if len(rows) > LIST_PAGE:
            last = page[-1]
            result["nextCursor"] = base64.urlsafe_b64encode(
                rpc.encoder.encode([last["createdAt"], last["taskId"]])
            ).decode()
        return result

    async def cancel(self, task_id: Any, principal: str | None, *, strict: bool) -> dict[str, Any]:
        """Cancel a working task and stop its work; `strict` (2025-11-25) refuses one that has already ended."""
        record = await self._owned(task_id, principal)
        if record["status"] != "running":
            if strict:
                raise RpcError(
                    rpc.INVALID_PARAMS,
                    f"task {record['taskId']} is already {MCP_STATUS[record['status']]}: only a working task can be "
                    "cancelled",
                )
            return record
        closed = await retrying(self.store.finish_call, record["taskId"], "cancelled", None, "cancelled by the client")
        running = self._running.get(record["taskId"])
        if running is not None and running.work is not None:
            running.work.cancel()  # the call's agent connection closes: its processes are killed
        if closed:
            await self._changed(record["taskId"], running)
        return await self._owned(task_id, principal)

    # ---- upkeep ------------------------------------------------------------------------------------

    async def purge_periodically(self, interval_s: float = PURGE_INTERVAL_S) -> None:
        """Delete tasks whose ttl has run out (reads hide them from that moment already)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                purged = await retrying(self.store.purge_expired_calls)
            except Exception:
                log.exception("purging expired tasks failed; retrying in %g s", interval_s)
                continue
            if purged:
                log.info("purged %d expired tasks", purged)

    async def stop(self, deadline_s: float) -> None:
        """Refuse new tasks, let running ones finish within the deadline, record the rest as interrupted."""
        self._closed = True
        works = {running.work: task_id for task_id, running in self._running.items() if running.work is not None}
        if not works:
            return
        log.info("waiting up to %.0f s for %d background tasks", deadline_s, len(works))
        _, late = await asyncio.wait(works, timeout=deadline_s)
        for work in late:
            try:
                await retrying(self.store.finish_call, works[work], "interrupted", None, INTERRUPTED)
            except Exception:
                log.exception("task %s: recording the interruption failed", works[work])
            work.cancel()


# ---- arguments and results ---------------------------------------------------------------------------


def split_background(tool: ToolSpec, arguments: bytes | Any) -> tuple[bytes | Any, bool]:
    """(the arguments without `background`, whether it was true) for tools that may run as tasks."""
    if tool.task_support != "optional":
        return arguments, False
    if isinstance(arguments, bytes):
        if b'"background"' not in arguments:
            return arguments, False
        try:
            values = _plain.decode(arguments)
        except rpc.UNREADABLE:
            return arguments, False  # the runner says what is wrong with them
    else:
        values = arguments
    if not isinstance(values, dict) or BACKGROUND not in values:
        return arguments, False
    values = dict(values)
    flag = values.pop(BACKGROUND)
    if not isinstance(flag, bool):
        raise ValueError(f"invalid arguments for {tool.name}: background must be true or false; got {flag!r}")
    return values, flag


def wants_task(tool: ToolSpec, modern: bool, task: Any, meta: dict[str, Any], session: Session | None) -> bool:
    """Whether this call runs as a task: asked for with params.task (2025-11-25), or chosen by the server
    for a tool that may run as one when the client declares the tasks extension (2026-07-28)."""
    if modern:
        return tool.task_support == "optional" and declares_tasks(meta)
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


def status_channel(modern: bool, exch: Inbound, session: Session | None) -> Notify | None:
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

    return session.notify


def background_result(record: dict[str, Any], link: bool) -> dict[str, Any]:
    """The CallToolResult of a `background: true` call: the task, its resource, and how to follow it."""
    task_id = record["taskId"]
    uri = task_uri(task_id)
    value = {
        "taskId": task_id,
        "status": MCP_STATUS[record["status"]],
        "resource": uri,
        "poll": f'call qe_fleet_status {{"taskId": "{task_id}"}} (or read {uri}) until the task is completed or '
        "failed; its subtask holds the result",
    }
    content: list[dict[str, Any]] = [{"type": "text", "text": rpc.encoder.encode(value).decode()}]
    if link:  # resource_link content exists from 2025-06-18 on
        content.append({
            "type": "resource_link",
            "uri": uri,
            "name": f"task {task_id}",
            "mimeType": "application/json",
            "description": f"Background {record['kind']} call: its status, and its result once finished.",
        })
    return {"content": content, "structuredContent": value, "isError": False}


def create_task_result(record: dict[str, Any], modern: bool) -> dict[str, Any]:
    """The answer to a task-augmented tools/call: the task, in the era's shape."""
    note = f"{record['kind']} is running as task {record['taskId']}; its result will be available when it completes."
    if modern:
        return {**task_wire(record, True), "resultType": "task"}
    return {"task": task_wire(record, False), "_meta": {IMMEDIATE_RESPONSE: note}}


def call_result(record: dict[str, Any]) -> CallResult:
    """The finished call again, from what the store kept (its value, or the message of its isError)."""
    if record["status"] == "completed":
        return CallResult("ok", record["result"])
    return CallResult("caller-error", message=record["error"] or "the tool failed")


def task_wire(record: dict[str, Any], modern: bool, message: str | None = None) -> dict[str, Any]:
    """A Task: `ttl`/`pollInterval` in 2025-11-25, `ttlMs`/`pollIntervalMs` in the 2026-07-28 extension."""
    status = MCP_STATUS[record["status"]]
    task: dict[str, Any] = {
        "taskId": record["taskId"],
        "status": status,
        "createdAt": _iso(record["createdAt"]),
        "lastUpdatedAt": _iso(record["finishedAt"] or record["createdAt"]),
        ("ttlMs" if modern else "ttl"): record["ttlMs"],
        ("pollIntervalMs" if modern else "pollInterval"): POLL_INTERVAL_MS,
    }
    note = message if status == "working" else (record["error"] or (INTERRUPTED if status == "failed" else None))
    if note:
        task["statusMessage"] = note
    return task


def detailed(record: dict[str, Any], message: str | None) -> dict[str, Any]:
    """The extension's DetailedTask: the result inline once completed, the JSON-RPC error once failed."""
    task = task_wire(record, True, message)
    if task["status"] == "completed":
        task["result"] = call_result(record).wire()
    elif task["status"] == "failed":
        task["error"] = {"code": rpc.INTERNAL_ERROR, "message": record["error"] or INTERRUPTED}
    return task


def _iso(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _decode_cursor(cursor: Any) -> tuple[float, str]:
    try:
        created, task_id = _plain.decode(base64.urlsafe_b64decode(str(cursor).encode()))
        if not isinstance(created, int | float) or not isinstance(task_id, str):
            raise ValueError
        return float(created), task_id
    except (ValueError, TypeError, binascii.Error, *rpc.UNREADABLE):
        message = "invalid cursor: pass back the nextCursor of a previous tasks/list"
        raise RpcError(rpc.INVALID_PARAMS, message) from None
