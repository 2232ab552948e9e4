"""The task and coverage-report stores through the interface the tools use, on SQLite and on PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pg import blocking_pg_stores

from qe_appliance.store.reports import MAX_ARTIFACTS, Artifact, StoredReport
from qe_appliance.store.stores import Stores


@pytest.fixture(params=["sqlite", "postgresql"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Stores whose methods are called as plain methods on either backend."""
    if request.param == "sqlite":
        sqlite = Stores(tmp_path / "state")
        yield sqlite
        sqlite.close()
        return
    with blocking_pg_stores(request.getfixturevalue("postgres")) as pg:
        yield pg


def test_a_task_counts_its_subtasks_and_closes_with_the_last(stores: Any) -> None:
    tasks = stores.tasks
    task_id = tasks.create("qe_memory_store", "parallel", "high", [{"a": 1}, {"b": [2, None]}])
    assert task_id.startswith("task-")
    tasks.started(task_id, 0)
    tasks.finished(task_id, 0, b'{"ok": true}', None)
    running = tasks.get(task_id)
    assert running is not None and running["status"] == "running" and running["completed"] == 1
    assert [s["status"] for s in running["subtasks"]] == ["completed", "pending"]
    assert running["subtasks"][1]["input"] == {"b": [2, None]}
    tasks.started(task_id, 1)
    tasks.finished(task_id, 1, None, "agent crashed")
    done = tasks.get(task_id)
    assert done is not None and (done["status"], done["completed"], done["failed"]) == ("failed", 1, 1)
    assert done["finishedAt"] is not None and done["subtasks"][0]["result"] == {"ok": True}
    assert done["subtasks"][1]["error"] == "agent crashed" and done["subtasks"][0]["durationMs"] is not None
    assert tasks.get("task-missing") is None
    other = tasks.create("pipeline", "sequential", "low", [])
    assert [t["taskId"] for t in tasks.recent(5)] == [other, task_id]
    assert "subtasks" not in tasks.get(task_id, subtasks=False)


def test_reports_are_found_by_id_and_by_path_and_only_the_newest_kept(stores: Any) -> None:
    reports = stores.reports
    for i, root in enumerate(["/repo", "/repo/shop/api", "/other"]):
        reports.put(StoredReport(f"r{i}", "lcov", root, "coverage.lcov", 1000.0 + i), bytes([i]) * 10)
    assert reports.get("r1") == (StoredReport("r1", "lcov", "/repo/shop/api", "coverage.lcov", 1001.0), b"\x01" * 10)
    assert reports.get("nope") is None
    latest = reports.latest_for("/repo/shop")  # r0 contains it, r1 lies inside it: the newer wins
    assert latest is not None and latest.id == "r1"
    assert reports.latest_for("/repo/shopping") is not None and reports.latest_for("/repo/shopping").id == "r0"
    assert reports.latest_for("/elsewhere") is None
    # The same report again refreshes it instead of adding a copy.
    reports.put(StoredReport("r0", "lcov", "/repo", "again.lcov", 2000.0), b"\x00" * 10)
    assert reports.count() == 3 and reports.latest_for("/repo/shop").id == "r0"
    for i in range(3, 3 + reports.max_reports):
        reports.put(StoredReport(f"r{i}", "lcov", "/bulk", "x", 3000.0 + i), b"")
    assert reports.count() == reports.max_reports and reports.get("r0") is None


def test_artifacts_and_recent_reports_newest_first_and_bounded(stores: Any) -> None:
    reports = stores.reports
    for i in range(3):
        reports.put(StoredReport(f"r{i}", "lcov", "/repo", "x", 1000.0 + i), b"")
    assert [r.id for r in reports.recent(2)] == ["r2", "r1"]
    module = b"def test_x():\n    assert True\n"
    reports.put_artifact(Artifact("gen-1", "test-module", "test_x.py", "text/x-python", 10.0), module)
    reports.put_artifact(Artifact("res-1", "result", "big", "application/json", 11.0), b"{}")
    reports.put_artifact(Artifact("gen-2", "test-module", "test_y.py", "text/x-python", 12.0), b"")
    first = Artifact("gen-1", "test-module", "test_x.py", "text/x-python", 10.0)
    assert reports.get_artifact("gen-1") == (first, module)
    assert reports.get_artifact("gen-404") is None
    assert [a.id for a in reports.recent_artifacts("test-module", 10)] == ["gen-2", "gen-1"]
    assert [a.id for a in reports.recent_artifacts("result", 10)] == ["res-1"]
    for i in range(MAX_ARTIFACTS):
        reports.put_artifact(Artifact(f"bulk-{i}", "result", "b", "application/json", 100.0 + i), b"")
    assert reports.get_artifact("gen-1") is None and len(reports.recent_artifacts("result", 10_000)) == MAX_ARTIFACTS


def test_a_tool_call_task_belongs_to_its_principal_and_expires_with_its_ttl(stores: Any) -> None:
    tasks = stores.tasks
    call = tasks.create_call("qe_test_generate", {"source": "x = 1\n"}, "alice", 60_000)
    task_id = call["taskId"]
    assert (call["status"], call["principal"], call["ttlMs"], call["result"]) == ("running", "alice", 60_000, None)
    # The same row is an ordinary one-subtask task to qe_fleet_status.
    shown = tasks.get(task_id)
    assert shown["kind"] == "qe_test_generate" and shown["subtasks"][0]["input"] == {"source": "x = 1\n"}
    assert tasks.finish_call(task_id, "completed", b'{"tests": 3}', None)
    assert not tasks.finish_call(task_id, "cancelled", None, "too late")  # terminal states stay
    done = tasks.get_call(task_id)
    assert (done["status"], done["result"], done["error"]) == ("completed", b'{"tests": 3}', None)
    assert tasks.get(task_id)["subtasks"][0]["result"] == {"tests": 3}
    # Listing: only the principal's own, oldest first, in pages after a (createdAt, taskId) cursor.
    mine = [call["taskId"]] + [tasks.create_call("qe_coverage_analyze", {}, "alice", None)["taskId"] for _ in range(3)]
    theirs = tasks.create_call("qe_coverage_analyze", {}, "bob", None)["taskId"]
    anonymous = tasks.create_call("qe_coverage_analyze", {}, None, None)["taskId"]
    first = tasks.list_calls("alice", None, 2)
    rest = tasks.list_calls("alice", (first[-1]["createdAt"], first[-1]["taskId"]), 10)
    assert [t["taskId"] for t in first + rest] == mine
    assert [t["taskId"] for t in tasks.list_calls("bob", None, 10)] == [theirs]
    assert [t["taskId"] for t in tasks.list_calls(None, None, 10)] == [anonymous]
    # An expired task is gone for reading at once, and purged from the tables.
    short = tasks.create_call("qe_test_generate", {}, "alice", 1)["taskId"]
    time.sleep(0.01)
    assert tasks.get_call(short) is None
    assert tasks.purge_expired_calls() == 1 and tasks.get(short) is None
    assert tasks.get_call(task_id) is not None
