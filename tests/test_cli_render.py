"""`aqe-v3 mcp` output for people, from a real server after real calls: metrics keep their labels and units,
the dashboard fits the terminal's width with sparklines and target colours, `tools lookup` is a tree, no raw
JSON or 15-digit floats anywhere, and `--json` stays JSON."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from rich.console import Console

from qe_appliance.control import render
from tests.conftest import ServerProcess
from tests.ops_traffic import CALLED, drive_traffic, start_workspace_server

LONG_FLOAT = re.compile(r"\d\.\d{5,}")
# qe_memory_retrieve gets an unmeetable target, so its row must show as missed (red).
MISSED = "qe_memory_retrieve"


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # A point of history every 50 ms, so the sparklines have more points than an 80- or 160-column terminal shows.
    server = start_workspace_server(tmp_path_factory.mktemp("cli-render"), {
        "tools": {MISSED: {"targetLatencyMs": 0.001}}, "monitoring": {"dashboardIntervalMs": 50}})
    try:
        drive_traffic(server, rounds=12)
        yield server
    finally:
        server.stop()


def aqe(server: ServerProcess, *args: str, columns: int = 80) -> str:
    config = str(server.log_path.parent / "qe-mcp.yaml")
    env = {**os.environ, "COLUMNS": str(columns), "NO_COLOR": "1"}
    out = subprocess.run([sys.executable, "-m", "qe_appliance.cli", "mcp", *args, "--config", config],
                         capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout


def readable(text: str, width: int) -> None:
    assert not LONG_FLOAT.search(text), LONG_FLOAT.search(text)
    assert "{" not in text and '":' not in text, "raw JSON in the output"
    too_long = [line for line in text.splitlines() if len(line) > width]
    assert not too_long, too_long


@pytest.mark.parametrize("columns", [80, 160])
def test_metrics_tables_keep_labels_and_units(busy: ServerProcess, columns: int) -> None:
    text = aqe(busy, "metrics", columns=columns)
    readable(text, columns)
    lines = text.splitlines()
    for tool in CALLED:
        [row] = [line for line in lines if line.split() and line.split()[0] == tool]
        assert re.search(r"\d+(\.\d+)? (ms|µs)", row), row  # its latency, with a unit
    assert "by tool" in text and "by method" in text and "by agent" in text
    [call_row] = [line for line in lines if line.split() and line.split()[0] == "tools/call"]
    assert re.search(r"\d+(\.\d+)? (ms|µs)", call_row)
    header = next(line for line in lines if line.split() and line.split()[0] == "tool")
    assert {"calls", "errors", "p50", "p95", "p99"} <= set(header.split())


def test_every_command_keeps_json(busy: ServerProcess) -> None:
    for args in (["metrics"], ["metrics", "--dashboard"], ["pool"], ["tools", "list"], ["balance", "agents"],
                 ["alerts"], ["status"], ["tools", "lookup", "qe_coverage_analyze"]):
        json.loads(aqe(busy, *args, "--json"))
    board = json.loads(aqe(busy, "metrics", "--dashboard", "--json"))
    assert board["history"] and {row["tool"] for row in board["tools"]} >= set(CALLED)


@pytest.mark.parametrize("columns", [80, 160])
def test_plain_answers_fit_and_read(busy: ServerProcess, columns: int) -> None:
    for args in (["pool"], ["tools", "list"], ["tools", "stats"], ["balance", "agents"], ["alerts"], ["status"]):
        readable(aqe(busy, *args, columns=columns), columns)
    pool = aqe(busy, "pool", columns=columns)
    assert re.search(r"hit rate\s+\d+ %", pool) and re.search(r"average wait\s+[\d.]+ (ms|µs)", pool), pool


def _dashboard(busy: ServerProcess, points: int) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        data: dict[str, Any] = json.loads(aqe(busy, "metrics", "--dashboard", "--json"))
        if len(data["history"]) >= points or time.monotonic() > deadline:
            return data
        time.sleep(1)


@pytest.mark.parametrize("width", [80, 160])
def test_the_live_dashboard_uses_the_width_with_sparklines_and_target_colours(busy: ServerProcess, width: int) -> None:
    data = _dashboard(busy, points=100)
    console = Console(record=True, width=width, force_terminal=True, color_system="truecolor")
    console.print(render.dashboard(data, width))
    text = console.export_text(styles=False, clear=False)
    readable(text, width)
    lines = text.splitlines()
    rows = {tool: next(line for line in lines if line.lstrip().startswith(tool)) for tool in CALLED}
    for row in rows.values():
        assert re.search(f"[{render.SPARKS}]{{5,}}", row), row  # a sparkline of its p95 history
    # The sparkline column grows with the terminal: wider terminal, longer history shown.
    shown = len(re.findall(f"[{render.SPARKS}]", rows["qe_memory_store"]))
    assert shown == (16 if width == 80 else 96), (shown, len(data["history"]))
    for agent in data["agents"]:
        assert any(line.lstrip().startswith(agent["id"]) for line in lines)
    # Colours say met or missed: the unmeetable target is red, a met one green.
    styled = console.export_text(styles=True)
    missed_row = next(line for line in styled.splitlines() if MISSED in line)
    met_row = next(line for line in styled.splitlines() if "qe_coverage_analyze" in line)
    red, green = "\x1b[31m", "\x1b[32m"
    assert red in missed_row and green not in missed_row.split(MISSED, 1)[1], missed_row
    assert green in met_row, met_row


def test_tools_lookup_shows_the_schema_as_an_indented_tree(busy: ServerProcess) -> None:
    text = aqe(busy, "tools", "lookup", "qe_coverge_analyze", columns=120)  # a typo, resolved as clients' are
    readable(text, 120)
    lines = text.splitlines()
    assert lines[0].startswith("qe_coverage_analyze — ") and "resolved from 'qe_coverge_analyze'" in lines[0]
    assert "input" in lines and "output" in lines
    assert any(re.match(r"├── format  one of auto, cobertura", line) for line in lines)
    assert any(re.match(r"[├└]── maxFiles  integer \(1\.\.10000\)  default 50", line) for line in lines)
    assert any(re.match(r"└── background  boolean", line) for line in lines)  # it may run as a task
    # Nested objects are nested branches: totals -> lines -> covered, two levels in.
    totals = next(i for i, line in enumerate(lines) if line.startswith("├── totals*"))
    assert any(re.match(r"│   [├└]── lines\*  Measure", line) for line in lines[totals:totals + 4])
    assert any(re.match(r"│   │   [├└]── covered\*  integer", line) for line in lines[totals:totals + 8])


def test_sparkline_and_bar_scale_as_documented() -> None:
    assert render.sparkline([0.0, 5.0, 10.0], 3) == "▁▅█"
    assert render.sparkline([1.0, None, 1.0], 3, top=10.0) == "▂ ▂"  # small against the target, with a gap
    assert render.sparkline([1.0, 2.0, 3.0, 4.0], 2) == "▆█"  # the newest values fill the width
    assert render.bar(0.5, 10) == "█" * 5 + "·" * 5 and render.bar(None, 4) == "····"
    assert render.ms(1234.5) == "1.23 s" and render.ms(0.012) == "12 µs" and render.pct(0.0123) == "1.2 %"
    assert render.number(1796190236.745123) == "1,796,190,237" and render.number(0.123456789) == "0.123"


def test_no_alerts_reads_as_words() -> None:
    console = Console(record=True, width=80)
    console.print(render.alerts({"firing": [], "pending": [], "resolved": []}))
    assert "no alerts" in console.export_text()


def test_the_live_dashboard_judges_each_mode_against_its_own_target() -> None:
    # qe_test_generate's verify runs (3 s) are within the verify target (10 s) though over the tool's 500 ms:
    # a "verify mode" row under the tool, green like the default mode's (100 ms) and the tool's own row.
    from qe_appliance.config import Config
    from qe_appliance.monitoring import Monitor

    monitor = Monitor(Config())
    for _ in range(20):
        monitor.record_tool("qe_test_generate", 0.1, "ok")
        monitor.record_tool("qe_test_generate", 3.0, "ok", "verify")
    monitor.evaluate()
    data = json.loads(json.dumps(monitor.dashboard()))
    console = Console(record=True, width=120, force_terminal=True, color_system="truecolor")
    console.print(render.dashboard(data, 120))
    text = console.export_text(styles=False, clear=False).splitlines()
    styled = console.export_text(styles=True).splitlines()
    readable("\n".join(text), 120)
    rows = {name: i for i, line in enumerate(text) for name in ("qe_test_generate", "default mode", "verify mode")
            if line.lstrip().startswith(name)}
    assert rows["qe_test_generate"] < rows["default mode"] < rows["verify mode"], text
    assert re.search(r"verify mode\s+3\.\d+ s\s+10\.00 s\s+20\b", text[rows["verify mode"]]), text[rows["verify mode"]]
    assert re.search(r"default mode\s+\d+(\.\d+)? ms\s+500 ms\s+20\b", text[rows["default mode"]])
    red, green = "\x1b[31m", "\x1b[32m"
    overall = next(i for i, line in enumerate(text) if "all tools p95" in line)
    assert "+20 in modes" in text[overall + 1]
    for i in [overall, *rows.values()]:
        assert green in styled[i] and red not in styled[i], styled[i]
