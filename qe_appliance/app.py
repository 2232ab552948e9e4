"""The appliance's components, each built from its part of one Config, and the one place a new Config is
handed out to them (a reload): stores, tool registry and runner, sessions, MCP dispatcher, fleet and
orchestrator, monitor and the HTTP front. The lifecycle (start-up, main loop, shutdown) is lifecycle.Server's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import msgspec

from qe_appliance.config import Config, ServerConfig
from qe_appliance.fleet.orchestrator import Orchestrator
from qe_appliance.fleet.runtime import Fleet, agent_summary
from qe_appliance.http.guard import Guard, load_tokens
from qe_appliance.http.routes import AccessPolicy, Routes, error_body
from qe_appliance.http.server import HttpServer, Limits
from qe_appliance.mcp.dispatcher import Dispatcher
from qe_appliance.mcp.sessions import SessionTable
from qe_appliance.mcp.surface import Surface
from qe_appliance.monitoring.monitor import Monitor, Sources
from qe_appliance.overrides import Overrides
from qe_appliance.registry import ToolRegistry
from qe_appliance.services import Services
from qe_appliance.store.memory import purge_periodically
from qe_appliance.tools import ALL_TOOLS
from qe_appliance.tools.base import ToolContext, ToolSpec
from qe_appliance.tools.runner import ToolRunner

log = logging.getLogger("aqe_mcp")

SESSION_SWEEP_S = 30.0
# History points the aqe://dashboard resource carries (the page and /dashboard.json keep more).
DASHBOARD_RESOURCE_S = 60.0
# Changes that only a restart can apply: a new socket or directory.
RESTART_KEYS = (
    "server.host",
    "server.port",
    "server.stateDir",
    "server.controlSocket",
    "fleet.runtimeDir",
    "fleet.preload",
    "store.",
)


def build_registry(config: Config, catalog: Sequence[ToolSpec] = ALL_TOOLS) -> ToolRegistry:
    """The enabled tools, each with the category, execution and timeout the config gives it."""
    tools = []
    for spec in catalog:
        cfg = config.tools.get(spec.name)
        if cfg is None:
            tools.append(spec)
        elif cfg.enabled:
            tools.append(
                replace(spec, category=cfg.category, execution=cfg.execution, timeout_s=cfg.timeout_ms / 1000)
            )
    reg = config.registry
    return ToolRegistry(
        tools,
        cache_enabled=reg.cache_enabled,
        cache_size=reg.cache_size,
        fuzzy_enabled=reg.fuzzy_match_enabled,
    )


def diff(old: Config, new: Config) -> list[tuple[str, Any, Any]]:
    """Changed leaves as (camelCase key path, old value, new value)."""
    return sorted(_diff(msgspec.to_builtins(old), msgspec.to_builtins(new), ""))


def _diff(old: Any, new: Any, path: str) -> Iterator[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(old.keys() | new.keys()):
            yield from _diff(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
    elif old != new:
        yield path, old, new


class HttpStats(msgspec.Struct, frozen=True):
    """What `aqe-v3 mcp status` says of the HTTP front."""

    connections: int
    tokens: int


class AppStats(msgspec.Struct, frozen=True):
    """The appliance's counts as `aqe-v3 mcp status` prints them (tokens are counted, never shown)."""

    tools: int
    sessions: int
    connections: int
    auth: str
    agents: int


class HttpFront:
    """The HTTP component: listener limits, Host/Origin policy, bearer tokens and rate limit (`server.*`)."""

    def __init__(
        self,
        config: ServerConfig,
        dispatcher: Dispatcher,
        sessions: SessionTable,
        readiness: Callable[[], str | None],
        monitor: Monitor | None,
    ) -> None:
        self.guard = Guard(config.auth, load_tokens(config.auth), config.rate_limit, config.trusted_proxies)
        self.routes = Routes(
            dispatcher, sessions, AccessPolicy(config.host, config.allowed_origins), self.guard, readiness
        )
        self.routes.monitor = monitor
        self.server = HttpServer(self.routes, Limits(), error_body)
        if monitor is not None:
            self.server.on_refuse = monitor.record_refusal
        self._set_limits(config)

    def reconfigure(self, config: ServerConfig, tokens: tuple[bytes, ...]) -> None:
        self._set_limits(config)
        self.routes.policy.update(config.host, config.allowed_origins)
        self.guard.configure(config.auth, tokens, config.rate_limit, config.trusted_proxies)

    def _set_limits(self, config: ServerConfig) -> None:
        limits = self.server.limits
        limits.max_connections = config.max_connections
        limits.max_body_bytes = config.max_body_bytes
        limits.max_header_bytes = config.max_header_bytes
        limits.header_timeout_s = config.header_timeout_ms / 1000
        limits.keep_alive_timeout_s = config.keep_alive_timeout_ms / 1000

    @property
    def connections(self) -> int:
        return len(self.server.connections)

    def stats(self) -> HttpStats:
        return HttpStats(connections=len(self.server.connections), tokens=len(self.guard.tokens))


class App:
    """Every component of one appliance, wired once here; `http=False` for a stdio server."""

    def __init__(self, config: Config, catalog: Sequence[ToolSpec] = ALL_TOOLS, *, http: bool = True) -> None:
        self.config = config
        self.catalog = catalog
        # None when ready, else why not ("starting", "draining", "stopping"): /readyz answers 503, and new MCP
        # work too except while "draining" (the drain's grace, see http.routes.DRAINING).
        self.state: str | None = "starting"
        self.overrides = Overrides()
        self.services = Services(config, self.overrides)
        self.registry = build_registry(config, catalog)
        self._by_name = {tool.name: tool for tool in self.registry.tools()}
        server = config.server
        self.sessions = SessionTable(server.max_sessions, server.session_idle_timeout_ms / 1000)
        # Built now, started by start(): agents come up before the server reports ready.
        self.fleet = Fleet(config)
        self.http: HttpFront | None = None
        self.monitor: Monitor | None = None
        if config.monitoring.enabled:
            self.monitor = Monitor(config, Sources(
                registry=lambda: self.registry.stats(),
                # The Monitor reads the fleet in its wire shape, as qe_fleet_status shows it.
                fleet=lambda: msgspec.to_builtins(self.fleet.status()),
                sessions=self.sessions.__len__,
                connections=(lambda: self.http.connections if self.http is not None else 0) if http else None,
            ))
            self.sessions.on_refuse = self.monitor.record_refusal
        self.runner = ToolRunner(self.services, self.monitor)
        dashboard = self._dashboard if self.monitor is not None else None
        self.surface = Surface(self.services, self.sessions, self._context_for, dashboard)
        self.dispatcher = Dispatcher(
            self.registry, self.runner, self.sessions, max_json_depth=server.max_json_depth, monitor=self.monitor,
            methods=self.surface.methods(),
            max_subscriptions=server.max_subscriptions,
        )
        # Resource changes reach subscriptions/listen streams as they reach handshake-era subscribers.
        self.services.changes.listen(self.dispatcher.subscriptions.resource_changed)
        if self.monitor is not None:
            self.dispatcher.subscriptions.on_refuse = self.monitor.record_refusal
        self.orchestrator = Orchestrator(
            self.services.tasks, lambda: self._by_name, self.runner, self.fleet.capacity, self.services.stores.queue
        )
        self.services.fleet = self.fleet
        self.services.orchestrator = self.orchestrator
        if http:
            self.http = HttpFront(server, self.dispatcher, self.sessions, self.readiness, self.monitor)
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    def _context_for(self, tool: str) -> ToolContext:
        """Where work for a tool's resources runs: as its calls do (a disabled tool: as the catalog says)."""
        spec = self._by_name.get(tool) or next(spec for spec in self.catalog if spec.name == tool)
        return self.runner.context(spec)

    async def _dashboard(self) -> dict[str, Any]:
        assert self.monitor is not None
        since = time.time() - DASHBOARD_RESOURCE_S
        # One of several workers (server.workers): the supervisor's sum over all of them, as /dashboard.json.
        summed = self.http.routes.service_dashboard if self.http is not None else None
        return await summed(since) if summed is not None else self.monitor.dashboard(since)

    def readiness(self) -> str | None:
        if self.state is None:
            return self.services.stores.problem()  # e.g. the state directory vanished: writes would fail
        return self.state

    async def start(self, serving: asyncio.Event | None = None, address: tuple[str, int] | None = None) -> None:
        """Stores connected (PostgreSQL), background upkeep running, agents up and the pool warm; with
        PostgreSQL, this instance (listening on `address`) takes part in the shared subtask queue.

        `serving` is set as soon as calls can be taken: the stores open and the agents coming up (a fleet
        call made before they answer waits for one)."""
        await self.services.stores.open()
        self._tasks.append(asyncio.create_task(self._sweep_sessions()))
        interval_s = self.config.memory.purge_interval_ms / 1000
        self._tasks.append(asyncio.create_task(purge_periodically(self.services.memory, interval_s)))
        self._tasks.append(asyncio.create_task(self.dispatcher.tasks.purge_periodically()))
        if self.monitor is not None:
            self._tasks.append(asyncio.create_task(self.monitor.run_alerts()))
        started = time.perf_counter()
        fleet_up = asyncio.ensure_future(self.fleet.start())
        if serving is not None:
            await asyncio.sleep(0)  # the fleet's first step: it is warming from here on
            serving.set()
        await fleet_up
        log.info(
            "fleet warm in %.0f ms: %d agents, %d pooled connections",
            (time.perf_counter() - started) * 1000, len(self.fleet.agents), self.fleet.pool.total,
        )
        if self.services.stores.queue is not None:
            await self.services.stores.queue.listen()
        self.orchestrator.start(
            self.config.fleet,
            f"{address[0]}:{address[1]}" if address is not None else None,
            self.fleet_report,
            draining=lambda: self.state not in (None, "starting"),
        )

    def fleet_report(self) -> dict[str, Any]:
        """This instance's fleet as the other instances see it in their fleet view."""
        status = self.fleet.status()
        return {
            "state": self.state or "ready",
            "fleetId": status.fleet_id,
            "agents": [agent_summary(a) for a in status.agents],
        }

    async def reconfigure(self, new: Config) -> dict[str, Any]:
        """Validate `new`, then hand each component its part; returns what changed, was applied, or waits.

        The runtime overrides end here: the file is the truth again. Raises ConfigError (nothing changed)
        when a part of `new` cannot be used, e.g. an unreadable tokens file (re-read on every reload, since a
        rotated file changes no key).
        """
        tokens = load_tokens(new.server.auth) if self.http is not None else ()
        changes = diff(self.config, new)
        keys = [key for key, _, _ in changes]
        restart = sorted(k for k in keys if k.startswith(RESTART_KEYS))
        applied = [k for k in keys if k not in restart]
        self.config = new
        self.overrides.clear()
        self.services.reconfigure(new)
        server = new.server
        if self.http is not None:
            self.http.reconfigure(server, tokens)
        self.sessions.reconfigure(server.max_sessions, server.session_idle_timeout_ms / 1000)
        if any(k.startswith(("tools.", "registry.")) for k in applied):
            self.registry = build_registry(new, self.catalog)
            self._by_name = {tool.name: tool for tool in self.registry.tools()}
        self.dispatcher.reconfigure(self.registry, server.max_json_depth)
        self.dispatcher.subscriptions.max_listeners = server.max_subscriptions
        await self.fleet.reconfigure(new)
        self.orchestrator.reconfigure(new.fleet)
        if self.monitor is not None:
            self.monitor.reconfigure(new)
        return {
            "changed": [{"key": k, "old": o, "new": n} for k, o, n in changes],
            "applied": applied,
            "needsRestart": restart,
        }

    def stats(self) -> AppStats:
        http = self.http.stats() if self.http is not None else None
        if http is None:
            auth = "not applicable (stdio)"
        else:  # how many tokens are accepted, never the tokens
            auth = f"bearer tokens ({http.tokens} accepted)" if http.tokens else "off"
        return AppStats(
            tools=len(self.registry.tools()),
            sessions=self.sessions.stats().active,
            connections=http.connections if http is not None else 0,
            auth=auth,
            agents=len(self.fleet.agents),
        )

    async def stop(self, deadline_s: float) -> None:
        """Background tasks stopped, subtasks of the shared queue handed back, agents stopped (their calls
        finish within the deadline), upkeep cancelled, stores closed."""
        started = time.monotonic()
        await self.dispatcher.tasks.stop(deadline_s)
        await self.orchestrator.stop()
        await self.fleet.stop(max(deadline_s - (time.monotonic() - started), 1.0))
        self.close()

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        if not self._closed:
            self._closed = True
            self.services.close()

    async def _sweep_sessions(self) -> None:
        while True:
            await asyncio.sleep(SESSION_SWEEP_S)
            self.sessions.sweep()
