"""OpenTelemetry traces, off unless the standard OTEL_* variables ask for them (see README, "Tracing").

One SERVER span per MCP message (`tools/call qe_coverage_analyze`), named and attributed after the
OpenTelemetry conventions for MCP, continuing the caller's trace (`params._meta.traceparent`, else the HTTP
`traceparent` header); under it a span for each pool acquire and each piece of agent work.

Agents do not export spans themselves: the fleet RPC carries the traceparent to the agent, the agent times
its work and returns the times with the result, and the server records the span. One exporter per server,
nothing to set up in forked agents, and no span lost when an agent is killed or exits with os._exit.

Nothing here imports opentelemetry until `configure` finds tracing asked for: with tracing off, the request
path pays one `tracing.tracer is None` test and the server never loads the SDK.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import msgspec

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import SpanKind, StatusCode, Tracer
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from qe_appliance.fleet import rpc
    from qe_appliance.fleet.pool import AgentConnection, ConnectionPool
    from qe_appliance.mcp.inbound import Inbound, Reply

log = logging.getLogger("aqe_mcp.tracing")



class _Api(msgspec.Struct, frozen=True):
    """What the spans need of the OpenTelemetry API, imported once when tracing is turned on."""

    w3c: TraceContextTextMapPropagator
    server: SpanKind
    internal: SpanKind
    error: StatusCode


# The tracer when tracing is on, else None: the one thing the request path looks at.
tracer: Tracer | None = None
_provider: TracerProvider | None = None
_api: _Api

INSTALL_HINT: Final = "pip install 'aqe-mcp[otel]'"
_ON = ("otlp", "console")


def configure(environ: Mapping[str, str] = os.environ) -> None:
    """At process start: turn tracing on when the environment asks for it and the SDK is installed.

    Asked for: OTEL_TRACES_EXPORTER lists `otlp` (or `console`, spans on stderr), or it is unset and an
    OTLP endpoint variable is set (OTLP is the specification's default exporter). OTEL_SDK_DISABLED=true
    and OTEL_TRACES_EXPORTER=none keep it off. The exporter, sampler, batch processor and resource read
    their own variables (OTEL_EXPORTER_OTLP_*, OTEL_TRACES_SAMPLER, OTEL_BSP_*, OTEL_SERVICE_NAME)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return
    exporters = [name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip()]
    if not exporters and any(environ.get(key) for key in ("OTEL_EXPORTER_OTLP_ENDPOINT",
                                                           "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        exporters = ["otlp"]
    unknown = [name for name in exporters if name not in (*_ON, "none")]
    if unknown:
        log.warning("OTEL_TRACES_EXPORTER=%s: unknown exporter(s) %s ignored; aqe-mcp exports with otlp "
                    "(http/protobuf) or console", environ["OTEL_TRACES_EXPORTER"], ", ".join(unknown))
    wanted = [name for name in exporters if name in _ON]
    if not wanted:
        return
    protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip()
    if "otlp" in wanted and protocol != "http/protobuf":
        log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported: aqe-mcp exports OTLP over http/protobuf "
                    "(set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf and the collector's HTTP port, 4318); "
                    "tracing stays off", protocol)
        return
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    except ImportError as exc:
        log.warning("traces asked for (OTEL_TRACES_EXPORTER=%s) but the OpenTelemetry SDK is not installed "
                    "(%s): %s; tracing stays off", ",".join(wanted), exc, INSTALL_HINT)
        return
    exporter: SpanExporter
    try:
        if "otlp" in wanted:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        else:
            exporter = ConsoleSpanExporter(out=sys.stderr)  # stdout is the stdio transport's
    except ImportError as exc:
        log.warning("traces asked for (OTEL_TRACES_EXPORTER=otlp) but the OTLP/HTTP exporter is not installed "
                    "(%s): %s; tracing stays off", exc, INSTALL_HINT)
        return
    from qe_appliance import SERVER_NAME, __version__

    resource = Resource.create({"service.version": __version__})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVER_NAME}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    install(provider)
    log.info("tracing on: %s spans of service %s (OTEL_* variables)", ",".join(wanted),
             resource.attributes.get("service.name"))


def install(provider: TracerProvider | None) -> None:
    """Trace with `provider` (None: off). `configure` calls it; tests give one with an in-memory exporter."""
    global tracer, _provider, _api
    if provider is not None:
        from opentelemetry.trace import SpanKind, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        _api = _Api(TraceContextTextMapPropagator(), SpanKind.SERVER, SpanKind.INTERNAL, StatusCode.ERROR)
    _provider = provider
    tracer = None if provider is None else provider.get_tracer("qe_appliance")


def shutdown() -> None:
    """At exit: send the spans still batched, then stop (bounded by the exporter's timeout)."""
    provider = _provider
    install(None)
    if provider is not None:
        provider.shutdown()


# ---- one MCP message -------------------------------------------------------------------------------


class _Meta(msgspec.Struct):
    traceparent: Any = None
    tracestate: Any = None
    protocol_version: Any = msgspec.field(default=None, name="io.modelcontextprotocol/protocolVersion")


class _Params(msgspec.Struct):
    meta: _Meta | None = msgspec.field(default=None, name="_meta")


class _Peek(msgspec.Struct):
    """What the span needs before the dispatcher has read the message: the request id and the trace context."""

    id: Any = None
    params: _Params | None = None


class _ErrorBody(msgspec.Struct):
    code: Any = None
    message: Any = None


class _ErrorReply(msgspec.Struct):
    error: _ErrorBody | None = None


_peek = msgspec.json.Decoder(_Peek)
_error_reply = msgspec.json.Decoder(_ErrorReply)

Handle = Callable[[bytes, "Inbound"], Awaitable["Reply"]]


async def request(handle: Handle, body: bytes, exch: Inbound) -> Reply:
    """Run `handle(body, exch)` (the dispatcher) inside the message's SERVER span."""
    assert tracer is not None
    api = _api
    try:
        peeked = _peek.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        peeked = _Peek()  # the dispatcher says what is wrong with it; the span still records the answer
    meta = peeked.params.meta if peeked.params is not None else None
    carrier: Mapping[str, str] = {}
    if meta is not None and isinstance(meta.traceparent, str):
        # MCP's convention: the context travels with each message, so it wins over the HTTP request's.
        carrier = {"traceparent": meta.traceparent}
        if isinstance(meta.tracestate, str):
            carrier["tracestate"] = meta.tracestate
    elif exch.headers is not None:
        carrier = exch.headers
    parent = api.w3c.extract(carrier) if carrier else None
    attributes: dict[str, Any] = {"network.transport": "pipe" if exch.headers is None else "tcp"}
    if isinstance(peeked.id, str | int) and not isinstance(peeked.id, bool):
        attributes["jsonrpc.request.id"] = str(peeked.id)
    version = meta.protocol_version if meta is not None else None
    if version is None and exch.headers is not None:
        version = exch.headers.get("mcp-protocol-version")
    if version is None and exch.session is not None:
        version = exch.session.protocol_version
    if isinstance(version, str):
        attributes["mcp.protocol.version"] = version.strip()
    with tracer.start_as_current_span("mcp", context=parent, kind=api.server, attributes=attributes,
                                      record_exception=False, set_status_on_exception=False) as span:
        reply = await handle(body, exch)
        method, tool = exch.method, exch.tool
        span.update_name(f"{method} {tool}" if tool else method)
        done: dict[str, Any] = {"mcp.method.name": method}
        session = exch.headers.get("mcp-session-id") if exch.headers is not None else None
        session = session or next((value for key, value in reply.headers if key.lower() == "mcp-session-id"), None)
        if session:
            # A digest: the id itself lets whoever holds it (and the token) use the session.
            done["mcp.session.id"] = hashlib.sha256(session.strip().encode()).hexdigest()[:32]
        if tool:
            done["gen_ai.tool.name"] = tool
            done["gen_ai.operation.name"] = "execute_tool"
        call = exch.call
        if exch.error is not None:
            # A JSON-RPC error answered the request: its code is the error type.
            error = _reply_error(reply.body)
            code = str(error.code) if error is not None else str(reply.status)
            done.update({"aqe.outcome": f"{exch.error}-error", "error.type": code, "rpc.response.status_code": code})
            span.set_status(api.error, error.message if error is not None and
                            isinstance(error.message, str) else None)
        elif call is not None:
            done["aqe.outcome"] = call.outcome
            if call.mode:
                done["aqe.tool.mode"] = call.mode
            if not call.ok:
                # An isError result: the caller's mistake or the server's fault, told apart by aqe.outcome.
                done["error.type"] = "tool_error"
                span.set_status(api.error, call.message[:500])
        else:
            done["aqe.outcome"] = "ok"
        span.set_attributes(done)
    return reply


def _reply_error(body: bytes | None) -> _ErrorBody | None:
    if not body:
        return None
    try:
        return _error_reply.decode(body).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


# ---- the fleet -------------------------------------------------------------------------------------


async def acquire(pool: ConnectionPool, agent_id: str, timeout_s: float) -> AgentConnection:
    """pool.acquire in a `pool acquire` span: which agent, and whether a warm connection served it."""
    assert tracer is not None
    api = _api
    with tracer.start_as_current_span("pool acquire", attributes={"aqe.agent.id": agent_id},
                                      record_exception=False, set_status_on_exception=False) as span:
        hits = pool.hits
        try:
            conn = await pool.acquire(agent_id, timeout_s)
        except BaseException as exc:
            span.set_attribute("error.type", type(exc).__qualname__)
            span.set_status(api.error, str(exc))
            raise
        span.set_attribute("aqe.pool.hit", pool.hits > hits)
        return conn


def traceparent() -> str:
    """The W3C traceparent of the current span, for the fleet RPC message."""
    carrier: dict[str, str] = {}
    _api.w3c.inject(carrier)
    return carrier.get("traceparent", "")


async def agent_work(call: Awaitable[rpc.Result], trace: str, agent_id: str, fn: str) -> rpc.Result:
    """Await the agent's answer and record its work as a child of `trace`: the agent's own start and end
    times when it answered, else from sending to the failure (timeout, crash, cancellation)."""
    assert tracer is not None
    api = _api
    context = api.w3c.extract({"traceparent": trace})
    attributes = {"aqe.agent.id": agent_id, "aqe.compute.fn": fn}
    name = f"agent {fn.rsplit(':', 1)[-1]}"
    sent = time.time_ns()
    try:
        result = await call
    except BaseException as exc:
        span = tracer.start_span(name, context=context, kind=api.internal, attributes=attributes,
                                 start_time=sent)
        span.set_attribute("error.type", type(exc).__qualname__)
        span.set_status(api.error, str(exc) or f"{type(exc).__name__} while {agent_id} ran {fn}")
        span.end()
        raise
    started = result.started_ns or sent
    span = tracer.start_span(name, context=context, kind=api.internal, attributes=attributes,
                             start_time=started)
    if not result.ok:
        span.set_attribute("error.type", "agent_error")
        span.set_status(api.error, result.error[:500])
    span.end(end_time=max(result.ended_ns or time.time_ns(), started))
    return result
