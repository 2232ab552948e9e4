"""The SQLite memory store: upsert and versions, TTL, search, persistence, and durability across kill -9."""

from __future__ import annotations

import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from qe_appliance.store.memory import MemoryStore, MemoryStoreError

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def db_path(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "state" / "memory.db"


@pytest.fixture
def store(db_path: pathlib.Path) -> Iterator[MemoryStore]:
    memory = MemoryStore(db_path)
    yield memory
    memory.close()


def keys(store: MemoryStore, **query: object) -> tuple[list[tuple[str, str]], int]:
    params: dict[str, object] = {
        "namespace": None,
        "pattern": None,
        "prefix": None,
        "limit": 100,
        "offset": 0,
    }
    params.update(query)
    entries, total = store.search(**params)  # type: ignore[arg-type]
    return [(e.namespace, e.key) for e in entries], total


def test_put_inserts_then_replaces_and_bumps_the_version(store: MemoryStore) -> None:
    first = store.put("default", "coverage/last", b'{"lines": 81.5}', None)
    assert (first.version, first.replaced, first.expires_at) == (1, False, None)

    second = store.put("default", "coverage/last", b'{"lines": 90}', None)
    assert (second.version, second.replaced) == (2, True)
    assert second.created_at == first.created_at
    assert second.updated_at >= first.updated_at

    entry = store.get("default", "coverage/last")
    assert entry is not None
    assert entry.value_json == b'{"lines": 90}'
    assert (entry.version, entry.created_at, entry.updated_at) == (2, first.created_at, second.updated_at)


def test_namespaces_keep_the_same_key_apart(store: MemoryStore) -> None:
    store.put("team-a", "k", b"1", None)
    store.put("team-b", "k", b"2", None)
    a, b = store.get("team-a", "k"), store.get("team-b", "k")
    assert a is not None and b is not None
    assert (a.value_json, a.version, b.value_json, b.version) == (b"1", 1, b"2", 1)
    assert store.get("team-c", "k") is None


def test_values_come_back_byte_for_byte(store: MemoryStore) -> None:
    value = '{"name":"Zoë ✓ 😀","nested":[1,2.5,null,true,{"x":"\\u0000"}]}'.encode()
    store.put("default", "unicode", value, None)
    entry = store.get("default", "unicode")
    assert entry is not None and entry.value_json == value


def test_expired_entries_are_gone_for_reads_and_search_and_restart_at_version_one(store: MemoryStore) -> None:
    put = store.put("default", "short", b'"soon gone"', 0.2)
    assert put.expires_at is not None and put.expires_at == pytest.approx(put.updated_at + 0.2)
    store.put("default", "stays", b'"kept"', None)
    assert store.get("default", "short") is not None

    time.sleep(0.3)
    assert store.get("default", "short") is None
    assert keys(store) == ([("default", "stays")], 1)

    again = store.put("default", "short", b'"back"', None)
    assert (again.version, again.replaced, again.expires_at) == (1, False, None)


def test_purge_expired_deletes_only_expired_rows(store: MemoryStore) -> None:
    for i in range(3):
        store.put("default", f"tmp{i}", b"0", 0.05)
    store.put("default", "keep", b"1", 3600)
    time.sleep(0.1)
    assert store.purge_expired() == 3
    assert store.purge_expired() == 0
    assert keys(store) == ([("default", "keep")], 1)


def test_glob_search_matches_keys_case_sensitively(store: MemoryStore) -> None:
    for key in ["coverage/api", "coverage/web", "coverage", "Coverage/old", "flaky/login", "cov1", "cov2"]:
        store.put("default", key, b"0", None)
    assert keys(store, pattern="coverage/*")[0] == [("default", "coverage/api"), ("default", "coverage/web")]
    assert keys(store, pattern="cov?")[0] == [("default", "cov1"), ("default", "cov2")]
    assert keys(store, pattern="*/[lo]*")[0] == [("default", "Coverage/old"), ("default", "flaky/login")]
    assert keys(store, pattern="nothing*") == ([], 0)


def test_prefix_search_includes_keys_that_continue_with_any_character(store: MemoryStore) -> None:
    for key in ["run/1", "run/2", "run/\uffff", "run/😀", "run", "rum", "ruo"]:
        store.put("default", key, b"0", None)
    found, total = keys(store, prefix="run/")
    assert sorted(key for _, key in found) == sorted(["run/1", "run/2", "run/\uffff", "run/😀"])
    assert total == 4


def test_search_filters_by_namespace_and_pages_with_a_total(store: MemoryStore) -> None:
    for i in range(25):
        store.put("proj", f"k{i:02d}", b"0", None)
    store.put("other", "k00", b"0", None)

    page, total = keys(store, namespace="proj", limit=10, offset=20)
    assert total == 25
    assert page == [("proj", f"k{i:02d}") for i in range(20, 25)]

    first, total_all = keys(store, limit=3)
    assert total_all == 26
    assert first == [("other", "k00"), ("proj", "k00"), ("proj", "k01")]

    both, total_both = keys(store, namespace="proj", pattern="k1*", prefix="k1", limit=4)
    assert total_both == 10 and both == [("proj", f"k1{i}") for i in range(4)]


def test_entries_persist_across_close_and_reopen(db_path: pathlib.Path) -> None:
    store = MemoryStore(db_path)
    store.put("default", "a", b'{"v":1}', None)
    store.put("default", "a", b'{"v":2}', 3600)
    store.close()

    reopened = MemoryStore(db_path)
    try:
        entry = reopened.get("default", "a")
        assert entry is not None
        assert (entry.value_json, entry.version) == (b'{"v":2}', 2)
        assert entry.expires_at is not None
        assert reopened.put("default", "a", b"3", None).version == 3
    finally:
        reopened.close()


def test_a_database_from_a_newer_build_is_refused_with_a_clear_message(db_path: pathlib.Path) -> None:
    MemoryStore(db_path).close()
    with sqlite3.connect(db_path) as db:
        db.execute("INSERT INTO schema_version (version) VALUES (99)")
    db.close()
    with pytest.raises(MemoryStoreError, match="schema version 99.*upgrade aqe-mcp"):
        MemoryStore(db_path)


def test_an_unopenable_path_names_the_file_and_the_fix(tmp_path: pathlib.Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(MemoryStoreError, match=r"not-a-dir.*writable"):
        MemoryStore(blocker / "memory.db")


# The writer acknowledges a key only after put() returned, then keeps writing until it is killed.
_WRITER = """
import pathlib, sys, time
from qe_appliance.store.memory import MemoryStore

store = MemoryStore(pathlib.Path(sys.argv[1]))
deadline = time.monotonic() + 5.0
for i in range(1_000_000):
    if time.monotonic() > deadline:
        break
    store.put("crash", f"k{i:07d}", b'{"i": %d, "pad": "%s"}' % (i, b"x" * 200), None)
    sys.stdout.write(f"{i}\\n")
    sys.stdout.flush()
"""


def test_every_acknowledged_write_survives_kill_9(db_path: pathlib.Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(db_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    acked: list[int] = []
    try:
        # The writer stops by itself after 5 s, so this loop ends even if it is slow.
        for line in proc.stdout:
            acked.append(int(line))
            if len(acked) >= 300:
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
        acked.extend(int(line) for line in proc.stdout.read().split())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    assert proc.returncode == -signal.SIGKILL, "the writer finished before it was killed"
    assert len(acked) >= 300

    store = MemoryStore(db_path)
    try:
        for i in acked:
            entry = store.get("crash", f"k{i:07d}")
            assert entry is not None, f"acknowledged key k{i:07d} was lost"
            assert entry.value_json.startswith(b'{"i": %d,' % i)
    finally:
        store.close()
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
