"""The official TypeScript SDK client (Node 22, @modelcontextprotocol/sdk from bench/node_peer.py) lists and reads
aqe-mcp's resources, gets a prompt with an embedded report and completes an argument (tests/ts_client.cjs)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from tests.components import missing
from tests.conftest import ServerProcess
from tests.sample_reports import lcov_gaps as lcov
from tests.test_http_edges import modern, request

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve().parent / "ts_client.cjs"


def _node_peer() -> object:
    spec = importlib.util.spec_from_file_location("node_peer", ROOT / "bench" / "node_peer.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("node_peer", module)
    spec.loader.exec_module(module)
    return module


def test_typescript_client_reads_resources_and_gets_a_prompt(server: ServerProcess) -> None:
    node_peer = _node_peer()
    try:
        runtime = node_peer.ensure()  # type: ignore[attr-defined]
    except node_peer.NodeSetupError as exc:  # type: ignore[attr-defined]
        missing(f"Node 22 and the TypeScript MCP SDK ({exc})", "npm")
    body, headers = modern("tools/call", {"name": "qe_coverage_analyze", "arguments": {"content": lcov(2, 1)}})
    status, _, raw = request(server, "POST", body=body, headers=headers)
    assert status == 200, raw
    report = json.loads(raw)["result"]["structuredContent"]["reportId"]

    done = subprocess.run(
        runtime.command(SCRIPT, server.url, report), env=runtime.env(), capture_output=True, text=True, timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["capabilities"]["resources"] == {"subscribe": True, "listChanged": True}
    assert seen["stored"] is True
    uris = {resource["uri"]: resource for resource in seen["resources"]}
    assert f"aqe://coverage/{report}" in uris and "aqe://memory/ts/runs%2F7" in uris
    assert "aqe://tests/{generationId}" in seen["templates"]
    (coverage,) = seen["reads"][f"aqe://coverage/{report}"]
    assert coverage["mimeType"] == "text/markdown" and coverage["text"].startswith(f"# Coverage report {report}")
    (memory,) = seen["reads"]["aqe://memory/ts/runs%2F7"]
    assert json.loads(memory["text"])["value"] == {"ok": True}
    # The SDK speaks 2025-11-25: resource not found is -32002, delivered as an MCP error, not an HTTP failure.
    assert seen["missing"]["code"] == -32002 and "Resource not found" in seen["missing"]["message"]
    assert seen["prompts"][0] == "generate-tests"
    assert seen["prompt"][0] == {"type": "resource", "uri": f"aqe://coverage/{report}"}
    assert "qe_coverage_gaps" in seen["prompt"][1]["text"]
    assert seen["completion"] == ["strict"]
