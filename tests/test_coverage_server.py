"""The coverage and quality tools end to end: a real server process, the official MCP client, the reports
coverage.py wrote for the sample project, and files outside the workspace refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from tests.conftest import ServerProcess, start_server
from tests.fixtures.coverage.samples import python_sample

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def workspace_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = python_sample().root
    server = start_server(
        tmp_path_factory.mktemp("coverage-server"), {"server": {"workspaceRoots": [str(root)]}}
    )
    yield server
    server.stop()


def text(result: Any) -> str:
    return "\n".join(block.text for block in result.content if getattr(block, "type", "") == "text")


async def test_analyze_gaps_metrics_and_gate_through_the_official_client(
    workspace_server: ServerProcess,
) -> None:
    sample = python_sample()
    async with Client(workspace_server.url) as client:
        analyzed = await client.call_tool("qe_coverage_analyze", {"path": "coverage.xml"})
        assert not analyzed.is_error, text(analyzed)
        report = analyzed.structured_content
        assert json.loads(text(analyzed)) == report
        assert report["format"] == "cobertura"
        assert report["totals"]["lines"]["covered"] == sample.totals["covered_lines"]
        assert report["totals"]["branches"]["total"] == sample.totals["num_branches"]

        gaps = await client.call_tool("qe_coverage_gaps", {"reportId": report["reportId"], "limit": 3})
        assert not gaps.is_error, text(gaps)
        top = gaps.structured_content["gaps"][0]
        assert (top["file"], top["function"], top["severity"]) == (
            "shop/inventory.py",
            "Inventory.rebalance",
            "high",  # public, but no call site in the project reaches it
        )
        assert top["factors"]["public"] is True and top["factors"]["callSites"] == 0
        assert top["suggestedTest"] == "tests/test_inventory.py"

        metrics = await client.call_tool("qe_quality_metrics", {"path": "shop", "junitXml": "junit.xml"})
        assert not metrics.is_error, text(metrics)
        assert metrics.structured_content["coverage"]["reportId"] == report["reportId"]
        assert metrics.structured_content["tests"]["failures"] == 1

        gate = await client.call_tool(
            "qe_quality_gate",
            {"inputs": {"coverageReport": report["reportId"], "junitXml": "junit.xml", "sourcePath": "shop"}},
        )
        assert not gate.is_error, text(gate)
        assert gate.structured_content["verdict"] == "fail"
        assert gate.structured_content["summary"].startswith(
            "quality gate FAIL (policy default): line coverage"
        )


async def test_broken_reports_and_paths_outside_the_workspace_are_tool_errors(
    workspace_server: ServerProcess, tmp_path: Path
) -> None:
    outside = tmp_path / "coverage.json"
    outside.write_text(python_sample().json.read_text())
    cut = python_sample().xml.read_text()[:2000]
    async with Client(workspace_server.url, mode="legacy") as client:
        refused = await client.call_tool("qe_coverage_analyze", {"path": str(outside)})
        assert refused.is_error and "outside the workspace roots" in text(refused)
        broken = await client.call_tool("qe_coverage_analyze", {"content": cut})
        assert broken.is_error and text(broken).startswith("cobertura report: line ")
        bad_args = await client.call_tool(
            "qe_coverage_gaps", {"reportId": "cov-0000000000000000", "minRisk": 2}
        )
        assert bad_args.is_error and "minRisk" in text(bad_args)
