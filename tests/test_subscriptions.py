"""subscriptions/listen (2026-07-28, issue 15 item 5): the acknowledgement first, every message tagged with the
subscription id, only the kinds asked for, tools/list_changed after a real SIGHUP reload that changes the tool
list, task status for named tasks, a bounded number of streams, and a graceful end when the server drains.
Through the official client (HTTP and stdio) and raw HTTP, where the client hides the wire."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client, StdioServerParameters
from mcp.shared.subscriptions import ToolsListChanged

from tests.conftest import ServerProcess, start_server, stdio_command
from tests.test_cancellation import HANG, _runs_of, _subject, _wait_for
from tests.test_http_edges import JSON_SSE, modern

SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"
TASKS = "io.modelcontextprotocol/tasks"
SMALL = {"fleet": {"agents": {"generalist": 1}}, "pool": {"minConnections": 1}}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _tasks_capable(body: dict[str, Any]) -> dict[str, Any]:
    body["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"] = {"extensions": {TASKS: {}}}
    return body


@asynccontextmanager
async def listening(srv: ServerProcess, notifications: dict[str, Any], msg_id: Any = 1,
                    tasks: bool = False) -> AsyncIterator[tuple[httpx.Response, anyio.abc.ObjectReceiveStream[Any]]]:
    """A raw subscriptions/listen POST: its response and a stream of the JSON messages of its SSE body."""
    body, headers = modern("subscriptions/listen", {"notifications": notifications}, msg_id)
    if tasks:
        _tasks_capable(body)
    send, receive = anyio.create_memory_object_stream[Any](100)
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=None)) as http, http.stream(
        "POST", srv.url, json=body, headers={**headers, "Accept": JSON_SSE}
    ) as response:
        async def pump() -> None:
            async with send:
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        await send.send(json.loads(line[6:]))

        async with anyio.create_task_group() as group:
            group.start_soon(pump)
            yield response, receive
            group.cancel_scope.cancel()


async def next_message(messages: anyio.abc.ObjectReceiveStream[Any], seconds: float = 20) -> Any:
    with anyio.fail_after(seconds):
        return await messages.receive()


def _reload_without(srv: ServerProcess, tool: str) -> None:
    """Disable `tool` in the server's configuration file and reload it with SIGHUP, as an operator would."""
    path = srv.log_path.parent / "qe-mcp.yaml"
    config = json.loads(path.read_text())
    config.setdefault("tools", {})[tool] = {"enabled": False}
    path.write_text(json.dumps(config))
    srv.proc.send_signal(signal.SIGHUP)


@pytest.mark.anyio
async def test_the_official_client_hears_tools_list_changed_after_a_sighup_reload(tmp_path: Path) -> None:
    srv = await anyio.to_thread.run_sync(lambda: start_server(tmp_path, SMALL))
    try:
        async with Client(srv.url) as client:
            before = {tool.name for tool in (await client.list_tools()).tools}
            assert "qe_learn_status" in before
            async with client.listen(tools_list_changed=True) as subscription:
                assert subscription.honored.tools_list_changed is True
                _reload_without(srv, "qe_learn_status")
                with anyio.fail_after(20):
                    event = await subscription.__anext__()
                assert isinstance(event, ToolsListChanged)
            after = {tool.name for tool in (await client.list_tools()).tools}
            assert after == before - {"qe_learn_status"}
    finally:
        srv.stop()


@pytest.mark.anyio
async def test_acknowledged_first_tagged_filtered_bounded_and_ended_gracefully_by_a_drain(tmp_path: Path) -> None:
    srv = await anyio.to_thread.run_sync(lambda: start_server(tmp_path, {**SMALL, "server": {"maxSubscriptions": 2}}))
    try:
        async with listening(srv, {"toolsListChanged": True}, "tools-sub") as (response, tools), \
                listening(srv, {"promptsListChanged": True, "resourceSubscriptions": ["aqe://tasks/none"]}, 7) as (
                    _, others):
            assert response.status_code == 200 and response.headers["content-type"] == "text/event-stream"
            ack = await next_message(tools)
            assert ack["method"] == "notifications/subscriptions/acknowledged"
            assert ack["params"] == {
                "_meta": {SUBSCRIPTION_ID: "tools-sub"}, "notifications": {"toolsListChanged": True}
            }
            ack = await next_message(others)
            assert ack["params"]["_meta"] == {SUBSCRIPTION_ID: 7}
            assert ack["params"]["notifications"] == {
                "promptsListChanged": True, "resourceSubscriptions": ["aqe://tasks/none"]
            }
            # A third stream is over server.maxSubscriptions.
            body, headers = modern("subscriptions/listen", {"notifications": {"toolsListChanged": True}}, 3)
            async with httpx.AsyncClient() as http:
                refused = await http.post(srv.url, json=body, headers={**headers, "Accept": JSON_SSE})
            assert refused.status_code == 503 and "maxSubscriptions" in refused.json()["error"]["message"]
            _reload_without(srv, "qe_learn_status")
            changed = await next_message(tools)
            assert changed == {"jsonrpc": "2.0", "method": "notifications/tools/list_changed",
                               "params": {"_meta": {SUBSCRIPTION_ID: "tools-sub"}}}
            # The other subscription did not ask for tools: nothing reaches it.
            with pytest.raises(TimeoutError):
                await next_message(others, 1.0)
            # A drain ends both with the answer to their listen request, and is not held up by them.
            started = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            for messages, msg_id in ((tools, "tools-sub"), (others, 7)):
                closed = await next_message(messages)
                assert closed == {"jsonrpc": "2.0", "id": msg_id,
                                  "result": {"resultType": "complete", "_meta": {SUBSCRIPTION_ID: msg_id}}}
            assert await anyio.to_thread.run_sync(lambda: srv.proc.wait(15)) == 0
            assert time.monotonic() - started < 10
    finally:
        srv.stop()


@pytest.mark.anyio
async def test_bad_filters_are_refused_with_what_to_fix(tmp_path: Path) -> None:
    srv = await anyio.to_thread.run_sync(lambda: start_server(tmp_path, SMALL))
    try:
        async with httpx.AsyncClient() as http:
            for notifications, code, text in (
                ({"toolsListChanged": "yes"}, -32602, "true or false"),
                ({"resourceSubscriptions": "aqe://x"}, -32602, "list of strings"),
                ({"taskIds": ["task-1"]}, -32021, TASKS),
            ):
                body, headers = modern("subscriptions/listen", {"notifications": notifications})
                answer = await http.post(srv.url, json=body, headers={**headers, "Accept": JSON_SSE})
                error = answer.json()["error"]
                assert answer.status_code == 400 and error["code"] == code and text in error["message"], error
    finally:
        srv.stop()


@pytest.mark.anyio
async def test_a_subscription_naming_a_task_hears_its_status(tmp_path: Path) -> None:
    srv = await anyio.to_thread.run_sync(
        lambda: start_server(tmp_path, {"server": {"allowUnauthenticatedCodeExecution": True}})
    )
    try:
        subject = _subject()
        body, headers = modern("tools/call", {"name": "qe_test_generate", "arguments": {
            "source": HANG, "module": subject, "verify": True, "oracle": "static"}})
        async with httpx.AsyncClient(timeout=30) as http:
            created = (await http.post(srv.url, json=_tasks_capable(body), headers=headers)).json()["result"]
            assert created["resultType"] == "task" and created["status"] == "working"
            task_id = created["taskId"]
            async with listening(srv, {"taskIds": [task_id]}, "watch", tasks=True) as (_, messages):
                ack = await next_message(messages)
                assert ack["params"]["notifications"] == {"taskIds": [task_id]}
                await anyio.to_thread.run_sync(_wait_for, lambda: _runs_of(subject), 30, "no pytest run started")
                body, headers = modern("tasks/cancel", {"taskId": task_id})
                headers["Mcp-Name"] = task_id
                cancelled = await http.post(srv.url, json=_tasks_capable(body), headers=headers)
                assert cancelled.json()["result"] == {
                    "resultType": "complete", "_meta": cancelled.json()["result"]["_meta"]
                }
                status = await next_message(messages)
                assert status["method"] == "notifications/tasks"
                assert status["params"]["taskId"] == task_id and status["params"]["status"] == "cancelled"
                assert status["params"]["_meta"] == {SUBSCRIPTION_ID: "watch"}
    finally:
        srv.stop()


@pytest.mark.anyio
async def test_listen_over_stdio_is_acknowledged_and_ends_when_the_client_leaves(tmp_path: Path) -> None:
    command, args, env = stdio_command(tmp_path)
    async with Client(StdioServerParameters(command=command, args=args, env=env)) as client:
        async with client.listen(tools_list_changed=True, resources_list_changed=True) as subscription:
            assert subscription.honored.tools_list_changed and subscription.honored.resources_list_changed
        # Leaving sent notifications/cancelled for it; the connection serves on.
        again = await client.call_tool("qe_memory_store", {"key": "k", "value": 1})
        assert not again.is_error
        async with client.listen(prompts_list_changed=True) as second:
            assert second.honored.prompts_list_changed


@pytest.mark.anyio
async def test_resource_updates_and_new_resources_reach_the_subscriptions_that_asked(tmp_path: Path) -> None:
    srv = await anyio.to_thread.run_sync(lambda: start_server(tmp_path, SMALL))
    uri = "aqe://memory/default/run%2F42"
    try:
        async with httpx.AsyncClient(timeout=30) as http, \
                listening(srv, {"resourceSubscriptions": [uri]}, "watch") as (_, watched), \
                listening(srv, {"resourcesListChanged": True}, "lists") as (_, lists):
            assert (await next_message(watched))["method"] == "notifications/subscriptions/acknowledged"
            assert (await next_message(lists))["method"] == "notifications/subscriptions/acknowledged"
            for value in ("first", "second"):
                body, headers = modern("tools/call", {"name": "qe_memory_store",
                                                      "arguments": {"key": "run/42", "value": value}})
                assert "error" not in (await http.post(srv.url, json=body, headers=headers)).json()
                updated = await next_message(watched)
                assert updated["method"] == "notifications/resources/updated"
                assert updated["params"] == {"uri": uri, "_meta": {SUBSCRIPTION_ID: "watch"}}
            # The first write made a new resource: the list-changed subscription hears it, once, and no update.
            changed = await next_message(lists)
            assert changed["method"] == "notifications/resources/list_changed"
            assert changed["params"]["_meta"] == {SUBSCRIPTION_ID: "lists"}
            with pytest.raises(TimeoutError):
                await next_message(lists, 1.0)
    finally:
        srv.stop()
