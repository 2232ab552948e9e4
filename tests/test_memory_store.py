"""The SQLite memory store: upsert and versions, tags and metadata, TTL and purging, full-text and glob
search, schema upgrades, persistence, and durability across kill -9 of a writer process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from pg import blocking_pg_stores

from qe_appliance.store import memory as memory_module
from qe_appliance.store.database import StoreError, open_database
from qe_appliance.store.memory import (
    MemoryStore,
    SearchQueryError,
    fts_query,
    purge_periodically,
)

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def db_path(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "state" / "memory.db"


@pytest.fixture
def sqlite_store(db_path: pathlib.Path) -> Iterator[MemoryStore]:
    memory = MemoryStore(db_path)
    yield memory
    memory.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, db_path: pathlib.Path) -> Iterator[MemoryStore]:
    """The same tests on both backends: the PostgreSQL store's coroutines are called as plain methods."""
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_store")
        return
    with blocking_pg_stores(request.getfixturevalue("postgres")) as stores:
        yield stores.memory  # type: ignore[misc]


def keys(store: MemoryStore, **query: object) -> tuple[list[tuple[str, str]], int]:
    query.setdefault("limit", 100)
    hits, total = store.search(**query)  # type: ignore[arg-type]
    return [(hit.entry.namespace, hit.entry.key) for hit in hits], total


def found(store: MemoryStore, **query: object) -> list[str]:
    return [key for _, key in keys(store, **query)[0]]


def index_is_consistent(target: pathlib.Path | MemoryStore) -> bool:
    """FTS5's own check that the index matches memory_entries, plus SQLite's integrity check.

    An open store holds its database exclusively, so it is checked through its own connection.
    """
    if not isinstance(target, pathlib.Path):
        return target.integrity_check()
    with contextlib.closing(MemoryStore(target)) as store:
        return store.integrity_check()


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


def test_namespaces_are_listed_by_prefix_live_entries_only(store: MemoryStore) -> None:
    for namespace in ("team-b", "team-a", "team-a", "other", "te%m"):
        store.put(namespace, "k", b"1", None)
    store.put("team-gone", "k", b"1", 0.001)
    time.sleep(0.01)
    assert store.namespaces("team-", 10) == ["team-a", "team-b"]
    assert store.namespaces("", 2) == ["other", "te%m"]
    assert store.namespaces("te%", 10) == ["te%m"]  # the prefix is literal, not a LIKE pattern


def test_values_come_back_byte_for_byte(store: MemoryStore) -> None:
    value = '{"name":"Zoë ✓ 😀","nested":[1,2.5,null,true,{"x":"\\u0000"}]}'.encode()
    store.put("default", "unicode", value, None)
    entry = store.get("default", "unicode")
    assert entry is not None and entry.value_json == value


def test_tags_and_metadata_are_stored_deduplicated_and_replaced_with_the_value(store: MemoryStore) -> None:
    store.put("default", "run/1", b"1", None, tags=["flaky", "auth", "flaky"], metadata_json=b'{"by":"ci"}')
    entry = store.get("default", "run/1")
    assert entry is not None
    assert (entry.tags, entry.metadata_json) == (["auth", "flaky"], b'{"by":"ci"}')

    store.put("default", "run/1", b"2", None, tags=["stable"])
    entry = store.get("default", "run/1")
    assert entry is not None and (entry.tags, entry.metadata_json) == (["stable"], None)
    assert found(store, tags=["flaky"]) == []
    assert found(store, tags=["stable"]) == ["run/1"]


def test_a_batch_of_puts_commits_together_or_not_at_all(store: MemoryStore) -> None:
    with store.batch():
        store.put("default", "a", b"1", None, tags=["seed"])
        store.put("default", "b", b"2", None, tags=["seed"])
    assert found(store, tags=["seed"]) == ["a", "b"]
    with pytest.raises(RuntimeError, match="import failed"), store.batch():
        store.put("default", "c", b"3", None, tags=["seed"])
        raise RuntimeError("import failed")
    assert store.get("default", "c") is None and found(store, query="seed") == ["a", "b"]


def test_tag_filter_needs_every_tag(store: MemoryStore) -> None:
    store.put("default", "a", b"0", None, tags=["flaky", "auth"])
    store.put("default", "b", b"0", None, tags=["flaky"])
    store.put("default", "c", b"0", None, tags=["auth", "flaky", "slow"])
    store.put("default", "d", b"0", None, tags=["Flaky"])
    assert found(store, tags=["flaky"]) == ["a", "b", "c"]
    assert found(store, tags=["flaky", "auth"]) == ["a", "c"]
    assert found(store, tags=["flaky", "auth", "slow"]) == ["c"]
    assert found(store, tags=["flaky", "nope"]) == []


def test_expired_entries_are_gone_for_reads_and_search_and_restart_at_version_one(store: MemoryStore) -> None:
    put = store.put("default", "short", b'"soon gone"', 0.2, tags=["t"])
    assert put.expires_at is not None and put.expires_at == pytest.approx(put.updated_at + 0.2)
    store.put("default", "stays", b'"kept"', None, tags=["t"])
    assert store.get("default", "short") is not None
    assert found(store, query="soon") == ["short"]

    time.sleep(0.3)
    assert store.get("default", "short") is None
    assert keys(store) == ([("default", "stays")], 1)
    assert keys(store, query="soon") == ([], 0)
    assert found(store, tags=["t"]) == ["stays"]

    again = store.put("default", "short", b'"back"', None)
    assert (again.version, again.replaced, again.expires_at) == (1, False, None)


def test_purge_removes_expired_rows_with_their_index_and_tag_rows(store: MemoryStore) -> None:
    for i in range(3):
        store.put("default", f"tmp{i}", b'"temporary words"', 0.05, tags=["tmp"])
    store.put("default", "keep", b'"lasting words"', 3600, tags=["tmp"])
    time.sleep(0.1)
    assert store.purge_expired() == 3
    assert store.purge_expired() == 0
    assert keys(store) == ([("default", "keep")], 1)
    assert found(store, tags=["tmp"]) == ["keep"] and found(store, query="temporary") == []
    assert index_is_consistent(store)
    if isinstance(store, MemoryStore):  # SQLite keeps tags and the index in tables of their own
        db = store._db
        assert db.execute("SELECT count(*) FROM memory_tags").fetchone() == (1,)
        assert db.execute("SELECT count(*) FROM memory_fts WHERE memory_fts MATCH 'temporary'").fetchone() == (0,)


def test_background_purge_clears_a_backlog_larger_than_one_batch(
    sqlite_store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = sqlite_store
    monkeypatch.setattr(memory_module, "PURGE_BATCH", 7)
    for i in range(30):
        store.put("default", f"tmp{i}", b"0", 0.01)
    store.put("default", "keep", b"1", None)
    time.sleep(0.05)

    async def one_tick() -> None:
        task = asyncio.create_task(purge_periodically(store, 3600))
        await asyncio.sleep(0.2)
        task.cancel()

    asyncio.run(one_tick())
    assert store._db.execute("SELECT key FROM memory_entries").fetchall() == [("keep",)]


def test_full_text_search_ranks_key_matches_first_and_highlights_the_words(store: MemoryStore) -> None:
    store.put("default", "notes/misc", b'{"text": "the checkout page had a timeout once"}', None)
    store.put("default", "timeout/checkout", b'{"text": "retry the payment call"}', None)
    store.put("default", "unrelated", b'{"text": "nothing to see"}', None)
    hits, total = store.search(query="timeout checkout")
    assert total == 2
    assert [hit.entry.key for hit in hits] == ["timeout/checkout", "notes/misc"]
    assert hits[0].score is not None and hits[1].score is not None and hits[0].score > hits[1].score
    assert "**timeout**" in (hits[1].snippet or "") and "**checkout**" in (hits[1].snippet or "")


def test_full_text_search_stems_folds_case_and_accents_and_matches_prefixes(store: MemoryStore) -> None:
    store.put("default", "a", b'{"why": "Timeouts while connecting to the caf\xc3\xa9 API"}', None)
    store.put("default", "b", b'{"why": "assertion failed"}', None, tags=["regression"])
    assert found(store, query="timeout") == ["a"]
    assert found(store, query="CAFE") == ["a"]
    assert found(store, query="connect") == ["a"]
    assert found(store, query="assert*") == ["b"]
    assert found(store, query="regression") == ["b"]
    assert found(store, query="timeout assertion") == []


def test_full_text_query_words_are_literal_not_fts_syntax(store: MemoryStore) -> None:
    store.put("default", "coverage/api", b'{"x": "NOT OR AND near"}', None)
    store.put("default", "coverage-web", b'"api"', None)
    assert found(store, query="coverage/api") == ["coverage/api"]
    assert found(store, query='NOT "near') == ["coverage/api"]
    assert found(store, query="col:api") == []
    assert fts_query('say "hi"') == '"say" """hi"""'
    with pytest.raises(SearchQueryError, match="no words to search for"):
        store.search(query=" - * () ")


def test_replaced_values_are_reindexed(store: MemoryStore) -> None:
    store.put("default", "k", b'"alpha words"', None, tags=["one"])
    store.put("default", "k", b'"beta words"', None, tags=["two"])
    assert found(store, query="alpha") == [] and found(store, query="one") == []
    assert found(store, query="beta") == ["k"] and found(store, query="two") == ["k"]
    assert index_is_consistent(store)


def test_search_combines_words_glob_namespace_and_tags(store: MemoryStore) -> None:
    store.put("proj", "flaky/login", b'"timeout on submit"', None, tags=["flaky"])
    store.put("proj", "flaky/pay", b'"timeout on pay"', None)
    store.put("other", "flaky/login", b'"timeout on submit"', None, tags=["flaky"])
    store.put("proj", "perf/login", b'"timeout on submit"', None, tags=["flaky"])
    assert keys(store, query="timeout", namespace="proj", pattern="flaky/*", tags=["flaky"]) == (
        [("proj", "flaky/login")],
        1,
    )
    assert keys(store, query="timeout", pattern="flaky/*")[1] == 3


def test_full_text_search_pages_with_a_total(store: MemoryStore) -> None:
    for i in range(12):
        store.put("default", f"k{i:02d}", b'"shared word"', None)
    first, total = keys(store, query="shared", limit=5)
    second, _ = keys(store, query="shared", limit=5, offset=5)
    last, _ = keys(store, query="shared", limit=5, offset=10)
    assert total == 12 and len(first) == 5 and len(last) == 2
    assert len({key for _, key in first + second + last}) == 12


def test_glob_search_matches_keys_case_sensitively(store: MemoryStore) -> None:
    for key in ["coverage/api", "coverage/web", "coverage", "Coverage/old", "flaky/login", "cov1", "cov2"]:
        store.put("default", key, b"0", None)
    assert found(store, pattern="coverage/*") == ["coverage/api", "coverage/web"]
    assert found(store, pattern="cov?") == ["cov1", "cov2"]
    assert found(store, pattern="*/[lo]*") == ["Coverage/old", "flaky/login"]
    assert keys(store, pattern="nothing*") == ([], 0)


def test_prefix_search_includes_keys_that_continue_with_any_character(store: MemoryStore) -> None:
    for key in ["run/1", "run/2", "run/\uffff", "run/😀", "run", "rum", "ruo"]:
        store.put("default", key, b"0", None)
    hits, total = keys(store, prefix="run/")
    assert sorted(key for _, key in hits) == sorted(["run/1", "run/2", "run/\uffff", "run/😀"])
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
    store.put("default", "a", b'{"v":2}', 3600, tags=["x"], metadata_json=b"{}")
    store.close()

    reopened = MemoryStore(db_path)
    try:
        entry = reopened.get("default", "a")
        assert entry is not None
        assert (entry.value_json, entry.version, entry.tags, entry.metadata_json) == (
            b'{"v":2}',
            2,
            ["x"],
            b"{}",
        )
        assert entry.expires_at is not None
        assert reopened.put("default", "a", b"3", None).version == 3
    finally:
        reopened.close()


def test_a_database_from_the_previous_schema_is_upgraded_and_indexed(db_path: pathlib.Path) -> None:
    old = open_database(db_path, memory_module._MIGRATIONS[:1], "memory database")
    old.conn.execute(
        "INSERT INTO memory_entries (namespace, key, value, version, created_at, updated_at) "
        "VALUES ('default', 'legacy/run', '{\"note\": \"written before tags existed\"}', 4, 1.0, 2.0)"
    )
    old.close()

    store = MemoryStore(db_path)
    try:
        entry = store.get("default", "legacy/run")
        assert entry is not None and (entry.version, entry.tags, entry.metadata_json) == (4, [], None)
        assert found(store, query="tags existed") == ["legacy/run"]
        store.put("default", "legacy/run", b'"new"', None, tags=["t"])
        assert found(store, query="existed") == [] and found(store, tags=["t"]) == ["legacy/run"]
    finally:
        store.close()
    assert index_is_consistent(db_path)


def test_a_database_from_a_newer_build_is_refused_with_a_clear_message(db_path: pathlib.Path) -> None:
    MemoryStore(db_path).close()
    with contextlib.closing(sqlite3.connect(db_path)) as db, db:
        db.execute("INSERT INTO schema_version (version) VALUES (99)")
    with pytest.raises(StoreError, match="schema version 99.*upgrade aqe-mcp"):
        MemoryStore(db_path)


def test_an_unopenable_path_names_the_file_and_the_fix(tmp_path: pathlib.Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(StoreError, match=r"not-a-dir.*writable"):
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
    value = b'{"i": %d, "pad": "%s words to index"}' % (i, b"x" * 200)
    store.put("crash", f"k{i:07d}", value, None, tags=["crash", f"t{i % 7}"])
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
            assert entry.tags == sorted(["crash", f"t{i % 7}"])
        assert keys(store, query="words", tags=["crash"], limit=1)[1] >= len(acked)
    finally:
        store.close()
    assert index_is_consistent(db_path)
