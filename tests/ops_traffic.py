"""What the operator-facing tests share: a real server with a workspace, and real tool calls through the
official client so that /metrics, /dashboard.json and the CLI have latency, errors, pool and agent figures."""

from __future__ import annotations

from pathlib import Path

import anyio
from mcp import Client

from tests.conftest import ServerProcess, start_server
from tests.fixtures.coverage.samples import python_sample

# Tools the traffic calls (the dashboard and CLI tests look for their names).
CALLED = ("qe_memory_store", "qe_memory_retrieve", "qe_coverage_analyze")


def start_workspace_server(tmp: Path, extra: dict | None = None) -> ServerProcess:
    blocks: dict = {"server": {"workspaceRoots": [str(python_sample().root)]}}
    for block, values in (extra or {}).items():
        blocks.setdefault(block, {}).update(values)
    return start_server(tmp, blocks)


def drive_traffic(server: ServerProcess, rounds: int = 12) -> None:
    """Memory calls (in the server), coverage analyses (on the agents, through the pool) and one failing
    call per round (a missing report file: isError)."""

    async def main() -> None:
        async with Client(server.url) as client:
            for i in range(rounds):
                for name, arguments in (
                    ("qe_memory_store", {"key": f"ops/{i}", "value": {"round": i}}),
                    ("qe_memory_retrieve", {"key": f"ops/{i}"}),
                    ("qe_coverage_analyze", {"path": "coverage.xml"}),
                ):
                    result = await client.call_tool(name, arguments)
                    assert not result.is_error, (name, result.content)
                if i % 4 == 0:
                    failed = await client.call_tool("qe_coverage_analyze", {"path": "no-such-report.xml"})
                    assert failed.is_error

    anyio.run(main)
