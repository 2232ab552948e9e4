"""The official TypeScript SDK drives a task (issue 15): `client.experimental.tasks.callToolStream` sends a
task-augmented qe_test_generate call with verify and streams it to its result (taskCreated, taskStatus, result),
then tasks/get, tasks/result and tasks/list answer for it. Node 22 and the SDK come from bench/node_peer.py."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.components import missing
from tests.conftest import ServerProcess, start_server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import node_peer  # noqa: E402

SCRIPT = Path(__file__).resolve().parent / "ts" / "tasks_client.cjs"
SOURCE = "def bump(x: int) -> int:\n    return x + 1\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path_factory.mktemp("ts"), {"server": {"allowUnauthenticatedCodeExecution": True}})
    yield srv
    srv.stop()


def test_the_typescript_sdk_streams_a_task_to_its_result_and_reads_it_back(server: ServerProcess) -> None:
    try:
        runtime = node_peer.ensure()
    except node_peer.NodeSetupError as exc:
        missing(f"Node 22 with @modelcontextprotocol/sdk ({exc})", "npm")
    arguments = json.dumps({"source": SOURCE, "verify": True, "oracle": "static"})
    done = subprocess.run(runtime.command(SCRIPT, server.url, arguments), env=runtime.env(), capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["capabilities"] == {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}
    assert seen["taskSupport"] == "optional"
    assert seen["messages"][0] == "taskCreated" and seen["messages"][-1] == "result"
    result = seen["result"]
    assert result["isError"] is False and result["structuredContent"]["verification"]["passed"] > 0
    assert result["_meta"]["io.modelcontextprotocol/related-task"] == {"taskId": seen["taskId"]}
    assert seen["task"]["status"] == "completed" and seen["task"]["taskId"] == seen["taskId"]
    assert seen["taskResult"]["structuredContent"] == result["structuredContent"]
    assert seen["listed"] == [seen["taskId"]]
