"""Several instances behind HAProxy on one PostgreSQL store, run as an operator runs them: three real
`aqe-v3 mcp start` processes, Debian's HAProxy with deploy/haproxy/haproxy.cfg, a real cluster, the official
MCP client in both eras, kill -9 and drain under load from four clients, and an orchestrated task whose
instance dies mid-run."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from pg import Blocking, PostgresServer, close_pg_stores, open_pg_stores
from scaleout import HAPROXY, REPO, SHIPPED, Cluster, Proxy, wait_for

from tests.components import missing
from tests.conftest import ServerProcess, start_server
from tests.test_control import cli, cli_json
from tests.test_http_edges import initialize, legacy, modern, request

CHECK_INTERVAL_S = 1.0  # `inter` in the shipped file
# Files measured by each CPU-bound subtask (about 0.1 s of CPU each): enough that the kill -9 test catches A
# holding a subtask (a shorter one may end between the look that shows it running and the kill).
FILES = 6


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer) -> Iterator[Cluster]:
    """Shared by the tests below in file order; the kill -9 test, which takes an instance away, comes last."""
    group = Cluster(tmp_path_factory.mktemp("cluster"), postgres)
    yield group
    group.stop()


def structured(body: bytes) -> dict[str, Any]:
    """structuredContent of a JSON or SSE tools/call answer."""
    text = body.decode()
    if text.startswith("event:") or text.startswith("data:"):
        text = [line[5:] for line in text.splitlines() if line.startswith("data:")][-1]
    result = json.loads(text)["result"]
    assert not result.get("isError"), result
    return dict(result["structuredContent"])


def call(target: Any, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    body, headers = modern("tools/call", {"name": name, "arguments": arguments})
    status, _, raw = request(target, "POST", body=body, headers=headers, timeout=30)
    assert status == 200, raw
    return structured(raw)


class Load:
    """Four clients writing through HAProxy as fast as they are answered; every request is timed and kept."""

    def __init__(self, proxy: Proxy, clients: int = 4) -> None:
        self.proxy = proxy
        self.acked: list[str] = []
        self.failures: list[tuple[float, float, str]] = []  # (sent, answered, why)
        self.sent = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(clients)]
        for thread in self._threads:
            thread.start()

    def _client(self, n: int) -> None:
        conn = http.client.HTTPConnection(self.proxy.host, self.proxy.port, timeout=30)
        seq = 0
        while not self._stop.is_set():
            seq += 1
            key = f"load/{n}/{seq}"
            body, headers = modern("tools/call", {"name": "qe_memory_store", "arguments": {"key": key, "value": seq}})
            headers.update({"Content-Type": "application/json", "Accept": "application/json, text/event-stream"})
            sent = time.monotonic()
            self.sent += 1
            try:
                conn.request("POST", "/mcp", json.dumps(body), headers)
                response = conn.getresponse()
                raw = response.read()
                if response.status == 200 and structured(raw)["persisted"] is True:
                    self.acked.append(key)
                    continue
                why = f"HTTP {response.status}: {raw[:200]!r}"
            except (OSError, http.client.HTTPException, AssertionError, ValueError) as exc:
                why = f"{type(exc).__name__}: {exc}"
            self.failures.append((sent, time.monotonic(), why))
            conn.close()
            conn = http.client.HTTPConnection(self.proxy.host, self.proxy.port, timeout=30)

    def started(self, acked: int) -> None:
        wait_for(lambda: len(self.acked) >= acked or self.failures, 30, "the load to get going")
        assert self.failures == [], self.failures[:3]

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def stored_keys(postgres: PostgresServer, srv: ServerProcess) -> set[str]:
    """Every key the load wrote, read straight from the database the instances share."""
    database = json.loads((srv.log_path.parent / "qe-mcp.yaml").read_text())["store"]["url"].rsplit("/", 1)[1]
    keys = postgres.execute("SELECT array_agg(key) FROM memory_entries WHERE key LIKE 'load/%'", database=database)
    return set(keys or [])


def test_the_official_client_through_haproxy_in_both_eras_sees_one_store(cluster: Cluster) -> None:
    proxy = cluster.proxy
    assert proxy is not None
    a, b, c = cluster.instances

    async def session() -> None:
        # A write through one instance is read through another, and through the proxy.
        async with Client(a.url) as one, Client(b.url) as other:
            stored = await one.call_tool("qe_memory_store", {"key": "shared/1", "value": {"from": "a"}})
            assert stored.structured_content["persisted"] is True
            got = await other.call_tool("qe_memory_retrieve", {"key": "shared/1"})
            assert got.structured_content["value"] == {"from": "a"}
        async with Client(proxy.url) as modern_client:
            got = await modern_client.call_tool("qe_memory_retrieve", {"key": "shared/1"})
            assert got.structured_content["value"] == {"from": "a"}
            for n in range(6):  # spread over the instances by leastconn; every one serves the same store
                await modern_client.call_tool("qe_memory_store", {"key": f"modern/{n}", "value": n})
        # A handshake-era session lives on one instance: the proxy keeps it there (stick on Mcp-Session-Id),
        # else its later requests would meet instances that never issued it (404).
        async with Client(proxy.url, mode="legacy") as legacy:
            for n in range(8):
                await legacy.call_tool("qe_memory_store", {"key": f"legacy/{n}", "value": n})
            listed = await legacy.call_tool("qe_memory_search", {"prefix": "modern/", "limit": 50})
            assert listed.structured_content["total"] == 6
        async with Client(c.url) as third:
            got = await third.call_tool("qe_memory_retrieve", {"key": "legacy/7"})
            assert got.structured_content["value"] == 7

    anyio.run(session)
    assert proxy.status() == {"aqe0": "UP", "aqe1": "UP", "aqe2": "UP"}


def test_a_task_waited_for_through_the_proxy_reports_progress_and_the_fleet_view_shows_every_instance(
    cluster: Cluster,
) -> None:
    proxy = cluster.proxy
    assert proxy is not None
    seen: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        seen.append(value)

    async def session() -> dict[str, Any]:
        async with Client(proxy.url) as client:
            done = await client.call_tool(
                "qe_task_orchestrate",
                {"task": {"tool": "qe_memory_store", "inputs": [{"key": f"w/{i}", "value": i} for i in range(6)]},
                 "wait": True},
                progress_callback=on_progress,
            )
            return dict(done.structured_content)

    done = anyio.run(session)
    task = done["task"]
    assert task["status"] == "completed" and task["completed"] == 6, task
    assert all(sub["attempts"] == 1 and sub["instance"] for sub in task["subtasks"])
    assert seen and seen[-1] == 6 and seen == sorted(seen)
    # Every instance reports its fleet; each one's view is the same three, itself marked.
    views = [call(srv, "qe_fleet_status", {})["instances"] for srv in cluster.instances]
    for srv, view in zip(cluster.instances, views, strict=True):
        assert sorted(v["address"].rsplit(":", 1)[1] for v in view) == sorted(s.port for s in cluster.instances)
        assert [v["address"].endswith(":" + srv.port) for v in view] == [v["self"] for v in view]
        assert all(len(v["agents"]) == 1 and v["agents"][0]["type"] == "generalist" for v in view)
    # `balance agents` lists every instance's agents, labelled: this instance's first.
    first = cluster.instances[0]
    rows = cli_json(first, "balance", "agents")
    assert len(rows) == 3 and rows[0]["instance"].endswith(":" + first.port)
    assert sorted(r["instance"].rsplit(":", 1)[1] for r in rows) == sorted(s.port for s in cluster.instances)


def test_kill_9_under_load_loses_no_acknowledged_write_and_fails_only_until_haproxy_marks_it_down(
    cluster: Cluster, postgres: PostgresServer
) -> None:
    proxy = cluster.proxy
    assert proxy is not None
    victim = cluster.instances[1]
    # Handshake-era sessions made through the proxy: one that lives on the victim, one elsewhere.
    sessions: dict[bool, str] = {}
    for _ in range(30):
        sid = initialize(proxy)
        sessions.setdefault(legacy(victim, sid, "ping")[0] == 200, sid)
        if len(sessions) == 2:
            break
    assert len(sessions) == 2, "leastconn never put a session on the victim"
    load = Load(proxy)
    try:
        load.started(40)
        in_flight_before = load.sent - len(load.acked) - len(load.failures)
        killed = time.monotonic()
        victim.proc.send_signal(signal.SIGKILL)
        down = wait_for(lambda: proxy.status().get("aqe1") not in (None, "UP") and time.monotonic(), 10,
                        "HAProxy to mark the killed instance down", every=0.01)
        acked_at_down = len(load.acked)
        wait_for(lambda: len(load.acked) >= acked_at_down + 60, 30, "the load to go on after the kill")
    finally:
        load.stop()
    victim.proc.wait(5)
    assert down - killed <= CHECK_INTERVAL_S + 1.0, "HAProxy took longer than a check interval to notice"
    # Failures only for requests sent before HAProxy marked the instance down, and no more than the clients'
    # requests in flight plus what they sent within one check interval.
    late = [f for f in load.failures if f[0] > down + 0.05]
    assert late == [], late
    assert len(load.failures) <= 4 + in_flight_before, load.failures
    # Every acknowledged write is in the store.
    missing_keys = set(load.acked) - stored_keys(postgres, cluster.instances[0])
    assert missing_keys == set()
    # The victim's session is gone: the proxy sends its next request elsewhere, which answers 404, and the
    # client initializes again (as the specification intends). Sessions on the other instances go on.
    assert legacy(proxy, sessions[True], "ping")[0] == 404
    assert legacy(proxy, sessions[False], "ping")[0] == 200
    assert legacy(proxy, initialize(proxy), "ping")[0] == 200


def test_pool_drain_of_one_instance_under_load_fails_no_request(tmp_path: Path, postgres: PostgresServer) -> None:
    # The drain grace outlasts a few health checks, so HAProxy takes the instance out before it closes.
    group = Cluster(tmp_path, postgres, {"server": {"drainGraceMs": 3000}})
    try:
        proxy = group.proxy
        assert proxy is not None
        drained = group.instances[2]
        load = Load(proxy)
        try:
            load.started(40)
            done = cli(drained, "pool", "drain", "--timeout", "30")
            assert done.returncode == 0, done.stderr
            wait_for(lambda: proxy.status().get("aqe2") not in (None, "UP"), 5, "HAProxy to take it out")
            assert drained.proc.wait(30) == 0
            after = len(load.acked)
            wait_for(lambda: len(load.acked) >= after + 40, 30, "the load to go on after the drain")
        finally:
            load.stop()
        assert load.failures == []
        assert set(load.acked) <= stored_keys(postgres, group.instances[0])
    finally:
        group.stop()


def test_an_orchestrated_task_survives_kill_9_of_the_instance_it_was_started_on(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    # CPU-bound subtasks: code metrics of a directory of Python files each, on the agents (each directory its
    # own files: an agent keeps what it parsed).
    project = tmp_path / "project"
    source = (REPO / "qe_appliance" / "store" / "postgres.py").read_text()
    for i in range(12):
        (project / f"s{i}").mkdir(parents=True)
        for n in range(FILES):
            (project / f"s{i}" / f"m{n}.py").write_text(source)
    # The task's whole status (12 metrics results) in each answer, not a summary with a link.
    group = Cluster(tmp_path, postgres, {"server": {"workspaceRoots": [str(project)], "maxResultTextBytes": 1 << 24}})
    try:
        a, b, c = group.instances
        accepted = call(a, "qe_task_orchestrate", {
            "task": {"tool": "qe_quality_metrics", "inputs": [{"path": str(project / f"s{i}")} for i in range(12)]}})
        task_id = accepted["taskId"]

        def task_from(srv: ServerProcess) -> dict[str, Any]:
            return dict(call(srv, "qe_fleet_status", {"taskId": task_id})["task"])

        def a_is_mid_run() -> bool:
            subtasks = task_from(b)["subtasks"]
            running_on_a = [s for s in subtasks if s["status"] == "running" and (s["instance"] or "").endswith(
                ":" + a.port)]
            return bool(running_on_a) and any(s["status"] == "completed" for s in subtasks)

        wait_for(a_is_mid_run, 60, "instance A to be running a subtask with others done", every=0.02)
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(5)
        # What A held when it died (a subtask it finished just before is not among them).
        held = {s["index"] for s in task_from(b)["subtasks"] if s["status"] == "running"
                and s["instance"].endswith(":" + a.port)}
        task = wait_for(lambda: (t := task_from(b))["status"] != "running" and t, 90, "the task to finish",
                        every=0.2)
        assert task["status"] == "completed" and task["completed"] == 12 and task["failed"] == 0, task
        # Each result stored once: 12 completions counted for 12 subtasks, every one with its result; those A
        # was running ran again on B or C (a later attempt).
        assert all(s["status"] == "completed" for s in task["subtasks"])
        assert held, "A finished its subtask before it was killed; nothing was left to take over"
        for sub in task["subtasks"]:
            if sub["index"] in held:
                assert sub["attempts"] == 2 and not sub["instance"].endswith(":" + a.port), sub
        assert {len(s["result"]["files"]) for s in task["subtasks"]} == {FILES}
        # B and C show the same task, to the byte.
        assert json.dumps(task_from(b), sort_keys=True) == json.dumps(task_from(c), sort_keys=True)
        # The dead instance leaves the fleet view once its heartbeats stop.
        wait_for(lambda: len(call(b, "qe_fleet_status", {})["instances"]) == 2, 10, "A to leave the fleet view")
    finally:
        group.stop()


def test_rate_limits_key_on_x_forwarded_for_only_from_trusted_proxies(tmp_path: Path) -> None:
    limit = {"rateLimit": {"requestsPerSecond": 0.01, "burst": 2}}
    (tmp_path / "trusting").mkdir()
    (tmp_path / "plain").mkdir()
    trusting = start_server(tmp_path / "trusting", {"server": {**limit, "trustedProxies": ["127.0.0.0/8"]}})
    plain = start_server(tmp_path / "plain", {"server": limit})
    try:
        body, headers = modern("tools/list")

        def status(srv: ServerProcess, client: str) -> int:
            return request(srv, "POST", body=body, headers={**headers, "X-Forwarded-For": client})[0]

        # Behind a trusted proxy each forwarded client has its own bucket.
        assert [status(trusting, "203.0.113.1") for _ in range(3)] == [200, 200, 429]
        assert [status(trusting, "203.0.113.2") for _ in range(2)] == [200, 200]
        # Otherwise the header is ignored: every request is the peer's.
        assert [status(plain, "203.0.113.1"), status(plain, "203.0.113.2"), status(plain, "203.0.113.3")] == [
            200, 200, 429]
    finally:
        trusting.stop()
        plain.stop()


def test_haproxy_accepts_the_shipped_configuration() -> None:
    if not HAPROXY.exists():
        missing("HAProxy", "haproxy")
    checked = subprocess.run([str(HAPROXY), "-c", "-f", str(SHIPPED)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_queue_stores_a_taken_over_subtask_once_and_holds_limits_and_priorities_across_instances(
    postgres: PostgresServer,
) -> None:
    stores, loop = open_pg_stores(postgres.socket_url(postgres.database()))
    queue, tasks = Blocking(stores.queue, loop), Blocking(stores.tasks, loop)
    caller = ("http", True)
    try:
        low = queue.enqueue("qe_memory_store", "parallel", "low", 3, "memory", 2, caller,
                            [{"key": f"l{i}", "value": i} for i in range(4)], ("host", 1))
        urgent = queue.enqueue("qe_memory_store", "sequential", "critical", 0, "memory", 1, caller,
                               [{"key": "u", "value": 0}], ("host", 1))
        room = {"memory": 2}
        # The critical task first; then the low one, whose limit (2) binds across instances.
        first = queue.claim("one", lambda category: room[category], 0.5)
        assert [(c.task_id, c.index) for c in first] == [(urgent, 0), (low, 0)]
        second = queue.claim("two", lambda category: 4, 0.5)
        assert [(c.task_id, c.index) for c in second] == [(low, 1)]
        assert queue.claim("three", lambda category: 4, 0.5) == []
        # "one" stops renewing; once its leases run out, "three" takes its subtasks over as attempt 2.
        queue.renew("two", 30.0)
        taken = wait_for(lambda: queue.claim("three", lambda category: 4, 0.5), 10, "the leases to run out")
        assert sorted((c.task_id, c.index, c.attempt) for c in taken) == sorted([(urgent, 0, 2), (low, 0, 2)])
        # The late first attempt is refused; the second is stored, once.
        late = next(c for c in first if c.task_id == urgent)
        assert queue.finish(late, "one", b'"late"', None) is False
        now = next(c for c in taken if c.task_id == urgent)
        assert queue.finish(now, "three", b'"kept"', None) is True
        assert queue.finish(now, "three", b'"again"', None) is False
        task = tasks.get(urgent)
        assert (task["status"], task["completed"], task["failed"]) == ("completed", 1, 0)
        assert task["subtasks"][0]["result"] == "kept" and task["subtasks"][0]["instance"] == "three"
        # A draining instance claims only from the tasks its own callers wait for.
        mine = queue.enqueue("qe_memory_store", "parallel", "low", 3, "memory", 1, caller, [{"key": "m", "value": 1}],
                             ("host", 1))
        assert queue.claim("five", lambda category: 4, 30.0, [urgent]) == []
        assert [(c.task_id, c.index) for c in queue.claim("five", lambda category: 4, 30.0, [mine])] == [(mine, 0)]
        # A stopping instance hands back what it holds: it is claimable at once, without waiting for a lease.
        assert queue.release("two") == 1
        assert [(c.task_id, c.index) for c in queue.claim("four", lambda category: 1, 0.5)] == [(low, 1)]
    finally:
        close_pg_stores(stores, loop)
