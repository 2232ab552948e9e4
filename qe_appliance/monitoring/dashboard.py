"""The data of `/dashboard.json`, the /dashboard page and `aqe-v3 mcp metrics --dashboard`: what an operator
glances at, from the last minute of traffic, the live pool, registry and fleet state, and a short history.
"""

from __future__ import annotations

import base64
import time
from collections import deque
from collections.abc import Iterable
from typing import Any, Final

from qe_appliance import __version__
from qe_appliance._core.histogram import Histogram
from qe_appliance.config import Config
from qe_appliance.monitoring.alerts import DEFAULT_MODE, Traffic

# Resolved alerts shown under "alerts" (the design's getRecentAlerts(10)).
RECENT_ALERTS = 10
_AGENT_FIELDS = (
    "id", "type", "status", "pid", "inFlight", "capacity", "ewmaMs", "completed", "failed", "restarts", "ejections"
)
# Points kept for the charts: one per alert evaluation (monitoring.dashboardIntervalMs), so five minutes at
# the default 1 s.
HISTORY_POINTS: Final = 300


class History:
    """The dashboard's charts over time. Each point is what the alert rules read at that evaluation (the
    last minute of traffic), so a chart crossing its threshold line is the alert's own view."""

    def __init__(self) -> None:
        self._points: deque[dict[str, Any]] = deque(maxlen=HISTORY_POINTS)

    def add(self, now: float, traffic: Traffic, pool: dict[str, Any] | None) -> None:
        calls = traffic.plain_calls
        moded = {name for (name, mode), h in traffic.tool_modes.items() if mode and h.count}
        self._points.append({
            "t": round(now, 3),
            **{key: _round(value) for key, value in _percentiles(calls).items() if key != "maxMs"},
            "calls": calls.count,
            "perSecond": _round(traffic.requests / traffic.span_s),
            "errorRate": _round(traffic.error_rate),
            "tools": {name: _round(_ms(h, 95)) for name, h in sorted(traffic.tools.items()) if h.count},
            # p95 per tool and mode ("tool/mode", "default" for calls in none) of the tools called in a mode.
            "modes": {f"{name}/{mode or DEFAULT_MODE}": _round(_ms(h, 95))
                      for (name, mode), h in sorted(traffic.tool_modes.items())
                      if h.count and name in moded},
            "poolHitRate": _round(traffic.pool_hit_rate),
            "poolInUse": (pool or {}).get("inUse"),
            "poolWaitP95Ms": _round((pool or {}).get("p95WaitMs")),
            "lookupP95Ms": _round(_ms(traffic.lookups, 95), 4),
        })

    def since(self, after: float | None) -> list[dict[str, Any]]:
        """Points newer than `after` (wall-clock seconds), oldest first; every point when None."""
        if after is None:
            return list(self._points)
        return [point for point in self._points if point["t"] > after]


def _round(value: float | None, digits: int = 3) -> float | None:
    # Three decimals of a millisecond or a ratio is finer than any chart shows; it keeps the JSON short.
    return None if value is None else round(value, digits)


def build(
    traffic: Traffic,
    config: Config,
    *,
    requests_total: int,
    failed_total: int,
    tool_totals: dict[str, int],
    registry: dict[str, Any] | None,
    fleet: dict[str, Any] | None,
    sessions: int | None,
    alerts: dict[str, list[dict[str, Any]]],
    uptime_s: float,
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    """Recent figures come from `traffic`; the `*_total` counts are since start; `history` is History.since()."""
    targets, limits = config.targets, config.monitoring.alert_thresholds
    # The overall figures are those of calls in no mode, as the p95 alert judges them: a verify run's seconds
    # are judged against its own target, in its tool's row.
    calls = traffic.plain_calls
    latency = {
        **_percentiles(calls),
        "calls": calls.count,
        "modeCalls": traffic.tool_calls.count - calls.count,
        "targetP95Ms": targets.p95_response_time,
        "alertP95Ms": limits.p95_response_time,
    }
    tools = [_tool_row(name, traffic, config, tool_totals.get(name, 0)) for name in sorted(traffic.tools)]
    lookups = traffic.lookups
    lookup = {
        "lookups": registry.get("lookups") if registry else None,
        "recent": lookups.count,
        "averageMs": lookups.total / lookups.count * 1000.0 if lookups.count else None,
        "p95Ms": _ms(lookups, 95),
        "targetMs": targets.tool_lookup_time,
        "cacheHitRate": registry.get("cacheHitRate") if registry else None,
        "fuzzyResolutions": registry.get("fuzzyResolutions") if registry else None,
    }
    return {
        "intervalMs": config.monitoring.dashboard_interval_ms,
        "windowS": round(traffic.span_s, 1),
        "uptimeS": round(uptime_s, 1),
        "latency": latency,
        "tools": tools,
        "pool": _pool(fleet, traffic, config) if fleet else None,
        "toolLookup": lookup,
        "requests": {"total": requests_total, "perSecond": traffic.requests / traffic.span_s},
        # The rate (and its alert) counts server faults only; callers' mistakes are shown beside it.
        "errors": {"rate": traffic.error_rate, "threshold": limits.error_rate, "total": failed_total,
                   "callerRecent": traffic.caller_failed},
        "agents": [{key: agent.get(key) for key in _AGENT_FIELDS} | ({"worker": agent["worker"]} if "worker" in agent
                                                                       else {}) for agent in _agents(fleet)],
        "sessions": sessions,
        "alerts": {**alerts, "resolved": alerts["resolved"][:RECENT_ALERTS]},
        "history": history,
    }


def _tool_row(name: str, traffic: Traffic, config: Config, total: int) -> dict[str, Any]:
    """A tool's last minute: all its calls, and under `modes` each mode of tools.<name>.modes it was called in
    ("default" for calls in none) judged against that mode's own target. The tool is within target when every
    mode is; `targetMs` is its default mode's."""
    recent, tool = traffic.tools[name], config.tools.get(name)
    row: dict[str, Any] = {"tool": name, "calls": recent.count, "callsTotal": total, **_percentiles(recent)}
    row["targetMs"] = tool.target_latency_ms if tool is not None else None
    called = sorted(mode for (named, mode), histogram in traffic.tool_modes.items()
                    if named == name and histogram.count)
    if tool is None or not any(called):  # in no mode but the default: the tool's own figures are that mode's
        row["withinTarget"] = _within(row["p95Ms"], row["targetMs"])
        row["modes"] = []
        return row
    modes = []
    for mode in called:
        histogram = traffic.tool_modes[(name, mode)]
        target = tool.target_ms(mode) if not mode or mode in tool.modes else None
        figures = _percentiles(histogram)
        modes.append({"mode": mode or DEFAULT_MODE, "calls": histogram.count, **figures, "targetMs": target,
                      "withinTarget": _within(figures["p95Ms"], target)})
    verdicts = [mode["withinTarget"] for mode in modes if mode["withinTarget"] is not None]
    row["withinTarget"] = all(verdicts) if verdicts else None
    row["modes"] = modes
    return row


def _within(p95: float | None, target: float | None) -> bool | None:
    return None if p95 is None or target is None else p95 <= target


def _pool(fleet: dict[str, Any], traffic: Traffic, config: Config) -> dict[str, Any]:
    pool = fleet.get("pool") or {}
    in_use, ceiling = pool.get("inUse", 0), pool.get("maxConnections") or config.pool.max_connections
    return {
        "hitRate": pool.get("hitRate"),
        "recentHitRate": traffic.pool_hit_rate,
        "targetHitRate": config.targets.pool_hit_rate,
        "alertHitRate": config.monitoring.alert_thresholds.pool_hit_rate,
        "utilization": in_use / ceiling if ceiling else None,
        "available": pool.get("available"),
        "inUse": in_use,
        "total": pool.get("total"),
        "maxConnections": ceiling,
        "averageWaitMs": pool.get("averageWaitMs"),
        "p95WaitMs": pool.get("p95WaitMs"),
        "timeouts": pool.get("timeouts"),
    }


def _agents(fleet: dict[str, Any] | None) -> list[dict[str, Any]]:
    return (fleet or {}).get("agents") or []


def _ms(histogram: Any, q: float) -> float | None:
    return histogram.percentile(q) * 1000.0 if histogram.count else None


def _percentiles(histogram: Any) -> dict[str, float | None]:
    return {
        "p50Ms": _ms(histogram, 50),
        "p95Ms": _ms(histogram, 95),
        "p99Ms": _ms(histogram, 99),
        "maxMs": histogram.max * 1000.0 if histogram.count else None,
    }


def iso(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


def stamped(dashboard: dict[str, Any]) -> dict[str, Any]:
    """`build`'s figures as /dashboard.json serves them: when and by which version."""
    return {"generatedAt": iso(time.time()), "version": __version__, **dashboard}


# ---- several workers (server.workers) -------------------------------------------------------------------
# Each worker sends what `build` takes (Monitor.dashboard_parts) with its last minute's histograms as
# Histogram.to_bytes in base64; `combine` merges the histograms, so percentiles are those of every call, and
# sums the counts.

_POOL_SUMS = ("available", "inUse", "total", "maxConnections", "minConnections", "acquires", "hits", "timeouts",
              "opened", "closed")


def encode_traffic(traffic: Traffic) -> dict[str, Any]:
    def put(histogram: Any) -> str:
        return base64.b64encode(histogram.to_bytes()).decode()

    return {
        "spanS": traffic.span_s, "toolCalls": put(traffic.tool_calls), "plainCalls": put(traffic.plain_calls),
        "tools": {name: put(h) for name, h in traffic.tools.items()},
        "toolModes": [[name, mode, put(h)] for (name, mode), h in traffic.tool_modes.items()],
        "lookups": put(traffic.lookups), "requests": traffic.requests, "failed": traffic.failed,
        "callerFailed": traffic.caller_failed, "poolAcquires": traffic.pool_acquires, "poolHits": traffic.pool_hits,
    }


def _merged(encoded: Iterable[str]) -> Histogram:
    out = Histogram(1, 0)
    for text in encoded:
        out.merge(Histogram.from_bytes(base64.b64decode(text)))
    return out


def _merge_traffic(parts: list[dict[str, Any]]) -> Traffic:
    tools: dict[str, list[str]] = {}
    modes: dict[tuple[str, str], list[str]] = {}
    for part in parts:
        for name, text in part["tools"].items():
            tools.setdefault(name, []).append(text)
        for name, mode, text in part["toolModes"]:
            modes.setdefault((name, mode), []).append(text)
    return Traffic(
        span_s=max(part["spanS"] for part in parts),
        tool_calls=_merged(part["toolCalls"] for part in parts),
        plain_calls=_merged(part["plainCalls"] for part in parts),
        tools={name: _merged(texts) for name, texts in tools.items()},
        tool_modes={key: _merged(texts) for key, texts in modes.items()},
        lookups=_merged(part["lookups"] for part in parts),
        **{field: sum(part[key] for part in parts) for field, key in (
            ("requests", "requests"), ("failed", "failed"), ("caller_failed", "callerFailed"),
            ("pool_acquires", "poolAcquires"), ("pool_hits", "poolHits"))},
    )


def _merge_registry(stats: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not stats:
        return None
    lookups = sum(s.get("lookups") or 0 for s in stats)
    return {**stats[0], "lookups": lookups, "fuzzyResolutions": sum(s.get("fuzzyResolutions") or 0 for s in stats),
            "cacheHitRate": sum(s.get("cacheHits") or 0 for s in stats) / lookups if lookups else 0.0}


def _merge_fleet(fleets: list[tuple[int, dict[str, Any]]]) -> dict[str, Any] | None:
    """Pools summed (wait times: the average over every acquire, the p95 the slowest worker's, since the waits
    themselves stay in each worker); agents listed with their worker, as their ids repeat across workers."""
    if not fleets:
        return None
    pools = [fleet.get("pool") or {} for _, fleet in fleets]
    pool: dict[str, Any] = {key: sum(p.get(key) or 0 for p in pools) for key in _POOL_SUMS}
    acquires = pool["acquires"]
    waited = sum((p.get("averageWaitMs") or 0.0) * (p.get("acquires") or 0) for p in pools)
    p95s = [p["p95WaitMs"] for p in pools if p.get("p95WaitMs") is not None]
    pool.update({"hitRate": pool["hits"] / acquires if acquires else None,
                 "averageWaitMs": waited / acquires if acquires else None,
                 "p95WaitMs": max(p95s) if p95s else None,
                 "draining": any(p.get("draining") for p in pools)})
    agents = [{**agent, "worker": index} for index, fleet in fleets for agent in fleet.get("agents") or []]
    return {**fleets[0][1], "pool": pool, "agents": agents}


def combine(answers: list[dict[str, Any]], config: Config, history_of: int = 0) -> dict[str, Any]:
    """/dashboard.json for several workers from each one's Monitor.dashboard_parts (with its `worker` index;
    one that did not answer carries `error` instead): totals over all of them, percentiles from the merged
    histograms, agents and alerts with their worker, a `workers` row each, and the charts' history of worker
    `history_of` (the one serving the request; each worker keeps its own, evaluated on its own clock), else of
    the first that answered."""
    good = [answer for answer in answers if "error" not in answer]
    if not good:
        raise ValueError("; ".join(str(answer["error"]) for answer in answers) or "no worker answered")
    tool_totals: dict[str, int] = {}
    for answer in good:
        for name, count in answer["tool_totals"].items():
            tool_totals[name] = tool_totals.get(name, 0) + count
    sessions = [answer["sessions"] for answer in good if answer["sessions"] is not None]
    alerts: dict[str, list[dict[str, Any]]] = {
        state: [{**alert, "worker": answer["worker"]} for answer in good for alert in answer["alerts"][state]]
        for state in ("firing", "pending", "resolved")
    }
    alerts["resolved"].sort(key=lambda alert: alert.get("resolvedAt") or "", reverse=True)
    history = next((answer for answer in good if answer["worker"] == history_of), good[0])["history"]
    dashboard = build(
        _merge_traffic([answer["traffic"] for answer in good]),
        config,
        requests_total=sum(answer["requests_total"] for answer in good),
        failed_total=sum(answer["failed_total"] for answer in good),
        tool_totals=tool_totals,
        registry=_merge_registry([answer["registry"] for answer in good if answer["registry"] is not None]),
        fleet=_merge_fleet([(answer["worker"], answer["fleet"]) for answer in good if answer["fleet"] is not None]),
        sessions=sum(sessions) if sessions else None,
        alerts=alerts,
        uptime_s=max(answer["uptime_s"] for answer in good),
        history=history,
    )
    dashboard["workers"] = [_worker_row(answer) for answer in answers]
    return stamped(dashboard)


def _worker_row(answer: dict[str, Any]) -> dict[str, Any]:
    if "error" in answer:
        return {"worker": answer["worker"], "pid": answer.get("pid"), "error": answer["error"]}
    agents = _agents(answer["fleet"])
    return {
        "worker": answer["worker"], "pid": answer["pid"], "requests": answer["requests_total"],
        "recentRequests": answer["traffic"]["requests"], "connections": answer["connections"],
        "sessions": answer["sessions"], "agents": len(agents),
        "inFlight": sum(agent.get("inFlight") or 0 for agent in agents), "uptimeS": round(answer["uptime_s"], 1),
    }
