"""deploy/: the Prometheus rules pass `promtool check rules` and their unit tests (`promtool test rules`), and
every metric the rules and the Grafana dashboard query is one a real server exports on /metrics after real
calls."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.components import missing
from tests.conftest import ServerProcess
from tests.ops_traffic import drive_traffic, start_workspace_server
from tests.test_http_edges import request

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "aqe-mcp-rules.yml"
DASHBOARD = DEPLOY / "grafana" / "aqe-mcp.json"
# Our metric names; recording rules (aqe_mcp:...) have a colon and are not matched.
METRIC = re.compile(r"\b(?:aqe_mcp|process)_[a-z0-9_]+")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing(name, "prometheus")
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    server: ServerProcess = start_workspace_server(tmp_path_factory.mktemp("deploy"))
    try:
        drive_traffic(server, rounds=4)
        status, _, raw = request(server, "GET", "/metrics")
        assert status == 200
    finally:
        server.stop()
    yield {sample.name for family in text_string_to_metric_families(raw.decode()) for sample in family.samples}


def _rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
    exprs += [v["definition"] for v in board["templating"]["list"] if "definition" in v]
    return exprs


def test_promtool_accepts_the_rules() -> None:
    out = subprocess.run([_tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_the_alerts_fire_as_the_built_in_rules_do() -> None:
    # deploy/prometheus/aqe-mcp-rules.test.yml: error rate, too few requests, a tool over its target, pool hits.
    out = subprocess.run([_tool("promtool"), "test", "rules", RULES.with_suffix(".test.yml").name],
                         capture_output=True, text=True, timeout=60, cwd=RULES.parent)
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


def test_every_built_in_rule_has_a_prometheus_alert() -> None:
    from qe_appliance.monitoring.alerts import RULES as BUILT_IN

    groups = yaml.safe_load(RULES.read_text())["groups"]
    labelled = {rule["labels"].get("rule") for group in groups for rule in group["rules"] if "alert" in rule}
    assert set(BUILT_IN) <= labelled


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_every_metric_queried_is_exported(source: str, exported: set[str]) -> None:
    exprs = _rule_exprs() if source == "rules" else _dashboard_exprs()
    used = {name for expr in exprs for name in METRIC.findall(expr)}
    assert len(used) >= (8 if source == "rules" else 25), used  # the patterns really found the queries
    missing = sorted(used - exported)
    assert not missing, f"{source} query metrics /metrics does not export: {missing}"


def test_the_dashboard_is_importable_grafana_json() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "aqe-mcp" and board["panels"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    kinds = {panel["type"] for panel in board["panels"]}
    assert {"timeseries", "heatmap", "alertlist", "row"} <= kinds
