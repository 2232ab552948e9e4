"""What running a call as an MCP task costs: a real server (`aqe-v3 mcp start`, SQLite state) driven over raw
HTTP in one 2025-11-25 session, one request at a time. For the same qe_test_generate call (static oracle, a small
function) it times the direct call, the task-augmented call until its CreateTaskResult (the durable write
included), the same until `tasks/result` returns the result, `background: true` until its answer, and one
`tasks/get` of a finished task. Rounds interleave the kinds so a busy machine slows them alike.

    .venv/bin/python bench/tasks_bench.py [--calls 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tests.conftest import start_server  # noqa: E402

SOURCE = "def clamp(x: int, lo: int, hi: int) -> int:\n    return max(lo, min(x, hi))\n"
ARGUMENTS = {"source": SOURCE, "oracle": "static"}
KINDS = ("direct", "task: created", "task: result", "background: answer", "tasks/get")


class Session:
    def __init__(self, url: str) -> None:
        self.http = httpx.Client(timeout=60)
        self.url = url
        self.headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}
        self.next_id = 0
        reply = self.http.post(url, headers=self.headers, json={
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "tasks-bench", "version": "1"}},
        })
        self.headers["Mcp-Session-Id"] = reply.headers["mcp-session-id"]
        self.http.post(url, headers=self.headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})

    def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.next_id += 1
        reply = self.http.post(self.url, headers=self.headers,
                               json={"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        body = json.loads(reply.content)
        if "result" not in body:
            raise RuntimeError(f"{method}: {body}")
        result: dict[str, Any] = body["result"]
        return result


def one_round(session: Session, calls: int, times: dict[str, list[float]]) -> None:
    for _ in range(calls):
        started = time.perf_counter()
        session.call("tools/call", {"name": "qe_test_generate", "arguments": ARGUMENTS})
        times["direct"].append(time.perf_counter() - started)

        started = time.perf_counter()
        task = session.call("tools/call", {"name": "qe_test_generate", "arguments": ARGUMENTS, "task": {}})["task"]
        times["task: created"].append(time.perf_counter() - started)
        session.call("tasks/result", {"taskId": task["taskId"]})
        times["task: result"].append(time.perf_counter() - started)

        started = time.perf_counter()
        session.call("tools/call", {"name": "qe_test_generate", "arguments": {**ARGUMENTS, "background": True}})
        times["background: answer"].append(time.perf_counter() - started)

        started = time.perf_counter()
        session.call("tasks/get", {"taskId": task["taskId"]})
        times["tasks/get"].append(time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=40, help="calls of each kind per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp), {"fleet": {"agents": {"generalist": 1, "test-generator": 1}}})
        try:
            session = Session(server.url)
            one_round(session, 3, {kind: [] for kind in KINDS})  # warm the agents and the store
            medians: dict[str, list[float]] = {kind: [] for kind in KINDS}
            for _ in range(args.rounds):
                times: dict[str, list[float]] = {kind: [] for kind in KINDS}
                one_round(session, args.calls, times)
                for kind in KINDS:
                    medians[kind].append(statistics.median(times[kind]) * 1000)
        finally:
            server.stop()
    direct = statistics.median(medians["direct"])
    print("| kind | median ms (median of rounds) | rounds | vs direct |")
    print("|---|---:|---|---:|")
    for kind in KINDS:
        value = statistics.median(medians[kind])
        rounds = ", ".join(f"{m:.2f}" for m in medians[kind])
        print(f"| {kind} | {value:.2f} | {rounds} | {value / direct:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
