"""The fleet with real agent processes: pooling, balancing, saturation, and faults (kill -9, hangs)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from qe_appliance.config import apply_overrides, load_config
from qe_appliance.fleet.compute import name_of
from qe_appliance.fleet.runtime import Fleet, FleetError
from qe_appliance.tools.base import ToolError
from tests import agent_functions as fns

pytestmark = pytest.mark.anyio
CAT = "coverage-analysis"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_config(
    tmp: Path,
    fleet: dict[str, Any] | None = None,
    pool: dict[str, Any] | None = None,
    balancer: dict[str, Any] | None = None,
) -> Any:
    import json

    cfg = {
        "server": {"stateDir": str(tmp / "state")},
        "fleet": {"agents": {"generalist": 2}, "preload": ["tests.agent_functions"], **(fleet or {})},
        "pool": {"minConnections": 2, "maxConnections": 8, **(pool or {})},
        "balancer": balancer or {},
    }
    path = tmp / "c.yaml"
    path.write_text(json.dumps(cfg))
    return apply_overrides(load_config(path))


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    f = Fleet(make_config(tmp_path))
    await f.start()
    yield f
    await f.stop(5)


async def run(f: Fleet, fn: Any, payload: Any, timeout: float = 10, idempotent: bool = False) -> Any:
    return await f.run(CAT, name_of(fn), payload, timeout, idempotent=idempotent)


async def test_agents_start_and_the_pool_is_prewarmed(fleet: Fleet) -> None:
    status = fleet.status()
    assert [a["status"] for a in status.agents] == ["available", "available"]
    assert all(a["readyMs"] is not None for a in status.agents)
    assert status.pool.total == 2 and status.pool.available == 2
    result = await run(fleet, fns.echo, {"x": [1, 2, 3]})
    assert result["payload"] == {"x": [1, 2, 3]}
    pids = {a["pid"] for a in status.agents}
    assert result["pid"] in pids and os.getpid() not in pids


async def test_steady_load_reuses_connections(fleet: Fleet) -> None:
    for _ in range(50):
        await asyncio.gather(*(run(fleet, fns.echo, i) for i in range(2)))
    pool = fleet.status().pool
    # Two calls at a time over two agents with two pre-warmed connections: nothing new is opened.
    assert pool.hit_rate is not None and pool.hit_rate >= 0.99 and pool.opened == 2


async def test_capacity_bounds_concurrency_and_calls_queue(fleet: Fleet) -> None:
    started = time.monotonic()
    pids = await asyncio.gather(*(run(fleet, fns.hold, 0.2) for _ in range(6)))
    elapsed = time.monotonic() - started
    # Capacity 1 on each of 2 agents: 6 calls of 0.2 s run in three waves, spread over both agents.
    assert 0.55 < elapsed < 2.0
    assert len(set(pids)) == 2


async def test_saturation_is_a_clear_error(fleet: Fleet) -> None:
    busy = [asyncio.create_task(run(fleet, fns.hold, 0.5)) for _ in range(2)]
    await asyncio.sleep(0.05)
    with pytest.raises(FleetError, match=r"fleet saturated: 2 in flight of 2; retry later"):
        await run(fleet, fns.echo, 1, timeout=0.1)
    await asyncio.gather(*busy)
    assert fleet.status().balancer["saturated"] == 1


async def test_tool_errors_travel_back_and_do_not_eject(fleet: Fleet) -> None:
    for _ in range(8):
        with pytest.raises(ToolError, match="bad input: nope") as err:
            await run(fleet, fns.refuse, "nope")
        assert not isinstance(err.value, FleetError)
    assert not any(a["ejected"] for a in fleet.status().agents)


async def test_repeated_crashes_eject_an_agent_but_never_the_last(tmp_path: Path) -> None:
    f = Fleet(make_config(tmp_path, {"ejectAfterFailures": 2}))
    await f.start()
    try:
        for _ in range(8):
            with pytest.raises(ToolError, match="RuntimeError: the agent hit a bug"):
                await run(f, fns.crash, None)
        agents = f.status().agents
        assert sum(a["ejected"] for a in agents) == 1  # never more than half of two
        assert (await run(f, fns.echo, "still served"))["payload"] == "still served"
    finally:
        await f.stop(5)


async def test_kill_9_under_load_fails_only_the_calls_on_that_agent(fleet: Fleet) -> None:
    victim = fleet.status().agents[0]
    results: list[Any] = []

    async def worker() -> None:
        for _ in range(15):
            try:
                results.append(await run(fleet, fns.hold, 0.02))
            except FleetError as exc:
                results.append(exc)

    load = [asyncio.create_task(worker()) for _ in range(4)]
    await asyncio.sleep(0.1)
    os.kill(victim["pid"], signal.SIGKILL)
    await asyncio.gather(*load)
    failures = [r for r in results if isinstance(r, Exception)]
    assert len(results) == 60
    # Only what was in flight on the victim (capacity 1) fails, with a message that says what happened.
    assert len(failures) <= 1
    assert all("agent" in str(e) and "retry" in str(e) for e in failures)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        agent = next(a for a in fleet.status().agents if a["id"] == victim["id"])
        if agent["status"] == "available" and agent["pid"] != victim["pid"]:
            break
        await asyncio.sleep(0.05)
    assert agent["restarts"] == 1 and agent["pid"] != victim["pid"]
    assert (await run(fleet, fns.echo, "after"))["payload"] == "after"


async def test_idempotent_call_is_retried_elsewhere_when_its_agent_dies(fleet: Fleet) -> None:
    call = asyncio.create_task(run(fleet, fns.hold, 1.0, idempotent=True))
    await asyncio.sleep(0.2)
    busy = [a for a in fleet.status().agents if a["inFlight"] == 1]
    assert len(busy) == 1
    os.kill(busy[0]["pid"], signal.SIGKILL)
    pid = await call
    assert pid != busy[0]["pid"]


async def test_a_hung_agent_times_out_and_is_replaced(fleet: Fleet) -> None:
    with pytest.raises(FleetError, match="timed out after 0.3 s"):
        await run(fleet, fns.hold, 30, timeout=0.3)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(a["restarts"] for a in fleet.status().agents):
        await asyncio.sleep(0.05)
    assert sum(a["restarts"] for a in fleet.status().agents) == 1
    assert (await run(fleet, fns.echo, 1))["payload"] == 1


async def test_spawn_remove_and_limits(tmp_path: Path) -> None:
    f = Fleet(make_config(tmp_path, {"agents": {"coverage-analyzer": 1}, "maxAgents": 2}))
    await f.start()
    try:
        with pytest.raises(FleetError, match="no agent serves test-generation; start one with qe_agent_spawn"):
            await f.run("test-generation", name_of(fns.echo), 1, 1, idempotent=False)
        agent = await f.spawn("test-generator", capacity=2)
        assert agent.status == "available" and agent.ready_ms is not None and agent.ready_ms < 1000
        assert (await f.run("test-generation", name_of(fns.echo), 2, 5, idempotent=False))["payload"] == 2
        with pytest.raises(FleetError, match=r"maxAgents = 2"):
            await f.spawn("generalist")
        with pytest.raises(FleetError, match="unknown agent type 'wizard'"):
            await f.spawn("wizard")
        pid = agent.process.pid
        await f.remove(agent.id)
        deadline = time.monotonic() + 5
        while agent.id in f.agents and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert agent.id not in f.agents  # removed, not restarted
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    finally:
        await f.stop(5)


async def test_idle_connections_expire_down_to_the_minimum(tmp_path: Path) -> None:
    f = Fleet(make_config(tmp_path, pool={"minConnections": 1, "idleTimeoutMs": 200, "healthCheckIntervalMs": 100}))
    await f.start()
    try:
        await asyncio.gather(*(run(f, fns.hold, 0.05) for _ in range(2)))
        assert f.status().pool.total == 2
        await asyncio.sleep(0.6)
        assert f.status().pool.total == 1
    finally:
        await f.stop(5)


async def test_stop_leaves_no_agent_behind(tmp_path: Path) -> None:
    f = Fleet(make_config(tmp_path))
    await f.start()
    pids = [a["pid"] for a in f.status().agents]
    await f.stop(5)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_an_agent_that_stops_answering_leaves_rotation(tmp_path: Path) -> None:
    import json

    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({
        "server": {"stateDir": str(tmp_path / "state")},
        "fleet": {"agents": {"generalist": 2}, "preload": ["tests.agent_functions"]},
        "balancer": {"healthCheckIntervalMs": 100},
        "pool": {"minConnections": 2},
    }))
    f = Fleet(apply_overrides(load_config(path)))
    await f.start()
    try:
        frozen = f.status().agents[0]
        os.kill(frozen["pid"], signal.SIGSTOP)  # alive but silent: only a probe can tell
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(a["restarts"] for a in f.status().agents):
            await asyncio.sleep(0.05)
        agent = next(a for a in f.status().agents if a["id"] == frozen["id"])
        assert agent["restarts"] == 1 and agent["pid"] != frozen["pid"]
        for _ in range(4):
            assert (await run(f, fns.echo, "ok"))["payload"] == "ok"
    finally:
        await f.stop(5)


async def test_the_probe_leaves_an_agent_that_is_busy_with_a_call_alone(tmp_path: Path) -> None:
    f = Fleet(make_config(tmp_path, {"agents": {"generalist": 1}}, {"minConnections": 1},
                          {"healthCheckIntervalMs": 100}))
    await f.start()
    try:
        pid = f.status().agents[0]["pid"]
        call = asyncio.ensure_future(run(f, fns.hold, 3.0, timeout=10))
        await asyncio.sleep(0.3)
        # Busy and silent (as in one long C call holding the GIL) for longer than a probe and the follow-up
        # check wait together (2 s + 1 s).
        os.kill(pid, signal.SIGSTOP)
        await asyncio.sleep(4.0)
        os.kill(pid, signal.SIGCONT)
        assert await call == pid  # the call finished on the same agent: nobody killed it
        assert f.status().agents[0]["restarts"] == 0
    finally:
        await f.stop(5)


async def test_start_ignores_an_agent_left_by_a_killed_server(tmp_path: Path) -> None:
    import socket
    import threading

    from qe_appliance.fleet import rpc

    config = make_config(tmp_path, {"agents": {"generalist": 1}}, {"minConnections": 1})
    runtime = tmp_path / "state" / "run"
    runtime.mkdir(parents=True, mode=0o700)
    # A leftover agent-1 still listening on the path the new agent-1 will use: it answers a ping with its
    # own pid, then hangs up on every later request, as an agent does when it notices its server is gone.
    old = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old.bind(str(runtime / "agent-1.sock"))
    old.listen(16)
    old.settimeout(0.2)
    stop = threading.Event()

    def leftover() -> None:
        answered = False
        while not stop.is_set():
            try:
                conn, _ = old.accept()
            except TimeoutError:
                continue
            with conn:
                raw = rpc.recv_frame(conn)
                if raw is not None and not answered:
                    conn.sendall(rpc.frame(rpc.Result(rpc.call_decoder.decode(raw).id, True, 1)))
                    answered = True

    thread = threading.Thread(target=leftover, daemon=True)
    thread.start()
    f = Fleet(config)
    try:
        await f.start()
        agent = f.status().agents[0]
        assert agent["status"] == "available"
        assert await run(f, fns.hold, 0.0) == agent["pid"]  # the new agent answers, not the leftover
    finally:
        await f.stop(5)
        stop.set()
        thread.join(5)
        old.close()
