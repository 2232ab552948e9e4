"""Raw HTTP against a real server process: the protocol edges a client library would hide."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ServerProcess, start_server

MODERN = "2026-07-28"
JSON_SSE = "application/json, text/event-stream"


def request(
    srv: ServerProcess,
    method: str,
    path: str = "/mcp",
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(srv.host, int(srv.port), timeout=timeout)
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json", "Accept": JSON_SSE, **(headers or {})}
    conn.request(method, path, body=data, headers=hdrs)
    resp = conn.getresponse()
    out = resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    conn.close()
    return out


def modern(method: str, params: dict[str, Any] | None = None, msg_id: int = 1) -> tuple[dict, dict]:
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "raw-test", "version": "1"},
    }
    body = {"jsonrpc": "2.0", "id": msg_id, "method": method, "params": {**(params or {}), "_meta": meta}}
    headers = {"MCP-Protocol-Version": MODERN, "Mcp-Method": method}
    if method == "tools/call":
        headers["Mcp-Name"] = (params or {})["name"]
    return body, headers


def rpc_error(body: bytes) -> dict[str, Any]:
    return json.loads(body)["error"]


def initialize(srv: ServerProcess, version: str = "2025-11-25", headers: dict[str, str] | None = None) -> str:
    status, reply_headers, body = request(
        srv,
        "POST",
        body={
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
        },
        headers=headers,
    )
    assert status == 200, body
    assert json.loads(body)["result"]["protocolVersion"] == version
    sid = reply_headers["mcp-session-id"]
    assert sid.isascii() and len(sid) >= 24
    return sid


def legacy(
    srv: ServerProcess,
    sid: str | None,
    method: str,
    params: dict | None = None,
    msg_id: int | None = 1,
    extra: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params or {}}
    if msg_id is not None:
        body["id"] = msg_id
    headers = {"MCP-Protocol-Version": "2025-11-25", **(extra or {})}
    if sid:
        headers["Mcp-Session-Id"] = sid
    return request(srv, "POST", body=body, headers=headers)


# ---- modern era ----------------------------------------------------------------------------------------


def test_discover_and_modern_tool_call(server: ServerProcess) -> None:
    status, headers, body = request(
        server, "POST", body=modern("server/discover")[0], headers=modern("server/discover")[1]
    )
    assert status == 200 and headers["content-type"] == "application/json"
    result = json.loads(body)["result"]
    assert result["supportedVersions"] == [MODERN] and result["resultType"] == "complete"
    assert result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "aqe-mcp"
    body_, hdrs = modern("tools/call", {"name": "qe_memory_retrieve", "arguments": {"key": "absent"}})
    status, _, body = request(server, "POST", body=body_, headers=hdrs)
    assert status == 200
    assert json.loads(body)["result"]["structuredContent"]["found"] is False


def test_tools_list_is_cacheable_and_paginated(server: ServerProcess) -> None:
    body, hdrs = modern("tools/list")
    status, _, raw = request(server, "POST", body=body, headers=hdrs)
    result = json.loads(raw)["result"]
    assert status == 200 and len(result["tools"]) == 14
    assert result["ttlMs"] > 0 and result["cacheScope"] in ("public", "private")
    body, hdrs = modern("tools/list", {"cursor": "not-a-cursor"})
    status, _, raw = request(server, "POST", body=body, headers=hdrs)
    assert status == 400 and rpc_error(raw)["code"] == -32602 and "cursor" in rpc_error(raw)["message"]


@pytest.mark.parametrize(
    "header,value",
    [
        ("Mcp-Method", "tools/call"),
        ("MCP-Protocol-Version", "2025-11-25"),
    ],
)
def test_routing_header_mismatch_is_32020(server: ServerProcess, header: str, value: str) -> None:
    body, hdrs = modern("tools/list")
    hdrs[header] = value
    status, _, raw = request(server, "POST", body=body, headers=hdrs)
    assert status == 400 and rpc_error(raw)["code"] == -32020


def test_mcp_name_must_match_and_may_be_base64(server: ServerProcess) -> None:
    body, hdrs = modern("tools/call", {"name": "qe_memory_retrieve", "arguments": {"key": "k"}})
    hdrs["Mcp-Name"] = "qe_memory_store"
    status, _, raw = request(server, "POST", body=body, headers=hdrs)
    assert status == 400 and rpc_error(raw)["code"] == -32020
    hdrs["Mcp-Name"] = "=?base64?" + base64.b64encode(b"qe_memory_retrieve").decode() + "?="
    status, _, raw = request(server, "POST", body=body, headers=hdrs)
    assert status == 200, raw


def test_param_header_must_mirror_namespace(server: ServerProcess) -> None:
    body, hdrs = modern("tools/call", {"name": "qe_memory_retrieve", "arguments": {"key": "k", "namespace": "a"}})
    status, _, raw = request(server, "POST", body=body, headers=hdrs)
    assert status == 400 and "Mcp-Param-Namespace" in rpc_error(raw)["message"]
    hdrs["Mcp-Param-Namespace"] = "b"
    status, _, raw = request(server, "POST", body=body, headers=hdrs)
    assert status == 400 and rpc_error(raw)["code"] == -32020
    hdrs["Mcp-Param-Namespace"] = " a "
    status, _, raw = request(server, "POST", body=body, headers=hdrs)
    assert status == 200, raw


def test_unsupported_version_lists_supported(server: ServerProcess) -> None:
    body, hdrs = modern("tools/list")
    body["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = "2099-01-01"
    hdrs["MCP-Protocol-Version"] = "2099-01-01"
    status, _, raw = request(server, "POST", body=body, headers=hdrs)
    err = rpc_error(raw)
    assert status == 400 and err["code"] == -32022
    assert err["data"] == {"supported": [MODERN], "requested": "2099-01-01"}


def test_missing_envelope_is_invalid_params(server: ServerProcess) -> None:
    body, hdrs = modern("tools/list")
    del body["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"]
    status, _, raw = request(server, "POST", body=body, headers=hdrs)
    assert status == 400 and rpc_error(raw)["code"] == -32602 and "clientCapabilities" in rpc_error(raw)["message"]


def test_handshake_only_methods_do_not_exist_in_modern_era(server: ServerProcess) -> None:
    body, hdrs = modern("ping")
    status, _, raw = request(server, "POST", body=body, headers=hdrs)
    assert status == 404 and rpc_error(raw)["code"] == -32601


# ---- handshake era ---------------------------------------------------------------------------------


def test_session_lifecycle(server: ServerProcess) -> None:
    sid = initialize(server)
    status, _, _ = legacy(server, sid, "notifications/initialized", msg_id=None)
    assert status == 202
    status, _, raw = legacy(server, sid, "ping")
    assert status == 200 and json.loads(raw)["result"] == {}
    status, _, raw = legacy(server, sid, "logging/setLevel", {"level": "verbose"})
    # Handshake era: a JSON-RPC error answering a request travels with HTTP 200 (4xx is for the transport).
    assert status == 200 and rpc_error(raw)["code"] == -32602 and "debug" in rpc_error(raw)["message"]
    status, _, _ = request(server, "DELETE", headers={"Mcp-Session-Id": sid})
    assert status == 204
    status, _, raw = legacy(server, sid, "tools/list")
    assert status == 404
    status, _, _ = request(server, "DELETE", headers={"Mcp-Session-Id": sid})
    assert status == 404
    status, _, _ = request(server, "DELETE")
    assert status == 400


def test_missing_and_unknown_session(server: ServerProcess) -> None:
    status, _, raw = legacy(server, None, "tools/list")
    assert status == 400 and "Mcp-Session-Id" in rpc_error(raw)["message"]
    status, _, _ = legacy(server, "no-such-session", "tools/list")
    assert status == 404


def test_version_negotiation(server: ServerProcess) -> None:
    initialize(server, "2024-11-05")
    status, _, raw = request(
        server,
        "POST",
        body={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "1999-01-01",
                "capabilities": {},
                "clientInfo": {"name": "x", "version": "1"},
            },
        },
    )
    assert status == 200 and json.loads(raw)["result"]["protocolVersion"] == "2025-11-25"


def test_unsupported_protocol_header_in_session(server: ServerProcess) -> None:
    sid = initialize(server)
    status, _, raw = legacy(server, sid, "tools/list", extra={"MCP-Protocol-Version": "1999-01-01"})
    assert status == 400 and "1999-01-01" in rpc_error(raw)["message"]


def test_get_stream_needs_a_session(server: ServerProcess) -> None:
    status, _, _ = request(server, "GET", headers={"Accept": "text/event-stream"})
    assert status == 400
    sid = initialize(server)
    conn = http.client.HTTPConnection(server.host, int(server.port), timeout=5)
    conn.request("GET", "/mcp", headers={"Accept": "text/event-stream", "Mcp-Session-Id": sid})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("content-type") == "text/event-stream"
    assert resp.getheader("cache-control") == "no-cache"
    conn.close()


# ---- HTTP and JSON-RPC framing --------------------------------------------------------------------


def test_malformed_json_and_batches(server: ServerProcess) -> None:
    status, _, raw = request(server, "POST", body=b'{"jsonrpc": "2.0", "id": 1,')
    assert status == 400 and rpc_error(raw)["code"] == -32700
    # A batch outside a 2025-03-26 session (here: none at all) is refused (tests/test_surface.py has the rest).
    status, _, raw = request(server, "POST", body=[{"jsonrpc": "2.0", "id": 1, "method": "ping"}])
    assert status == 400 and rpc_error(raw)["code"] == -32600 and "2025-03-26" in rpc_error(raw)["message"]
    status, _, raw = request(server, "POST", body={"jsonrpc": "1.0", "id": 1, "method": "ping"})
    assert status == 400 and rpc_error(raw)["code"] == -32600


def test_media_types(server: ServerProcess) -> None:
    body, hdrs = modern("tools/list")
    status, _, _ = request(server, "POST", body=body, headers={**hdrs, "Content-Type": "text/plain"})
    assert status == 415
    status, _, _ = request(server, "POST", body=body, headers={**hdrs, "Accept": "text/html"})
    assert status == 406


def test_origin_and_host_checks(server: ServerProcess) -> None:
    body, hdrs = modern("tools/list")
    status, _, raw = request(server, "POST", body=body, headers={**hdrs, "Origin": "https://evil.example"})
    assert status == 403 and b"allowedOrigins" in raw
    status, _, _ = request(server, "POST", body=body, headers={**hdrs, "Origin": f"http://localhost:{server.port}"})
    assert status == 200
    status, _, _ = request(server, "POST", body=body, headers={**hdrs, "Host": "evil.example"})
    assert status == 421


def test_probes_and_unknown_routes(server: ServerProcess) -> None:
    assert request(server, "GET", "/healthz")[0] == 200
    status, _, raw = request(server, "GET", "/readyz")
    assert status == 200 and json.loads(raw)["status"] == "ready"
    assert request(server, "GET", "/nope")[0] == 404
    assert request(server, "PUT", "/mcp", body=b"{}")[0] == 405


def _raw_exchange(srv: ServerProcess, payload: bytes, want: int, timeout: float = 5) -> bytes:
    """Send raw bytes; read until `want` responses' worth of bytes arrived (counted by status lines)."""
    with socket.create_connection((srv.host, int(srv.port)), timeout=timeout) as sock:
        sock.sendall(payload)
        data = b""
        deadline = time.monotonic() + timeout
        while data.count(b"HTTP/1.1 ") < want and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        time.sleep(0.05)
        sock.settimeout(0.2)
        try:
            data += sock.recv(65536)
        except (TimeoutError, OSError):
            pass
        return data


def _raw_post(srv: ServerProcess, body: dict, headers: dict[str, str]) -> bytes:
    data = json.dumps(body).encode()
    lines = [
        "POST /mcp HTTP/1.1",
        f"Host: 127.0.0.1:{srv.port}",
        "Content-Type: application/json",
        f"Accept: {JSON_SSE}",
        f"Content-Length: {len(data)}",
    ]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def test_pipelined_requests_answer_in_order(server: ServerProcess) -> None:
    payload = b""
    for i in range(5):
        body, hdrs = modern("tools/call", {"name": "qe_memory_retrieve", "arguments": {"key": f"k{i}"}}, msg_id=i)
        payload += _raw_post(server, body, hdrs)
    data = _raw_exchange(server, payload, want=5)
    ids = [
        json.loads(part.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1")[0])["id"]
        for part in data.split(b"HTTP/1.1 200")[1:]
    ]
    assert ids == [0, 1, 2, 3, 4]


def test_thousands_of_pipelined_requests_in_one_write_all_answer_in_order(server: ServerProcess) -> None:
    # A long pipeline in one segment (far past the point where reading pauses) loses and reorders nothing.
    # (Probes, which no rate limit counts, alternating with a path that is answered 404.)
    count = 3000
    paths = ["/healthz", "/nowhere"]
    payload = b"".join(
        f"GET {paths[i % 2]}?n={i} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode()
        for i in range(count)
    )
    data = _raw_exchange(server, payload, want=count, timeout=30)
    statuses = [part.split(b" ", 1)[0] for part in data.split(b"HTTP/1.1 ")[1:]]
    assert statuses == [b"200", b"404"] * (count // 2)


def test_chunked_request_body(server: ServerProcess) -> None:
    body, hdrs = modern("tools/list")
    data = json.dumps(body).encode()
    head = [
        "POST /mcp HTTP/1.1",
        f"Host: 127.0.0.1:{server.port}",
        "Content-Type: application/json",
        f"Accept: {JSON_SSE}",
        "Transfer-Encoding: chunked",
    ] + [f"{k}: {v}" for k, v in hdrs.items()]
    half = len(data) // 2
    chunks = b"%x\r\n%b\r\n%x\r\n%b\r\n0\r\n\r\n" % (half, data[:half], len(data) - half, data[half:])
    raw = _raw_exchange(server, ("\r\n".join(head) + "\r\n\r\n").encode() + chunks, want=1)
    assert raw.startswith(b"HTTP/1.1 200") and b'"tools"' in raw


def test_garbage_is_a_400_and_the_server_keeps_serving(server: ServerProcess) -> None:
    raw = _raw_exchange(server, b"\x00\x01 NOT HTTP AT ALL\r\n\r\n", want=1)
    assert raw.startswith(b"HTTP/1.1 400")
    assert request(server, "GET", "/healthz")[0] == 200


# ---- limits (a server with small limits) ------------------------------------------------------------


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(
        tmp_path_factory.mktemp("tight"),
        {"server": {"maxBodyBytes": 2048, "headerTimeoutMs": 300, "keepAliveTimeoutMs": 400}},
    )
    yield srv
    srv.stop()


def test_body_too_large_is_413(tight: ServerProcess) -> None:
    body, hdrs = modern("tools/call", {"name": "qe_memory_store", "arguments": {"key": "k", "value": "x" * 5000}})
    status, _, raw = request(tight, "POST", body=body, headers=hdrs)
    assert status == 413 and b"2048" in raw
    # Announced length alone is enough to refuse, before any body is read.
    raw = _raw_exchange(
        tight,
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 999999999\r\n\r\n",
        want=1,
    )
    assert raw.startswith(b"HTTP/1.1 413")


def test_slow_headers_time_out(tight: ServerProcess) -> None:
    with socket.create_connection((tight.host, int(tight.port)), timeout=5) as sock:
        sock.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        start = time.monotonic()
        data = sock.recv(4096)
        assert data.startswith(b"HTTP/1.1 408")
        assert time.monotonic() - start < 3


def test_idle_keepalive_connection_is_closed(tight: ServerProcess) -> None:
    with socket.create_connection((tight.host, int(tight.port)), timeout=5) as sock:
        start = time.monotonic()
        assert sock.recv(4096) == b""  # closed by the server, no response written
        assert time.monotonic() - start < 3


def test_an_upgrade_request_is_answered_without_upgrading(server: ServerProcess) -> None:
    # The offer is ignored (RFC 9110 7.8): answered in HTTP/1.1 on a connection that stays HTTP/1.1.
    with socket.create_connection((server.host, int(server.port)), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        raw = b""
        while not raw.endswith(b'{"status":"ok"}'):
            raw += sock.recv(65536)
        assert raw.startswith(b"HTTP/1.1 200 OK") and b"upgrade" not in raw.lower()
        sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
