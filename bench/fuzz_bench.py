"""Long fuzzing run against a real server: the generators of tests/test_fuzz.py, for minutes instead of seconds.

    .venv/bin/python bench/fuzz_bench.py [--seconds 60] [--seed N] [--parts requests,reports]
                                         [--report-max-kib 4096]

`requests`: raw HTTP bytes and JSON-RPC bodies of both protocol eras while a well-behaved control client keeps
calling tools/list on its own connection. Interleaved with them, the wire edges of issue 17, each held to its
exact expected answer: well-formed requests pipelined ahead of one the server refuses (all answered in order,
then the refusal, then close), upgrade offers with and without a body (ignored, served as HTTP/1.1),
Expect: 100-continue (the 100 before the body unless the request is refused anyway) and header floods (431
past 100 fields or maxHeaderBytes). Prints what was fuzzed and what came back; exits non-zero on any crash,
hang, invalid or unexpected response, leaked traceback or control-client failure.

`reports`: the hostile report shapes of tests/adversarial_reports.py at doubling sizes up to
--report-max-kib, each parsed by the server (qe_coverage_analyze by path, qe_quality_gate junitXml) while
/healthz is polled. Prints the time per MiB at each size and the slowest /healthz answer; exits non-zero when
the time per MiB grows more than 3x from the smallest size to the largest (a scan that is not linear) or
/healthz waited more than 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import socket
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
    Outcome,
    ResponseReader,
    exchange,
    open_session,
    raw_requests,
    reply_problems,
    rpc_bodies,
    run_case,
)
from tests.test_hostile_reports import HealthProbe  # noqa: E402
from tests.test_http_edges import modern, request  # noqa: E402
from tests.test_http_hardening import H2C_OFFER, head, post, refused_requests  # noqa: E402

CONTROL_INTERVAL_S = 0.05
# The fuzzed server's limits (the defaults: FUZZ_CONFIG sets only timeouts).
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_HEADER_FIELDS = 100
HARDENING_KINDS = ("pipelined-refusal", "upgrade", "expect", "flood")
# How long an Expect: 100-continue client waits for the 100 before sending its body anyway (curl: 1 s).
CONTINUE_WAIT_S = 1.0


class _TimeUp(Exception):
    """Ends the hypothesis run when the time budget is spent."""


@dataclass
class Tally:
    fuzzed: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("raw", "modern", "legacy", *HARDENING_KINDS), 0)
    )
    answered: int = 0
    responses: int = 0
    closed_by_server: int = 0
    resets: int = 0
    crashes: int = 0
    hangs: int = 0
    invalid: int = 0
    tracebacks: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    # Hardening cases whose answers were not exactly the expected ones (statuses, order, close).
    unexpected: int = 0
    continue_waits: list[float] = field(default_factory=list)
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


# ---- the wire edges of issue 17, each with the exact answer it must get ---------------------------------------


@dataclass
class Case:
    """Bytes for one connection and what must come back: these statuses in order, then (if `closes`) EOF."""

    payload: bytes
    statuses: list[int]
    ids: list[int | None]
    closes: bool
    expect_continue: bytes = b""  # set: send `payload` (a head), wait for 100 Continue, then send this body


def _valid(draw: st.DrawFn, msg_id: int) -> tuple[bytes, int | None]:
    """A well-formed keep-alive request and the JSON-RPC id its answer carries (None for a probe)."""
    kind = draw(st.sampled_from(["list", "retrieve", "healthz"]))
    if kind == "healthz":
        return head("GET", "/healthz", []), None
    if kind == "list":
        body, hdrs = modern("tools/list", msg_id=msg_id)
    else:
        body, hdrs = modern("tools/call", {"name": "qe_memory_retrieve", "arguments": {"key": f"k{msg_id}"}}, msg_id)
    return post(body, hdrs), msg_id


@st.composite
def pipelined_refusals(draw: st.DrawFn) -> Case:
    valid = [_valid(draw, n) for n in range(draw(st.integers(0, 5)))]
    bad, status, _ = draw(st.sampled_from(sorted(refused_requests(MAX_HEADER_BYTES).values())))
    # Whatever follows the refused request is never read.
    after = draw(st.sampled_from([b"", head("GET", "/healthz", []), b"\xff" * 64]))
    return Case(b"".join(v[0] for v in valid) + bad + after, [200] * len(valid) + [status],
                [v[1] for v in valid] + [None], closes=True)


_OFFERS = [
    H2C_OFFER,
    ["Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13",
     "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA=="],
    ["Connection: keep-alive, Upgrade", "Upgrade: foo/1, bar"],
]


@st.composite
def upgrade_offers(draw: st.DrawFn) -> Case:
    offer = draw(st.sampled_from(_OFFERS))
    framing = draw(st.sampled_from(["length", "chunked", "none"]))
    if framing == "none":
        first, first_id = head("GET", "/healthz", offer), None
    else:
        body, hdrs = modern("tools/list", msg_id=100)
        first, first_id = post(body, hdrs, offer, framing), 100
    valid = [_valid(draw, n) for n in range(draw(st.integers(0, 2)))]
    return Case(first + b"".join(v[0] for v in valid), [200] * (1 + len(valid)), [first_id] + [v[1] for v in valid],
                closes=False)


@st.composite
def expectations(draw: st.DrawFn) -> Case:
    msg_id = draw(st.integers(1, 2**31))
    body, hdrs = modern("tools/list", msg_id=msg_id)
    data = json.dumps(body).encode()
    over = draw(st.booleans())
    length = MAX_BODY_BYTES + draw(st.integers(1, 10**6)) if over else len(data)
    fields = ["Content-Type: application/json", f"Content-Length: {length}", "Expect: 100-continue",
              *[f"{k}: {v}" for k, v in hdrs.items()]]
    if over:
        return Case(head("POST", "/mcp", fields), [413], [None], closes=True)
    return Case(head("POST", "/mcp", fields), [200], [msg_id], closes=False, expect_continue=data)


@st.composite
def floods(draw: st.DrawFn) -> Case:
    count = draw(st.sampled_from([MAX_HEADER_FIELDS - 2, MAX_HEADER_FIELDS - 1, MAX_HEADER_FIELDS, 1000, 65_000]))
    value = draw(st.sampled_from(["", "v", *(["v" * 600] if count <= MAX_HEADER_FIELDS else [])]))
    fields = ["X: " + value] * count
    # Host and these fields; every line costs its name, value and 4 bytes of separators.
    size = len("/healthz") + (4 + 4 + len("127.0.0.1")) + count * (1 + len(value) + 4)
    refused = count + 1 > MAX_HEADER_FIELDS or size > MAX_HEADER_BYTES
    return Case(head("GET", "/healthz", fields), [431 if refused else 200], [None], closes=refused)


def hardening_cases() -> st.SearchStrategy[tuple[str, Case]]:
    return st.one_of(
        st.tuples(st.just("pipelined-refusal"), pipelined_refusals()),
        st.tuples(st.just("upgrade"), upgrade_offers()),
        st.tuples(st.just("expect"), expectations()),
        st.tuples(st.just("flood"), floods()),
    )


def run_hardening(address: tuple[str, int], case: Case, tally: Tally) -> tuple[Outcome, list[str]]:
    """Send one case and compare what came back with what it must get."""
    out = _expect_continue(address, case, tally) if case.expect_continue else exchange(*address, case.payload)
    problems = list(out.problems)
    for reply in out.responses:
        problems += [p for p in reply_problems(reply, False) if p != HANG]
    got = [reply.status for reply in out.responses]
    ids = [json.loads(r.body).get("id") if r.status == 200 and r.body.startswith(b"{\"jsonrpc") else None
           for r in out.responses]
    if got != case.statuses:
        problems.append(f"statuses {got}, expected {case.statuses}")
    elif ids != case.ids:
        problems.append(f"answers carry ids {ids}, expected {case.ids} (out of order?)")
    if case.closes and not (out.closed_by_server or out.reset) and not out.hang:
        problems.append("the connection was not closed after the refusal")
    return out, problems


def _expect_continue(address: tuple[str, int], case: Case, tally: Tally) -> Outcome:
    out = Outcome()
    reader = ResponseReader()
    started = time.monotonic()
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(case.payload)
        sock.settimeout(CONTINUE_WAIT_S)
        interim = b""
        try:
            while b"\r\n\r\n" not in interim:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                interim += chunk
        except TimeoutError:
            pass
        waited = time.monotonic() - started
        tally.continue_waits.append(waited)
        if interim != b"HTTP/1.1 100 Continue\r\n\r\n":
            out.problems.append(f"no 100 Continue within {CONTINUE_WAIT_S} s (got {interim[:80]!r})")
        sock.sendall(case.expect_continue)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(5)
        try:
            while chunk := sock.recv(65536):
                reader.feed(chunk)
        except TimeoutError:
            out.hang = True
            out.problems.append(HANG)
    out.responses = reader.responses
    out.problems += reader.problems
    out.closed_by_server = True
    out.elapsed = time.monotonic() - started
    return out


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
        hardening_cases(),
    )

    @settings(LIVE, max_examples=10**9, derandomize=False)
    @seed(seed_value)
    @given(case=cases)
    def fuzz(case: tuple[str, Any]) -> None:
        if time.monotonic() > end:
            raise _TimeUp
        kind, data = case
        tally.fuzzed[kind] += 1
        if isinstance(data, Case):
            payload = data.payload
            out, problems = run_hardening((host, port), data, tally)
            tally.unexpected += any(p != HANG for p in problems)
        else:
            payload, out, problems = run_case((host, port), session, kind, data)
            tally.invalid += any(p != HANG for p in problems)
        tally.answered += bool(out.responses)
        tally.responses += len(out.responses)
        tally.closed_by_server += out.closed_by_server
        tally.resets += out.reset
        tally.hangs += out.hang
        for reply in out.responses:
            tally.statuses[reply.status] = tally.statuses.get(reply.status, 0) + 1
            tally.tracebacks += bool(LEAK.search(reply.body))
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
    hardening = sum(tally.fuzzed[k] for k in HARDENING_KINDS)
    waits = sorted(tally.continue_waits)
    wait = f"100 Continue after p50 {statistics.median(waits) * 1000:.1f} ms, max {waits[-1] * 1000:.1f} ms" if waits \
        else "no Expect case drawn"
    print(f"issue-17 edges             {hardening} cases, {tally.unexpected} with an unexpected answer; {wait}")
    print(f"tracebacks                 {tally.tracebacks} in responses, {log_tracebacks} in the server log")
    print(
        f"control client             {len(latencies)} tools/list served, {len(control.failures)} failed, "
        f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"
    )
    for example in tally.examples:
        print(example)
    for failure in control.failures[:5]:
        print(f"[control] {failure}")
    bad = (tally.crashes + tally.hangs + tally.invalid + tally.unexpected + tally.tracebacks + log_tracebacks
           + len(control.failures))
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
