"""Every store of one state directory, opened together, with the process's hold on the directory (a shared
lock on `statedir.LOCK_FILE` that `aqe-v3 state restore` checks) and the health check readiness asks.
"""

from __future__ import annotations

import logging
import os
import pathlib
import time
from typing import Final

from qe_appliance.config import Config, state_dir
from qe_appliance.store.database import Database, StoreError, vanished
from qe_appliance.store.interface import StoresBackend
from qe_appliance.store.memory import MemoryStore
from qe_appliance.store.patterns import PatternStore
from qe_appliance.store.reports import ReportStore
from qe_appliance.store.statedir import lock_state, private_directory
from qe_appliance.store.tasks import TaskStore

log = logging.getLogger("aqe_mcp.store")

CHECK_INTERVAL_S: Final = 1.0


class Stores:
    """The memory, pattern, task and report stores of `directory` (made private if it is not)."""

    def __init__(self, directory: pathlib.Path) -> None:
        private_directory(directory)
        self.directory = directory
        lock = lock_state(directory, exclusive=False)
        if lock is None:
            raise StoreError(
                f"a restore (`aqe-v3 state restore`) is replacing the state in {directory}; start the server "
                "when it has finished"
            )
        self._lock = lock
        stat = directory.stat()
        self._identity = (stat.st_dev, stat.st_ino)
        self._reported: str | None = None
        self._checked_until = 0.0
        opened: list[MemoryStore | PatternStore | TaskStore | ReportStore] = []
        try:
            self.memory = MemoryStore(directory / "memory.db")
            opened.append(self.memory)
            self.patterns = PatternStore(directory / "patterns.db")
            opened.append(self.patterns)
            self.tasks = TaskStore(directory / "tasks.db")
            # One machine: orchestrated subtasks wait in the orchestrator's own queue, not in the database.
            self.queue = None
            opened.append(self.tasks)
            self.reports = ReportStore(directory / "reports.db")
        except BaseException:
            for store in opened:
                store.close()
            os.close(lock)
            raise
        self._databases: tuple[Database, ...] = (
            self.memory.database,
            self.patterns.database,
            self.tasks.database,
            self.reports.database,
        )

    async def open(self) -> None:
        """Nothing to do: SQLite databases are open once constructed (PgStores connects here)."""

    def problem(self) -> str | None:
        """None while the state directory and its databases are the ones opened; else what happened
        (logged once, with how to recover). Readiness asks this: a vanished directory makes /readyz 503.

        Readiness is asked on every request, so the answer is reused for CHECK_INTERVAL_S; writes do not
        wait for it (each checks its own file, see `Database.durable`).
        """
        now = time.monotonic()
        if now < self._checked_until:
            for database in self._databases:
                if database.lost:
                    break
            else:
                return self._reported
        self._checked_until = now + CHECK_INTERVAL_S
        cause = self._directory_problem()
        for database in self._databases:
            if cause is not None:
                break
            cause = database.problem()
        problem = None if cause is None else f"not storing: {cause} (restart it, then `aqe-v3 state restore`)"
        if problem is not None and problem != self._reported:
            log.error(
                "%s; writes are refused from now on, since they would go to files nobody can open again. "
                "To recover, restart the server (it starts with an empty state directory), then restore the "
                "last backup: aqe-v3 state restore BACKUP_DIR",
                cause,
            )
        self._reported = problem
        return problem

    def _directory_problem(self) -> str | None:
        return vanished(self.directory, self._identity, "the state directory", "directory")

    def close(self) -> None:
        self.tasks.close()
        self.patterns.close()
        self.reports.close()
        self.memory.close()
        os.close(self._lock)


def open_stores(config: Config) -> StoresBackend:
    """The stores `config.store` names: SQLite files in server.stateDir, or PostgreSQL at store.url (which
    connects in `await stores.open()`, on the server's event loop)."""
    if config.store.url:
        from qe_appliance.store.postgres import PgStores

        return PgStores(config.store)
    return Stores(state_dir(config))
