"""Exposure and limits against a real server: bearer tokens, rotation, refusing an open bind, rate limits,
connection limits, slow clients, and every refusal counted in /metrics."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from tests.conftest import ServerProcess, start_server, write_config
from tests.test_http_edges import initialize, legacy, modern, request

TOKEN_A = "alpha-" + "a" * 26
TOKEN_B = "bravo-" + "b" * 26
TOKEN_C = "charlie-" + "c" * 24
SMALL_FLEET = {"fleet": {"agents": {"generalist": 1}}, "pool": {"minConnections": 1}}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def ping(srv: ServerProcess, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    body, hdrs = modern("tools/list")
    return request(srv, "POST", body=body, headers={**hdrs, **(headers or {})})


def get(srv: ServerProcess, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(srv.host, int(srv.port), timeout=10)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    out = resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    conn.close()
    return out


def refused(srv: ServerProcess, reason: str, headers: dict[str, str] | None = None) -> float:
    status, _, text = get(srv, "/metrics", headers)
    assert status == 200
    found = re.search(rf'^aqe_mcp_refused_total{{reason="{reason}"}} (\S+)$', text.decode(), re.M)
    assert found, f"no refusal counter for {reason}"
    return float(found.group(1))


def start(tmp: Path, server: dict[str, Any], env: dict[str, str] | None = None) -> ServerProcess:
    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        return start_server(tmp, {"server": server, **SMALL_FLEET})
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def authed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("auth")
    tokens = tmp / "tokens"
    tokens.write_text(f"# rotation: both valid\n{TOKEN_A}\n\n{TOKEN_B}\n")
    tokens.chmod(0o600)
    srv = start(tmp, {"auth": {"tokensFile": str(tokens)}})
    yield srv
    srv.stop()


def test_mcp_and_dashboard_need_a_valid_token(authed: ServerProcess) -> None:
    status, headers, body = ping(authed)
    assert status == 401 and headers["www-authenticate"] == 'Bearer realm="aqe-mcp"'
    assert b"Authorization: Bearer" in body
    status, headers, _ = ping(authed, bearer("x" * 40))
    assert status == 401 and 'error="invalid_token"' in headers["www-authenticate"]
    assert ping(authed, {"Authorization": f"Basic {TOKEN_A}"})[0] == 401
    assert ping(authed, bearer(TOKEN_A[:-1]))[0] == 401  # a prefix of a token is not the token
    assert ping(authed, bearer(TOKEN_A))[0] == ping(authed, bearer(TOKEN_B))[0] == 200
    assert ping(authed, {"Authorization": f"bearer  {TOKEN_B}"})[0] == 200  # the scheme is case-insensitive
    assert get(authed, "/dashboard.json")[0] == 401
    assert get(authed, "/dashboard.json", bearer(TOKEN_A))[0] == 200
    assert get(authed, "/nowhere")[0] == 401  # no route map for strangers
    # Probes and (by default) metrics stay open.
    assert get(authed, "/healthz")[0] == get(authed, "/readyz")[0] == get(authed, "/metrics")[0] == 200
    assert refused(authed, "auth") >= 6


def test_a_session_belongs_to_the_token_that_created_it(authed: ServerProcess) -> None:
    sid = initialize(authed, headers=bearer(TOKEN_A))
    assert legacy(authed, sid, "notifications/initialized", msg_id=None, extra=bearer(TOKEN_A))[0] == 202
    # To token B the session does not exist: the same 404 as for an id never issued, whatever B tries.
    never = legacy(authed, "x" * len(sid), "tools/list", extra=bearer(TOKEN_B))
    assert never[0] == 404
    for method, params in (("tools/list", {}), ("ping", {}), ("logging/setLevel", {"level": "debug"})):
        status, _, raw = legacy(authed, sid, method, params, extra=bearer(TOKEN_B))
        assert (status, raw) == (never[0], never[2]), method
    status, _, raw = legacy(authed, sid, "notifications/cancelled", {"requestId": 1}, msg_id=None,
                            extra=bearer(TOKEN_B))
    assert status == 404
    for method in ("GET", "DELETE"):
        hijack = {"Accept": "text/event-stream", "Mcp-Session-Id": sid, **bearer(TOKEN_B)}
        unknown = request(authed, method, headers={**hijack, "Mcp-Session-Id": "x" * len(sid)})
        assert request(authed, method, headers=hijack)[::2] == unknown[::2] and unknown[0] == 404, method
    # B changed nothing: A's session still works, and only A can end it.
    status, _, raw = legacy(authed, sid, "tools/list", extra=bearer(TOKEN_A))
    assert status == 200 and len(json.loads(raw)["result"]["tools"]) == 14
    assert request(authed, "DELETE", headers={"Mcp-Session-Id": sid, **bearer(TOKEN_A)})[0] == 204
    assert legacy(authed, sid, "tools/list", extra=bearer(TOKEN_A))[0] == 404


@pytest.mark.anyio
async def test_official_client_with_a_token(authed: ServerProcess) -> None:
    for mode in ("auto", "legacy"):
        transport = streamable_http_client(authed.url, http_client=create_mcp_http_client(headers=bearer(TOKEN_B)))
        async with Client(transport, mode=mode) as client:
            tools = await client.list_tools()
            assert len(tools.tools) == 14
            result = await client.call_tool("qe_memory_store", {"key": f"auth/{mode}", "value": 1})
            assert not result.is_error
    with pytest.raises(BaseException) as refused_without:
        async with Client(authed.url) as client:
            await client.list_tools()
    # The 401 body is a JSON-RPC error, so the client shows why.
    assert "missing bearer token" in "".join(traceback.format_exception(refused_without.value))


def test_token_rotation_on_reload(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN_A + "\n")
    srv = start(tmp_path, {"auth": {"tokensFile": str(tokens), "protectMetrics": True}})
    try:
        assert ping(srv, bearer(TOKEN_A))[0] == 200
        assert get(srv, "/metrics")[0] == 401  # protectMetrics
        # Rotation: the new token first alongside the old one, then the old one removed.
        tokens.write_text(f"{TOKEN_A}\n{TOKEN_B}\n")
        srv.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: ping(srv, bearer(TOKEN_B))[0] == 200)
        assert ping(srv, bearer(TOKEN_A))[0] == 200
        tokens.write_text(f"{TOKEN_B}\n")
        srv.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: ping(srv, bearer(TOKEN_A))[0] == 401)
        assert ping(srv, bearer(TOKEN_B))[0] == 200
        # A file emptied by mistake refuses the reload: the running tokens stay.
        tokens.write_text("# nothing yet\n")
        srv.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "holds no token" in srv.log)
        assert ping(srv, bearer(TOKEN_B))[0] == 200
        assert refused(srv, "auth", bearer(TOKEN_B)) >= 2
        status = subprocess.run(
            [sys.executable, "-m", "qe_appliance.cli", "mcp", "status", "--json", "--config",
             str(tmp_path / "qe-mcp.yaml")], capture_output=True, text=True, timeout=60,
        )
        assert json.loads(status.stdout)["auth"] == "bearer tokens (1 accepted)"
        assert TOKEN_B not in status.stdout
    finally:
        srv.stop()


def test_tokens_from_an_environment_variable(tmp_path: Path) -> None:
    srv = start(tmp_path, {"auth": {"tokensEnv": "AQE_TEST_TOKENS"}}, env={"AQE_TEST_TOKENS": f"{TOKEN_A}, {TOKEN_C}"})
    try:
        assert ping(srv, bearer(TOKEN_C))[0] == 200 and ping(srv, bearer(TOKEN_B))[0] == 401
    finally:
        srv.stop()


def run_start(tmp: Path, server: dict[str, Any], *flags: str, env: dict[str, str] | None = None) -> Any:
    cfg = write_config(tmp / "qe-mcp.yaml", tmp / "state", {"server": server})
    return subprocess.run(
        [sys.executable, "-m", "qe_appliance.cli", "mcp", "start", "--config", str(cfg), *flags],
        capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("server", "flags", "expected"),
    [
        ({"host": "0.0.0.0"}, (), "server.host: `0.0.0.0` is not a loopback address"),
        ({}, ("--host", "192.0.2.10"), "server.auth.tokensFile (or tokensEnv)"),
        ({"auth": {"tokensFile": "/nonexistent/tokens"}}, (), "cannot read it"),
        ({"auth": {"tokensEnv": "AQE_TEST_UNSET_VARIABLE"}}, (), "is not set in the server's environment"),
        ({"auth": {"tokensEnv": "AQE_TEST_SHORT"}}, (), "token 1 is 5 characters; use at least 16"),
        ({"auth": {"tokensEnv": "Bearer abc"}}, (), "is not an environment variable name"),
    ],
)
def test_start_refuses_an_unsafe_or_broken_auth_setup(
    tmp_path: Path, server: dict[str, Any], flags: tuple[str, ...], expected: str
) -> None:
    done = run_start(tmp_path, {"port": 0, **server}, *flags, env={"AQE_TEST_SHORT": "short"})
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr and "Traceback" not in done.stderr


def test_rate_limit_per_token_and_per_address(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN_A}\n{TOKEN_B}\n")
    srv = start(tmp_path, {"auth": {"tokensFile": str(tokens)}, "rateLimit": {"requestsPerSecond": 2, "burst": 4}})
    try:
        codes = [ping(srv, bearer(TOKEN_A))[0] for _ in range(6)]
        assert codes[:4] == [200] * 4 and 429 in codes[4:]
        status, headers, body = ping(srv, bearer(TOKEN_A))
        assert status == 429 and int(headers["retry-after"]) >= 1 and b"server.rateLimit" in body
        assert ping(srv, bearer(TOKEN_B))[0] == 200  # another client's bucket is untouched
        # Without a valid token the client is its address: guessing tokens is rate limited too.
        guesses = [ping(srv, bearer("z" * 32))[0] for _ in range(6)]
        assert guesses[:4] == [401] * 4 and 429 in guesses[4:]
        assert get(srv, "/healthz")[0] == 200  # probes are never limited
        time.sleep(1.1)
        assert ping(srv, bearer(TOKEN_A))[0] == 200  # the bucket refills
        assert refused(srv, "rate_limit") >= 3
    finally:
        srv.stop()


def read_response(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_connections_past_the_limit_get_503_and_are_closed(tmp_path: Path) -> None:
    srv = start(tmp_path, {"maxConnections": 3})
    held: list[socket.socket] = []
    try:
        held += [socket.create_connection((srv.host, int(srv.port)), timeout=10) for _ in range(2)]
        time.sleep(0.2)
        text = get(srv, "/metrics")[2].decode()  # the scrape is the third connection
        assert re.search(r"^aqe_mcp_http_connections 3\.0$", text, re.M)
        held.append(socket.create_connection((srv.host, int(srv.port)), timeout=10))
        time.sleep(0.2)
        extra = socket.create_connection((srv.host, int(srv.port)), timeout=10)
        extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = read_response(extra)  # read to EOF: the server closes it
        assert answer.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in answer
        assert b"server.maxConnections" in answer
        # One that sends nothing is not left hanging either.
        silent = socket.create_connection((srv.host, int(srv.port)), timeout=10)
        started = time.monotonic()
        assert read_response(silent).startswith(b"HTTP/1.1 503") and time.monotonic() - started < 5
        held.pop().close()
        wait_for(lambda: get(srv, "/healthz")[0] == 200)  # room again
        for sock in held:
            sock.close()
        wait_for(lambda: get(srv, "/healthz")[0] == 200)
        assert refused(srv, "connections") >= 2
    finally:
        for sock in held:
            sock.close()
        srv.stop()


def test_slow_clients_do_not_stop_fast_ones(tmp_path: Path) -> None:
    srv = start(tmp_path, {"headerTimeoutMs": 1000, "maxConnections": 200})
    slow: list[socket.socket] = []
    stop = threading.Event()

    def trickle() -> None:
        # Slowloris: 40 connections each sending one header byte every 100 ms, never finishing.
        for _ in range(40):
            sock = socket.create_connection((srv.host, int(srv.port)), timeout=10)
            sock.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            slow.append(sock)
        while not stop.is_set():
            for sock in slow:
                try:
                    sock.sendall(b"X")
                except OSError:
                    pass
            time.sleep(0.1)

    worker = threading.Thread(target=trickle)
    worker.start()
    try:
        time.sleep(0.3)
        latencies = []
        for _ in range(20):
            started = time.monotonic()
            assert ping(srv)[0] == 200
            latencies.append(time.monotonic() - started)
        assert max(latencies) < 1.0  # served while the slow ones are still open
        time.sleep(1.5)
        # Past headerTimeoutMs every slow connection has been answered 408 and closed.
        for sock in slow:
            sock.settimeout(5)
            answer = read_response(sock)
            assert answer.startswith(b"HTTP/1.1 408") and b"server.headerTimeoutMs" in answer
        assert refused(srv, "header_timeout") == 40
    finally:
        stop.set()
        worker.join(10)
        for sock in slow:
            sock.close()
        srv.stop()


def test_a_connection_that_never_starts_a_request_is_closed_at_the_header_timeout(tmp_path: Path) -> None:
    srv = start(tmp_path, {"headerTimeoutMs": 500, "keepAliveTimeoutMs": 30_000})
    try:
        with socket.create_connection((srv.host, int(srv.port)), timeout=10) as sock:
            started = time.monotonic()
            assert sock.recv(4096) == b""  # closed without a word: there was no request to answer
            assert time.monotonic() - started < 2  # the header timeout, not the 30 s keep-alive one
    finally:
        srv.stop()


def test_header_and_body_limits_are_counted(tmp_path: Path) -> None:
    srv = start(tmp_path, {"maxHeaderBytes": 2048, "maxBodyBytes": 1000})
    try:
        status, _, body = ping(srv, {"X-Padding": "p" * 3000})
        assert status == 431 and b"server.maxHeaderBytes" in body
        big, hdrs = modern("tools/call", {"name": "qe_memory_store", "arguments": {"key": "k", "value": "v" * 2000}})
        status, _, body = request(srv, "POST", body=big, headers=hdrs)
        assert status == 413 and b"server.maxBodyBytes" in body
        # On /mcp even the protocol layer's refusals are JSON-RPC errors, which MCP clients display.
        assert json.loads(body) == {"jsonrpc": "2.0", "id": None, "error": {
            "code": -32600, "message": "request body over the 1000-byte limit (server.maxBodyBytes)"}}
        assert ping(srv)[0] == 200
        assert refused(srv, "header_size") == 1 and refused(srv, "body_size") == 1
    finally:
        srv.stop()


def test_a_full_table_of_busy_sessions_refuses_new_ones(tmp_path: Path) -> None:
    srv = start(tmp_path, {"maxSessions": 1})
    try:
        sid = initialize(srv)
        stream = socket.create_connection((srv.host, int(srv.port)), timeout=10)
        stream.sendall(f"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
                       f"Mcp-Session-Id: {sid}\r\nMCP-Protocol-Version: 2025-11-25\r\n\r\n".encode())
        head = b""
        while b"stream open" not in head:
            head += stream.recv(4096)
        body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "x", "version": "1"}}}
        status, _, answer = request(srv, "POST", body=body)
        assert status == 503 and b"server.maxSessions" in answer
        stream.close()  # the busy session goes idle: the next one evicts it
        wait_for(lambda: request(srv, "POST", body=body)[0] == 200)
        assert refused(srv, "sessions") >= 1
    finally:
        srv.stop()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may open any socket")
def test_cli_says_when_it_may_not_use_the_admin_socket(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "control.sock").touch()
    private.chmod(0)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "qe_appliance.cli", "mcp", "status", "--socket", str(private / "control.sock")],
            capture_output=True, text=True, timeout=60,
        )
    finally:
        private.chmod(0o700)
    assert done.returncode == 3 and "permission denied on the admin socket" in done.stderr


def test_cli_permission_message_when_the_kernel_refuses(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The same path as the test above, for runs as root (where the kernel never refuses).
    from qe_appliance.control import client

    def refuse(self: socket.socket, address: Any) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    with pytest.raises(client.NotRunning, match=r"permission denied on the admin socket .* \(e.g. with sudo\)"):
        client.call(tmp_path / "control.sock", "status")


def test_admin_socket_is_private(authed: ServerProcess) -> None:
    sock = authed.state / "control.sock"
    assert sock.stat().st_mode & 0o777 == 0o600
    assert sock.parent.stat().st_mode & 0o777 == 0o700


def test_start_refuses_an_admin_socket_directory_open_to_others(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    done = run_start(tmp_path, {"port": 0, "controlSocket": str(shared / "control.sock")})
    assert done.returncode == 1 and "is open to other users (mode 755)" in done.stderr
    assert f"chmod 700 {shared}" in done.stderr


def wait_for(condition: Any, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_a_tool_past_its_timeout_is_an_error_and_its_agent_is_replaced(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    records = (f"SF:src/m{i}.py\n" + "".join(f"DA:{n},{n % 3}\n" for n in range(1, 400)) + "end_of_record\n"
               for i in range(1500))
    (root / "lcov.info").write_text("TN:\n" + "".join(records))  # ~7 MB: far more than 50 ms of parsing
    srv = start_server(tmp_path, {
        "server": {"workspaceRoots": [str(root)]},
        "tools": {"qe_coverage_analyze": {"timeoutMs": 50}},
        "fleet": {"agents": {"coverage-analyzer": 1}},
        "pool": {"minConnections": 1},
    })
    try:
        def agents() -> dict[str, Any]:
            body, hdrs = modern("tools/call", {"name": "qe_fleet_status", "arguments": {"verbose": True}})
            status, _, raw = request(srv, "POST", body=body, headers=hdrs)
            assert status == 200
            result = json.loads(raw)["result"]["structuredContent"]
            return {a["id"]: a for a in result["agents"]}

        before = agents()
        body, hdrs = modern("tools/call", {"name": "qe_coverage_analyze", "arguments": {"path": "lcov.info"}})
        status, _, raw = request(srv, "POST", body=body, headers=hdrs)
        result = json.loads(raw)["result"]
        assert status == 200 and result["isError"] is True
        assert "timed out after 0.05 s" in result["content"][0]["text"] and "timeoutMs" in result["content"][0]["text"]
        # The agent that was working on it is killed and replaced: the work stops.
        wait_for(lambda: any(a["restarts"] > before[aid]["restarts"] and a["pid"] != before[aid]["pid"]
                             for aid, a in agents().items() if aid in before))
        assert ping(srv)[0] == 200
    finally:
        srv.stop()


def test_start_refuses_a_yaml_bomb_or_a_huge_file_quickly(tmp_path: Path) -> None:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"{chr(98 + n)}: &{chr(98 + n)} [{', '.join([f'*{chr(97 + n)}'] * 9)}]" for n in range(9)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    huge = tmp_path / "huge.yaml"
    huge.write_text("# padding\n" * 200_000)
    for path, expected in ((bomb, "anchors and aliases expand to more than"), (huge, "larger than 1 MiB")):
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "qe_appliance.cli", "mcp", "start", "--config", str(path)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and expected in done.stderr and "Traceback" not in done.stderr
        assert time.monotonic() - started < 10  # the interpreter's start-up included


def test_verify_is_refused_where_callers_may_not_run_code(tmp_path: Path) -> None:
    srv = start(tmp_path, {"allowCodeExecution": False})
    source = "def double(x: int) -> int:\n    return 2 * x\n"
    try:
        for verify, refused_here in ((True, True), (False, False)):
            body, hdrs = modern("tools/call", {"name": "qe_test_generate",
                                               "arguments": {"source": source, "module": "dbl", "verify": verify}})
            status, _, raw = request(srv, "POST", body=body, headers=hdrs)
            result = json.loads(raw)["result"]
            assert status == 200 and result["isError"] is refused_here
            if refused_here:
                assert "server.allowCodeExecution: false" in result["content"][0]["text"]
            else:
                assert "def test_" in result["structuredContent"]["module"]
    finally:
        srv.stop()


def test_an_open_state_directory_holding_the_default_socket_is_made_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o755)  # as an older version, or a seeding script, left it
    srv = start(tmp_path, {})
    try:
        assert state.stat().st_mode & 0o777 == 0o700 and "made" in srv.log and "private" in srv.log
        assert (state / "control.sock").stat().st_mode & 0o777 == 0o600
    finally:
        srv.stop()
