"""Alert rules (monitoring.alertThresholds and each tool's targetLatencyMs) over the recent traffic, and the
pending -> firing -> resolved state machine with a hold window, each transition logged.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable
from typing import Any, Final

import msgspec

from qe_appliance.config import Config

log = logging.getLogger("aqe_mcp.alerts")

# Rules look at the last minute of traffic, the window of the design's `rate(..., 60)`.
WINDOW_S: Final = 60
# A condition must hold this long before its alert fires, and stay clear this long before it resolves,
# so one slow burst neither pages anyone nor makes a firing alert flap.
HOLD_S: Final = 15.0
# Below this many calls (or pool acquires) in the window a percentile or a ratio says nothing: one slow
# call out of one is not a p95 problem.
MIN_SAMPLES: Final = 10
# Resolved alerts kept for `aqe-v3 mcp alerts list` and the dashboard.
RESOLVED_KEPT: Final = 100

# The `mode` label (and dashboard row) of calls in none of tools.<name>.modes.
DEFAULT_MODE: Final = "default"

RULES: Final = ("p95_response_time", "error_rate", "pool_hit_rate", "tool_latency")


class Traffic(msgspec.Struct, frozen=True):
    """What the rules and the dashboard see of the last WINDOW_S seconds. Histograms are
    `qe_appliance._core.histogram.Histogram`s; ratios are None when the window holds too little to tell."""

    span_s: float  # seconds the window really covers (less than WINDOW_S just after start)
    tool_calls: Any  # every tool call
    plain_calls: Any  # tool calls in no mode of tools.<name>.modes (the overall p95 rule judges these)
    tools: dict[str, Any]  # per tool
    tool_modes: dict[tuple[str, str], Any]  # per tool and mode of tools.<name>.modes ("" for none)
    lookups: Any  # registry lookup times
    requests: int
    failed: int  # requests and tool calls that failed by the server's fault (the error rate counts these)
    caller_failed: int  # ... and by the caller's (invalid arguments, unknown tools): shown, never alerted on
    pool_acquires: int
    pool_hits: int

    @property
    def error_rate(self) -> float | None:
        return self.failed / self.requests if self.requests >= MIN_SAMPLES else None

    @property
    def pool_hit_rate(self) -> float | None:
        return self.pool_hits / self.pool_acquires if self.pool_acquires >= MIN_SAMPLES else None


def _p95_ms(histogram: Any) -> float | None:
    """The 95th percentile in ms, or None when fewer than MIN_SAMPLES values were recorded."""
    return histogram.percentile(95) * 1000.0 if histogram.count >= MIN_SAMPLES else None


class Reading(msgspec.Struct, frozen=True):
    """One rule measured now: `breached` says whether its condition holds."""

    rule: str
    tool: str | None
    value: float | None
    threshold: float
    unit: str
    severity: str
    breached: bool
    summary: str
    mode: str = ""  # tool_latency: the tools.<name>.modes entry judged ("" for calls in none)

    @property
    def key(self) -> str:
        key = f"{self.rule}:{self.tool}" if self.tool else self.rule
        return f"{key}:{self.mode}" if self.mode else key


def measure(config: Config, traffic: Traffic) -> list[Reading]:
    """Apply every rule of `config` to `traffic`. A rule without enough data reads as not breached."""
    limits = config.monitoring.alert_thresholds
    window = f"over the last {WINDOW_S} s"
    readings = []
    p95 = _p95_ms(traffic.plain_calls)
    readings.append(_above(
        "p95_response_time", None, p95, limits.p95_response_time, "ms", "critical",
        f"p95 response time of tool calls (modes such as verify apart) {_fmt(p95, ' ms')} {window}",
        "monitoring.alertThresholds.p95ResponseTime",
    ))
    rate = traffic.error_rate
    readings.append(_above(
        "error_rate", None, rate, limits.error_rate, "ratio", "critical",
        f"error rate {_fmt(rate)} ({traffic.failed} of {traffic.requests} requests; server faults only, "
        f"{traffic.caller_failed} caller errors not counted) {window}",
        "monitoring.alertThresholds.errorRate",
    ))
    hit_rate = traffic.pool_hit_rate
    breached = hit_rate is not None and hit_rate < limits.pool_hit_rate
    verdict = _verdict(hit_rate, breached, "below", f"{limits.pool_hit_rate:g}", "acquires")
    readings.append(Reading(
        "pool_hit_rate", None, hit_rate, limits.pool_hit_rate, "ratio", "critical", breached,
        f"pool hit rate {_fmt(hit_rate)} ({traffic.pool_hits} of {traffic.pool_acquires} acquires) {window} "
        f"{verdict} (monitoring.alertThresholds.poolHitRate)",
    ))
    for name, tool in config.tools.items():
        if not tool.enabled:
            continue
        for mode in ("", *tool.modes):
            histogram = traffic.tool_modes.get((name, mode))
            if histogram is None:
                continue
            value = _p95_ms(histogram)
            calls, key = (f"{name} {mode} calls", f"tools.{name}.modes.{mode}.targetLatencyMs") if mode else (
                name, f"tools.{name}.targetLatencyMs")
            readings.append(_above(
                "tool_latency", name, value, tool.target_ms(mode), "ms", "warning",
                f"{calls} p95 {_fmt(value, ' ms')} {window}", key, mode,
            ))
    return readings


def _above(
    rule: str,
    tool: str | None,
    value: float | None,
    limit: float,
    unit: str,
    severity: str,
    what: str,
    key: str,
    mode: str = "",
) -> Reading:
    breached = value is not None and value > limit
    shown = f"{limit:g} ms" if unit == "ms" else f"{limit:g}"
    samples = "requests" if rule == "error_rate" else "calls"
    return Reading(rule, tool, value, limit, unit, severity, breached,
                   f"{what} {_verdict(value, breached, 'above', shown, samples)} ({key})", mode)


def _verdict(value: float | None, breached: bool, side: str, limit: str, samples: str) -> str:
    """How a reading compares with its limit, in words that are true of this reading."""
    if value is None:
        return f"cannot be judged against {limit}: fewer than {MIN_SAMPLES} {samples} in the window"
    return f"is {side} {limit}" if breached else f"is not {side} {limit}"


def _fmt(value: float | None, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.3g}{unit}"


class Alert(msgspec.Struct):
    """One rule's (or one tool's) alert. `reading` is the latest breached reading: what it fires for, kept
    once it resolved under "breach". `current` is the latest reading, breached or not (None once the rule
    no longer reads): the alert's value and summary always describe it, so a resolved alert never repeats
    the breaching text as if it were still true."""

    reading: Reading
    state: str  # pending, firing, resolved, or inactive (dropped before firing)
    active_since: float
    current: Reading | None = None
    fired_at: float | None = None
    clear_since: float | None = None
    resolved_at: float | None = None

    @property
    def summary(self) -> str:
        if self.current is None:
            return f"{self.reading.key} is no longer measured (its tool was disabled or removed)"
        return self.current.summary

    def as_dict(self) -> dict[str, Any]:
        reading = self.reading
        out: dict[str, Any] = {"name": reading.rule}
        if reading.tool:
            out["tool"] = reading.tool
        if reading.mode:
            out["mode"] = reading.mode
        out.update({
            "state": self.state,
            "severity": reading.severity,
            "value": self.current.value if self.current is not None else None,
            "threshold": reading.threshold,
            "unit": reading.unit,
            "summary": self.summary,
            "breach": {"value": reading.value, "summary": reading.summary},
            "activeSince": _iso(self.active_since),
            "firedAt": _iso(self.fired_at),
            "resolvedAt": _iso(self.resolved_at),
        })
        return out


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp)) + f".{int(stamp % 1 * 1000):03d}Z"


class AlertBook:
    """Active alerts by rule (and tool) and the most recently resolved ones.

    A breached reading opens a pending alert; still breached HOLD_S later it fires; a pending alert whose
    condition clears is dropped; a firing one resolves once its condition has stayed clear for HOLD_S.
    A rule that no longer reads (a tool disabled by a reload) counts as clear.
    """

    def __init__(self) -> None:
        self._active: dict[str, Alert] = {}
        self._resolved: deque[Alert] = deque(maxlen=RESOLVED_KEPT)

    def update(self, readings: Iterable[Reading], now: float) -> list[dict[str, Any]]:
        """Advance every alert to `now` (wall-clock seconds); returns the transitions, each an alert dict
        in its new state ("inactive" for a pending alert dropped before firing)."""
        transitions: list[dict[str, Any]] = []
        seen = set()
        for reading in readings:
            seen.add(reading.key)
            alert = self._active.get(reading.key)
            if reading.breached:
                self._breached(reading, alert, now, transitions)
            elif alert is not None:
                alert.current = reading
                self._clear(reading.key, alert, now, transitions)
        for key, alert in list(self._active.items()):
            if key not in seen:
                alert.current = None
                self._clear(key, alert, now, transitions)
        return transitions

    def _breached(self, reading: Reading, alert: Alert | None, now: float, out: list[dict[str, Any]]) -> None:
        if alert is None:
            alert = self._active[reading.key] = Alert(reading, "pending", active_since=now, current=reading)
            self._log(alert, out)
            return
        alert.reading, alert.current, alert.clear_since = reading, reading, None
        if alert.state == "pending" and now - alert.active_since >= HOLD_S:
            alert.state, alert.fired_at = "firing", now
            self._log(alert, out)

    def _clear(self, key: str, alert: Alert, now: float, out: list[dict[str, Any]]) -> None:
        if alert.state == "pending":
            del self._active[key]
            alert.state = "inactive"
            self._log(alert, out)
            return
        if alert.clear_since is None:
            alert.clear_since = now
        if now - alert.clear_since >= HOLD_S:
            del self._active[key]
            alert.state, alert.resolved_at = "resolved", now
            self._resolved.append(alert)
            self._log(alert, out)

    @staticmethod
    def _log(alert: Alert, out: list[dict[str, Any]]) -> None:
        level = logging.WARNING if alert.state == "firing" else logging.INFO
        log.log(level, "alert %s %s: %s", alert.reading.key, alert.state, alert.summary)
        out.append(alert.as_dict())

    def listing(self, resolved: int) -> dict[str, list[dict[str, Any]]]:
        """Firing and pending alerts, oldest first, and the last `resolved` resolved ones, newest first."""
        active = sorted(self._active.values(), key=lambda alert: alert.active_since)
        kept = list(self._resolved)[::-1][: max(resolved, 0)]
        return {
            "firing": [alert.as_dict() for alert in active if alert.state == "firing"],
            "pending": [alert.as_dict() for alert in active if alert.state == "pending"],
            "resolved": [alert.as_dict() for alert in kept],
        }

    def counts(self, state: str) -> dict[str, int]:
        """Active alerts in `state`, by rule; every rule present, 0 when none."""
        out = dict.fromkeys(RULES, 0)
        for alert in self._active.values():
            if alert.state == state:
                out[alert.reading.rule] += 1
        return out
