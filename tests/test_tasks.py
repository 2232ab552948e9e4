"""Tool calls run as MCP tasks (issue 15 item 6), through the official client as users drive them: the
2025-11-25 tasks utility (task-augmented tools/call, tasks/get, tasks/result, tasks/list, tasks/cancel,
notifications/tasks/status) over HTTP and stdio, the 2026-07-28 tasks extension through the client's own
extension mechanism (a claim on resultType "task"), `background: true` for clients with neither, cancellation
that stops the agent work, isolation between tokens, and tasks read back by a restarted server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import anyio
import mcp_types as t
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.extension import ClaimContext, ClientExtension, NotificationBinding, ResultClaim
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from qe_appliance.mcp.tasks import LIST_PAGE
from tests.conftest import ServerProcess, start_server, stdio_command
from tests.test_cancellation import HANG, _assert_stopped, _runs_of, _subject, _wait_for
from tests.test_control import cli
from tests.test_http_edges import modern, request

OPEN = {"allowUnauthenticatedCodeExecution": True}
SOURCE = (
    "def clamp(x: int, lo: int, hi: int) -> int:\n"
    '    """Bound x to [lo, hi]."""\n'
    "    if lo > hi:\n"
    '        raise ValueError("lo > hi")\n'
    "    return max(lo, min(x, hi))\n"
)
VERIFY = {"source": SOURCE, "module": "clampmod", "verify": True, "oracle": "static"}
TASKS = "io.modelcontextprotocol/tasks"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path_factory.mktemp("tasks"), {"server": OPEN})
    yield srv
    srv.stop()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ---- the 2025-11-25 utility, driven with the client's typed requests ---------------------------------------


async def augmented(client: Client, name: str, arguments: dict[str, Any], ttl: int | None = None) -> t.Task:
    """A task-augmented tools/call. The SDK (mcp 2.3.0) validates every 2025-11-25 tools/call answer as a
    CallToolResult, so the CreateTaskResult is read through the session's own raw request path (same envelope,
    same transport) and validated here against the SDK's CreateTaskResult."""
    request = t.CallToolRequest(params=t.CallToolRequestParams(name=name, arguments=arguments,
                                                               task=t.TaskMetadata(ttl=ttl)))
    data = request.model_dump(by_alias=True, mode="json", exclude_none=True)
    session = client.session
    opts: dict[str, Any] = {}
    session._stamp(data, opts)  # type: ignore[arg-type]
    raw = await session._dispatcher.send_raw_request("tools/call", data["params"], opts)  # type: ignore[arg-type]
    return t.CreateTaskResult.model_validate(raw, by_name=False).task


async def get(client: Client, task_id: str) -> t.GetTaskResult:
    return await client.session.send_request(
        t.GetTaskRequest(params=t.GetTaskRequestParams(task_id=task_id)), t.GetTaskResult
    )


async def poll(client: Client, task_id: str, seconds: float = 60) -> t.GetTaskResult:
    deadline = time.monotonic() + seconds
    while (task := await get(client, task_id)).status == "working":
        assert time.monotonic() < deadline, f"task {task_id} still working after {seconds:g} s"
        await anyio.sleep(0.2)
    return task


async def result(client: Client, task_id: str) -> t.CallToolResult:
    return await client.session.send_request(
        t.GetTaskPayloadRequest(params=t.GetTaskPayloadRequestParams(task_id=task_id)), t.CallToolResult
    )


async def listed(client: Client) -> list[str]:
    ids: list[str] = []
    cursor: str | None = None
    while True:
        page = await client.session.send_request(
            t.ListTasksRequest(params=t.PaginatedRequestParams(cursor=cursor) if cursor else None), t.ListTasksResult
        )
        ids += [task.task_id for task in page.tasks]
        if not (cursor := page.next_cursor):
            return ids


async def cancel(client: Client, task_id: str) -> t.CancelTaskResult:
    return await client.session.send_request(
        t.CancelTaskRequest(params=t.CancelTaskRequestParams(task_id=task_id)), t.CancelTaskResult
    )


@pytest.mark.anyio
async def test_a_verified_generation_runs_as_a_task_polled_to_its_result(server: ServerProcess) -> None:
    async with Client(server.url, mode="legacy") as client:
        capabilities = client.server_capabilities
        assert capabilities.tasks is not None and capabilities.tasks.requests.tools.call is not None
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert tools["qe_test_generate"].execution.task_support == "optional"
        assert tools["qe_memory_store"].execution.task_support == "forbidden"
        started = time.monotonic()
        task = await augmented(client, "qe_test_generate", VERIFY, ttl=600_000)
        assert time.monotonic() - started < 2, "a task-augmented call is answered at once"
        assert (task.status, task.ttl, task.poll_interval) == ("working", 600_000, 1000)
        assert task.task_id.startswith("task-") and len(task.task_id) > 30  # unguessable
        done = await poll(client, task.task_id)
        assert done.status == "completed", done
        final = await result(client, task.task_id)
        assert not final.is_error
        assert final.structured_content["verification"]["passed"] > 0
        assert final.meta["io.modelcontextprotocol/related-task"] == {"taskId": task.task_id}
        # The same task is an ordinary one-subtask task to qe_fleet_status.
        status = await client.call_tool("qe_fleet_status", {"taskId": task.task_id})
        shown = status.structured_content["task"]
        assert (shown["kind"], shown["status"], shown["total"]) == ("qe_test_generate", "completed", 1)
        assert shown["subtasks"][0]["result"]["verification"]["passed"] > 0
        # Fast tools do not run as tasks: -32601 as the specification says.
        with pytest.raises(MCPError) as refused:
            await augmented(client, "qe_memory_store", {"key": "k", "value": 1})
        assert refused.value.error.code == -32601 and "taskSupport" in refused.value.error.message
        with pytest.raises(MCPError) as unknown:
            await get(client, "task-" + "0" * 32)
        assert unknown.value.error.code == -32602 and "no task" in unknown.value.error.message


@pytest.mark.anyio
async def test_tasks_result_blocks_until_the_task_ends_and_a_tool_error_is_a_completed_task(
    server: ServerProcess,
) -> None:
    watcher = StatusWatcher()
    async with Client(server.url, mode="legacy", extensions=[watcher]) as client:
        task = await augmented(client, "qe_test_generate", {**VERIFY, "module": "blockmod"})
        final = await result(client, task.task_id)  # no polling: tasks/result waits
        assert not final.is_error and final.structured_content["verification"]["passed"] > 0
        # The session's GET stream carried notifications/tasks/status when the task completed.
        with anyio.fail_after(5):
            while not watcher.statuses:
                await anyio.sleep(0.05)
        assert (watcher.statuses[0].task_id, watcher.statuses[0].status) == (task.task_id, "completed")
        broken = await augmented(client, "qe_test_generate", {"source": "def broken(:\n"})
        answer = await result(client, broken.task_id)
        assert answer.is_error and "syntax" in answer.content[0].text.lower()
        assert (await get(client, broken.task_id)).status == "completed"  # isError is a result, not a failure
        # A task is kept for its ttl (at least 1 s), then it is gone.
        brief = await augmented(client, "qe_test_generate", {"source": SOURCE, "oracle": "static"}, ttl=1)
        assert brief.ttl == 1000
        assert not (await result(client, brief.task_id)).is_error
        await anyio.sleep(1.1)
        with pytest.raises(MCPError) as expired:
            await get(client, brief.task_id)
        assert expired.value.error.code == -32602 and "expired" in expired.value.error.message


# ---- the 2026-07-28 extension, through the client's extension mechanism -------------------------------------


class TaskHandle(t.Result):
    """The extension's CreateTaskResult, claimed by resultType "task"."""

    result_type: Literal["task"] = "task"
    task_id: str
    status: str
    ttl_ms: int | None = None
    poll_interval_ms: int | None = None


class DetailedTask(t.Result):
    task_id: str
    status: str
    ttl_ms: int | None = None
    poll_interval_ms: int | None = None
    status_message: str | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class GetTask(t.GetTaskRequest):
    name_param: ClassVar[str | None] = "taskId"  # the extension routes tasks/* on Mcp-Name = taskId


class CancelTask(t.CancelTaskRequest):
    name_param: ClassVar[str | None] = "taskId"


class TasksExtension(ClientExtension):
    """A client of the tasks extension: resolves a task handle by polling tasks/get, remembering what it saw."""

    identifier = TASKS

    def __init__(self) -> None:
        self.seen: list[DetailedTask] = []
        self.handles: list[TaskHandle] = []

    def claims(self) -> list[ResultClaim[Any]]:
        return [ResultClaim(result_type="task", model=TaskHandle, resolve=self.resolve)]

    async def resolve(self, handle: TaskHandle, ctx: ClaimContext) -> t.CallToolResult:
        self.handles.append(handle)
        deadline = time.monotonic() + 60
        while True:
            task = await ctx.session.send_request(GetTask(params=t.GetTaskRequestParams(task_id=handle.task_id)),
                                                  DetailedTask)
            self.seen.append(task)
            if task.status == "completed":
                assert task.result is not None
                return t.CallToolResult.model_validate(task.result)
            assert task.status == "working" and time.monotonic() < deadline, task
            await anyio.sleep(0.2)


@pytest.mark.anyio
async def test_the_tasks_extension_is_resolved_by_the_official_clients_claim(server: ServerProcess) -> None:
    extension = TasksExtension()
    async with Client(server.url, extensions=[extension]) as client:
        assert client.protocol_version == "2026-07-28"
        assert TASKS in (client.server_capabilities.extensions or {})
        final = await client.call_tool("qe_test_generate", {**VERIFY, "module": "modernmod"})
        assert not final.is_error and final.structured_content["verification"]["passed"] > 0
        (handle,) = extension.handles
        assert (handle.status, handle.ttl_ms, handle.poll_interval_ms) == ("working", 3_600_000, 1000)
        assert extension.seen[-1].status == "completed"
        # A fast tool is answered directly even for a client of the extension.
        stored = await client.call_tool("qe_memory_store", {"key": "k", "value": 1})
        assert not stored.is_error and len(extension.handles) == 1
    # Without the extension declared, tasks/get is -32021 naming it (raw: the client would not send it).
    body, headers = modern("tasks/get", {"taskId": handle.task_id})
    status, _, raw = request(server, "POST", body=body, headers=headers)
    error = json.loads(raw)["error"]
    assert status == 400 and error["code"] == -32021
    assert error["data"] == {"requiredCapabilities": {"extensions": {TASKS: {}}}}
    body["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"] = ["not", "an", "object"]
    status, _, raw = request(server, "POST", body=body, headers=headers)
    assert status == 400 and json.loads(raw)["error"]["code"] == -32021


# ---- background: true ---------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_background_true_returns_at_once_with_the_task_and_how_to_follow_it(
    server: ServerProcess, mode: str
) -> None:
    async with Client(server.url, mode=mode) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert tools["qe_test_generate"].input_schema["properties"]["background"]["type"] == "boolean"
        assert "background" not in tools["qe_memory_store"].input_schema["properties"]
        started = time.monotonic()
        answer = await client.call_tool("qe_test_generate", {**VERIFY, "module": f"bg{mode}", "background": True})
        assert time.monotonic() - started < 2
        assert not answer.is_error
        task_id = answer.structured_content["taskId"]
        assert answer.structured_content["resource"] == f"aqe://tasks/{task_id}"
        assert "qe_fleet_status" in answer.structured_content["poll"]
        (link,) = [item for item in answer.content if item.type == "resource_link"]
        assert link.uri == f"aqe://tasks/{task_id}"

        async def finished() -> dict[str, Any]:
            deadline = time.monotonic() + 60
            while True:
                shown = (await client.call_tool("qe_fleet_status", {"taskId": task_id})).structured_content["task"]
                if shown["status"] != "running":
                    return shown
                assert time.monotonic() < deadline
                await anyio.sleep(0.2)

        shown = await finished()
        assert shown["status"] == "completed" and shown["subtasks"][0]["result"]["verification"]["passed"] > 0
        refused = await client.call_tool("qe_memory_store", {"key": "k", "value": 1, "background": True})
        assert refused.is_error and "background" in refused.content[0].text


# ---- cancellation stops the work ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_cancelling_a_task_stops_its_pytest_run(server: ServerProcess) -> None:
    subject = _subject()
    async with Client(server.url, mode="legacy") as client:
        task = await augmented(client, "qe_test_generate",
                               {"source": HANG, "module": subject, "verify": True, "oracle": "static"})
        await anyio.to_thread.run_sync(_wait_for, lambda: _runs_of(subject), 30, "no pytest run started")
        working = await get(client, task.task_id)  # the call's progress is the working task's statusMessage
        assert working.status == "working" and "pytest" in (working.status_message or ""), working
        cancelled = await cancel(client, task.task_id)
        assert cancelled.status == "cancelled" and cancelled.status_message == "cancelled by the client"
        await anyio.to_thread.run_sync(_assert_stopped, server, subject)
        assert (await get(client, task.task_id)).status == "cancelled"
        with pytest.raises(MCPError) as again:
            await cancel(client, task.task_id)
        assert again.value.error.code == -32602 and "already cancelled" in again.value.error.message
        with pytest.raises(MCPError) as gone:
            await result(client, task.task_id)
        assert gone.value.error.code == -32800


@pytest.mark.anyio
async def test_the_extensions_cancel_stops_the_work_too(server: ServerProcess) -> None:
    subject = _subject()
    extension = TasksExtension()
    async with Client(server.url, extensions=[extension]) as client:
        created = await client.session.call_tool(
            "qe_test_generate", {"source": HANG, "module": subject, "verify": True, "oracle": "static"},
            allow_claimed=True,
        )
        assert isinstance(created, TaskHandle)
        await anyio.to_thread.run_sync(_wait_for, lambda: _runs_of(subject), 30, "no pytest run started")
        await client.session.send_request(CancelTask(params=t.CancelTaskRequestParams(task_id=created.task_id)),
                                          t.Result)
        await anyio.to_thread.run_sync(_assert_stopped, server, subject)
        task = await client.session.send_request(
            GetTask(params=t.GetTaskRequestParams(task_id=created.task_id)), DetailedTask
        )
        assert task.status == "cancelled" and task.result is None


# ---- tasks belong to their token ----------------------------------------------------------------------------

TOKEN_A = "alpha-" + "a" * 26
TOKEN_B = "bravo-" + "b" * 26


def _with_token(url: str, token: str, **kwargs: Any) -> Client:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    return Client(streamable_http_client(url, http_client=http), **kwargs)


@pytest.mark.anyio
async def test_tasks_are_listed_read_and_cancelled_only_by_the_token_that_created_them(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN_A}\n{TOKEN_B}\n")
    tokens.chmod(0o600)
    srv = await anyio.to_thread.run_sync(lambda: start_server(
        tmp_path, {"server": {"auth": {"tokensFile": str(tokens)}}, "fleet": {"agents": {"generalist": 1}}}
    ))
    try:
        async with _with_token(srv.url, TOKEN_A, mode="legacy") as alice, \
                _with_token(srv.url, TOKEN_B, mode="legacy") as bob:
            source = {"source": SOURCE, "oracle": "static"}
            mine = [(await augmented(alice, "qe_test_generate", source)).task_id for _ in range(LIST_PAGE + 3)]
            theirs = (await augmented(bob, "qe_test_generate", source)).task_id
            # Oldest first, in pages (two here), each caller's own only.
            assert await listed(alice) == mine and await listed(bob) == [theirs]
            with pytest.raises(MCPError) as bad:
                await alice.session.send_request(t.ListTasksRequest(params=t.PaginatedRequestParams(cursor="x")),
                                                 t.ListTasksResult)
            assert bad.value.error.code == -32602 and "cursor" in bad.value.error.message
            for call in (get, result, cancel):
                with pytest.raises(MCPError) as hidden:
                    await call(bob, mine[0])
                assert hidden.value.error.code == -32602 and "no task" in hidden.value.error.message
            assert not (await result(alice, mine[0])).is_error
            # qe_fleet_status shows a call task to its creator only, and lists none in its overview.
            own = await alice.call_tool("qe_fleet_status", {"taskId": mine[0]})
            assert own.structured_content["task"]["subtasks"][0]["status"] == "completed"
            peek = await bob.call_tool("qe_fleet_status", {"taskId": mine[0]})
            assert peek.is_error and "no task" in peek.content[0].text
            overview = await bob.call_tool("qe_fleet_status", {})
            assert not {task["taskId"] for task in overview.structured_content["tasks"]} & set(mine)
            # The same rule for the task's resource: readable by its creator, unknown to others and unlisted.
            uri = f"aqe://tasks/{mine[0]}"
            assert json.loads((await alice.read_resource(uri)).contents[0].text)["taskId"] == mine[0]
            with pytest.raises(MCPError) as unseen:
                await bob.read_resource(uri)
            assert unseen.value.error.code == -32002 and "no task" in unseen.value.error.message
            assert uri not in {str(r.uri) for r in (await alice.list_resources()).resources}
        async with _with_token(srv.url, TOKEN_B, extensions=[TasksExtension()]) as bob_modern:
            with pytest.raises(MCPError):
                await bob_modern.session.send_request(GetTask(params=t.GetTaskRequestParams(task_id=mine[1])),
                                                      DetailedTask)
    finally:
        srv.stop()


# ---- durable: another process answers -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_restarted_server_answers_for_finished_and_interrupted_tasks(tmp_path: Path) -> None:
    first = await anyio.to_thread.run_sync(lambda: start_server(tmp_path, {"server": OPEN}))
    subject = _subject()
    try:
        async with Client(first.url, mode="legacy") as client:
            done = await augmented(client, "qe_test_generate", {**VERIFY, "module": "durablemod"})
            assert (await poll(client, done.task_id)).status == "completed"
            hung = await augmented(client, "qe_test_generate",
                                   {"source": HANG, "module": subject, "verify": True, "oracle": "static"})
            await anyio.to_thread.run_sync(_wait_for, lambda: _runs_of(subject), 30, "no pytest run started")
    finally:
        os.kill(first.proc.pid, signal.SIGKILL)  # a crash: the running task cannot finish
        first.proc.wait(5)
    await anyio.to_thread.run_sync(_wait_for, lambda: not _runs_of(subject), 5, "the pytest run outlived its server")
    second = await anyio.to_thread.run_sync(lambda: start_server(tmp_path, {"server": OPEN}))
    try:
        async with Client(second.url, mode="legacy") as client:
            again = await get(client, done.task_id)
            assert again.status == "completed"
            final = await result(client, done.task_id)
            assert final.structured_content["verification"]["passed"] > 0
            lost = await get(client, hung.task_id)
            assert lost.status == "failed" and "stopped before it finished" in lost.status_message
            with pytest.raises(MCPError) as failed:
                await result(client, hung.task_id)
            assert failed.value.error.code == -32603
            assert set(await listed(client)) == {done.task_id, hung.task_id}
    finally:
        second.stop()


class StatusWatcher(ClientExtension):
    """notifications/tasks/status is outside the SDK's core notification tables: a binding observes it."""

    identifier = "io.aqe/task-status-watcher"

    def __init__(self) -> None:
        self.statuses: list[t.TaskStatusNotificationParams] = []

    def notifications(self) -> list[NotificationBinding[Any]]:
        return [NotificationBinding(method="notifications/tasks/status", params_type=t.TaskStatusNotificationParams,
                                    handler=self.seen)]

    async def seen(self, params: t.TaskStatusNotificationParams) -> None:
        self.statuses.append(params)


# ---- stdio --------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_tasks_over_stdio_with_their_status_notification(tmp_path: Path) -> None:
    command, args, env = stdio_command(tmp_path)
    watcher = StatusWatcher()
    async with Client(StdioServerParameters(command=command, args=args, env=env), mode="legacy",
                      extensions=[watcher]) as client:
        task = await augmented(client, "qe_test_generate", {"source": SOURCE, "oracle": "static"})
        final = await result(client, task.task_id)
        assert not final.is_error and final.structured_content["tests"]
        with anyio.fail_after(5):
            while not watcher.statuses:
                await anyio.sleep(0.05)
        assert (watcher.statuses[0].task_id, watcher.statuses[0].status) == (task.task_id, "completed")
    extension = TasksExtension()
    async with Client(StdioServerParameters(command=command, args=args, env=env), extensions=[extension]) as client:
        final = await client.call_tool("qe_test_generate", {"source": SOURCE, "oracle": "static"})
        assert not final.is_error and extension.handles


# ---- another instance on the same PostgreSQL store ----------------------------------------------------------


def test_another_instance_on_the_same_postgresql_store_answers_waits_and_cancels(
    postgres: Any, tmp_path: Path
) -> None:
    store = {"store": {"url": postgres.tcp_url(postgres.database()), "passwordFile": str(postgres.password_file)},
             "server": OPEN}
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
    first = start_server(tmp_path / "a", store)
    second = start_server(tmp_path / "b", store)
    subject = _subject()

    async def session() -> None:
        async with Client(first.url, mode="legacy") as one, Client(second.url, mode="legacy") as other:
            task = await augmented(one, "qe_test_generate", {**VERIFY, "module": "sharedmod"})
            final = await result(other, task.task_id)  # waits on the store for the first instance's work
            assert final.structured_content["verification"]["passed"] > 0
            assert task.task_id in await listed(other)
            hung = await augmented(one, "qe_test_generate",
                                   {"source": HANG, "module": subject, "verify": True, "oracle": "static"})
            await anyio.to_thread.run_sync(_wait_for, lambda: _runs_of(subject), 30, "no pytest run started")
            assert (await cancel(other, hung.task_id)).status == "cancelled"

    try:
        anyio.run(session)
        # The first instance sees the cancel in the store (it looks every 2 s) and stops its work.
        _wait_for(lambda: not _runs_of(subject), 10, "the first instance did not stop the cancelled run")
        _assert_stopped(first, subject)
    finally:
        first.stop()
        second.stop()


def test_a_drain_waits_for_tasks_within_its_deadline_then_records_the_rest_as_stopped(tmp_path: Path) -> None:
    srv = start_server(tmp_path, {"server": OPEN})
    subject = _subject()
    try:
        body, headers = modern("tools/call", {"name": "qe_test_generate", "arguments": {
            "source": HANG, "module": subject, "verify": True, "oracle": "static", "background": True}})
        status, _, raw = request(srv, "POST", body=body, headers=headers)
        assert status == 200, raw
        task_id = json.loads(raw)["result"]["structuredContent"]["taskId"]
        _wait_for(lambda: _runs_of(subject), 30, "no pytest run started")
        started = time.monotonic()
        drained = cli(srv, "pool", "drain", "--timeout", "2")
        assert drained.returncode == 0, drained.stderr
        assert srv.proc.wait(20) == 0
        assert time.monotonic() - started < 15, "the drain outlived its deadline"
        assert not _runs_of(subject)
    finally:
        srv.stop()
    # The stopping server recorded it itself (no restart has run the orphan check yet).
    with contextlib.closing(sqlite3.connect(srv.state / "tasks.db")) as db:
        row = db.execute("SELECT t.status, s.error FROM task t JOIN subtask s ON s.task_id = t.id WHERE t.id = ?",
                         (task_id,)).fetchone()
    assert row[0] == "interrupted" and "stopped before it finished" in row[1]
