"""The Server: one start-up, main loop and shutdown for HTTP and stdio alike (uvicorn's Server/Config split).

Start-up: listen (HTTP), systemd keep-alive and signals, the App's components (agents warm), the admin
socket, then READY. Main loop: until a stop (SIGTERM, `pool drain`) or, on stdio, the end of stdin. Reload
(SIGHUP, `aqe-v3 mcp reload`): re-read, validate, hand each component its new part. Shutdown: drain.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from qe_appliance import __version__, tracing
from qe_appliance.app import App
from qe_appliance.config import Config, ConfigError, control_socket, is_loopback
from qe_appliance.control.server import ControlServer
from qe_appliance.http.routes import DRAINING
from qe_appliance.mcp.stdio import serve_stdio
from qe_appliance.overrides import Overrides
from qe_appliance.proctitle import set_title
from qe_appliance.systemd import Notifier
from qe_appliance.tools import ALL_TOOLS
from qe_appliance.tools.base import ToolSpec

if TYPE_CHECKING:
    from qe_appliance.fleet.orchestrator import Orchestrator
    from qe_appliance.fleet.runtime import Fleet
    from qe_appliance.monitoring.monitor import Monitor
    from qe_appliance.registry import ToolRegistry
    from qe_appliance.workers import Role

log = logging.getLogger("aqe_mcp")

DRAIN_DEADLINE_S = 30.0
# After the drain's grace: new MCP requests answer 503, the listener closes once work in flight is done.
STOPPING = "stopping"


class ServerStatus(msgspec.Struct, rename="camel", frozen=True):
    """What `aqe-v3 mcp status` prints: the process, its state and address, the appliance's counts, reloads."""

    version: str
    pid: int
    state: str
    address: list[Any] | None
    tools: int
    sessions: int
    connections: int
    auth: str
    agents: int
    # JSON-RPC messages handled since start (a supervisor of several workers sums them).
    requests: int
    reloads: dict[str, int]
    last_reload: dict[str, Any] | None


class Server:
    """Runs one App over HTTP or stdio; also what the admin socket sees (control.server.Admin)."""

    def __init__(
        self,
        config: Config,
        *,
        stdio: bool = False,
        source: Callable[[], Config] | None = None,
        catalog: Sequence[ToolSpec] = ALL_TOOLS,
        worker: Role | None = None,
    ) -> None:
        self.app = App(config, catalog, http=not stdio)
        # Re-reads the configuration (the file plus the start flags) for a reload; None: no file to re-read.
        self.source = source
        # One of several workers on the port (server.workers): it binds with SO_REUSEPORT, and its /metrics
        # and /dashboard.json are the supervisor's sums over all workers.
        self.worker = worker
        if worker is not None and self.app.http is not None and self.app.monitor is not None:
            from qe_appliance.workers import service_dashboard, service_metrics

            self.app.http.routes.service_metrics = service_metrics(worker, self.app.monitor.prometheus)
            self.app.http.routes.service_dashboard = service_dashboard(worker, self.app.monitor.dashboard)
        self.address: tuple[str, int] | None = None
        self.control: ControlServer | None = None
        self.reloads = {"ok": 0, "failed": 0}
        self.last_reload: dict[str, Any] | None = None
        # sd_notify to systemd (a no-op when it did not start us).
        self.notifier = Notifier()
        self._reload_lock = asyncio.Lock()
        self._stopped = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._terms = 0
        self._started = time.monotonic()

    # ---- what the admin socket sees ------------------------------------------------------------------

    @property
    def config(self) -> Config:
        return self.app.config

    @property
    def overrides(self) -> Overrides:
        return self.app.overrides

    @property
    def registry(self) -> ToolRegistry:
        return self.app.registry

    @property
    def fleet(self) -> Fleet | None:
        return self.app.fleet

    @property
    def orchestrator(self) -> Orchestrator | None:
        return self.app.orchestrator

    @property
    def monitor(self) -> Monitor | None:
        return self.app.monitor

    def readiness(self) -> str | None:
        return self.app.readiness()

    def status(self) -> ServerStatus:
        return ServerStatus(
            version=__version__,
            pid=os.getpid(),
            state=self.readiness() or "ready",
            address=list(self.address) if self.address else None,
            **msgspec.structs.asdict(self.app.stats()),
            requests=self.app.dispatcher.handled,
            reloads=dict(self.reloads),
            last_reload=self.last_reload,
        )

    # ---- lifecycle ---------------------------------------------------------------------------------

    async def serve(self) -> int:
        """Start, serve until stopped, shut down; returns the process exit code."""
        started = time.perf_counter()
        app, http = self.app, self.app.http
        cfg = self.config.server
        if http is not None:
            if not is_loopback(cfg.host) and not http.guard.tokens:
                log.warning("listening on %s without authentication (server.auth.allowUnauthenticated: true): "
                            "whatever is in front of this server must authenticate clients", cfg.host)
            self.address = await http.server.listen(cfg.host, cfg.port, reuse_port=self.worker is not None)
        set_title("stdio" if self.address is None else f"server :{self.address[1]}")
        self._spawn(self.notifier.keep_alive())
        self.notifier.status("starting: warming up the agent fleet")
        self._install_signals()
        stdin: asyncio.Task[None] | None = None
        if http is None:
            # stdio answers from the moment its stores are open, while its agents come up (a fleet call waits
            # for one): the client's first message does not wait for the fleet.
            serving = asyncio.Event()
            starting = asyncio.create_task(app.start(serving))
            opened = asyncio.create_task(serving.wait())
            await asyncio.wait({starting, opened}, return_when=asyncio.FIRST_COMPLETED)
            opened.cancel()
            if not starting.done():
                stdin = asyncio.create_task(serve_stdio(app.dispatcher))
            try:
                await starting
            except BaseException:
                if stdin is not None:
                    stdin.cancel()
                raise
        else:
            await app.start(address=self.address)
        # Stdio servers come one per client session, several on one stateDir: no admin socket unless asked.
        if http is not None or cfg.stdio_control_socket:
            # The default socket sits in our own state or runtime directory; a configured one may be anywhere.
            self.control = ControlServer(self, control_socket(self.config), own_directory=not cfg.control_socket)
            await self.control.start()
        app.state = None
        where = "stdio" if self.address is None else _url(*self.address)
        self.notifier.ready(f"serving {where} with {len(app.registry.tools())} tools")
        log.info(
            "aqe-mcp %s %s %s (ready in %.0f ms, %d tools)",
            __version__, "serving MCP on" if self.address is None else "listening on", where,
            (time.perf_counter() - started) * 1000, len(app.registry.tools()),
        )
        stopped = asyncio.create_task(self._stopped.wait())
        if http is None:
            # stdio: the client closing stdin ends the server as a stop signal would.
            if stdin is None:
                stdin = asyncio.create_task(serve_stdio(app.dispatcher))
            await asyncio.wait({stdin, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if stdin.done():
                await self.drain_and_stop(DRAIN_DEADLINE_S)
            stdin.cancel()
        await stopped
        return 0

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
        self._spawn(self.reload())

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self) -> dict[str, Any]:
        """Re-read the configuration and apply what changed; an invalid file keeps the running config."""
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                if self.source is None:
                    raise ConfigError(["this server was started without a configuration file; nothing to re-read"])
                report = await self.app.reconfigure(self.source())
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
            if self.app.monitor is not None:
                self.app.monitor.count_reload(report["ok"])
            self.last_reload = report
            return report

    def begin_drain(self, deadline_s: float) -> None:
        if self.app.state not in (DRAINING, STOPPING):
            # Not ready from this moment, before the caller (`pool drain`) hears back: a health check made
            # right after the command returns already sees the 503.
            self.app.state = DRAINING
            self._spawn(self.drain_and_stop(deadline_s))

    async def drain_and_stop(self, deadline_s: float) -> None:
        """Leave rotation, stop taking new work, let requests in flight finish within the deadline, then close.

        For server.drainGraceMs /readyz answers 503 while everything that arrives is still served (proxies
        see the instance leave before it refuses anything). Then new MCP requests answer 503 with
        Retry-After, the listener closes once work in flight is done, the pool closes, the agents stop and
        the process exits 0.
        """
        self.app.state = DRAINING
        self.notifier.stopping()
        http = self.app.http
        grace_s = self.config.server.drain_grace_ms / 1000 if http is not None else 0.0
        if grace_s:
            log.info("draining: /readyz answers 503, still serving for %.1f s (server.drainGraceMs)", grace_s)
            await asyncio.sleep(grace_s)
        self.app.state = STOPPING
        log.info("draining: finishing requests in flight (deadline %.0f s)", deadline_s)
        end = time.monotonic() + deadline_s
        self.app.sessions.close_all()
        self.app.dispatcher.subscriptions.close()
        if http is not None:
            await http.server.wait_idle(deadline_s)
            await http.server.shutdown(max(end - time.monotonic(), 0.0))
        await self.app.stop(max(end - time.monotonic(), 1.0))
        if self.control is not None:
            await self.control.close()
        self.close()
        log.info(
            "stopped: %d requests served in %s of uptime", self.app.dispatcher.handled,
            _duration(time.monotonic() - self._started),
        )
        self._stopped.set()

    def close(self) -> None:
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        self.app.close()
        self.notifier.close()


def _duration(seconds: float) -> str:
    """`2 h 05 min`, `3 min 07 s`, `4.2 s`."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _url(host: str, port: int) -> str:
    return f"http://{host if ':' not in host else f'[{host}]'}:{port}/mcp"


def run(
    config: Config, *, stdio: bool = False, source: Callable[[], Config] | None = None, worker: Role | None = None
) -> int:
    """Run the appliance until stopped; returns the process exit code."""
    import uvloop

    from qe_appliance.fleet import forkserver

    # Now, with the tools imported and before any thread or event loop: the agents' forkserver is a fork of
    # this process.
    forkserver.fork_from_here()

    async def main() -> int:
        return await Server(config, stdio=stdio, source=source, worker=worker).serve()

    # Traces are set by the OTEL_* environment only, once per process: a reload leaves them as they are.
    tracing.configure()
    try:
        return uvloop.run(main())
    finally:
        tracing.shutdown()
