"""Long fuzzing run against a real server: the generators of tests/test_fuzz.py, for minutes instead of seconds.

    /work/venv/bin/python bench/fuzz_bench.py [--seconds 60] [--seed N] [--parts requests,reports]
                                              [--report-max-kib 4096]

`requests`: raw HTTP bytes and JSON-RPC bodies of both protocol eras while a well-behaved control client
keeps calling tools/list on its own connection. Prints what was fuzzed and what came back; exits non-zero on
any crash, hang, invalid response, leaked traceback or control-client failure.

`reports`: the hostile report shapes of tests/adversarial_reports.py at doubling sizes up to
--report-max-kib, each parsed by the server (qe_coverage_analyze by path, qe_quality_gate junitXml) while
/healthz is polled. Prints the time per MiB at each size and the slowest /healthz answer; exits non-zero when
the time per MiB grows more than 3x from the smallest size to the largest (a scan that is not linear) or
/healthz waited more than 0.5 s.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import given, seed, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.adversarial_reports import ADVERSARIAL  # noqa: E402
from tests.conftest import ServerProcess, start_server  # noqa: E402
from tests.test_fuzz import (  # noqa: E402
    FUZZ_CONFIG,
    HANG,
    LEAK,
    LIVE,
    Control,
    open_session,
    raw_requests,
    rpc_bodies,
    run_case,
)
from tests.test_hostile_reports import HealthProbe  # noqa: E402
from tests.test_http_edges import modern, request  # noqa: E402

CONTROL_INTERVAL_S = 0.05


class _TimeUp(Exception):
    """Ends the hypothesis run when the time budget is spent."""


@dataclass
class Tally:
    fuzzed: dict[str, int] = field(default_factory=lambda: {"raw": 0, "modern": 0, "legacy": 0})
    answered: int = 0
    responses: int = 0
    closed_by_server: int = 0
    resets: int = 0
    crashes: int = 0
    hangs: int = 0
    invalid: int = 0
    tracebacks: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def note(self, kind: str, problem: str, sent: bytes) -> None:
        if len(self.examples) < 10:
            self.examples.append(f"[{kind}] {problem}\n    sent: {sent[:300]!r}")


class ControlLoop(threading.Thread):
    """Calls tools/list every CONTROL_INTERVAL_S for the whole run; its latencies say whether others were served."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(daemon=True)
        self.control = Control(host, port)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(CONTROL_INTERVAL_S):
            self.control.check()
        self.control.close()


def _start(directory: Path) -> ServerProcess:
    directory.mkdir(parents=True)
    return start_server(directory, FUZZ_CONFIG)


def run(seconds: float, seed_value: int) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="aqe-fuzz-"))
    srv = _start(tmp / "run0")
    host, port = srv.host, int(srv.port)
    session = open_session(host, port)
    control = ControlLoop(host, port)
    control.start()
    tally = Tally()
    servers: list[ServerProcess] = [srv]
    end = time.monotonic() + seconds

    def restart() -> None:
        # Keep fuzzing after a crash so one bug does not hide the next; the control client follows.
        nonlocal srv, host, port, session
        srv = _start(tmp / f"run{len(servers)}")
        servers.append(srv)
        host, port = srv.host, int(srv.port)
        session = open_session(host, port)
        control.control.host, control.control.port = host, port
        control.control.close()

    cases = st.one_of(
        st.tuples(st.just("raw"), raw_requests()),
        st.tuples(st.just("modern"), rpc_bodies("modern")),
        st.tuples(st.just("legacy"), rpc_bodies("legacy")),
    )

    @settings(LIVE, max_examples=10**9, derandomize=False)
    @seed(seed_value)
    @given(case=cases)
    def fuzz(case: tuple[str, Any]) -> None:
        if time.monotonic() > end:
            raise _TimeUp
        kind, data = case
        tally.fuzzed[kind] += 1
        payload, out, problems = run_case((host, port), session, kind, data)
        tally.answered += bool(out.responses)
        tally.responses += len(out.responses)
        tally.closed_by_server += out.closed_by_server
        tally.resets += out.reset
        tally.hangs += out.hang
        for reply in out.responses:
            tally.statuses[reply.status] = tally.statuses.get(reply.status, 0) + 1
            tally.tracebacks += bool(LEAK.search(reply.body))
        invalid = [p for p in problems if p != HANG]
        tally.invalid += bool(invalid)
        if problems:
            tally.note(kind, "; ".join(problems), payload)
        if srv.proc.poll() is not None:
            tally.crashes += 1
            tally.note(kind, f"server died (exit {srv.proc.returncode})", payload)
            restart()

    started = time.monotonic()
    try:
        fuzz()
    except _TimeUp:
        pass
    elapsed = time.monotonic() - started
    control.stop.set()
    control.join(10)
    log_tracebacks = sum(s.log.count("Traceback") + s.log.count("unhandled error") for s in servers)
    for s in servers:
        s.stop()
    return report(tally, control.control, log_tracebacks, elapsed, seed_value, tmp)


def report(tally: Tally, control: Control, log_tracebacks: int, elapsed: float, seed_value: int, tmp: Path) -> int:
    fuzzed = sum(tally.fuzzed.values())
    latencies = sorted(control.latencies)
    p50 = statistics.median(latencies) * 1000 if latencies else float("nan")
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000 if latencies else float("nan")
    print(f"# fuzz_bench: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"# {platform.python_implementation()} {platform.python_version()}, {platform.machine()}, seed {seed_value}")
    print(
        f"requests fuzzed            {fuzzed} in {elapsed:.1f} s ({fuzzed / elapsed:.0f}/s): "
        + ", ".join(f"{k} {v}" for k, v in tally.fuzzed.items())
    )
    print(f"answered                   {tally.answered} connections, {tally.responses} responses")
    print("statuses                   " + ", ".join(f"{k}: {v}" for k, v in sorted(tally.statuses.items())))
    print(f"closed by server           {tally.closed_by_server} (reset {tally.resets})")
    print(f"crashes (server died)      {tally.crashes}")
    print(f"hangs (no answer in 5 s)   {tally.hangs}")
    print(f"invalid responses          {tally.invalid}")
    print(f"tracebacks                 {tally.tracebacks} in responses, {log_tracebacks} in the server log")
    print(
        f"control client             {len(latencies)} tools/list served, {len(control.failures)} failed, "
        f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"
    )
    for example in tally.examples:
        print(example)
    for failure in control.failures[:5]:
        print(f"[control] {failure}")
    bad = tally.crashes + tally.hangs + tally.invalid + tally.tracebacks + log_tracebacks + len(control.failures)
    if bad:
        print(f"FAILED: server logs kept in {tmp}")
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if latencies else 1


def reports(max_kib: int) -> int:
    """Hostile reports of doubling size through a real server; see the module docstring."""
    tmp = Path(tempfile.mkdtemp(prefix="aqe-fuzz-reports-"))
    root = tmp / "reports"
    root.mkdir()
    (tmp / "server").mkdir()
    srv = start_server(
        tmp / "server", {"server": {"workspaceRoots": [str(root)], "maxBodyBytes": 1 << 20}, **_REPORT_TIMEOUTS}
    )
    sizes = [64 * 2**i for i in range(12) if 64 * 2**i <= max_kib]
    print(f"# fuzz_bench reports: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"{'input':<32} " + " ".join(f"{size:>7} KiB" for size in sizes) + "   growth  /healthz max")
    bad = 0
    try:
        for name, (make, kind) in sorted(ADVERSARIAL.items()):
            per_mib: list[float] = []
            slowest = 0.0
            for size in sizes:
                path = root / f"{name}-{size}"
                path.write_bytes(make(size * 1024))
                tool, arguments = (
                    ("qe_coverage_analyze", {"path": path.name})
                    if kind == "coverage"
                    else ("qe_quality_gate", {"inputs": {"junitXml": path.name}, "policy": {"maxFailedTests": 0}})
                )
                body, headers = modern("tools/call", {"name": tool, "arguments": arguments})
                with HealthProbe(srv) as probe:
                    started = time.perf_counter()
                    status, _, _ = request(srv, "POST", body=body, headers=headers)
                    seconds = time.perf_counter() - started
                assert status == 200
                per_mib.append(seconds / (path.stat().st_size / 2**20))
                slowest = max(slowest, probe.slowest)
                path.unlink()
            growth = per_mib[-1] / per_mib[0]
            failed = growth > 3 or slowest > 0.5
            bad += failed
            print(
                f"{name:<32} "
                + " ".join(f"{value * 1000:>7.0f} ms" for value in per_mib)
                + f"   {growth:5.2f}x  {slowest * 1000:7.1f} ms{'  FAILED' if failed else ''}"
            )
        print("(per size: server time per MiB of report, the call's round trip included)")
    finally:
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if bad else 0


_REPORT_TIMEOUTS = {"tools": {name: {"timeoutMs": 120_000} for name in ("qe_coverage_analyze", "qe_quality_gate")}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to fuzz (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed, for a reproducible run (default 0)")
    parser.add_argument("--parts", default="requests,reports", help="requests, reports or both (default)")
    parser.add_argument("--report-max-kib", type=int, default=4096, help="largest hostile report (default 4096)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    failed = 0
    if "requests" in parts:
        failed |= run(args.seconds, args.seed)
    if "reports" in parts:
        failed |= reports(args.report_max_kib)
    return failed


if __name__ == "__main__":
    sys.exit(main())
