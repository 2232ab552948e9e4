"""What tracing costs on the fleet path: server CPU per fleet call (Fleet.run of an echo on a real agent) with
tracing off, on with spans dropped by a no-op exporter (the SDK's span cost), and on exporting OTLP/HTTP to a
receiver in another process (the whole cost, export thread included). The HTTP path: bench/http_ab.py.

    .venv/bin/python bench/tracing_bench.py [--calls 3000] [--rounds 4]

CPU is this process's (time.process_time: the event loop and the exporter's thread); the agent's is apart.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fleet_bench import CATEGORY, MODULE, echo, make_fleet  # noqa: E402
from qe_appliance import tracing  # noqa: E402

# A receiver that answers every OTLP POST with 200, in its own process so its CPU is not counted.
SINK = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Sink(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
"""


def provider(mode: str, endpoint: str) -> Any:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    exporter: SpanExporter
    if mode == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")
    else:
        exporter = Drop()
    traced = TracerProvider()
    traced.add_span_processor(BatchSpanProcessor(exporter))
    return traced


async def calls_cpu_us(fleet: Any, calls: int, traced: Any = None) -> float:
    """CPU per call of `calls` fleet calls, traced by `traced` (None: off), its last batch's export included."""
    fn = f"{MODULE}:{echo.__qualname__}"
    payload = {"file": "src/app.py", "lines": list(range(50))}
    tracing.install(traced)
    started = time.process_time()
    try:
        for _ in range(calls):
            if tracing.tracer is None:
                await fleet.run(CATEGORY, fn, payload, 10, idempotent=True)
            else:
                # As a request would: the fleet's spans are children of the request's span.
                with tracing.tracer.start_as_current_span("tools/call bench"):
                    await fleet.run(CATEGORY, fn, payload, 10, idempotent=True)
    finally:
        tracing.install(None)
        if traced is not None:
            traced.shutdown()
    return (time.process_time() - started) / calls * 1e6


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    print(f"command: {shlex.join([os.path.relpath(sys.executable), *sys.argv])}")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = subprocess.Popen([sys.executable, "-c", SINK, str(port)])
    endpoint = f"http://127.0.0.1:{port}"
    results: dict[str, list[float]] = {"off": [], "drop": [], "otlp": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            fleet = make_fleet(Path(tmp), 1, min_conns=1)
            await fleet.start()
            try:
                await calls_cpu_us(fleet, 200)  # warm-up
                for n in range(args.rounds):
                    modes = list(results) if n % 2 == 0 else list(reversed(results))
                    for mode in modes:
                        traced = None if mode == "off" else provider(mode, endpoint)
                        results[mode].append(await calls_cpu_us(fleet, args.calls, traced))
                        print(f"round {n + 1} {mode}: {results[mode][-1]:.1f} us CPU per fleet call", flush=True)
            finally:
                await fleet.stop(5)
    finally:
        sink.terminate()
        sink.wait(5)
    for mode, values in results.items():
        print(f"{mode}: median {statistics.median(values):.1f} us CPU per fleet call "
              f"({args.rounds} rounds of {args.calls} calls)")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
