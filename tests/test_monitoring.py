"""Monitor: the Prometheus exposition (parsed back with prometheus_client), the JSON export, dashboard data,
bounded labels, and the pending -> firing -> resolved alert state machine driven through `evaluate(now)`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from qe_appliance._core.histogram import Histogram
from qe_appliance.config import Config, ToolConfig
from qe_appliance.monitoring import Monitor
from qe_appliance.monitoring.alerts import HOLD_S, MIN_SAMPLES, AlertBook, Traffic, measure
from qe_appliance.monitoring.monitor import MAX_SERIES, OTHER, Sources

T0 = 1_800_000_000.0


class FakeRegistry:
    def stats(self) -> Any:
        return {"totalTools": 14, "lookups": 40, "cacheHits": 30, "cacheHitRate": 0.75,
                "fuzzyResolutions": 2, "misses": 1, "avgLookupNs": 900.0}


class FakeFleet:
    """fleet.status() shaped like qe_appliance.fleet.runtime.Fleet.status(); counters set by the test."""

    def __init__(self) -> None:
        self.acquires, self.hits = 0, 0
        self.broken = False

    def status(self) -> dict[str, Any]:
        if self.broken:
            raise ConnectionError("fleet is shutting down")
        return {
            "agents": [
                {"id": "agent-1", "type": "generalist", "status": "available", "inFlight": 1, "capacity": 2,
                 "ewmaMs": 12.5, "completed": 40, "failed": 1, "ejections": 0},
                {"id": "agent-2", "type": "generalist", "status": "ejected", "inFlight": 0, "capacity": 2,
                 "ewmaMs": None, "completed": 3, "failed": 5, "ejections": 1},
            ],
            "pool": {"available": 3, "inUse": 1, "total": 4, "maxConnections": 8, "minConnections": 2,
                     "acquires": self.acquires, "hits": self.hits,
                     "hitRate": self.hits / self.acquires if self.acquires else None,
                     "averageWaitMs": 2.0 if self.acquires else None,
                     "p95WaitMs": 5.0 if self.acquires else None,
                     "timeouts": 0},
            "balancer": {"strategy": "least-connections", "picks": 43, "noCandidate": 0, "ejections": 1,
                         "saturated": 2},
        }


def config(**tools: ToolConfig) -> Config:
    return msgspec.structs.replace(Config(), tools={**Config().tools, **tools})


def with_p95_threshold(ms: float) -> Config:
    cfg = Config()
    limits = msgspec.structs.replace(cfg.monitoring.alert_thresholds, p95_response_time=ms)
    monitoring = msgspec.structs.replace(cfg.monitoring, alert_thresholds=limits)
    return msgspec.structs.replace(cfg, monitoring=monitoring)


def scrape(monitor: Monitor) -> dict[str, list[Sample]]:
    """Every sample of the exposition by sample name (after parsing it the way Prometheus would)."""
    out: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(monitor.prometheus().decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    matches = [s.value for s in samples[name] if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matches) == 1, (name, labels, samples.get(name))
    return matches[0]


def busy_monitor(sources: Sources | None = None) -> Monitor:
    monitor = Monitor(Config(), sources)
    for i in range(100):
        monitor.record_request("tools/call", 0.002 + i / 10_000, error="caller" if i < 3 else None)
        monitor.record_tool("qe_memory_store", 0.001 + i / 10_000,
                            "server-error" if i < 2 else "caller-error" if i < 7 else "ok")
        monitor.record_lookup(4e-6)
        monitor.record_http(200)
    monitor.record_request("tools/list", 0.0004, error=None)
    monitor.record_http(404)
    monitor.count_reload(True)
    monitor.count_reload(False)
    monitor.count_reload(True)
    return monitor


# ---- Prometheus -------------------------------------------------------------------------------------


def test_exposition_counts_requests_tools_and_http_by_bounded_labels() -> None:
    samples = scrape(busy_monitor())
    assert value(samples, "aqe_mcp_requests_total", method="tools/call") == 100
    assert value(samples, "aqe_mcp_requests_total", method="tools/list") == 1
    assert value(samples, "aqe_mcp_request_errors_total", method="tools/call", kind="caller") == 3
    assert value(samples, "aqe_mcp_request_errors_total", method="tools/call", kind="server") == 0
    assert value(samples, "aqe_mcp_tool_calls_total", tool="qe_memory_store") == 100
    assert value(samples, "aqe_mcp_tool_errors_total", tool="qe_memory_store", kind="server") == 2
    assert value(samples, "aqe_mcp_tool_errors_total", tool="qe_memory_store", kind="caller") == 5
    assert value(samples, "aqe_mcp_http_responses_total", status="200") == 100
    assert value(samples, "aqe_mcp_http_responses_total", status="404") == 1
    assert value(samples, "aqe_mcp_config_reloads_total", result="ok") == 2
    assert value(samples, "aqe_mcp_config_reloads_total", result="failed") == 1
    assert value(samples, "aqe_mcp_build_info", version="3.0.0") == 1
    assert value(samples, "aqe_mcp_tool_target_latency_seconds", tool="qe_memory_retrieve", mode="default") == 0.01
    assert value(samples, "aqe_mcp_tool_target_latency_seconds", tool="qe_test_generate", mode="verify") == 10.0
    assert value(samples, "aqe_mcp_alerts_firing", alert="p95_response_time") == 0
    assert "process_resident_memory_bytes" in samples


def test_duration_histograms_have_cumulative_le_buckets_in_seconds() -> None:
    samples = scrape(busy_monitor())
    buckets = [
        s for s in samples["aqe_mcp_tool_duration_seconds_bucket"] if s.labels["tool"] == "qe_memory_store"
    ]
    counts = [s.value for s in buckets]
    assert counts == sorted(counts)
    assert buckets[-1].labels["le"] == "+Inf" and counts[-1] == 100
    # 1.0 .. 10.9 ms, one every 0.1 ms: 40 at or below 5 ms, all at or below 25 ms.
    assert value(samples, "aqe_mcp_tool_duration_seconds_bucket", tool="qe_memory_store", le="0.005") == 41
    assert value(samples, "aqe_mcp_tool_duration_seconds_bucket", tool="qe_memory_store", le="0.01") == 91
    assert value(samples, "aqe_mcp_tool_duration_seconds_count", tool="qe_memory_store") == 100
    assert value(samples, "aqe_mcp_tool_duration_seconds_sum", tool="qe_memory_store") == pytest.approx(0.595)
    assert value(samples, "aqe_mcp_request_duration_seconds_count", method="tools/call") == 100
    assert value(samples, "aqe_mcp_registry_lookup_duration_seconds_bucket", le="5e-06") == 100
    assert value(samples, "aqe_mcp_registry_lookup_duration_seconds_bucket", le="2.5e-06") == 0


def test_exposition_reads_registry_pool_balancer_agents_and_sessions() -> None:
    fleet = FakeFleet()
    fleet.acquires, fleet.hits = 50, 45
    monitor = Monitor(Config(), Sources(registry=FakeRegistry().stats, fleet=fleet.status, sessions=lambda: 3))
    samples = scrape(monitor)
    assert value(samples, "aqe_mcp_registry_lookups_total") == 40
    assert value(samples, "aqe_mcp_registry_cache_hit_ratio") == 0.75
    assert value(samples, "aqe_mcp_registry_fuzzy_resolutions_total") == 2
    assert value(samples, "aqe_mcp_pool_connections", state="idle") == 3
    assert value(samples, "aqe_mcp_pool_connections", state="in_use") == 1
    assert value(samples, "aqe_mcp_pool_hit_ratio") == 0.9
    assert value(samples, "aqe_mcp_pool_acquire_wait_seconds_count") == 50
    assert value(samples, "aqe_mcp_pool_acquire_wait_seconds_sum") == pytest.approx(0.1)
    assert value(samples, "aqe_mcp_pool_acquire_wait_p95_seconds") == 0.005
    assert value(samples, "aqe_mcp_agents", status="available") == 1
    assert value(samples, "aqe_mcp_agents", status="ejected") == 1
    assert value(samples, "aqe_mcp_agent_in_flight", agent="agent-1") == 1
    assert value(samples, "aqe_mcp_agent_ejections_total", agent="agent-2") == 1
    assert value(samples, "aqe_mcp_agent_latency_ewma_seconds", agent="agent-1") == 0.0125
    assert [s.labels["agent"] for s in samples["aqe_mcp_agent_latency_ewma_seconds"]] == ["agent-1"]
    assert value(samples, "aqe_mcp_balancer_ejections_total") == 1
    assert value(samples, "aqe_mcp_fleet_saturated_total") == 2
    assert value(samples, "aqe_mcp_sessions") == 3


def test_a_failing_source_drops_out_of_the_scrape_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    fleet = FakeFleet()
    fleet.broken = True
    monitor = Monitor(Config(), Sources(registry=FakeRegistry().stats, fleet=fleet.status))
    with caplog.at_level(logging.WARNING, logger="aqe_mcp.monitoring"):
        samples = scrape(monitor)
    assert "aqe_mcp_pool_connections" not in samples
    assert value(samples, "aqe_mcp_registry_lookups_total") == 40
    assert "cannot read the fleet state" in caplog.text and "shutting down" in caplog.text


def test_labels_stay_bounded_whatever_callers_send() -> None:
    monitor = Monitor(Config())
    for i in range(MAX_SERIES + 50):
        monitor.record_tool(f"tool-{i}", 0.001, "ok")
    samples = scrape(monitor)
    tools = {s.labels["tool"] for s in samples["aqe_mcp_tool_calls_total"]}
    assert len(tools) == MAX_SERIES
    assert value(samples, "aqe_mcp_tool_calls_total", tool=OTHER) == 51  # the names past the first 199


def test_json_export_holds_the_same_metrics_with_percentiles() -> None:
    monitor = busy_monitor()
    snapshot = msgspec.json.decode(msgspec.json.encode(monitor.snapshot()))
    exposed = {family.name for family in text_string_to_metric_families(monitor.prometheus().decode())}
    ours = {name.removesuffix("_total") for name in snapshot["metrics"]}
    assert ours <= exposed
    assert {"aqe_mcp_requests", "aqe_mcp_tool_duration_seconds", "aqe_mcp_config_reloads"} <= ours
    requests = snapshot["metrics"]["aqe_mcp_requests_total"]
    assert requests["type"] == "counter"
    assert {"labels": {"method": "tools/call"}, "value": 100} in requests["samples"]
    [tool] = snapshot["metrics"]["aqe_mcp_tool_duration_seconds"]["samples"]
    assert tool["count"] == 100 and tool["buckets"]["+Inf"] == 100
    assert tool["p95"] == pytest.approx(0.0105, rel=0.01)
    assert tool["max"] == pytest.approx(0.0109)


# ---- dashboard --------------------------------------------------------------------------------------


def test_dashboard_shows_latency_against_targets_pool_lookups_rates_and_agents() -> None:
    fleet = FakeFleet()
    fleet.acquires, fleet.hits = 100, 95
    monitor = busy_monitor(Sources(registry=FakeRegistry().stats, fleet=fleet.status, sessions=lambda: 0))
    board = msgspec.json.decode(msgspec.json.encode(monitor.dashboard()))
    assert board["latency"]["p50Ms"] == pytest.approx(5.9, rel=0.02)
    assert board["latency"]["p99Ms"] == pytest.approx(10.8, rel=0.02)
    assert board["latency"]["targetP95Ms"] == 100
    [row] = board["tools"]
    assert row["tool"] == "qe_memory_store" and row["calls"] == 100
    assert row["targetMs"] == 20 and row["withinTarget"] is True
    assert board["pool"]["hitRate"] == 0.95
    assert board["pool"]["utilization"] == pytest.approx(1 / 8)
    assert board["toolLookup"]["averageMs"] == pytest.approx(0.004)
    assert board["toolLookup"]["cacheHitRate"] == 0.75
    assert board["requests"]["total"] == 101 and board["requests"]["perSecond"] > 0
    # Two server faults count; the three requests and five tool calls the callers got wrong do not.
    assert board["errors"]["rate"] == pytest.approx(2 / 101)
    assert board["errors"]["callerRecent"] == 8
    assert [agent["status"] for agent in board["agents"]] == ["available", "ejected"]
    assert board["sessions"] == 0
    assert board["intervalMs"] == 1000
    assert board["alerts"] == {"firing": [], "pending": [], "resolved": []}


def test_dashboard_judges_each_mode_against_its_own_target() -> None:
    # qe_test_generate: 500 ms by default, 10 s for verify runs (the shipped config). Its default calls take
    # 100 ms and its verify calls 3 s: both within their own target, though 3 s is over the default's 500 ms.
    monitor = Monitor(Config())
    for _ in range(20):
        monitor.record_tool("qe_test_generate", 0.1, "ok")
        monitor.record_tool("qe_test_generate", 3.0, "ok", "verify")
        monitor.record_tool("qe_memory_store", 0.005, "ok")
    monitor.evaluate(time.time())
    board = msgspec.json.decode(msgspec.json.encode(monitor.dashboard()))
    rows = {row["tool"]: row for row in board["tools"]}
    generate = rows["qe_test_generate"]
    assert generate["p95Ms"] == pytest.approx(3000, rel=0.02) and generate["targetMs"] == 500
    assert generate["withinTarget"] is True
    modes = {mode["mode"]: mode for mode in generate["modes"]}
    assert set(modes) == {"default", "verify"}
    assert modes["default"]["targetMs"] == 500 and modes["default"]["calls"] == 20
    assert modes["default"]["p95Ms"] == pytest.approx(100, rel=0.02) and modes["default"]["withinTarget"] is True
    assert modes["verify"]["targetMs"] == 10_000 and modes["verify"]["withinTarget"] is True
    assert modes["verify"]["p95Ms"] == pytest.approx(3000, rel=0.02)
    # A tool called in no mode keeps its one row, judged as before.
    assert rows["qe_memory_store"]["modes"] == [] and rows["qe_memory_store"]["withinTarget"] is True
    # The history keeps each mode's p95 for the sparklines.
    [point] = board["history"]
    assert point["modes"] == {"qe_test_generate/default": pytest.approx(100, rel=0.02),
                              "qe_test_generate/verify": pytest.approx(3000, rel=0.02)}

    # Verify runs past their own 10 s: that mode, and so the tool, misses its target; the default mode does not.
    for _ in range(40):
        monitor.record_tool("qe_test_generate", 12.0, "ok", "verify")
    board = msgspec.json.decode(msgspec.json.encode(monitor.dashboard()))
    [generate] = [row for row in board["tools"] if row["tool"] == "qe_test_generate"]
    modes = {mode["mode"]: mode for mode in generate["modes"]}
    assert modes["verify"]["withinTarget"] is False and modes["default"]["withinTarget"] is True
    assert generate["withinTarget"] is False


def test_dashboard_without_fleet_or_traffic_has_no_numbers_to_invent() -> None:
    board = Monitor(Config()).dashboard()
    assert board["pool"] is None and board["tools"] == [] and board["agents"] == []
    assert board["latency"]["p95Ms"] is None and board["errors"]["rate"] is None


# ---- alerts -----------------------------------------------------------------------------------------


def slow_calls(monitor: Monitor, seconds: float, count: int = 2 * MIN_SAMPLES) -> None:
    for _ in range(count):
        monitor.record_request("tools/call", seconds, error=None)
        monitor.record_tool("qe_memory_store", seconds, "ok")


def states(transitions: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(t["name"] if "tool" not in t else f"{t['name']}:{t['tool']}", t["state"]) for t in transitions}


def test_a_slow_p95_goes_pending_then_firing_then_resolved(caplog: pytest.LogCaptureFixture) -> None:
    monitor = Monitor(Config())
    slow_calls(monitor, 0.3)  # 300 ms against the 200 ms threshold and qe_memory_store's 20 ms target
    with caplog.at_level(logging.INFO, logger="aqe_mcp.alerts"):
        assert states(monitor.evaluate(T0)) == {
            ("p95_response_time", "pending"), ("tool_latency:qe_memory_store", "pending")
        }
        assert monitor.evaluate(T0 + HOLD_S / 2) == []
        assert monitor.alerts()["firing"] == []
        assert states(monitor.evaluate(T0 + HOLD_S)) == {
            ("p95_response_time", "firing"), ("tool_latency:qe_memory_store", "firing")
        }
    firing = {alert["name"]: alert for alert in monitor.alerts()["firing"]}
    assert firing["p95_response_time"]["severity"] == "critical"
    assert firing["tool_latency"]["severity"] == "warning"
    assert "alertThresholds.p95ResponseTime" in firing["p95_response_time"]["summary"]
    assert firing["p95_response_time"]["value"] == pytest.approx(300, rel=0.01)
    assert any(r.levelname == "WARNING" and "p95_response_time firing" in r.message for r in caplog.records)
    assert value(scrape(monitor), "aqe_mcp_alerts_firing", alert="tool_latency") == 1

    # A reload raises the bars: the condition clears, and the alert resolves after the hold window.
    relaxed = with_p95_threshold(500.0)
    relaxed_tool = ToolConfig(category="memory", target_latency_ms=1000.0)
    relaxed = msgspec.structs.replace(relaxed, tools={**relaxed.tools, "qe_memory_store": relaxed_tool})
    monitor.reconfigure(relaxed)
    assert monitor.evaluate(T0 + 20) == []
    assert len(monitor.alerts()["firing"]) == 2
    assert states(monitor.evaluate(T0 + 20 + HOLD_S)) == {
        ("p95_response_time", "resolved"), ("tool_latency:qe_memory_store", "resolved")
    }
    listing = monitor.alerts()
    assert listing["firing"] == [] and len(listing["resolved"]) == 2
    assert all(alert["resolvedAt"] for alert in listing["resolved"])
    # A resolved alert describes the reading it resolved on, and keeps what it fired for apart.
    for alert in listing["resolved"]:
        assert "is not above" in alert["summary"] and " is above" not in alert["summary"], alert
        assert "is above" in alert["breach"]["summary"]
        assert alert["breach"]["value"] == pytest.approx(300, rel=0.01)


NOT_COUNTED = "server faults only, 0 caller errors not counted"
BREACHED = f"error rate 0.372 (16 of 43 requests; {NOT_COUNTED})"


def traffic(requests: int, failed: int) -> Traffic:
    empty = Histogram()
    return Traffic(span_s=60.0, tool_calls=empty, plain_calls=empty, tools={}, tool_modes={}, lookups=empty,
                   requests=requests, failed=failed, caller_failed=0, pool_acquires=0, pool_hits=0)


def test_resolved_and_inactive_messages_describe_the_current_reading(caplog: pytest.LogCaptureFixture) -> None:
    book = AlertBook()
    with caplog.at_level(logging.INFO, logger="aqe_mcp.alerts"):
        book.update(measure(Config(), traffic(43, 16)), T0)
        book.update(measure(Config(), traffic(43, 16)), T0 + HOLD_S)
        assert book.listing(0)["firing"][0]["summary"].startswith(BREACHED)
        # The window then holds only successes: the alert resolves on that reading.
        book.update(measure(Config(), traffic(43, 0)), T0 + 60)
        [resolved] = book.update(measure(Config(), traffic(40, 1)), T0 + 60 + HOLD_S)
        # A breach that clears before firing is dropped ("inactive") with the clear reading's text too.
        book.update(measure(Config(), traffic(40, 10)), T0 + 200)
        [inactive] = book.update(measure(Config(), traffic(40, 0)), T0 + 201)
    assert resolved["state"] == "resolved" and resolved["value"] == pytest.approx(1 / 40)
    assert resolved["summary"].startswith(
        f"error rate 0.025 (1 of 40 requests; {NOT_COUNTED}) over the last 60 s is not above 0.05"
    )
    assert " is above" not in resolved["summary"]
    assert resolved["breach"]["summary"].startswith(BREACHED)
    assert inactive["state"] == "inactive" and "(0 of 40 requests;" in inactive["summary"]
    lines = [r.message for r in caplog.records if "resolved" in r.message or "inactive" in r.message]
    assert len(lines) == 2 and all(" is above" not in line for line in lines), lines
    assert "1 of 40 requests" in lines[0] and "0 of 40 requests" in lines[1]


def test_an_alert_whose_rule_stops_reading_says_so() -> None:
    monitor = Monitor(Config())
    slow_calls(monitor, 0.3)
    monitor.evaluate(T0)
    disabled = ToolConfig(category="memory", target_latency_ms=20.0, enabled=False)
    monitor.reconfigure(config(qe_memory_store=disabled))
    inactive = [t for t in monitor.evaluate(T0 + 1) if t.get("tool") == "qe_memory_store"]
    assert [t["state"] for t in inactive] == ["inactive"]
    assert "no longer measured" in inactive[0]["summary"] and inactive[0]["value"] is None


def test_a_reading_with_too_few_samples_says_it_cannot_be_judged() -> None:
    [error_rate] = [r for r in measure(Config(), traffic(9, 9)) if r.rule == "error_rate"]
    assert not error_rate.breached
    assert f"fewer than {MIN_SAMPLES} requests" in error_rate.summary


def test_a_breach_that_clears_within_the_hold_window_never_fires() -> None:
    monitor = Monitor(Config())
    slow_calls(monitor, 0.3)
    monitor.evaluate(T0)
    monitor.reconfigure(config(qe_memory_store=ToolConfig(category="memory", target_latency_ms=1000.0)))
    assert states(monitor.evaluate(T0 + 1)) == {("tool_latency:qe_memory_store", "inactive")}
    assert [alert["name"] for alert in monitor.alerts()["pending"]] == ["p95_response_time"]
    assert monitor.alerts()["resolved"] == []


def test_a_firing_alert_stays_firing_while_the_breach_flaps_inside_the_hold_window() -> None:
    fleet = FakeFleet()
    monitor = Monitor(Config(), Sources(fleet=fleet.status))
    for step in range(6):
        # Half the acquires hit until step 3, then all of them: the recent hit rate climbs back.
        fleet.acquires += 100
        fleet.hits += 50 if step < 3 else 100
        monitor.evaluate(T0 + step * 10)
    assert [alert["name"] for alert in monitor.alerts()["firing"]] == ["pool_hit_rate"]
    assert "alertThresholds.poolHitRate" in monitor.alerts()["firing"][0]["summary"]
    for step in range(6, 12):
        fleet.acquires += 100
        fleet.hits += 100
        monitor.evaluate(T0 + step * 10)
    # Once the 50% steps are out of the 60 s window the rate is 1.0 and the alert resolves.
    assert monitor.alerts()["firing"] == []
    assert [alert["name"] for alert in monitor.alerts()["resolved"]] == ["pool_hit_rate"]


def test_error_rate_alert_counts_server_faults_not_callers_mistakes() -> None:
    monitor = Monitor(Config())
    for i in range(40):
        monitor.record_request("tools/call", 0.001, error="server" if i < 2 else "caller" if i < 10 else None)
        outcome = "server-error" if 2 <= i < 4 else "caller-error" if 4 <= i < 20 else "ok"
        monitor.record_tool("qe_memory_store", 0.001, outcome)
    transitions = monitor.evaluate(T0)
    [alert] = transitions
    assert (alert["name"], alert["state"]) == ("error_rate", "pending")
    assert alert["value"] == pytest.approx(4 / 40)
    assert "4 of 40 requests; server faults only, 24 caller errors not counted" in alert["summary"]


def test_callers_mistakes_alone_page_nobody() -> None:
    monitor = Monitor(Config())
    for _ in range(40):
        monitor.record_request("tools/call", 0.001, error="caller")
        monitor.record_tool("qe_memory_store", 0.001, "caller-error")
    assert monitor.evaluate(T0) == [] and monitor.evaluate(T0 + HOLD_S) == []


def test_a_mode_is_judged_against_its_own_target() -> None:
    monitor = Monitor(Config())
    for _ in range(MIN_SAMPLES):
        monitor.record_tool("qe_test_generate", 2.0, "ok", "verify")  # within verify's 10 s
        monitor.record_tool("qe_test_generate", 0.1, "ok")  # within the design's 500 ms
    assert monitor.evaluate(T0) == []
    samples = scrape(monitor)
    count = [s for s in samples["aqe_mcp_tool_duration_seconds_count"] if s.labels["tool"] == "qe_test_generate"]
    assert {s.labels["mode"]: s.value for s in count} == {"default": MIN_SAMPLES, "verify": MIN_SAMPLES}
    for _ in range(MIN_SAMPLES):
        monitor.record_tool("qe_test_generate", 20.0, "ok", "verify")
    [alert] = monitor.evaluate(T0 + 1)
    assert (alert["name"], alert["tool"], alert["mode"]) == ("tool_latency", "qe_test_generate", "verify")
    assert "tools.qe_test_generate.modes.verify.targetLatencyMs" in alert["summary"]


def test_too_few_samples_raise_no_alert() -> None:
    monitor = Monitor(Config())
    slow_calls(monitor, 5.0, count=MIN_SAMPLES - 2)
    monitor.record_request("tools/call", 0.001, error="server")  # 1 failed of 9: too few to call it a rate
    assert monitor.evaluate(T0) == []


def test_a_disabled_tool_raises_no_latency_alert() -> None:
    disabled = ToolConfig(category="memory", target_latency_ms=20.0, enabled=False)
    monitor = Monitor(config(qe_memory_store=disabled))
    slow_calls(monitor, 0.1)
    assert monitor.evaluate(T0) == []


def test_resolved_alerts_are_listed_newest_first_and_limited() -> None:
    monitor = Monitor(with_p95_threshold(100.0))
    for _ in range(MIN_SAMPLES):
        monitor.record_request("tools/call", 0.3, error=None)
        monitor.record_tool("qe_quality_gate", 0.3, "ok")  # within its 500 ms target
    now = T0
    for _ in range(3):
        monitor.reconfigure(with_p95_threshold(100.0))
        monitor.evaluate(now)
        monitor.evaluate(now + HOLD_S)
        monitor.reconfigure(with_p95_threshold(500.0))
        monitor.evaluate(now + HOLD_S + 1)
        monitor.evaluate(now + 2 * HOLD_S + 1)
        now += 100
    resolved = monitor.alerts(resolved=2)["resolved"]
    assert [alert["name"] for alert in resolved] == ["p95_response_time"] * 2
    assert resolved[0]["resolvedAt"] > resolved[1]["resolvedAt"]
    assert len(monitor.alerts()["resolved"]) == 3
