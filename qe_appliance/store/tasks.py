"""Orchestrated tasks and their subtasks, kept in SQLite so results outlive the request (and restarts).

Each task records the pid of the process running it: with several processes on one state directory, a
process starting up marks as interrupted only the tasks of processes that are gone, not its neighbours'.
"""

from __future__ import annotations

import os
import pathlib
import secrets
import time
from typing import Any

import msgspec

from qe_appliance.instances import pid_alive
from qe_appliance.store.database import Database, open_database, retry_sync, transaction

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE task (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,           -- tool name, or pipeline name
            strategy TEXT NOT NULL,
            priority TEXT NOT NULL,
            status TEXT NOT NULL,         -- running, completed, failed, interrupted
            total INTEGER NOT NULL,
            done INTEGER NOT NULL DEFAULT 0,
            failed INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            finished_at REAL
        )""",
        "CREATE INDEX task_created ON task (created_at)",
        """CREATE TABLE subtask (
            task_id TEXT NOT NULL REFERENCES task (id),
            idx INTEGER NOT NULL,
            input BLOB NOT NULL,          -- JSON
            status TEXT NOT NULL,         -- pending, running, completed, failed
            result BLOB,                  -- JSON
            error TEXT,
            started_at REAL,
            finished_at REAL,
            PRIMARY KEY (task_id, idx)
        )""",
    ),
    ("ALTER TABLE task ADD COLUMN owner INTEGER",),  # the running process's pid; NULL before version 2
)

_json = msgspec.json.Encoder()
_plain = msgspec.json.Decoder()


class TaskStore:
    def __init__(self, path: pathlib.Path) -> None:
        self.database: Database = open_database(path, MIGRATIONS, "task database")
        self._db = self.database.conn
        self._pid = os.getpid()
        retry_sync(self._interrupt_orphans)

    def _interrupt_orphans(self) -> None:
        """Tasks whose process stopped cannot resume: say so instead of "running" forever."""
        with transaction(self._db):
            owners = [row[0] for row in self._db.execute("SELECT DISTINCT owner FROM task WHERE status = 'running'")]
            gone = [owner for owner in owners if owner is None or owner == self._pid or not pid_alive(owner)]
            for owner in gone:
                ids = [row[0] for row in self._db.execute(
                    "UPDATE task SET status = 'interrupted', finished_at = ? WHERE status = 'running' AND owner IS ? "
                    "RETURNING id",
                    (time.time(), owner),
                )]
                self._db.executemany(
                    "UPDATE subtask SET status = 'interrupted' WHERE task_id = ? AND status IN ('pending', 'running')",
                    [(task_id,) for task_id in ids],
                )

    def create(self, kind: str, strategy: str, priority: str, inputs: list[Any]) -> str:
        # 48 random bits: processes sharing the database draw ids independently without colliding.
        task_id = "task-" + secrets.token_hex(6)
        now = time.time()
        with self.database.durable(), transaction(self._db):
            self._db.execute(
                "INSERT INTO task (id, kind, strategy, priority, status, total, created_at, owner) "
                "VALUES (?, ?, ?, ?, 'running', ?, ?, ?)",
                (task_id, kind, strategy, priority, len(inputs), now, self._pid),
            )
            self._db.executemany(
                "INSERT INTO subtask (task_id, idx, input, status) VALUES (?, ?, ?, 'pending')",
                [(task_id, i, _json.encode(item)) for i, item in enumerate(inputs)],
            )
        return task_id

    def started(self, task_id: str, idx: int) -> None:
        self._db.execute(
            "UPDATE subtask SET status = 'running', started_at = ? WHERE task_id = ? AND idx = ?",
            (time.time(), task_id, idx),
        )

    def finished(self, task_id: str, idx: int, result: bytes | None, error: str | None) -> None:
        """Record one subtask's outcome (result is JSON) and close the task when it was the last."""
        now = time.time()
        with self.database.durable(), transaction(self._db):
            self._db.execute(
                "UPDATE subtask SET status = ?, result = ?, error = ?, finished_at = ? WHERE task_id = ? AND idx = ?",
                ("failed" if error else "completed", result, error, now, task_id, idx),
            )
            column = "failed" if error else "done"
            self._db.execute(f"UPDATE task SET {column} = {column} + 1 WHERE id = ?", (task_id,))
            self._db.execute(
                "UPDATE task SET finished_at = ?, status = CASE WHEN failed > 0 THEN 'failed' ELSE 'completed' END "
                "WHERE id = ? AND done + failed = total",
                (now, task_id),
            )

    def get(self, task_id: str, *, subtasks: bool = True) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT id, kind, strategy, priority, status, total, done, failed, created_at, finished_at "
            "FROM task WHERE id = ?",
            (task_id,),
        ).fetchone()
        if row is None:
            return None
        task = task_row(row)
        if subtasks:
            task["subtasks"] = [
                subtask_row(sub)
                for sub in self._db.execute(
                    "SELECT idx, input, status, result, error, started_at, finished_at FROM subtask "
                    "WHERE task_id = ? ORDER BY idx",
                    (task_id,),
                )
            ]
        return task

    def recent(self, limit: int = 10) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT id, kind, strategy, priority, status, total, done, failed, created_at, finished_at "
            "FROM task ORDER BY created_at DESC LIMIT ?",
            (limit,),
        )
        return [task_row(row) for row in rows]

    def close(self) -> None:
        self.database.close()


def task_row(row: Any) -> dict[str, Any]:
    task_id, kind, strategy, priority, status, total, done, failed, created, finished = row
    return {
        "taskId": task_id,
        "kind": kind,
        "strategy": strategy,
        "priority": priority,
        "status": status,
        "total": total,
        "completed": done,
        "failed": failed,
        "createdAt": created,
        "finishedAt": finished,
    }


def subtask_row(row: Any) -> dict[str, Any]:
    """A subtask as tasks report it, from (idx, input, status, result, error, started_at, finished_at)."""
    idx, inp, status, result, error, start, end = row
    return {
        "index": idx,
        "input": _plain.decode(inp),
        "status": status,
        "result": _plain.decode(result) if result is not None else None,
        "error": error,
        "durationMs": round((end - start) * 1000, 3) if start and end else None,
    }
