"""Transport-independent MCP dispatch for both protocol eras.

The 2026-07-28 era is stateless: every request carries its protocol version and client capabilities in
`params._meta`, and HTTP routing headers must agree with the body. The handshake era (2024-11-05 ..
2025-11-25) negotiates once with `initialize` and then lives in a Session. HTTP and stdio both hand one
message at a time to `Dispatcher.handle` and write back the `Reply` it returns.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from qe_appliance import SERVER_NAME, __version__, tracing
from qe_appliance._core.jsondepth import exceeds_depth
from qe_appliance.mcp import jsonrpc as rpc
from qe_appliance.mcp.calls import CallParams, ToolCalls
from qe_appliance.mcp.headers import check_routing_headers
from qe_appliance.mcp.inbound import ACCEPTED, Inbound, Method, MethodCall, Reply
from qe_appliance.mcp.jsonrpc import RpcError
from qe_appliance.mcp.sessions import LOG_LEVELS, Session, SessionTable
from qe_appliance.mcp.subscriptions import Subscriptions
from qe_appliance.mcp.tasks import EXTENSION_CAPABILITY, HANDSHAKE_CAPABILITY, TASKS_VERSION, ToolTasks
from qe_appliance.monitoring.monitor import Monitor
from qe_appliance.registry import ToolRegistry
from qe_appliance.tools.runner import ToolRunner

__all__ = ["ACCEPTED", "Dispatcher", "Inbound", "Reply", "SessionMissing", "SessionUnknown"]

log = logging.getLogger("aqe_mcp.dispatch")

INSTRUCTIONS = (
    "Quality-engineering tools: generate tests, analyse coverage and its riskiest gaps, gate a release, "
    "measure code quality, remember and learn what worked, and spread heavy work over a fleet of agents. "
    "Tool names are resolved with typo tolerance; the result's _meta says which tool ran. What the tools "
    "produce stays readable as aqe:// resources (coverage reports and gaps, generated tests, tasks, memory); "
    "a result too large to send whole comes as a summary with resource links. Prompts walk through the usual "
    "workflows: generate-tests, review-coverage, release-gate, triage-failures, explain-gap."
)
CAPABILITIES: dict[str, Any] = {
    "tools": {"listChanged": True},
    "logging": {},
    "resources": {"subscribe": True, "listChanged": True},
    "prompts": {"listChanged": True},
    "completions": {},
}
SERVER_INFO = {"name": SERVER_NAME, "title": "aqe-mcp QE server", "version": __version__}
LIST_TTL_MS = 30_000
# Metric labels stay bounded: any other method a client sends is counted as "other".
KNOWN_METHODS = frozenset(
    {
        "initialize",
        "ping",
        "logging/setLevel",
        "server/discover",
        "tools/list",
        "tools/call",
        "notifications/initialized",
        "notifications/cancelled",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "batch",
        "subscriptions/listen",
        "tasks/get",
        "tasks/result",
        "tasks/list",
        "tasks/cancel",
        "tasks/update",
    }
)
# JSON-RPC batches (a JSON array of messages) exist in this revision only.
BATCH_VERSION = "2025-03-26"
DEFAULT_MAX_JSON_DEPTH = 64
# Methods whose params.name the Mcp-Name routing header mirrors (resources/read mirrors params.uri).
NAMED_METHODS = frozenset({"tools/call", "prompts/get"})
# Errors that keep their 4xx in the handshake era: the message itself could not be read as a request.
TRANSPORT_ERRORS = frozenset({rpc.PARSE_ERROR, rpc.INVALID_REQUEST})
DEFAULT_MAX_SUBSCRIPTIONS = 256

class AnyParams(msgspec.Struct):
    meta: Any = msgspec.field(default=None, name="_meta")
    cursor: Any = None
    # What the Mcp-Name routing header mirrors: prompts/get's name, resources/read's uri.
    name: Any = None
    uri: Any = None
    task_id: Any = msgspec.field(default=None, name="taskId")


_call_params = msgspec.json.Decoder(CallParams)
_any_params = msgspec.json.Decoder(AnyParams)
_plain = msgspec.json.Decoder()




class _CallRequest(msgspec.Struct):
    """A tools/call request, envelope and params decoded together in one pass (the common message)."""

    jsonrpc: Any = None
    id: Any = msgspec.UNSET
    method: Any = msgspec.UNSET
    params: CallParams | None = None
    result: Any = msgspec.UNSET
    error: Any = msgspec.UNSET


_call_request = msgspec.json.Decoder(_CallRequest)


def _tools_call(body: bytes) -> _CallRequest | None:
    """`body` decoded in one pass when it is a well-formed tools/call request; None for any other message,
    which `rpc.decode_message` then decodes (and reports on) as it does every message."""
    if b'"tools/call"' not in body:
        return None
    try:
        msg = _call_request.decode(body)
    except rpc.UNREADABLE:
        return None
    if (msg.method != "tools/call" or msg.jsonrpc != "2.0" or msg.params is None
            or isinstance(msg.id, bool) or not isinstance(msg.id, str | int)
            or msg.result is not msgspec.UNSET or msg.error is not msgspec.UNSET):
        return None
    return msg


def _params_object(raw: bytes) -> dict[str, Any]:
    """Params as a dict: {} when absent or null (`Dispatcher._decode` has already refused a non-object)."""
    value = _plain.decode(raw) if raw else None
    return value if isinstance(value, dict) else {}


class Dispatcher:
    """Routes JSON-RPC messages to MCP methods; owns nothing but references to the appliance parts."""

    def __init__(
        self,
        registry: ToolRegistry,
        runner: ToolRunner,
        sessions: SessionTable,
        *,
        page_size: int = 100,
        max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
        monitor: Monitor | None = None,
        methods: Mapping[str, Method] | None = None,
        max_subscriptions: int = DEFAULT_MAX_SUBSCRIPTIONS,
    ) -> None:
        self.registry = registry
        self.runner = runner
        self.sessions = sessions
        self.page_size = page_size
        # Deepest `[`/`{` nesting a message may have (server.maxJsonDepth): decoders recurse per level.
        self.max_json_depth = max_json_depth
        # The appliance's Monitor when monitoring is enabled (requests, refusals, lookups; tools: the runner).
        self.monitor = monitor
        self.subscriptions = Subscriptions(max_subscriptions)
        self.tasks = ToolTasks(runner, self.subscriptions)
        self.calls = ToolCalls(registry, runner, monitor, self.tasks)
        # Methods both eras serve the same way (resources, prompts, completion): name -> handler.
        self.methods: dict[str, Method] = dict(methods or {})
        # Messages handled since start, for the "stopped" summary (counted with monitoring off too).
        self.handled = 0
        self._pages: list[dict[str, Any]] | None = None
        self.set_registry(registry)

    def set_registry(self, registry: ToolRegistry) -> None:
        self.registry = registry
        self._pages = None
        self.calls.set_registry(registry)

    @property
    def _tool_pages(self) -> list[dict[str, Any]]:
        # Built by the first tools/list rather than at start-up (the schemas are the costly part).
        if self._pages is None:
            self._pages = [tool.wire() for tool in self.registry.tools()]
        return self._pages

    def reconfigure(self, registry: ToolRegistry, max_json_depth: int) -> None:
        """A reload's registry and depth limit; sessions with an open stream hear tools/list_changed."""
        self.max_json_depth = max_json_depth
        if registry is self.registry:
            return
        before = self._tool_pages
        self.set_registry(registry)
        if self._tool_pages != before:
            self.sessions.broadcast(rpc.notification_bytes("notifications/tools/list_changed", {}))
            self.subscriptions.list_changed("toolsListChanged")

    # ---- entry point -------------------------------------------------------------------------------

    async def handle(self, body: bytes, exch: Inbound) -> Reply:
        self.handled += 1
        monitor = self.monitor
        handle = self._handle if tracing.tracer is None else self._traced
        if monitor is None:
            return await handle(body, exch)
        started = time.perf_counter()
        try:
            return await handle(body, exch)
        finally:
            monitor.record_request(exch.method, time.perf_counter() - started, exch.error)

    async def _traced(self, body: bytes, exch: Inbound) -> Reply:
        return await tracing.request(self._handle, body, exch)

    async def _handle(self, body: bytes, exch: Inbound) -> Reply:
        msg_id: Any = None
        handshake = False
        try:
            if exceeds_depth(body, self.max_json_depth):
                if self.monitor is not None:
                    self.monitor.record_refusal("json_depth")
                raise RpcError(
                    rpc.INVALID_REQUEST,
                    f"JSON nested deeper than {self.max_json_depth} levels (server.maxJsonDepth); "
                    "flatten the request or raise the limit",
                )
            if body.lstrip()[:1] == b"[":
                return await self._batch(body, exch)
            params: Any
            method: str
            call = _tools_call(body)
            if call is not None:
                is_request, msg_id, method, params, raw_params = True, call.id, "tools/call", call.params, b""
                exch.method = method
            else:
                msg = rpc.decode_message(body)
                if msg.method is msgspec.UNSET:
                    return ACCEPTED  # a response to a server request; we send none, so nothing to match
                is_request = msg.id is not msgspec.UNSET
                msg_id = msg.id if is_request else None
                method = msg.method
                exch.method = method if method in KNOWN_METHODS else "other"
                raw_params = bytes(msg.params)
                if method == "tools/call":
                    params = self._decode(_call_params, raw_params)
                else:
                    params = self._decode(_any_params, raw_params)
            meta = params.meta if isinstance(params.meta, dict) else None
            if self._is_modern(meta, method, exch):
                if not is_request:
                    # The 2026-07-28 wire defines no client notifications; a stdio client may still
                    # cancel, which is honoured on its connection.
                    if exch.session is not None:
                        self._notification(method, raw_params, exch.session)
                    return ACCEPTED
                self._modern_ladder(method, params, meta, exch)
                if method == "subscriptions/listen":
                    return await self.subscriptions.listen(msg_id, _params_object(raw_params), meta or {}, exch)
                result = await self._modern(method, msg_id, params, meta or {}, raw_params, exch)
                return Reply(200, rpc.result_bytes(msg_id, self._stamp(result)))
            handshake = True
            return await self._legacy(msg_id, is_request, method, params, meta, raw_params, exch)
        except RpcError as exc:
            exch.error = "server" if exc.code == rpc.INTERNAL_ERROR else "caller"
            if msg_id is None and exc.code not in (rpc.PARSE_ERROR, rpc.INVALID_REQUEST):
                # Errors about notifications have nobody to go to; the transport still acknowledges.
                return ACCEPTED
            status = exc.http_status or rpc.HTTP_STATUS.get(exc.code, 200)
            if handshake and exc.http_status is None and exc.code not in TRANSPORT_ERRORS:
                # Handshake era: an error answering a request is a normal response; 4xx means the transport
                # failed (no session, bad headers, unreadable body), which clients handle differently.
                status = 200
            return Reply(status, rpc.error_bytes(msg_id, exc.code, exc.message, exc.data))
        except (UnicodeDecodeError, RecursionError) as exc:
            # From decoding params deep inside a method (the envelope's own are RpcErrors already).
            exch.error = "caller"
            return Reply(400, rpc.error_bytes(msg_id, rpc.PARSE_ERROR, rpc.parse_error(exc).message))
        except Exception:
            # A bug, not the client's fault: log it for the operator, answer the client in JSON-RPC terms.
            log.exception("unhandled error dispatching %s", exch.method)
            exch.error = "server"
            message = "internal error while handling the request; the server log has the details"
            return Reply(200 if handshake else 500, rpc.error_bytes(msg_id, rpc.INTERNAL_ERROR, message))

    @staticmethod
    def _decode(decoder: msgspec.json.Decoder[Any], raw: bytes) -> Any:
        if not raw or raw == b"null":
            return decoder.decode(b"{}")
        try:
            return decoder.decode(raw)
        except msgspec.ValidationError as exc:
            raise RpcError(rpc.INVALID_PARAMS, f"invalid params: {exc}") from None
        except msgspec.DecodeError as exc:
            # The envelope holds params as raw JSON, so text that is not UTF-8 inside them surfaces here.
            raise rpc.parse_error(exc) from None

    @staticmethod
    def _is_modern(meta: dict[str, Any] | None, method: str, exch: Inbound) -> bool:
        if meta is not None and rpc.META_PROTOCOL_VERSION in meta:
            return True
        if method == "server/discover":
            return True
        headers = exch.headers
        return headers is not None and (headers.get("mcp-protocol-version", "").strip() in rpc.MODERN_VERSIONS)

    # ---- 2026-07-28 --------------------------------------------------------------------------------

    def _modern_ladder(self, method: str, params: Any, meta: dict[str, Any] | None, exch: Inbound) -> str:
        """The envelope and routing-header checks, in the order the reference SDK applies them."""
        if meta is None:
            raise RpcError(
                rpc.INVALID_PARAMS,
                f"params._meta must be an object carrying {rpc.META_PROTOCOL_VERSION!r} and "
                f"{rpc.META_CLIENT_CAPABILITIES!r} (the 2026-07-28 per-request envelope)",
            )
        if rpc.META_PROTOCOL_VERSION not in meta or rpc.META_CLIENT_CAPABILITIES not in meta:
            missing = [k for k in (rpc.META_PROTOCOL_VERSION, rpc.META_CLIENT_CAPABILITIES) if k not in meta]
            raise RpcError(
                rpc.INVALID_PARAMS, f"params._meta is missing the required envelope key(s): {', '.join(missing)}"
            )
        version = meta[rpc.META_PROTOCOL_VERSION]
        if exch.headers is not None:
            name = params.uri if method == "resources/read" else params.name if method in NAMED_METHODS else None
            if method.startswith("tasks/") and "mcp-name" in exch.headers:
                name = params.task_id  # the tasks extension routes on the task id
            check_routing_headers(exch.headers, exch.duplicated, version, method, name)
        if not isinstance(version, str):
            raise RpcError(rpc.INVALID_PARAMS, "the protocol-version envelope value must be a string")
        if version not in rpc.MODERN_VERSIONS:
            raise RpcError(
                rpc.UNSUPPORTED_PROTOCOL_VERSION,
                f"unsupported protocol version {version!r}",
                {"supported": list(rpc.MODERN_VERSIONS), "requested": version},
            )
        return version

    async def _modern(
        self, method: str, msg_id: Any, params: Any, meta: dict[str, Any], raw: bytes, exch: Inbound
    ) -> dict[str, Any]:
        if method == "tools/call":
            level = meta.get(rpc.META_LOG_LEVEL)
            log_level = LOG_LEVELS.index(level) if level in LOG_LEVELS else None
            return await self.calls.call(True, params, meta, exch, log_level, exch.session, msg_id)
        if method.startswith("tasks/"):
            return await self.tasks.handle(method, _params_object(raw), exch.principal, True, meta)
        if method == "tools/list":
            result = self._list_tools(params.cursor)
            result["ttlMs"] = LIST_TTL_MS
            result["cacheScope"] = "public"
            return result
        handler = self.methods.get(method)
        if handler is not None:
            return await handler(MethodCall(_params_object(raw), True, None, exch))
        if method == "server/discover":
            return {
                "supportedVersions": list(rpc.MODERN_VERSIONS),
                "capabilities": {**CAPABILITIES, "extensions": EXTENSION_CAPABILITY},
                "instructions": INSTRUCTIONS,
                "ttlMs": LIST_TTL_MS,
                "cacheScope": "public",
            }
        raise RpcError(rpc.METHOD_NOT_FOUND, f"method {method!r} is not available in protocol 2026-07-28")

    @staticmethod
    def _stamp(result: dict[str, Any]) -> dict[str, Any]:
        result.setdefault("resultType", "complete")  # a task-augmented call answers "task"
        meta = result.setdefault("_meta", {})
        meta[rpc.META_SERVER_INFO] = SERVER_INFO
        return result

    # ---- 2024-11-05 .. 2025-11-25 ------------------------------------------------------------------

    async def _legacy(
        self,
        msg_id: Any,
        is_request: bool,
        method: str,
        params: Any,
        meta: dict[str, Any] | None,
        raw: bytes,
        exch: Inbound,
    ) -> Reply:
        if method == "initialize":
            if not is_request:
                return ACCEPTED
            return self._initialize(msg_id, raw, exch)
        session = self._session_of(exch)
        if not is_request:
            self._notification(method, raw, session)
            return ACCEPTED
        if method == "ping":
            return Reply(200, rpc.result_bytes(msg_id, {}))
        if not session.initialized and exch.headers is None and method != "logging/setLevel":
            # On stdio nothing is known about the client until it says initialize.
            raise RpcError(
                rpc.INVALID_REQUEST,
                "send initialize first, or use the 2026-07-28 per-request _meta envelope",
            )
        if method == "tools/list":
            return Reply(200, rpc.result_bytes(msg_id, self._list_tools(params.cursor)))
        if method == "tools/call":
            result = await self.calls.call(False, params, meta or {}, exch, session.log_level, session, msg_id)
            return Reply(200, rpc.result_bytes(msg_id, result))
        handler = self.methods.get(method)
        if handler is not None:
            result = await handler(MethodCall(_params_object(raw), False, session, exch))
            return Reply(200, rpc.result_bytes(msg_id, result))
        if method.startswith("tasks/") and session.protocol_version == TASKS_VERSION:
            result = await self.tasks.handle(method, _params_object(raw), exch.principal, False, {})
            return Reply(200, rpc.result_bytes(msg_id, result))
        if method == "logging/setLevel":
            level = _params_object(raw).get("level")
            if level not in LOG_LEVELS:
                raise RpcError(rpc.INVALID_PARAMS, f"level must be one of {', '.join(LOG_LEVELS)}; got {level!r}")
            session.log_level = LOG_LEVELS.index(level)
            return Reply(200, rpc.result_bytes(msg_id, {}))
        raise RpcError(rpc.METHOD_NOT_FOUND, f"method {method!r} not found")

    async def _batch(self, body: bytes, exch: Inbound) -> Reply:
        """A JSON-RPC batch: in a 2025-03-26 session every message is handled (at once) and the responses come
        back as one array (202 when all were notifications); elsewhere it is refused."""
        exch.method = "batch"
        items = rpc.decode_any(body)  # unreadable JSON is a parse error whatever the session
        session = exch.session
        if session is None and exch.headers is not None and exch.headers.get("mcp-session-id"):
            session = self._session_of(exch)
        version = session.protocol_version if session is not None else None
        if version != BATCH_VERSION:
            negotiated = f"this session uses {version}" if version else "it has no 2025-03-26 session"
            raise RpcError(
                rpc.INVALID_REQUEST,
                f"JSON-RPC batches are accepted only in sessions that negotiated protocol {BATCH_VERSION} "
                f"({negotiated}); send one message per request",
            )
        if not items:
            raise RpcError(rpc.INVALID_REQUEST, "an empty JSON-RPC batch; send at least one message")

        async def one(item: Any) -> Reply:
            if isinstance(item, dict) and item.get("method") == "initialize":
                msg_id = item.get("id") if isinstance(item.get("id"), str | int) else None
                return Reply(200, rpc.error_bytes(
                    msg_id, rpc.INVALID_REQUEST, "initialize must not be part of a batch; send it alone"
                ))
            # Each message in its own exchange, without in-band notifications: the batch answers as a whole.
            inner = Inbound(headers=exch.headers, duplicated=exch.duplicated, principal=exch.principal,
                            session=exch.session)
            return await self.handle(rpc.encoder.encode(item), inner)

        replies = await asyncio.gather(*(one(item) for item in items))
        bodies = [reply.body for reply in replies if reply.body is not None]
        if not bodies:
            return ACCEPTED
        return Reply(200, b"[" + b",".join(bodies) + b"]")

    def _session_of(self, exch: Inbound) -> Session:
        if exch.session is not None:
            return exch.session
        assert exch.headers is not None, "a transport without headers must supply its session"
        sid = exch.headers.get("mcp-session-id")
        if not sid:
            raise SessionMissing()
        session = self.sessions.get(sid.strip(), exch.principal)
        if session is None:
            raise SessionUnknown()
        version = exch.headers.get("mcp-protocol-version")
        if version is not None and version.strip() not in rpc.HANDSHAKE_VERSIONS:
            raise RpcError(
                rpc.INVALID_REQUEST,
                f"unsupported MCP-Protocol-Version {version.strip()!r}; supported: "
                + ", ".join(rpc.HANDSHAKE_VERSIONS),
            )
        return session

    def _initialize(self, msg_id: Any, raw: bytes, exch: Inbound) -> Reply:
        params = _params_object(raw)
        requested = params.get("protocolVersion")
        if not isinstance(requested, str):
            raise RpcError(rpc.INVALID_PARAMS, "initialize needs params.protocolVersion (a string)")
        version = requested if requested in rpc.HANDSHAKE_VERSIONS else rpc.LATEST_HANDSHAKE
        headers: list[tuple[str, str]] = []
        if exch.session is not None:
            session = exch.session
            session.protocol_version = version
            session.client_info = params.get("clientInfo")
        else:
            session = self.sessions.create(version, params.get("clientInfo"), exch.principal)
            headers.append(("Mcp-Session-Id", session.id))
        capabilities = {**CAPABILITIES, "tasks": HANDSHAKE_CAPABILITY} if version == TASKS_VERSION else CAPABILITIES
        result = {
            "protocolVersion": version,
            "capabilities": capabilities,
            "serverInfo": SERVER_INFO,
            "instructions": INSTRUCTIONS,
        }
        return Reply(200, rpc.result_bytes(msg_id, result), headers)

    @staticmethod
    def _notification(method: str, raw: bytes, session: Session) -> None:
        if method == "notifications/initialized":
            session.initialized = True
        elif method == "notifications/cancelled":
            request_id = _params_object(raw).get("requestId")
            # Only a string or integer can name a request; anything else (a list, say) names none.
            fut = session.inflight.get(request_id) if isinstance(request_id, str | int) else None
            if fut is not None:
                fut.cancel()

    # ---- methods shared by both eras --------------------------------------------------------------

    def _list_tools(self, cursor: Any) -> dict[str, Any]:
        start = 0
        if cursor is not None:
            start = self._decode_cursor(cursor)
        tools = self._tool_pages
        page = tools[start : start + self.page_size]
        result: dict[str, Any] = {"tools": page}
        if start + self.page_size < len(tools):
            result["nextCursor"] = base64.urlsafe_b64encode(f"tools:{start + self.page_size}".encode()).decode()
        return result

    def _decode_cursor(self, cursor: Any) -> int:
        try:
            text = base64.urlsafe_b64decode(str(cursor).encode()).decode()
            kind, _, offset = text.partition(":")
            start = int(offset)
            if kind != "tools" or not 0 <= start < len(self._tool_pages):
                raise ValueError
            return start
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise RpcError(
                rpc.INVALID_PARAMS, "invalid cursor: pass back the nextCursor of a previous tools/list"
            ) from None


class SessionMissing(RpcError):
    """Handshake-era request without Mcp-Session-Id: HTTP 400."""

    def __init__(self) -> None:
        super().__init__(
            rpc.INVALID_REQUEST,
            "missing Mcp-Session-Id header: send initialize first (or use the 2026-07-28 _meta envelope)",
        )


class SessionUnknown(RpcError):
    """Unknown or ended session: HTTP 404 tells the client to initialize again."""

    def __init__(self) -> None:
        super().__init__(rpc.INVALID_REQUEST, "unknown or expired session: initialize a new one", http_status=404)
