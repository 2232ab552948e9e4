"""`aqe-v3 mcp client-config`: each client's snippet parses (JSON, or a shell command line), names this
install's aqe-v3 by absolute path, carries the token header when auth is on, and the stdio one, run exactly as
written, starts a server the official MCP client can use."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters

from tests.conftest import write_config

AQE = str(Path(sys.executable).parent / "aqe-v3")


def client_config(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AQE, "mcp", "client-config", *args], capture_output=True, text=True, timeout=30)


def stdio_entry(client: str, config: Path) -> tuple[str, list[str]]:
    out = client_config(client, "--stdio", "--config", str(config))
    assert out.returncode == 0, out.stderr
    if client == "claude-code":
        words = shlex.split(out.stdout)
        assert words[:6] == ["claude", "mcp", "add", "--transport", "stdio", "aqe-mcp"] and words[6] == "--"
        return words[7], words[8:]
    doc: dict[str, Any] = json.loads(out.stdout)
    entry = doc["servers" if client == "vscode" else "mcpServers"]["aqe-mcp"]
    if client == "vscode":
        assert entry["type"] == "stdio"
    return entry["command"], entry["args"]


@pytest.mark.parametrize("client", ["claude-code", "claude-desktop", "cursor", "vscode"])
def test_stdio_snippets_name_this_install_by_absolute_path(client: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "qe-mcp.yaml", tmp_path / "state")
    command, args = stdio_entry(client, config)
    assert command == AQE and Path(command).is_absolute()
    assert args == ["mcp", "start", "--stdio", "--config", str(config.resolve())]


def test_http_snippets_carry_the_url_and_a_token_header_when_auth_is_on(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("x" * 32 + "\n")
    tokens.chmod(0o600)
    config = write_config(tmp_path / "qe-mcp.yaml", tmp_path / "state", {"server": {
        "port": 9123, "auth": {"tokensFile": str(tokens)}}})
    url = "http://127.0.0.1:9123/mcp"

    words = shlex.split(client_config("claude-code", "--http", "--config", str(config)).stdout)
    assert words == ["claude", "mcp", "add", "--transport", "http", "aqe-mcp", url,
                     "--header", "Authorization: Bearer $AQE_MCP_TOKEN"]
    cursor = json.loads(client_config("cursor", "--http", "--config", str(config)).stdout)
    assert cursor == {"mcpServers": {"aqe-mcp": {
        "url": url, "headers": {"Authorization": "Bearer ${env:AQE_MCP_TOKEN}"}}}}
    vscode = json.loads(client_config("vscode", "--http", "--config", str(config)).stdout)
    assert vscode["servers"]["aqe-mcp"] == {
        "type": "http", "url": url, "headers": {"Authorization": "Bearer ${input:aqe-mcp-token}"}}
    assert vscode["inputs"][0]["id"] == "aqe-mcp-token" and vscode["inputs"][0]["password"] is True
    # The token itself is never printed.
    assert "x" * 32 not in json.dumps([words, cursor, vscode])

    given = json.loads(client_config("cursor", "--http", "https://qe.example.com/mcp").stdout)
    assert given == {"mcpServers": {"aqe-mcp": {"url": "https://qe.example.com/mcp"}}}  # no auth by default
    desktop = client_config("claude-desktop", "--http")
    assert desktop.returncode == 2 and "use --stdio" in desktop.stderr and desktop.stdout == ""


def test_a_broken_config_is_reported_not_turned_into_a_snippet(tmp_path: Path) -> None:
    bad = tmp_path / "qe-mcp.yaml"
    bad.write_text("server: {port: -1}\n")
    out = client_config("cursor", "--config", str(bad))
    assert out.returncode == 2 and "port" in out.stderr and out.stdout == ""


@pytest.mark.anyio
async def test_the_stdio_snippet_run_as_written_serves_the_official_client(tmp_path: Path) -> None:
    config = write_config(tmp_path / "qe-mcp.yaml", tmp_path / "state")
    command, args = stdio_entry("cursor", config)
    # As a client would: from another directory, with nothing but the snippet.
    params = StdioServerParameters(command=command, args=args, env=dict(os.environ), cwd=str(tmp_path))
    async with Client(params) as client:
        tools = await client.list_tools()
        assert "qe_memory_store" in {tool.name for tool in tools.tools}
        stored = await client.call_tool("qe_memory_store", {"key": "k", "value": {"v": 1}})
        assert not stored.is_error
