"""The fleet at run time: spawns and supervises agents, balances calls over them through the pool.

Agents are forked from a forkserver that has the tool modules preloaded, so a new agent is ready in
milliseconds. Each agent's process sentinel is watched on the event loop: a death is noticed at once,
its connections leave the pool, and it is restarted after a back-off that grows with repeated deaths.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Literal

import msgspec

from qe_appliance import sandbox, tracing
from qe_appliance._core.balancer import Balancer
from qe_appliance.config import AGENT_TYPES, Config, runtime_dir
from qe_appliance.fleet import agent as agent_main
from qe_appliance.fleet import forkserver, rpc
from qe_appliance.fleet.pool import (
    AgentConnection,
    AgentGone,
    AgentUnreachable,
    ConnectionPool,
    PoolStats,
    PoolTimeout,
)
from qe_appliance.fleet.waiters import WaitQueue
from qe_appliance.instances import agent_socket, remove_stale_agent_sockets
from qe_appliance.tools.base import ToolError, ToolFault

log = logging.getLogger("aqe_mcp.fleet")

READY_TIMEOUT_S = 10.0
MAX_RESTART_BACKOFF_S = 30.0
MAX_EJECTION_S = 300.0


class FleetError(ToolError):
    """A fleet request refused (unknown agent type, past maxAgents); the message says what to do."""


class FleetFault(FleetError, ToolFault):
    """A call the fleet could not complete (saturated, timed out, agent gone); the message says what to do."""


# starting: launched, not answering yet; available: takes work; suspect: a connection broke, a probe decides;
# draining: being removed, finishes its calls; dead: exited, a restart is scheduled.
AgentStatus = Literal["starting", "available", "suspect", "draining", "dead"]


class Agent(msgspec.Struct):
    id: str
    type: str
    capacity: int
    socket_path: Path
    process: Any = None
    # Set only through Fleet._set_status, which keeps the balancer in step.
    status: AgentStatus = "starting"
    started_at: float = msgspec.field(default_factory=time.time)
    ready_ms: float | None = None
    restarts: int = 0
    backoff_s: float = 0.0

    @property
    def takes_work(self) -> bool:
        """The one answer to "may a call go to this agent?" (the balancer routes to exactly these)."""
        return self.status == "available"

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "categories": sorted(AGENT_TYPES[self.type]),
            "capacity": self.capacity,
            "status": self.status,
            "pid": self.process.pid if self.process is not None else None,
            "startedAt": self.started_at,
            "readyMs": self.ready_ms,
            "restarts": self.restarts,
        }


class FleetStatus(msgspec.Struct, rename="camel", frozen=True):
    """The fleet as qe_fleet_status and `balance agents` show it (camelCase on the wire)."""

    # One entry per agent: its own description merged with the balancer's view of it.
    agents: list[dict[str, Any]]
    pool: PoolStats
    balancer: dict[str, Any]
    fleet_id: str
    topology: str
    max_agents: int


# What qe_fleet_status shows of an agent unless asked to be verbose (and other instances see of it).
AGENT_SUMMARY = ("id", "type", "status", "capacity", "inFlight", "ewmaMs", "completed", "failed")


def agent_summary(agent: dict[str, Any]) -> dict[str, Any]:
    return {k: agent.get(k) for k in AGENT_SUMMARY}


class Fleet:
    def __init__(self, config: Config) -> None:
        self.config = config
        fleet = config.fleet
        self.runtime_dir = runtime_dir(config)
        self.agents: dict[str, Agent] = {}
        self.balancer = Balancer(
            config.balancer.strategy,
            capacity_aware=config.balancer.capacity_aware,
            failures_to_eject=fleet.eject_after_failures,
            base_ejection_s=fleet.base_ejection_ms / 1000,
            max_ejection_s=MAX_EJECTION_S,
        )
        self.pool = ConnectionPool(self._connect, config.pool)
        self._ctx = forkserver.context()
        self._seq = 0
        # Calls waiting for an agent with room, woken one per finished call or new agent.
        self._capacity = WaitQueue()
        self._tasks: list[asyncio.Task[None]] = []
        self.stopping = False
        # True while start() brings the configured agents up: a call no agent serves yet waits for them
        # instead of being refused (a stdio server answers its first messages meanwhile).
        self.warming = False
        self.saturated = 0
        self.fleet_id = "fleet-" + secrets.token_hex(4)
        # Recorded as the caller asked; coordination itself always runs through this server (a hub).
        self.topology = "hierarchical"
        self.max_agents = fleet.max_agents

    # ---- lifecycle ----------------------------------------------------------------------------------

    async def reconfigure(self, config: Config) -> None:
        """A reload's new pool sizes, balancer strategy and agent counts; agents and connections stay."""
        agents_changed = config.fleet.agents != self.config.fleet.agents
        self.config = config
        self.pool.reconfigure(config.pool)
        self.balancer.strategy = config.balancer.strategy
        self.balancer.capacity_aware = config.balancer.capacity_aware
        self.max_agents = config.fleet.max_agents
        if agents_changed:
            await self.ensure({str(kind): n for kind, n in config.fleet.agents.items()})

    async def start(self) -> None:
        """Start the configured agents and pre-warm the pool; returns when they answer."""
        self.warming = True
        try:
            self.runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Left by a server that was killed; its agents exit on their own once they notice.
            remove_stale_agent_sockets(self.runtime_dir)
            wanted = [t for t, n in self.config.fleet.agents.items() for _ in range(n)]
            await asyncio.gather(*(self.spawn(t) for t in wanted))
            await self.pool.prewarm([a.id for a in self.agents.values() if a.takes_work])
        finally:
            self.warming = False
            self._capacity.wake_all()  # calls waiting for a kind of agent that was not configured: refuse them
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._maintain()))
        self._tasks.append(loop.create_task(self._probe_agents()))

    async def spawn(self, agent_type: str, capacity: int | None = None) -> Agent:
        """A new agent process, registered with the balancer once it answers."""
        if agent_type not in AGENT_TYPES:
            raise FleetError(f"unknown agent type {agent_type!r}; use one of {', '.join(AGENT_TYPES)}")
        if len(self.agents) >= self.max_agents:
            raise FleetError(
                f"the fleet already has {len(self.agents)} agents (maxAgents = {self.max_agents}); "
                "remove one or raise maxAgents (qe_fleet_init maxAgents, or fleet.maxAgents in the config)"
            )
        self._seq += 1
        agent_id = f"agent-{self._seq}"
        agent = Agent(
            agent_id, agent_type, capacity or self.config.fleet.capacity, agent_socket(self.runtime_dir, self._seq)
        )
        self.agents[agent_id] = agent
        try:
            await self._launch(agent)
        except Exception:
            self.agents.pop(agent_id, None)
            raise
        return agent

    def _set_status(self, agent: Agent, status: AgentStatus) -> None:
        """Change an agent's status; the balancer routes to it exactly while it takes work."""
        before, agent.status = agent.status, status
        if status == "available":
            if before in ("starting", "dead"):
                self.balancer.add(agent.id, agent.capacity, AGENT_TYPES[agent.type])
            else:
                self.balancer.set_available(agent.id, True)
            self._capacity.wake_one()
        elif status == "dead":
            self.balancer.remove(agent.id)
        elif before == "available":
            self.balancer.set_available(agent.id, False)
            self._capacity.wake_one()  # a waiter may now learn that no agent serves it

    async def _launch(self, agent: Agent) -> None:
        started = time.perf_counter()
        self._set_status(agent, "starting")
        agent.started_at = time.time()
        process = self._ctx.Process(
            target=agent_main.main,
            args=(str(agent.socket_path), agent.id, self.config.fleet.preload),
            name=f"{agent.id} {agent.type}",  # the agent's process title (see agent.main)
            daemon=True,
        )
        # start() talks to the forkserver (and starts it the first time): off the event loop.
        await asyncio.to_thread(process.start)
        agent.process = process
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if process.exitcode is not None:
                raise FleetError(f"agent {agent.id} exited during start-up (exit code {process.exitcode})")
            if time.monotonic() > deadline:
                process.kill()
                raise FleetError(f"agent {agent.id} did not start within {READY_TIMEOUT_S:.0f} s")
            try:
                conn = await self._connect(agent.id, agent)
                result = await conn.call("ping")
                conn.close()
            except OSError:  # not listening yet, or an old agent leaving (AgentGone)
                await asyncio.sleep(0.002)
                continue
            # The answer must come from this process: after a kill -9 of a previous server, its agent of the
            # same name may still hold the socket path for a moment before it notices and exits.
            if result.ok and result.value == process.pid:
                break
            await asyncio.sleep(0.002)
        agent.ready_ms = (time.perf_counter() - started) * 1000
        asyncio.get_running_loop().add_reader(process.sentinel, self._on_exit, agent.id, process)
        self._set_status(agent, "available")
        log.info("agent %s (%s) ready in %.1f ms, pid %d", agent.id, agent.type, agent.ready_ms, process.pid)

    async def _connect(self, agent_id: str, agent: Agent | None = None) -> AgentConnection:
        agent = agent or self.agents.get(agent_id)
        if agent is None or agent.status == "dead":
            raise AgentGone(f"agent {agent_id} is not running")
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_unix_connection(lambda: AgentConnection(agent_id), str(agent.socket_path))
        return conn

    def _on_exit(self, agent_id: str, process: Any) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(process.sentinel)
        process.join(0)
        agent = self.agents.get(agent_id)
        if agent is None or agent.process is not process:
            return
        draining = agent.status == "draining"
        self._set_status(agent, "dead")
        self.pool.forget_agent(agent_id)
        # What the agent's calls started (a verification's pytest and its children) dies with it.
        sandbox.kill_recorded_groups(sandbox.groups_file(agent.socket_path))
        if draining or self.stopping:
            self.agents.pop(agent_id, None)
            return
        agent.backoff_s = min(
            max(agent.backoff_s * 2, self.config.fleet.restart_backoff_ms / 1000), MAX_RESTART_BACKOFF_S
        )
        log.warning("agent %s died (exit code %s); restarting in %.1f s", agent_id, process.exitcode, agent.backoff_s)
        self._tasks.append(loop.create_task(self._restart(agent)))

    async def _restart(self, agent: Agent) -> None:
        await asyncio.sleep(agent.backoff_s)
        if self.stopping or self.agents.get(agent.id) is not agent:
            return
        try:
            await self._launch(agent)
        except FleetError as exc:
            log.error("%s; retrying", exc)
            agent.backoff_s = min(agent.backoff_s * 2, MAX_RESTART_BACKOFF_S)
            self._tasks.append(asyncio.get_running_loop().create_task(self._restart(agent)))
            return
        agent.restarts += 1

    async def ensure(self, counts: dict[str, int]) -> list[Agent]:
        """Start agents until each type has at least its count (idempotent); returns the new ones."""
        have: dict[str, int] = {}
        for agent in self.agents.values():
            if agent.status != "draining":
                have[agent.type] = have.get(agent.type, 0) + 1
        wanted = [t for t, n in counts.items() for _ in range(n - have.get(t, 0))]
        if len(self.agents) + len(wanted) > self.max_agents:
            raise FleetError(
                f"starting {len(wanted)} more agents would exceed maxAgents = {self.max_agents} "
                f"({len(self.agents)} running); ask for fewer or raise maxAgents"
            )
        new = await asyncio.gather(*(self.spawn(t) for t in wanted))
        missing = min(self.pool.min_connections, self.pool.max_connections) - self.pool.total
        if missing > 0:
            await self.pool.prewarm([a.id for a in self.agents.values() if a.takes_work])
        return list(new)

    def capacity(self, category: str) -> int:
        """Requests the available agents serving `category` can take at once."""
        return sum(
            a.capacity for a in self.agents.values() if a.takes_work and category in AGENT_TYPES[a.type]
        )

    async def remove(self, agent_id: str) -> None:
        """Scale down: stop routing to the agent, let its calls finish, then stop it."""
        agent = self.agents.get(agent_id)
        if agent is None:
            raise FleetError(f"no agent {agent_id}")
        self._set_status(agent, "draining")
        self.pool.forget_agent(agent_id)
        if agent.process is not None and agent.process.exitcode is None:
            agent.process.terminate()

    async def stop(self, deadline_s: float) -> None:
        self.stopping = True
        for task in self._tasks:
            task.cancel()
        await self.pool.drain(deadline_s)
        for agent in list(self.agents.values()):
            if agent.process is not None and agent.process.exitcode is None:
                agent.process.terminate()
        for agent in list(self.agents.values()):
            if agent.process is not None:
                await asyncio.to_thread(agent.process.join, 2)
                if agent.process.exitcode is None:
                    agent.process.kill()
            # Other processes on the same state directory leave our sockets alone; so we remove them.
            agent.socket_path.unlink(missing_ok=True)

    async def _maintain(self) -> None:
        """Expire idle connections and ping the idle ones, replacing those that do not answer."""
        pool_cfg = self.config.pool
        interval = min(pool_cfg.health_check_interval_ms, pool_cfg.idle_timeout_ms) / 1000
        while True:
            await asyncio.sleep(interval)
            self.pool.expire_idle(time.monotonic())
            for conn in self.pool.idle_connections():
                try:
                    result = await asyncio.wait_for(conn.call("ping"), 2.0)
                    ok = result.ok
                except (TimeoutError, ConnectionError):
                    ok = False
                if not ok:
                    self.pool.discard_idle(conn)
            missing = self.pool.min_connections - self.pool.total
            alive = [a.id for a in self.agents.values() if a.takes_work]
            if missing > 0 and alive:
                await self.pool.prewarm(alive)

    async def _probe_agents(self) -> None:
        """Active health check (balancer.healthCheckIntervalMs): an agent that stops answering leaves rotation."""
        while True:
            await asyncio.sleep(self.config.balancer.health_check_interval_ms / 1000)
            # An agent running a call may hold the GIL in one long C call (ast.parse of a big file) and not
            # answer a ping; its call has its own deadline, which replaces the agent if it really hangs.
            busy = {a.id for a in self.balancer.agents(time.monotonic()) if a.in_flight > 0}
            for agent in [a for a in self.agents.values() if a.takes_work and a.id not in busy]:
                try:
                    conn = await asyncio.wait_for(self._connect(agent.id, agent), 2.0)
                    ok = (await asyncio.wait_for(conn.call("ping"), 2.0)).ok
                    conn.close()
                except (OSError, TimeoutError, ConnectionError):
                    ok = False
                if not ok:
                    self._suspect(agent.id)

    # ---- calls ---------------------------------------------------------------------------------------

    async def run(self, category: str, fn: str, payload: Any, timeout_s: float, *, idempotent: bool) -> Any:
        """Run a registered compute function on an agent serving `category`."""
        deadline = time.monotonic() + timeout_s
        retries_left = 1 if idempotent else 0
        unreachable_left = 3
        while True:
            agent_id = await self._pick(category, deadline)
            try:
                return await self._call(agent_id, fn, payload, deadline, timeout_s)
            except AgentUnreachable as exc:
                # Nothing was sent: any tool may go elsewhere (the agent died before we heard of it).
                if unreachable_left == 0:
                    raise FleetFault(f"{exc}; the agents are being replaced, retry the call") from None
                unreachable_left -= 1
            except AgentGone as exc:
                if retries_left == 0:
                    raise FleetFault(
                        f"{exc} while running {fn.rsplit(':', 1)[-1]}; the agent is being replaced, retry the call"
                    ) from None
                retries_left -= 1
                log.warning("%s; retrying once on another agent (the tool is idempotent)", exc)

    async def _pick(self, category: str, deadline: float) -> str:
        while True:
            agent_id: str | None = self.balancer.pick(category, time.monotonic())
            if agent_id is not None:
                return agent_id
            serving = [a for a in self.agents.values() if category in AGENT_TYPES[a.type] and a.status != "draining"]
            if not serving and not self.warming:
                kind = next((t for t, cats in AGENT_TYPES.items() if cats == {category}), "generalist")
                raise FleetFault(f"no agent serves {category}; start one with qe_agent_spawn {{type: {kind}}}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.saturated += 1
                in_flight = sum(a.in_flight for a in self.balancer.agents(time.monotonic()))
                capacity = sum(a.capacity for a in serving)
                raise FleetFault(f"fleet saturated: {in_flight} in flight of {capacity}; retry later")
            await self._capacity.wait(remaining)

    async def _call(self, agent_id: str, fn: str, payload: Any, deadline: float, timeout_s: float) -> Any:
        try:
            if tracing.tracer is None:
                conn = await self.pool.acquire(agent_id, max(deadline - time.monotonic(), 0.001))
            else:
                conn = await tracing.acquire(self.pool, agent_id, max(deadline - time.monotonic(), 0.001))
        except PoolTimeout as exc:
            self.balancer.release(agent_id)
            self._capacity.wake_one()
            self.saturated += 1
            raise FleetFault(f"fleet saturated: {exc}; retry later") from None
        except (OSError, AgentGone) as exc:
            self.balancer.release(agent_id)
            self._suspect(agent_id)
            raise AgentUnreachable(f"agent {agent_id} is unreachable ({exc})") from None
        started = time.perf_counter()
        answer: Awaitable[rpc.Result]
        if tracing.tracer is None:
            answer = conn.call("call", fn, payload)
        else:
            trace = tracing.traceparent()
            answer = tracing.agent_work(conn.call("call", fn, payload, trace), trace, agent_id, fn)
        try:
            result = await asyncio.wait_for(answer, max(deadline - time.monotonic(), 0.001))
        except TimeoutError:
            self.pool.release(conn, broken=True)
            self.balancer.finish(agent_id, time.perf_counter() - started, False, time.monotonic())
            self._replace_hung(agent_id)
            raise FleetFault(
                f"{fn.rsplit(':', 1)[-1]} timed out after {timeout_s:g} s on {agent_id}; the agent is being "
                "replaced (raise tools.<name>.timeoutMs if the input is legitimately this large)"
            ) from None
        except AgentGone:
            self.pool.release(conn, broken=True)
            self.balancer.finish(agent_id, time.perf_counter() - started, False, time.monotonic())
            self._suspect(agent_id)
            raise
        except asyncio.CancelledError:
            # The agent is still busy with the abandoned call: that connection cannot carry another.
            self.pool.release(conn, broken=True)
            self.balancer.release(agent_id)
            raise
        finally:
            self._capacity.wake_one()
        self.pool.release(conn)
        # A tool refusing its input is not the agent's fault: only crashes count toward ejection.
        agent_fault = not result.ok and not result.error.startswith(agent_main.INPUT_ERROR)
        self.balancer.finish(agent_id, time.perf_counter() - started, not agent_fault, time.monotonic())
        if not result.ok:
            raise ToolError(result.error.removeprefix(agent_main.INPUT_ERROR))
        return result.value

    def _suspect(self, agent_id: str) -> None:
        """Passive health check: a broken connection takes the agent out of rotation at once.

        Its process may be dead before the supervisor hears of it; a probe puts it back if it answers.
        """
        agent = self.agents.get(agent_id)
        if agent is None or not agent.takes_work:
            return
        self._set_status(agent, "suspect")
        self._tasks.append(asyncio.get_running_loop().create_task(self._probe(agent)))

    async def _probe(self, agent: Agent) -> None:
        await asyncio.sleep(0.05)  # time for the supervisor to see a death first
        if self.agents.get(agent.id) is not agent or agent.status != "suspect":
            return
        try:
            conn = await asyncio.wait_for(self._connect(agent.id, agent), 1.0)
            ok = (await asyncio.wait_for(conn.call("ping"), 1.0)).ok
            conn.close()
        except (OSError, TimeoutError, ConnectionError):
            ok = False
        if agent.status != "suspect":
            return
        if ok:
            self._set_status(agent, "available")
        elif agent.process is not None and agent.process.exitcode is None:
            self._replace_hung(agent.id)

    def _replace_hung(self, agent_id: str) -> None:
        agent = self.agents.get(agent_id)
        if agent is not None and agent.process is not None and agent.process.exitcode is None:
            log.warning("agent %s did not answer in time; killing it so the supervisor replaces it", agent_id)
            os.kill(agent.process.pid, signal.SIGKILL)

    def status(self) -> FleetStatus:
        now = time.monotonic()
        balance = {a.id: msgspec.to_builtins(a) for a in self.balancer.agents(now)}
        agents = []
        for agent in self.agents.values():
            entry = agent.describe()
            entry.update({k: v for k, v in balance.get(agent.id, {}).items() if k not in entry})
            if entry.get("ejected"):
                entry["status"] = "ejected"
            elif agent.takes_work and entry.get("inFlight", 0) >= agent.capacity:
                entry["status"] = "busy"
            agents.append(entry)
        return FleetStatus(
            agents=agents,
            pool=self.pool.stats(),
            balancer={**msgspec.to_builtins(self.balancer.stats()), "saturated": self.saturated},
            fleet_id=self.fleet_id,
            topology=self.topology,
            max_agents=self.max_agents,
        )
