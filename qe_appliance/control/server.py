"""The admin API: newline-delimited JSON commands on a unix socket that only the service user can open.

Runtime changes made here (pool sizes, balancer strategy, fleet on/off) are live and listed as overrides
in `status`; the YAML stays the source of truth and a reload resets them, as HAProxy's runtime API does.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from qe_appliance.config import STRATEGIES, Config
from qe_appliance.control.commandsocket import CommandError, CommandSocket
from qe_appliance.overrides import Overrides
from qe_appliance.registry import UnknownToolError
from qe_appliance.tools.fleet import agents_everywhere

if TYPE_CHECKING:
    from qe_appliance.fleet.orchestrator import Orchestrator
    from qe_appliance.fleet.runtime import Fleet
    from qe_appliance.lifecycle import ServerStatus
    from qe_appliance.monitoring.monitor import Monitor
    from qe_appliance.registry import ToolRegistry

log = logging.getLogger("aqe_mcp.control")


class Admin(Protocol):
    """What the admin socket may read and change in a running server (the lifecycle Server implements it)."""

    @property
    def config(self) -> Config: ...
    @property
    def overrides(self) -> Overrides: ...
    @property
    def registry(self) -> ToolRegistry: ...
    @property
    def fleet(self) -> Fleet | None: ...
    @property
    def orchestrator(self) -> Orchestrator | None: ...
    @property
    def monitor(self) -> Monitor | None: ...

    def status(self) -> ServerStatus:
        """Version, pid, state, address, counts, auth, reloads: what `aqe-v3 mcp status` prints."""
        ...

    async def reload(self) -> dict[str, Any]: ...

    def begin_drain(self, deadline_s: float) -> None: ...


class ControlServer(CommandSocket):
    """A server's admin socket: what `aqe-v3 mcp ...` reads and changes in it, through the Admin interface."""

    def __init__(self, admin: Admin, path: Path, own_directory: bool = False) -> None:
        self.admin = admin
        super().__init__(path, {
            "status": self._status,
            "pool.status": self._pool_status,
            "pool.configure": self._pool_configure,
            "pool.drain": self._pool_drain,
            "tools.list": self._tools_list,
            "tools.lookup": self._tools_lookup,
            "tools.stats": self._tools_stats,
            "balance.status": self._balance_status,
            "balance.configure": self._balance_configure,
            "balance.agents": self._balance_agents,
            "metrics": self._metrics,
            "alerts.list": self._alerts,
            "reload": self._reload,
        }, own_directory)

    # ---- commands ------------------------------------------------------------------------------------

    def _fleet(self) -> Fleet:
        fleet = self.admin.fleet
        if fleet is None:
            raise CommandError("the agent fleet is not running")
        return fleet

    def _monitor(self) -> Monitor:
        monitor = self.admin.monitor
        if monitor is None:
            raise CommandError("monitoring is disabled (monitoring.enabled: false)")
        return monitor

    async def _status(self, args: dict[str, Any]) -> Any:
        return {**msgspec.to_builtins(self.admin.status()), "overrides": self.admin.overrides.as_dict()}

    async def _pool_status(self, args: dict[str, Any]) -> Any:
        pool = self._fleet().pool
        stats: dict[str, Any] = msgspec.to_builtins(pool.stats())
        stats["idleTimeoutMs"] = pool.idle_timeout_s * 1000
        stats["overrides"] = self.admin.overrides.under("pool")
        return stats

    async def _pool_configure(self, args: dict[str, Any]) -> Any:
        pool = self._fleet().pool
        low = _int(args, "min", pool.min_connections, 0)
        high = _int(args, "max", pool.max_connections, 1)
        idle = _int(args, "idleTimeoutMs", int(pool.idle_timeout_s * 1000), 1)
        if low > high:
            raise CommandError(f"--min {low} is larger than --max {high}; lower --min or raise --max")
        for key, value, current in (
            ("pool.minConnections", low, pool.min_connections),
            ("pool.maxConnections", high, pool.max_connections),
            ("pool.idleTimeoutMs", idle, int(pool.idle_timeout_s * 1000)),
        ):
            if value != current:
                self.admin.overrides.set(key, value)
        pool.reconfigure(
            msgspec.structs.replace(
                self.admin.config.pool, min_connections=low, max_connections=high, idle_timeout_ms=idle
            )
        )
        return await self._pool_status({})

    async def _pool_drain(self, args: dict[str, Any]) -> Any:
        timeout = args.get("timeoutS", 30)
        if not isinstance(timeout, int | float) or timeout < 0:
            raise CommandError("--timeout must be a number of seconds, 0 or more")
        # Readiness flips now, before this answer; the drain itself runs as a task (it ends with this
        # process exiting, after server.drainGraceMs and the work in flight).
        self.admin.begin_drain(float(timeout))
        return {"draining": True, "graceMs": self.admin.config.server.drain_grace_ms, "deadlineS": timeout}

    async def _tools_list(self, args: dict[str, Any]) -> Any:
        config = self.admin.config.tools
        return [
            {
                "name": t.name,
                "category": t.category,
                "execution": t.execution,
                "targetLatencyMs": config[t.name].target_latency_ms if t.name in config else None,
                "readOnly": t.read_only,
                "title": t.title,
            }
            for t in self.admin.registry.tools()
        ]

    async def _tools_lookup(self, args: dict[str, Any]) -> Any:
        name = args.get("name")
        if not isinstance(name, str) or not name:
            raise CommandError("tools lookup needs a tool name")
        try:
            tool, fuzzy = self.admin.registry.resolve(name)
        except UnknownToolError as exc:
            raise CommandError(str(exc)) from None
        return {"requested": name, "resolved": tool.name, "fuzzy": fuzzy, "tool": tool.wire()}

    async def _tools_stats(self, args: dict[str, Any]) -> Any:
        return msgspec.to_builtins(self.admin.registry.stats())

    async def _balance_status(self, args: dict[str, Any]) -> Any:
        stats: dict[str, Any] = msgspec.to_builtins(self._fleet().balancer.stats())
        stats["enabled"] = self.admin.overrides.fleet_enabled
        stats["overrides"] = self.admin.overrides.under("balancer")
        return stats

    async def _balance_configure(self, args: dict[str, Any]) -> Any:
        fleet = self._fleet()
        strategy = args.get("strategy")
        if strategy is not None:
            if strategy not in STRATEGIES:
                raise CommandError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
            fleet.balancer.strategy = strategy
            self.admin.overrides.set("balancer.strategy", strategy)
        enabled = args.get("enabled")
        if enabled is not None:
            # Disabled: fleet tools run in worker threads of the server instead of on agents.
            self.admin.overrides.set("balancer.enabled", bool(enabled))
        return await self._balance_status({})

    async def _balance_agents(self, args: dict[str, Any]) -> Any:
        return await agents_everywhere(self._fleet(), self.admin.orchestrator)

    async def _metrics(self, args: dict[str, Any]) -> Any:
        monitor = self._monitor()
        kind = args.get("export", "json")
        if kind == "prometheus":
            return monitor.prometheus().decode()
        if kind == "dashboard":
            return monitor.dashboard(since(args))
        if kind == "dashboard-parts":  # a supervisor's, to sum its workers' dashboards
            return monitor.dashboard_parts(since(args))
        if kind in ("json", "json-parts"):  # json-parts: a supervisor's, to merge its workers' histograms
            return msgspec.to_builtins(monitor.snapshot(serialized=kind == "json-parts"))
        raise CommandError("export must be prometheus, json or dashboard")

    async def _alerts(self, args: dict[str, Any]) -> Any:
        return self._monitor().alerts()

    async def _reload(self, args: dict[str, Any]) -> Any:
        # The reload itself clears the runtime overrides, whoever asked for it (this command or SIGHUP).
        return await self.admin.reload()


def since(args: dict[str, Any]) -> float | None:
    """The `since` of `metrics --export dashboard`: history points newer than this Unix time (None: all)."""
    value = args.get("since")
    if value is None or isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return value
    raise CommandError(f"since must be a Unix time in seconds (0 or more); got {value!r}")


def _int(args: dict[str, Any], key: str, default: int, low: int) -> int:
    value = args.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise CommandError(f"--{key} must be a whole number, at least {low}; got {value!r}")
    return value

