"""The appliance's HTTP routes: /mcp (Streamable HTTP, both eras), /healthz, /readyz, /metrics, /dashboard.json
and the /dashboard page.

Request checks that are about HTTP rather than MCP live here: Host and Origin (DNS-rebinding
protection), media types, and turning an MCP reply into JSON or a server-sent event stream.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import msgspec

from qe_appliance.config import is_loopback
from qe_appliance.http.guard import Guard, Refusal
from qe_appliance.http.server import Exchange, Response, Stream
from qe_appliance.mcp import dispatcher as mcp
from qe_appliance.mcp import jsonrpc as rpc
from qe_appliance.mcp.sessions import SessionTable
from qe_appliance.monitoring import web

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
PROBES = frozenset({"/healthz", "/readyz"})
# The not-ready reason of a drain's grace (server.drainGraceMs): /readyz answers 503 so proxies take the
# instance out of rotation, while MCP requests that still arrive are served. Any other reason refuses them.
DRAINING = "draining"


def _hostname(value: str) -> str:
    """Host header or origin authority -> bare host name (no port, no IPv6 brackets), lower-cased."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class AccessPolicy:
    """Which Host and Origin values a request may carry."""

    def __init__(self, bind_host: str, allowed_origins: Iterable[str]) -> None:
        self.update(bind_host, allowed_origins)

    def update(self, bind_host: str, allowed_origins: Iterable[str]) -> None:
        """(Re)configure; decisions taken under the old settings are forgotten."""
        self.loopback_only = is_loopback(bind_host)
        self.allowed_origins = {o.rstrip("/").lower() for o in allowed_origins}
        self._decided: dict[tuple[str | None, str | None], Response | None] = {}

    def check(self, headers: dict[str, str]) -> Response | None:
        # Clients send the same few Host/Origin values over and over: decide each pair once.
        pair = (headers.get("host"), headers.get("origin"))
        try:
            return self._decided[pair]
        except KeyError:
            pass
        if len(self._decided) >= 256:
            self._decided.clear()  # bounded: a client cycling through values gains nothing
        verdict = self._decided[pair] = self._check(pair[0], pair[1])
        return verdict

    def _check(self, host: str | None, origin: str | None) -> Response | None:
        if host is None:
            return _policy_error(400, "missing Host header")
        if self.loopback_only and not is_loopback(_hostname(host)):
            # A browser tricked by DNS rebinding sends the attacker's name; a local client sends ours.
            return _policy_error(421, f"Host {host!r} is not served here: this server listens on loopback only")
        if origin is not None and not self._origin_allowed(origin):
            return _policy_error(403, f"Origin {origin!r} is not allowed (add it to server.allowedOrigins)")
        return None

    def _origin_allowed(self, origin: str) -> bool:
        origin = origin.strip().rstrip("/").lower()
        if origin in self.allowed_origins:
            return True
        if not self.loopback_only:
            return False
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and is_loopback(parts.hostname or "")


def _policy_error(status: int, message: str) -> Response:
    return Response(status, error_body("/mcp", message))


def error_body(path: str, message: str) -> bytes:
    """The body of a refusal: on /mcp a JSON-RPC error (id null), so MCP clients show the message instead of
    a bare status; elsewhere {"error": message}."""
    if path == "/mcp":
        return rpc.error_bytes(None, rpc.INVALID_REQUEST, message)
    return msgspec.json.encode({"error": message})


def _refusal(path: str, status: int, message: str, headers: list[tuple[str, str]]) -> Response:
    return Response(status, error_body(path, message), headers=headers)


def _rpc_error(status: int, code: int, message: str) -> Response:
    return Response(status, rpc.error_bytes(None, code, message))


@functools.lru_cache(maxsize=64)
def _media_ranges(accept: str) -> frozenset[str]:
    return frozenset(part.split(";", 1)[0].strip().lower() for part in accept.split(","))


def _accepts(headers: dict[str, str], media: str) -> bool:
    accept = headers.get("accept")
    if accept is None:
        return True
    kinds = _media_ranges(accept)
    return media in kinds or "*/*" in kinds or f"{media.split('/', 1)[0]}/*" in kinds


class Routes:
    """Dispatches an HTTP exchange to the MCP endpoint or a probe."""

    def __init__(
        self,
        dispatcher: mcp.Dispatcher,
        sessions: SessionTable,
        policy: AccessPolicy,
        guard: Guard,
        readiness: Callable[[], str | None],
    ) -> None:
        self.dispatcher = dispatcher
        self.sessions = sessions
        self.policy = policy
        self.guard = guard
        # Returns None when ready, else why not ("starting", "stopping", ...): /readyz and new MCP work get 503;
        # DRAINING: /readyz only.
        self.readiness = readiness
        # The appliance's Monitor (set when monitoring is enabled): serves /metrics and /dashboard.json.
        self.monitor: Any = None
        # One of several workers (server.workers): /metrics and /dashboard.json are the supervisor's sums over all.
        self.service_metrics: Callable[[], Awaitable[bytes]] | None = None
        self.service_dashboard: Callable[[float | None], Awaitable[dict[str, Any]]] | None = None

    async def __call__(self, ex: Exchange) -> Response | None:
        response = await self._route(ex)
        if self.monitor is not None:
            self.monitor.record_http(response.status if response is not None else 200)
        return response

    async def _route(self, ex: Exchange) -> Response | None:
        req = ex.request
        principal: str | None = None
        if req.path not in PROBES:
            # Probes stay open for health checkers; everything else needs a token (when auth is on, /metrics
            # only if server.auth.protectMetrics) and stays within the client's rate.
            guard = self.guard
            protected = req.path != "/metrics" or guard.protect_metrics
            if guard.active:
                address = guard.client_address(req.client[0] if req.client is not None else None, req.headers)
                verdict = guard.check(req.headers, address, time.monotonic(), protected)
            else:
                verdict = None
            if isinstance(verdict, Refusal):
                if self.monitor is not None:
                    self.monitor.record_refusal(verdict.reason)
                return _refusal(req.path, verdict.status, verdict.message, verdict.headers)
            principal = verdict
        if req.path == "/mcp":
            denied = self.policy.check(req.headers)
            if denied is not None:
                return denied
            not_ready = self.readiness()
            if not_ready is not None and not_ready != DRAINING:
                return _refusal(req.path, 503, f"server is {not_ready}; retry shortly", [("retry-after", "5")])
            if req.method == "POST":
                return await self._post(ex, principal)
            if req.method == "GET":
                return await self._get(ex, principal)
            if req.method == "DELETE":
                return self._delete(req.headers, principal)
            return Response(
                405, b'{"error":"use POST, GET or DELETE on /mcp"}', headers=[("allow", "POST, GET, DELETE")]
            )
        if req.path in ("/metrics", "/dashboard.json", "/dashboard"):
            return await self._monitoring(req.path, req.method, req.query)
        if req.path in PROBES:
            if req.method not in ("GET", "HEAD"):
                return Response(405, b'{"error":"use GET"}', headers=[("allow", "GET, HEAD")])
            if req.path == "/readyz":
                state = self.readiness()
                if state is not None:
                    return Response(503, msgspec.json.encode({"status": state}))
                return Response(200, b'{"status":"ready"}')
            return Response(200, b'{"status":"ok"}')
        return Response(404, msgspec.json.encode({"error": f"no route for {req.path}; MCP is served at /mcp"}))

    async def _monitoring(self, path: str, method: str, query: str) -> Response:
        if method not in ("GET", "HEAD"):
            return Response(405, b'{"error":"use GET"}', headers=[("allow", "GET, HEAD")])
        if self.monitor is None:
            return Response(404, b'{"error":"monitoring is disabled (monitoring.enabled: false)"}')
        if path == "/metrics":
            text = self.monitor.prometheus() if self.service_metrics is None else await self.service_metrics()
            return Response(200, text, content_type=PROMETHEUS_TEXT)
        if path == "/dashboard":
            return Response(200, web.PAGE, content_type=web.HTML, headers=list(web.HEADERS))
        try:
            since = web.since(query)
        except ValueError as exc:
            return Response(400, msgspec.json.encode({"error": str(exc)}))
        if self.service_dashboard is not None:
            return Response(200, msgspec.json.encode(await self.service_dashboard(since)))
        return Response(200, msgspec.json.encode(self.monitor.dashboard(since)))

    async def _post(self, ex: Exchange, principal: str | None) -> Response | None:
        headers = ex.request.headers
        ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            return _rpc_error(415, rpc.INVALID_REQUEST, "Content-Type must be application/json")
        if not (_accepts(headers, "application/json") or _accepts(headers, "text/event-stream")):
            return _rpc_error(406, rpc.INVALID_REQUEST, "Accept must allow application/json and text/event-stream")
        stream: Stream | None = None

        async def send(event: bytes) -> None:
            # The first in-band notification turns this reply into an event stream.
            nonlocal stream
            if stream is None:
                if not _accepts(headers, "text/event-stream"):
                    return
                stream = ex.start_stream(200, "text/event-stream", [])
            await stream.write(b"event: message\ndata: " + event + b"\n\n")

        exchange = mcp.Inbound(headers=headers, duplicated=ex.request.duplicated, send=send, principal=principal)
        reply = await self.dispatcher.handle(ex.request.body, exchange)
        if stream is not None:
            if reply.body is not None:
                await stream.write(b"event: message\ndata: " + reply.body + b"\n\n")
            return None
        if reply.body is None:
            return Response(reply.status, b"", headers=reply.headers)
        return Response(reply.status, reply.body, headers=reply.headers)

    def _session_or_error(self, headers: dict[str, str], principal: str | None) -> Any:
        sid = headers.get("mcp-session-id")
        if not sid:
            return _rpc_error(400, rpc.INVALID_REQUEST, "missing Mcp-Session-Id header")
        session = self.sessions.get(sid.strip(), principal)
        if session is None:
            return _rpc_error(404, rpc.INVALID_REQUEST, "unknown or expired session: initialize a new one")
        return session

    async def _get(self, ex: Exchange, principal: str | None) -> Response | None:
        headers = ex.request.headers
        if not _accepts(headers, "text/event-stream"):
            return _rpc_error(406, rpc.INVALID_REQUEST, "GET /mcp opens an event stream: Accept text/event-stream")
        session = self._session_or_error(headers, principal)
        if isinstance(session, Response):
            return session
        if session.listeners:
            return _rpc_error(409, rpc.INVALID_REQUEST, "this session already has an open event stream")
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        session.listeners.add(queue)
        stream = ex.start_stream(200, "text/event-stream", [])
        try:
            # A comment first so the client sees the stream is open before any event.
            await stream.write(b": stream open\n\n")
            while (event := await queue.get()) is not None:
                await stream.write(b"event: message\ndata: " + event + b"\n\n")
        except ConnectionError:
            pass
        finally:
            session.listeners.discard(queue)
        return None

    def _delete(self, headers: dict[str, str], principal: str | None) -> Response:
        session = self._session_or_error(headers, principal)
        if isinstance(session, Response):
            return session
        self.sessions.remove(session.id)
        return Response(204, b"")
