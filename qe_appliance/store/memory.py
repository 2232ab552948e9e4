"""Durable, searchable key/value memory for QE agents: SQLite in WAL mode with namespaces, versions, TTL,
tags and an FTS5 index (BM25) over key, value text and tags.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

import msgspec

from qe_appliance._core.lru import LRUCache
from qe_appliance.store.database import Database, StoreError, open_database, retrying, transaction

if TYPE_CHECKING:
    from qe_appliance.store.interface import MemoryBackend

log = logging.getLogger("aqe_mcp.store")

# Purging deletes in batches so a backlog of expired rows never holds the event loop for long.
PURGE_BATCH = 500
PURGE_MAX_BATCHES = 200

# Key matches weigh most, then tags, then the value text (bm25 column weights in that column order).
_BM25 = "bm25(memory_fts, 4.0, 1.0, 2.0)"
_SNIPPET_TOKENS = 12

# Entry N holds the statements that take the schema from version N to N + 1; a database is brought up
# to date on open. The integer rowid is the FTS5 content rowid and the tag rows' foreign key.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE memory_entries (
            id INTEGER PRIMARY KEY,
            namespace TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            version INTEGER NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            expires_at REAL,
            UNIQUE (namespace, key)
        )""",
        "CREATE INDEX memory_entries_key ON memory_entries (key, namespace)",
        "CREATE INDEX memory_entries_expiry ON memory_entries (expires_at) WHERE expires_at IS NOT NULL",
    ),
    (
        # tags: a JSON array of distinct strings, mirrored row by row into memory_tags for filtering.
        "ALTER TABLE memory_entries ADD COLUMN tags TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE memory_entries ADD COLUMN metadata TEXT",
        """CREATE TABLE memory_tags (
            tag TEXT NOT NULL,
            entry_id INTEGER NOT NULL,
            PRIMARY KEY (tag, entry_id)
        ) WITHOUT ROWID""",
        "CREATE INDEX memory_tags_entry ON memory_tags (entry_id)",
        # Lets the total of a listing count live entries from this index alone instead of every row.
        "CREATE INDEX memory_entries_live ON memory_entries (namespace, expires_at)",
        # External content: the index stores only tokens; snippets read the text from memory_entries.
        """CREATE VIRTUAL TABLE memory_fts USING fts5(
            key, value, tags,
            content = 'memory_entries', content_rowid = 'id',
            tokenize = 'porter unicode61 remove_diacritics 2'
        )""",
        # Triggers keep the index and the tag rows in the writing statement's own transaction.
        """CREATE TRIGGER memory_entries_ai AFTER INSERT ON memory_entries BEGIN
            INSERT INTO memory_fts (rowid, key, value, tags) VALUES (new.id, new.key, new.value, new.tags);
            INSERT INTO memory_tags (tag, entry_id) SELECT DISTINCT value, new.id FROM json_each(new.tags);
        END""",
        """CREATE TRIGGER memory_entries_ad AFTER DELETE ON memory_entries BEGIN
            INSERT INTO memory_fts (memory_fts, rowid, key, value, tags)
                VALUES ('delete', old.id, old.key, old.value, old.tags);
            DELETE FROM memory_tags WHERE entry_id = old.id;
        END""",
        """CREATE TRIGGER memory_entries_au AFTER UPDATE OF key, value, tags ON memory_entries BEGIN
            INSERT INTO memory_fts (memory_fts, rowid, key, value, tags)
                VALUES ('delete', old.id, old.key, old.value, old.tags);
            INSERT INTO memory_fts (rowid, key, value, tags) VALUES (new.id, new.key, new.value, new.tags);
        END""",
        """CREATE TRIGGER memory_entries_au_tags AFTER UPDATE OF tags ON memory_entries
        WHEN old.tags IS NOT new.tags BEGIN
            DELETE FROM memory_tags WHERE entry_id = old.id;
            INSERT INTO memory_tags (tag, entry_id) SELECT DISTINCT value, new.id FROM json_each(new.tags);
        END""",
        # Rows written by schema version 1 get indexed too.
        "INSERT INTO memory_fts (memory_fts) VALUES ('rebuild')",
    ),
)

# An expired row is treated as absent; re-storing its key starts a fresh entry (version 1).
_UPSERT = """
INSERT INTO memory_entries
    (namespace, key, value, tags, metadata, version, created_at, updated_at, expires_at)
VALUES (:namespace, :key, CAST(:value AS TEXT), :tags, CAST(:metadata AS TEXT), 1, :now, :now, :expires_at)
ON CONFLICT (namespace, key) DO UPDATE SET
    value = excluded.value,
    tags = excluded.tags,
    metadata = excluded.metadata,
    version = CASE WHEN expires_at <= :now THEN 1 ELSE version + 1 END,
    created_at = CASE WHEN expires_at <= :now THEN :now ELSE created_at END,
    updated_at = :now,
    expires_at = excluded.expires_at
RETURNING version, created_at
"""

_LIVE = "(e.expires_at IS NULL OR e.expires_at > :now)"

# Values go in as TEXT and come out as bytes via CAST, so neither direction decodes in Python.
_COLUMNS = (
    "e.namespace, e.key, CAST(e.value AS BLOB), e.version, e.created_at, e.updated_at, e.expires_at, "
    "CAST(e.tags AS BLOB), CAST(e.metadata AS BLOB)"
)

_GET = f"SELECT {_COLUMNS} FROM memory_entries e WHERE e.namespace = :namespace AND e.key = :key AND {_LIVE}"

_PURGE = (
    "DELETE FROM memory_entries WHERE id IN "
    "(SELECT id FROM memory_entries WHERE expires_at <= :now LIMIT :batch)"
)

# The excerpt comes from the value (column 1): the key and tags are returned whole beside it anyway.
_SNIPPETS = (
    f"SELECT rowid, snippet(memory_fts, 1, '**', '**', '…', {_SNIPPET_TOKENS}) FROM memory_fts "
    "WHERE memory_fts MATCH :query AND rowid IN (SELECT value FROM json_each(:ids))"
)

_TAGS = msgspec.json.Decoder(list[str])
# Entries `get` keeps in memory (the most recently read), and the marker of a key not cached.
HOT_ENTRIES = 4096
_NOT_CACHED = object()


class SearchQueryError(ValueError):
    """A full-text query with nothing to search for; the message says what to send instead."""


class MemoryEntry(msgspec.Struct, frozen=True, gc=False):
    """One live entry. Times are epoch seconds (UTC); `value_json` is the stored JSON text as bytes."""

    namespace: str
    key: str
    value_json: bytes
    version: int
    created_at: float
    updated_at: float
    expires_at: float | None
    tags: list[str]
    metadata_json: bytes | None


class MemoryHit(msgspec.Struct, frozen=True, gc=False):
    """One search match: the entry, and for a full-text query its relevance and a highlighted excerpt."""

    entry: MemoryEntry
    score: float | None = None
    snippet: str | None = None


class PutResult(msgspec.Struct, frozen=True, gc=False):
    """The outcome of an upsert: the entry's new version and whether a live value was replaced."""

    version: int
    replaced: bool
    created_at: float
    updated_at: float
    expires_at: float | None


def fts_query(text: str) -> str:
    """A user's search words as an FTS5 query: every word must occur; `word*` matches a prefix.

    Each word is quoted so FTS5 operators and punctuation in it are taken literally; a word with
    punctuation inside (`coverage/api`) matches as a phrase. Raises SearchQueryError when no word is left.
    """
    terms = []
    # FTS5 reads its query as a C string: a NUL would cut it off inside a quoted word, so it separates words.
    for word in text.replace("\x00", " ").split():
        prefix = word.endswith("*")
        core = word.rstrip("*")
        if not any(char.isalnum() for char in core):
            continue
        quoted = '"' + core.replace('"', '""') + '"'
        terms.append(quoted + "*" if prefix else quoted)
    if not terms:
        raise SearchQueryError(
            f"query {text!r} has no words to search for; give one or more words (letters or digits), "
            "or search by pattern or tags instead"
        )
    return " ".join(terms)


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with `prefix`, or None if unbounded.

    SQLite compares TEXT as UTF-8 bytes, which orders like code points, so bumping the last code
    point bounds the range exactly (a `prefix + '\\uffff'` bound would miss keys continuing with an
    astral character such as an emoji).
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            # Surrogates cannot be stored as UTF-8, so the successor of U+D7FF is U+E000.
            chars.append(chr(0xE000 if 0xD800 <= last + 1 <= 0xDFFF else last + 1))
            return "".join(chars)
    return None


def _entry(row: Any) -> MemoryEntry:
    namespace, key, value, version, created, updated, expires, tags, metadata = row
    return MemoryEntry(
        namespace, key, value, version, created, updated, expires, _TAGS.decode(tags), metadata
    )


class MemoryStore:
    """Namespaced JSON values with versions, tags, metadata and expiry; durable once `put` returns."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.database: Database = open_database(path, _MIGRATIONS, "memory database")
        self._db = self.database.conn
        # What `get` read, by (namespace, key): the entry, or None for a key that had no live entry. Valid while
        # the database's commit mark is `_read_mark`: it changes whenever a connection (of this process or
        # another one on the state directory) commits, so a read never serves what another writer replaced.
        # This connection's writes empty it themselves too, uncommitted ones included (a batch).
        self._hot: LRUCache[tuple[str, str], MemoryEntry | None] = LRUCache(HOT_ENTRIES)
        self._read_mark: object = None

    def put(
        self,
        namespace: str,
        key: str,
        value_json: bytes,
        ttl_seconds: float | None,
        *,
        tags: Sequence[str] = (),
        metadata_json: bytes | None = None,
    ) -> PutResult:
        """Insert or replace `key` in `namespace` (value, tags and metadata together); durable on return."""
        now = time.time()
        expires_at = None if ttl_seconds is None else now + ttl_seconds
        params = {
            "namespace": namespace,
            "key": key,
            "value": value_json,
            "tags": msgspec.json.encode(sorted(set(tags))).decode(),
            "metadata": metadata_json,
            "now": now,
            "expires_at": expires_at,
        }
        # fetchall steps the statement to completion, which is what commits the autocommit transaction.
        self._hot.clear()
        with self.database.durable():
            ((version, created_at),) = self._db.execute(_UPSERT, params).fetchall()
        return PutResult(
            version=version,
            replaced=version > 1,
            created_at=created_at,
            updated_at=now,
            expires_at=expires_at,
        )

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Run the puts made inside the block as one transaction, with one fsync (imports, seeding).

        Nothing in it is durable until the block ends; an exception rolls all of it back.
        """
        self._hot.clear()
        try:
            with self.database.durable(), transaction(self._db):
                yield
        finally:
            self._hot.clear()

    def get(self, namespace: str, key: str) -> MemoryEntry | None:
        """The live entry, or None when the key is missing or has expired."""
        now = time.time()
        mark = self.database.commit_mark()
        hot = self._hot
        if mark != self._read_mark:
            hot.clear()
            self._read_mark = mark
        else:
            cached = hot.get((namespace, key), _NOT_CACHED)
            if cached is not _NOT_CACHED:
                known = cast(MemoryEntry | None, cached)
                if known is None or known.expires_at is None or known.expires_at > now:
                    return known
        row = self._db.execute(_GET, {"namespace": namespace, "key": key, "now": now}).fetchone()
        entry = None if row is None else _entry(row)
        hot.put((namespace, key), entry)
        return entry

    def search(
        self,
        *,
        query: str | None = None,
        namespace: str | None = None,
        pattern: str | None = None,
        prefix: str | None = None,
        tags: Sequence[str] = (),
        limit: int = 20,
        offset: int = 0,
    ) -> tuple[list[MemoryHit], int]:
        """Live entries that match every filter given, one page (`limit` from `offset`) and the total.

        `query`: words searched with FTS5 over key, value text and tags (see `fts_query`), ranked by BM25,
        best first; without it hits are ordered by key then namespace. `pattern`: a case-sensitive glob
        on keys. `prefix`: keys starting with it. `tags`: entries carrying all of them.
        """
        params: dict[str, object] = {"now": time.time(), "limit": limit, "offset": offset}
        clauses = [_LIVE]
        if namespace is not None:
            clauses.append("e.namespace = :namespace")
            params["namespace"] = namespace
        if pattern is not None:
            clauses.append("e.key GLOB :pattern")
            params["pattern"] = pattern
        if prefix:
            clauses.append("e.key >= :prefix")
            params["prefix"] = prefix
            upper = prefix_upper_bound(prefix)
            if upper is not None:
                clauses.append("e.key < :upper")
                params["upper"] = upper
        names = [f"tag{i}" for i in range(len(set(tags)))]
        params.update(zip(names, sorted(set(tags)), strict=True))
        if names and query is None and pattern is None and not prefix:
            # Nothing narrower to start from: the tag index drives, the entries with every tag.
            every = " INTERSECT ".join(
                f"SELECT entry_id FROM memory_tags WHERE tag = :{name}" for name in names
            )
            clauses.append(f"e.id IN ({every})")
        else:
            # The words or the key range drive; each candidate's tags are then looked up by primary key
            # (listing every entry with a common tag first would cost more than the search itself).
            clauses += [
                f"EXISTS (SELECT 1 FROM memory_tags WHERE tag = :{name} AND entry_id = e.id)"
                for name in names
            ]
        if query is None:
            rows, total = self._page(_COLUMNS, "memory_entries e", clauses, "e.key, e.namespace", params)
            return [MemoryHit(_entry(row)) for row in rows], total
        match = params["query"] = fts_query(query)
        rows, total = self._page(
            f"e.id, -{_BM25} AS score, {_COLUMNS}",
            # CROSS JOIN keeps the FTS index as the outer loop; otherwise the planner may walk a namespace's
            # entries and run the full-text match once per entry.
            "memory_fts CROSS JOIN memory_entries e ON e.id = memory_fts.rowid",
            ["memory_fts MATCH :query", *clauses],
            "score DESC, e.key, e.namespace",
            params,
        )
        if not rows:
            return [], total
        # Snippets only for the page: computed in the ranking query they would cost one per match.
        ids = msgspec.json.encode([row[0] for row in rows]).decode()
        snippets = dict(self._db.execute(_SNIPPETS, {"query": match, "ids": ids}).fetchall())
        return [MemoryHit(_entry(row[2:]), row[1], snippets.get(row[0])) for row in rows], total

    def _page(
        self, columns: str, source: str, clauses: list[str], order: str, params: dict[str, object]
    ) -> tuple[list[Any], int]:
        """One page of rows (`:limit` from `:offset`) and the number of rows matching in all."""
        where = " AND ".join(clauses)
        rows = self._db.execute(
            f"SELECT {columns} FROM {source} WHERE {where} ORDER BY {order} LIMIT :limit OFFSET :offset",
            params,
        ).fetchall()
        (total,) = self._db.execute(f"SELECT count(*) FROM {source} WHERE {where}", params).fetchone()
        return rows, total

    def namespaces(self, prefix: str, limit: int) -> list[str]:
        """Namespaces with a live entry that start with `prefix`, in order, at most `limit`."""
        params: dict[str, object] = {"now": time.time(), "limit": limit, "prefix": prefix}
        where = [_LIVE, "e.namespace >= :prefix"]
        upper = prefix_upper_bound(prefix)
        if prefix and upper is not None:
            where.append("e.namespace < :upper")
            params["upper"] = upper
        rows = self._db.execute(
            f"SELECT DISTINCT e.namespace FROM memory_entries e WHERE {' AND '.join(where)} "
            "ORDER BY e.namespace LIMIT :limit",
            params,
        )
        return [row[0] for row in rows]

    def purge_expired(self, batch: int = PURGE_BATCH) -> int:
        """Delete up to `batch` expired entries; returns how many were removed."""
        self._hot.clear()
        return self._db.execute(_PURGE, {"now": time.time(), "batch": batch}).rowcount

    def integrity_check(self) -> bool:
        """SQLite's integrity check plus FTS5's check that the search index matches the entries."""
        self._db.execute("INSERT INTO memory_fts (memory_fts) VALUES ('integrity-check')")
        return bool(self._db.execute("PRAGMA integrity_check").fetchone() == ("ok",))

    def close(self) -> None:
        """Close the database; later calls raise sqlite3.ProgrammingError."""
        self.database.close()


async def purge_periodically(store: MemoryBackend, interval_s: float) -> None:
    """Delete expired entries now and every `interval_s`, a batch at a time so requests run in between.

    Runs until cancelled; a database error is logged and retried at the next interval. Several processes
    on one state directory may all purge: each batch is its own transaction, and deleting what another
    process already deleted deletes nothing.
    """
    while True:
        removed = 0
        try:
            for _ in range(PURGE_MAX_BATCHES):
                count = await retrying(store.purge_expired)
                removed += count
                if count < PURGE_BATCH:
                    break
                await asyncio.sleep(0)
        except (sqlite3.Error, StoreError) as exc:
            log.warning("purging expired memory entries from %s failed: %s; retrying later", store.path, exc)
        if removed:
            log.debug("purged %d expired memory entries", removed)
        await asyncio.sleep(interval_s)
