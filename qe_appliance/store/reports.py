"""Parsed coverage reports by reportId, in SQLite (WAL) in the state directory, so qe_coverage_gaps,
qe_quality_gate and qe_quality_metrics reuse a report without parsing it again.

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

    def close(self) -> None:
        self.database.close()
