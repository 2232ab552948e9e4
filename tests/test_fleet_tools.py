"""The coordination tools through the official client against a real server with real agents."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from tests.conftest import ServerProcess, start_server

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def fleet_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(
        tmp_path_factory.mktemp("fleet"),
        {"fleet": {"agents": {"generalist": 1}, "maxAgents": 3}, "pool": {"minConnections": 1}},
    )
    yield srv
    srv.stop()


def text(result: Any) -> str:
    return "\n".join(b.text for b in result.content if getattr(b, "type", "") == "text")


async def test_status_init_spawn(fleet_server: ServerProcess) -> None:
    async with Client(fleet_server.url) as client:
        status = (await client.call_tool("qe_fleet_status", {})).structured_content
        assert [a["status"] for a in status["agents"]] == ["available"]
        assert status["pool"]["total"] == 1 and status["balancer"]["strategy"] == "least-connections"

        init = await client.call_tool("qe_fleet_init", {"agents": {"generalist": 1, "coverage-analyzer": 1},
                                                         "topology": "mesh"})
        assert not init.is_error, text(init)
        body = init.structured_content
        assert body["topology"] == "mesh" and len(body["started"]) == 1 and len(body["agents"]) == 2
        again = (await client.call_tool("qe_fleet_init", {"agents": {"generalist": 1}})).structured_content
        above = await client.call_tool("qe_fleet_init", {"agents": {"generalist": 1}, "maxAgents": 50})
        assert above.is_error and "above this server's cap (fleet.maxAgents = 3)" in text(above)
        assert again["started"] == [] and again["fleetId"] == body["fleetId"]  # idempotent

        started = time.monotonic()
        spawned = await client.call_tool("qe_agent_spawn", {"type": "quality-analyzer", "capacity": 2})
        assert not spawned.is_error and spawned.structured_content["status"] == "available"
        assert time.monotonic() - started < 2
        refused = await client.call_tool("qe_agent_spawn", {"type": "generalist"})
        assert refused.is_error and "maxAgents = 3" in text(refused)
        verbose = (await client.call_tool("qe_fleet_status", {"verbose": True})).structured_content
        assert {a["type"] for a in verbose["agents"]} == {"generalist", "coverage-analyzer", "quality-analyzer"}
        assert all(a["pid"] for a in verbose["agents"])


async def test_orchestrate_a_tool_over_inputs_and_read_the_results(fleet_server: ServerProcess) -> None:
    inputs = [{"key": f"bulk/{i}", "value": {"n": i}, "namespace": "orch"} for i in range(12)]
    async with Client(fleet_server.url) as client:
        started = time.monotonic()
        accepted = await client.call_tool(
            "qe_task_orchestrate", {"task": {"tool": "qe_memory_store", "inputs": inputs}, "strategy": "parallel"}
        )
        assert time.monotonic() - started < 1.0
        assert not accepted.is_error, text(accepted)
        task_id = accepted.structured_content["taskId"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            task = (await client.call_tool("qe_fleet_status", {"taskId": task_id})).structured_content["task"]
            if task["status"] != "running":
                break
            await asyncio.sleep(0.05)
        assert task["status"] == "completed" and task["completed"] == 12 and task["failed"] == 0
        assert [s["result"]["version"] for s in task["subtasks"]] == [1] * 12
        got = await client.call_tool("qe_memory_retrieve", {"key": "bulk/7", "namespace": "orch"})
        assert got.structured_content["value"] == {"n": 7}
        recent = (await client.call_tool("qe_fleet_status", {})).structured_content["tasks"]
        assert recent[0]["taskId"] == task_id


async def test_orchestrate_waits_with_progress_and_keeps_per_subtask_errors(fleet_server: ServerProcess) -> None:
    seen: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        seen.append(value)

    inputs = [{"key": "ok", "value": 1}, {"key": "", "value": 2}, {"key": "ok2", "value": 3}]
    async with Client(fleet_server.url) as client:
        done = await client.call_tool(
            "qe_task_orchestrate",
            {"task": {"tool": "qe_memory_store", "inputs": inputs}, "strategy": "sequential", "wait": True},
            progress_callback=on_progress,
        )
    task = done.structured_content["task"]
    assert task["status"] == "failed" and task["completed"] == 2 and task["failed"] == 1
    assert [s["status"] for s in task["subtasks"]] == ["completed", "failed", "completed"]
    error = task["subtasks"][1]["error"]
    assert "(argument `key`)" in error and "$." not in error  # the same wording as a direct call
    assert seen == [1, 2, 3]


async def test_orchestrate_bad_requests(fleet_server: ServerProcess) -> None:
    async with Client(fleet_server.url) as client:
        both = await client.call_tool(
            "qe_task_orchestrate", {"task": {"tool": "qe_memory_store", "pipeline": "coverage-gate", "inputs": [{}]}}
        )
        assert both.is_error and "exactly one" in text(both)
        unknown = await client.call_tool("qe_task_orchestrate", {"task": {"pipeline": "nope", "inputs": [{}]}})
        assert unknown.is_error and "coverage-gate" in text(unknown)
        missing = await client.call_tool("qe_task_orchestrate", {"task": {"tool": "qe_nope", "inputs": [{}]}})
        assert missing.is_error and "qe_nope" in text(missing)
        no_task = await client.call_tool("qe_fleet_status", {"taskId": "task-000"})
        assert no_task.is_error and "task-000" in text(no_task)


def test_tasks_survive_a_restart(tmp_path: Path) -> None:
    import http.client

    srv = start_server(tmp_path, {"fleet": {"agents": {"generalist": 1}}})
    body = {
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "qe_task_orchestrate",
                   "arguments": {"task": {"tool": "qe_memory_store", "inputs": [{"key": "a", "value": 1}]},
                                 "wait": True},
                   "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                             "io.modelcontextprotocol/clientCapabilities": {}}},
    }
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "qe_task_orchestrate"}

    def call(server: ServerProcess, payload: dict[str, Any]) -> dict[str, Any]:
        conn = http.client.HTTPConnection(server.host, int(server.port), timeout=10)
        conn.request("POST", "/mcp", json.dumps(payload), headers)
        out = json.loads(conn.getresponse().read())
        conn.close()
        return out["result"]["structuredContent"]

    task_id = call(srv, body)["taskId"]
    assert srv.stop() == 0
    srv = start_server(tmp_path, {"fleet": {"agents": {"generalist": 1}}})
    try:
        body["params"]["name"] = headers["Mcp-Name"] = "qe_fleet_status"
        body["params"]["arguments"] = {"taskId": task_id}
        task = call(srv, body)["task"]
        assert task["status"] == "completed" and task["subtasks"][0]["result"]["version"] == 1
    finally:
        srv.stop()


def test_agents_do_not_outlive_a_killed_server(tmp_path: Path) -> None:
    import signal

    srv = start_server(tmp_path, {"fleet": {"agents": {"generalist": 2}}})
    family = _descendants(srv.proc.pid)
    assert len(family) >= 3  # the forkserver and two agents
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(5)
    deadline = time.monotonic() + 10
    alive = family
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if _running(p)]
    assert alive == [], f"still running after the server was killed: {alive}"


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1])
            except (FileNotFoundError, IndexError, ValueError):
                pass
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def _running(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False
