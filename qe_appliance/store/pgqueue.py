"""Orchestrated subtasks as a work queue in PostgreSQL, shared by every aqe-mcp instance on `store.url`, and
the instances' fleet reports (the fleet view across instances).

Why `SELECT … FOR UPDATE SKIP LOCKED` with leases rather than a queue library (procrastinate, pgqueuer): a
subtask already is a row of the task store, with its input, status and result; a library would add its own
job tables, worker process model and schema to keep in step with ours, and its retry semantics would still
need our "result stored once" rule on top. Here the queue is three statements on the rows we have:

- **claim**: an instance with room in its fleet locks the running tasks nobody else is claiming from at that
  moment (`FOR UPDATE SKIP LOCKED`: instances never wait on each other), then, task by task in priority order,
  takes pending subtasks (or ones whose lease ran out) up to the task's own concurrency limit, writing itself
  as owner, a new attempt number and a lease expiry. Each instance's claims are serialised per task by the
  task row's lock, so the limit holds across instances.
- **renew**: every heartbeat the owner pushes its leases forward. An instance that dies stops renewing; once
  its leases run out its subtasks are claimed again elsewhere.
- **finish**: the result is written only `WHERE owner = me AND attempt = mine AND status = 'running'`, so a
  subtask re-run after a lost lease is stored once: by whichever attempt still holds it.

Times are the database's clock (`clock_timestamp()`), so instances on machines with skewed clocks agree on
when a lease ends. A finished subtask sends `NOTIFY aqe_task, '<taskId>'` and a new task `NOTIFY aqe_queue`:
the instance waiting for a task and idle instances hear at once; polling every heartbeat is the fallback.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import asyncpg
import msgspec

if TYPE_CHECKING:
    from qe_appliance.store.postgres import PgDatabase

log = logging.getLogger("aqe_mcp.queue")

QUEUE_CHANNEL: Final = "aqe_queue"
TASK_CHANNEL: Final = "aqe_task"
_NOW: Final = "extract(epoch from clock_timestamp())"

_json = msgspec.json.Encoder()


class Claim(msgspec.Struct, frozen=True):
    """One subtask this instance took from the queue."""

    task_id: str
    index: int
    attempt: int
    kind: str
    category: str
    input: bytes
    caller_transport: str
    caller_authenticated: bool


class PgTaskQueue:
    """The queue of orchestrated subtasks and the instance registry, in the stores' database."""

    def __init__(self, database: PgDatabase) -> None:
        self.database = database
        self._listener: asyncpg.Connection | None = None
        self.on_queue: Callable[[], None] = lambda: None
        self.on_task: Callable[[str], None] = lambda task_id: None

    # ---- notifications -----------------------------------------------------------------------------

    async def listen(self) -> None:
        """LISTEN on a connection of its own (outside the pool); without it, polling alone still works."""
        try:
            conn = await self.database.connect()
            await conn.add_listener(QUEUE_CHANNEL, lambda *_: self.on_queue())
            await conn.add_listener(TASK_CHANNEL, lambda _c, _p, _ch, payload: self.on_task(payload))
        except Exception as exc:  # noqa: BLE001 - the queue works by polling without notifications
            log.warning("cannot LISTEN for queue notifications (%s); polling every heartbeat instead", exc)
            return
        self._listener = conn

    def close(self) -> None:
        if self._listener is not None:
            self._listener.terminate()
            self._listener = None

    # ---- the queue ---------------------------------------------------------------------------------

    async def enqueue(
        self,
        kind: str,
        strategy: str,
        priority: str,
        rank: int,
        category: str,
        limit: int,
        caller: tuple[str, bool],
        inputs: list[Any],
        submitter: tuple[str, int],
    ) -> str:
        """A new task whose subtasks wait in the queue; returns its id."""
        task_id = "task-" + secrets.token_hex(6)
        async with self.database.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO task (id, kind, strategy, priority, status, total, created_at, owner_host, owner_pid, "
                "category, rank, max_running, caller_transport, caller_authenticated) "
                "VALUES ($1, $2, $3, $4, 'running', $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                task_id, kind, strategy, priority, len(inputs), time.time(), submitter[0], submitter[1],
                category, rank, limit, caller[0], caller[1],
            )
            await conn.executemany(
                "INSERT INTO subtask (task_id, idx, input, status) VALUES ($1, $2, $3, 'pending')",
                [(task_id, i, _json.encode(item)) for i, item in enumerate(inputs)],
            )
            await conn.execute("SELECT pg_notify($1, $2)", QUEUE_CHANNEL, task_id)
        return task_id

    async def claim(
        self, owner: str, room: Callable[[str], int], lease_s: float, only: Sequence[str] | None = None
    ) -> list[Claim]:
        """Take what this instance has room for (`room(category)`: subtasks it can start now), highest
        priority first, never more of one task than its limit allows across all instances; from the tasks
        `only` names when given."""
        claims: list[Claim] = []
        async with self.database.connection() as conn, conn.transaction():
            tasks = await conn.fetch(
                "SELECT id, kind, category, max_running, caller_transport, caller_authenticated FROM task "
                "WHERE status = 'running' AND max_running IS NOT NULL AND ($1::text[] IS NULL OR id = ANY($1)) "
                "ORDER BY rank, created_at FOR UPDATE SKIP LOCKED",
                None if only is None else list(only),
            )
            for task_id, kind, category, limit, transport, authenticated in tasks:
                free = room(category) - sum(1 for c in claims if c.category == category)
                if free <= 0:
                    continue
                # Read after the lock: every claimer of this task committed before we got it.
                running = await conn.fetchval(
                    f"SELECT count(*) FROM subtask WHERE task_id = $1 AND status = 'running' AND lease_until > {_NOW}",
                    task_id,
                )
                want = min(free, limit - running)
                if want <= 0:
                    continue
                # The status test is repeated in the UPDATE itself: a finish committed meanwhile is re-checked.
                rows = await conn.fetch(
                    f"""UPDATE subtask SET status = 'running', owner = $2, attempt = attempt + 1,
                            lease_until = {_NOW} + $3, started_at = {_NOW}, error = NULL
                        WHERE task_id = $1 AND idx IN (
                            SELECT idx FROM subtask WHERE task_id = $1 AND (status = 'pending'
                                OR (status = 'running' AND lease_until <= {_NOW})) ORDER BY idx LIMIT $4)
                          AND (status = 'pending' OR (status = 'running' AND lease_until <= {_NOW}))
                        RETURNING idx, attempt, input""",
                    task_id, owner, lease_s, want,
                )
                claims += [
                    Claim(task_id, idx, attempt, kind, category, bytes(inp), transport, authenticated)
                    for idx, attempt, inp in sorted(rows)
                ]
            if claims:
                # Instances that found these tasks locked by this claim try again once it commits.
                await conn.execute("SELECT pg_notify($1, '')", QUEUE_CHANNEL)
        return claims

    async def renew(self, owner: str, lease_s: float) -> None:
        async with self.database.connection() as conn:
            await conn.execute(
                f"UPDATE subtask SET lease_until = {_NOW} + $2 WHERE owner = $1 AND status = 'running'", owner, lease_s
            )

    async def finish(self, claim: Claim, owner: str, result: bytes | None, error: str | None) -> bool:
        """Store the outcome if this attempt still holds the subtask; False when it was taken over."""
        column = "failed" if error else "done"
        async with self.database.connection() as conn, conn.transaction():
            stored = await conn.fetchval(
                f"UPDATE subtask SET status = $1, result = $2, error = $3, finished_at = {_NOW}, lease_until = NULL "
                "WHERE task_id = $4 AND idx = $5 AND owner = $6 AND attempt = $7 AND status = 'running' "
                "RETURNING true",
                "failed" if error else "completed", result, error, claim.task_id, claim.index, owner, claim.attempt,
            )
            if not stored:
                return False
            await conn.execute(f"UPDATE task SET {column} = {column} + 1 WHERE id = $1", claim.task_id)
            await conn.execute(
                "UPDATE task SET finished_at = $1, status = CASE WHEN failed > 0 THEN 'failed' ELSE 'completed' END "
                "WHERE id = $2 AND done + failed = total",
                time.time(), claim.task_id,
            )
            await conn.execute("SELECT pg_notify($1, $2)", TASK_CHANNEL, claim.task_id)
        return True

    async def release(self, owner: str) -> int:
        """Give back what this instance holds (it is stopping): others take it at once, not after the lease."""
        async with self.database.connection() as conn, conn.transaction():
            rows = await conn.fetch(
                "UPDATE subtask SET status = 'pending', owner = NULL, lease_until = NULL "
                "WHERE owner = $1 AND status = 'running' RETURNING task_id",
                owner,
            )
            if rows:
                await conn.execute("SELECT pg_notify($1, '')", QUEUE_CHANNEL)
        return len(rows)

    # ---- the instances -----------------------------------------------------------------------------

    async def heartbeat(self, instance: str, address: str | None, fleet: dict[str, Any]) -> None:
        """This instance is alive; `fleet` is its agents as qe_fleet_status shows them."""
        async with self.database.connection() as conn:
            await conn.execute(
                f"INSERT INTO instance (id, address, started_at, last_seen, fleet) VALUES ($1, $2, {_NOW}, {_NOW}, $3) "
                f"ON CONFLICT (id) DO UPDATE SET last_seen = {_NOW}, address = excluded.address, "
                "fleet = excluded.fleet",
                instance, address, _json.encode(fleet),
            )

    async def instances(self, stale_s: float) -> list[dict[str, Any]]:
        """Every instance heard from within `stale_s`, with its fleet; older ones are forgotten."""
        async with self.database.connection() as conn:
            await conn.execute(f"DELETE FROM instance WHERE last_seen < {_NOW} - $1", stale_s * 4)
            rows = await conn.fetch(
                f"SELECT id, address, started_at, last_seen, {_NOW} - last_seen, fleet FROM instance "
                f"WHERE last_seen >= {_NOW} - $1 ORDER BY id",
                stale_s,
            )
        return [
            {"instance": iid, "address": address, "startedAt": started, "lastSeen": seen,
             "secondsSinceHeartbeat": round(age, 3), **msgspec.json.decode(fleet)}
            for iid, address, started, seen, age, fleet in rows
        ]

    async def leave(self, instance: str) -> None:
        async with self.database.connection() as conn:
            await conn.execute("DELETE FROM instance WHERE id = $1", instance)
