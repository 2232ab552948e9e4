"""Who may run code, and what the code can do (issue 17 item 3): over HTTP, verify needs a token or the
explicit opt-in; over stdio it is allowed; the generated tests run without network, with CPU, memory and
file-size limits and without new privileges, as seen from inside the test process itself."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from qe_appliance.sandbox import Limits, run_sandboxed
from tests.conftest import ServerProcess, start_server, stdio_command
from tests.test_http_edges import modern, request

DOUBLE = "def double(x: int) -> int:\n    return 2 * x\n"
TOKEN = "s3cret-token-for-code-execution-tests"

# Each doctest passes only where the sandbox holds; verify reports which.
PROBES = '''
def network_reachable(port: int) -> bool:
    """
    >>> network_reachable(PORT)
    False
    """
    import socket
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


def limited() -> list:
    """
    >>> limited()
    ['cpu', 'as', 'fsize', 'core', 'nonewprivs']
    """
    import resource
    found = []
    for name, which in (("cpu", resource.RLIMIT_CPU), ("as", resource.RLIMIT_AS), ("fsize", resource.RLIMIT_FSIZE)):
        if resource.getrlimit(which)[0] != resource.RLIM_INFINITY:
            found.append(name)
    if resource.getrlimit(resource.RLIMIT_CORE)[0] == 0:
        found.append("core")
    with open("/proc/self/status") as status:
        if "NoNewPrivs:\\t1" in status.read():
            found.append("nonewprivs")
    return found
'''


def _verify(server: ServerProcess, source: str, token: str | None = None) -> dict[str, Any]:
    body, headers = modern("tools/call", {"name": "qe_test_generate", "arguments": {"source": source, "verify": True}})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    status, _, raw = request(server, "POST", body=body, headers=headers)
    assert status == 200, raw
    result: dict[str, Any] = json.loads(raw)["result"]
    return result


def test_verify_over_http_needs_a_token_or_the_opt_in(tmp_path: Path) -> None:
    for name in ("open-port", "tokens"):
        (tmp_path / name).mkdir()
    server = start_server(tmp_path / "open-port")
    try:
        refused = _verify(server, DOUBLE)
        assert refused["isError"]
        text = refused["content"][0]["text"]
        assert "authenticated caller" in text and "server.allowUnauthenticatedCodeExecution" in text
        body, headers = modern("tools/call", {"name": "qe_test_generate", "arguments": {"source": DOUBLE}})
        status, _, raw = request(server, "POST", body=body, headers=headers)
        assert status == 200 and not json.loads(raw)["result"]["isError"]  # generating alone is fine
    finally:
        server.stop()

    os.environ["AQE_CODE_EXEC_TOKENS"] = TOKEN
    try:
        server = start_server(tmp_path / "tokens", {"server": {"auth": {"tokensEnv": "AQE_CODE_EXEC_TOKENS"}}})
    finally:
        del os.environ["AQE_CODE_EXEC_TOKENS"]
    try:
        allowed = _verify(server, DOUBLE, TOKEN)
        assert not allowed["isError"], allowed
        assert allowed["structuredContent"]["verification"]["status"] == "passed"
    finally:
        server.stop()


@pytest.mark.anyio
async def test_verify_over_stdio_is_allowed(tmp_path: Path) -> None:
    command, args, env = stdio_command(tmp_path)
    params = StdioServerParameters(command=command, args=args, env=env)
    async with Client(params) as client:
        result = await client.call_tool("qe_test_generate", {"source": DOUBLE, "verify": True})
        assert not result.is_error, result.content
        assert result.structured_content["verification"]["status"] == "passed"


def test_generated_tests_run_without_network_and_with_limits(tmp_path: Path) -> None:
    server = start_server(tmp_path, {"server": {"allowUnauthenticatedCodeExecution": True}})
    try:
        source = PROBES.replace("PORT", server.port)
        result = _verify(server, source)
        assert not result["isError"], result
        tests = result["structuredContent"]["tests"]
        by_target = {test["target"]: test for test in tests if test["kind"] == "doctest"}
        assert set(by_target) == {"network_reachable", "limited"}, tests
        for test in by_target.values():
            assert test["status"] == "passed", test
    finally:
        server.stop()


def test_the_sandbox_kills_what_the_code_leaves_behind(tmp_path: Path) -> None:
    """A run's children in its process group are killed when the run ends, and its CPU limit holds."""
    marker = tmp_path / "orphan-alive"
    child = f"import time; time.sleep(3); open({str(marker)!r}, 'w')"
    script = f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', {child!r}])\nwhile True: pass\n"
    outcome = run_sandboxed(
        [sys.executable, "-c", script],
        tmp_path,
        env=dict(os.environ),
        timeout_s=10,
        limits=Limits(cpu_seconds=1),
        output=tmp_path / "out.txt",
    )
    assert outcome.returncode < 0 and not outcome.timed_out  # SIGXCPU/SIGKILL from RLIMIT_CPU, not the deadline
    assert outcome.seconds < 5
    time.sleep(3.5)
    assert not marker.exists(), "a child of the run outlived it"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
