"""Memory and learning benchmark: tool-call latency end to end over HTTP against a running server.

For each scale (10k and 100k stored entries by default) it seeds `<stateDir>/memory.db`, starts the server
the way bench/http_bench.py does, and times qe_memory_store, qe_memory_retrieve and qe_memory_search calls
made one at a time over a keep-alive connection (client-side wall time: request written to response read).
The first scale also holds 10k learned patterns and times qe_learn_pattern and qe_learn_status.
Prints the command, then p50/p95/p99 per operation against the issue's targets.
`--locking` first times the same store calls in this process with SQLite's normal locking (what servers
sharing a state directory use) against `locking_mode = EXCLUSIVE` (what a server owning its files alone
used), in interleaved rounds on the seeded database: the price of sharing.
`--postgresql` runs every scale on PostgreSQL too (store.url; a temporary cluster from Debian's binaries
unless `--pg-url` names a database), and prints both backends' rows side by side with the ratio.
Run: `python bench/memory_bench.py` (`--help` for the knobs).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import shlex
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import http_bench
from http_bench import HOST, PROTOCOL, BenchError

if str(http_bench.REPO) not in sys.path:
    sys.path.insert(0, str(http_bench.REPO))

from qe_appliance.config import LearningConfig, StoreConfig  # noqa: E402
from qe_appliance.store.memory import MemoryStore  # noqa: E402
from qe_appliance.store.patterns import PATTERN_TYPES, PatternDraft, PatternStore  # noqa: E402

NAMESPACE = "bench"
# The p95 targets, in ms.
TARGETS_MS = {"store": 2.0, "retrieve": 1.0, "search": 10.0, "learn_pattern": 10.0, "learn_status": 30.0}
LANGUAGES = {
    "python": ("pytest", "unittest"),
    "typescript": ("jest", "vitest"),
    "java": ("junit",),
    "go": (None,),
}
DOMAINS = [f"domain-{i}" for i in range(20)]
STATUSES = ("pass", "fail", "flaky", "skip")


def vocabulary(size: int, rng: random.Random) -> list[str]:
    """Pronounceable made-up words, so each search word matches a known share of the entries."""
    consonants, vowels = "bcdfghklmnprstvz", "aeiou"
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.randint(2, 4))))
    return sorted(words)


@dataclass
class Corpus:
    """What the seeded data looks like, so requests can aim at entries that exist."""

    entries: int
    words: list[str]
    rng: random.Random

    def value(self, i: int) -> dict[str, Any]:
        rng = random.Random(i)
        return {
            "suite": f"suite-{i % 500}",
            "test": f"test_{rng.choice(self.words)}_{i}",
            "status": STATUSES[i % len(STATUSES)],
            "error": " ".join(rng.choices(self.words, k=8)),
            "durationMs": rng.randint(1, 5000),
        }

    def tags(self, i: int) -> list[str]:
        return ["bench", f"suite-{i % 50}", STATUSES[i % len(STATUSES)]]


def seed_memory(state_dir: Path, corpus: Corpus) -> float:
    started = time.perf_counter()
    store = MemoryStore(state_dir / "memory.db")
    try:
        with store.batch():
            for i in range(corpus.entries):
                value = json.dumps(corpus.value(i)).encode()
                store.put(NAMESPACE, f"run/{i % 500}/{i}", value, None, tags=corpus.tags(i))
    finally:
        store.close()
    return time.perf_counter() - started


async def seed_postgresql(url: str, password_file: str, corpus: Corpus, patterns: int, words: list[str]) -> tuple[
    float, list[PatternDraft], list[str], float
]:
    """The same entries and patterns as seed_memory and seed_patterns, into the PostgreSQL store."""
    from qe_appliance.store.postgres import PgStores

    stores = PgStores(StoreConfig(url=url, password_file=password_file))
    await stores.open()
    try:
        started = time.perf_counter()
        async with stores.memory.batch():
            for i in range(corpus.entries):
                value = json.dumps(corpus.value(i)).encode()
                await stores.memory.put(NAMESPACE, f"run/{i % 500}/{i}", value, None, tags=corpus.tags(i))
        seeded = time.perf_counter() - started
        started = time.perf_counter()
        rng = random.Random(7)
        drafts: list[PatternDraft] = []
        ids: list[str] = []
        rules = LearningConfig()
        for _ in range(patterns):
            draft = pattern_draft(rng, words)
            result = await stores.patterns.learn(draft, rules)
            if result.action == "created":
                drafts.append(draft)
                ids.append(result.pattern.id)
        return seeded, drafts, ids, time.perf_counter() - started
    finally:
        stores.close()


def pattern_text(rng: random.Random, words: list[str]) -> str:
    name, subject, expected = rng.sample(words, 3)
    steps = " ".join(rng.choices(words, k=6))
    return f"def test_{name}_{subject}():\n    # {steps}\n    assert {subject}({name!r}) == {expected!r}\n"


def pattern_draft(rng: random.Random, words: list[str]) -> PatternDraft:
    language = rng.choice(list(LANGUAGES))
    return PatternDraft(
        text=pattern_text(rng, words),
        pattern_type=rng.choice(PATTERN_TYPES),
        domain=rng.choice(DOMAINS),
        language=language,
        framework=rng.choice(LANGUAGES[language]),
        confidence=round(rng.uniform(0.4, 1.0), 2),
    )


def seed_patterns(
    state_dir: Path, count: int, words: list[str]
) -> tuple[list[PatternDraft], list[str], float]:
    """`count` patterns taught one call at a time, as the tool does; returns the drafts and their ids."""
    started = time.perf_counter()
    rng = random.Random(7)
    store = PatternStore(state_dir / "patterns.db")
    drafts: list[PatternDraft] = []
    ids: list[str] = []
    try:
        rules = LearningConfig()
        for _ in range(count):
            draft = pattern_draft(rng, words)
            result = store.learn(draft, rules)
            if result.action == "created":
                drafts.append(draft)
                ids.append(result.pattern.id)
    finally:
        store.close()
    return drafts, ids, time.perf_counter() - started


class McpClient:
    """Sequential tools/call requests over one keep-alive connection, in the 2026-07-28 envelope."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection(HOST, port, timeout=30)
        self.next_id = 0

    def call(self, tool: str, arguments: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        """(seconds, structuredContent) of one call; a tool error stops the benchmark."""
        self.next_id += 1
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": self.next_id,
                "method": "tools/call",
                "params": {
                    "name": tool,
                    "arguments": arguments,
                    "_meta": {
                        "io.modelcontextprotocol/protocolVersion": PROTOCOL,
                        "io.modelcontextprotocol/clientCapabilities": {},
                        "io.modelcontextprotocol/clientInfo": {"name": "memory-bench", "version": "1.0"},
                    },
                },
            }
        )
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": PROTOCOL,
            "Mcp-Method": "tools/call",
            "Mcp-Name": tool,
        }
        if "namespace" in arguments:
            headers["Mcp-Param-Namespace"] = arguments["namespace"]
        started = time.perf_counter()
        self.conn.request("POST", "/mcp", body, headers)
        response = self.conn.getresponse()
        raw = response.read()
        elapsed = time.perf_counter() - started
        try:
            result = json.loads(raw)["result"]
        except (ValueError, KeyError) as exc:
            raise BenchError(f"{tool} answered HTTP {response.status}: {raw[:300]!r}") from exc
        if result.get("isError"):
            raise BenchError(f"{tool} returned an error for {arguments}: {result['content'][0]['text']}")
        return elapsed, result["structuredContent"]

    def close(self) -> None:
        self.conn.close()


@dataclass
class Row:
    scale: str
    operation: str
    target: str
    samples: list[float]
    note: str = ""

    def percentile(self, q: float) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    def line(self) -> str:
        p95 = self.percentile(0.95)
        limit = TARGETS_MS.get(self.target)
        verdict = "" if limit is None else ("ok" if p95 <= limit else f"OVER {limit:g} ms")
        return (
            f"{self.scale:>10} {self.operation:<34} {len(self.samples):>6} {self.percentile(0.5):>8.3f} "
            f"{p95:>8.3f} {self.percentile(0.99):>8.3f}  {verdict:<12} {self.note}"
        ).rstrip()


def measure(
    count: int,
    make: Callable[[int], tuple[str, dict[str, Any]]],
    client: McpClient,
    check: Callable[[dict[str, Any]], bool] | None = None,
) -> list[float]:
    samples = []
    for i in range(count):
        tool, arguments = make(i)
        elapsed, content = client.call(tool, arguments)
        if check is not None and not check(content):
            raise BenchError(f"{tool} {arguments} gave an unexpected result: {json.dumps(content)[:300]}")
        samples.append(elapsed)
    return samples


def memory_rows(client: McpClient, corpus: Corpus, scale: str, requests: int) -> list[Row]:
    rng = random.Random(11)
    n = corpus.entries

    def store_new(i: int) -> tuple[str, dict[str, Any]]:
        return "qe_memory_store", {
            "key": f"new/{i}",
            "namespace": NAMESPACE,
            "value": corpus.value(n + i),
            "tags": corpus.tags(n + i),
        }

    def store_replace(i: int) -> tuple[str, dict[str, Any]]:
        j = rng.randrange(n)
        return "qe_memory_store", {
            "key": f"run/{j % 500}/{j}",
            "namespace": NAMESPACE,
            "value": corpus.value(j),
            "tags": corpus.tags(j),
        }

    def retrieve(i: int) -> tuple[str, dict[str, Any]]:
        j = rng.randrange(n)
        return "qe_memory_retrieve", {"key": f"run/{j % 500}/{j}", "namespace": NAMESPACE}

    def one_word(i: int) -> tuple[str, dict[str, Any]]:
        return "qe_memory_search", {"query": rng.choice(corpus.words), "namespace": NAMESPACE}

    def two_words_and_tag(i: int) -> tuple[str, dict[str, Any]]:
        a, b = rng.sample(corpus.words, 2)
        return "qe_memory_search", {"query": f"{a} {b[:3]}*", "tags": ["bench"], "namespace": NAMESPACE}

    def glob_and_tags(i: int) -> tuple[str, dict[str, Any]]:
        return "qe_memory_search", {
            "pattern": f"run/{rng.randrange(500)}/*",
            "tags": [f"suite-{rng.randrange(50)}"],
        }

    def broad(i: int) -> tuple[str, dict[str, Any]]:
        return "qe_memory_search", {"query": rng.choice(STATUSES), "namespace": NAMESPACE}

    def whole_namespace(i: int) -> tuple[str, dict[str, Any]]:
        return "qe_memory_search", {"namespace": NAMESPACE, "offset": rng.randrange(1000)}

    def has_matches(content: dict[str, Any]) -> bool:
        return bool(content["matches"]) and content["total"] > 0

    words_per_entry = 9 / len(corpus.words)  # about 8 error words and 1 test-name word per entry
    searches = max(requests // 2, 50)
    return [
        Row(scale, "store (new key)", "store", measure(requests, store_new, client)),
        Row(scale, "store (replace existing key)", "store", measure(requests, store_replace, client)),
        Row(scale, "retrieve", "retrieve", measure(requests, retrieve, client, lambda c: c["found"] is True)),
        Row(
            scale,
            "search: 1 word",
            "search",
            measure(searches, one_word, client, has_matches),
            f"~{n * words_per_entry:.0f} matches per word",
        ),
        Row(scale, "search: word + prefix* + tag", "search", measure(searches, two_words_and_tag, client)),
        Row(scale, "search: key glob + tag", "search", measure(searches, glob_and_tags, client)),
        Row(
            scale,
            "search: word in 1/4 of entries",
            "",
            measure(max(searches // 10, 10), broad, client, has_matches),
            f"~{n // 4} matches ranked; no target",
        ),
        Row(
            scale,
            "search: list a whole namespace",
            "",
            measure(max(searches // 10, 10), whole_namespace, client, has_matches),
            f"total counts all {n}; no target",
        ),
    ]


def learning_rows(
    client: McpClient, drafts: list[PatternDraft], ids: list[str], words: list[str], requests: int, label: str
) -> list[Row]:
    rng = random.Random(13)

    def args(draft: PatternDraft, text: str) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "pattern": text,
            "patternType": draft.pattern_type,
            "domain": draft.domain,
            "language": draft.language,
            "confidence": draft.confidence,
        }
        if draft.framework is not None:
            arguments["framework"] = draft.framework
        return arguments

    def new_pattern(i: int) -> tuple[str, dict[str, Any]]:
        draft = pattern_draft(rng, words)
        return "qe_learn_pattern", args(draft, draft.text)

    def near_duplicate(i: int) -> tuple[str, dict[str, Any]]:
        j = rng.randrange(len(drafts))
        return "qe_learn_pattern", args(drafts[j], drafts[j].text.replace("    ", "  "))

    def with_outcome(i: int) -> tuple[str, dict[str, Any]]:
        j = rng.randrange(len(drafts))
        arguments = args(drafts[j], drafts[j].text)
        arguments["outcome"] = {"patternId": ids[j], "success": rng.random() < 0.8}
        return "qe_learn_pattern", arguments

    def status(i: int) -> tuple[str, dict[str, Any]]:
        return "qe_learn_status", {}

    def status_filtered(i: int) -> tuple[str, dict[str, Any]]:
        return "qe_learn_status", {"domain": rng.choice(DOMAINS), "language": rng.choice(list(LANGUAGES))}

    scale = label
    return [
        Row(scale, "learn_pattern (new)", "learn_pattern", measure(requests, new_pattern, client)),
        Row(
            scale,
            "learn_pattern (near-duplicate)",
            "learn_pattern",
            measure(requests, near_duplicate, client, lambda c: c["action"] == "merged"),
        ),
        Row(scale, "learn_pattern (+ outcome)", "learn_pattern", measure(requests, with_outcome, client)),
        Row(scale, "learn_status", "learn_status", measure(max(requests // 5, 20), status, client)),
        Row(
            scale,
            "learn_status (domain + language)",
            "learn_status",
            measure(max(requests // 5, 20), status_filtered, client),
        ),
    ]


LOCKING_MODES = ("normal", "exclusive")


def locking_rows(state_dir: Path, corpus: Corpus, scale: str, requests: int, rounds: int) -> list[Row]:
    """Store calls timed in-process under each locking mode, alternating modes round by round."""
    per_round = max(requests // rounds, 10)
    samples: dict[tuple[str, str], list[float]] = {}
    for round_no in range(rounds * len(LOCKING_MODES)):
        mode = LOCKING_MODES[round_no % len(LOCKING_MODES)]
        store = MemoryStore(state_dir / "memory.db")
        try:
            if mode == "exclusive":
                store._db.close()
                store._db = store.database.conn = former_connection(state_dir / "memory.db")
            store.get(NAMESPACE, "run/0/0")
            time_calls(store, corpus, mode, round_no * per_round, per_round, samples)
        finally:
            store.close()
    rows = []
    for (operation, mode), times in samples.items():
        target = {"retrieve": "retrieve", "store (new key)": "store"}.get(operation, "search")
        rows.append(Row(scale, f"{operation}, {mode} lock (in-process)", target, times))
    return rows


def former_connection(path: Path) -> sqlite3.Connection:
    """A connection opened as servers did when each owned its state alone: exclusive locking chosen before
    the first read (so the WAL index lives in this process's heap, not in the shared -shm file), then WAL
    mode and synchronous=FULL; the first read takes the lock and the connection keeps it for its life."""
    db = sqlite3.connect(path, isolation_level=None, cached_statements=64)
    db.execute("PRAGMA locking_mode = EXCLUSIVE")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    return db


def time_calls(
    store: MemoryStore, corpus: Corpus, mode: str, base: int, count: int, samples: dict[tuple[str, str], list[float]]
) -> None:
    """`count` calls of each operation on `store`, their wall times added to `samples[(operation, mode)]`."""
    calls: dict[str, Callable[[int], object]] = {
        "retrieve": lambda i: store.get(NAMESPACE, f"run/{i % 500}/{i % corpus.entries}"),
        "search: 1 word": lambda i: store.search(query=corpus.words[i % 200], namespace=NAMESPACE, limit=10),
        "store (new key)": lambda i: store.put(NAMESPACE, f"lock/{mode}/{i}", b'{"n": 1}', None),
    }
    for operation, fn in calls.items():
        times = samples.setdefault((operation, mode), [])
        for i in range(base, base + count):
            started = time.perf_counter()
            fn(i)
            times.append(time.perf_counter() - started)


def locking_summary(rows: list[Row]) -> list[str]:
    """p95 of each operation with normal locking relative to exclusive, from `locking_rows`' rows."""
    by_name = {row.operation: row for row in rows}
    lines = []
    for operation in dict.fromkeys(row.operation.split(", ")[0] for row in rows):
        normal = by_name[f"{operation}, normal lock (in-process)"]
        exclusive = by_name[f"{operation}, exclusive lock (in-process)"]
        p50 = normal.percentile(0.5) - exclusive.percentile(0.5)
        ratio = normal.percentile(0.95) / exclusive.percentile(0.95) - 1
        lines.append(
            f"{rows[0].scale:>7} {operation:<20} normal vs exclusive: p50 {p50 * 1000:+.1f} us, p95 {ratio:+.1%}"
        )
    return lines


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def baseline_rows(
    client: McpClient,
    client_pid: int,
    args: argparse.Namespace,
    scale: str,
    state_dir: Path,
    workdir: Path,
    started: list[http_bench.Server],
) -> list[Row]:
    """Retrieve and one-word search over HTTP against this tree's server and a server run from the source
    tree `args.baseline` (a previous version, extensions built) on a copy of the same memory.db, in
    interleaved rounds: before and after in one run."""
    base_dir = workdir / f"baseline-{scale}"
    base_dir.mkdir()
    with closing(sqlite3.connect(state_dir / "memory.db")) as src, closing(
        sqlite3.connect(base_dir / "memory.db")
    ) as dst:
        src.backup(dst)
    port = http_bench.free_port()
    bootstrap = (
        f"import sys; sys.path.insert(0, {str(args.baseline.absolute())!r}); "
        "from qe_appliance.cli import main; sys.exit(main())"
    )
    command = [sys.executable, "-c", bootstrap, "mcp", "start"]
    command += ["--config", str(http_bench.write_config(base_dir, port)), "--port", str(port)]
    print(f"[{scale}] baseline: {shlex.join(command)}", flush=True)
    server = http_bench.start_server(f"baseline-{scale}", command, port, workdir)
    started.append(server)
    http_bench.wait_ready(server)
    base = McpClient(port)
    words = vocabulary(2000, random.Random(5))
    calls: dict[str, Callable[[int], tuple[str, dict[str, Any]]]] = {
        "retrieve": lambda i: ("qe_memory_retrieve", {"key": f"run/{i % 500}/{i}", "namespace": NAMESPACE}),
        "search: 1 word": lambda i: ("qe_memory_search", {"query": words[i % 200], "namespace": NAMESPACE}),
    }
    samples: dict[tuple[str, str], list[float]] = {}
    # Server CPU seconds (user + system, from /proc) spent on each operation's calls.
    cpu: dict[tuple[str, str], float] = {}
    pids = {"this tree": client_pid, "baseline": server.process.pid}
    per_round = max(args.requests // args.rounds, 10)
    try:
        measure(args.warmup, calls["retrieve"], base)
        for round_no in range(args.rounds):
            for who, peer in (("this tree", client), ("baseline", base)) if round_no % 2 else (
                ("baseline", base), ("this tree", client)
            ):
                for operation, make in calls.items():
                    offset = round_no * per_round
                    before = cpu_seconds(pids[who])
                    samples.setdefault((operation, who), []).extend(
                        measure(per_round, lambda i, make=make, offset=offset: make(offset + i), peer)
                    )
                    cpu[operation, who] = cpu.get((operation, who), 0.0) + cpu_seconds(pids[who]) - before
    finally:
        base.close()
    http_bench.stop_server(server)
    rows = [
        Row(scale, f"{operation} ({who})", "retrieve" if operation == "retrieve" else "search", times)
        for (operation, who), times in samples.items()
    ]
    for operation in calls:
        ours = next(r for r in rows if r.operation == f"{operation} (this tree)")
        theirs = next(r for r in rows if r.operation == f"{operation} (baseline)")
        per_call = {who: cpu[operation, who] / len(samples[operation, who]) * 1e6 for who in pids}
        print(
            f"{scale:>7} {operation:<20} this tree vs baseline over HTTP: p50 "
            f"{(ours.percentile(0.5) - theirs.percentile(0.5)) * 1000:+.1f} us, p95 "
            f"{ours.percentile(0.95) / theirs.percentile(0.95) - 1:+.1%}; server CPU per call "
            f"{per_call['this tree']:.0f} vs {per_call['baseline']:.0f} us",
            flush=True,
        )
    return rows


def run_scale(
    entries: int, patterns: int, args: argparse.Namespace, workdir: Path, started: list[http_bench.Server]
) -> list[Row]:
    scale = f"{entries // 1000}k" if entries >= 1000 else str(entries)
    state_dir = workdir / f"state-{entries}"
    state_dir.mkdir(parents=True)
    corpus = Corpus(entries, vocabulary(2000, random.Random(5)), random.Random(3))
    print(f"\n[{scale}] seeding {entries} memory entries ...", flush=True)
    print(f"[{scale}] seeded in {seed_memory(state_dir, corpus):.1f} s", flush=True)
    if args.locking:
        locking = locking_rows(state_dir, corpus, scale, args.requests, args.rounds)
        for row in locking:
            print(row.line(), flush=True)
        for line in locking_summary(locking):
            print(line, flush=True)
        if args.locking_only:
            return locking
        # The servers compared below then start from the same file, with no WAL left by these writes.
        with closing(sqlite3.connect(state_dir / "memory.db")) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    drafts: list[PatternDraft] = []
    ids: list[str] = []
    if patterns:
        print(f"[{scale}] teaching {patterns} patterns ...", flush=True)
        drafts, ids, took = seed_patterns(state_dir, patterns, corpus.words)
        print(f"[{scale}] {len(ids)} distinct patterns stored in {took:.1f} s", flush=True)
    rows = serve_and_measure(f"{scale} sqlite", state_dir, None, corpus, drafts, ids, args, workdir, started)
    if args.pg_url is not None:
        pg_state = workdir / f"state-{entries}-pg"
        pg_state.mkdir()
        url = args.pg_url(f"{scale}_{entries}")
        print(f"\n[{scale}] seeding PostgreSQL {url} with the same data ...", flush=True)
        seeding = seed_postgresql(url, args.pg_password_file, corpus, patterns, corpus.words)
        took, pg_drafts, pg_ids, taught = asyncio.run(seeding)
        print(f"[{scale}] seeded in {took:.1f} s, {len(pg_ids)} patterns in {taught:.1f} s", flush=True)
        rows += serve_and_measure(
            f"{scale} pg", pg_state, {"url": url, "passwordFile": args.pg_password_file}, corpus, pg_drafts,
            pg_ids, args, workdir, started,
        )
    return rows


def serve_and_measure(
    label: str,
    state_dir: Path,
    store: dict[str, str] | None,
    corpus: Corpus,
    drafts: list[PatternDraft],
    ids: list[str],
    args: argparse.Namespace,
    workdir: Path,
    started: list[http_bench.Server],
) -> list[Row]:
    """Start a server on `state_dir` (and `store`, the YAML store block, for PostgreSQL) and time its calls."""
    port = http_bench.free_port()
    config = http_bench.write_config(state_dir, port)
    if store is not None:
        config.write_text(json.dumps({**json.loads(config.read_text()), "store": store}, indent=2) + "\n")
    command = http_bench.ours_command(config, port)
    print(f"[{label}] {shlex.join(command)}", flush=True)
    server = http_bench.start_server(f"ours-{label.replace(' ', '-')}", command, port, workdir)
    started.append(server)
    http_bench.wait_ready(server)
    client = McpClient(port)
    try:
        measure(
            args.warmup,
            lambda i: ("qe_memory_retrieve", {"key": f"run/{i % 500}/{i}", "namespace": NAMESPACE}),
            client,
        )
        rows = []
        if args.baseline is not None and store is None:
            rows += baseline_rows(client, server.process.pid, args, label, state_dir, workdir, started)
        rows += memory_rows(client, corpus, label, args.requests)
        if ids:
            rows += learning_rows(client, drafts, ids, corpus.words, args.requests // 2, label)
    finally:
        client.close()
    if server.process.poll() is not None:
        raise BenchError(f"the server died during the run; its log:\n{http_bench.log_tail(server.log)}")
    http_bench.stop_server(server)
    for row in rows:
        print(row.line(), flush=True)
    return rows


def side_by_side(rows: list[Row]) -> list[str]:
    """Each operation's p50 and p95 on SQLite and PostgreSQL in one line, with PostgreSQL's ratio."""
    lines = []
    for pg in rows:
        if not pg.scale.endswith(" pg"):
            continue
        twin = pg.scale.removesuffix(" pg") + " sqlite"
        sqlite = next((r for r in rows if r.scale == twin and r.operation == pg.operation), None)
        if sqlite is None:
            continue
        lines.append(
            f"{twin.split()[0]:>7} {pg.operation:<34} sqlite {sqlite.percentile(0.5):7.3f} / "
            f"{sqlite.percentile(0.95):7.3f}  postgresql {pg.percentile(0.5):7.3f} / {pg.percentile(0.95):7.3f}"
            f"  p50 x{pg.percentile(0.5) / sqlite.percentile(0.5):.2f}"
        )
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--entries",
        type=lambda text: [int(x) for x in text.split(",")],
        default=[10_000, 100_000],
        help="memory entries seeded, one run per value, comma-separated (default 10000,100000)",
    )
    parser.add_argument(
        "--patterns",
        type=int,
        default=10_000,
        help="patterns taught before the first run's learning calls (default 10000; 0 skips)",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=2000,
        help="calls per store/retrieve row; searches get half, learning rows a half (default 2000)",
    )
    parser.add_argument(
        "--warmup", type=int, default=200, help="unreported retrieve calls first (default 200)"
    )
    parser.add_argument(
        "--locking", action="store_true", help="also time store calls under normal vs exclusive SQLite locking"
    )
    parser.add_argument("--locking-only", action="store_true", help="only the --locking comparison (no server)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds per locking mode (default 10)")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a source tree of a previous version (extensions built): time its server against this one",
    )
    parser.add_argument("--keep-state", action="store_true", help="keep the temporary state dirs and logs")
    parser.add_argument(
        "--postgresql", action="store_true", help="also run each scale with store.url on PostgreSQL"
    )
    parser.add_argument(
        "--pg-url",
        dest="pg_database",
        help="an existing, empty PostgreSQL database for --postgresql (default: a temporary cluster)",
    )
    parser.add_argument("--pg-password-file", default="", help="store.passwordFile for --pg-url")
    args = parser.parse_args(argv)
    args.locking = args.locking or args.locking_only
    args.postgresql = args.postgresql or args.pg_database is not None
    args.pg_url = None  # set by main: scale name -> URL of an empty database
    if (
        not args.entries
        or min(args.entries) < 1
        or args.requests < 20
        or args.patterns < 0
        or args.warmup < 0
    ):
        parser.error(
            "--entries must be positive, --requests at least 20, --patterns and --warmup not negative"
        )
    return args


def temporary_cluster(workdir: Path) -> Any:
    """A PostgreSQL cluster for this run, set up as the tests set theirs up (tests/pg.py)."""
    sys.path.insert(0, str(http_bench.REPO / "tests"))
    from pg import PostgresServer

    root = workdir / "postgresql"
    root.mkdir()
    root.chmod(0o755)
    workdir.chmod(0o755)  # the cluster runs as an unprivileged user, who must reach its directory
    cluster = PostgresServer(root)
    cluster.init()
    return cluster


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(
        f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; one client, one call at a time, "
        "keep-alive HTTP/1.1, times in ms measured by the client"
    )
    workdir = Path(tempfile.mkdtemp(prefix="aqe-memory-bench-"))
    started: list[http_bench.Server] = []
    rows: list[Row] = []
    failure: str | None = None
    cluster: Any = None
    try:
        if args.postgresql and args.pg_database is not None:
            if len(args.entries) > 1:
                raise BenchError("--pg-url holds one data set: give one --entries value")
            args.pg_url = lambda _name: args.pg_database
        elif args.postgresql:
            cluster = temporary_cluster(workdir)
            args.pg_url = lambda _name: cluster.tcp_url(cluster.database())
            args.pg_password_file = str(cluster.password_file)
        with http_bench.interrupt_on_sigterm():
            for index, entries in enumerate(args.entries):
                rows += run_scale(entries, args.patterns if index == 0 else 0, args, workdir, started)
    except (BenchError, KeyboardInterrupt) as exc:
        failure = f"error: {exc}" if isinstance(exc, BenchError) else "interrupted: stopping the server"
    finally:
        for server in started:
            http_bench.stop_server(server)
        if cluster is not None:
            cluster.stop("immediate")
    if failure is not None or args.keep_state:
        print(f"state and logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if rows:
        print(f"\n{'scale':>10} {'operation':<34} {'calls':>6} {'p50':>8} {'p95':>8} {'p99':>8}  target")
        for row in rows:
            print(row.line())
        comparison = side_by_side(rows)
        if comparison:
            print(f"\n{'scale':>7} {'operation':<34} p50 / p95 ms on each backend")
            print("\n".join(comparison))
    if failure is not None:
        print(failure, file=sys.stderr)
        return 2
    if any(row.percentile(0.95) > TARGETS_MS[row.target] for row in rows if row.target):
        print("note: an operation's p95 is over its target (marked OVER)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
