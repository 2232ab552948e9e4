"""What auth and rate limiting cost in throughput, whether the rate limit holds, and whether slowloris
clients keep fast ones from being served (issue 8); whether a session answers only to the token that created it
and what header floods do to other clients (issue 17). Our server over loopback, wrk as the load.

Servers, seeding and wrk come from bench/http_bench.py; refusals are read from /metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import math
import os
import resource
import secrets
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from prometheus_client.parser import text_string_to_metric_families

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]  # http_bench beside this file; the appliance's Guard from this tree
import http_bench  # noqa: E402
from http_bench import HOST, KEY_PREFIX, BenchError, Server, WrkRun  # noqa: E402

from qe_appliance.config import AuthConfig, RateLimitConfig  # noqa: E402
from qe_appliance.http.guard import Guard, Refusal, load_tokens  # noqa: E402

PARTS = ("throughput", "rate-limit", "slowloris", "sessions", "floods")
CONNECTIONS = 16
THREADS = 2
COST_GOAL_PCT = 5.0
# Guard.check calls per timing, best of GUARD_REPEATS: the in-process measure of what auth and the limit add.
GUARD_CALLS = 100_000
GUARD_REPEATS = 5
# Rate-limit enforcement: the limit under test, and how far the accepted count may stray from
# rate * seconds + burst (wrk's clock and the server's differ by connection set-up and the last replies).
LIMIT_RPS = 200
LIMIT_BURST = 50
LIMIT_TOLERANCE = 0.10
# Back-to-back requests from a fresh client: the first LIMIT_BURST pass, the rest must be 429.
BURST_PROBE = LIMIT_BURST + 30
# Far above what wrk reaches on any machine, so the bucket arithmetic runs but never refuses.
UNREACHABLE_RPS = 10_000_000
# Slowloris: the server's header timeout, and how often each slow client sends its next header byte.
HEADER_TIMEOUT_MS = 2000
SLOW_MAX_CONNECTIONS = 2048
SLOW_BYTE_INTERVAL_S = 0.5
# A slow connection the server has not answered by then counts as "held past the cap" and is dropped.
SLOW_HOLD_CAP_S = HEADER_TIMEOUT_MS / 1000 + 5.0
SLOW_CONNECT_TIMEOUT_S = 5.0
SLOW_READY_TIMEOUT_S = 15.0
SLOW_SAMPLE_S = 0.1
# Cross-principal session use: sessions token A opens, each of which token B then tries every way it can.
SESSIONS_PROBED = 20
# Header floods (issue 17's measurement): this many connections sending requests of FLOOD_FIELDS empty fields
# back to back for FLOOD_WINDOW_S, while /healthz is timed on its own connection every FLOOD_PROBE_INTERVAL_S
# (and for as long again with no flood, for comparison).
FLOOD_CONNECTIONS = 8
FLOOD_FIELDS = 65_000
FLOOD_ROUNDS = 3
FLOOD_PROBE_INTERVAL_S = 0.01
FLOOD_WINDOW_S = 1.0
PARTIAL_REQUEST = (
    f"POST /mcp HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\nX-Slowloris: ".encode()
)


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    auth: bool
    server: dict[str, Any]


THROUGHPUT_VARIANTS = (
    Variant("A", "no auth, rate limit off", False, {"rateLimit": {"requestsPerSecond": 0}}),
    Variant("B", "auth (2 tokens), rate limit off", True, {"rateLimit": {"requestsPerSecond": 0}}),
    Variant(
        "C",
        "auth + rate limit never reached",
        True,
        {"rateLimit": {"requestsPerSecond": UNREACHABLE_RPS, "burst": UNREACHABLE_RPS}},
    ),
)


class Out:
    """Progress and the text report go to stdout, or to stderr when stdout carries --json."""

    stream = sys.stdout

    @classmethod
    def say(cls, text: str = "") -> None:
        print(text, file=cls.stream, flush=True)


# ---- servers ----------------------------------------------------------------------------------------------


@dataclass
class Bench:
    """What every part needs: arguments, a scratch directory, the tokens, and the servers to stop."""

    args: argparse.Namespace
    workdir: Path
    tokens: tuple[str, str]
    started: list[Server] = field(default_factory=list)

    @property
    def tokens_file(self) -> Path:
        return self.workdir / "tokens"

    def launch(self, variants: list[Variant]) -> dict[str, Server]:
        """Seed a state directory per server, start them all, and wait until each answers a tools/call."""
        servers = {}
        for variant in variants:
            state_dir = self.workdir / f"state-{variant.name}"
            http_bench.seed_store(state_dir, self.args.entries)
            keys = dict(variant.server)
            if variant.auth:
                keys["auth"] = {"tokensFile": str(self.tokens_file)}
            port = http_bench.free_port()
            config = http_bench.write_config(state_dir, port, keys)
            server = http_bench.start_server(variant.name, http_bench.ours_command(config, port), port, self.workdir)
            self.started.append(server)
            servers[variant.name] = server
        for variant in variants:
            server = servers[variant.name]
            http_bench.wait_ready(server)
            http_bench.check_answer(server, f"{KEY_PREFIX}0", self.token_for(variant, second=True))
        return servers

    def token_for(self, variant: Variant, second: bool = False) -> str | None:
        return (self.tokens[1] if second else self.tokens[0]) if variant.auth else None

    def wrk(self, server: Server, duration: float, token: str | None) -> WrkRun:
        url = f"http://{HOST}:{server.port}/mcp"
        run = http_bench.run_wrk(url, CONNECTIONS, THREADS, duration, self.args.entries, token)
        if server.process.poll() is not None:
            raise BenchError(f"{server.name} died during the run; its log ({server.log}):\n"
                             f"{http_bench.log_tail(server.log)}")
        return run

    def stop(self, servers: dict[str, Server]) -> None:
        for server in servers.values():
            http_bench.stop_server(server)


@dataclass
class Counters:
    refused: dict[str, int]
    statuses: dict[str, int]

    def since(self, before: Counters) -> Counters:
        return Counters(
            {k: v - before.refused.get(k, 0) for k, v in self.refused.items()},
            {k: v - before.statuses.get(k, 0) for k, v in self.statuses.items()},
        )


def scrape(server: Server) -> Counters:
    """aqe_mcp_refused_total by reason and aqe_mcp_http_responses_total by status, from /metrics.

    A scrape's own 200 is counted after its text is produced, so it shows up in the next scrape.
    """
    try:
        with urllib.request.urlopen(f"http://{HOST}:{server.port}/metrics", timeout=10.0) as response:
            text = response.read().decode()
    except OSError as exc:
        raise BenchError(f"{server.name}: GET /metrics failed ({exc}); is monitoring.enabled on? "
                         f"its log is {server.log}") from exc
    refused: dict[str, int] = {}
    statuses: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "aqe_mcp_refused_total":
                refused[sample.labels["reason"]] = int(sample.value)
            elif sample.name == "aqe_mcp_http_responses_total":
                statuses[sample.labels["status"]] = int(sample.value)
    return Counters(refused, statuses)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def ms(microseconds: float) -> float:
    return round(microseconds / 1000, 3)


# ---- 1. throughput cost of auth and the rate limit -----------------------------------------------------------


@dataclass
class VariantResult:
    name: str
    label: str
    rps: list[float]
    p99_ms: list[float]
    errors: list[int]
    # Server CPU (user + system, the main process) per request served: less sensitive to the other
    # processes on the machine than req/s, which moves with whatever else takes the CPUs.
    cpu_us: list[float]
    median_rps: float = 0.0
    median_p99_ms: float = 0.0
    median_cpu_us: float = 0.0
    cost_pct: float = 0.0
    cpu_cost_pct: float = 0.0
    round_costs_pct: list[float] = field(default_factory=list)
    refused: dict[str, int] = field(default_factory=dict)
    guard_ns: float = 0.0
    # Guard.check time above A's, as a share of A's server CPU per request.
    guard_cost_pct: float = 0.0


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError as exc:
        raise BenchError(f"cannot read the CPU time of process {pid}: {exc}") from exc
    # utime and stime are fields 14 and 15; the command before them is parenthesised and may hold spaces.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def guard_ns(variant: Variant, tokens_file: Path, token: str) -> float:
    """Nanoseconds one Guard.check takes here, configured as `variant`'s server: the work auth and the rate
    limit add to every /mcp request, timed without the machine noise an end-to-end run carries."""
    auth = AuthConfig(tokens_file=str(tokens_file) if variant.auth else "")
    guard = Guard(auth, load_tokens(auth), msgspec.convert(variant.server["rateLimit"], RateLimitConfig))
    headers = {name.lower(): value for name, value in http_bench.REQUEST_HEADERS.items()}
    headers["host"] = HOST
    if variant.auth:
        headers["authorization"] = f"Bearer {token}"
    best = float("inf")
    for _ in range(GUARD_REPEATS):
        began = time.perf_counter_ns()
        for _ in range(GUARD_CALLS):
            if isinstance(guard.check(headers, HOST, time.monotonic(), True), Refusal):
                raise BenchError(f"Guard refused the benchmark's request under config {variant.name}")
        best = min(best, (time.perf_counter_ns() - began) / GUARD_CALLS)
    return best


def change_pct(value: float, base: float) -> float:
    return round((value / base - 1) * 100, 2) if base else 0.0


def throughput(bench: Bench) -> list[VariantResult]:
    args = bench.args
    Out.say(f"\n== throughput: {len(THROUGHPUT_VARIANTS)} servers, wrk -c{CONNECTIONS} -t{THREADS}, "
            f"{args.rounds} interleaved rounds of {args.duration:g} s")
    servers = bench.launch(list(THROUGHPUT_VARIANTS))
    results = {v.name: VariantResult(v.name, v.label, [], [], [], []) for v in THROUGHPUT_VARIANTS}
    try:
        if args.warmup > 0:
            for variant in THROUGHPUT_VARIANTS:
                bench.wrk(servers[variant.name], args.warmup, bench.token_for(variant))
        before = {name: scrape(server) for name, server in servers.items()}
        for round_no in range(1, args.rounds + 1):
            # The order rotates (ABC, BCA, CAB, ...) so no config always runs first or last in a round.
            shift = (round_no - 1) % len(THROUGHPUT_VARIANTS)
            for variant in THROUGHPUT_VARIANTS[shift:] + THROUGHPUT_VARIANTS[:shift]:
                server = servers[variant.name]
                cpu_before = cpu_s(server.process.pid)
                run = bench.wrk(server, args.duration, bench.token_for(variant))
                cpu_us = (cpu_s(server.process.pid) - cpu_before) * 1e6 / max(run.requests, 1)
                result = results[variant.name]
                result.rps.append(round(run.rps, 1))
                result.p99_ms.append(ms(run.p99_us))
                result.errors.append(run.errors)
                result.cpu_us.append(round(cpu_us, 2))
                Out.say(f"round {round_no}/{args.rounds} {variant.name}: {run.rps:8.0f} req/s, "
                        f"p99 {run.p99_us / 1000:6.2f} ms, server CPU {cpu_us:5.1f} us/request, errors {run.errors}")
        for name, server in servers.items():
            refused = scrape(server).since(before[name]).refused
            results[name].refused = {k: v for k, v in refused.items() if v}
    finally:
        bench.stop(servers)
    for variant in THROUGHPUT_VARIANTS:
        results[variant.name].guard_ns = round(guard_ns(variant, bench.tokens_file, bench.tokens[0]), 1)
    base = results["A"]
    for result in results.values():
        result.median_rps = round(median(result.rps), 1)
        result.median_p99_ms = round(median(result.p99_ms), 3)
        result.median_cpu_us = round(median(result.cpu_us), 2)
        # Costs are positive when worse than A: req/s lost, CPU per request added.
        result.cost_pct = -change_pct(result.median_rps, base.median_rps)
        result.cpu_cost_pct = change_pct(result.median_cpu_us, base.median_cpu_us)
        # Each round against A's run in the same round, which saw about the same machine load.
        result.round_costs_pct = [-change_pct(x, a) for x, a in zip(result.rps, base.rps, strict=True)]
        added_us = (result.guard_ns - base.guard_ns) / 1000
        result.guard_cost_pct = round(added_us / base.median_cpu_us * 100, 2) if base.median_cpu_us else 0.0
    return list(results.values())


# ---- 2. rate-limit enforcement ----------------------------------------------------------------------------


@dataclass
class RateLimitResult:
    requests_per_second: int
    burst: int
    duration_s: float
    wrk_requests: int
    accepted: int
    refused_429: int
    refused_counter: int
    other_statuses: dict[str, int]
    expected_accepted: float
    accepted_per_s_after_burst: float
    probe_accepted: int
    probe_refused: int
    probe_retry_after: list[str]
    enforced: bool


def burst_probe(server: Server, token: str) -> tuple[int, int, list[str], float]:
    """BURST_PROBE back-to-back calls on one keep-alive connection: 200s, 429s, the distinct Retry-After
    values, and the seconds it took (the bucket refills meanwhile)."""
    body = http_bench.request_body(1, f"{KEY_PREFIX}0")
    headers = dict(http_bench.REQUEST_HEADERS, Authorization=f"Bearer {token}")
    statuses: Counter[int] = Counter()
    retry_after: set[str] = set()
    conn = http.client.HTTPConnection(HOST, server.port, timeout=10.0)
    began = time.monotonic()
    try:
        for _ in range(BURST_PROBE):
            conn.request("POST", "/mcp", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            statuses[response.status] += 1
            if response.status == 429:
                retry_after.add(response.getheader("retry-after") or "(missing)")
    except OSError as exc:
        raise BenchError(f"the burst probe of {server.name} failed: {exc}; its log is {server.log}") from exc
    finally:
        conn.close()
    return statuses[200], statuses[429], sorted(retry_after), time.monotonic() - began


def rate_limit(bench: Bench) -> RateLimitResult:
    args = bench.args
    Out.say(f"\n== rate limit: requestsPerSecond {LIMIT_RPS}, burst {LIMIT_BURST}; wrk -c{CONNECTIONS} "
            f"for {args.duration:g} s with one token")
    # With auth on, wrk's token has a bucket of its own: the bench's /metrics scrapes (no token, by address)
    # and the probe (the other token) neither take from it nor get refused by it.
    variant = Variant("ratelimit", "auth + rate limit", True,
                      {"rateLimit": {"requestsPerSecond": LIMIT_RPS, "burst": LIMIT_BURST}})
    servers = bench.launch([variant])
    server = servers[variant.name]
    try:
        before = scrape(server)
        run = bench.wrk(server, args.duration, bench.tokens[0])
        delta = scrape(server).since(before)
        probe_ok, probe_refused, retry_after, probe_s = burst_probe(server, bench.tokens[1])
    finally:
        bench.stop(servers)
    accepted = delta.statuses.get("200", 0) - 1  # the first scrape's own 200
    refused = delta.statuses.get("429", 0)
    other = {k: v for k, v in delta.statuses.items() if k not in ("200", "429") and v}
    expected = LIMIT_RPS * run.duration_s + LIMIT_BURST
    enforced = (
        abs(accepted - expected) <= LIMIT_TOLERANCE * expected
        and refused > 0
        and refused == delta.refused.get("rate_limit", 0)
        and not other
        and LIMIT_BURST <= probe_ok <= LIMIT_BURST + math.ceil(LIMIT_RPS * probe_s) + 1
        and probe_refused == BURST_PROBE - probe_ok
        and all(value.isdigit() and int(value) >= 1 for value in retry_after)
    )
    result = RateLimitResult(
        requests_per_second=LIMIT_RPS,
        burst=LIMIT_BURST,
        duration_s=round(run.duration_s, 3),
        wrk_requests=run.requests,
        accepted=accepted,
        refused_429=refused,
        refused_counter=delta.refused.get("rate_limit", 0),
        other_statuses=other,
        expected_accepted=round(expected, 1),
        accepted_per_s_after_burst=round((accepted - LIMIT_BURST) / run.duration_s, 1) if run.duration_s else 0.0,
        probe_accepted=probe_ok,
        probe_refused=probe_refused,
        probe_retry_after=retry_after,
        enforced=enforced,
    )
    Out.say(f"accepted {accepted} (expected ~{expected:.0f}), 429 {refused}, "
            f"probe {probe_ok} ok / {probe_refused} refused")
    return result


# ---- 3. slowloris -----------------------------------------------------------------------------------------


@dataclass
class SlowRound:
    baseline: WrkRun
    loaded: WrkRun
    opened: int
    answered_408: int
    seconds_to_408: list[float]
    outcomes: dict[str, int]
    held_min: int
    held_mean: float
    drained_s: float
    client_cpu_pct: float


class SlowClients:
    """`count` connections that each send a partial request, then one header byte per SLOW_BYTE_INTERVAL_S, and
    reopen when the server closes them, until `stop()`: a slowloris that keeps `count` connections busy.

    First connects are spread over one header timeout, so the server's 408s (and the reconnects) come at a
    steady pace instead of all at once every timeout.
    """

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.holding = 0
        self.opened = 0
        self.seconds_to_408: list[float] = []
        self.outcomes: Counter[str] = Counter()
        self.samples: list[tuple[float, int]] = []
        self._reopen = threading.Event()
        self._reopen.set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="slowloris", daemon=True)

    def start(self) -> None:
        """Return once every slow connection has been opened and has started its request."""
        self._thread.start()
        deadline = time.monotonic() + SLOW_READY_TIMEOUT_S
        while self.opened < self.count:
            if time.monotonic() > deadline or not self._thread.is_alive():
                self.abandon()
                raise BenchError(f"only {self.opened} of {self.count} slow connections opened within "
                                 f"{SLOW_READY_TIMEOUT_S:g} s ({dict(self.outcomes)}); lower --slow-connections")
            time.sleep(0.01)

    def stop(self) -> float:
        """Stop reopening and wait until the server has closed every slow connection; the seconds that took."""
        began = time.monotonic()
        self._reopen.clear()
        self._thread.join(SLOW_HOLD_CAP_S + SLOW_CONNECT_TIMEOUT_S + 1.0)
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5.0)
            raise BenchError("the slow clients did not finish; the server kept connections past "
                             f"{SLOW_HOLD_CAP_S:g} s")
        return time.monotonic() - began

    def abandon(self) -> None:
        """Stop reopening without waiting: the server is about to be stopped, which closes the rest."""
        self._reopen.clear()

    def held_between(self, start: float, end: float) -> tuple[int, float]:
        """Fewest and mean slow connections open at once between two time.monotonic() readings."""
        held = [n for t, n in self.samples if start <= t <= end]
        return (min(held), statistics.fmean(held)) if held else (0, 0.0)

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        sampler = asyncio.ensure_future(self._sample())
        spacing = HEADER_TIMEOUT_MS / 1000 / self.count
        await asyncio.gather(*(self._keep_one(i * spacing) for i in range(self.count)))
        sampler.cancel()

    async def _sample(self) -> None:
        while True:
            self.samples.append((time.monotonic(), self.holding))
            await asyncio.sleep(SLOW_SAMPLE_S)

    async def _keep_one(self, delay: float) -> None:
        await asyncio.sleep(delay)
        while self._reopen.is_set():
            await self._one()

    async def _one(self) -> None:
        started = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(HOST, self.port), SLOW_CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError) as exc:
            self.outcomes[f"connect failed: {type(exc).__name__}"] += 1
            await asyncio.sleep(0.1)  # a refused connect must not become a busy loop
            return
        self.opened += 1
        self.holding += 1
        try:
            self.outcomes[await self._dribble(reader, writer, started)] += 1
        finally:
            self.holding -= 1
            writer.close()

    async def _dribble(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, started: float) -> str:
        """Send the request a byte at a time until the server answers; what happened, as an outcome name."""
        writer.write(PARTIAL_REQUEST)
        answer = asyncio.ensure_future(reader.read(1024))
        deadline = started + SLOW_HOLD_CAP_S
        while not answer.done() and time.monotonic() < deadline:
            await asyncio.wait({answer}, timeout=SLOW_BYTE_INTERVAL_S)
            if not answer.done() and not writer.is_closing():
                writer.write(b"x")
        if not answer.done():
            answer.cancel()
            return "held past the cap"
        try:
            data = answer.result()
        except OSError:
            return "reset without an answer"
        if not data:
            return "closed without an answer"
        elapsed = time.monotonic() - started
        parts = data.split(b" ", 2)
        status = parts[1].decode(errors="replace") if len(parts) > 1 and data.startswith(b"HTTP/1.") else "?"
        try:
            await asyncio.wait_for(reader.read(), 1.0)  # the server must also close after its answer
        except TimeoutError:
            return f"{status}, left open"
        except OSError:
            pass  # a reset is a close too: the server closed with our latest header byte still unread
        if status == "408":
            self.seconds_to_408.append(round(elapsed, 3))
        return status


def own_cpu_s() -> float:
    """CPU seconds this process has used: the slow clients' share of the machine while wrk runs."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raise_fd_limit(needed: int) -> None:
    """Lift the soft descriptor limit (inherited by the servers started afterwards) to `needed`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise BenchError(f"{needed} file descriptors are needed but `ulimit -Hn` is {hard}; raise it or "
                             "lower --slow-connections")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def slowloris(bench: Bench) -> tuple[list[SlowRound], dict[str, int]]:
    args = bench.args
    Out.say(f"\n== slowloris: headerTimeoutMs {HEADER_TIMEOUT_MS}, maxConnections {SLOW_MAX_CONNECTIONS}; "
            f"{args.slow_connections} slow connections (one header byte every {SLOW_BYTE_INTERVAL_S:g} s, "
            f"reopened when closed) against wrk -c{CONNECTIONS} for {args.duration:g} s, {args.rounds} rounds "
            "of without/with")
    variant = Variant("slowloris", "slowloris target", False, {
        "rateLimit": {"requestsPerSecond": 0},
        "headerTimeoutMs": HEADER_TIMEOUT_MS,
        "maxConnections": SLOW_MAX_CONNECTIONS,
    })
    servers = bench.launch([variant])
    server = servers[variant.name]
    rounds = []
    try:
        if args.warmup > 0:
            bench.wrk(server, args.warmup, None)
        before = scrape(server)
        for round_no in range(1, args.rounds + 1):
            baseline = bench.wrk(server, args.duration, None)
            clients = SlowClients(server.port, args.slow_connections)
            clients.start()
            cpu_before = own_cpu_s()
            began = time.monotonic()
            try:
                loaded = bench.wrk(server, args.duration, None)
            except BaseException:
                clients.abandon()
                raise
            ended = time.monotonic()
            client_cpu = own_cpu_s() - cpu_before
            drained_s = clients.stop()
            held_min, held_mean = clients.held_between(began, ended)
            rounds.append(SlowRound(
                baseline=baseline,
                loaded=loaded,
                opened=clients.opened,
                answered_408=len(clients.seconds_to_408),
                seconds_to_408=sorted(clients.seconds_to_408),
                outcomes=dict(clients.outcomes),
                held_min=held_min,
                held_mean=round(held_mean, 1),
                drained_s=round(drained_s, 3),
                client_cpu_pct=round(client_cpu / (ended - began) * 100, 1),
            ))
            Out.say(f"round {round_no}/{args.rounds}: without {baseline.rps:8.0f} req/s p99 "
                    f"{baseline.p99_us / 1000:.2f} ms | with {loaded.rps:8.0f} req/s p99 {loaded.p99_us / 1000:.2f} ms "
                    f"(slow open: min {held_min}, mean {held_mean:.0f}; opened {clients.opened}, "
                    f"{dict(clients.outcomes)})")
        refused = scrape(server).since(before).refused
    finally:
        bench.stop(servers)
    return rounds, {k: v for k, v in refused.items() if v}


# ---- report -----------------------------------------------------------------------------------------------


def slow_summary(rounds: list[SlowRound], refused: dict[str, int], slow_connections: int) -> dict[str, Any]:
    times = sorted(t for r in rounds for t in r.seconds_to_408)
    outcomes: Counter[str] = Counter()
    for r in rounds:
        outcomes.update(r.outcomes)
    base_rps = median([r.baseline.rps for r in rounds])
    loaded_rps = median([r.loaded.rps for r in rounds])
    opened = sum(r.opened for r in rounds)
    answered = sum(r.answered_408 for r in rounds)
    errors = sum(r.baseline.errors + r.loaded.errors for r in rounds)
    return {
        "slow_connections": slow_connections,
        "header_timeout_ms": HEADER_TIMEOUT_MS,
        "median_rps_without": round(base_rps, 1),
        "median_rps_with": round(loaded_rps, 1),
        "rps_change_pct": change_pct(loaded_rps, base_rps),
        "median_p99_ms_without": ms(median([r.baseline.p99_us for r in rounds])),
        "median_p99_ms_with": ms(median([r.loaded.p99_us for r in rounds])),
        "wrk_errors": errors,
        "held_min_during_wrk": min((r.held_min for r in rounds), default=0),
        "slow_opened": opened,
        "slow_answered_408_and_closed": answered,
        "outcomes": dict(outcomes),
        "seconds_to_408": {
            "min": times[0] if times else None,
            "median": round(median(times), 3) if times else None,
            "max": times[-1] if times else None,
        },
        "max_drain_s": max((r.drained_s for r in rounds), default=0.0),
        "median_client_cpu_pct": round(median([r.client_cpu_pct for r in rounds]), 1),
        "server_refused": refused,
        "rounds": [
            {
                "rps_without": round(r.baseline.rps, 1), "p99_ms_without": ms(r.baseline.p99_us),
                "rps_with": round(r.loaded.rps, 1), "p99_ms_with": ms(r.loaded.p99_us),
                "held_min": r.held_min, "held_mean": r.held_mean, "opened": r.opened,
                "answered_408": r.answered_408, "drained_s": r.drained_s, "client_cpu_pct": r.client_cpu_pct,
            }
            for r in rounds
        ],
        "ok": (
            errors == 0
            and answered == opened
            and refused.get("header_timeout", 0) == answered
            and min((r.held_mean for r in rounds), default=0.0) >= slow_connections * 0.9
        ),
    }


# ---- 4. sessions answer only to the token that created them ---------------------------------------------------


def _call(port: int, method: str, token: str, body: Any = None, sid: str | None = None) -> tuple[int, dict[str, str],
                                                                                                 bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "Authorization": f"Bearer {token}", "MCP-Protocol-Version": "2025-11-25"}
    if sid is not None:
        headers["Mcp-Session-Id"] = sid
    try:
        conn.request(method, "/mcp", body=None if body is None else json.dumps(body), headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def _rpc(method: str, params: dict[str, Any], msg_id: int | None = 1) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if msg_id is not None:
        message["id"] = msg_id
    return message


def sessions_part(bench: Bench) -> dict[str, Any]:
    """Token A opens sessions; token B tries to use, reconfigure, stream and end each of them. Every attempt must
    be answered exactly as for a session id never issued, and A's sessions must work afterwards."""
    variant = THROUGHPUT_VARIANTS[1]
    servers = bench.launch([variant])
    port = servers[variant.name].port
    owner, other = bench.tokens
    hello = _rpc("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                "clientInfo": {"name": "security-bench", "version": "1"}}, 0)
    sids = []
    for _ in range(SESSIONS_PROBED):
        status, headers, _ = _call(port, "POST", owner, hello)
        if status != 200:
            raise BenchError(f"initialize with the first token answered {status}")
        sids.append(headers["mcp-session-id"])
        _call(port, "POST", owner, _rpc("notifications/initialized", {}, None), sids[-1])
    attempts = {
        "tools/call": ("POST", _rpc("tools/call", {"name": "qe_memory_retrieve", "arguments": {"key": "k"}})),
        "logging/setLevel": ("POST", _rpc("logging/setLevel", {"level": "debug"})),
        "notifications/cancelled": ("POST", _rpc("notifications/cancelled", {"requestId": 1}, None)),
        "GET stream": ("GET", None),
        "DELETE": ("DELETE", None),
    }
    outcomes: Counter[str] = Counter()
    leaked = 0
    began = time.perf_counter()
    for sid in sids:
        for name, (method, body) in attempts.items():
            status, _, answer = _call(port, method, other, body, sid)
            unknown = _call(port, method, other, body, "x" * len(sid))
            outcomes[f"{name} {status}"] += 1
            leaked += (status, answer) != (unknown[0], unknown[2])
    probe_s = time.perf_counter() - began
    still_owned = sum(_call(port, "POST", owner, _rpc("tools/list", {}), sid)[0] == 200 for sid in sids)
    ended = sum(_call(port, "DELETE", owner, None, sid)[0] == 204 for sid in sids)
    bench.stop(servers)
    tried = SESSIONS_PROBED * len(attempts)
    return {
        "sessions": SESSIONS_PROBED, "attempts": tried, "outcomes": dict(outcomes),
        "answered_unlike_unknown_id": leaked, "still_usable_by_owner": still_owned, "ended_by_owner": ended,
        "ms_per_attempt": round(probe_s / (2 * tried) * 1000, 3),
        "ok": leaked == 0 and all(key.endswith(" 404") for key in outcomes) and still_owned == ended == len(sids),
    }


# ---- 5. header floods do not hold up other clients -----------------------------------------------------------


def _flood(port: int, payload: bytes, stop: threading.Event, answers: list[tuple[float, bytes]]) -> None:
    """Send a flood, read the answer to the close, and again on a new connection, until `stop`."""
    while not stop.is_set():
        began = time.perf_counter()
        with socket.create_connection((HOST, port), timeout=10) as sock:
            try:
                sock.sendall(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass
            data = b""
            try:
                while chunk := sock.recv(65536):
                    data += chunk
            except OSError:
                pass
        answers.append((time.perf_counter() - began, data[:12]))


def _probe_healthz(port: int, stop: threading.Event, latencies: list[float]) -> None:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    while not stop.is_set():
        began = time.perf_counter()
        conn.request("GET", "/healthz")
        conn.getresponse().read()
        latencies.append(time.perf_counter() - began)
        stop.wait(FLOOD_PROBE_INTERVAL_S)
    conn.close()


def floods_part(bench: Bench) -> dict[str, Any]:
    """/healthz latency alone, then while FLOOD_CONNECTIONS clients send requests of FLOOD_FIELDS empty header
    fields back to back (issue 17: 260 KB each; 8 of them delayed /healthz by 2.2 s before the field count was
    bounded)."""
    variant = THROUGHPUT_VARIANTS[0]
    servers = bench.launch([variant])
    port = servers[variant.name].port
    before = scrape(servers[variant.name])
    payload = b"POST /mcp HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\n" + b"X:\r\n" * FLOOD_FIELDS + b"\r\n"
    rounds = []
    for _ in range(FLOOD_ROUNDS):
        quiet: list[float] = []
        flooded: list[float] = []
        answers: list[tuple[float, bytes]] = []
        for latencies, flooders in ((quiet, 0), (flooded, FLOOD_CONNECTIONS)):
            stop = threading.Event()
            threads = [threading.Thread(target=_probe_healthz, args=(port, stop, latencies))]
            threads += [threading.Thread(target=_flood, args=(port, payload, stop, answers)) for _ in range(flooders)]
            for thread in threads:
                thread.start()
            time.sleep(FLOOD_WINDOW_S)
            stop.set()
            for thread in threads:
                thread.join(30)
        rounds.append({
            "healthz_quiet_p50_ms": round(median(quiet) * 1000, 2),
            "healthz_quiet_max_ms": round(max(quiet) * 1000, 2),
            "healthz_flooded_p50_ms": round(median(flooded) * 1000, 2),
            "healthz_flooded_max_ms": round(max(flooded) * 1000, 2),
            "floods": len(answers),
            "flood_answer_p50_ms": round(median([t for t, _ in answers]) * 1000, 1),
            "flood_answers": dict(Counter(head.decode(errors="replace") for _, head in answers)),
        })
    refused = scrape(servers[variant.name]).since(before).refused
    bench.stop(servers)
    answered_431 = sum(r["flood_answers"].get("HTTP/1.1 431", 0) for r in rounds)
    sent = sum(r["floods"] for r in rounds)
    return {
        "connections": FLOOD_CONNECTIONS, "fields": FLOOD_FIELDS, "bytes_each": len(payload), "rounds": rounds,
        "refused_header_size": refused.get("header_size", 0),
        "ok": answered_431 == sent > 0,
    }


def print_report(report: dict[str, Any]) -> None:
    say = Out.say
    if "throughput" in report:
        t = report["throughput"]
        say(f"\nThroughput cost (wrk -c{CONNECTIONS} -t{THREADS}, {t['rounds']} interleaved rounds of "
            f"{t['duration_s']:g} s; medians)")
        say("config  req/s  p99 ms  CPU us/req  errors  req/s lost  CPU/req added  req/s lost per round  setup")
        for v in t["variants"]:
            is_base = v["name"] == "A"
            lost = "" if is_base else f"{v['cost_pct']:+.1f}%"
            added = "" if is_base else f"{v['cpu_cost_pct']:+.1f}%"
            rounds = "" if is_base else " ".join(f"{c:+.1f}" for c in v["round_costs_pct"])
            say(f"{v['name']:<6} {v['median_rps']:>6.0f} {v['median_p99_ms']:>7.2f} {v['median_cpu_us']:>11.1f} "
                f"{sum(v['errors']):>7} {lost:>11} {added:>14}  {rounds:<20}  {v['label']}")
        others = [v for v in t["variants"] if v["name"] != "A"]
        base = t["variants"][0]
        spread = (max(base["rps"]) - min(base["rps"])) / base["median_rps"] * 100 if base["median_rps"] else 0.0
        say(f"noise: A alone ranged {min(base['rps']):.0f}..{max(base['rps']):.0f} req/s over its rounds "
            f"({spread:.0f}% of its median); req/s differences well inside that are the machine, not the config")
        say(f"Guard.check timed in-process (best of {GUARD_REPEATS} x {GUARD_CALLS:,} calls): "
            + ", ".join(f"{v['name']} {v['guard_ns']:.0f} ns" for v in t["variants"]))
        say(f"  time added per request, against A's {t['variants'][0]['median_cpu_us']:.1f} us of server CPU: "
            + ", ".join(f"{v['name']} {v['guard_cost_pct']:+.2f}%" for v in others))
        for key, what in (("cost_pct", "req/s lost"), ("cpu_cost_pct", "server CPU per request added"),
                          ("guard_cost_pct", "Guard.check time added per request")):
            worst = max(v[key] for v in others)
            say(f"goal: {what} under {COST_GOAL_PCT:g}% -> {'met' if worst < COST_GOAL_PCT else 'NOT met'} "
                f"(worst {worst:+.2f}%)")
    if "rate_limit" in report:
        r = report["rate_limit"]
        say(f"\nRate limit ({r['requests_per_second']}/s, burst {r['burst']}; wrk -c{CONNECTIONS} for "
            f"{r['duration_s']:g} s, one token)")
        say(f"accepted (200): {r['accepted']} = {r['accepted_per_s_after_burst']:.1f}/s after the burst "
            f"(expected {r['expected_accepted']:.0f} = rate x seconds + burst)")
        say(f"refused (429): {r['refused_429']} (aqe_mcp_refused_total{{reason=\"rate_limit\"}} +"
            f"{r['refused_counter']}); other statuses: {r['other_statuses'] or 'none'}; wrk saw {r['wrk_requests']}")
        say(f"burst probe, a fresh token, {BURST_PROBE} back-to-back calls: {r['probe_accepted']} accepted, "
            f"{r['probe_refused']} refused with Retry-After {', '.join(r['probe_retry_after']) or '-'}")
        say(f"enforced: {'yes' if r['enforced'] else 'NO'}")
    if "slowloris" in report:
        s = report["slowloris"]
        say(f"\nSlowloris ({s['slow_connections']} slow connections, headerTimeoutMs {s['header_timeout_ms']}; "
            f"wrk -c{CONNECTIONS}, medians over {len(s['rounds'])} rounds)")
        say(f"without slow clients: {s['median_rps_without']:.0f} req/s, p99 {s['median_p99_ms_without']:.3f} ms")
        say(f"with slow clients:    {s['median_rps_with']:.0f} req/s, p99 {s['median_p99_ms_with']:.3f} ms "
            f"({s['rps_change_pct']:+.1f}% req/s); wrk errors {s['wrk_errors']}; at least "
            f"{s['held_min_during_wrk']} slow connections open throughout")
        say(f"the slow clients themselves used {s['median_client_cpu_pct']:.0f}% of a core on this machine "
            "while wrk ran (they share its CPUs with wrk and the server)")
        t408 = s["seconds_to_408"]
        timing = (f"{t408['min']:.2f} / {t408['median']:.2f} / {t408['max']:.2f} s (min/median/max)"
                  if t408["median"] is not None else "none")
        say(f"slow connections opened {s['slow_opened']}, answered 408 and closed {s['slow_answered_408_and_closed']}"
            f" (server refused{{header_timeout}} +{s['server_refused'].get('header_timeout', 0)}); outcomes "
            f"{s['outcomes']}")
        say(f"time from connect to 408: {timing}; last slow connection closed {s['max_drain_s']:.2f} s after the "
            "slow clients stopped reopening")
        say(f"fast clients served: {'yes' if s['ok'] else 'NO'}")
    if "sessions" in report:
        x = report["sessions"]
        say(f"\nCross-principal session use ({x['sessions']} sessions of token A; token B tries each "
            f"{x['attempts'] // x['sessions']} ways, {x['ms_per_attempt']} ms per attempt)")
        say(f"B's answers: {x['outcomes']}; unlike an unknown id's: {x['answered_unlike_unknown_id']}; A's sessions "
            f"usable afterwards {x['still_usable_by_owner']}, ended by A {x['ended_by_owner']}")
        say(f"sessions bound to their token: {'yes' if x['ok'] else 'NO'}")
    if "floods" in report:
        f = report["floods"]
        say(f"\nHeader floods ({f['connections']} clients back to back, {f['fields']:,} empty fields = "
            f"{f['bytes_each']:,} bytes each; /healthz probed every {FLOOD_PROBE_INTERVAL_S * 1000:g} ms)")
        for n, r in enumerate(f["rounds"], 1):
            say(f"round {n}: /healthz p50/max {r['healthz_quiet_p50_ms']}/{r['healthz_quiet_max_ms']} ms quiet, "
                f"{r['healthz_flooded_p50_ms']}/{r['healthz_flooded_max_ms']} ms flooded; {r['floods']} floods in "
                f"{FLOOD_WINDOW_S:g} s, answered in p50 {r['flood_answer_p50_ms']} ms: {r['flood_answers']}")
        say(f"refused{{header_size}} +{f['refused_header_size']}; every flood refused: {'yes' if f['ok'] else 'NO'}")


# ---- main -------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=5, help="whole seconds per wrk run (default 5)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per comparison (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="unreported wrk seconds per server (default 1; 0: none)")
    parser.add_argument("--entries", type=int, default=1000, help="memory entries seeded and cycled (default 1000)")
    parser.add_argument("--slow-connections", type=int, default=500,
                        help="slowloris connections held open (default 500)")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated parts to run, of {', '.join(PARTS)} (default all)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument("--keep-state", action="store_true", help="keep the temporary state dirs and logs")
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown or not args.parts:
        parser.error(f"--parts takes names from {', '.join(PARTS)}, got {unknown or 'none'}")
    if args.duration <= 0 or args.rounds < 1 or args.entries < 1 or args.warmup < 0:
        parser.error("--duration, --rounds and --entries must be positive and --warmup not negative")
    if not 1 <= args.slow_connections <= SLOW_MAX_CONNECTIONS - 4 * CONNECTIONS:
        parser.error(f"--slow-connections must be 1..{SLOW_MAX_CONNECTIONS - 4 * CONNECTIONS}, below the "
                     f"server's maxConnections ({SLOW_MAX_CONNECTIONS}) with room for wrk")
    return args


def run_parts(bench: Bench) -> dict[str, Any]:
    args = bench.args
    report: dict[str, Any] = {}
    if "throughput" in args.parts:
        variants = throughput(bench)
        report["throughput"] = {
            "duration_s": args.duration,
            "rounds": args.rounds,
            "connections": CONNECTIONS,
            "threads": THREADS,
            "variants": [asdict(v) for v in variants],
            "ok": all(not any(v.errors) and not v.refused for v in variants),
        }
    if "rate-limit" in args.parts:
        limit = rate_limit(bench)
        report["rate_limit"] = {**asdict(limit), "ok": limit.enforced}
    if "slowloris" in args.parts:
        rounds, refused = slowloris(bench)
        report["slowloris"] = slow_summary(rounds, refused, args.slow_connections)
    if "sessions" in args.parts:
        report["sessions"] = sessions_part(bench)
    if "floods" in args.parts:
        report["floods"] = floods_part(bench)
    return report


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.json:
        Out.stream = sys.stderr
    command = shlex.join([sys.executable, *sys.argv])
    Out.say(f"command: {command}")
    if shutil.which("wrk") is None:
        print("error: wrk is not installed; install it with `apt-get install -y wrk` and run again", file=sys.stderr)
        return 2
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False).stdout
    machine = f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {wrk_version.splitlines()[0]}"
    load_start = load_average()
    Out.say(f"machine: {machine}; load average {load_start}")
    workdir = Path(tempfile.mkdtemp(prefix="aqe-security-bench-"))
    tokens = (secrets.token_urlsafe(32), secrets.token_urlsafe(32))
    bench = Bench(args, workdir, tokens)
    bench.tokens_file.write_text("# security_bench: wrk sends the first, probes the second\n" + "\n".join(tokens))
    bench.tokens_file.chmod(0o600)
    report: dict[str, Any] = {}
    code = 0
    with http_bench.interrupt_on_sigterm():
        try:
            raise_fd_limit(max(4096, SLOW_MAX_CONNECTIONS + args.slow_connections + 256))
            report = run_parts(bench)
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            code = 2
        except KeyboardInterrupt:
            print("interrupted: stopping the servers", file=sys.stderr)
            code = 130
        finally:
            for server in bench.started:
                http_bench.stop_server(server)
            if args.keep_state or code == 2:
                Out.say(f"state and logs kept in {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    if report:
        load_end = load_average()
        Out.say(f"\nload average at the end (other processes share the CPUs): {load_end}")
        print_report(report)
        failed = [part for part, body in report.items() if not body["ok"]]
        if code == 0 and failed:
            print(f"error: checks failed in {', '.join(failed)} (errors, refusals or outcomes above)", file=sys.stderr)
            code = 1
        if args.json:
            load = {"start": load_start, "end": load_end}
            print(json.dumps({"command": command, "machine": machine, "load_average": load, "ok": code == 0,
                              **report}, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
