"""The official MCP client against a real server process: both eras over HTTP, and stdio."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError

from tests.conftest import ServerProcess, stdio_command

pytestmark = pytest.mark.anyio

TOOL_NAMES = [
    "qe_test_generate",
    "qe_coverage_analyze",
    "qe_coverage_gaps",
    "qe_quality_gate",
    "qe_quality_metrics",
    "qe_fleet_init",
    "qe_fleet_status",
    "qe_agent_spawn",
    "qe_task_orchestrate",
    "qe_memory_store",
    "qe_memory_retrieve",
    "qe_memory_search",
    "qe_learn_pattern",
    "qe_learn_status",
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _text(result: Any) -> str:
    return "\n".join(block.text for block in result.content if getattr(block, "type", "") == "text")


async def _exercise(client: Client, namespace: str) -> None:
    """What every transport and era must do identically."""
    listed = await client.list_tools()
    assert [t.name for t in listed.tools] == TOOL_NAMES
    for tool in listed.tools:
        assert tool.input_schema["type"] == "object"
        assert tool.annotations is not None and tool.description
    by_name = {t.name: t for t in listed.tools}
    assert by_name["qe_memory_retrieve"].annotations.read_only_hint is True
    assert by_name["qe_memory_store"].annotations.read_only_hint is False
    assert by_name["qe_memory_store"].output_schema is not None

    value = {"suite": "checkout", "flaky": ["test_pay", "test_refund"], "ratio": 0.25}
    stored = await client.call_tool("qe_memory_store", {"key": "run/42", "value": value, "namespace": namespace})
    assert not stored.is_error, _text(stored)
    assert stored.structured_content["version"] == 1
    got = await client.call_tool("qe_memory_retrieve", {"key": "run/42", "namespace": namespace})
    assert not got.is_error
    assert got.structured_content["found"] is True
    assert got.structured_content["value"] == value
    # The same JSON is also returned as text for clients that only read content.
    assert json.loads(_text(got)) == got.structured_content

    missing = await client.call_tool("qe_memory_retrieve", {"key": "nope", "namespace": namespace})
    assert not missing.is_error and missing.structured_content["found"] is False

    # A misspelt tool name is resolved when one tool is the clear winner, and the result says so.
    typo = await client.call_tool("qe_memory_retreive", {"key": "run/42", "namespace": namespace})
    assert not typo.is_error
    assert typo.structured_content["value"] == value
    assert typo.meta is not None and typo.meta.get("io.aqe/resolvedTool") == "qe_memory_retrieve"

    # Bad arguments are a tool result with isError, naming the field to fix.
    bad = await client.call_tool("qe_memory_store", {"key": 7, "value": 1, "namespace": namespace})
    assert bad.is_error and "key" in _text(bad)

    # Test generation answers on every transport with a module the client can save.
    generated = await client.call_tool("qe_test_generate", {"source": "def f(x: int) -> int:\n    return x\n"})
    assert not generated.is_error, _text(generated)
    # Over stdio the caller's code may run: the test asserts what the call returned. Over HTTP without a
    # token it may not (server.auth), so the tests are static and say why.
    content = generated.structured_content
    if content["oracle"] == "observed":
        assert "result = module_under_test.f(1)\n    assert result == 1" in content["module"]
    else:
        assert "def test_f_smoke" in content["module"] and content["notes"][0].startswith("static tests: ")

    with pytest.raises(MCPError) as err:
        await client.call_tool("qe_totally_unknown_thing", {})
    assert err.value.error.code == -32602


async def test_modern_era_over_http(server: ServerProcess) -> None:
    async with Client(server.url) as client:
        assert client.protocol_version == "2026-07-28"
        await _exercise(client, "modern")


async def test_handshake_era_over_http(server: ServerProcess) -> None:
    async with Client(server.url, mode="legacy") as client:
        assert client.protocol_version == "2025-11-25"
        assert client.server_info is not None and client.server_info.name == "aqe-mcp"
        await client.send_ping()
        await _exercise(client, "legacy")


async def test_stdio_both_eras(tmp_path: Path) -> None:
    command, args, env = stdio_command(tmp_path)
    params = StdioServerParameters(command=command, args=args, env=env)
    async with Client(params) as client:
        assert client.protocol_version == "2026-07-28"
        await _exercise(client, "stdio-modern")
    async with Client(params, mode="legacy") as client:
        assert client.protocol_version == "2025-11-25"
        await _exercise(client, "stdio-legacy")
        # Data stored by the first process is still there: storage survives a restart.
        got = await client.call_tool("qe_memory_retrieve", {"key": "run/42", "namespace": "stdio-modern"})
        assert got.structured_content["found"] is True
