"""Fuzzing the HTTP path and the JSON-RPC dispatcher: hostile bytes never crash or hang the server, never
leak a traceback, and every answer is valid HTTP/1.1 (and a JSON-RPC 2.0 response on /mcp).

The generators, the raw-socket client and the response checks here are shared with bench/fuzz_bench.py,
which runs the same fuzzing for minutes instead of seconds.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import logging
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools
import msgspec
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.conftest import ServerProcess, start_server, stdio_command, write_config

MODERN = "2026-07-28"
HANDSHAKE = "2025-11-25"
JSON_SSE = "application/json, text/event-stream"
# Stands for the real Mcp-Session-Id of the fuzzing client's handshake-era session; filled in at send time.
SESSION = "<session>"
# Tools safe to run with whatever arguments the fuzzer invents (no agents spawned, no files read).
SAFE_TOOLS = ("qe_memory_store", "qe_memory_retrieve", "qe_memory_search", "qe_fleet_status", "qe_learn_status")
META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CAPS = "io.modelcontextprotocol/clientCapabilities"
META_INFO = "io.modelcontextprotocol/clientInfo"
META_LEVEL = "io.modelcontextprotocol/logLevel"
# What a leaked Python error looks like in a response body.
LEAK = re.compile(
    rb"Traceback \(most recent call last\)|File \"[^\"]*\", line \d+|\b[A-Z]\w*(?:Error|Exception)\(['\"]"
    rb"|<[A-Za-z_][\w.]* object at 0x[0-9a-fA-F]+>"
)
HANG = "no answer and no close within the time limit (a hang)"
EXAMPLES = {"raw": 300, "modern": 250, "legacy": 150, "dispatcher": 1500}


# ---- what a valid answer is --------------------------------------------------------------------------------


@dataclass
class HttpReply:
    status: int
    version: str
    headers: dict[bytes, list[bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.get(name)
        return values[0] if values else None


class ResponseReader:
    """A strict HTTP/1.1 response parser (llhttp through httptools) collecting whole responses."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.responses: list[HttpReply] = []
        self.problems: list[str] = []
        self.in_message = False
        self._headers: dict[bytes, list[bytes]] = {}
        self._body: list[bytes] = []

    def feed(self, data: bytes) -> None:
        if self.problems:
            return  # the stream is already broken; later bytes mean nothing
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.problems.append(f"invalid HTTP response bytes: {exc}")

    def on_message_begin(self) -> None:
        self.in_message = True
        self._headers = {}
        self._body = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.setdefault(name.lower(), []).append(value)

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        lengths = self._headers.get(b"content-length", [])
        chunked = self._headers.get(b"transfer-encoding", []) == [b"chunked"]
        if self._parser.get_http_version() != "1.1":
            self.problems.append(f"response version HTTP/{self._parser.get_http_version()}, not HTTP/1.1")
        if status < 200 or status in (204, 304):
            if lengths or chunked:
                self.problems.append(f"a {status} response carries Content-Length/Transfer-Encoding")
        elif len(lengths) + chunked != 1 or (lengths and not lengths[0].isdigit()):
            self.problems.append(f"response {status} is not framed by exactly one Content-Length or chunked")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        version = self._parser.get_http_version()
        reply = HttpReply(self._parser.get_status_code(), version, self._headers, b"".join(self._body))
        self.responses.append(reply)


def rpc_problem(obj: Any, sent_id: Any = None) -> str | None:
    """Why `obj` is not a JSON-RPC 2.0 response object (None when it is one); `sent_id` is the request id."""
    if not isinstance(obj, dict):
        return f"JSON-RPC response is not an object: {obj!r:.80}"
    if obj.get("jsonrpc") != "2.0" or "id" not in obj:
        return f"JSON-RPC response lacks jsonrpc 2.0 or id: {obj!r:.200}"
    extra = set(obj) - {"jsonrpc", "id", "result", "error"}
    if extra or ("result" in obj) == ("error" in obj):
        return f"JSON-RPC response needs exactly one of result/error and nothing else: {sorted(obj)}"
    rid = obj["id"]
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, str | int)):
        return f"JSON-RPC response id {rid!r:.80} is not a string, integer or null"
    if rid is not None and sent_id is not None and rid != sent_id:
        return f"JSON-RPC response id {rid!r:.80} answers a request with id {sent_id!r:.80}"
    if "result" in obj:
        return None if isinstance(obj["result"], dict) else "an MCP result must be an object"
    error = obj["error"]
    if not isinstance(error, dict) or set(error) - {"code", "message", "data"}:
        return f"JSON-RPC error is not {{code, message, data?}}: {error!r:.200}"
    code, message = error.get("code"), error.get("message")
    if isinstance(code, bool) or not isinstance(code, int) or not isinstance(message, str):
        return f"JSON-RPC error needs an integer code and a string message: {error!r:.200}"
    if code == -32603:
        return f"internal error (a server bug; see its log): {message}"
    return None


def notification_problem(obj: Any) -> str | None:
    if not isinstance(obj, dict) or obj.get("jsonrpc") != "2.0" or not isinstance(obj.get("method"), str):
        return f"in-band notification is not a JSON-RPC notification: {obj!r:.200}"
    return None if "id" not in obj else "an in-band notification carries an id"


def sse_messages(body: bytes) -> tuple[list[Any], list[str]]:
    """The JSON messages of a server-sent event stream, and what is wrong with its framing."""
    messages: list[Any] = []
    problems: list[str] = []
    for event in body.split(b"\n\n"):
        data = [line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
        if data:
            try:
                messages.append(json.loads(b"\n".join(data)))
            except ValueError:
                problems.append(f"SSE event data is not JSON: {event[:120]!r}")
    return messages, problems


def reply_problems(reply: HttpReply, on_mcp: bool, sent_id: Any = None) -> list[str]:
    """What is wrong with one response; `on_mcp` says the request was surely a well-framed POST /mcp."""
    problems: list[str] = []
    if LEAK.search(reply.body):
        problems.append(f"response leaks a Python error: {reply.body[:300]!r}")
    if reply.status >= 500 and reply.status not in (503,):
        problems.append(f"server error {reply.status}: {reply.body[:200]!r}")
    ctype = (reply.header(b"content-type") or b"").split(b";")[0].strip()
    if ctype == b"text/event-stream":
        messages, problems_ = sse_messages(reply.body)
        problems += problems_
        if on_mcp and not messages:
            problems.append("an event stream answered a POST without any message")
        for msg in messages[:-1]:
            if (problem := notification_problem(msg)) is not None:
                problems.append(problem)
        if messages and (problem := rpc_problem(messages[-1], sent_id)) is not None:
            problems.append(problem)
        return problems
    if not reply.body:
        if on_mcp and reply.status not in (202, 204):
            problems.append(f"empty {reply.status} answer to a POST /mcp")
        return problems
    if ctype != b"application/json":
        return problems
    try:
        value = msgspec.json.decode(reply.body)
    except msgspec.DecodeError:
        return [*problems, f"application/json body is not JSON: {reply.body[:200]!r}"]
    if on_mcp or (isinstance(value, dict) and "jsonrpc" in value):
        if (problem := rpc_problem(value, sent_id)) is not None:
            problems.append(problem)
    return problems


# ---- the raw-socket client ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one connection saw."""

    responses: list[HttpReply] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    closed_by_server: bool = False
    reset: bool = False
    hang: bool = False
    elapsed: float = 0.0


def exchange(
    host: str,
    port: int,
    payload: bytes,
    *,
    hang_after_s: float = 5.0,
    first_byte_s: float = 0.05,
    quiet_s: float = 0.03,
) -> Outcome:
    """Send `payload` on a fresh connection and read every answer.

    Reads until the server closes. When the server goes quiet with no response half-read, the client
    half-closes (a real client that sent everything it has) and the server must then close too. A
    response left half-written, or a connection still open `hang_after_s` after sending, is a hang.
    """
    out = Outcome()
    reader = ResponseReader()
    started = time.monotonic()
    end = started + hang_after_s
    with socket.create_connection((host, port), timeout=hang_after_s) as sock:
        try:
            sock.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading and closed early (after a 4xx); its answer may still be there
        except TimeoutError:
            out.hang = True
        half_closed = False
        while not out.hang:
            left = end - time.monotonic()
            if left <= 0:
                out.hang = True
                break
            patient = half_closed or reader.in_message
            sock.settimeout(left if patient else min(left, quiet_s if reader.responses else first_byte_s))
            try:
                data = sock.recv(65536)
            except TimeoutError:
                if not patient:
                    try:
                        sock.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    half_closed = True
                continue
            except ConnectionResetError:
                out.reset = True
                break
            if not data:
                out.closed_by_server = not half_closed
                break
            reader.feed(data)
    out.elapsed = time.monotonic() - started
    out.responses = reader.responses
    out.problems = reader.problems
    if reader.in_message and not reader.problems:
        out.problems.append("connection ended in the middle of a response")
    if out.hang:
        out.problems.append(HANG)
    return out


def post_bytes(path: str, body: bytes, headers: list[tuple[str, str]]) -> bytes:
    """One well-framed HTTP/1.1 POST that asks the server to close after answering."""
    head = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        f"Accept: {JSON_SSE}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    head += [f"{k}: {v}" for k, v in headers]
    return "\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + body


def run_case(address: tuple[str, int], session: str, kind: str, data: Any) -> tuple[bytes, Outcome, list[str]]:
    """Send one generated case (`kind` "raw", or an era with what rpc_bodies drew) and judge every answer.

    Returns what was sent, what came back, and every problem found (HANG among them for a hang).
    """
    if kind == "raw":
        payload, sent_id, on_mcp = data, None, False
    else:
        body, headers, sent_id = data
        payload = post_bytes("/mcp", body, [(k, session if v == SESSION else v) for k, v in headers])
        on_mcp = True
    out = exchange(*address, payload)
    problems = list(out.problems)
    if on_mcp and len(out.responses) != 1 and not out.hang:
        problems.append(f"{len(out.responses)} responses to one well-framed request")
    for reply in out.responses:
        problems += reply_problems(reply, on_mcp, sent_id)
    return payload, out, problems


class Control:
    """A well-behaved client on its own keep-alive connection: proves the server still serves others."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._conn: http.client.HTTPConnection | None = None

    def check(self) -> bool:
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/list",
                "params": {
                    "_meta": {META_VERSION: MODERN, META_CAPS: {}, META_INFO: {"name": "control", "version": "1"}}
                },
            }
        )
        headers = {
            "Content-Type": "application/json",
            "Accept": JSON_SSE,
            "MCP-Protocol-Version": MODERN,
            "Mcp-Method": "tools/list",
        }
        for attempt in range(2):  # the keep-alive connection may have idled out: one reconnect
            started = time.perf_counter()
            try:
                if self._conn is None:
                    self._conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
                self._conn.request("POST", "/mcp", body=body, headers=headers)
                resp = self._conn.getresponse()
                raw = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if attempt:
                    self.failures.append(f"control client failed: {exc!r}")
                    return False
                continue
            self.latencies.append(time.perf_counter() - started)
            if resp.status != 200 or len(json.loads(raw)["result"]["tools"]) != 14:
                self.failures.append(f"control client got {resp.status}: {raw[:200]!r}")
                return False
            return True
        return False

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# ---- generators --------------------------------------------------------------------------------------------

_text = st.text(st.characters(codec="utf-8"), max_size=12) | st.sampled_from(
    ["", "\x00", "../../etc/passwd", "\r\n", "é", "\ud800", "🙂", "a" * 300, "null", "2.0", "__proto__", "$ref"]
)
_numbers = (
    st.integers(-(2**70), 2**70)
    | st.sampled_from([0, -1, 2**63, -(2**63) - 1, 10**30])
    | st.floats(allow_nan=False, allow_infinity=False)
)
json_values = st.recursive(
    st.none() | st.booleans() | _numbers | _text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
    max_leaves=12,
)


_keys = st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=12)
_SAFE_ARGS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "qe_memory_store": st.fixed_dictionaries(
        {"key": _keys, "value": json_values},
        optional={
            "namespace": st.sampled_from(["default", "fuzz"]),
            "ttlSeconds": st.integers(1, 3600),
            "tags": st.lists(_keys, max_size=3),
            "metadata": json_values,
        },
    ),
    "qe_memory_retrieve": st.fixed_dictionaries(
        {"key": _keys}, optional={"namespace": st.sampled_from(["default", "fuzz"])}
    ),
    "qe_memory_search": st.fixed_dictionaries(
        {},
        optional={
            "query": st.sampled_from(["fuzz", '"unbalanced', "NEAR(a b", "*", "a OR"]),
            "pattern": st.sampled_from(["*", "[", "?" * 50, "k*"]),
            "prefix": _keys,
            "namespace": st.sampled_from(["default", "fuzz"]),
            "tags": st.lists(_keys, max_size=2),
            "limit": st.integers(1, 500),
            "offset": st.integers(0, 10),
        },
    ),
    "qe_fleet_status": st.fixed_dictionaries({}, optional={"verbose": st.booleans()}),
    "qe_learn_status": st.fixed_dictionaries({}, optional={"domain": _keys, "language": st.just("python")}),
}
_MODERN_METHODS = ("tools/call", "tools/call", "tools/list", "server/discover", "ping", "resources/list")
_LEGACY_METHODS = (
    "tools/call",
    "tools/call",
    "tools/list",
    "ping",
    "initialize",
    "logging/setLevel",
    "notifications/initialized",
    "notifications/cancelled",
    "prompts/list",
)
# Wrong values to put anywhere in a message: every JSON type, and the values that break lazy code.
_wrong = st.sampled_from([None, True, 0, -1, 2**64, 1.5, "", "x", [], {}, [1], {"a": 1}, "2.0", "\x00"]) | json_values


def _rarely(draw: st.DrawFn, one_in: int) -> bool:
    # Hypothesis favours 0 and the bounds of a range, so the rare branch sits in its middle.
    return draw(st.integers(0, one_in - 1)) == one_in // 2


@st.composite
def _valid_message(draw: st.DrawFn, era: str) -> dict[str, Any]:
    method = draw(st.sampled_from(_MODERN_METHODS if era == "modern" else _LEGACY_METHODS))
    params: dict[str, Any] = {}
    if method == "tools/call":
        params["name"] = draw(st.sampled_from(SAFE_TOOLS))
        params["arguments"] = draw(_SAFE_ARGS[params["name"]])
    elif method == "tools/list" and draw(st.booleans()):
        params["cursor"] = draw(st.sampled_from(["dG9vbHM6MQ==", "dG9vbHM6LTE=", "not-a-cursor"]))
    elif method == "initialize":
        params = {"protocolVersion": draw(st.sampled_from(["2024-11-05", HANDSHAKE])), "capabilities": {}}
    elif method == "logging/setLevel":
        params["level"] = draw(st.sampled_from(["debug", "error", "emergency"]))
    elif method == "notifications/cancelled":
        params["requestId"] = draw(st.integers(0, 3))
    if era == "modern":
        meta: dict[str, Any] = {META_VERSION: MODERN, META_CAPS: {}, META_INFO: {"name": "fuzz", "version": "1"}}
        if draw(st.booleans()):
            meta[META_LEVEL] = draw(st.sampled_from(["debug", "info", "emergency"]))
        if draw(st.booleans()):
            meta["progressToken"] = draw(st.integers(0, 9) | _keys)
        params["_meta"] = meta
    # Params first: hypothesis favours the first of a choice, and most of what can go wrong is in there.
    message: dict[str, Any] = {"params": params, "method": method, "jsonrpc": "2.0"}
    if not method.startswith("notifications/"):
        message["id"] = draw(st.integers(0, 2**31) | _keys)
    return message


def _spots(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a message a wrong can go: each dict key and list item, the root excluded."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield (*path, key)
        yield from _spots(child, (*path, key))


def _damage(value: Any, path: tuple[Any, ...], action: str, wrong: Any) -> Any:
    """A copy of `value` with the spot at `path` deleted, replaced by `wrong`, or given a stray sibling."""
    head, rest = path[0], path[1:]
    copy = dict(value) if isinstance(value, dict) else list(value)
    if rest:
        copy[head] = _damage(copy[head], rest, action, wrong)
    elif action == "delete":
        del copy[head]
    elif action == "extra" and isinstance(copy, dict):
        copy["unexpected"] = wrong
    else:
        copy[head] = wrong
    return copy


@st.composite
def rpc_messages(draw: st.DrawFn, era: str) -> Any:
    """A JSON-RPC message (as a Python value): a valid one for the era with up to three things wrong."""
    if _rarely(draw, 15):
        return draw(json_values)  # anything at all
    message: Any = draw(_valid_message(era))
    for _ in range(draw(st.integers(0, 3))):
        spots = list(_spots(message))
        if not spots:
            break
        path = draw(st.sampled_from(spots))
        message = _damage(message, path, draw(st.sampled_from(["replace", "replace", "delete", "extra"])), draw(_wrong))
    return message


_MARK = "\ue000fuzz-mark\ue000"
# Byte-level tricks on an encoded message: what json.dumps never produces.
_TRICKS: dict[str, bytes] = {
    "invalid utf-8": b'"\xff\xfe\xc0\xaf"',
    "overlong utf-8": b'"\xc0\x80"',
    "lone surrogate": b'"\\ud800"',
    "huge integer": b"9" * 5000,
    "huge exponent": b"1e999999",
    "tiny exponent": b"-0.0e-999999",
    "NaN": b"NaN",
    "Infinity": b"-Infinity",
    "deep at the limit": b"[" * 60 + b"1" + b"]" * 60,
    "deep past the limit": b'{"a":' * 40 + b"[" * 40 + b"]" * 40 + b"}" * 40,
    "very deep": b"[" * 5000 + b"]" * 5000,
    "unclosed": b"[[[{",
    "bare word": b"undefined",
}


def _plant(draw: st.DrawFn, value: Any) -> Any:
    """`value` with one leaf (or a new key) replaced by the marker a byte-level trick is spliced into."""
    if isinstance(value, dict):
        keys = list(value)
        key = draw(st.sampled_from([*keys, "extra"])) if keys else "extra"
        return {**value, key: _plant(draw, value[key]) if key in value and draw(st.booleans()) else _MARK}
    if isinstance(value, list) and value:
        i = draw(st.integers(0, len(value) - 1))
        return [*value[:i], _plant(draw, value[i]), *value[i + 1 :]]
    return _MARK


@st.composite
def rpc_bodies(draw: st.DrawFn, era: str) -> tuple[bytes, list[tuple[str, str]], Any]:
    """(body, HTTP headers, the request id the answer must carry or None) for one POST /mcp.

    Headers mirror the body (routing headers in the 2026-07-28 era, the session in the handshake era)
    so most messages get past the header checks, and are themselves wrong now and then.
    """
    message = draw(rpc_messages(era))
    form = draw(st.sampled_from(["plain"] * 4 + ["trick"] * 3 + ["duplicate key", "garbage", "empty"]))
    if form == "trick":
        trick = draw(st.sampled_from(sorted(_TRICKS)))
        body = json.dumps(_plant(draw, message)).encode().replace(json.dumps(_MARK).encode(), _TRICKS[trick], 1)
    else:
        body = json.dumps(message).encode()
        if form == "duplicate key" and body.startswith(b"{") and len(body) > 2:
            key = draw(st.sampled_from(["id", "method", "jsonrpc", "params"]))
            body = body[:-1] + b',"%b":%b}' % (key.encode(), json.dumps(draw(json_values)).encode())
        elif form == "garbage":
            body = (
                draw(st.sampled_from([b"\xef\xbb\xbf", b"", b" \t\n"]))
                + body
                + draw(st.sampled_from([b"", b"x", b"}", b"\x00", b"{}"]))
            )
        elif form == "empty":
            body = draw(st.sampled_from([b"", b" ", b"null", b"[]", b"{}", b"\x00"]))
    return body, draw(_headers_for(message, era)), request_id(body)


def request_id(body: bytes) -> Any:
    """The id a request body carries as the server reads it (the last of duplicated keys), else None."""
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError):
        return None
    sent = decoded.get("id") if isinstance(decoded, dict) else None
    return sent if isinstance(sent, str | int) and not isinstance(sent, bool) else None


def _header_value(draw: st.DrawFn, value: Any) -> str | None:
    """How a client would put `value` in a header: as is, base64-wrapped when it must be, or wrongly."""
    if not isinstance(value, str):
        return None
    choice = draw(st.integers(0, 19))  # 10-12 are the odd ones out (see _rarely)
    if choice == 10:
        return draw(st.sampled_from(["", "x", "=?base64?!!!?=", "=?base64?", MODERN]))
    if choice == 11 or not value.isascii() or any(c < " " or c == "\x7f" for c in value):
        return "=?base64?" + base64.b64encode(value.encode("utf-8", "surrogatepass")).decode() + "?="
    return f" {value} " if choice == 12 else value


@st.composite
def _headers_for(draw: st.DrawFn, message: Any, era: str) -> list[tuple[str, str]]:
    found = message.get("params") if isinstance(message, dict) else None
    params: dict[str, Any] = found if isinstance(found, dict) else {}
    meta: dict[str, Any] = params["_meta"] if isinstance(params.get("_meta"), dict) else {}
    headers: list[tuple[str, str]] = []
    if era == "modern":
        candidates = [
            ("MCP-Protocol-Version", meta.get(META_VERSION, MODERN)),
            ("Mcp-Method", message.get("method") if isinstance(message, dict) else None),
            ("Mcp-Name", params.get("name")),
        ]
        arguments = params.get("arguments")
        if isinstance(arguments, dict):
            candidates.append(("Mcp-Param-Namespace", arguments.get("namespace")))
    else:
        # No base64 wrapping before 2026-07-28: these go out verbatim.
        candidates = [
            ("MCP-Protocol-Version", draw(st.sampled_from([HANDSHAKE, "2024-11-05", None, "1999-01-01", " "]))),
            ("Mcp-Session-Id", draw(st.sampled_from([SESSION, SESSION, SESSION, "no-such-session", "", None]))),
        ]
    for name, value in candidates:
        rendered = _header_value(draw, value) if era == "modern" else value
        if rendered is not None:
            headers.append((name, rendered))
            if _rarely(draw, 30):
                headers.append((name, rendered))  # a duplicated routing header
    if _rarely(draw, 10):
        headers.append(draw(st.sampled_from([("Origin", "http://127.0.0.1"), ("Accept", "application/json")])))
    return headers


# Raw HTTP: request templates, structural damage, then byte-level damage.
_MODERN_LIST = json.dumps(
    {"jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": {"_meta": {META_VERSION: MODERN, META_CAPS: {}}}}
).encode()
_MODERN_CALL = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 8,
        "method": "tools/call",
        "params": {
            "name": "qe_memory_retrieve",
            "arguments": {"key": "k"},
            "_meta": {META_VERSION: MODERN, META_CAPS: {}},
        },
    }
).encode()
_INITIALIZE = json.dumps(
    {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": HANDSHAKE, "capabilities": {}}}
).encode()
_TEMPLATES: list[tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]] = [
    (b"POST", b"/mcp", [(b"MCP-Protocol-Version", b"2026-07-28"), (b"Mcp-Method", b"tools/list")], _MODERN_LIST),
    (
        b"POST",
        b"/mcp",
        [
            (b"MCP-Protocol-Version", b"2026-07-28"),
            (b"Mcp-Method", b"tools/call"),
            (b"Mcp-Name", b"qe_memory_retrieve"),
        ],
        _MODERN_CALL,
    ),
    (b"POST", b"/mcp", [], _INITIALIZE),
    (b"POST", b"/mcp", [(b"Mcp-Session-Id", b"bogus"), (b"MCP-Protocol-Version", b"2025-11-25")], b'{"jsonrpc":"2.0"}'),
    (b"GET", b"/healthz", [], b""),
    (b"GET", b"/readyz", [], b""),
    (b"GET", b"/metrics", [], b""),
    (b"GET", b"/dashboard.json", [], b""),
    (b"GET", b"/mcp", [(b"Accept", b"text/event-stream")], b""),
    (b"DELETE", b"/mcp", [(b"Mcp-Session-Id", b"bogus")], b""),
    (b"OPTIONS", b"/mcp", [], b""),
    (b"GET", b"/nope", [], b""),
]
_BAD_METHODS = [b"GET", b"PUT", b"PATCH", b"CONNECT", b"TRACE", b"post", b"G\x00T", b"", b"POSTPOSTPOST", b"\xc3\x9c"]
_BAD_TARGETS = [
    b"*",
    b"http://127.0.0.1/mcp",
    b"/mcp?x=1&x=2",
    b"/mcp#frag",
    b"//mcp",
    b"/../../etc/passwd",
    b"/%00",
    b"/mcp%2f..",
    b"/\xff\xfe",
    b"/mcp /mcp",
    b"",
    b"/" + b"a" * 70_000,
]
_BAD_VERSIONS = [b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"http/1.1", b"HTTP/1.1 x", b"", b"HTTP/11"]
_BAD_HEADERS = [
    (b"Host", b"127.0.0.1"),
    (b"Host", b"evil.example"),
    (b"Host", b""),
    (b"Bad Name", b"x"),
    (b"", b"x"),
    (b"X-Nul", b"a\x00b"),
    (b"X-Del", b"\x7f"),
    (b"X-Latin", b"\xff\xfe"),
    (b"X-Bare-CR", b"a\rb"),
    (b"X-Fold", b"a\r\n folded"),
    (b"X-Huge", b"v" * 70_000),
    (b"Connection", b"close"),
    (b"Connection", b"keep-alive, Upgrade"),
    (b"Upgrade", b"websocket"),
    (b"Upgrade", b"h2c"),
    (b"Expect", b"100-continue"),
    (b"Content-Type", b"text/plain"),
    (b"Content-Type", b"application/json; charset=latin-1"),
    (b"Accept", b"text/html"),
    (b"Origin", b"https://evil.example"),
    (b"Origin", b"null"),
    (b"Authorization", b"Bearer " + b"A" * 40),
    (b"Authorization", b"Basic \x00\xff"),
    (b"MCP-Protocol-Version", b"=?base64?!!?="),
    (b"Mcp-Method", b"=?base64?dG9vbHMvbGlzdA==?="),
    (b"Mcp-Session-Id", b"\x00"),
]
_FRAMINGS = [
    "length",
    "length",
    "length",
    "chunked",
    "short length",
    "long length",
    "negative length",
    "huge length",
    "junk length",
    "two lengths",
    "length and chunked",
    "odd transfer-encoding",
    "chunked garbage",
    "no length",
]
_TRANSFER_ENCODINGS = [
    b"gzip, chunked",
    b"chunked, gzip",
    b"CHUNKED",
    b" chunked",
    b"xchunked",
    b"identity",
    b"chunked\x00",
]
_BAD_CHUNKS = [
    b"zz\r\n{}\r\n0\r\n\r\n",
    b"-2\r\n{}\r\n0\r\n\r\n",
    b"ffffffffffffffffff\r\n{}\r\n0\r\n\r\n",
    b"2;ext=1\r\n{}\r\n0\r\n\r\n",
    b"2\r\n{}0\r\n\r\n",
    b"2\r\n{}\r\n0\r\nTrailer: x\r\n\r\n",
    b"2\r\n{}\r\n",
    b"2\n{}\n0\n\n",
]


@st.composite
def _raw_request(draw: st.DrawFn) -> bytes:
    method, target, headers, body = draw(st.sampled_from(_TEMPLATES))
    version = b"HTTP/1.1"
    if _rarely(draw, 8):
        method = draw(st.sampled_from(_BAD_METHODS))
    if _rarely(draw, 8):
        target = draw(st.sampled_from(_BAD_TARGETS))
    if _rarely(draw, 10):
        version = draw(st.sampled_from(_BAD_VERSIONS))
    if _rarely(draw, 5):
        body = json.dumps(draw(rpc_messages("modern"))).encode()
    lines = [b" ".join(part for part in (method, target, version) if part or draw(st.booleans()))]
    lines += [b"Host: 127.0.0.1", b"Content-Type: application/json", b"Accept: " + JSON_SSE.encode()]
    lines += [name + b": " + value for name, value in headers]
    lines += [name + b": " + value for name, value in draw(st.lists(st.sampled_from(_BAD_HEADERS), max_size=3))]
    framing = draw(st.sampled_from(_FRAMINGS)) if body or _rarely(draw, 4) else "none"
    payload = body
    if framing == "length":
        lines.append(b"Content-Length: %d" % len(body))
    elif framing == "chunked":
        cut = draw(st.integers(0, len(body)))
        pieces = [p for p in (body[:cut], body[cut:]) if p]
        lines.append(b"Transfer-Encoding: chunked")
        payload = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    elif framing == "short length":
        lines.append(b"Content-Length: %d" % max(0, len(body) - draw(st.integers(1, 20))))
    elif framing == "long length":
        lines.append(b"Content-Length: %d" % (len(body) + draw(st.integers(1, 5000))))
    elif framing == "negative length":
        lines.append(b"Content-Length: -%d" % len(body))
    elif framing == "huge length":
        lines.append(b"Content-Length: " + draw(st.sampled_from([b"99999999999", b"9" * 40, b"18446744073709551617"])))
    elif framing == "junk length":
        lines.append(b"Content-Length: " + draw(st.sampled_from([b"abc", b"1e3", b"+5", b"0x10", b" 5 ", b"", b"5,5"])))
    elif framing == "two lengths":
        lines += [b"Content-Length: %d" % len(body), b"Content-Length: %d" % (len(body) + 1)]
    elif framing == "length and chunked":
        lines += [b"Content-Length: %d" % len(body), b"Transfer-Encoding: chunked"]
    elif framing == "odd transfer-encoding":
        lines.append(b"Transfer-Encoding: " + draw(st.sampled_from(_TRANSFER_ENCODINGS)))
    elif framing == "chunked garbage":
        lines.append(b"Transfer-Encoding: chunked")
        payload = draw(st.sampled_from(_BAD_CHUNKS))
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


_INSERTS = [b"\x00", b"\r", b"\n", b"\r\n", b" ", b":", b"\xff", b"\x7f", b"\r\n\r\n", b"\t", "é".encode(), b"%"]


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    """Bytes for one connection: one to three (pipelined) requests, damaged structurally and byte-wise."""
    payload = b"".join(draw(st.lists(_raw_request(), min_size=1, max_size=3)))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(payload)))
        op = draw(st.sampled_from(["flip", "insert", "delete", "duplicate", "truncate", "random"]))
        if op == "flip" and at < len(payload):
            payload = payload[:at] + bytes([payload[at] ^ draw(st.integers(1, 255))]) + payload[at + 1 :]
        elif op == "insert":
            payload = payload[:at] + draw(st.sampled_from(_INSERTS)) + payload[at:]
        elif op == "delete":
            payload = payload[:at] + payload[at + draw(st.integers(1, 16)) :]
        elif op == "duplicate":
            payload = payload[:at] + payload[at : at + 64] + payload[at:]
        elif op == "truncate":
            payload = payload[:at]
        elif op == "random":
            payload = payload[:at] + draw(st.binary(min_size=1, max_size=32)) + payload[at:]
    return payload


# ---- the server under fuzzing ----------------------------------------------------------------------------


FUZZ_CONFIG = {"server": {"headerTimeoutMs": 2000, "keepAliveTimeoutMs": 5000}}


@dataclass
class Target:
    """The fuzzed server, its handshake-era session and the control client."""

    srv: ServerProcess
    session: str
    control: Control
    failures: list[str] = field(default_factory=list)

    @property
    def address(self) -> tuple[str, int]:
        return self.srv.host, int(self.srv.port)

    cases: int = 0

    def check(self, kind: str, data: Any) -> None:
        """Run one case, keep its problems, and every tenth case make sure others are still served."""
        sent, _, problems = run_case(self.address, self.session, kind, data)
        shown = repr(sent) if len(sent) <= 600 else f"{sent[:300]!r} ... {sent[-300:]!r}"
        self.failures += [f"{kind}: {problem}\n    sent: {shown}" for problem in problems]
        self.cases += 1
        if self.cases % 10 == 0:
            self.still_serving(f"after {self.cases} cases")

    def still_serving(self, what: str) -> None:
        if self.srv.proc.poll() is not None:
            self.failures.append(f"{what}: the server process died (exit {self.srv.proc.returncode})")
        elif not self.control.check():
            self.failures.append(f"{what}: {self.control.failures[-1]}")


def open_session(host: str, port: int) -> str:
    """A handshake-era session (initialize + notifications/initialized) for the fuzzer to use."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    headers = {"Content-Type": "application/json", "Accept": JSON_SSE}
    body = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": HANDSHAKE, "capabilities": {}},
    }
    conn.request("POST", "/mcp", body=json.dumps(body), headers=headers)
    resp = conn.getresponse()
    resp.read()
    sid = resp.getheader("mcp-session-id")
    assert resp.status == 200 and sid, "initialize failed"
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    conn.request("POST", "/mcp", body=json.dumps(note), headers={**headers, "Mcp-Session-Id": sid})
    conn.getresponse().read()
    conn.close()
    return sid


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    srv = start_server(tmp_path_factory.mktemp("fuzz"), FUZZ_CONFIG)
    try:
        host, port = srv.host, int(srv.port)
        yield Target(srv, open_session(host, port), Control(host, port))
    finally:
        srv.stop()


def _assert_clean(t: Target) -> None:
    t.still_serving("after the run")
    assert not t.failures, f"{len(t.failures)} problem(s):\n" + "\n".join(t.failures[:8])


# Live-server runs collect problems instead of failing per example: shrinking against a server is slow.
LIVE = settings(
    derandomize=True,
    database=None,
    deadline=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=list(HealthCheck),
)


def test_raw_http_bytes(target: Target) -> None:
    target.failures.clear()

    @settings(LIVE, max_examples=EXAMPLES["raw"])
    @given(payload=raw_requests())
    def fuzz(payload: bytes) -> None:
        target.check("raw", payload)

    fuzz()
    _assert_clean(target)


@pytest.mark.parametrize("era", ["modern", "legacy"])
def test_jsonrpc_bodies(target: Target, era: str) -> None:
    target.failures.clear()

    @settings(LIVE, max_examples=EXAMPLES[era])
    @given(case=rpc_bodies(era))
    def fuzz(case: tuple[bytes, list[tuple[str, str]], Any]) -> None:
        target.check(era, case)

    fuzz()
    _assert_clean(target)


# ---- the JSON nesting limit on the wire ------------------------------------------------------------------


def _modern_call(arguments: bytes) -> tuple[bytes, list[tuple[str, str]]]:
    meta = json.dumps({META_VERSION: MODERN, META_CAPS: {}}).encode()
    body = (
        b'{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"qe_memory_store","arguments":%b,"_meta":%b}}'
        % (arguments, meta)
    )
    headers = [("MCP-Protocol-Version", MODERN), ("Mcp-Method", "tools/call"), ("Mcp-Name", "qe_memory_store")]
    return body, headers


def _nested_value(levels: int) -> bytes:
    return b"[" * levels + b'"leaf"' + b"]" * levels


def test_json_nested_past_the_limit_is_refused_and_counted(target: Target) -> None:
    # Envelope, params and arguments take 3 levels: a value 61 deep makes the body 64 deep, 62 makes it 65.
    body, headers = _modern_call(b'{"key":"deep","value":%b}' % _nested_value(61))
    out = exchange(*target.address, post_bytes("/mcp", body, headers))
    assert [r.status for r in out.responses] == [200]
    assert json.loads(out.responses[0].body)["result"]["isError"] is False
    for levels in (62, 100_000):
        body, headers = _modern_call(b'{"key":"deep","value":%b}' % _nested_value(levels))
        out = exchange(*target.address, post_bytes("/mcp", body, headers))
        assert [r.status for r in out.responses] == [400]
        reply = json.loads(out.responses[0].body)
        assert reply["id"] is None and reply["error"]["code"] == -32600
        assert "nested deeper than 64 levels (server.maxJsonDepth)" in reply["error"]["message"]
    metrics = exchange(*target.address, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    counted = re.search(rb'aqe_mcp_refused_total\{reason="json_depth"\} (\d+)', metrics.responses[0].body)
    assert counted is not None and int(counted.group(1)) >= 2


def test_server_log_has_no_traceback(target: Target) -> None:
    # Runs after the fuzzing above (tests run in file order): every bad input was answered, not crashed on.
    log = target.srv.log
    assert "Traceback" not in log and "unhandled error" not in log, log[-3000:]


# ---- HTTP faults that belong to the HTTP layer (qe_appliance/http/*) -----------------------------------


def test_head_response_has_no_body(target: Target) -> None:
    # Read raw bytes: a response parser cannot know which answer was to the HEAD. A client reads no body
    # after a HEAD response, so body bytes there would be taken for the next response.
    payload = b"HEAD /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(target.address, timeout=5) as sock:
        sock.sendall(payload)
        raw = b""
        while raw.count(b"HTTP/1.1 200") < 2 or not raw.endswith(b"}"):
            raw += sock.recv(65536)
    head, get = raw.split(b"HTTP/1.1 200 OK", 2)[1:]
    assert head.endswith(b"\r\n\r\n") and b"content-length: 15" in head  # headers only
    assert get.endswith(b'\r\n\r\n{"status":"ok"}')


def test_no_content_response_has_no_length(target: Target) -> None:
    sid = open_session(*target.address)
    payload = (
        b"DELETE /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nMcp-Session-Id: %b\r\nConnection: close\r\n\r\n" % sid.encode()
    )
    out = exchange(*target.address, payload)
    assert [r.status for r in out.responses] == [204] and not out.problems, out.problems


# ---- stdio goes through the same dispatcher ------------------------------------------------------------


def test_stdio_refuses_deep_json_and_keeps_serving(tmp_path: Path) -> None:
    command, args, env = stdio_command(tmp_path)
    deep = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":' + _nested_value(5000) + b"}}"
    discover = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "server/discover",
            "params": {"_meta": {META_VERSION: MODERN, META_CAPS: {}}},
        }
    ).encode()
    proc = subprocess.run(
        [command, *args], input=deep + b"\n" + discover + b"\n", capture_output=True, env=env, timeout=30
    )
    replies = {r["id"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert replies[None]["error"]["code"] == -32600 and "maxJsonDepth" in replies[None]["error"]["message"]
    assert replies[2]["result"]["supportedVersions"] == [MODERN]
    assert b"Traceback" not in proc.stderr


def test_stdio_answers_an_over_long_line_once_and_reads_on(tmp_path: Path) -> None:
    command, args, env = stdio_command(tmp_path)
    # Past twice the 64 MiB limit: the reader gives up before the line's end has even arrived.
    huge = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"' + b"y" * (140 * 1024 * 1024) + b'"}}'
    meta = {META_VERSION: MODERN, META_CAPS: {}}
    discover = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "server/discover", "params": {"_meta": meta}}).encode()
    proc = subprocess.run(
        [command, *args], input=huge + b"\n" + discover + b"\n", capture_output=True, env=env, timeout=60
    )
    replies = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(replies) == 2, replies  # one error for the whole long line, not one per piece of it
    assert "line limit" in replies[0]["error"]["message"] and replies[1]["id"] == 2


# ---- the dispatcher in-process: many more examples -----------------------------------------------------


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class InProcess:
    loop: asyncio.AbstractEventLoop
    dispatcher: Any
    session: str
    errors: _Errors


@pytest.fixture(scope="module")
def inproc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    from qe_appliance.app import build_registry
    from qe_appliance.config import load_config
    from qe_appliance.mcp.dispatcher import Dispatcher, Inbound
    from qe_appliance.mcp.sessions import SessionTable
    from qe_appliance.monitoring import Monitor
    from qe_appliance.services import Services
    from qe_appliance.tools.runner import ToolRunner

    tmp = tmp_path_factory.mktemp("inproc")
    config = load_config(write_config(tmp / "qe-mcp.yaml", tmp / "state"))
    services = Services(config)
    monitor = Monitor(config)
    dispatcher = Dispatcher(
        build_registry(config), ToolRunner(services, monitor), SessionTable(64, 600), monitor=monitor
    )
    loop = asyncio.new_event_loop()
    errors = _Errors()
    logging.getLogger("aqe_mcp").addHandler(errors)
    init = json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": HANDSHAKE}})
    reply = loop.run_until_complete(dispatcher.handle(init.encode(), Inbound(headers={})))
    try:
        yield InProcess(loop, dispatcher, dict(reply.headers)["Mcp-Session-Id"], errors)
    finally:
        logging.getLogger("aqe_mcp").removeHandler(errors)
        loop.close()
        services.close()


def _dispatch(ip: InProcess, body: bytes, headers: list[tuple[str, str]] | None) -> tuple[Any, list[bytes]]:
    """Dispatch as HTTP does (headers given) or as stdio does (headers None: one session, in-band notes)."""
    from qe_appliance.mcp import jsonrpc as rpc
    from qe_appliance.mcp.dispatcher import Inbound
    from qe_appliance.mcp.sessions import Session

    sent: list[bytes] = []

    async def send(note: bytes) -> None:
        sent.append(note)

    if headers is None:
        exch = Inbound(session=Session("stdio", rpc.LATEST_HANDSHAKE), send=send)
    else:
        table: dict[str, str] = {}
        dups: set[str] = set()
        for name, value in headers:
            key = name.lower()
            value = ip.session if value == SESSION else value
            if key in table:
                dups.add(key)
                table[key] += ", " + value
            else:
                table[key] = value
        exch = Inbound(headers=table, duplicated=frozenset(dups), send=send)
    return ip.loop.run_until_complete(asyncio.wait_for(ip.dispatcher.handle(body, exch), 5)), sent


@settings(max_examples=EXAMPLES["dispatcher"], derandomize=True, database=None, deadline=None)
@given(case=st.sampled_from(["modern", "legacy"]).flatmap(rpc_bodies), stdio=st.integers(0, 3))
def test_dispatcher_answers_every_message(inproc: InProcess, case: Any, stdio: int) -> None:
    body, headers, sent_id = case
    inproc.errors.records.clear()
    reply, notes = _dispatch(inproc, body, None if stdio == 0 else headers)
    assert reply.status in (200, 202, 400, 404), reply
    if reply.body is None:
        assert reply.status == 202
    else:
        assert not LEAK.search(reply.body), reply.body
        problem = rpc_problem(msgspec.json.decode(reply.body), sent_id)
        assert problem is None, problem
    for note in notes:
        assert notification_problem(json.loads(note)) is None
    assert not inproc.errors.records, inproc.errors.records[0].getMessage()


def _refused_for_depth(monitor: Any) -> int:
    found = re.search(rb'aqe_mcp_refused_total\{reason="json_depth"\} (\d+)', monitor.prometheus())
    assert found is not None, "no aqe_mcp_refused_total{reason=json_depth} in /metrics"
    return int(found.group(1))


def test_dispatcher_depth_limit_is_adjustable_and_counted(inproc: InProcess) -> None:
    body = b'{"jsonrpc":"2.0","id":3,"method":"ping","params":{"x":' + _nested_value(10) + b"}}"
    dispatcher = inproc.dispatcher
    before = _refused_for_depth(dispatcher.monitor)
    dispatcher.max_json_depth = 11  # the ping's object and params take 2 levels: 12 in all
    try:
        reply, _ = _dispatch(inproc, body, None)
        assert reply.status == 400 and b"nested deeper than 11 levels" in reply.body
        dispatcher.max_json_depth = 12
        reply, _ = _dispatch(inproc, body, [])
        assert reply.status == 400 and b"Mcp-Session-Id" in reply.body  # past the depth check
    finally:
        dispatcher.max_json_depth = 64
    assert _refused_for_depth(dispatcher.monitor) == before + 1


def test_decoder_recursion_is_a_parse_error_when_the_limit_is_set_too_high(inproc: InProcess) -> None:
    dispatcher = inproc.dispatcher
    dispatcher.max_json_depth = 1_000_000
    try:
        for body in (
            _nested_value(20_000),
            b'{"jsonrpc":"2.0","id":4,"method":"ping","params":' + _nested_value(20_000) + b"}",
        ):
            reply, _ = _dispatch(inproc, body, None)
            error = json.loads(reply.body)["error"]
            assert reply.status == 400 and error["code"] == -32700 and "nested too deeply" in error["message"]
    finally:
        dispatcher.max_json_depth = 64
    assert not inproc.errors.records
