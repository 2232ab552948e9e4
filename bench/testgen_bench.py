"""Test-generation benchmark: qe_test_generate end to end over HTTP, and the pass rate of what it writes.

1. Latency: a server whose workspace root is tests/fixtures/testgen is called one request at a time over a
   keep-alive connection for shopkit/pricing.py (312 lines), without verify: by path in the default unit
   style, by path with style both, and with the same file sent inline. Client wall time per call, after
   warm-up calls that give every agent its parse cache.
   Every row is of the static generator (`oracle: static`); bench/testgen_vs_pynguin.py measures the
   observed one.

2. Pass rate: every fixture module (the shopkit package and the standard-library copies) with verify, in
   the unit style and with both: how many generated tests pytest passes on the agent.

Run: `python bench/testgen_bench.py` (`--help` for the knobs).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

import http_bench
from http_bench import BenchError
from memory_bench import McpClient

if str(http_bench.REPO) not in sys.path:
    sys.path.insert(0, str(http_bench.REPO))

from tests.fixtures.testgen.samples import MODULES, ROOT  # noqa: E402

BENCH_MODULE = "shopkit/pricing.py"
TARGET_MS = 500.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=100, help="timed calls per latency row (default 100)")
    parser.add_argument("--warmup", type=int, default=6, help="untimed calls before each row (default 6)")
    return parser.parse_args(argv)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def latency(client: McpClient, label: str, arguments: dict[str, Any], calls: int, warmup: int) -> str:
    for _ in range(warmup):
        client.call("qe_test_generate", arguments)
    samples = []
    tests = 0
    for _ in range(calls):
        elapsed, result = client.call("qe_test_generate", arguments)
        samples.append(elapsed)
        tests = len(result["tests"])
    p95 = percentile(samples, 0.95)
    verdict = "ok" if p95 <= TARGET_MS else f"OVER {TARGET_MS:g} ms"
    return (
        f"| {label} | {tests} | {calls} | {percentile(samples, 0.5):.1f} | {p95:.1f} | "
        f"{percentile(samples, 0.99):.1f} | < {TARGET_MS:g} ms {verdict} |"
    )


def pass_rate(client: McpClient, module: str, style: str) -> tuple[str, int, int]:
    elapsed, result = client.call(
        "qe_test_generate", {"path": module, "style": style, "verify": True, "oracle": "static"}
    )
    run = result["verification"]
    tests = len(result["tests"])
    broken = run["failed"] + run["errors"]
    kinds: dict[str, list[int]] = {}
    for test in result["tests"]:
        kinds.setdefault(test["kind"], [0, 0])[test["status"] == "passed"] += 1
    worst = max(kinds, key=lambda kind: kinds[kind][0] / sum(kinds[kind])) if broken else "-"
    line = (
        f"| {module} | {style} | {tests} | {run['passed']} | {broken} | {run['notRun']} | "
        f"{100 * run['passed'] / tests:.1f}% | {run['seconds']:.2f} | {elapsed:.2f} | {worst} |"
    )
    return line, run["passed"], tests


def run(workdir: Path, calls: int, warmup: int) -> None:
    port = http_bench.free_port()
    state = workdir / "state"
    state.mkdir()
    config = http_bench.write_config(state, port)
    # The bench's own loopback server runs the generated tests of its own fixtures: no token needed.
    config.write_text(
        config.read_text() + f"  workspaceRoots: [{str(ROOT)!r}]\n  allowUnauthenticatedCodeExecution: true\n"
    )
    command = http_bench.ours_command(config, port)
    print(shlex.join(command), flush=True)
    server = http_bench.start_server("testgen", command, port, workdir)
    try:
        http_bench.wait_ready(server)
        client = McpClient(port)
        try:
            source = (ROOT / BENCH_MODULE).read_text()
            header = f"request ({BENCH_MODULE}, {len(source.splitlines())} lines)"
            print(f"\n| {header} | tests | calls | p50 ms | p95 ms | p99 ms | target |")
            print("|---|---:|---:|---:|---:|---:|---|")
            rows = (
                ("by path, style unit", {"path": BENCH_MODULE, "oracle": "static"}),
                ("by path, style both", {"path": BENCH_MODULE, "style": "both", "oracle": "static"}),
                (
                    "inline source, style unit",
                    {"source": source, "module": "shopkit.pricing", "oracle": "static"},
                ),
            )
            for label, arguments in rows:
                print(latency(client, label, arguments, calls, warmup), flush=True)
            pass_rates(client)
        finally:
            client.close()
    finally:
        http_bench.stop_server(server)


def pass_rates(client: McpClient) -> None:
    columns = "tests | passed | failed | not run | pass rate | pytest s | call s | kind failing most"
    print(f"\n| module | style | {columns} |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    totals = {"unit": [0, 0], "both": [0, 0]}
    for module in MODULES:
        for style in ("unit", "both"):
            line, passed, tests = pass_rate(client, module, style)
            totals[style][0] += passed
            totals[style][1] += tests
            print(line, flush=True)
    for style, (passed, tests) in totals.items():
        print(f"all modules, style {style}: {passed} of {tests} passed ({100 * passed / tests:.1f}%)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    with (
        tempfile.TemporaryDirectory(prefix="aqe-testgen-bench-") as workdir,
        http_bench.interrupt_on_sigterm(),
    ):
        try:
            run(Path(workdir), args.calls, args.warmup)
        except (BenchError, KeyboardInterrupt) as exc:
            print(f"error: {exc}" if isinstance(exc, BenchError) else "interrupted", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
