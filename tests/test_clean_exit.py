"""Clean exits of real server processes: every socket they created is gone, and the last word is "stopped" with
a summary, on drain, SIGTERM and (stdio) the end of stdin; and the JSON log format, one object per line."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ServerProcess, start_server, write_config
from tests.test_http_edges import modern, request

STOPPED = "stopped: {n} requests served in "


def sockets(state: Path) -> list[Path]:
    return sorted(state.rglob("*.sock"))


def serve_some(srv: ServerProcess, count: int) -> None:
    body, hdrs = modern("tools/list")
    for _ in range(count):
        assert request(srv, "POST", body=body, headers=hdrs)[0] == 200


def test_sigterm_removes_every_socket_and_logs_stopped_as_json_lines(tmp_path: Path) -> None:
    srv = start_server(tmp_path, {"server": {"logFormat": "json"}, "fleet": {"agents": {"generalist": 2}}})
    try:
        serve_some(srv, 3)
        made = sockets(srv.state)
        assert any(p.name == "control.sock" for p in made) and any(p.name.startswith("agent-") for p in made)
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(20) == 0
    finally:
        srv.stop()
    assert sockets(srv.state) == []
    lines = [json.loads(line) for line in srv.log.splitlines() if line.strip()]
    assert all(set(line) >= {"time", "level", "logger", "message"} for line in lines), lines
    assert lines[-1]["level"] == "info" and lines[-1]["message"].startswith(STOPPED.format(n=3)), lines[-1]
    assert any("listening on" in line["message"] for line in lines)


def test_drain_removes_every_socket_and_logs_stopped(tmp_path: Path) -> None:
    srv = start_server(tmp_path, {"fleet": {"agents": {"generalist": 1}}})
    try:
        serve_some(srv, 2)
        assert sockets(srv.state)
        done = subprocess.run(
            [sys.executable, "-m", "qe_appliance.cli", "mcp", "pool", "drain", "--config",
             str(tmp_path / "qe-mcp.yaml")], capture_output=True, text=True, timeout=30,
        )
        assert done.returncode == 0, done.stderr
        assert srv.proc.wait(20) == 0
    finally:
        srv.stop()
    assert sockets(srv.state) == []
    last = srv.log.strip().splitlines()[-1]
    assert STOPPED.format(n=2) in last and "INFO aqe_mcp:" in last, last


def test_stdio_end_of_input_removes_its_admin_socket_and_logs_stopped(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = write_config(tmp_path / "qe-mcp.yaml", state, {"server": {"stdioControlSocket": True}})
    proc = subprocess.Popen(
        [sys.executable, "-m", "qe_appliance.cli", "mcp", "start", "--stdio", "--config", str(config)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {}}
    proc.stdin.write(json.dumps(ping).encode() + b"\n")
    proc.stdin.flush()
    assert json.loads(proc.stdout.readline())["id"] == 1
    deadline = time.monotonic() + 10
    while not (state / "control.sock").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (state / "control.sock").exists()
    proc.stdin.close()
    assert proc.wait(20) == 0
    assert proc.stderr is not None
    err = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    assert sockets(state) == []
    assert STOPPED.format(n=1) in err.decode().strip().splitlines()[-1]
