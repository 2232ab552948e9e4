"""The running appliance: built from one Config, it owns start, readiness, drain and stop."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from qe_appliance import __version__
from qe_appliance.config import Config, ConfigError, control_socket, is_loopback, state_dir
from qe_appliance.control.server import ControlServer
from qe_appliance.fleet.compute import name_of
from qe_appliance.fleet.orchestrator import Orchestrator
from qe_appliance.fleet.runtime import Fleet
from qe_appliance.http.guard import Guard, load_tokens
from qe_appliance.http.routes import AccessPolicy, Routes, error_body
from qe_appliance.http.server import HttpServer, Limits
from qe_appliance.mcp.dispatcher import Dispatcher
from qe_appliance.mcp.jsonrpc import notification_bytes
from qe_appliance.mcp.sessions import SessionTable
from qe_appliance.mcp.stdio import serve_stdio
from qe_appliance.monitoring import Monitor
from qe_appliance.proctitle import set_title
from qe_appliance.registry import ToolRegistry
from qe_appliance.reload import apply as apply_reload
from qe_appliance.reload import configure_http
from qe_appliance.store.memory import purge_periodically
from qe_appliance.store.stores import Stores
from qe_appliance.systemd import Notifier
from qe_appliance.tools import ALL_TOOLS
from qe_appliance.tools.base import ToolError, ToolSpec
from qe_appliance.workspace import Workspace

log = logging.getLogger("aqe_mcp")

SESSION_SWEEP_S = 30.0
DRAIN_DEADLINE_S = 30.0


class Services:
    """Shared state the tools reach through `ctx.services`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.stores = Stores(state_dir(config))
        self.memory = self.stores.memory
        self.patterns = self.stores.patterns
        self.tasks = self.stores.tasks
        self.reports = self.stores.reports
        # Files the coverage and quality tools may read; relative roots start from the start directory.
        server = config.server
        self.workspace = Workspace.from_config(server.workspace_roots, server.max_input_file_bytes)
        # Set by App: the fleet (started before the server reports ready), its orchestrator, the tools.
        self.fleet: Fleet | None = None
        self.orchestrator: Orchestrator | None = None
        # `aqe-v3 mcp balance --disable` turns this off: fleet tools then run in server threads.
        self.fleet_enabled = True
        self.tools: dict[str, ToolSpec] = {}

    async def compute(self, tool_name: str, fn: Callable[[Any], Any], payload: Any) -> Any:
        """Run a tool's heavy step where its config says: an agent (`execution: fleet`) or a thread."""
        cfg = self.config.tools.get(tool_name)
        timeout = cfg.timeout_ms / 1000 if cfg is not None else 60.0
        spec = self.tools.get(tool_name)
        if cfg is not None and cfg.execution == "fleet" and self.fleet_enabled and self.fleet is not None and spec:
            return await self.fleet.run(spec.category, name_of(fn), payload, timeout, idempotent=spec.idempotent)
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, payload), timeout)
        except TimeoutError:
            raise ToolError(f"{tool_name} did not finish within {timeout:g} s (tools.{tool_name}.timeoutMs)") from None

    def close(self) -> None:
        if self.orchestrator is not None:
            self.orchestrator.cancel_all()
        self.stores.close()


def build_registry(config: Config, catalog: Sequence[ToolSpec] = ALL_TOOLS) -> ToolRegistry:
    """The enabled tools, with the category the config gives each (tools it does not name keep theirs)."""
    tools = [
        replace(spec, category=config.tools[spec.name].category) if spec.name in config.tools else spec
        for spec in catalog
        if spec.name not in config.tools or config.tools[spec.name].enabled
    ]
    reg = config.registry
    return ToolRegistry(
        tools,
        cache_enabled=reg.cache_enabled,
        cache_size=reg.cache_size,
        fuzzy_enabled=reg.fuzzy_match_enabled,
    )


class App:
    def __init__(
        self,
        config: Config,
        catalog: Sequence[ToolSpec] = ALL_TOOLS,
        source: Callable[[], Config] | None = None,
    ) -> None:
        self.config = config
        # Re-reads the configuration (the file plus the start flags) for a reload; None: no file to re-read.
        self.source = source
        self.catalog = catalog
        self.services: Services | None = Services(config)
        self.registry = build_registry(config, catalog)
        server = config.server
        self.sessions = SessionTable(server.max_sessions, server.session_idle_timeout_ms / 1000)
        self.dispatcher = Dispatcher(
            self.registry, self.services, self.sessions, max_json_depth=server.max_json_depth
        )
        self.monitor: Monitor | None = Monitor(config) if config.monitoring.enabled else None
        if self.monitor is not None:
            self.monitor.attach(registry=self.registry, sessions=self.sessions)
            self.sessions.on_refuse = self.monitor.record_refusal
            self.dispatcher.monitor = self.monitor
        self.state: str | None = "starting"
        self.http: HttpServer | None = None
        self.routes: Routes | None = None
        self.address: tuple[str, int] | None = None
        self.control: ControlServer | None = None
        self.reloads = {"ok": 0, "failed": 0}
        self.last_reload: dict[str, Any] | None = None
        self._reload_lock = asyncio.Lock()
        self._stopped = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._terms = 0
        # sd_notify to systemd (a no-op when it did not start us); reload() also reports through it.
        self.notifier = Notifier()

    def readiness(self) -> str | None:
        if self.state is None and self.services is not None:
            return self.services.stores.problem()
        return self.state

    async def run_http(self) -> int:
        cfg = self.config.server
        guard = Guard(cfg.auth, load_tokens(cfg.auth), cfg.rate_limit)
        if not is_loopback(cfg.host) and not guard.tokens:
            log.warning("listening on %s without authentication (server.auth.allowUnauthenticated: true): "
                        "whatever is in front of this server must authenticate clients", cfg.host)
        routes = Routes(
            self.dispatcher, self.sessions, AccessPolicy(cfg.host, cfg.allowed_origins), guard, self.readiness
        )
        self.routes = routes
        routes.monitor = self.monitor
        self.http = HttpServer(routes, Limits(), error_body)
        configure_http(self.http, self.config)
        if self.monitor is not None:
            self.http.on_refuse = self.monitor.record_refusal
            self.monitor.attach(http=self.http)
        started = time.perf_counter()
        host, port = self.address = await self.http.listen(cfg.host, cfg.port)
        set_title(f"server :{port}")
        self._tasks.append(asyncio.create_task(self.notifier.keep_alive()))
        self.notifier.status("starting: warming up the agent fleet")
        self._install_signals()
        self._tasks.append(asyncio.create_task(self._sweep_sessions()))
        self._start_memory_purge()
        await self._start_fleet()
        await self._start_control()
        self.state = None
        url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/mcp"
        self.notifier.ready(f"serving {url} with {len(self.registry.tools())} tools")
        log.info(
            "aqe-mcp %s listening on %s (ready in %.0f ms, %d tools)",
            __version__,
            url,
            (time.perf_counter() - started) * 1000,
            len(self.registry.tools()),
        )
        await self._stopped.wait()
        return 0

    async def run_stdio(self) -> int:
        set_title("stdio")
        self.state = None
        self._install_signals()
        self._start_memory_purge()
        await self._start_fleet()
        await self._start_control()
        stdin_done = asyncio.create_task(serve_stdio(self.dispatcher))
        stopped = asyncio.create_task(self._stopped.wait())
        await asyncio.wait({stdin_done, stopped}, return_when=asyncio.FIRST_COMPLETED)
        for task in (stdin_done, stopped):
            task.cancel()
        await self._stop_fleet(DRAIN_DEADLINE_S)
        self.close()
        return 0

    async def _start_fleet(self) -> None:
        """Agents up and the pool warm before the server says it is ready."""
        assert self.services is not None
        self.services.tools = {tool.name: tool for tool in self.registry.tools()}
        started = time.perf_counter()
        fleet = Fleet(self.config)
        self.services.fleet = fleet
        self.services.orchestrator = Orchestrator(
            self.services.tasks, lambda: self.services.tools if self.services else {}, self.services, fleet.capacity
        )
        await fleet.start()
        log.info(
            "fleet warm in %.0f ms: %d agents, %d pooled connections",
            (time.perf_counter() - started) * 1000, len(fleet.agents), fleet.pool.total,
        )

    async def _evaluate_alerts(self) -> None:
        while self.monitor is not None:
            await asyncio.sleep(self.config.monitoring.dashboard_interval_ms / 1000)
            self.monitor.evaluate()

    async def _start_control(self) -> None:
        # The default socket sits in our own state or runtime directory; a configured one may be anywhere.
        own_directory = not self.config.server.control_socket
        # Stdio servers come one per client session, several on one stateDir: no admin socket unless asked.
        if self.http is not None or self.config.server.stdio_control_socket:
            self.control = ControlServer(self, control_socket(self.config), own_directory=own_directory)
            await self.control.start()
        if self.monitor is not None:
            if self.services is not None and self.services.fleet is not None:
                self.monitor.attach(fleet=self.services.fleet)
            self._tasks.append(asyncio.create_task(self._evaluate_alerts()))

    async def _stop_fleet(self, deadline_s: float) -> None:
        if self.services is not None and self.services.fleet is not None:
            await self.services.fleet.stop(deadline_s)

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # embedded (tests, benchmarks): the host process owns signals
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_term)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)

    def _on_term(self) -> None:
        self._terms += 1
        if self._terms > 1:
            log.warning("second stop signal: exiting now")
            self.close()
            sys.exit(1)
        self.begin_drain(DRAIN_DEADLINE_S)

    def _on_hup(self) -> None:
        asyncio.get_running_loop().create_task(self.reload())

    async def reload(self) -> dict[str, Any]:
        """Re-read the configuration and apply what changed; an invalid file keeps the running config."""
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                if self.source is None:
                    raise ConfigError(["this server was started without a configuration file; nothing to re-read"])
                new = self.source()
                report = await apply_reload(self, new)
                self.reloads["ok"] += 1
                report["ok"] = True
                log.info(
                    "reload: %d change(s) applied%s", len(report["applied"]),
                    f"; restart needed for {', '.join(report['needsRestart'])}" if report["needsRestart"] else "",
                )
            except ConfigError as exc:
                self.reloads["failed"] += 1
                report = {"ok": False, "errors": exc.errors}
                log.error("reload refused, the running configuration stays:\n%s", exc)
            finally:
                self.notifier.ready()
            if self.monitor is not None:
                self.monitor.count_reload(report["ok"])
            self.last_reload = report
            return report

    def rebuild_registry(self) -> None:
        """Apply tool and registry settings; sessions with an open stream hear tools/list_changed."""
        old = [t.wire() for t in self.registry.tools()]
        self.registry = build_registry(self.config, self.catalog)
        self.dispatcher.set_registry(self.registry)
        if self.monitor is not None:
            self.monitor.attach(registry=self.registry)
        if self.services is not None:
            self.services.tools = {tool.name: tool for tool in self.registry.tools()}
        if [t.wire() for t in self.registry.tools()] != old:
            event = notification_bytes("notifications/tools/list_changed", {})
            for session in self.sessions.sessions():
                for queue in session.listeners:
                    queue.put_nowait(event)

    def begin_drain(self, deadline_s: float) -> None:
        if self.state != "draining":
            asyncio.get_running_loop().create_task(self.drain_and_stop(deadline_s))

    async def drain_and_stop(self, deadline_s: float) -> None:
        """Stop taking new work, let requests in flight finish within the deadline, then close.

        While draining, /readyz and new MCP requests answer 503 with Retry-After (the listener stays open so
        clients are told, not refused); then the pool closes, the agents stop and the process exits 0.
        """
        self.state = "draining"
        self.notifier.stopping()
        log.info("draining: finishing requests in flight (deadline %.0f s)", deadline_s)
        end = time.monotonic() + deadline_s
        self.sessions.close_all()
        if self.http is not None:
            await self.http.wait_idle(deadline_s)
            await self.http.shutdown(max(end - time.monotonic(), 0.0))
        await self._stop_fleet(max(end - time.monotonic(), 1.0))
        if self.control is not None:
            await self.control.close()
        self.close()
        self._stopped.set()

    def _start_memory_purge(self) -> None:
        assert self.services is not None
        interval_s = self.config.memory.purge_interval_ms / 1000
        self._tasks.append(asyncio.create_task(purge_periodically(self.services.memory, interval_s)))

    async def _sweep_sessions(self) -> None:
        while True:
            await asyncio.sleep(SESSION_SWEEP_S)
            self.sessions.sweep()

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        if self.services is not None:
            self.services.close()
            self.services = None
        self.notifier.close()


def run(config: Config, *, stdio: bool = False, source: Callable[[], Config] | None = None) -> int:
    """Run the appliance until stopped; returns the process exit code."""
    import uvloop

    async def main() -> int:
        app = App(config, source=source)
        return await (app.run_stdio() if stdio else app.run_http())

    return uvloop.run(main())
