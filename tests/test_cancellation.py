"""Cancellation stops the work (issue 17 item 2): a verification run whose tests hang in C code (where no
Python-level timer reaches) is killed on the agent when the caller cancels, closes the connection or the
call times out, and when the server's process group is killed with SIGKILL; the fleet's in-flight count
returns to 0. Processes are found by scanning /proc for the run's unique module name."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from tests.conftest import LISTENING, ServerProcess, start_server, write_config
from tests.test_http_edges import modern, request

# Exponential backtracking inside one C call: SIGALRM handlers and watcher threads never get to run.
HANG = 'import re\n\n\ndef stall(x: int) -> int:\n    re.match(r"(a+)+$", "a" * 64 + "b")\n    return x\n'
OPEN = {"allowUnauthenticatedCodeExecution": True}


def _subject() -> str:
    return f"hang_{secrets.token_hex(6)}"


def _runs_of(subject: str) -> list[int]:
    """Processes of the verification runs of `subject` (their environment names it), wherever they are."""
    marker = f"AQE_TESTGEN_SUBJECT={subject}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in environ.split(b"\0") and state != "Z":
            found.append(int(entry.name))
    return found


def _wait_for(condition: Any, seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} within {seconds:g} s")


def _in_flight(server: ServerProcess) -> tuple[int, int]:
    """(in-flight calls over all agents, pool connections in use) from qe_fleet_status."""
    body, headers = modern("tools/call", {"name": "qe_fleet_status", "arguments": {}})
    status, _, raw = request(server, "POST", body=body, headers=headers)
    assert status == 200, raw
    fleet = json.loads(raw)["result"]["structuredContent"]
    return sum(agent.get("inFlight") or 0 for agent in fleet["agents"]), fleet["pool"]["inUse"]


def _assert_stopped(server: ServerProcess, subject: str) -> None:
    _wait_for(lambda: not _runs_of(subject), 2.5, f"the pytest run of {subject} was not killed")
    _wait_for(lambda: _in_flight(server) == (0, 0), 2.5, "inFlight and pool inUse did not return to 0")


def _generate(subject: str) -> dict[str, Any]:
    # Static: these tests are about the verify run's pytest process (the observation child has its own test).
    return {"source": HANG, "module": subject, "verify": True, "oracle": "static"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path_factory.mktemp("cancel"), {"server": OPEN})
    yield srv
    srv.stop()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_cancelled_verify_call_stops_its_pytest_run(server: ServerProcess, mode: str) -> None:
    subject = _subject()
    async with Client(server.url, mode=mode) as client:
        async with anyio.create_task_group() as group:
            group.start_soon(client.call_tool, "qe_test_generate", _generate(subject))
            await anyio.to_thread.run_sync(_wait_for, lambda: _runs_of(subject), 30, "no pytest run started")
            group.cancel_scope.cancel()  # the SDK sends notifications/cancelled (legacy) or drops the stream
        await anyio.to_thread.run_sync(_assert_stopped, server, subject)
        # The fleet still serves: the next call runs.
        again = await client.call_tool("qe_test_generate", {"source": "def one() -> int:\n    return 1\n"})
        assert not again.is_error


@pytest.mark.anyio
async def test_a_cancelled_observed_call_stops_its_observation_child(server: ServerProcess) -> None:
    subject = _subject()
    arguments = {"source": HANG, "module": subject, "oracle": "observed", "budgetSeconds": 20}
    async with Client(server.url) as client:
        async with anyio.create_task_group() as group:
            group.start_soon(client.call_tool, "qe_test_generate", arguments)
            await anyio.to_thread.run_sync(_wait_for, lambda: _runs_of(subject), 30, "no observation started")
            group.cancel_scope.cancel()
        await anyio.to_thread.run_sync(_assert_stopped, server, subject)


def test_closing_the_connection_stops_the_pytest_run(server: ServerProcess) -> None:
    subject = _subject()
    body, headers = modern("tools/call", {"name": "qe_test_generate", "arguments": _generate(subject)})
    data = json.dumps(body).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection((server.host, int(server.port)), timeout=10) as sock:
        sock.sendall(
            f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Accept: application/json, text/event-stream\r\n{head}Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        _wait_for(lambda: _runs_of(subject), 30, "no pytest run started")
    _assert_stopped(server, subject)


def test_a_timed_out_verify_call_stops_its_pytest_run(tmp_path: Path) -> None:
    srv = start_server(tmp_path, {"server": OPEN, "tools": {"qe_test_generate": {"timeoutMs": 4000}}})
    try:
        subject = _subject()
        body, headers = modern("tools/call", {"name": "qe_test_generate", "arguments": _generate(subject)})
        answered: list[tuple[int, bytes]] = []

        def call() -> None:
            status, _, raw = request(srv, "POST", body=body, headers=headers)
            answered.append((status, raw))

        caller = threading.Thread(target=call)
        caller.start()
        _wait_for(lambda: _runs_of(subject), 30, "no pytest run started")
        caller.join(20)
        assert answered, "the call was not answered after its deadline"
        status, raw = answered[0]
        assert status == 200, raw
        _assert_stopped(srv, subject)
    finally:
        srv.stop()


def test_kill_9_of_the_server_process_group_leaves_no_pytest_running(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = write_config(tmp_path / "qe-mcp.yaml", state, {"server": OPEN})
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qe_appliance.cli", "mcp", "start", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, as systemd gives it, so killpg hits only it
        )
    try:
        found = _wait_for(lambda: LISTENING.search(log_path.read_text(errors="replace")), 20, "no server")
        server = ServerProcess(proc, log_path, found.group(1), state)
        subject = _subject()
        body, headers = modern("tools/call", {"name": "qe_test_generate", "arguments": _generate(subject)})

        def call() -> None:
            try:
                request(server, "POST", body=body, headers=headers)
            except OSError:
                pass  # the server is killed under it

        threading.Thread(target=call, daemon=True).start()
        _wait_for(lambda: _runs_of(subject), 30, "no pytest run started")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
        _wait_for(lambda: not _runs_of(subject), 2.5, "the pytest run outlived its killed server")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
