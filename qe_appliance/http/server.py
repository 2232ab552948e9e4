"""HTTP/1.1 over httptools: keep-alive, in-order pipelining, body/header limits, timeouts, flow control.

The protocol knows nothing of MCP. It parses a request, hands it to the `RequestHandler`, and writes what the
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

from qe_appliance._core.httphead import MAX_HEADER_FIELDS, HeadReader, Request

log = logging.getLogger("aqe_mcp.http")

# Connections past server.maxConnections that still get a 503 before they are closed; beyond that
# they are closed without an answer.
OVERFLOW_ANSWERED = 64
OVERFLOW_WAIT_S = 1.0
MAX_PIPELINED = 32  # parsed-but-unanswered requests before reading pauses
WRITE_HIGH_WATER = 256 * 1024
SWEEP_INTERVAL_S = 0.1
# After a refusal the client may still be sending; closing with its bytes unread makes the kernel answer with a
# reset that can destroy the refusal in flight. So the server half-closes and reads on, discarding, for at most
# this long and this much (as nginx's lingering close does).
LINGER_S = 1.0
LINGER_BYTES = 1 << 20
JSON = "application/json"


@dataclass
class Limits:
    max_body_bytes: int = 4 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    header_timeout_s: float = 10.0
    keep_alive_timeout_s: float = 30.0
    max_connections: int = 1024


@dataclass(slots=True)
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


RequestHandler = Callable[[Exchange], Awaitable[Response | None]]
# Builds the body of an error the protocol answers itself (413, 431, 408, 503...): (path, message) -> bytes.
ErrorRenderer = Callable[[str, str], bytes]


class HttpProtocol(HeadReader, asyncio.Protocol):
    """One client connection. Requests are answered strictly in the order they arrived.

    The callbacks httptools makes per URL piece, header line and body piece, and the decoding of the header
    lines, are HeadReader's (in C); the limits they check are this protocol's."""

    def __init__(
        self,
        handler: RequestHandler,
        limits: Limits,
        on_close: Callable[[HttpProtocol], None],
        on_refuse: Callable[[str], None],
        error_body: ErrorRenderer,
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
        # The error that ends this connection, written once every request parsed before it is answered.
        self._refusal: Response | None = None
        # While closing after a refusal: how many more bytes are read and dropped before closing outright.
        self._lingering: int | None = None
        # Per-request parse state: HeadReader's _url, _raw_headers, _header_bytes, _body and _body_len, and the
        # limits they are held to, taken from `limits` as each request begins.
        self.max_header_bytes = limits.max_header_bytes
        self.max_body_bytes = limits.max_body_bytes
        # Requests begun on this connection, and whether the latest one's head is still arriving: a read that
        # falls wholly inside one head is counted whole, whitespace the parser reports nowhere included.
        self._begun = 0
        self._in_head = False
        # When the request being read must be complete (headerTimeoutMs from its start); None between requests.
        self._request_deadline: float | None = None
        # The request being read offered a protocol upgrade (re-read without it), or awaits 100 Continue.
        self._upgrade_offered = False

    # ---- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        peer = transport.get_extra_info("peername")
        self.client = (peer[0], peer[1]) if isinstance(peer, tuple) and len(peer) >= 2 else None
        # A new connection has the header timeout to start its request, so connecting and sending nothing
        # holds a slot no longer than sending slowly does.
        self._arm(self._request_timeout_s())

    def connection_lost(self, exc: Exception | None) -> None:
        self.deadline = float("inf")
        self.transport = None
        self._writable.set()
        if self.current is not None and not self.current.done():
            self.current.cancel()  # the client is gone: stop its work (MCP cancellation by close)
        self.queue.clear()
        self.on_close(self)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            # Refused or shutting down: nothing more is parsed. A lingering close only drains.
            if self._lingering is not None:
                self._lingering -= len(data)
                if self._lingering < 0:
                    self._close()
            return
        begun = self._begun
        mid_head = self._in_head
        counted = self._header_bytes
        if not self._feed(data):
            return
        if mid_head and self._in_head and self._begun == begun:
            # The whole read fell inside one head, so every byte of it counts, whitespace the parser drops too.
            self._header_bytes = counted + len(data)
            if self._header_bytes > self.max_header_bytes:
                self._fail(self._header_limit())
                return
        if self._expects_continue and self.current is None:
            self._send_continue()

    def _feed(self, data: bytes) -> bool:
        """Parse `data`; False when it ended in a refusal."""
        while True:
            try:
                self.parser.feed_data(data)
                return True
            except httptools.HttpParserUpgrade as exc:
                # RFC 9110 7.8 lets a server ignore Upgrade and go on in HTTP/1.1, which is what clients then
                # expect. httptools has skipped the offer's body, so a fresh parser reads the request again
                # without the offer, body and any pipelined requests after it included.
                data = self._head_without_upgrade() + data[exc.args[0]:]
                self.parser = httptools.HttpRequestParser(self)
            except httptools.HttpParserError as exc:
                # httptools wraps what a callback raised; a limit we enforce keeps its own status.
                cause = exc.__context__
                self._fail(cause if isinstance(cause, _Refuse) else
                           _Refuse(400, f"malformed HTTP request: {exc}", "malformed"))
                return False

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def drain(self) -> None:
        await self._writable.wait()

    # ---- httptools callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset_head()
        # The limits as configured now (a reload changes them between requests).
        self.max_header_bytes = self.limits.max_header_bytes
        self.max_body_bytes = self.limits.max_body_bytes
        self._begun += 1
        self._in_head = True
        self._arm(self._request_timeout_s())
        self._request_deadline = self.deadline

    # on_url, on_header and on_body: HeadReader's.

    def _header_limit(self) -> _Refuse:
        return _Refuse(431, f"request headers over the {self.max_header_bytes}-byte limit "
                       "(server.maxHeaderBytes)", "header_size")

    def _too_many_fields(self) -> _Refuse:
        return _Refuse(431, f"more than {MAX_HEADER_FIELDS} header fields in one request; send fewer", "header_size")

    def _body_limit(self) -> _Refuse:
        return _Refuse(413, f"request body over the {self.max_body_bytes}-byte limit "
                       "(server.maxBodyBytes)", "body_size")

    def on_headers_complete(self) -> None:
        self._in_head = False
        length, body_follows, expect = self.framing()
        if self.parser.should_upgrade():
            if self.parser.get_method() == b"CONNECT":
                raise _Refuse(400, "CONNECT is not supported: this is an MCP server, not a proxy", "malformed")
            self._upgrade_offered = True
        if length > self.max_body_bytes:
            raise self._body_limit()  # refused before the body is read, so no 100 Continue either
        if expect is not None:
            if expect != b"100-continue":
                raise _Refuse(417, f"unsupported Expect: {expect.decode('latin-1')!r}; only 100-continue is "
                              "understood", "malformed")
            # An HTTP/1.0 client cannot take a 1xx (RFC 9110 10.1.1), a request without a body waits for none,
            # and a connection past maxConnections is answered 503 whatever it sends.
            self._expects_continue = ((length > 0 or body_follows) and not self.over_limit
                                      and self.parser.get_http_version() == "1.1")

    def on_message_complete(self) -> None:
        self._expects_continue = False
        if self._upgrade_offered:
            self._upgrade_offered = False
            return  # read again without the offer (data_received); that reading is the request
        self.deadline = float("inf")
        self._request_deadline = None
        parser = self.parser
        method, keep_alive = parser.get_method(), parser.should_keep_alive()
        request = self.take_request(method, self.client, keep_alive)  # a bare path, as clients send it
        if request is None:
            url = httptools.parse_url(self._url)
            headers, duplicated = self.decode_headers()
            request = Request(method.decode("latin-1"), url.path.decode("latin-1") if url.path else "/",
                              url.query.decode("latin-1") if url.query else "", headers, duplicated,
                              b"".join(self._body), self.client, keep_alive)
        self.queue.append(request)
        if self.current is None:
            self._next()
        elif len(self.queue) >= MAX_PIPELINED and self.transport is not None and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def _head_without_upgrade(self) -> bytes:
        """The head of the request just parsed, as sent but for its Upgrade field."""
        lines = [b"%b %b HTTP/%b" % (self.parser.get_method(), self._url,
                                      self.parser.get_http_version().encode("latin-1"))]
        lines += [b"%b: %b" % (name, value) for name, value in self._raw_headers if name.lower() != b"upgrade"]
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def _send_continue(self) -> None:
        # Only once every earlier response is written: a 1xx belongs to the request being read.
        self._expects_continue = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    # ---- serving ------------------------------------------------------------------------------------

    def _next(self) -> None:
        if not self.queue or self.transport is None:
            self.current = None
            if self._refusal is not None:
                # Every request parsed before the refused one is answered: now the refusal, then close.
                self.write_response(self._refusal, keep_alive=False)
                self._linger()
            elif self._closing:
                self._close()
            elif self._request_deadline is not None:
                # A pipelined request is half read: it keeps the deadline it started with, not a keep-alive one.
                self.deadline = self._request_deadline
                if self._expects_continue:
                    self._send_continue()
            else:
                self._arm(self.limits.keep_alive_timeout_s)
            return
        request = self.queue.popleft()
        if self._reading_paused and len(self.queue) < MAX_PIPELINED // 2 and not self._closing:
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

    def _request_timeout_s(self) -> float:
        # One over maxConnections gets a moment, then its 503, however slowly it sends.
        return OVERFLOW_WAIT_S if self.over_limit else self.limits.header_timeout_s

    def _arm(self, seconds: float) -> None:
        self.deadline = self.loop.time() + seconds

    def timed_out(self) -> None:
        """Called by the server's sweep once `deadline` has passed."""
        self.deadline = float("inf")
        if self.current is not None:
            return  # a response is being produced; its own deadline applies
        if self._lingering is not None:
            self._close()
            return
        if self.over_limit:
            self._turn_away()
            return
        if self._url or self._raw_headers or self._body_len:
            self._fail(_Refuse(408, "request not completed in time (server.headerTimeoutMs)", "header_timeout"))
        else:
            self._close()  # idle keep-alive connection

    def _turn_away(self) -> None:
        self.on_refuse("connections")
        limit = self.limits.max_connections
        message = f"server is at its limit of {limit} connections (server.maxConnections); retry shortly"
        body = self._error_body(message)
        self.write_response(Response(503, body, headers=[("retry-after", "1")]), keep_alive=False)
        self._linger()

    def _error_body(self, message: str) -> bytes:
        path = self._url.split(b"?", 1)[0].decode("latin-1")
        return self.error_body(path, message)

    def _fail(self, refusal: _Refuse) -> None:
        """Refuse an unparsable or over-limit request: nothing after it can be trusted, so reading stops, the
        requests parsed before it are answered in order, then this error, then the connection closes."""
        self.on_refuse(refusal.reason)
        self._refusal = Response(refusal.status, self._error_body(refusal.message))
        self._closing = True
        self.deadline = float("inf")
        if self.transport is not None and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        if self.current is None:
            self._next()

    def _linger(self) -> None:
        """Close after an error answer: half-close, then drain what the client still sends (LINGER_S, LINGER_BYTES)."""
        transport = self.transport
        if transport is None or transport.is_closing() or not transport.can_write_eof():
            self._close()
            return
        self._closing = True
        self._lingering = LINGER_BYTES
        transport.write_eof()
        self._arm(LINGER_S)
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()

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

    def __init__(self, handler: RequestHandler, limits: Limits, error_body: ErrorRenderer = plain_error_body) -> None:
        self.handler = handler
        self.limits = limits
        self.error_body = error_body
        self.connections: set[HttpProtocol] = set()
        # Where refusals are counted (the appliance points it at its Monitor).
        self.on_refuse: Callable[[str], None] = lambda reason: None
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def listen(self, host: str, port: int, reuse_port: bool = False) -> tuple[str, int]:
        """`reuse_port`: one of several worker processes accepting on this port (SO_REUSEPORT)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol, host=host, port=port, backlog=2048, reuse_port=reuse_port or None
        )
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
        await self.wait_idle(deadline_s)
        for conn in list(self.connections):
            if conn.current is not None:
                conn.current.cancel()
            conn._close()
        if self._sweeper is not None:
            self._sweeper.cancel()
