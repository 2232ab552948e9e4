"""OpenTelemetry traces: a real `aqe-v3 mcp start` exporting OTLP/HTTP to a receiver this test runs on loopback
(decoded with opentelemetry-proto), the official client continuing its own trace (`_meta.traceparent`) over HTTP
and stdio, the W3C header on raw HTTP, the fleet's spans (pool acquire, agent work carried over the fleet RPC),
outcomes and errors; an in-process server with the SDK's in-memory exporter; and, with tracing off, a server
that never imports opentelemetry."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest import mock

import anyio
import pytest
import uvloop
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from qe_appliance import tracing
from qe_appliance.config import apply_overrides, load_config
from qe_appliance.lifecycle import Server
from tests.conftest import ServerProcess, stdio_command
from tests.fixtures.coverage.samples import python_sample
from tests.ops_traffic import start_workspace_server
from tests.test_http_edges import modern, request

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ---- a real OTLP/HTTP receiver -----------------------------------------------------------------------


class Receiver:
    """POST /v1/traces (OTLP protobuf, gzip or not) on loopback; the spans decoded into plain dicts."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.posts = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_error(404)
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver._add(request)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def _add(self, request: ExportTraceServiceRequest) -> None:
        spans = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append({
                        "name": span.name,
                        "trace": span.trace_id.hex(),
                        "id": span.span_id.hex(),
                        "parent": span.parent_span_id.hex(),
                        "kind": span.kind,
                        "start": span.start_time_unix_nano,
                        "end": span.end_time_unix_nano,
                        "status": span.status.code,  # 0 unset, 1 ok, 2 error
                        "message": span.status.message,
                        "attributes": {a.key: _value(a.value) for a in span.attributes},
                        "service": resource.get("service.name"),
                    })
        with self._lock:
            self.posts += 1
            self.spans.extend(spans)

    def trace(self, trace_id: str, *names: str, timeout: float = 15) -> list[dict[str, Any]]:
        """The spans of `trace_id` once one of each of `names` arrived (`agent *`: a name starting so)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found = [span for span in self.spans if span["trace"] == trace_id]
            if all(_named(found, name) for name in names) or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def _named(spans: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    if name.endswith("*"):
        return by_name(spans, name[:-1])
    return [span for span in spans if span["name"] == name]


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


def otel_env(receiver: Receiver, service: str) -> dict[str, str]:
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": service,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rx = Receiver()
    yield rx
    rx.close()


@pytest.fixture(scope="module")
def traced(receiver: Receiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with mock.patch.dict(os.environ, otel_env(receiver, "aqe-test")):
        server = start_workspace_server(tmp_path_factory.mktemp("traced"))
    yield server
    server.stop()


@contextmanager
def client_span() -> Iterator[tuple[str, str]]:
    """Make a span of ours current, as a traced client would: the official client injects it into each
    request's `_meta` (traceparent). Yields its trace and span ids in hex."""
    trace_id, span_id = secrets.randbits(128) or 1, secrets.randbits(64) or 1
    span = NonRecordingSpan(SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(1)))
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield f"{trace_id:032x}", f"{span_id:016x}"
    finally:
        otel_context.detach(token)


def by_name(spans: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [span for span in spans if span["name"].startswith(prefix)]


SERVER_KIND, INTERNAL_KIND, ERROR = 2, 1, 2


async def test_a_fleet_call_is_one_request_span_with_pool_and_agent_children(
    traced: ServerProcess, receiver: Receiver
) -> None:
    with client_span() as (trace_id, parent_id):
        async with Client(traced.url) as client:
            result = await client.call_tool("qe_coverage_analyze", {"path": "coverage.xml"})
    assert not result.is_error, result.content
    spans = receiver.trace(trace_id, "tools/call qe_coverage_analyze", "pool acquire", "agent *")
    [req] = by_name(spans, "tools/call")
    assert req["name"] == "tools/call qe_coverage_analyze" and req["kind"] == SERVER_KIND
    assert req["parent"] == parent_id and req["service"] == "aqe-test"
    attrs = req["attributes"]
    assert attrs["mcp.method.name"] == "tools/call" and attrs["gen_ai.tool.name"] == "qe_coverage_analyze"
    assert attrs["gen_ai.operation.name"] == "execute_tool" and attrs["mcp.protocol.version"] == "2026-07-28"
    assert attrs["aqe.outcome"] == "ok" and attrs["network.transport"] == "tcp"
    assert attrs["jsonrpc.request.id"] and "error.type" not in attrs and req["status"] != ERROR
    [acquire] = by_name(spans, "pool acquire")
    [work] = by_name(spans, "agent ")
    for child in (acquire, work):
        assert child["parent"] == req["id"] and child["kind"] == INTERNAL_KIND
        assert req["start"] <= child["start"] <= child["end"] <= req["end"], (req, child)
    assert acquire["attributes"]["aqe.agent.id"] == work["attributes"]["aqe.agent.id"]
    assert isinstance(acquire["attributes"]["aqe.pool.hit"], bool)
    fn = work["attributes"]["aqe.compute.fn"]  # the registered @compute function the agent ran
    assert fn.startswith("qe_appliance.tools.") and work["name"] == f"agent {fn.rsplit(':', 1)[-1]}"
    assert acquire["end"] <= work["start"], (acquire, work)  # the agent starts once it has the connection
    assert work["status"] != ERROR


async def test_errors_are_marked_with_their_outcome(traced: ServerProcess, receiver: Receiver) -> None:
    with client_span() as (trace_id, _):
        async with Client(traced.url) as client:
            failed = await client.call_tool("qe_coverage_analyze", {"path": "no-such-report.xml"})
            assert failed.is_error
            with pytest.raises(MCPError):
                await client.call_tool("qe_no_such_tool_at_all", {})
    spans = receiver.trace(trace_id, "tools/call qe_coverage_analyze", "tools/call")
    [bad_input] = [s for s in spans if s["name"] == "tools/call qe_coverage_analyze"]
    assert bad_input["attributes"]["aqe.outcome"] == "caller-error"
    assert bad_input["attributes"]["error.type"] == "tool_error" and bad_input["status"] == ERROR
    assert "no-such-report.xml" in bad_input["message"]
    [unknown] = [s for s in spans if s["name"] == "tools/call"]
    assert unknown["attributes"]["aqe.outcome"] == "caller-error"
    assert unknown["attributes"]["error.type"] == unknown["attributes"]["rpc.response.status_code"] == "-32602"
    assert unknown["status"] == ERROR and "gen_ai.tool.name" not in unknown["attributes"]


async def test_the_handshake_era_session_is_recorded_as_a_digest(traced: ServerProcess, receiver: Receiver) -> None:
    with client_span() as (trace_id, parent_id):
        async with Client(traced.url, mode="legacy") as client:
            await client.call_tool("qe_memory_store", {"key": "traced/1", "value": 1})
    spans = receiver.trace(trace_id, "tools/call qe_memory_store")
    [call] = [s for s in spans if s["name"] == "tools/call qe_memory_store"]
    assert call["parent"] == parent_id and call["attributes"]["mcp.protocol.version"] == "2025-11-25"
    session = call["attributes"]["mcp.session.id"]
    assert len(session) == 32 and all(c in "0123456789abcdef" for c in session)


def test_the_w3c_traceparent_header_is_continued(traced: ServerProcess, receiver: Receiver) -> None:
    trace_id, parent_id = f"{secrets.randbits(128):032x}", f"{secrets.randbits(64):016x}"
    body, headers = modern("tools/call", {"name": "qe_memory_retrieve", "arguments": {"key": "nothing/here"}})
    status, _, raw = request(traced, "POST", body=body, headers={
        **headers, "traceparent": f"00-{trace_id}-{parent_id}-01", "tracestate": "vendor=1"})
    assert status == 200, raw
    [span] = receiver.trace(trace_id, "tools/call qe_memory_retrieve")
    assert span["name"] == "tools/call qe_memory_retrieve" and span["parent"] == parent_id
    assert span["attributes"]["jsonrpc.request.id"] == "1"
    # A message's own _meta.traceparent (MCP's convention) wins over the HTTP request's header.
    meta_trace = f"{secrets.randbits(128):032x}"
    body, headers = modern("tools/list", msg_id=7)
    body["params"]["_meta"]["traceparent"] = f"00-{meta_trace}-{parent_id}-01"
    header = {"traceparent": f"00-{trace_id}-{parent_id}-01"}
    assert request(traced, "POST", body=body, headers={**headers, **header})[0] == 200
    [listed] = receiver.trace(meta_trace, "tools/list")
    assert listed["name"] == "tools/list" and listed["attributes"]["aqe.outcome"] == "ok"
    # Without any context the span starts a trace of its own.
    before = len(receiver.spans)
    assert request(traced, "POST", body=modern("tools/list", msg_id=8)[0], headers=modern("tools/list")[1])[0] == 200
    deadline = time.monotonic() + 10
    while not [s for s in receiver.spans[before:] if s["attributes"].get("jsonrpc.request.id") == "8"]:
        assert time.monotonic() < deadline, "no span for the request without trace context"
        time.sleep(0.05)
    [fresh] = [s for s in receiver.spans[before:] if s["attributes"].get("jsonrpc.request.id") == "8"]
    assert fresh["parent"] == "" and fresh["trace"] not in (trace_id, meta_trace)


async def test_stdio_continues_the_clients_trace(receiver: Receiver, tmp_path: Path) -> None:
    command, args, env = stdio_command(tmp_path)
    # Only the traces endpoint this time: OTLP is the default exporter once an endpoint is named.
    variables = otel_env(receiver, "aqe-stdio")
    del variables["OTEL_TRACES_EXPORTER"], variables["OTEL_EXPORTER_OTLP_ENDPOINT"]
    variables["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = f"{receiver.endpoint}/v1/traces"
    params = StdioServerParameters(command=command, args=args, env={**env, **variables})
    with client_span() as (trace_id, parent_id):
        async with Client(params) as client:
            stored = await client.call_tool("qe_memory_store", {"key": "stdio/1", "value": 1})
            assert not stored.is_error
    [span] = by_name(receiver.trace(trace_id, "tools/call qe_memory_store"), "tools/call")
    assert span["parent"] == parent_id and span["service"] == "aqe-stdio"
    assert span["attributes"]["network.transport"] == "pipe" and span["attributes"]["aqe.outcome"] == "ok"


# ---- in-process, with the SDK's in-memory exporter ----------------------------------------------------


@pytest.fixture
def in_memory(tmp_path: Path) -> Iterator[tuple[str, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(json.dumps({"server": {"port": 0, "stateDir": str(tmp_path / "state"),
                                               "workspaceRoots": [str(python_sample().root)]}}))
    cfg = apply_overrides(load_config(cfg_path))
    tracing.install(provider)
    loop = uvloop.new_event_loop()
    holder: list[Server] = []

    async def serve() -> None:
        holder.append(Server(cfg))
        await holder[0].serve()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not (holder and holder[0].address and holder[0].readiness() is None) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert holder and holder[0].address is not None
        yield f"http://127.0.0.1:{holder[0].address[1]}/mcp", exporter
    finally:
        if holder:
            asyncio.run_coroutine_threadsafe(holder[0].drain_and_stop(2), loop).result(15)
        thread.join(15)
        tracing.install(None)


async def test_in_memory_exporter_sees_the_same_spans(in_memory: tuple[str, InMemorySpanExporter]) -> None:
    url, exporter = in_memory
    with client_span() as (trace_id, parent_id):
        async with Client(url) as client:
            result = await client.call_tool("qe_coverage_analyze", {"path": "coverage.xml"})
    assert not result.is_error
    spans = [s for s in exporter.get_finished_spans() if f"{s.context.trace_id:032x}" == trace_id]
    [req] = [s for s in spans if s.name == "tools/call qe_coverage_analyze"]
    assert req.parent is not None and f"{req.parent.span_id:016x}" == parent_id
    assert req.kind == trace.SpanKind.SERVER and req.attributes is not None
    assert req.attributes["aqe.outcome"] == "ok" and req.attributes["gen_ai.tool.name"] == "qe_coverage_analyze"
    children = {s.name.split(" ")[0]: s for s in spans
                if s.parent is not None and s.parent.span_id == req.context.span_id}
    assert set(children) == {"pool", "agent"}, [s.name for s in spans]


# ---- off, and asked for without the SDK ---------------------------------------------------------------


async def test_with_tracing_off_the_server_never_imports_opentelemetry(tmp_path: Path) -> None:
    # -X importtime writes every module the server (and its agents) import to the log.
    env = {"PYTHONPROFILEIMPORTTIME": "1", "OTEL_SDK_DISABLED": "", "OTEL_TRACES_EXPORTER": "",
           "OTEL_EXPORTER_OTLP_ENDPOINT": "", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ""}
    with mock.patch.dict(os.environ, env):
        server = start_workspace_server(tmp_path)
    try:
        async with Client(server.url) as client:
            assert not (await client.call_tool("qe_coverage_analyze", {"path": "coverage.xml"})).is_error
            assert not (await client.call_tool("qe_memory_store", {"key": "off/1", "value": 1})).is_error
    finally:
        server.stop()
    log = server.log
    assert "import time:" in log and "qe_appliance.tracing" in log and "qe_appliance.fleet.agent" in log
    assert "opentelemetry" not in log


@pytest.mark.parametrize("variables", [
    {"OTEL_TRACES_EXPORTER": "otlp"},
    {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},
])
def test_asked_for_without_the_sdk_warns_once_with_the_fix(
    variables: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    with mock.patch.dict(sys.modules, {"opentelemetry.sdk.trace": None}), caplog.at_level(logging.WARNING):
        tracing.configure(variables)
    assert tracing.tracer is None
    [record] = caplog.records
    assert "pip install 'aqe-mcp[otel]'" in record.getMessage() and "tracing stays off" in record.getMessage()


@pytest.mark.parametrize("variables", [
    {},
    {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},
    {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"},
])
def test_off_unless_asked(variables: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        tracing.configure(variables)
    assert tracing.tracer is None and not caplog.records


def test_an_unsupported_protocol_is_refused_with_the_fix(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        tracing.configure({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert tracing.tracer is None
    assert "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf" in caplog.text



def test_a_reload_keeps_tracing(traced: ServerProcess, receiver: Receiver) -> None:
    # Traces are configured from the environment at start; re-reading the YAML leaves them on.
    traced.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reload:" not in traced.log:
        assert time.monotonic() < deadline, traced.log[-2000:]
        time.sleep(0.05)
    trace_id, parent_id = f"{secrets.randbits(128):032x}", f"{secrets.randbits(64):016x}"
    body, headers = modern("tools/call", {"name": "qe_coverage_analyze", "arguments": {"path": "coverage.xml"}})
    header = {"traceparent": f"00-{trace_id}-{parent_id}-01"}
    status, _, raw = request(traced, "POST", body=body, headers={**headers, **header})
    assert status == 200 and b'"isError":false' in raw, raw
    spans = receiver.trace(trace_id, "tools/call qe_coverage_analyze", "pool acquire", "agent *")
    assert {span["name"].split(" ")[0] for span in spans} == {"tools/call", "pool", "agent"}


async def test_orchestrated_subtasks_stay_in_their_callers_trace(traced: ServerProcess, receiver: Receiver) -> None:
    # Two orchestrations at once share the subtask queue; a subtask started when the other's finished still
    # belongs to its own caller's trace.
    traces: dict[str, str] = {}

    async def orchestrate(label: str) -> None:
        with client_span() as (trace_id, _):
            traces[label] = trace_id
            async with Client(traced.url) as client:
                done = await client.call_tool("qe_task_orchestrate", {
                    "task": {"tool": "qe_coverage_analyze", "inputs": [{"path": "coverage.xml"}] * 4},
                    "strategy": "parallel", "wait": True})
                assert not done.is_error and done.structured_content["task"]["completed"] == 4, done.content

    async with anyio.create_task_group() as group:
        group.start_soon(orchestrate, "a")
        group.start_soon(orchestrate, "b")
    for trace_id in traces.values():
        deadline = time.monotonic() + 15
        while True:
            spans = receiver.trace(trace_id, "tools/call qe_task_orchestrate")
            work = by_name(spans, "agent ")
            if len(work) >= 4 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        [req] = [s for s in spans if s["name"] == "tools/call qe_task_orchestrate"]
        assert len(work) == 4 and len(by_name(spans, "pool acquire")) == 4, [s["name"] for s in spans]
        assert all(span["parent"] == req["id"] for span in work)
