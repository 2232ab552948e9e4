"""The control CLI against a real server: runtime commands, overrides, reload (SIGHUP too), drain."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerProcess, start_server
from tests.test_http_edges import modern, request


def cli(srv: ServerProcess | None, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    cfg = config or (srv.log_path.parent / "qe-mcp.yaml" if srv else None)
    extra = ["--config", str(cfg)] if cfg else []
    return subprocess.run(
        [sys.executable, "-m", "qe_appliance.cli", "mcp", *args, *extra],
        capture_output=True, text=True, timeout=60,
    )


def cli_json(srv: ServerProcess, *args: str) -> Any:
    done = cli(srv, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def rewrite(srv: ServerProcess, **blocks: dict[str, Any]) -> None:
    path = srv.log_path.parent / "qe-mcp.yaml"
    cfg = json.loads(path.read_text())
    for block, values in blocks.items():
        cfg.setdefault(block, {}).update(values)
    path.write_text(json.dumps(cfg))


@pytest.fixture
def srv(tmp_path: Path) -> Any:
    # The load loops below are one client address; the per-client rate limit is tested elsewhere.
    server = start_server(tmp_path, {"fleet": {"agents": {"generalist": 1}}, "pool": {"minConnections": 1},
                                     "server": {"rateLimit": {"requestsPerSecond": 0}}})
    yield server
    server.stop()


def test_runtime_commands_and_overrides(srv: ServerProcess) -> None:
    assert cli_json(srv, "status")["state"] == "ready"
    tools = cli_json(srv, "tools", "list")
    assert len(tools) == 14 and {"name", "category", "execution"} <= tools[0].keys()
    lookup = cli_json(srv, "tools", "lookup", "qe_memroy_store")
    assert lookup["resolved"] == "qe_memory_store" and lookup["fuzzy"] is True
    assert cli_json(srv, "tools", "stats")["totalTools"] == 14
    people = cli(srv, "tools", "list")
    assert people.returncode == 0 and "qe_coverage_gaps" in people.stdout and "category" in people.stdout

    pool = cli_json(srv, "pool", "--configure", "--min", "1", "--max", "7", "--idle-timeout", "120")
    assert pool["maxConnections"] == 7 and pool["overrides"] == {"pool.maxConnections": 7, "pool.idleTimeoutMs": 120000}
    bad = cli(srv, "pool", "configure", "--min", "9", "--max", "3")
    assert bad.returncode == 1 and "--min 9 is larger than --max 3" in bad.stderr

    balance = cli_json(srv, "balance", "--strategy", "round-robin", "--disable")
    assert balance["strategy"] == "round-robin" and balance["enabled"] is False
    assert [a["type"] for a in cli_json(srv, "balance", "agents")] == ["generalist"]
    status = cli_json(srv, "status")
    assert status["overrides"]["balancer.strategy"] == "round-robin"

    # A reload makes the file the truth again: the runtime overrides are gone.
    report = cli_json(srv, "reload")
    assert report["ok"] is True
    assert cli_json(srv, "balance", "status")["strategy"] == "least-connections"
    assert cli_json(srv, "pool", "status")["maxConnections"] == 50
    assert cli_json(srv, "status")["overrides"] == {}


def test_sighup_clears_the_runtime_overrides_too(srv: ServerProcess) -> None:
    cli_json(srv, "balance", "configure", "--strategy", "round-robin")
    cli_json(srv, "balance", "--disable")
    cli_json(srv, "pool", "configure", "--max", "9")
    assert cli_json(srv, "status")["overrides"] == {
        "balancer.strategy": "round-robin", "balancer.enabled": False, "pool.maxConnections": 9
    }
    srv.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while cli_json(srv, "status")["reloads"]["ok"] == 0:
        assert time.monotonic() < deadline, "SIGHUP did not reload"
        time.sleep(0.05)
    # The file is the truth again, and `status` says so: no override is listed that no longer holds.
    assert cli_json(srv, "status")["overrides"] == {}
    balance = cli_json(srv, "balance", "status")
    assert balance["strategy"] == "least-connections" and balance["enabled"] is True and balance["overrides"] == {}
    pool = cli_json(srv, "pool", "status")
    assert pool["maxConnections"] == 50 and pool["overrides"] == {}


def test_reload_applies_changes_and_refuses_a_bad_file(srv: ServerProcess) -> None:
    rewrite(srv, tools={"qe_learn_status": {"enabled": False}}, balancer={"strategy": "response-time"},
            server={"maxBodyBytes": 1000, "port": 1})
    report = cli_json(srv, "reload")
    assert report["ok"] and "server.port" in report["needsRestart"]
    assert "balancer.strategy" in report["applied"] and "tools.qe_learn_status.enabled" in report["applied"]
    assert len(cli_json(srv, "tools", "list")) == 13
    body, hdrs = modern("tools/list")
    status, _, raw = request(srv, "POST", body=body, headers=hdrs)
    assert "qe_learn_status" not in raw.decode()
    big, hdrs = modern("tools/call", {"name": "qe_memory_store", "arguments": {"key": "k", "value": "x" * 2000}})
    assert request(srv, "POST", body=big, headers=hdrs)[0] == 413  # the new body limit is live

    rewrite(srv, pool={"maxConection": 3})
    done = cli(srv, "reload")
    assert done.returncode == 1 and "maxConection" in done.stderr and "running configuration stays" in done.stderr
    assert cli_json(srv, "balance", "status")["strategy"] == "response-time"
    assert cli_json(srv, "status")["reloads"] == {"ok": 1, "failed": 1}


def test_sighup_under_load_fails_no_request(srv: ServerProcess) -> None:
    results: list[int] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            body, hdrs = modern("tools/call", {"name": "qe_memory_retrieve", "arguments": {"key": "k"}})
            results.append(request(srv, "POST", body=body, headers=hdrs)[0])

    workers = [threading.Thread(target=client) for _ in range(2)]
    for w in workers:
        w.start()
    path = srv.log_path.parent / "qe-mcp.yaml"
    good = json.loads(path.read_text())
    try:
        for i in range(20):
            if i == 10:
                path.write_text("pool: [this is not a mapping\n")
            else:
                good["balancer"] = {"strategy": ("round-robin", "least-connections")[i % 2]}
                good.setdefault("pool", {})["maxConnections"] = 20 + i
                path.write_text(json.dumps(good))
            srv.proc.send_signal(signal.SIGHUP)
            time.sleep(0.1)
    finally:
        stop.set()
        for w in workers:
            w.join(10)
    assert results and set(results) == {200}
    status = cli_json(srv, "status")
    assert status["reloads"] == {"ok": 19, "failed": 1}
    assert "refused" in srv.log


def test_drain_leaves_rotation_at_once_serves_through_the_grace_then_finishes_in_flight_work(
    tmp_path: Path,
) -> None:
    grace_s = 1.5
    srv = start_server(tmp_path, {"fleet": {"agents": {"generalist": 1}}, "pool": {"minConnections": 1},
                                  "server": {"drainGraceMs": int(grace_s * 1000)},
                                  "tools": {"qe_quality_metrics": {"execution": "local"}}})
    try:
        body, hdrs = modern("tools/call", {"name": "qe_task_orchestrate", "arguments": {
            "task": {"tool": "qe_memory_store", "inputs": [{"key": f"d{i}", "value": i} for i in range(800)]},
            "strategy": "sequential", "wait": True}})
        # The long call gets a generous client timeout and drain deadline: on a loaded machine its stores
        # may take far longer than a usual request, and the test is about the drain letting it finish.
        slow: list[int] = []
        t = threading.Thread(target=lambda: slow.append(request(srv, "POST", body=body, headers=hdrs, timeout=120)[0]))
        t.start()
        time.sleep(0.05)
        done = cli(srv, "pool", "drain", "--timeout", "120")
        returned = time.monotonic()
        assert done.returncode == 0, done.stderr
        assert t.is_alive()  # the long call is still in flight
        # The moment the command returns, a proxy's health check sees the instance leaving ...
        status, _, raw = request(srv, "GET", "/readyz")
        assert status == 503 and json.loads(raw) == {"status": "draining"}
        # ... while what still arrives during the grace is served, on new connections too.
        served = 0
        list_body, list_hdrs = modern("tools/list")
        while time.monotonic() - returned < grace_s - 0.5:
            assert request(srv, "POST", body=list_body, headers=list_hdrs)[0] == 200
            assert request(srv, "GET", "/readyz")[0] == 503
            served += 1
            time.sleep(0.05)
        assert served >= 5
        t.join(120)
        assert slow == [200]
        assert srv.proc.wait(60) == 0
        # The listener stayed open for the whole grace.
        assert time.monotonic() - returned >= grace_s - 0.2
        assert "still serving for 1.5 s (server.drainGraceMs)" in srv.log
    finally:
        srv.stop()


def test_commands_when_no_server_runs(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"server: {{stateDir: '{tmp_path}/state'}}\n")
    done = cli(None, "pool", "status", config=cfg)
    assert done.returncode == 3 and "control.sock" in done.stderr and "Traceback" not in done.stderr
    usage = cli(None, "tools", "lookup", config=cfg)
    assert usage.returncode in (2, 3)


def test_the_cli_finds_the_server_from_any_directory(tmp_path: Path) -> None:
    """The file's relative stateDir is taken from the file's directory by the server and by the CLI alike,
    whatever directory either runs in; the server warns that it resolved a relative path."""
    etc, server_cwd, operator_cwd = tmp_path / "etc", tmp_path / "srv", tmp_path / "home"
    for directory in (etc, server_cwd, operator_cwd):
        directory.mkdir()
    config = etc / "qe-mcp.yaml"
    config.write_text("server: {port: 0, stateDir: state, drainGraceMs: 100}\nfleet: {agents: {generalist: 1}}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("STATE_DIRECTORY", "RUNTIME_DIRECTORY")}
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "qe_appliance.cli", "mcp", "start", "--config", str(config)],
                                cwd=server_cwd, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL,
                                env=env)
    try:
        deadline = time.monotonic() + 20
        while "listening on" not in log_path.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()
            time.sleep(0.05)
        assert "server.stateDir: the relative path 'state' is taken from the configuration file's directory: " \
            f"{etc / 'state'}" in log_path.read_text()
        assert (etc / "state" / "control.sock").exists() and not (server_cwd / "state").exists()
        done = subprocess.run([sys.executable, "-m", "qe_appliance.cli", "mcp", "status", "--json", "--config",
                               str(config)], cwd=operator_cwd, capture_output=True, text=True, timeout=30, env=env)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["state"] == "ready"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    # With the server gone, exit 3 says where the CLI looked and why.
    done = subprocess.run([sys.executable, "-m", "qe_appliance.cli", "mcp", "status", "--config", str(config)],
                          cwd=operator_cwd, capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 3
    assert f"no aqe-mcp server is listening on {etc / 'state' / 'control.sock'}" in done.stderr
    assert f"looked there because {config} puts it there" in done.stderr
    assert "relative paths in the file are taken from the file's directory" in done.stderr


def test_live_dashboard_draws_and_exits_cleanly_on_ctrl_c(srv: ServerProcess) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "qe_appliance.cli", "mcp", "metrics", "--dashboard",
         "--config", str(srv.log_path.parent / "qe-mcp.yaml")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"},
    )
    time.sleep(2.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "aqe-mcp" in out and "Traceback" not in err
    assert max(len(line) for line in out.splitlines()) <= 80


def test_a_second_sigterm_exits_at_once(tmp_path: Path) -> None:
    srv = start_server(tmp_path, {"fleet": {"agents": {"generalist": 1}}, "pool": {"minConnections": 1}})
    body, hdrs = modern("tools/call", {"name": "qe_task_orchestrate", "arguments": {
        "task": {"tool": "qe_memory_store", "inputs": [{"key": f"s{i}", "value": i} for i in range(5000)]},
        "strategy": "sequential", "wait": True}})
    def slow_call() -> None:
        try:
            request(srv, "POST", body=body, headers=hdrs)
        except OSError:
            pass  # the server is told to exit at once: this call is cut off, as expected

    t = threading.Thread(target=slow_call, daemon=True)
    t.start()
    time.sleep(0.3)
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    started = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    code = srv.proc.wait(10)
    assert time.monotonic() - started < 3 and code != 0
