"""HTTP/1.1 over httptools: keep-alive, in-order pipelining, body/header limits, timeouts, flow control.

The protocol knows nothing of MCP. It parses a request, hands it to the `Handler`, and writes what the
handler answers, either one whole response or a chunked stream (server-sent events).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import cast

import httptools
import msgspec

log = logging.getLogger("aqe_mcp.http")

# Connections past server.maxConnections that still get a 503 before they are closed; beyond that
# they are closed without an answer.
OVERFLOW_ANSWERED = 64
OVERFLOW_WAIT_S = 1.0
MAX_PIPELINED = 32  # parsed-but-unanswered requests before reading pauses
WRITE_HIGH_WATER = 256 * 1024
SWEEP_INTERVAL_S = 0.1
JSON = "application/json"


@dataclass
class Limits:
    max_body_bytes: int = 4 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    header_timeout_s: float = 10.0
    keep_alive_timeout_s: float = 30.0
    max_connections: int = 1024


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    duplicated: frozenset[str]
    body: bytes
    client: tuple[str, int] | None
    keep_alive: bool


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: list[tuple[str, str]] = field(default_factory=list)


_REASONS = {s.value: s.phrase for s in HTTPStatus}
_OK_JSON = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "


def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
    lines.extend(f"{k}: {v}" for k, v in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Stream:
    """A chunked response the handler writes piece by piece (server-sent events)."""

    def __init__(self, conn: HttpProtocol) -> None:
        self._conn = conn
        self.closed = False

    async def write(self, data: bytes) -> None:
        if self.closed or self._conn.transport is None or self._conn.transport.is_closing():
            raise ConnectionResetError("the client went away")
        self._conn.transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        await self._conn.drain()

    def end(self) -> None:
        if not self.closed:
            self.closed = True
            if self._conn.transport is not None and not self._conn.transport.is_closing():
                self._conn.transport.write(b"0\r\n\r\n")


class Exchange:
    """Handed to the handler with each request: answer with `respond` or `start_stream`."""

    __slots__ = ("request", "_conn", "stream")

    def __init__(self, request: Request, conn: HttpProtocol) -> None:
        self.request = request
        self._conn = conn
        self.stream: Stream | None = None

    def start_stream(self, status: int, content_type: str, headers: list[tuple[str, str]]) -> Stream:
        all_headers = [
            ("content-type", content_type),
            ("transfer-encoding", "chunked"),
            ("cache-control", "no-cache"),
            ("x-accel-buffering", "no"),
            *headers,
        ]
        if not self.request.keep_alive:
            all_headers.append(("connection", "close"))
        assert self._conn.transport is not None
        self._conn.transport.write(_head(status, all_headers))
        self.stream = Stream(self._conn)
        return self.stream


Handler = Callable[[Exchange], Awaitable[Response | None]]
# Builds the body of an error the protocol answers itself (413, 431, 408, 503...): (path, message) -> bytes.
ErrorBody = Callable[[str, str], bytes]


class HttpProtocol(asyncio.Protocol):
    """One client connection. Requests are answered strictly in the order they arrived."""

    def __init__(
        self,
        handler: Handler,
        limits: Limits,
        on_close: Callable[[HttpProtocol], None],
        on_refuse: Callable[[str], None],
        error_body: ErrorBody,
        over_limit: bool = False,
    ) -> None:
        self.handler = handler
        self.limits = limits
        self.on_close = on_close
        # Told the reason (a monitoring.REFUSAL_REASONS name) whenever a limit turns a request away.
        self.on_refuse = on_refuse
        self.error_body = error_body
        # Accepted beyond server.maxConnections: its first request is answered 503 and the connection closed.
        self.over_limit = over_limit
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client: tuple[str, int] | None = None
        self.queue: deque[Request] = deque()
        self.current: asyncio.Task[None] | None = None
        self._reading_paused = False
        self._writable = asyncio.Event()
        self._writable.set()
        # Monotonic time after which the connection is timed out (HttpServer's sweep checks it);
        # inf while a response is being produced, whose own deadline applies.
        self.deadline = float("inf")
        self._closing = False
        # Per-request parse state.
        self._url = b""
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_len = 0
        self._last_field = b""

    # ---- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        peer = transport.get_extra_info("peername")
        self.client = (peer[0], peer[1]) if isinstance(peer, tuple) and len(peer) >= 2 else None
        # A new connection has the header timeout to start its request, so connecting and sending nothing
        # holds a slot no longer than sending slowly does; one over the limit gets a moment, then its 503.
        self._arm(OVERFLOW_WAIT_S if self.over_limit else self.limits.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self.deadline = float("inf")
        self.transport = None
        self._writable.set()
        if self.current is not None and not self.current.done():
            self.current.cancel()  # the client is gone: stop its work (MCP cancellation by close)
        self.queue.clear()
        self.on_close(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self.current is None and not self.queue:
                self._fail(400, "protocol upgrades are not supported", "malformed")
            else:
                # The request itself was complete: answer it without upgrading, then close, since the
                # bytes after it belong to the other protocol.
                self._closing = True
        except httptools.HttpParserError as exc:
            # httptools wraps what a callback raised; a limit we enforce keeps its own status.
            cause = exc.__context__
            if isinstance(cause, _Refuse):
                self._fail(cause.status, cause.message, cause.reason)
            else:
                self._fail(400, f"malformed HTTP request: {exc}", "malformed")

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def drain(self) -> None:
        await self._writable.wait()

    # ---- httptools callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._raw_headers = []
        self._header_bytes = 0
        self._body = []
        self._body_len = 0
        self._arm(self.limits.header_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        # Only collect here (called once per header line); decoding happens once per request.
        self._raw_headers.append((name, value))
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > self.limits.max_header_bytes:
            raise _Refuse(431, f"request headers over the {self.limits.max_header_bytes}-byte limit "
                          "(server.maxHeaderBytes)", "header_size")

    def _decode_headers(self) -> tuple[dict[str, str], frozenset[str]]:
        headers: dict[str, str] = {}
        dups: set[str] = set()
        for name, value in self._raw_headers:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            if key in headers:
                dups.add(key)
                headers[key] += ", " + text
            else:
                headers[key] = text
        return headers, frozenset(dups)

    def on_headers_complete(self) -> None:
        if self._header_bytes > self.limits.max_header_bytes:
            raise _Refuse(431, f"request headers over the {self.limits.max_header_bytes}-byte limit "
                          "(server.maxHeaderBytes)", "header_size")
        length = 0
        for name, value in self._raw_headers:
            if name.lower() == b"content-length" and value.strip().isdigit():
                length = int(value)
        if length > self.limits.max_body_bytes:
            raise _Refuse(413, f"request body over the {self.limits.max_body_bytes}-byte limit "
                          "(server.maxBodyBytes)", "body_size")

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)
        if self._body_len > self.limits.max_body_bytes:
            raise _Refuse(413, f"request body over the {self.limits.max_body_bytes}-byte limit "
                          "(server.maxBodyBytes)", "body_size")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.deadline = float("inf")
        url = httptools.parse_url(self._url)
        headers, duplicated = self._decode_headers()
        request = Request(
            method=self.parser.get_method().decode("latin-1"),
            path=url.path.decode("latin-1") if url.path else "/",
            query=url.query.decode("latin-1") if url.query else "",
            headers=headers,
            duplicated=duplicated,
            body=b"".join(self._body),
            client=self.client,
            keep_alive=self.parser.should_keep_alive(),
        )
        self.queue.append(request)
        if self.current is None:
            self._next()
        elif len(self.queue) >= MAX_PIPELINED and self.transport is not None and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    # ---- serving ------------------------------------------------------------------------------------

    def _next(self) -> None:
        if not self.queue or self.transport is None:
            self.current = None
            if self._closing:
                self._close()
            elif self.transport is not None:
                self._arm(self.limits.keep_alive_timeout_s)
            return
        request = self.queue.popleft()
        if self._reading_paused and len(self.queue) < MAX_PIPELINED // 2:
            self._reading_paused = False
            self.transport.resume_reading()
        self.current = self.loop.create_task(self._serve(request))

    async def _serve(self, request: Request) -> None:
        if self.over_limit:
            self._turn_away()
            return
        exchange = Exchange(request, self)
        try:
            response = await self.handler(exchange)
        except asyncio.CancelledError:
            return
        except Exception:
            log.exception("unhandled error serving %s %s", request.method, request.path)
            if exchange.stream is None:
                response = Response(500, b'{"error":"internal server error"}')
            else:
                response = None
        if self.transport is None:
            return
        if exchange.stream is not None:
            exchange.stream.end()
        elif response is not None:
            self.write_response(response, request.keep_alive, head=request.method == "HEAD")
        if not request.keep_alive:
            self._close()
            return
        self._next()

    def write_response(self, response: Response, keep_alive: bool, head: bool = False) -> None:
        """Write `response`; `head`: the request was HEAD, so the headers describe a body that is not sent."""
        if self.transport is None:
            return
        if (response.status == 200 and keep_alive and not head and not response.headers
                and response.content_type == JSON):
            # The common case, a JSON-RPC reply, skips building the header list.
            self.transport.write(b"%b%d\r\n\r\n%b" % (_OK_JSON, len(response.body), response.body))
            return
        if response.status == 204:
            headers = []  # no content, so neither a type nor a length (RFC 9110 8.6)
        else:
            headers = [("content-type", response.content_type), ("content-length", str(len(response.body)))]
        headers.extend(response.headers)
        if not keep_alive:
            headers.append(("connection", "close"))
        body = b"" if head or response.status == 204 else response.body
        self.transport.write(_head(response.status, headers) + body)

    # ---- limits, timers, teardown -------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        self.deadline = self.loop.time() + seconds

    def timed_out(self) -> None:
        """Called by the server's sweep once `deadline` has passed."""
        self.deadline = float("inf")
        if self.current is not None:
            return  # a response is being produced; its own deadline applies
        if self.over_limit:
            self._turn_away()
            return
        if self._url or self._raw_headers or self._body_len:
            self._fail(408, "request not completed in time (server.headerTimeoutMs)", "header_timeout")
        else:
            self._close()  # idle keep-alive connection

    def _turn_away(self) -> None:
        self.on_refuse("connections")
        limit = self.limits.max_connections
        message = f"server is at its limit of {limit} connections (server.maxConnections); retry shortly"
        body = self._error_body(message)
        self.write_response(Response(503, body, headers=[("retry-after", "1")]), keep_alive=False)
        self._close()

    def _error_body(self, message: str) -> bytes:
        path = self._url.split(b"?", 1)[0].decode("latin-1")
        return self.error_body(path, message)

    def _fail(self, status: int, message: str, reason: str) -> None:
        """Answer an unparsable or over-limit request and close: the byte stream can't be trusted."""
        self.on_refuse(reason)
        if self.transport is not None and not self.transport.is_closing() and self.current is None:
            self.write_response(Response(status, self._error_body(message)), keep_alive=False)
        self._close()

    def _close(self) -> None:
        self._closing = True
        self.deadline = float("inf")
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def shutdown(self) -> None:
        """Close when idle; a request in progress finishes first (drain)."""
        self._closing = True
        if self.current is None:
            self._close()


class _Refuse(Exception):
    def __init__(self, status: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason


class _CloseAtOnce(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


def plain_error_body(path: str, message: str) -> bytes:
    return b'{"error":%b}' % msgspec.json.encode(message)


class HttpServer:
    """Listens, tracks connections, and closes them gracefully on shutdown."""

    def __init__(self, handler: Handler, limits: Limits, error_body: ErrorBody = plain_error_body) -> None:
        self.handler = handler
        self.limits = limits
        self.error_body = error_body
        self.connections: set[HttpProtocol] = set()
        # Where refusals are counted (the appliance points it at its Monitor).
        self.on_refuse: Callable[[str], None] = lambda reason: None
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, host=host, port=port, backlog=2048)
        self._sweeper = loop.create_task(self._sweep_timeouts())
        sock = self._server.sockets[0].getsockname()
        return sock[0], sock[1]

    async def _sweep_timeouts(self) -> None:
        # One periodic check instead of a timer per request: requests stay cheap, timeouts stay
        # accurate to a tenth of a second.
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            now = loop.time()
            for conn in [c for c in self.connections if c.deadline <= now]:
                conn.timed_out()

    def _protocol(self) -> asyncio.Protocol:
        open_now = len(self.connections)
        if open_now >= self.limits.max_connections + OVERFLOW_ANSWERED:
            # Far past the limit: close at once rather than hold a descriptor to say so.
            self._refused("connections")
            return _CloseAtOnce()
        conn = HttpProtocol(
            self.handler, self.limits, self.connections.discard, self._refused, self.error_body,
            over_limit=open_now >= self.limits.max_connections,
        )
        self.connections.add(conn)
        return conn

    def _refused(self, reason: str) -> None:
        self.on_refuse(reason)

    async def wait_idle(self, deadline_s: float) -> None:
        """Return when no request is being answered (event streams aside), or at the deadline."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        while any(c.current is not None for c in self.connections) and loop.time() < end:
            await asyncio.sleep(0.02)

    async def shutdown(self, deadline_s: float) -> None:
        """Stop accepting, let requests in flight finish within the deadline, then close everything."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.shutdown()
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        while any(c.current is not None for c in self.connections) and loop.time() < end:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            if conn.current is not None:
                conn.current.cancel()
            conn._close()
        if self._sweeper is not None:
            self._sweeper.cancel()
