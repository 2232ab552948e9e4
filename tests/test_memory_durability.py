"""Crash safety end to end: a real server is killed with SIGKILL while clients store memory entries and teach
patterns over HTTP; after a restart on the same stateDir every acknowledged write is there and both
databases pass SQLite's integrity check (and FTS5's own check of the search index)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from tests.conftest import ServerProcess, start_server
from tests.test_http_edges import modern, request

WRITERS = 3
ACKS_BEFORE_KILL = 300
LOAD_DEADLINE_S = 8.0


class Writer(threading.Thread):
    """Calls one tool over a keep-alive connection until the server dies or the deadline passes.

    `acked` holds the arguments of every call whose successful result came back.
    """

    def __init__(self, srv: ServerProcess, tool: str, arguments: Any, deadline: float) -> None:
        super().__init__(daemon=True)
        self.srv, self.tool, self.arguments, self.deadline = srv, tool, arguments, deadline
        self.acked: list[dict[str, Any]] = []
        self.results: list[dict[str, Any]] = []

    def run(self) -> None:
        conn = http.client.HTTPConnection(self.srv.host, int(self.srv.port), timeout=5)
        try:
            for i in range(100_000):
                if time.monotonic() > self.deadline:
                    return
                args = self.arguments(i)
                body, headers = modern("tools/call", {"name": self.tool, "arguments": args}, msg_id=i)
                if "namespace" in args:
                    headers["Mcp-Param-Namespace"] = args["namespace"]
                conn.request(
                    "POST",
                    "/mcp",
                    json.dumps(body),
                    {
                        "Content-Type": "application/json",
                        "Accept": "application/json, text/event-stream",
                        **headers,
                    },
                )
                response = conn.getresponse()
                result = json.loads(response.read())["result"]
                assert result["isError"] is False, result
                self.acked.append(args)
                self.results.append(result["structuredContent"])
        except (OSError, http.client.HTTPException, ValueError):
            return  # the server was killed under us
        finally:
            conn.close()


def memory_args(writer: int) -> Any:
    def make(i: int) -> dict[str, Any]:
        return {
            "key": f"w{writer}/k{i:06d}",
            "namespace": "crash",
            "value": {"writer": writer, "i": i, "note": "durable words " + "x" * 150},
            "tags": ["crash", f"writer{writer}"],
        }

    return make


def pattern_args(i: int) -> dict[str, Any]:
    # A distinct domain per call, so each one creates a pattern instead of merging.
    return {
        "pattern": f"assert handler_{i}(payload) == expected_{i}",
        "patternType": "assertion",
        "domain": f"domain-{i}",
        "language": "python",
        "confidence": 0.7,
    }


def call(srv: ServerProcess, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    body, headers = modern("tools/call", {"name": tool, "arguments": arguments})
    if "namespace" in arguments:
        headers["Mcp-Param-Namespace"] = arguments["namespace"]
    status, _, raw = request(srv, "POST", body=body, headers=headers)
    assert status == 200, raw
    result = json.loads(raw)["result"]
    assert result["isError"] is False, result
    content: dict[str, Any] = result["structuredContent"]
    return content


def check_databases(state: Path) -> None:
    with contextlib.closing(sqlite3.connect(state / "memory.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        db.execute("INSERT INTO memory_fts (memory_fts) VALUES ('integrity-check')")  # raises when corrupt
    with contextlib.closing(sqlite3.connect(state / "patterns.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_every_acknowledged_write_survives_kill_9_of_the_server(tmp_path: Path) -> None:
    srv = start_server(tmp_path)
    deadline = time.monotonic() + LOAD_DEADLINE_S
    memory_writers = [Writer(srv, "qe_memory_store", memory_args(w), deadline) for w in range(WRITERS)]
    pattern_writer = Writer(srv, "qe_learn_pattern", pattern_args, deadline)
    writers = [*memory_writers, pattern_writer]
    try:
        for writer in writers:
            writer.start()
        while time.monotonic() < deadline and sum(len(w.acked) for w in memory_writers) < ACKS_BEFORE_KILL:
            time.sleep(0.01)
        assert all(writer.is_alive() for writer in writers), "a writer stopped before the kill"
        os.kill(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait(timeout=5)
        for writer in writers:
            writer.join(timeout=10)
    finally:
        srv.stop()
    assert srv.proc.returncode == -signal.SIGKILL
    acked = [args for writer in memory_writers for args in writer.acked]
    assert len(acked) >= ACKS_BEFORE_KILL and pattern_writer.acked

    again = start_server(tmp_path)
    try:
        for args in acked:
            got = call(again, "qe_memory_retrieve", {"key": args["key"], "namespace": "crash"})
            assert got["found"] is True, f"acknowledged key {args['key']} was lost"
            assert (got["value"], got["tags"]) == (args["value"], sorted(args["tags"]))
        found = call(again, "qe_memory_search", {"query": "durable", "namespace": "crash", "tags": ["crash"]})
        # Each writer may have had one more store committed but not yet answered when it was killed.
        assert len(acked) <= found["total"] <= len(acked) + WRITERS
        for result in pattern_writer.results:
            assert (
                call(again, "qe_learn_status", {"domain": result["pattern"]["domain"]})["totals"]["patterns"]
                == 1
            )
    finally:
        again.stop()
    check_databases(again.state)
