"""server.workers: several server processes on one port under a supervisor (the process systemd sees), each
serving requests; a killed worker is restarted; reload and drain reach every worker; the admin socket sums."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import ServerProcess, write_config
from mcp import Client
from test_http_edges import modern, request
from test_systemd import NotifySocket

from qe_appliance.config import ConfigError, load_config

SUPERVISING = re.compile(r"supervising (\d+) workers on (http://\S+/mcp)")


def test_workers_is_validated_at_its_key(tmp_path: Path) -> None:
    for value, words in (("0", "between 1 and 256"), ("many", "an integer or `auto`")):
        path = tmp_path / "bad.yaml"
        path.write_text(f"server:\n  workers: {value}\n")
        with pytest.raises(ConfigError) as caught:
            load_config(str(path))
        assert "server.workers" in str(caught.value) and words in str(caught.value), str(caught.value)
    path.write_text("server:\n  workers: auto\n")
    assert load_config(str(path)).server.workers == "auto"


def _admin(config: Path, *words: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "qe_appliance.cli", "mcp", *words, "--json", "--config", str(config)],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return json.loads(done.stdout)


def _wait(predicate: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _tools_list(srv: ServerProcess) -> None:
    envelope, headers = modern("tools/list")
    status, _, raw = request(srv, "POST", body=envelope, headers=headers)  # a new connection each time
    assert status == 200 and b'"qe_memory_store"' in raw, raw


@contextlib.contextmanager
def _two_workers(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, ServerProcess]]:
    state = tmp_path / "state"
    config = write_config(tmp_path / "qe-mcp.yaml", state, {"server": {"workers": 2}})
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qe_appliance.cli", "mcp", "start", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        match = _wait(lambda: SUPERVISING.search(log_path.read_text(errors="replace")) or proc.poll() is not None,
                      "the supervisor to report its workers ready", 60)
        assert proc.poll() is None, log_path.read_text(errors="replace")
        assert match.group(1) == "2"
        yield proc, config, ServerProcess(proc, log_path, match.group(2), state)
    finally:
        if proc.poll() is None:
            proc.kill()  # the workers die with it (and drain)
            proc.wait(10)
        time.sleep(0.5)


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, ServerProcess]]:
    with _two_workers(tmp_path) as started:
        yield started


def test_two_workers_serve_restart_reload_and_drain(two_workers: Any) -> None:
    proc, config, srv = two_workers
    status = _admin(config, "status")
    assert status["workers"] == 2 and status["state"] == "ready"
    pids = {w["pid"] for w in status["perWorker"]}
    assert len(pids) == 2 and proc.pid not in pids
    assert status["agents"] == sum(w["agents"] for w in status["perWorker"]) >= 2  # each its own share

    # The kernel spreads new connections over both workers (SO_REUSEPORT).
    for _ in range(60):
        _tools_list(srv)
    status = _admin(config, "status")
    served = [w["requests"] for w in status["perWorker"]]
    assert all(n > 0 for n in served) and sum(served) == status["requests"] >= 60, status

    # /metrics, whichever worker answers, is the sum over both; what is per agent carries its worker.
    for _ in range(4):
        _, _, text = request(srv, "GET", "/metrics")
        calls = re.search(rb'aqe_mcp_requests_total\{method="tools/list"[^}]*\} ([0-9.e+]+)', text)
        assert calls is not None and float(calls.group(1)) >= 60, text[:2000]
        assert b'aqe_mcp_agent_capacity{worker="1",agent="agent-1"}' in text
        assert b'aqe_mcp_agent_capacity{worker="2",agent="agent-1"}' in text
        assert text.count(b"# TYPE aqe_mcp_requests_total counter") == 1

    _dashboard_sums_both_workers(srv, config)

    # The official client, through whichever worker it lands on.
    async def call() -> Any:
        async with Client(srv.url) as client:
            return await client.call_tool("qe_memory_store", {"key": "w/1", "value": {"ok": True}})

    import asyncio

    assert not asyncio.run(call()).is_error

    # kill -9 of a worker: the supervisor starts another in its place; service goes on meanwhile.
    victim = status["perWorker"][0]
    os.kill(victim["pid"], signal.SIGKILL)
    # Connections the kernel had already queued on the dead worker's socket are reset with it (SO_REUSEPORT
    # gives each worker its own accept queue); once it is gone, the other worker takes every new one.
    _wait(lambda: _gone(victim["pid"]), "the killed worker to exit")
    for _ in range(10):
        _tools_list(srv)

    def replaced() -> Any:
        now = _admin(config, "status")["perWorker"][0]
        return now if now["pid"] != victim["pid"] and now.get("state") == "ready" else None

    again = _wait(replaced, "the killed worker to be replaced")
    assert again["restarts"] == 1
    pids = {w["pid"] for w in _admin(config, "status")["perWorker"]}
    assert f"worker 1 (pid {victim['pid']}) exited" in srv.log

    # Reload (the CLI, then SIGHUP) reaches both workers.
    report = _admin(config, "reload")
    assert report["ok"] and [w["ok"] for w in report["workers"]] == [True, True], report
    before = srv.log.count("reload: ")
    proc.send_signal(signal.SIGHUP)
    _wait(lambda: srv.log.count("reload: ") >= before + 2, "both workers to log their reload")

    # Drain: both workers drain and stop, then the supervisor exits 0.
    answer = _admin(config, "pool", "drain")
    assert answer["draining"] and answer["workers"] == 2
    assert proc.wait(60) == 0
    log = srv.log
    assert log.count("stopped: ") == 3, log  # two workers, then the supervisor
    assert all(_gone(pid) for pid in pids)


def _dashboard_sums_both_workers(srv: ServerProcess, config: Path) -> None:
    """/dashboard.json (and `metrics --dashboard`, and the aqe://dashboard resource), whichever worker serves it,
    counts every worker's calls, with percentiles from the merged histograms, and a row per worker."""
    calls = 40
    for n in range(calls):  # a new connection each: the kernel spreads them over both workers
        envelope, headers = modern("tools/call", {"name": "qe_memory_store",
                                                  "arguments": {"key": f"d/{n}", "value": n}}, n + 1)
        status, _, raw = request(srv, "POST", body=envelope, headers=headers)
        assert status == 200 and b'"isError":false' in raw.replace(b" ", b""), raw
    views = []
    for _ in range(6):
        status, _, raw = request(srv, "GET", "/dashboard.json")
        assert status == 200, raw
        views.append(json.loads(raw))
    views.append(_admin(config, "metrics", "--dashboard"))
    body, headers = modern("resources/read", {"uri": "aqe://dashboard"})
    headers["Mcp-Name"] = "aqe://dashboard"
    status, _, raw = request(srv, "POST", body=body, headers=headers)  # the MCP resource, summed the same way
    assert status == 200, raw
    views.append(json.loads(json.loads(raw)["result"]["contents"][0]["text"]))
    for view in views:
        rows = view["workers"]
        assert [row["worker"] for row in rows] == [1, 2] and all(row["requests"] > 0 for row in rows), rows
        assert sum(row["requests"] for row in rows) == view["requests"]["total"], view
        assert len({row["pid"] for row in rows}) == 2 and all(row["agents"] >= 1 for row in rows), rows
        store = next(row for row in view["tools"] if row["tool"] == "qe_memory_store")
        assert store["calls"] == store["callsTotal"] == calls, store
        assert view["latency"]["calls"] >= calls, view["latency"]
        latency = view["latency"]
        assert 0 < latency["p50Ms"] <= latency["p95Ms"] <= latency["p99Ms"] <= latency["maxMs"], latency
        assert {agent["worker"] for agent in view["agents"]} == {1, 2}, view["agents"]
        assert view["pool"]["inUse"] + view["pool"]["available"] == view["pool"]["total"], view["pool"]
    # `metrics --export json` (what `metrics` prints): counters summed, histograms merged, agents per worker.
    families = _admin(config, "metrics", "--export", "json")["metrics"]
    total = families["aqe_mcp_tool_calls_total"]["samples"]
    assert [s["value"] for s in total if s["labels"] == {"tool": "qe_memory_store"}] == [calls], total
    durations = [s for s in families["aqe_mcp_tool_duration_seconds"]["samples"]
                 if s["labels"]["tool"] == "qe_memory_store"]
    assert len(durations) == 1 and durations[0]["count"] == durations[0]["buckets"]["+Inf"] == calls, durations
    assert 0 < durations[0]["p50"] <= durations[0]["p99"] <= durations[0]["max"], durations
    capacity = families["aqe_mcp_agent_capacity"]["samples"]
    assert {(s["labels"]["worker"], s["labels"]["agent"]) for s in capacity} >= {("1", "agent-1"), ("2", "agent-1")}
    # Each worker served a share of the calls; the dashboard's rows are what each worker itself counts.
    status = _admin(config, "status")
    assert {w["pid"] for w in status["perWorker"]} == {row["pid"] for row in views[-1]["workers"]}


def _gone(pid: int) -> bool:
    """Exited: reaped, or a zombie in every thread (a process's sockets close with its last thread, and the
    leader of a killed process with threads is a zombie before the others have exited)."""
    try:
        states = [(task / "stat").read_text().rsplit(")", 1)[1].split()[0]
                  for task in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return True
    return all(state in "ZX" for state in states)


def test_a_dashboard_of_two_workers_is_that_of_one_server_seeing_every_call() -> None:
    """Percentiles from the merged histograms equal those of one Monitor that saw every call (not an average of
    the workers'); counts add up; a worker that did not answer has a row saying why."""
    from qe_appliance.config import Config
    from qe_appliance.monitoring import Monitor
    from qe_appliance.monitoring.dashboard import combine

    config = Config()
    workers, whole = [Monitor(config), Monitor(config)], Monitor(config)
    for n in range(300):  # worker 1 fast, worker 2 slow: an average of their p95s would be far off
        seconds = 0.001 * (1 + n % 7) if n % 2 else 0.2 + 0.001 * (n % 11)
        outcome = "server-error" if n % 50 == 0 else "ok"
        for monitor in (workers[n % 2], whole):
            monitor.record_request("tools/call", seconds, "server" if outcome != "ok" else None)
            monitor.record_tool("qe_memory_store", seconds, outcome)
    answers = [{**monitor.dashboard_parts(), "worker": i} for i, monitor in enumerate(workers, start=1)]
    answers.append({"worker": 3, "pid": 4242, "ok": False, "error": "worker 3 is not running"})
    summed, alone = combine(msgspec.json.decode(msgspec.json.encode(answers)), config), whole.dashboard()
    assert summed["latency"] == alone["latency"] and summed["tools"] == alone["tools"], (summed, alone)
    assert summed["requests"]["total"] == alone["requests"]["total"] == 300
    assert summed["errors"] == alone["errors"] and summed["errors"]["total"] > 0
    assert [row["requests"] for row in summed["workers"][:2]] == [150, 150]
    assert summed["workers"][2] == {"worker": 3, "pid": 4242, "error": "worker 3 is not running"}
    with pytest.raises(ValueError, match="worker 3 is not running"):
        combine(answers[2:], config)


def test_metrics_of_the_workers_merge_into_one_exposition() -> None:
    from qe_appliance.workers import merge_prometheus

    def worker(requests: float, bucket: float, started: float, ratio: float) -> str:
        return "\n".join([
            "# HELP aqe_mcp_requests_total Requests.", "# TYPE aqe_mcp_requests_total counter",
            f'aqe_mcp_requests_total{{method="tools/list"}} {requests}',
            "# HELP aqe_mcp_request_duration_seconds Latency.", "# TYPE aqe_mcp_request_duration_seconds histogram",
            f'aqe_mcp_request_duration_seconds_bucket{{le="0.001"}} {bucket}',
            f'aqe_mcp_request_duration_seconds_bucket{{le="+Inf"}} {requests}',
            "# HELP aqe_mcp_start_time_seconds Start.", "# TYPE aqe_mcp_start_time_seconds gauge",
            f"aqe_mcp_start_time_seconds {started}",
            "# HELP aqe_mcp_build_info Build.", "# TYPE aqe_mcp_build_info gauge",
            'aqe_mcp_build_info{version="3.0.0"} 1.0',
            "# HELP aqe_mcp_http_connections Open.", "# TYPE aqe_mcp_http_connections gauge",
            "aqe_mcp_http_connections 2.0",
            "# HELP aqe_mcp_registry_cache_hit_ratio Ratio.", "# TYPE aqe_mcp_registry_cache_hit_ratio gauge",
            f"aqe_mcp_registry_cache_hit_ratio {ratio}",
            "# HELP aqe_mcp_agent_completed_total Done.", "# TYPE aqe_mcp_agent_completed_total counter",
            'aqe_mcp_agent_completed_total{agent="agent-1"} 3.0',
        ]) + "\n"  # fmt: skip

    merged = merge_prometheus([worker(10, 4, 200.5, 0.5), worker(5, 1, 100.25, 0.75)]).splitlines()
    assert merged.count("# TYPE aqe_mcp_requests_total counter") == 1
    assert 'aqe_mcp_requests_total{method="tools/list"} 15.0' in merged
    assert 'aqe_mcp_request_duration_seconds_bucket{le="0.001"} 5.0' in merged
    assert 'aqe_mcp_request_duration_seconds_bucket{le="+Inf"} 15.0' in merged
    assert "aqe_mcp_start_time_seconds 100.25" in merged  # the earliest
    assert 'aqe_mcp_build_info{version="3.0.0"} 1.0' in merged  # said once
    assert "aqe_mcp_http_connections 4.0" in merged  # shares add up
    assert 'aqe_mcp_registry_cache_hit_ratio{worker="1"} 0.5' in merged  # a ratio stays per worker
    assert 'aqe_mcp_registry_cache_hit_ratio{worker="2"} 0.75' in merged
    assert 'aqe_mcp_agent_completed_total{worker="2",agent="agent-1"} 3.0' in merged  # agent ids repeat


def test_systemd_hears_the_supervisor_alone_and_its_watchdog_stops_with_a_stuck_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = NotifySocket(str(tmp_path / "notify.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    try:
        with _two_workers(tmp_path) as (proc, config, srv):
            ready = manager.next_with("READY")
            assert ready["STATUS"] == f"serving {srv.url} with 2 workers", ready
            assert all(w["state"] == "ready" for w in _admin(config, "status")["perWorker"])
            manager.next_with("WATCHDOG", timeout=5)
            # A worker whose event loop stops answering: no more pings, so systemd would restart the service.
            stuck = _admin(config, "status")["perWorker"][1]["pid"]
            os.kill(stuck, signal.SIGSTOP)
            try:
                deadline = time.monotonic() + 15
                last = time.monotonic()
                while time.monotonic() - last < 2.5:
                    assert time.monotonic() < deadline, "the watchdog kept being pinged with a stuck worker"
                    with contextlib.suppress(AssertionError):
                        manager.next_with("WATCHDOG", timeout=0.5)
                        last = time.monotonic()
            finally:
                os.kill(stuck, signal.SIGCONT)
            manager.next_with("WATCHDOG", timeout=10)  # it answers again
            proc.send_signal(signal.SIGTERM)
            manager.next_with("STOPPING", timeout=10)
            assert proc.wait(60) == 0
        # Only the supervisor spoke: the workers' own READY=1 never reached systemd.
        assert sum("READY" in m for m in manager.messages) == 1, manager.messages
    finally:
        manager.close()
