"""Orchestrated tasks and their subtasks, kept in SQLite so results outlive the request (and restarts).

Each task records the pid of the process running it: with several processes on one state directory, a
process starting up marks as interrupted only the tasks of processes that are gone, not its neighbours'.
"""

from __future__ import annotations

import os
import pathlib
import secrets
import time
from typing import TYPE_CHECKING, Any

import msgspec

from qe_appliance.instances import pid_alive
from qe_appliance.store.database import Database, open_database, retry_sync, retrying, transaction

if TYPE_CHECKING:
    from qe_appliance.store.interface import TaskBackend

# The strategy of a task that is one tool call run as an MCP task (or `background: true`).
CALL_STRATEGY = "call"
# A tools/call run as an MCP task (task-augmented, or `background: true`): one task with one subtask (its
# arguments in, its value or error message out), readable and cancellable only by the principal that created it,
# and deleted once its ttl has run out. Both backends add this step.
CALL_MIGRATION: tuple[str, ...] = (
    """CREATE TABLE task_call (
        task_id TEXT PRIMARY KEY REFERENCES task (id),
        principal TEXT,               -- who created it (the bearer token's digest); NULL without authentication
        ttl_ms INTEGER,               -- NULL: kept until deleted
        expires_at REAL
    )""",
    "CREATE INDEX task_call_expiry ON task_call (expires_at)",
)

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
    CALL_MIGRATION,
)

_json = msgspec.json.Encoder()
_plain = msgspec.json.Decoder()
# The subtask status each final task status gives a tool-call task's only subtask.
CALL_SUBTASK = {"completed": "completed", "failed": "failed", "cancelled": "cancelled", "interrupted": "interrupted"}
CALL_COLUMNS = (
    "t.id, t.kind, t.status, t.created_at, t.finished_at, c.principal, c.ttl_ms, s.result, s.error "
    "FROM task t JOIN task_call c ON c.task_id = t.id JOIN subtask s ON s.task_id = t.id AND s.idx = 0"
)


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

    # ---- tool calls run as MCP tasks ----------------------------------------------------------------

    def create_call(self, kind: str, arguments: Any, principal: str | None, ttl_ms: int | None) -> dict[str, Any]:
        """A running task for one call of tool `kind`, durable before this returns (MCP requires it)."""
        # 128 random bits: the id may be all a caller needs to read the task when no tokens are configured.
        task_id = "task-" + secrets.token_hex(16)
        now = time.time()
        expires = None if ttl_ms is None else now + ttl_ms / 1000
        with self.database.durable(), transaction(self._db):
            self._db.execute(
                "INSERT INTO task (id, kind, strategy, priority, status, total, created_at, owner) "
                "VALUES (?, ?, ?, 'normal', 'running', 1, ?, ?)",
                (task_id, kind, CALL_STRATEGY, now, self._pid),
            )
            self._db.execute(
                "INSERT INTO subtask (task_id, idx, input, status, started_at) VALUES (?, 0, ?, 'running', ?)",
                (task_id, _json.encode(arguments), now),
            )
            self._db.execute(
                "INSERT INTO task_call (task_id, principal, ttl_ms, expires_at) VALUES (?, ?, ?, ?)",
                (task_id, principal, ttl_ms, expires),
            )
        return call_row((task_id, kind, "running", now, None, principal, ttl_ms, None, None))

    def finish_call(self, task_id: str, status: str, result: bytes | None, error: str | None) -> bool:
        """Close a running call task as completed, failed, cancelled or interrupted; False when it was no
        longer running (a cancel won the race, or it finished elsewhere)."""
        now = time.time()
        with self.database.durable(), transaction(self._db):
            closed = self._db.execute(
                "UPDATE task SET status = ?, finished_at = ?, done = ?, failed = ? WHERE id = ? AND status = 'running'",
                (status, now, int(status == "completed"), int(status == "failed"), task_id),
            ).rowcount
            if closed:
                self._db.execute(
                    "UPDATE subtask SET status = ?, result = ?, error = ?, finished_at = ? "
                    "WHERE task_id = ? AND idx = 0",
                    (CALL_SUBTASK[status], result, error, now, task_id),
                )
        return bool(closed)

    def get_call(self, task_id: str) -> dict[str, Any] | None:
        """The call task (its owner, ttl, value or error included), None when unknown or expired."""
        row = self._db.execute(
            f"SELECT {CALL_COLUMNS} WHERE t.id = ? AND (c.expires_at IS NULL OR c.expires_at > ?)",
            (task_id, time.time()),
        ).fetchone()
        return None if row is None else call_row(row)

    def list_calls(self, principal: str | None, after: tuple[float, str] | None, limit: int) -> list[dict[str, Any]]:
        """`principal`'s call tasks, oldest first, from just after (createdAt, taskId) `after`."""
        created, last = after if after is not None else (-1.0, "")
        rows = self._db.execute(
            f"SELECT {CALL_COLUMNS} WHERE c.principal IS ? AND (c.expires_at IS NULL OR c.expires_at > ?) "
            "AND (t.created_at > ? OR (t.created_at = ? AND t.id > ?)) ORDER BY t.created_at, t.id LIMIT ?",
            (principal, time.time(), created, created, last, limit),
        )
        return [call_row(row) for row in rows]

    def purge_expired_calls(self) -> int:
        """Delete the call tasks whose ttl has run out; returns how many."""
        with transaction(self._db):
            ids = [(row[0],) for row in self._db.execute(
                "DELETE FROM task_call WHERE expires_at <= ? RETURNING task_id", (time.time(),)
            )]
            self._db.executemany("DELETE FROM subtask WHERE task_id = ?", ids)
            self._db.executemany("DELETE FROM task WHERE id = ?", ids)
        return len(ids)

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


def call_row(row: Any) -> dict[str, Any]:
    """A call task from (id, kind, status, created_at, finished_at, principal, ttl_ms, result, error)."""
    task_id, kind, status, created, finished, principal, ttl_ms, result, error = row
    return {
        "taskId": task_id,
        "kind": kind,
        "status": status,
        "createdAt": created,
        "finishedAt": finished,
        "principal": principal,
        "ttlMs": ttl_ms,
        "result": None if result is None else bytes(result),
        "error": error,
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


async def visible_task(store: TaskBackend, task_id: str, principal: str | None) -> dict[str, Any] | None:
    """The task as qe_fleet_status and aqe://tasks/{id} show it to `principal`, None when unknown or not theirs:
    orchestrated tasks are the team's, a tool call run as a task is its creator's alone (as tasks/get says)."""
    task = await retrying(store.get, task_id)
    if task is not None and task["strategy"] == CALL_STRATEGY:
        call = await retrying(store.get_call, task_id)
        if call is None or call["principal"] != principal:
            return None
    return task


def shared_tasks(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The orchestrated tasks of a listing: tool calls run as tasks are reached by their id only."""
    return [task for task in tasks if task["strategy"] != CALL_STRATEGY]
