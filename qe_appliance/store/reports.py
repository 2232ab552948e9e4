"""Parsed coverage reports by reportId, in SQLite (WAL) in the state directory, so qe_coverage_gaps,
qe_quality_gate and qe_quality_metrics reuse a report without parsing it again; and the artifacts tools
produce for later reading (a generated test module, a tool result too large to send whole), which the
`aqe://` resources serve.

Calls run on the event loop thread over one connection (through `database.retrying`); the report body
arrives already encoded (msgpack, done off the loop), so a store is one INSERT. A reportId is a hash of the
report, so processes sharing the state directory agree on it and storing the same report twice refreshes it.
"""

from __future__ import annotations

import pathlib
from typing import Final

import msgspec

from qe_appliance.store.database import Database, open_database, transaction

# The newest reports kept; older ones are dropped as new ones arrive, so the database stays bounded.
MAX_REPORTS: Final = 200
# The newest artifacts kept (of all kinds together), for the same reason.
MAX_ARTIFACTS: Final = 500

_MIGRATIONS: Final = (
    (
        # IF NOT EXISTS: databases made before reports had versioned migrations already hold these.
        """CREATE TABLE IF NOT EXISTS reports (
            id TEXT PRIMARY KEY,
            format TEXT NOT NULL,
            root TEXT NOT NULL,
            origin TEXT NOT NULL,
            created_at REAL NOT NULL,
            body BLOB NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS reports_root ON reports (root, created_at)",
        "CREATE INDEX IF NOT EXISTS reports_created ON reports (created_at)",
    ),
    (
        """CREATE TABLE artifacts (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,           -- test-module, result
            title TEXT NOT NULL,
            mime_type TEXT NOT NULL,
            created_at REAL NOT NULL,
            body BLOB NOT NULL
        )""",
        "CREATE INDEX artifacts_kind ON artifacts (kind, created_at)",
        "CREATE INDEX artifacts_created ON artifacts (created_at)",
    ),
)

# A report covers `path` when its root is the path itself, one of its parents, or inside it.
_LATEST_FOR = """
SELECT id, format, root, origin, created_at FROM reports
WHERE root = :path
   OR substr(:path, 1, length(root) + 1) = root || '/'
   OR substr(root, 1, length(:path) + 1) = :path || '/'
ORDER BY created_at DESC LIMIT 1
"""


class StoredReport(msgspec.Struct, frozen=True):
    id: str
    format: str
    root: str
    origin: str
    created_at: float


class Artifact(msgspec.Struct, frozen=True):
    """What a tool produced for later reading: `kind` is "test-module" (qe_test_generate's module, id
    `gen-…`) or "result" (a tool result too large to send whole, id `res-…`)."""

    id: str
    kind: str
    title: str
    mime_type: str
    created_at: float


class ReportStore:
    def __init__(self, path: pathlib.Path, max_reports: int = MAX_REPORTS) -> None:
        self.path = path
        self.max_reports = max_reports
        self.database: Database = open_database(path, _MIGRATIONS, "reports database")
        self._db = self.database.conn

    def put(self, meta: StoredReport, body: bytes) -> None:
        """Store (or refresh, for the same id) a report; the oldest beyond `max_reports` are dropped."""
        with self.database.durable(), transaction(self._db):
            self._db.execute(
                "INSERT INTO reports (id, format, root, origin, created_at, body) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET created_at = excluded.created_at, origin = excluded.origin",
                (meta.id, meta.format, meta.root, meta.origin, meta.created_at, body),
            )
            self._db.execute(
                "DELETE FROM reports WHERE id NOT IN "
                "(SELECT id FROM reports ORDER BY created_at DESC LIMIT ?)",
                (self.max_reports,),
            )

    def get(self, report_id: str) -> tuple[StoredReport, bytes] | None:
        row = self._db.execute(
            "SELECT id, format, root, origin, created_at, body FROM reports WHERE id = ?", (report_id,)
        ).fetchone()
        if row is None:
            return None
        return StoredReport(*row[:5]), bytes(row[5])

    def latest_for(self, path: str) -> StoredReport | None:
        """The newest report whose root is `path`, contains it, or lies inside it."""
        row = self._db.execute(_LATEST_FOR, {"path": path.rstrip("/") or "/"}).fetchone()
        return StoredReport(*row) if row else None

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM reports").fetchone()[0])

    def recent(self, limit: int) -> list[StoredReport]:
        """The newest reports first (ties by id, so the order is stable)."""
        rows = self._db.execute(
            "SELECT id, format, root, origin, created_at FROM reports ORDER BY created_at DESC, id LIMIT ?", (limit,)
        )
        return [StoredReport(*row) for row in rows]

    def put_artifact(self, meta: Artifact, body: bytes) -> None:
        """Store an artifact; the oldest beyond MAX_ARTIFACTS are dropped."""
        with self.database.durable(), transaction(self._db):
            self._db.execute(
                "INSERT OR REPLACE INTO artifacts (id, kind, title, mime_type, created_at, body) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (meta.id, meta.kind, meta.title, meta.mime_type, meta.created_at, body),
            )
            self._db.execute(
                "DELETE FROM artifacts WHERE id NOT IN (SELECT id FROM artifacts ORDER BY created_at DESC LIMIT ?)",
                (MAX_ARTIFACTS,),
            )

    def get_artifact(self, artifact_id: str) -> tuple[Artifact, bytes] | None:
        row = self._db.execute(
            "SELECT id, kind, title, mime_type, created_at, body FROM artifacts WHERE id = ?", (artifact_id,)
        ).fetchone()
        return None if row is None else (Artifact(*row[:5]), bytes(row[5]))

    def recent_artifacts(self, kind: str, limit: int) -> list[Artifact]:
        rows = self._db.execute(
            "SELECT id, kind, title, mime_type, created_at FROM artifacts WHERE kind = ? "
            "ORDER BY created_at DESC, id LIMIT ?",
            (kind, limit),
        )
        return [Artifact(*row) for row in rows]

    def close(self) -> None:
        self.database.close()
