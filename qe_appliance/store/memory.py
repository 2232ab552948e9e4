"""Durable key/value memory for QE agents: SQLite in WAL mode, namespaced keys, versions and TTL.

Calls are synchronous and sub-millisecond; they run on the event loop over one long-lived connection.
"""

from __future__ import annotations

import pathlib
import sqlite3
import time

import msgspec

# Entry N holds the statements that take the schema from version N to N + 1; a database is brought up
# to date on open. The table keeps an integer rowid so a later FTS5 index can use it as content rowid.
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
)

# An expired row is treated as absent; re-storing its key starts a fresh entry (version 1).
_UPSERT = """
INSERT INTO memory_entries (namespace, key, value, version, created_at, updated_at, expires_at)
VALUES (:namespace, :key, CAST(:value AS TEXT), 1, :now, :now, :expires_at)
ON CONFLICT (namespace, key) DO UPDATE SET
    value = excluded.value,
    version = CASE WHEN expires_at <= :now THEN 1 ELSE version + 1 END,
    created_at = CASE WHEN expires_at <= :now THEN :now ELSE created_at END,
    updated_at = :now,
    expires_at = excluded.expires_at
RETURNING version, created_at
"""

_LIVE = "(expires_at IS NULL OR expires_at > :now)"

# Values go in as TEXT and come out as bytes via CAST, so neither direction decodes in Python.
_COLUMNS = "namespace, key, CAST(value AS BLOB), version, created_at, updated_at, expires_at"

_GET = f"SELECT {_COLUMNS} FROM memory_entries WHERE namespace = :namespace AND key = :key AND {_LIVE}"

_PURGE = "DELETE FROM memory_entries WHERE expires_at <= :now"


class MemoryStoreError(RuntimeError):
    """The memory database cannot be opened or used; the message says which file and what to do."""


class MemoryEntry(msgspec.Struct, frozen=True, gc=False):
    """One live entry. Times are epoch seconds (UTC); `value_json` is the stored JSON text as bytes."""

    namespace: str
    key: str
    value_json: bytes
    version: int
    created_at: float
    updated_at: float
    expires_at: float | None


class PutResult(msgspec.Struct, frozen=True, gc=False):
    """The outcome of an upsert: the entry's new version and whether a live value was replaced."""

    version: int
    replaced: bool
    created_at: float
    updated_at: float
    expires_at: float | None


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


class MemoryStore:
    """Namespaced JSON values with versions and expiry, durable once `put` returns."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit: each statement is its own transaction, committed (and fsynced) before return.
            self._db = sqlite3.connect(path, isolation_level=None, cached_statements=64)
        except (OSError, sqlite3.Error) as exc:
            raise MemoryStoreError(
                f"cannot open the memory database {path}: {exc}; check that the state directory "
                "exists and is writable by the server's user"
            ) from exc
        try:
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise MemoryStoreError(
                    f"the memory database {path} cannot use WAL mode (got {mode!r}); put the state "
                    "directory on a local filesystem"
                )
            # FULL fsyncs the WAL on every commit: an acknowledged write survives kill -9 and power loss.
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA busy_timeout = 1000")
            self._migrate()
        except sqlite3.Error as exc:
            self._db.close()
            raise MemoryStoreError(
                f"the memory database {path} is unusable: {exc}; move it aside to start empty, or "
                "restore it from a backup"
            ) from exc
        except MemoryStoreError:
            self._db.close()
            raise

    def _migrate(self) -> None:
        self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self._db.execute("SELECT max(version) FROM schema_version").fetchone()
        current = row[0] or 0
        if current > len(_MIGRATIONS):
            raise MemoryStoreError(
                f"the memory database {self.path} has schema version {current}, newer than this build "
                f"understands ({len(_MIGRATIONS)}); upgrade aqe-mcp or point stateDir elsewhere"
            )
        for version, statements in enumerate(_MIGRATIONS[current:], start=current + 1):
            # One transaction per step, so a crash mid-migration leaves the previous version intact.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in statements:
                    self._db.execute(statement)
                self._db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def put(self, namespace: str, key: str, value_json: bytes, ttl_seconds: float | None) -> PutResult:
        """Insert or replace `key` in `namespace`; durable when this returns."""
        now = time.time()
        expires_at = None if ttl_seconds is None else now + ttl_seconds
        params = {
            "namespace": namespace,
            "key": key,
            "value": value_json,
            "now": now,
            "expires_at": expires_at,
        }
        # fetchall steps the statement to completion, which is what commits the autocommit transaction.
        ((version, created_at),) = self._db.execute(_UPSERT, params).fetchall()
        return PutResult(
            version=version,
            replaced=version > 1,
            created_at=created_at,
            updated_at=now,
            expires_at=expires_at,
        )

    def get(self, namespace: str, key: str) -> MemoryEntry | None:
        """The live entry, or None when the key is missing or has expired."""
        row = self._db.execute(_GET, {"namespace": namespace, "key": key, "now": time.time()}).fetchone()
        return None if row is None else MemoryEntry(*row)

    def search(
        self, *, namespace: str | None, pattern: str | None, prefix: str | None, limit: int, offset: int
    ) -> tuple[list[MemoryEntry], int]:
        """Live entries whose key matches the glob `pattern` and/or starts with `prefix`.

        Ordered by key then namespace; returns one page (`limit` from `offset`) and the total count.
        """
        params: dict[str, object] = {"now": time.time(), "limit": limit, "offset": offset}
        clauses = [_LIVE]
        if namespace is not None:
            clauses.append("namespace = :namespace")
            params["namespace"] = namespace
        if pattern is not None:
            clauses.append("key GLOB :pattern")
            params["pattern"] = pattern
        if prefix:
            clauses.append("key >= :prefix")
            params["prefix"] = prefix
            upper = prefix_upper_bound(prefix)
            if upper is not None:
                clauses.append("key < :upper")
                params["upper"] = upper
        where = " AND ".join(clauses)
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM memory_entries WHERE {where} ORDER BY key, namespace "
            "LIMIT :limit OFFSET :offset",
            params,
        ).fetchall()
        (total,) = self._db.execute(f"SELECT count(*) FROM memory_entries WHERE {where}", params).fetchone()
        return [MemoryEntry(*row) for row in rows], total

    def purge_expired(self) -> int:
        """Delete expired entries; returns how many were removed."""
        return self._db.execute(_PURGE, {"now": time.time()}).rowcount

    def close(self) -> None:
        """Close the database; later calls raise sqlite3.ProgrammingError."""
        self._db.close()
