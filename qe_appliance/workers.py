"""Several HTTP server processes on one port (`server.workers`): the supervisor, which systemd sees as the main
PID, and what makes a process one of its workers.

Like nginx's master or gunicorn's arbiter, the supervisor serves no request itself. It starts N workers, each a
whole server (`aqe-v3 mcp start` with AQE_MCP_WORKER set) that binds the port with SO_REUSEPORT, so the kernel
spreads new connections over them. It reports READY to systemd once every worker is ready, pings the watchdog
only while every worker is alive and its event loop answers, restarts a worker that dies, and owns the admin
socket: `reload`, `pool drain` (SIGHUP, SIGTERM) and the other commands go to every worker over its own admin
socket (`control-worker-<i>.sock` beside the configured one).

The fleet is split, not shared: each worker runs its share of `fleet.agents` (and of the pool's connections),
so each keeps its agents on its own unix sockets, supervised by its own loop, with no extra hop through another
process; together they have about what the configuration asks for (at least one agent of each type each).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from qe_appliance import __version__
from qe_appliance.config import Config, ConfigError, control_socket
from qe_appliance.control.client import NotRunning, Refused, ask
from qe_appliance.control.commandsocket import CommandError, CommandSocket
from qe_appliance.proctitle import set_title
from qe_appliance.systemd.notify import Notifier

log = logging.getLogger("aqe_mcp.workers")

# "<index>/<count>/<supervisor pid>" in a worker's environment, and the supervisor's admin socket.
WORKER_ENV = "AQE_MCP_WORKER"
SUPERVISOR_SOCKET_ENV = "AQE_MCP_SUPERVISOR_SOCKET"
READY_TIMEOUT_S = 60.0
# How long a worker has to answer the supervisor's health check (its event loop is stuck past this).
HEALTH_TIMEOUT_S = 5.0
MAX_RESTART_BACKOFF_S = 30.0
# A worker that ran this long before dying starts again after the shortest back-off.
STABLE_S = 60.0
DRAIN_DEADLINE_S = 30.0
# Variables meant for the supervisor alone: systemd's notification socket and watchdog.
_SUPERVISOR_ONLY = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Role(msgspec.Struct, frozen=True):
    """This process is worker `index` (from 1) of `count`, started by the supervisor with pid `supervisor`."""

    index: int
    count: int
    supervisor: int
    supervisor_socket: Path


def role() -> Role | None:
    value = os.environ.get(WORKER_ENV)
    if not value:
        return None
    index, count, supervisor = (int(part) for part in value.split("/"))
    return Role(index, count, supervisor, Path(os.environ[SUPERVISOR_SOCKET_ENV]))


def worker_count(config: Config) -> int:
    """server.workers, with `auto` = the cores this process may run on."""
    wanted = config.server.workers
    if wanted == "auto":
        return len(os.sched_getaffinity(0))
    return wanted


def worker_socket(control: Path, index: int) -> Path:
    return control.with_name(f"{control.stem}-worker-{index}{control.suffix}")


def for_worker(config: Config, me: Role) -> Config:
    """A worker's configuration: its own admin socket and its share of the fleet and the pool."""
    n = me.count
    agents = {kind: math.ceil(count / n) for kind, count in config.fleet.agents.items()}
    fleet = msgspec.structs.replace(
        config.fleet, agents=agents, max_agents=max(math.ceil(config.fleet.max_agents / n), sum(agents.values()))
    )
    pool = msgspec.structs.replace(
        config.pool,
        max_connections=math.ceil(config.pool.max_connections / n),
        min_connections=math.ceil(config.pool.min_connections / n),
    )
    server = msgspec.structs.replace(
        config.server, control_socket=str(worker_socket(control_socket(config), me.index))
    )
    return msgspec.structs.replace(config, server=server, fleet=fleet, pool=pool)


def become_worker(me: Role) -> None:
    """Die with the supervisor (SIGTERM: drain), so a killed supervisor leaves no worker holding the port."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != me.supervisor:  # it died before the signal was armed
        sys.exit(1)


def service_metrics(me: Role, own: Callable[[], bytes]) -> Callable[[], Awaitable[bytes]]:
    """A worker's /metrics: every worker's, summed by the supervisor (this worker's own if it cannot answer)."""

    async def fetch() -> bytes:
        try:
            text = await ask(me.supervisor_socket, "metrics", {"export": "prometheus"}, timeout=HEALTH_TIMEOUT_S)
        except (NotRunning, Refused):
            return own()
        return str(text).encode()

    return fetch


def service_dashboard(
    me: Role, own: Callable[[float | None], dict[str, Any]]
) -> Callable[[float | None], Awaitable[dict[str, Any]]]:
    """A worker's /dashboard.json: every worker's, summed by the supervisor, with this worker's charts (this
    worker's own alone if the supervisor cannot answer)."""

    async def fetch(since: float | None) -> dict[str, Any]:
        try:
            answer = await ask(me.supervisor_socket, "metrics",
                               {"export": "dashboard", "since": since, "historyOf": me.index},
                               timeout=HEALTH_TIMEOUT_S)
        except (NotRunning, Refused):
            return own(since)
        return dict(answer)

    return fetch


class Worker:
    def __init__(self, index: int, socket_path: Path) -> None:
        self.index = index
        self.socket = socket_path
        self.process: asyncio.subprocess.Process | None = None
        self.started = 0.0
        self.restarts = 0
        self.backoff_s = 0.0
        self.healthy_at = 0.0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None


class Supervisor:
    """Starts, watches and restarts the workers; systemd's main PID; owns the admin socket."""

    def __init__(self, config: Config, argv: list[str], source: Callable[[], Config] | None) -> None:
        self.config = config
        self.argv = argv
        self.source = source
        self.count = worker_count(config)
        self.notifier = Notifier()
        control = control_socket(config)
        self.workers = [Worker(i, worker_socket(control, i)) for i in range(1, self.count + 1)]
        self.control = CommandSocket(control, {
            "status": self._status,
            "reload": self._reload,
            "pool.drain": self._drain,
            **{cmd: self._fan_out(cmd) for cmd in (
                "pool.status", "pool.configure", "tools.list", "tools.lookup", "tools.stats", "balance.status",
                "balance.configure", "balance.agents", "alerts.list",
            )},
            "metrics": self._metrics,
        }, own_directory=not config.server.control_socket)
        self.address: tuple[str, int] | None = None
        self.state = "starting"
        self.reloads = {"ok": 0, "failed": 0}
        self.last_reload: dict[str, Any] | None = None
        self._holder: socket.socket | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopped = asyncio.Event()
        self._terms = 0
        self._started = time.monotonic()

    # ---- lifecycle ---------------------------------------------------------------------------------

    async def serve(self) -> int:
        started = time.perf_counter()
        cfg = self.config.server
        self.address = self._hold_port(cfg.host, cfg.port)
        set_title(f"supervisor :{self.address[1]} ({self.count} workers)")
        self._install_signals()
        await self.control.start()
        self.notifier.status(f"starting {self.count} workers")
        for worker in self.workers:
            await self._launch(worker)
        try:
            await asyncio.gather(*(self._wait_ready(w) for w in self.workers))
        except RuntimeError as exc:
            self.state = "stopping"
            log.error("%s; stopping the others", exc)
            await self._stop_workers(5.0)
            await self.control.close()
            return 1
        self.state = "ready"
        url = f"http://{cfg.host if ':' not in cfg.host else f'[{cfg.host}]'}:{self.address[1]}/mcp"
        self.notifier.ready(f"serving {url} with {self.count} workers")
        self._spawn(self._health())
        log.info("aqe-mcp %s supervising %d workers on %s (ready in %.0f ms), pids %s", __version__, self.count,
                 url, (time.perf_counter() - started) * 1000, ", ".join(str(w.pid) for w in self.workers))
        await self._stopped.wait()
        return 0

    def _hold_port(self, host: str, port: int) -> tuple[str, int]:
        """Bind (not listen on) the port with SO_REUSEPORT for the supervisor's whole life: `--port 0` is
        resolved once, and a restarted worker gets the same port back."""
        family, kind, proto, _, where = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(where)
        self._holder = sock
        bound = sock.getsockname()
        return host, int(bound[1])

    async def _launch(self, worker: Worker) -> None:
        assert self.address is not None
        env = {k: v for k, v in os.environ.items() if k not in _SUPERVISOR_ONLY}
        env[WORKER_ENV] = f"{worker.index}/{self.count}/{os.getpid()}"
        env[SUPERVISOR_SOCKET_ENV] = str(self.control.path)
        worker.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "qe_appliance.cli", *self.argv, "--port", str(self.address[1]),
            stdin=asyncio.subprocess.DEVNULL, env=env,
        )
        worker.started = time.monotonic()
        self._spawn(self._watch(worker, worker.process))

    async def _wait_ready(self, worker: Worker) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if not worker.alive:
                code = worker.process.returncode if worker.process is not None else None
                raise RuntimeError(f"worker {worker.index} exited during start-up (exit code {code})")
            try:
                status = await ask(worker.socket, "status", timeout=HEALTH_TIMEOUT_S)
            except (NotRunning, Refused):
                status = None
            if status is not None and status.get("state") == "ready":
                worker.healthy_at = time.monotonic()
                return
            await asyncio.sleep(0.01)
        raise RuntimeError(f"worker {worker.index} was not ready within {READY_TIMEOUT_S:.0f} s")

    async def _watch(self, worker: Worker, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        if self.state in ("draining", "stopping") or worker.process is not process:
            return
        ran = time.monotonic() - worker.started
        floor = self.config.fleet.restart_backoff_ms / 1000
        worker.backoff_s = floor if ran > STABLE_S else min(max(worker.backoff_s * 2, floor), MAX_RESTART_BACKOFF_S)
        log.warning("worker %d (pid %d) exited with code %s; restarting it in %.1f s", worker.index, process.pid,
                    code, worker.backoff_s)
        await asyncio.sleep(worker.backoff_s)
        if self.state in ("draining", "stopping"):
            return
        worker.restarts += 1
        await self._launch(worker)
        try:
            await self._wait_ready(worker)
        except RuntimeError as exc:
            log.error("%s", exc)  # its watcher restarts it again
            return
        log.info("worker %d restarted, pid %d", worker.index, worker.pid)

    async def _health(self) -> None:
        """Ask each worker for its status every few seconds; the watchdog is pinged only while all answer."""
        interval = min(self.notifier.watchdog_interval_s or 1.0, 1.0)
        while True:
            await asyncio.gather(*(self._check(w) for w in self.workers))
            now = time.monotonic()
            if all(w.alive and now - w.healthy_at < HEALTH_TIMEOUT_S + interval for w in self.workers):
                if self.notifier.watchdog_interval_s is not None:
                    self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def _check(self, worker: Worker) -> None:
        if not worker.alive:
            return
        try:
            await ask(worker.socket, "status", timeout=HEALTH_TIMEOUT_S)
        except (NotRunning, Refused):
            return
        worker.healthy_at = time.monotonic()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_term)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload()))

    def _on_term(self) -> None:
        self._terms += 1
        if self._terms > 1:  # a second stop signal: the workers exit at once too
            log.warning("second stop signal: stopping the workers now")
            self._signal_workers(signal.SIGTERM)
            return
        self.begin_drain(DRAIN_DEADLINE_S)

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _signal_workers(self, sig: int) -> None:
        for worker in self.workers:
            if worker.alive and worker.process is not None:
                worker.process.send_signal(sig)

    # ---- reload and drain, for every worker ------------------------------------------------------------

    async def reload(self) -> dict[str, Any]:
        """Each worker re-reads the file; a file any of them refuses is refused for all (each keeps its config)."""
        self.notifier.reloading()
        try:
            if self.source is not None:
                try:
                    new = self.source()
                except ConfigError as exc:
                    report: dict[str, Any] = {"ok": False, "errors": exc.errors}
                    log.error("reload refused, the running configuration stays:\n%s", exc)
                    self.reloads["failed"] += 1
                    self.last_reload = report
                    return report
                if worker_count(new) != self.count:
                    log.warning("server.workers changed (%d -> %d): restart the service to apply it",
                                self.count, worker_count(new))
                self.config = new  # its drain grace and restart back-off
            answers = await asyncio.gather(*(self._ask(w, "reload", {}) for w in self.workers))
            reports = [a for a in answers if isinstance(a, dict)]
            report = dict(reports[0]) if reports else {"ok": False, "errors": ["no worker answered"]}
            report["ok"] = bool(reports) and len(reports) == len(self.workers) and all(r.get("ok") for r in reports)
            if self.source is not None and worker_count(new) != self.count:
                report["needsRestart"] = sorted({*report.get("needsRestart", []), "server.workers"})
            report["workers"] = self._per_worker(answers, lambda w, a: {"ok": bool(a.get("ok"))})
            self.reloads["ok" if report["ok"] else "failed"] += 1
            self.last_reload = report
            return report
        finally:
            self.notifier.ready()

    def begin_drain(self, deadline_s: float) -> None:
        if self.state in ("draining", "stopping"):
            return
        self.state = "draining"
        self._spawn(self._drain_and_stop(deadline_s))

    async def _drain_and_stop(self, deadline_s: float) -> None:
        self.notifier.stopping()
        log.info("draining %d workers (deadline %.0f s after server.drainGraceMs)", self.count, deadline_s)
        await asyncio.gather(*(self._ask(w, "pool.drain", {"timeoutS": deadline_s}) for w in self.workers))
        grace_s = self.config.server.drain_grace_ms / 1000
        await self._stop_workers(grace_s + deadline_s + 5.0)
        await self.control.close()
        if self._holder is not None:
            self._holder.close()
        self.notifier.close()
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        log.info("stopped: %d workers supervised for %.1f s", self.count, time.monotonic() - self._started)
        self._stopped.set()

    async def _stop_workers(self, timeout_s: float) -> None:
        """Wait for the workers to exit (a drain asked them to); SIGTERM, then SIGKILL, the late ones."""
        self.state = "stopping"
        running = [w.process for w in self.workers if w.alive and w.process is not None]
        if not running:
            return
        _, late = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in running], timeout=timeout_s)
        if late:
            for process in running:
                if process.returncode is None:
                    log.warning("worker pid %d did not stop in time; killing it", process.pid)
                    process.kill()
            await asyncio.wait(late, timeout=5.0)

    # ---- the admin socket ----------------------------------------------------------------------------

    async def _ask(self, worker: Worker, cmd: str, args: dict[str, Any]) -> Any:
        """A worker's answer, or a dict saying why there is none (so one down worker does not hide the rest)."""
        if not worker.alive:
            return {"ok": False, "error": f"worker {worker.index} is not running"}
        try:
            return await ask(worker.socket, cmd, args)
        except (NotRunning, Refused) as exc:
            return {"ok": False, "error": str(exc)}

    def _per_worker(self, answers: list[Any], pick: Callable[[Worker, Any], Any]) -> list[dict[str, Any]]:
        """One entry per worker: its index and pid with `pick(worker, answer)`, or why it did not answer."""
        return [
            {"worker": w.index, "pid": w.pid, **(a if _failed(a) else pick(w, a))}
            for w, a in zip(self.workers, answers, strict=True)
        ]

    async def _status(self, args: dict[str, Any]) -> Any:
        answers = await asyncio.gather(*(self._ask(w, "status", {}) for w in self.workers))
        statuses = [a for a in answers if not _failed(a)]
        return {
            "version": __version__,
            "pid": os.getpid(),
            "state": self.state,
            "address": list(self.address) if self.address else None,
            "workers": self.count,
            "tools": statuses[0]["tools"] if statuses else 0,
            "sessions": sum(s["sessions"] for s in statuses),
            "connections": sum(s["connections"] for s in statuses),
            "requests": sum(s["requests"] for s in statuses),
            "agents": sum(s["agents"] for s in statuses),
            "auth": statuses[0]["auth"] if statuses else "unknown",
            "reloads": dict(self.reloads),
            "lastReload": self.last_reload,
            "perWorker": self._per_worker(answers, lambda w, s: {
                "state": s["state"], "restarts": w.restarts, "connections": s["connections"],
                "requests": s["requests"], "agents": s["agents"],
            }),
        }

    async def _reload(self, args: dict[str, Any]) -> Any:
        return await self.reload()

    async def _drain(self, args: dict[str, Any]) -> Any:
        timeout = args.get("timeoutS", DRAIN_DEADLINE_S)
        if not isinstance(timeout, int | float) or timeout < 0:
            raise CommandError("--timeout must be a number of seconds, 0 or more")
        self.begin_drain(float(timeout))
        return {"draining": True, "graceMs": self.config.server.drain_grace_ms, "deadlineS": timeout,
                "workers": self.count}

    async def _metrics(self, args: dict[str, Any]) -> Any:
        """Prometheus text and /dashboard.json summed over the workers; the JSON export as _fan_out gives it."""
        export = args.get("export", "json")
        if export == "json":
            answers = await asyncio.gather(*(self._ask(w, "metrics", {**args, "export": "json-parts"})
                                             for w in self.workers))
            good = [(w.index, a) for w, a in zip(self.workers, answers, strict=True) if not _failed(a)]
            if not good:
                raise CommandError("; ".join(str(a["error"]) for a in answers))
            return {**merge_snapshots(good), "perWorker": self._per_worker(answers, lambda w, a: {})}
        if export != "dashboard":
            return await self._fan_out("metrics")(args)
        from qe_appliance.monitoring.dashboard import combine

        history_of = args.get("historyOf", 1)
        parts = {**args, "export": "dashboard-parts"}
        parts.pop("historyOf", None)
        answers = await asyncio.gather(*(self._ask(w, "metrics", parts) for w in self.workers))
        try:
            return combine([{**a, "worker": w.index, "pid": w.pid} if _failed(a) else {**a, "worker": w.index}
                            for w, a in zip(self.workers, answers, strict=True)], self.config, history_of)
        except ValueError as exc:
            raise CommandError(str(exc)) from None

    def _fan_out(self, cmd: str) -> Callable[[dict[str, Any]], Any]:
        """A command for every worker: a change applies to all; an answer is worker 1's with each worker's
        beside it (agents: all of them, each with its worker)."""

        async def run(args: dict[str, Any]) -> Any:
            answers = await asyncio.gather(*(self._ask(w, cmd, args) for w in self.workers))
            good = [a for a in answers if not _failed(a)]
            if not good:
                raise CommandError("; ".join(str(a["error"]) for a in answers))
            if cmd == "balance.agents":
                return _agents_of_workers(self.workers, answers)
            if cmd == "metrics" and args.get("export") == "prometheus":
                return merge_prometheus([a for a in good if isinstance(a, str)])
            if isinstance(good[0], dict):
                return {**good[0], "perWorker": self._per_worker(answers, lambda w, a: a)}
            return good[0]

        return run


# Gauges that are the same in every worker (say it once), the earliest of them, or a share of a whole (sum them).
_SAME = frozenset({"aqe_mcp_build_info", "aqe_mcp_tool_target_latency_seconds", "aqe_mcp_registry_tools",
                   "process_max_fds"})
_EARLIEST = frozenset({"aqe_mcp_start_time_seconds", "process_start_time_seconds"})
_SHARES = frozenset({"aqe_mcp_pool_connections", "aqe_mcp_pool_max_connections", "aqe_mcp_agents",
                     "aqe_mcp_sessions", "aqe_mcp_http_connections", "process_resident_memory_bytes",
                     "process_virtual_memory_bytes", "process_open_fds"})


def _rule(family: str, kind: str, per_agent: bool) -> str:
    """How one family's samples of several workers combine: "worker" (kept apart under a `worker` label),
    "same" (said once), "earliest", or "sum"."""
    if per_agent or kind == "gauge" and family not in _SAME | _EARLIEST | _SHARES:
        return "worker"
    return "same" if family in _SAME else "earliest" if family in _EARLIEST else "sum"


def merge_prometheus(texts: list[str]) -> str:
    """One exposition for all workers (text format 0.0.4): counters and histograms summed, so rates and
    quantiles come out for the whole service; gauges summed where each worker holds a share, said once where
    all hold the same, and otherwise (ratios, alerts, and anything per agent, whose ids repeat across
    workers) kept per worker under a `worker` label."""
    order: list[str] = []
    heads: dict[str, list[str]] = {}
    kinds: dict[str, str] = {}
    samples: dict[str, dict[str, float]] = {}
    for index, text in enumerate(texts, start=1):
        family = ""
        for line in text.splitlines():
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    if family not in heads:
                        order.append(family)
                        heads[family], samples[family] = [], {}
                    if len(heads[family]) < 2 and line not in heads[family]:
                        heads[family].append(line)
                    if parts[1] == "TYPE":
                        kinds[family] = parts[3] if len(parts) > 3 else "untyped"
                continue
            if not line or not family:
                continue
            key, _, raw = line.rpartition(" ")
            value = float(raw)
            kind = kinds.get(family, "untyped")
            rule = _rule(family, kind, 'agent="' in key)
            per_worker = rule == "worker"
            if per_worker:
                name, brace, rest = key.partition("{")
                key = f'{name}{{worker="{index}"' + (f",{rest}" if brace else "}")
            seen = samples[family]
            if key not in seen or per_worker:
                seen[key] = value
            elif rule == "earliest":
                seen[key] = min(seen[key], value)
            elif rule == "sum":
                seen[key] += value
    lines: list[str] = []
    for family in order:
        lines.extend(heads[family])
        lines.extend(f"{key} {_number(value)}" for key, value in samples[family].items())
    return "\n".join(lines) + "\n"


def merge_snapshots(snapshots: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """One `metrics --export json` for all workers, from each worker's (index, snapshot with its histograms
    serialized): the rules of merge_prometheus, histograms merged so their percentiles are those of every call."""
    import base64

    from qe_appliance._core.histogram import Histogram

    families: dict[str, dict[str, Any]] = {}
    merged: dict[str, dict[str, dict[str, Any]]] = {}
    for index, snapshot in snapshots:
        for name, family in snapshot["metrics"].items():
            if name not in families:
                families[name] = {"type": family["type"], "help": family["help"]}
                merged[name] = {}
            seen = merged[name]
            for sample in family["samples"]:
                labels = sample["labels"]
                rule = _rule(name, family["type"], "agent" in labels)
                if rule == "worker":
                    labels = {"worker": str(index), **labels}
                key = msgspec.json.encode(labels).decode()
                if "histogram" in sample:
                    histogram = Histogram.from_bytes(base64.b64decode(sample["histogram"]))
                    if key in seen:
                        seen[key]["histogram"].merge(histogram)
                    else:
                        seen[key] = {"labels": labels, "buckets": sample["buckets"], "histogram": histogram}
                elif key not in seen or rule == "worker":
                    seen[key] = {k: v for k, v in sample.items() if k != "labels"} | {"labels": labels}
                elif rule == "earliest":
                    seen[key]["value"] = min(seen[key]["value"], sample["value"])
                elif rule == "sum":
                    for field in ("value", "count", "sum"):
                        if field in sample:
                            seen[key][field] += sample[field]
    for name, family in families.items():
        family["samples"] = [_read_histogram(sample) if "histogram" in sample else sample
                             for sample in merged[name].values()]
    return {"generatedAt": snapshots[0][1]["generatedAt"], "metrics": families}


def _read_histogram(sample: dict[str, Any]) -> dict[str, Any]:
    """A merged histogram's sample as Monitor.snapshot writes one, its `le` buckets at the same bounds."""
    histogram = sample["histogram"]
    bounds = [float(le) for le in sample["buckets"] if le != "+Inf"]
    counts = [*histogram.cumulative(bounds), histogram.count]
    return {
        "labels": sample["labels"], "count": histogram.count, "sum": histogram.total,
        "p50": histogram.percentile(50), "p95": histogram.percentile(95), "p99": histogram.percentile(99),
        "max": histogram.max, "buckets": dict(zip(sample["buckets"], counts, strict=True)),
    }


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _failed(answer: Any) -> bool:
    """What Supervisor._ask returns for a worker that did not answer."""
    return isinstance(answer, dict) and answer.get("ok") is False and "error" in answer


def run_supervisor(config: Config, argv: list[str], source: Callable[[], Config] | None) -> int:
    import uvloop

    async def main() -> int:
        return await Supervisor(config, argv, source).serve()

    return uvloop.run(main())


def _agents_of_workers(workers: list[Worker], answers: list[Any]) -> list[dict[str, Any]]:
    """Every worker's agents, each with its worker. On a shared store (PostgreSQL) each worker also lists every
    live instance's agents (`instance`: host:pid:port), so those rows are kept once, and a worker's own
    instance is labelled with that worker."""
    rows: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    for worker, answer in zip(workers, answers, strict=True):
        for agent in answer if isinstance(answer, list) else ():
            instance = agent.get("instance")
            # A worker's own rows: all of them on SQLite, those of its own instance (its pid) on PostgreSQL.
            if instance is None or instance.split(":")[-2:-1] == [str(worker.pid)]:
                rows.append({**agent, "worker": worker.index})
            else:
                others.append(agent)
    seen = {(row.get("instance"), row.get("id")) for row in rows}
    for agent in others:
        key = (agent.get("instance"), agent.get("id"))
        if key not in seen:
            seen.add(key)
            rows.append(agent)
    return rows
