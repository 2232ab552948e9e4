"""Several processes on one state directory, as MCP clients use the server: two stdio sessions started at
once beside an HTTP server share memory; online backup under write load and restore; a state directory
deleted while the server runs; private file modes; and SQLITE_BUSY waited out without holding the loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from qe_appliance.store import database
from qe_appliance.store.database import StoreBusyError, retrying
from qe_appliance.store.memory import MemoryStore
from tests.conftest import start_server, write_config
from tests.test_http_edges import modern, request
from tests.test_memory_durability import Writer, call, memory_args

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qe_appliance.cli", *args], capture_output=True, text=True, timeout=60, cwd=REPO
    )


def agent_sockets(state: Path) -> dict[int, list[str]]:
    """The agent sockets under the state directory, by the pid of the server that owns them."""
    owners: dict[int, list[str]] = {}
    for path in (state / "run").glob("agent-*.sock"):
        owners.setdefault(int(path.name.split("-")[1]), []).append(path.name)
    return owners


# One stdio session as a client process runs it: store this session's key, wait until the other session's key
# can be read, say so, then hold the session open until the test creates the release file.
_SESSION = """
import anyio, json, os, sys, time
from mcp import Client, StdioServerParameters

me, other, config, release = sys.argv[1:5]

async def main() -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "qe_appliance.cli", "mcp", "start", "--stdio", "--config", config],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    async with Client(params) as client:
        stored = await client.call_tool("qe_memory_store", {"key": me, "value": {"from": me}, "tags": ["shared"]})
        assert stored.structured_content["persisted"] is True, stored
        deadline = time.monotonic() + 30
        while True:
            got = await client.call_tool("qe_memory_retrieve", {"key": other})
            if got.structured_content["found"]:
                break
            assert time.monotonic() < deadline, "the other session's key never appeared"
            await anyio.sleep(0.05)
        print(json.dumps(got.structured_content["value"]), flush=True)
        while not os.path.exists(release):
            await anyio.sleep(0.05)

anyio.run(main)
"""


def test_two_stdio_sessions_and_an_http_server_share_one_state_directory(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (tmp_path / "http").mkdir()
    http = start_server(tmp_path / "http", {"server": {"stateDir": str(state)}})
    config = write_config(tmp_path / "stdio.yaml", state)
    release = tmp_path / "release"
    sessions: list[subprocess.Popen[str]] = []
    try:
        # Started at once, as a client opening two sessions in one project does.
        sessions = [
            subprocess.Popen(
                [sys.executable, "-c", _SESSION, me, other, str(config), str(release)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
            )
            for me, other in (("one", "two"), ("two", "one"))
        ]
        seen = [json.loads(session.stdout.readline() or "null") for session in sessions]
        assert seen == [{"from": "two"}, {"from": "one"}], [s.stderr.read() for s in sessions if s.poll() is not None]

        found = call(http, "qe_memory_search", {"query": "one", "tags": ["shared"]})
        assert [m["key"] for m in found["matches"]] == ["one"]
        assert call(http, "qe_memory_store", {"key": "one", "value": {"from": "http"}})["version"] == 2

        # Each process runs its agents on sockets of its own; only the HTTP server has the admin socket.
        owners = agent_sockets(state)
        assert len(owners) == 3 and http.proc.pid in owners, owners
        assert (state / "control.sock").exists()
        release.touch()
        for session in sessions:
            assert session.wait(30) == 0, session.stderr.read()
        # The sessions ended: their sockets are gone, the HTTP server's (and its admin socket) are not.
        assert set(agent_sockets(state)) == {http.proc.pid}
        assert cli("mcp", "status", "--socket", str(state / "control.sock")).returncode == 0
        assert request(http, "GET", "/readyz")[0] == 200
    finally:
        for session in sessions:
            if session.poll() is None:
                session.kill()
        http.stop()


def keys_in(db: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return {row[0] for row in conn.execute("SELECT key FROM memory_entries WHERE namespace = 'crash'")}


def test_backup_under_write_load_holds_every_acknowledged_write_and_restore_round_trips(tmp_path: Path) -> None:
    srv = start_server(tmp_path)
    config = str(tmp_path / "qe-mcp.yaml")
    backup_dir = tmp_path / "backup"
    try:
        writers = [Writer(srv, "qe_memory_store", memory_args(w), time.monotonic() + 30) for w in range(2)]
        for writer in writers:
            writer.start()
        while sum(len(w.acked) for w in writers) < 100:
            time.sleep(0.01)
        acked_before = {args["key"] for w in writers for args in list(w.acked)}
        done = cli("state", "backup", str(backup_dir), "--config", config)
        assert done.returncode == 0, done.stderr
        acked_during = sum(len(w.acked) for w in writers)
        # The servers kept writing while the backup ran; stop the load.
        refused = cli("state", "restore", str(backup_dir), "--config", config)
        assert refused.returncode == 1 and "a server is running" in refused.stderr, refused.stderr
        for writer in writers:
            writer.deadline = 0
            writer.join(10)
        acked_all = {args["key"] for w in writers for args in w.acked}
        assert len(acked_all) > len(acked_before) and acked_during > len(acked_before)
        backed_up = keys_in(backup_dir / "memory.db")
        assert acked_before <= backed_up, acked_before - backed_up
        assert sorted(p.name for p in backup_dir.iterdir()) == [
            "backup.json", "memory.db", "patterns.db", "reports.db", "tasks.db",
        ]
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in backup_dir.iterdir())
        call(srv, "qe_memory_store", {"key": "after-backup", "namespace": "crash", "value": 1})
    finally:
        assert srv.stop() == 0

    # Restore into the stopped server's state: what the backup held comes back, later writes do not.
    done = cli("state", "restore", str(backup_dir), "--config", config)
    assert done.returncode == 0, done.stderr
    assert keys_in(srv.state / "memory.db") == backed_up
    again = start_server(tmp_path)
    try:
        for key in sorted(acked_before)[:20]:
            assert call(again, "qe_memory_retrieve", {"key": key, "namespace": "crash"})["found"] is True
        assert call(again, "qe_memory_retrieve", {"key": "after-backup", "namespace": "crash"})["found"] is False
    finally:
        again.stop()


def test_backup_refuses_a_used_destination_and_a_missing_state(tmp_path: Path) -> None:
    config = write_config(tmp_path / "qe-mcp.yaml", tmp_path / "nothing-here")
    done = cli("state", "backup", str(tmp_path / "b"), "--config", str(config))
    assert done.returncode == 1 and "no store databases" in done.stderr and "stateDir" in done.stderr
    done = cli("state", "restore", str(tmp_path), "--config", str(config))
    assert done.returncode == 1 and "holds no store databases" in done.stderr


def test_a_deleted_state_directory_is_noticed_and_nothing_is_reported_stored(tmp_path: Path) -> None:
    srv = start_server(tmp_path)
    try:
        assert call(srv, "qe_memory_store", {"key": "before", "value": 1})["persisted"] is True
        shutil.rmtree(srv.state)
        body, headers = modern("tools/call", {"name": "qe_memory_store", "arguments": {"key": "k", "value": 2}})
        status, _, raw = request(srv, "POST", body=body, headers=headers)
        # Either the readiness gate (503) or the store's own check refuses it: never persisted: true.
        assert b'"persisted":true' not in raw
        assert status == 503 or b'"isError":true' in raw, raw
        assert b"was deleted while the server ran" in raw, raw
        status, _, raw = request(srv, "GET", "/readyz")
        assert status == 503 and b"state directory" in raw and b"deleted" in raw, raw
        deadline = time.monotonic() + 5
        while "aqe-v3 state restore" not in srv.log and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "deleted while the server ran" in srv.log and "aqe-v3 state restore" in srv.log
    finally:
        srv.stop()


def test_a_write_into_a_deleted_database_is_refused(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path / "state" / "memory.db")
    try:
        store.put("default", "a", b"1", None)
        shutil.rmtree(tmp_path / "state")
        with pytest.raises(database.StateGoneError, match="was deleted while the server ran.*state restore"):
            store.put("default", "b", b"2", None)
    finally:
        store.close()


def test_every_file_the_server_creates_is_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    sockets = tmp_path / "ctl"
    sockets.mkdir(mode=0o700)
    srv = start_server(tmp_path, {"server": {"controlSocket": str(sockets / "control.sock")}})
    try:
        call(srv, "qe_memory_store", {"key": "secret", "value": "do not share"})
        assert "made" in srv.log and "private" in srv.log
        created = [state, *state.rglob("*"), *sockets.iterdir()]
        assert state / "memory.db-wal" in created
        open_to_others = {str(p): oct(stat.S_IMODE(p.lstat().st_mode)) for p in created if p.lstat().st_mode & 0o077}
        assert open_to_others == {}
    finally:
        srv.stop()


def test_database_files_an_older_version_left_readable_are_tightened(tmp_path: Path) -> None:
    path = tmp_path / "memory.db"
    MemoryStore(path).close()
    path.chmod(0o644)
    store = MemoryStore(path)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(Path(f"{path}-wal").stat().st_mode) == 0o600
    finally:
        store.close()


def test_a_locked_database_is_waited_for_without_holding_the_event_loop(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path / "memory.db")
    other = sqlite3.connect(tmp_path / "memory.db", isolation_level=None)

    async def scenario() -> tuple[float, Any]:
        other.execute("BEGIN IMMEDIATE")  # another process's write in progress
        gaps: list[float] = []

        async def ticker() -> None:
            last = time.perf_counter()
            while True:
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        asyncio.get_running_loop().call_later(0.3, other.execute, "COMMIT")
        started = time.perf_counter()
        put = await retrying(store.put, "default", "k", b"1", None)
        waited = time.perf_counter() - started
        tick.cancel()
        # The loop kept turning while the write waited: no gap near the 300 ms the lock was held.
        assert max(gaps) < 0.1, max(gaps)
        return waited, put

    try:
        waited, put = asyncio.run(scenario())
        assert waited >= 0.29 and put.version == 1
    finally:
        other.close()
        store.close()


def test_a_lock_held_past_the_deadline_gives_a_clear_retryable_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database, "BUSY_DEADLINE_S", 0.2)
    store = MemoryStore(tmp_path / "memory.db")
    other = sqlite3.connect(tmp_path / "memory.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreBusyError, match="locked by another process.*retry"):
            asyncio.run(retrying(store.put, "default", "k", b"1", None))
        other.execute("ROLLBACK")
        assert asyncio.run(retrying(store.put, "default", "k", b"1", None)).version == 1
    finally:
        other.close()
        store.close()


def test_processes_starting_at_once_migrate_each_database_once(tmp_path: Path) -> None:
    script = (
        "import sys, pathlib; from qe_appliance.store.stores import Stores; "
        "Stores(pathlib.Path(sys.argv[1])).close()"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "state")], stderr=subprocess.PIPE, cwd=REPO)
        for _ in range(4)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / "memory.db")) as db:
        assert db.execute("SELECT version FROM schema_version ORDER BY version").fetchall() == [(1,), (2,)]


def test_running_tasks_of_a_live_neighbour_are_not_marked_interrupted(tmp_path: Path) -> None:
    from qe_appliance.store.tasks import TaskStore

    first = TaskStore(tmp_path / "tasks.db")
    try:
        mine = first.create("qe_memory_store", "parallel", "medium", [{}])
        # Another process opening the same database while this one still runs the task.
        probe = (
            "import sys, pathlib; from qe_appliance.store.tasks import TaskStore; "
            "s = TaskStore(pathlib.Path(sys.argv[1])); print(s.get(sys.argv[2], subtasks=False)['status'])"
        )
        seen = subprocess.run(
            [sys.executable, "-c", probe, str(tmp_path / "tasks.db"), mine],
            capture_output=True, text=True, timeout=60, cwd=REPO,
        )
        assert seen.stdout.strip() == "running", seen.stderr
    finally:
        first.close()
    # Reopened by the same pid, as a restarted server that drew its old pid would: its leftovers are interrupted.
    again = TaskStore(tmp_path / "tasks.db")
    try:
        task = again.get(mine, subtasks=True)
        assert task is not None and task["status"] == "interrupted"
        assert task["subtasks"][0]["status"] == "interrupted"
    finally:
        again.close()


def test_the_state_lock_keeps_a_server_out_while_a_restore_runs(tmp_path: Path) -> None:
    from qe_appliance.store.statedir import lock_state
    from qe_appliance.store.stores import Stores

    (tmp_path / "state").mkdir()
    held = lock_state(tmp_path / "state", exclusive=True)
    assert held is not None
    try:
        with pytest.raises(database.StoreError, match="restore.*is replacing the state"):
            Stores(tmp_path / "state")
    finally:
        os.close(held)
    Stores(tmp_path / "state").close()


def test_a_read_never_serves_what_another_process_replaced(tmp_path: Path) -> None:
    # The server keeps the entries it read in memory; every write by another process (here this test's own
    # connection to the state directory) must show in the very next read, as must the server's own writes and
    # an entry's expiry.
    http = start_server(tmp_path, {"server": {"rateLimit": {"requestsPerSecond": 0}}})
    writer = MemoryStore(tmp_path / "state" / "memory.db")
    try:
        for n in range(1, 201):
            writer.put("default", "hot", json.dumps({"n": n}).encode(), None)
            got = call(http, "qe_memory_retrieve", {"key": "hot"})
            assert (got["value"], got["version"]) == ({"n": n}, n)
            assert call(http, "qe_memory_retrieve", {"key": "hot"})["value"] == {"n": n}  # served from memory
        writer.put("default", "cold", b"1", None)
        assert call(http, "qe_memory_retrieve", {"key": "cold"})["found"] is True
        with writer.batch():  # a transaction that removes it: committed, the next read must not find it
            writer._db.execute("DELETE FROM memory_entries WHERE key = 'cold'")
        assert call(http, "qe_memory_retrieve", {"key": "cold"})["found"] is False

        assert call(http, "qe_memory_store", {"key": "hot", "value": "mine"})["version"] == 201
        assert call(http, "qe_memory_retrieve", {"key": "hot"})["value"] == "mine"
        assert writer.get("default", "hot").value_json == b'"mine"'  # type: ignore[union-attr]

        writer.put("default", "brief", b"1", 0.5)
        assert call(http, "qe_memory_retrieve", {"key": "brief"})["found"] is True
        time.sleep(0.6)
        assert call(http, "qe_memory_retrieve", {"key": "brief"})["found"] is False
    finally:
        writer.close()
        http.stop()


@pytest.mark.parametrize("mapped", [True, False], ids=["wal-index", "data_version"])
def test_the_commit_mark_moves_with_every_commit_of_another_connection(tmp_path: Path, mapped: bool) -> None:
    # Both ways MemoryStore.get notices another writer: the mapped wal-index header, and (where the -shm file
    # cannot be mapped) data_version.
    path = tmp_path / "memory.db"
    reader, writer = MemoryStore(path), MemoryStore(path)
    try:
        if not mapped:
            reader.database._wal_index_mapped = True  # as if the -shm file could not be mapped
        for n in range(50):
            writer.put("ns", "k", str(n).encode(), None)
            assert reader.get("ns", "k").value_json == str(n).encode()  # type: ignore[union-attr]
            assert reader.get("ns", "k").value_json == str(n).encode()  # type: ignore[union-attr]
        assert (reader.database._wal_index is not None) is mapped
    finally:
        reader.close()
        writer.close()
