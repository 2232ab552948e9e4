"""Metrics as operators read them: /metrics, /dashboard.json and the CLI, from a real server under traffic."""

from __future__ import annotations

import json
import subprocess
import sys

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ServerProcess
from tests.test_http_edges import modern, request


def test_metrics_and_dashboard_reflect_real_calls(server: ServerProcess) -> None:
    for i in range(5):
        body, hdrs = modern("tools/call", {"name": "qe_memory_retrieve", "arguments": {"key": f"m{i}"}})
        assert request(server, "POST", body=body, headers=hdrs)[0] == 200
    status, headers, raw = request(server, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(raw.decode())}
    tool_calls = [
        s for f in families.values() for s in f.samples
        if s.labels.get("tool") == "qe_memory_retrieve" and s.name.endswith("_count")
    ]
    assert tool_calls and max(s.value for s in tool_calls) >= 5
    assert not any("session" in label for f in families.values() for s in f.samples for label in s.labels)
    status, _, raw = request(server, "GET", "/dashboard.json")
    dashboard = json.loads(raw)
    assert status == 200 and dashboard["intervalMs"] == 1000
    exported = subprocess.run(
        [sys.executable, "-m", "qe_appliance.cli", "mcp", "metrics", "--export", "prometheus",
         "--config", str(server.log_path.parent / "qe-mcp.yaml")],
        capture_output=True, text=True, timeout=30,
    )
    assert exported.returncode == 0 and "aqe_mcp_" in exported.stdout
    alerts = subprocess.run(
        [sys.executable, "-m", "qe_appliance.cli", "mcp", "alerts", "list", "--json",
         "--config", str(server.log_path.parent / "qe-mcp.yaml")],
        capture_output=True, text=True, timeout=30,
    )
    assert alerts.returncode == 0 and "firing" in json.loads(alerts.stdout)
