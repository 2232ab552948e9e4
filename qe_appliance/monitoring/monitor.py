"""The appliance's Monitor: Cython histograms fed by the request path, read at scrape time together with the
registry, pool, balancer, fleet and alert state, and exposed as Prometheus text, JSON and dashboard data.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import platform
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import msgspec

from qe_appliance import __version__
from qe_appliance._core.histogram import Histogram
from qe_appliance.config import Config
from qe_appliance.monitoring.alerts import DEFAULT_MODE, WINDOW_S, AlertBook, Traffic, measure
from qe_appliance.monitoring.dashboard import RECENT_ALERTS, History, encode_traffic, iso, stamped
from qe_appliance.monitoring.dashboard import build as build_dashboard
from qe_appliance.monitoring.families import Family, Kind, buckets

if TYPE_CHECKING:
    from qe_appliance.mcp.inbound import Fault
    from qe_appliance.tools.runner import Outcome

log = logging.getLogger("aqe_mcp.monitoring")

# Prometheus `le` bounds in seconds: tool calls and MCP requests (targets run from 10 to 500 ms) ...
REQUEST_BOUNDS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0
)
# ... and registry lookups (target 5 ms, typically a few µs).
LOOKUP_BOUNDS: Final = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2)
# Label values per family; a caller that sends more distinct names than this is counted under OTHER,
# so no input can grow the exposition without bound.
MAX_SERIES: Final = 200
# Why a request or connection was turned away: missing/wrong token, rate limit, too many connections,
# slow or oversized headers, oversized body, JSON nested too deep, malformed HTTP, session table full.
REFUSAL_REASONS: Final = (
    "auth", "rate_limit", "connections", "header_timeout", "header_size", "body_size", "json_depth",
    "malformed", "sessions", "subscriptions",
)
OTHER: Final = "other"
# A runner outcome as the `kind` label of the error counters.
_FAULT_OF: Final[dict[str, Fault]] = {"caller-error": "caller", "server-error": "server"}
# Pool counter samples kept between evaluations (one per dashboardIntervalMs, the window is WINDOW_S).
_POOL_SAMPLES: Final = 1000

# Scalar metrics read from a source's stats: (metric name, type, help, key in the stats, scale to base units).
_Source = tuple[str, Kind, str, str, float]
_REGISTRY: Final[tuple[_Source, ...]] = (
    ("aqe_mcp_registry_tools", "gauge", "Tools in the registry.", "totalTools", 1),
    ("aqe_mcp_registry_lookups_total", "counter", "Tool name lookups.", "lookups", 1),
    ("aqe_mcp_registry_cache_hits_total", "counter", "Lookups answered by the LRU cache.", "cacheHits", 1),
    ("aqe_mcp_registry_cache_hit_ratio", "gauge", "Share of lookups the LRU cache answered.",
     "cacheHitRate", 1),
    ("aqe_mcp_registry_fuzzy_resolutions_total", "counter", "Mistyped tool names resolved to a tool.",
     "fuzzyResolutions", 1),
    ("aqe_mcp_registry_misses_total", "counter", "Lookups that found no tool.", "misses", 1),
)
_POOL: Final[tuple[_Source, ...]] = (
    ("aqe_mcp_pool_max_connections", "gauge", "pool.maxConnections in force.", "maxConnections", 1),
    ("aqe_mcp_pool_acquires_total", "counter", "Connections taken from the pool.", "acquires", 1),
    ("aqe_mcp_pool_hits_total", "counter", "Acquires served by an idle connection.", "hits", 1),
    ("aqe_mcp_pool_hit_ratio", "gauge", "Share of acquires served by an idle connection.", "hitRate", 1),
    ("aqe_mcp_pool_acquire_timeouts_total", "counter", "Acquires that gave up waiting.", "timeouts", 1),
    ("aqe_mcp_pool_acquire_wait_p95_seconds", "gauge", "95th percentile of recent acquire waits.",
     "p95WaitMs", 0.001),
)
_BALANCER: Final[tuple[_Source, ...]] = (
    ("aqe_mcp_balancer_picks_total", "counter", "Agents picked for fleet requests.", "picks", 1),
    ("aqe_mcp_balancer_no_candidate_total", "counter", "Picks that found no agent able to take the call.",
     "noCandidate", 1),
    ("aqe_mcp_balancer_ejections_total", "counter", "Outlier ejections of failing agents.", "ejections", 1),
    ("aqe_mcp_fleet_saturated_total", "counter", "Fleet requests refused because every agent was full.",
     "saturated", 1),
)
_AGENT: Final[tuple[_Source, ...]] = (
    ("aqe_mcp_agent_in_flight", "gauge", "Requests in flight on the agent.", "inFlight", 1),
    ("aqe_mcp_agent_capacity", "gauge", "Requests the agent may run at once.", "capacity", 1),
    ("aqe_mcp_agent_completed_total", "counter", "Calls the agent completed.", "completed", 1),
    ("aqe_mcp_agent_failed_total", "counter", "Calls that failed on the agent.", "failed", 1),
    ("aqe_mcp_agent_ejections_total", "counter", "Times the agent was ejected after failures.",
     "ejections", 1),
    ("aqe_mcp_agent_latency_ewma_seconds", "gauge", "Moving average of the agent's call latency.",
     "ewmaMs", 0.001),
)


class _Series:
    """One label value's latency histogram, its errors by whose fault they were, and (tools) its latency per
    mode of tools.<name>.modes ("" for calls in none), each judged against its own target."""

    __slots__ = ("histogram", "errors", "modes", "_windows")

    def __init__(self, windows: int) -> None:
        self.histogram = Histogram(1, windows)
        self.errors: dict[Fault, int] = {"caller": 0, "server": 0}
        self.modes: dict[str, Histogram] = {}
        self._windows = windows

    def mode(self, name: str) -> Histogram:
        histogram = self.modes.get(name)
        if histogram is None:
            histogram = self.modes[name] = Histogram(1, self._windows)
        return histogram


class Sources(msgspec.Struct, frozen=True):
    """What the Monitor reads at scrape time, each a callable so a rebuilt part (the registry after a reload)
    is read as it is now: registry stats, fleet status, open sessions, open HTTP connections. None: absent."""

    registry: Callable[[], Any] | None = None
    fleet: Callable[[], dict[str, Any]] | None = None
    sessions: Callable[[], int] | None = None
    connections: Callable[[], int] | None = None


class MetricsSnapshot(msgspec.Struct, rename="camel", frozen=True):
    """`metrics --export json`: {"generatedAt", "metrics": {family name: family}}."""

    generated_at: str
    metrics: dict[str, Any]


class Monitor:
    """Records what the request path measures and answers /metrics, `metrics --export json`,
    /dashboard.json and `alerts list`. The record_* methods are O(1) and take no lock: call them from the
    event loop thread."""

    def __init__(self, config: Config, sources: Sources | None = None) -> None:
        self._config = config
        self._sources_of = sources or Sources()
        self._started = time.time()
        self._started_mono = time.monotonic()
        self._requests: dict[str, _Series] = {}
        self._tools: dict[str, _Series] = {}
        # Every request, requests that failed by the server's fault (an internal JSON-RPC error or a tool
        # call that returned isError for a bug, a timeout or a crashed agent), those that failed by the
        # caller's, every tool call and registry lookup times, each with per-second windows for "the last
        # minute". Only server faults feed the error-rate alert: a caller's mistakes are its own to fix.
        self._all_requests = Histogram()
        self._failed = Histogram()
        self._caller_failed = Histogram()
        self._tool_calls = Histogram()
        # Tool calls in no mode of tools.<name>.modes: the overall p95 alert judges these, as a verify run's
        # seconds are another kind of work with its own target.
        self._plain_calls = Histogram()
        self._lookups = Histogram()
        self._http: dict[int, int] = {}
        # Requests and connections turned away by a limit, by reason (see REFUSAL_REASONS).
        self._refused: dict[str, int] = dict.fromkeys(REFUSAL_REASONS, 0)
        self._reloads = {"ok": 0, "failed": 0}
        self._pool_samples: deque[tuple[float, int, int]] = deque(maxlen=_POOL_SAMPLES)
        self._pool_recent = (0, 0)
        self._alerts = AlertBook()
        self._history = History()
        # The Prometheus registry, built at the first scrape: prometheus_client takes ~40 ms to import, which
        # would otherwise sit on every start-up's critical path.
        self._exposition: Any = None

    def reconfigure(self, config: Config) -> None:
        """Take new thresholds and targets (reload); they apply from the next evaluation and scrape."""
        self._config = config

    async def run_alerts(self) -> None:
        """Evaluate the alert rules every monitoring.dashboardIntervalMs, until cancelled."""
        while True:
            await asyncio.sleep(self._config.monitoring.dashboard_interval_ms / 1000)
            self.evaluate()

    # ---- hot path ----------------------------------------------------------------------------------

    def record_request(self, method: str, seconds: float, error: Fault | None) -> None:
        series = self._requests.get(method) or _series(self._requests, method, 0)
        series.histogram.record(seconds)
        self._all_requests.record(seconds)
        if error is not None:
            self._count_error(series, error, seconds)

    def record_tool(self, tool: str, seconds: float, outcome: Outcome, mode: str = "") -> None:
        series = self._tools.get(tool) or _series(self._tools, tool, WINDOW_S)
        series.histogram.record(seconds)
        series.mode(mode).record(seconds)
        self._tool_calls.record(seconds)
        if not mode:
            self._plain_calls.record(seconds)
        if outcome != "ok":
            self._count_error(series, _FAULT_OF[outcome], seconds)

    def _count_error(self, series: _Series, fault: Fault, seconds: float) -> None:
        series.errors[fault] += 1
        (self._failed if fault == "server" else self._caller_failed).record(seconds)

    def record_lookup(self, seconds: float) -> None:
        self._lookups.record(seconds)

    def record_http(self, status: int) -> None:
        http = self._http
        if status in http:
            http[status] += 1
        elif len(http) < MAX_SERIES:
            http[status] = 1

    def record_refusal(self, reason: str) -> None:
        """A request or connection turned away by a limit; `reason` is one of REFUSAL_REASONS."""
        if reason in self._refused:
            self._refused[reason] += 1

    def count_reload(self, ok: bool) -> None:
        self._reloads["ok" if ok else "failed"] += 1

    # ---- alerts ------------------------------------------------------------------------------------

    def evaluate(self, now: float | None = None) -> list[dict[str, Any]]:
        """Run the alert rules at `now` (wall-clock seconds, default the current time); returns the
        transitions (see AlertBook.update)."""
        now = time.time() if now is None else now
        read_fleet = self._sources_of.fleet
        fleet = self._read("fleet", read_fleet) if read_fleet is not None else None
        self._pool_recent = self._pool_window((fleet or {}).get("pool"), now)
        traffic = self._traffic()
        self._history.add(now, traffic, (fleet or {}).get("pool"))
        return self._alerts.update(measure(self._config, traffic), now)

    def alerts(self, resolved: int = 20) -> dict[str, list[dict[str, Any]]]:
        """Firing and pending alerts and the last `resolved` resolved ones (newest first)."""
        return self._alerts.listing(resolved)

    def _pool_window(self, pool: dict[str, Any] | None, now: float) -> tuple[int, int]:
        """Acquires and pool hits over the last WINDOW_S seconds, from the counters each evaluation saw."""
        samples = self._pool_samples
        if not pool:
            samples.clear()
            return 0, 0
        acquires, hits = int(pool.get("acquires") or 0), int(pool.get("hits") or 0)
        if samples and acquires < samples[-1][1]:
            samples.clear()  # a new pool (restart or re-initialised fleet) counts from zero again
        samples.append((now, acquires, hits))
        # The newest sample at or before the window's start stays as the baseline.
        while len(samples) > 1 and samples[1][0] <= now - WINDOW_S:
            samples.popleft()
        _, first_acquires, first_hits = samples[0]
        return acquires - first_acquires, hits - first_hits

    def _traffic(self) -> Traffic:
        span = min(float(WINDOW_S), max(time.monotonic() - self._started_mono, 1.0))
        return Traffic(
            span_s=span,
            tool_calls=self._tool_calls.recent(WINDOW_S),
            plain_calls=self._plain_calls.recent(WINDOW_S),
            tools={name: series.histogram.recent(WINDOW_S) for name, series in self._tools.items()},
            tool_modes={
                (name, mode): histogram.recent(WINDOW_S)
                for name, series in self._tools.items()
                for mode, histogram in series.modes.items()
            },
            lookups=self._lookups.recent(WINDOW_S),
            requests=self._all_requests.recent(WINDOW_S).count,
            failed=self._failed.recent(WINDOW_S).count,
            caller_failed=self._caller_failed.recent(WINDOW_S).count,
            pool_acquires=self._pool_recent[0],
            pool_hits=self._pool_recent[1],
        )

    # ---- exports -----------------------------------------------------------------------------------

    def prometheus(self) -> bytes:
        """Every metric in the Prometheus text exposition format (0.0.4), process metrics included."""
        # Imported at the first scrape: prometheus_client would cost every start-up ~40 ms.
        from qe_appliance.monitoring.exposition import registry, render

        if self._exposition is None:
            self._exposition = registry(self._families)
        return render(self._exposition)

    def snapshot(self, serialized: bool = False) -> MetricsSnapshot:
        """The appliance's metrics, with p50/p95/p99/max beside each histogram's buckets; `serialized` adds each
        histogram as base64 Histogram.to_bytes (for the supervisor of several workers to merge)."""
        return MetricsSnapshot(iso(time.time()), {family.name: _json_family(family, serialized)
                                                  for family in self._families()})

    def dashboard(self, since: float | None = None) -> dict[str, Any]:
        """/dashboard.json: the last minute of latency, errors and requests, pool, lookups, agents, alerts, and
        the history points newer than `since` (all of them when None)."""
        traffic, figures = self._dashboard_figures(since)
        return stamped(build_dashboard(traffic, self._config, **figures))

    def dashboard_parts(self, since: float | None = None) -> dict[str, Any]:
        """What /dashboard.json is built from, as JSON with the histograms serialized, for the supervisor of
        several workers to sum (see dashboard.combine)."""
        traffic, figures = self._dashboard_figures(since)
        connections = self._sources_of.connections
        return {**figures, "traffic": encode_traffic(traffic), "pid": os.getpid(),
                "connections": connections() if connections is not None else None}

    def _dashboard_figures(self, since: float | None) -> tuple[Traffic, dict[str, Any]]:
        registry, fleet, sessions = self._sources()
        return self._traffic(), {
            "requests_total": self._all_requests.count,
            "failed_total": self._failed.count,
            "tool_totals": {name: series.histogram.count for name, series in self._tools.items()},
            "registry": registry,
            "fleet": fleet,
            "sessions": sessions,
            "alerts": self._alerts.listing(RECENT_ALERTS),
            "uptime_s": time.monotonic() - self._started_mono,
            "history": self._history.since(since),
        }

    def _sources(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None, int | None]:
        source = self._sources_of
        registry = fleet = sessions = None
        if source.registry is not None:
            read_registry = source.registry
            registry = self._read("registry", lambda: msgspec.to_builtins(read_registry()))
        if source.fleet is not None:
            fleet = self._read("fleet", source.fleet)
        if source.sessions is not None:
            sessions = self._read("sessions", source.sessions)
        return registry, fleet, sessions

    @staticmethod
    def _read(what: str, read: Callable[[], Any]) -> Any:
        # A source that fails (a fleet shutting down, say) drops out of this scrape instead of failing it.
        try:
            return read()
        except Exception as exc:
            log.warning("metrics: cannot read the %s state this time (%s: %s)",
                        what, type(exc).__name__, exc)
            return None

    def _families(self) -> list[Family]:
        registry, fleet, sessions = self._sources()
        families = [
            Family("aqe_mcp_build_info", "gauge", "Version of aqe-mcp and of the Python running it.",
                   ("version", "python")).add(1, __version__, platform.python_version()),
            Family("aqe_mcp_start_time_seconds", "gauge", "When the server started (Unix time).")
            .add(self._started),
            *_series_families(
                self._requests, "method",
                ("aqe_mcp_requests_total", "aqe_mcp_request_errors_total",
                 "aqe_mcp_request_duration_seconds"),
                "MCP requests", "answered with a JSON-RPC error",
            ),
            *_series_families(
                self._tools, "tool",
                ("aqe_mcp_tool_calls_total", "aqe_mcp_tool_errors_total", "aqe_mcp_tool_duration_seconds"),
                "tool calls", "whose result had isError", by_mode=True,
            ),
            _tool_targets(self._config),
            Family("aqe_mcp_http_responses_total", "counter", "HTTP responses by status code.", ("status",),
                   [((str(status),), count) for status, count in sorted(self._http.items())]),
            Family("aqe_mcp_refused_total", "counter",
                   "Requests and connections turned away by a limit (server.* and rate limits), by reason.",
                   ("reason",), [((reason,), count) for reason, count in self._refused.items()]),
            Family("aqe_mcp_registry_lookup_duration_seconds", "histogram", "Time to resolve a tool name.",
                   bounds=LOOKUP_BOUNDS).add(self._lookups),
        ]
        if registry is not None:
            families += _from_stats(_REGISTRY, registry)
        if fleet is not None:
            families += _fleet_families(fleet)
        if sessions is not None:
            families.append(Family("aqe_mcp_sessions", "gauge", "Open handshake-era MCP sessions.")
                            .add(sessions))
        if self._sources_of.connections is not None:
            families.append(Family("aqe_mcp_http_connections", "gauge",
                                   "Open client connections (server.maxConnections bounds them).")
                            .add(self._sources_of.connections()))
        families += [
            _by_rule("aqe_mcp_alerts_firing", "Alerts firing, by rule.", self._alerts.counts("firing")),
            _by_rule("aqe_mcp_alerts_pending", "Alerts breached but not yet for the hold window, by rule.",
                     self._alerts.counts("pending")),
            Family("aqe_mcp_config_reloads_total", "counter", "Configuration reloads, by result.",
                   ("result",),
                   [((result,), count) for result, count in self._reloads.items()]),
        ]
        return families


def _series(table: dict[str, _Series], label: str, windows: int) -> _Series:
    if len(table) >= MAX_SERIES - 1:
        label = OTHER
    series = table.get(label)
    if series is None:
        series = table[label] = _Series(windows)
    return series


def _series_families(
    table: dict[str, _Series], label: str, names: tuple[str, str, str], what: str, failed: str,
    by_mode: bool = False,
) -> list[Family]:
    """Count, errors by kind (whose fault: caller or server) and duration histogram of each series of `table`,
    by `label`; with `by_mode`, the durations also by mode (tools.<name>.modes, "default" for none)."""
    total, errors, duration = names
    rows = sorted(table.items())
    durations: list[tuple[tuple[str, ...], Any]]
    if by_mode:
        durations = [((name, mode or DEFAULT_MODE), histogram)
                     for name, series in rows for mode, histogram in sorted(series.modes.items())]
    else:
        durations = [((name,), series.histogram) for name, series in rows]
    return [
        Family(total, "counter", f"{what[0].upper()}{what[1:]} handled, by {label}.", (label,),
               [((name,), series.histogram.count) for name, series in rows]),
        Family(errors, "counter",
               f"{what[0].upper()}{what[1:]} {failed}, by {label} and kind: caller (its arguments or names "
               f"were wrong) or server (a bug, a timeout, a crashed agent; only these count as the error rate).",
               (label, "kind"),
               [((name, kind), count) for name, series in rows for kind, count in series.errors.items()]),
        Family(duration, "histogram", f"Duration of {what}, by {label}{' and mode' if by_mode else ''}.",
               (label, "mode") if by_mode else (label,), durations, REQUEST_BOUNDS),
    ]


def _tool_targets(config: Config) -> Family:
    family = Family("aqe_mcp_tool_target_latency_seconds", "gauge",
                    "Latency target of each enabled tool, by mode (tools.<name>.targetLatencyMs for mode "
                    "\"default\", tools.<name>.modes.<mode>.targetLatencyMs).", ("tool", "mode"))
    for name, tool in sorted(config.tools.items()):
        if tool.enabled:
            for mode in ("", *sorted(tool.modes)):
                family.add(tool.target_ms(mode) / 1000.0, name, mode or DEFAULT_MODE)
    return family


def _from_stats(table: tuple[_Source, ...], stats: dict[str, Any], *labels: str) -> list[Family]:
    """One family per row of `table` whose key `stats` holds (None means "nothing measured yet")."""
    families = []
    for name, kind, text, key, scale in table:
        if stats.get(key) is not None:
            families.append(Family(name, kind, text).add(stats[key] * scale, *labels))
    return families


def _fleet_families(status: dict[str, Any]) -> list[Family]:
    pool = status.get("pool") or {}
    agents = status.get("agents") or []
    families = [
        Family("aqe_mcp_pool_connections", "gauge", "Agent connections, by state.", ("state",))
        .add(pool.get("available", 0), "idle")
        .add(pool.get("inUse", 0), "in_use"),
        *_from_stats(_POOL, pool),
        *_from_stats(_BALANCER, status.get("balancer") or {}),
    ]
    acquires, average_ms = pool.get("acquires") or 0, pool.get("averageWaitMs")
    if average_ms is not None:
        families.append(Family("aqe_mcp_pool_acquire_wait_seconds", "summary",
                               "Time acquires spent waiting for a connection.")
                        .add((acquires, average_ms / 1000.0 * acquires)))
    by_status: dict[str, int] = {}
    for agent in agents:
        status_name = str(agent.get("status"))
        by_status[status_name] = by_status.get(status_name, 0) + 1
    families.append(Family("aqe_mcp_agents", "gauge", "Agents, by status.", ("status",),
                           [((name,), count) for name, count in sorted(by_status.items())]))
    for name, kind, text, key, scale in _AGENT:
        family = Family(name, kind, text, ("agent",))
        for agent in agents:
            if agent.get(key) is not None:
                family.add(agent[key] * scale, str(agent.get("id")))
        families.append(family)
    return families


def _by_rule(name: str, text: str, counts: dict[str, int]) -> Family:
    return Family(name, "gauge", text, ("alert",), [((rule,), count) for rule, count in counts.items()])


def _json_family(family: Family, serialized: bool = False) -> dict[str, Any]:
    samples = []
    for values, value in family.samples:
        sample: dict[str, Any] = {"labels": dict(zip(family.labels, values, strict=True))}
        if family.kind == "histogram":
            sample.update({
                "count": value.count,
                "sum": value.total,
                "p50": value.percentile(50),
                "p95": value.percentile(95),
                "p99": value.percentile(99),
                "max": value.max,
                "buckets": dict(buckets(value, family.bounds)),
            })
            if serialized:
                sample["histogram"] = base64.b64encode(value.to_bytes()).decode()
        elif family.kind == "summary":
            sample.update({"count": value[0], "sum": value[1]})
        else:
            sample["value"] = value
        samples.append(sample)
    return {"type": family.kind, "help": family.help, "samples": samples}
