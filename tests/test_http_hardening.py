"""Raw HTTP/1.1 against a real server process: refusals in a pipeline, upgrade offers, Expect: 100-continue and
header floods — the wire-level edges a client library hides (issue 17, items 7, 8 and 10)."""

from __future__ import annotations

import http.client
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ServerProcess, start_server
from tests.test_http_edges import JSON_SSE, modern, request

MAX_HEADER_BYTES = 4096
MAX_BODY_BYTES = 65536


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(
        tmp_path_factory.mktemp("limited"),
        {"server": {"maxHeaderBytes": MAX_HEADER_BYTES, "maxBodyBytes": MAX_BODY_BYTES, "headerTimeoutMs": 3000}},
    )
    yield srv
    srv.stop()


class _Buffer(io.BytesIO):
    def close(self) -> None:
        pass  # http.client closes its file after each response; the next one is in the same bytes


class _Wire:
    """Lets http.client parse responses out of bytes already read."""

    def __init__(self, data: bytes) -> None:
        self.fp = _Buffer(data)

    def makefile(self, mode: str) -> io.BytesIO:
        return self.fp


def responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Every whole response in `data`, in order (1xx interim responses are skipped, as clients do)."""
    wire = _Wire(data)
    out = []
    while wire.fp.tell() < len(data):
        resp = http.client.HTTPResponse(wire)  # type: ignore[arg-type]
        resp.begin()
        out.append((resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()))
    return out


def read_until_closed(sock: socket.socket, timeout: float = 10.0) -> tuple[bytes, bool]:
    """What the server sends until it closes; the flag says it did close within `timeout`."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return data, False
    return data, True


def read_until(sock: socket.socket, marker: bytes, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def head(method: str, path: str, fields: list[str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def post(body: dict, headers: dict[str, str], extra: list[str] | None = None, framing: str = "length") -> bytes:
    data = json.dumps(body).encode()
    fields = ["Content-Type: application/json", f"Accept: {JSON_SSE}", *[f"{k}: {v}" for k, v in headers.items()]]
    fields += extra or []
    if framing == "chunked":
        half = len(data) // 2
        return head("POST", "/mcp", [*fields, "Transfer-Encoding: chunked"],
                    b"%x\r\n%b\r\n%x\r\n%b\r\n0\r\n\r\n" % (half, data[:half], len(data) - half, data[half:]))
    return head("POST", "/mcp", [*fields, f"Content-Length: {len(data)}"], data)


def store(key: str, msg_id: int) -> bytes:
    body, hdrs = modern("tools/call", {"name": "qe_memory_store", "arguments": {"key": key, "value": msg_id}}, msg_id)
    return post(body, hdrs)


def retrieve(srv: ServerProcess, key: str) -> bool:
    body, hdrs = modern("tools/call", {"name": "qe_memory_retrieve", "arguments": {"key": key}})
    status, _, raw = request(srv, "POST", body=body, headers=hdrs)
    assert status == 200, raw
    return bool(json.loads(raw)["result"]["structuredContent"]["found"])


# ---- item 7: a refusal in a pipeline comes after the answers to the requests before it ----------------------

def refused_requests(max_header_bytes: int) -> dict[str, tuple[bytes, int, bytes]]:
    """Requests a server with `max_header_bytes` and the default body limit refuses: name -> (bytes, status, a
    phrase of the answer). Shared with bench/fuzz_bench.py."""
    return {
        "body over maxBodyBytes": (
            head("POST", "/mcp", ["Content-Type: application/json", "Content-Length: 9999999"]), 413, b"maxBodyBytes"),
        "headers over maxHeaderBytes": (
            head("GET", "/healthz", ["X-Padding: " + "p" * (max_header_bytes + 100)]), 431, b"maxHeaderBytes"),
        "too many header fields": (
            head("GET", "/healthz", [f"X-F{n}: v" for n in range(150)]), 431, b"header fields"),
        "bad request line": (b"\x00NOT HTTP\r\n\r\n", 400, b"malformed HTTP request"),
        "unknown expectation": (
            head("POST", "/mcp", ["Content-Type: application/json", "Content-Length: 2", "Expect: miracles"], b"{}"),
            417, b"100-continue"),
    }


REFUSED = refused_requests(MAX_HEADER_BYTES)


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_requests_pipelined_before_a_refused_one_are_answered_first(limited: ServerProcess, case: str) -> None:
    bad, status, says = REFUSED[case]
    keys = [f"pipelined/{case}/{n}" for n in range(3)]
    payload = b"".join(store(key, n) for n, key in enumerate(keys)) + bad
    with socket.create_connection((limited.host, int(limited.port)), timeout=10) as sock:
        sock.sendall(payload)
        data, closed = read_until_closed(sock)
    got = responses(data)
    assert [r[0] for r in got] == [200, 200, 200, status], data[:2000]
    assert [json.loads(r[2])["id"] for r in got[:3]] == [0, 1, 2]  # in order
    assert says in got[3][2] and got[3][1]["connection"] == "close"
    assert closed, "the connection stays open after the refusal"
    assert all(retrieve(limited, key) for key in keys)


def test_a_refusal_after_a_stream_of_requests_waits_for_their_answers(limited: ServerProcess) -> None:
    # More requests than are parsed before reading pauses (32), then a refusal: all 40 answered, then the 413.
    payload = b"".join(store(f"many/{n}", n) for n in range(40)) + REFUSED["body over maxBodyBytes"][0]
    with socket.create_connection((limited.host, int(limited.port)), timeout=10) as sock:
        sock.sendall(payload)
        data, closed = read_until_closed(sock)
    got = responses(data)
    assert [r[0] for r in got] == [200] * 40 + [413] and closed
    assert [json.loads(r[2])["id"] for r in got[:40]] == list(range(40))


def test_a_connection_over_the_limit_gets_its_503_even_when_garbage_follows(tmp_path: Path) -> None:
    srv = start_server(tmp_path, {"server": {"maxConnections": 2}})
    held = [socket.create_connection((srv.host, int(srv.port)), timeout=10) for _ in range(2)]
    try:
        time.sleep(0.2)
        with socket.create_connection((srv.host, int(srv.port)), timeout=10) as extra:
            extra.sendall(head("GET", "/healthz", []) + b"\x00garbage\r\n\r\n")
            data, closed = read_until_closed(extra)
        got = responses(data)
        assert [r[0] for r in got] == [503] and closed, data
        assert b"server.maxConnections" in got[0][2] and got[0][1]["retry-after"] == "1"
        # Nor is it told to go on with a body it will not be served for.
        with socket.create_connection((srv.host, int(srv.port)), timeout=10) as extra:
            extra.sendall(head("POST", "/mcp", ["Content-Length: 10", "Expect: 100-continue"]))
            data, closed = read_until_closed(extra)
        assert data.startswith(b"HTTP/1.1 503") and b"100 Continue" not in data and closed
    finally:
        for sock in held:
            sock.close()
        srv.stop()


def test_a_half_sent_request_behind_an_answered_one_keeps_its_header_timeout(limited: ServerProcess) -> None:
    # The keep-alive timeout (30 s here) must not replace the 3 s a begun request has to finish.
    with socket.create_connection((limited.host, int(limited.port)), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(head("GET", "/healthz", []) + b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        data, closed = read_until_closed(sock, timeout=8)
    got = responses(data)
    assert [r[0] for r in got] == [200, 408] and closed and time.monotonic() - started < 6


# ---- item 8: an upgrade offer is ignored, its body served, and the connection stays HTTP/1.1 ----------------

H2C_OFFER = ["Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA"]


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_an_h2c_upgrade_offer_with_a_body_is_served_as_http11(server: ServerProcess, framing: str) -> None:
    # What `curl --http2 --data-binary @req.json http://127.0.0.1:P/mcp` sends, then a second request behind it.
    body, hdrs = modern("tools/call", {"name": "qe_memory_store", "arguments": {"key": f"h2c/{framing}", "value": 1}})
    listing, list_hdrs = modern("tools/list", msg_id=2)
    payload = post(body, hdrs, ["User-Agent: curl/7.88.1", *H2C_OFFER], framing) + post(listing, list_hdrs)
    with socket.create_connection((server.host, int(server.port)), timeout=10) as sock:
        sock.sendall(payload)
        data = read_until(sock, b'"tools"')
        got = responses(data)
        assert [r[0] for r in got] == [200, 200], data[:1000]
        assert json.loads(got[0][2])["result"]["structuredContent"]["key"] == f"h2c/{framing}"
        assert json.loads(got[1][2])["id"] == 2
        # Still HTTP/1.1 and open: a third request on the same connection is answered.
        sock.sendall(head("GET", "/healthz", []))
        assert responses(read_until(sock, b'"ok"'))[0][0] == 200


def test_a_websocket_offer_is_answered_and_the_connection_goes_on(server: ServerProcess) -> None:
    offer = head("GET", "/healthz", ["Connection: Upgrade", "Upgrade: websocket"])
    with socket.create_connection((server.host, int(server.port)), timeout=10) as sock:
        sock.sendall(offer + head("GET", "/readyz", []))
        got = responses(read_until(sock, b'"ready"'))
    assert [(r[0], r[2]) for r in got] == [(200, b'{"status":"ok"}'), (200, b'{"status":"ready"}')]


def test_connect_is_refused_with_a_reason(server: ServerProcess) -> None:
    with socket.create_connection((server.host, int(server.port)), timeout=10) as sock:
        sock.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        data, closed = read_until_closed(sock)
    got = responses(data)
    assert [r[0] for r in got] == [400] and b"not a proxy" in got[0][2] and closed


# ---- item 10a: Expect: 100-continue --------------------------------------------------------------------------


def _expecting(msg_id: int, key: str) -> tuple[bytes, bytes]:
    body, hdrs = modern("tools/call", {"name": "qe_memory_store", "arguments": {"key": key, "value": msg_id}}, msg_id)
    data = json.dumps(body).encode()
    fields = ["Content-Type: application/json", f"Accept: {JSON_SSE}", f"Content-Length: {len(data)}",
              "Expect: 100-continue", *[f"{k}: {v}" for k, v in hdrs.items()]]
    return head("POST", "/mcp", fields), data


def test_expect_100_continue_is_answered_before_the_body_is_sent(server: ServerProcess) -> None:
    first, body = _expecting(1, "expect/alone")
    with socket.create_connection((server.host, int(server.port)), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(first)
        interim = read_until(sock, b"\r\n\r\n", timeout=2)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        assert time.monotonic() - started < 0.9  # curl waits 1 s for it before sending anyway
        sock.sendall(body)
        got = responses(read_until(sock, b'"expect/alone"'))
    assert [r[0] for r in got] == [200]


def test_100_continue_waits_for_the_answers_before_it(server: ServerProcess) -> None:
    second, body = _expecting(2, "expect/second")
    with socket.create_connection((server.host, int(server.port)), timeout=10) as sock:
        sock.sendall(store("expect/first", 1) + second)
        data = read_until(sock, b"HTTP/1.1 100 Continue\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        got = responses(data + read_until(sock, b'"expect/second"'))
    assert [json.loads(r[2])["id"] for r in got] == [1, 2]


def test_no_100_continue_for_a_request_that_is_refused_anyway(limited: ServerProcess) -> None:
    fields = ["Content-Type: application/json", f"Content-Length: {MAX_BODY_BYTES + 1}", "Expect: 100-continue"]
    with socket.create_connection((limited.host, int(limited.port)), timeout=10) as sock:
        sock.sendall(head("POST", "/mcp", fields))
        data, closed = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 413") and b"100 Continue" not in data and closed


def test_no_100_continue_to_http10(server: ServerProcess) -> None:
    first, body = _expecting(3, "expect/http10")
    with socket.create_connection((server.host, int(server.port)), timeout=10) as sock:
        sock.sendall(first.replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1))
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(4096)  # an HTTP/1.0 client cannot take a 1xx: nothing until the body is sent
        sock.sendall(body)
        data, closed = read_until_closed(sock)
    assert [r[0] for r in responses(data)] == [200] and closed


def test_no_100_continue_without_a_body(server: ServerProcess) -> None:
    with socket.create_connection((server.host, int(server.port)), timeout=10) as sock:
        sock.sendall(head("GET", "/healthz", ["Expect: 100-continue"]))
        data = read_until(sock, b'"ok"')
    assert data.startswith(b"HTTP/1.1 200 OK")


# ---- item 10b: the whole header section is bounded, and so is the number of fields ---------------------------


def test_65000_empty_headers_are_refused_at_once(server: ServerProcess) -> None:
    flood = head("GET", "/healthz", ["X:"] * 65_000)  # 260 KB, each field one byte of name
    started = time.monotonic()
    with socket.create_connection((server.host, int(server.port)), timeout=10) as sock:
        try:
            sock.sendall(flood)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before all of it was read
        data, closed = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 431") and b"more than 100 header fields" in data and closed
    assert time.monotonic() - started < 2


def test_floods_do_not_hold_up_other_clients(server: ServerProcess) -> None:
    # The measurement: 8 such requests at once delayed /healthz by 2.2 s.
    flood = head("POST", "/mcp", ["X:"] * 65_000)
    errors: list[BaseException] = []

    def send() -> None:
        try:
            with socket.create_connection((server.host, int(server.port)), timeout=10) as sock:
                try:
                    sock.sendall(flood)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                data, _ = read_until_closed(sock)
                assert data.startswith(b"HTTP/1.1 431"), data[:200]
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    latencies = []
    for _ in range(10):
        started = time.monotonic()
        assert request(server, "GET", "/healthz")[0] == 200
        latencies.append(time.monotonic() - started)
    for thread in threads:
        thread.join(15)
    assert not errors, errors
    assert max(latencies) < 0.5, latencies


def test_header_lines_count_with_their_separators(limited: ServerProcess) -> None:
    # 90 fields of 42 bytes name + value: 3,780 bytes without separators (under 4,096), 4,140 with them.
    fields = [f"X-Pad-{n:02d}: " + "v" * 34 for n in range(90)]
    assert len("\r\n".join(fields)) > MAX_HEADER_BYTES
    data, closed, _ = _send_all(limited, head("GET", "/healthz", fields))
    assert data.startswith(b"HTTP/1.1 431") and b"server.maxHeaderBytes" in data and closed


def test_whitespace_padding_counts_against_the_limit(limited: ServerProcess) -> None:
    # The parser drops the spaces before a value without reporting them: every byte read must count all the same.
    start = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad:"
    data, closed, _ = _send_all(limited, start, [b" " * 1024] * 200, b"v\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 431") and b"server.maxHeaderBytes" in data and closed


def test_an_endless_header_value_is_cut_off_near_the_limit(limited: ServerProcess) -> None:
    # httptools gathers a value until its line ends; the server must not wait for that to refuse it.
    start = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: "
    data, closed, sent = _send_all(limited, start, [b"a" * 1024] * 4096, b"\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 431") and closed
    assert sent < 1 << 20, f"answered only after {sent} bytes of a 4 MiB value"


def _send_all(
    srv: ServerProcess, first: bytes, pieces: list[bytes] | None = None, last: bytes = b""
) -> tuple[bytes, bool, int]:
    """Send `first`, then each piece as its own write (with a pause now and then, so the server reads them
    separately), then `last`; stop early when the server has answered. Returns the answer, whether the server
    closed, and how many bytes were sent."""
    sent = 0
    with socket.create_connection((srv.host, int(srv.port)), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.sendall(first)
            for n, piece in enumerate(pieces or []):
                sock.sendall(piece)
                sent += len(piece)
                if n % 16 == 15:
                    time.sleep(0.002)
                    sock.setblocking(False)
                    try:
                        peek = sock.recv(1, socket.MSG_PEEK)
                    except BlockingIOError:
                        peek = None
                    finally:
                        sock.setblocking(True)
                    if peek is not None:
                        break  # answered (or closed): the rest would not be read
            else:
                sock.sendall(last)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return (*read_until_closed(sock), sent)
