"""The SQLite plumbing every store shares: one way to open a database (WAL, synchronous=FULL, private
files, versioned migrations), transactions, noticing a vanished file, and waiting out another process's
write lock without holding the event loop.

Several processes may use one state directory at once (stdio sessions, an HTTP server, the CLI), so a
database is opened with SQLite's normal locking. Connections used on the event loop have no busy timeout:
when another process holds the write lock a statement fails at once with SQLITE_BUSY, and `retrying`
sleeps asynchronously (backoff 1 ms doubling to 50 ms, up to BUSY_DEADLINE_S) before trying again. A
write lock is held only for one short transaction and its fsync, so the wait is a few milliseconds, and
meanwhile the loop serves other requests instead of spinning inside sqlite.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import pathlib
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Final, ParamSpec, TypeVar, cast

log = logging.getLogger("aqe_mcp.store")

_SQLITE_BUSY: Final = 5
_SQLITE_LOCKED: Final = 6
# Opening (and migrating) happens before a process serves, so there sqlite may wait for the lock itself.
OPEN_BUSY_TIMEOUT_MS: Final = 10_000
# How long a call keeps retrying a database another process has locked before it reports the failure.
BUSY_DEADLINE_S: Final = 10.0
_BACKOFF_FIRST_S: Final = 0.001
_BACKOFF_MAX_S: Final = 0.05
# Files the appliance creates are private: another local user must not read memory.db-wal.
FILE_MODE: Final = 0o600
DIR_MODE: Final = 0o700

# The wal-index header: the first bytes of a WAL database's -shm file, two copies of 48 bytes that every commit
# rewrites (its frame count and change counter grow, or its salts change when the log restarts); see
# https://sqlite.org/walformat.html.
WAL_INDEX_HEADER_BYTES: Final = 96

P = ParamSpec("P")
T = TypeVar("T")


class StoreError(RuntimeError):
    """A database cannot be opened or used; the message says which file and what to do."""


class StoreBusyError(StoreError):
    """Another process kept the database locked for longer than BUSY_DEADLINE_S; retrying later may work."""


class StoreUnavailableError(StoreError):
    """The PostgreSQL server (store.url) cannot be reached now; the call changed nothing and may be retried."""


class StateGoneError(StoreError):
    """The database file was deleted or replaced while the server ran; nothing written now would last."""


def is_busy(exc: sqlite3.Error) -> bool:
    """True for SQLITE_BUSY / SQLITE_LOCKED (and their extended codes): another connection holds a lock."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


def vanished(path: pathlib.Path, identity: tuple[int, int], what: str, kind: str) -> str | None:
    """None while `path` is still the file or directory (device, inode) `identity` opened; else what happened."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return f"{what} {path} was deleted while the server ran"
    except OSError as exc:
        return f"{what} {path} cannot be checked: {exc}"
    if (stat.st_dev, stat.st_ino) != identity:
        return f"{what} {path} was replaced by another {kind} while the server ran"
    return None


class Database:
    """One open SQLite database: its connection, and what it takes to tell that its file is still there."""

    def __init__(self, conn: sqlite3.Connection, path: pathlib.Path, what: str) -> None:
        self.conn = conn
        self.path = path
        self.what = what
        stat = path.stat()
        self._identity = (stat.st_dev, stat.st_ino)
        # Set when a write found the file gone, so readiness says so at once (it otherwise re-checks each second).
        self.lost: str | None = None
        self._wal_index: mmap.mmap | None = None
        self._wal_index_mapped = False

    def commit_mark(self) -> object:
        """A value that differs from the one an earlier call returned once any connection, in this process or
        another, has committed to the database in between (and may differ without a commit).

        It is the wal-index header, read from a shared mapping of the -shm file, so asking costs no syscall
        and no lock; where that file cannot be mapped, SQLite's data_version plus this connection's
        total_changes (data_version counts only other connections' commits)."""
        if not self._wal_index_mapped:
            self._wal_index_mapped = True
            self._wal_index = _map_wal_index(self.path)
        if self._wal_index is not None:
            return self._wal_index[:WAL_INDEX_HEADER_BYTES]
        ((version,),) = self.conn.execute("PRAGMA data_version").fetchall()
        return (version, self.conn.total_changes)

    def problem(self) -> str | None:
        """None while the file this connection writes is the one at `path`; else what happened to it."""
        return vanished(self.path, self._identity, f"the {self.what}", "file")

    @contextmanager
    def durable(self) -> Iterator[None]:
        """Around a write: refuse it when the file is gone, and fail it (rather than report it stored) when
        the file vanished while it ran, since what it wrote went to a file nobody can open again."""
        self._require()
        yield
        self._require()

    def _require(self) -> None:
        problem = self.problem()
        if problem is not None:
            self.lost = problem
            raise StateGoneError(
                f"{problem}; nothing written now would be kept. Restart the server (it starts with an empty "
                "state), then restore the last backup with `aqe-v3 state restore`"
            )

    def close(self) -> None:
        if self._wal_index is not None:
            self._wal_index.close()
            self._wal_index = None
        self.conn.close()


def _map_wal_index(path: pathlib.Path) -> mmap.mmap | None:
    """A read-only shared mapping of the wal-index header of the database at `path`, or None when its -shm
    file is not there to map (SQLite then keeps the index in private memory, with exclusive locking)."""
    try:
        fd = os.open(f"{path}-shm", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_size < WAL_INDEX_HEADER_BYTES:
            return None
        return mmap.mmap(fd, WAL_INDEX_HEADER_BYTES, mmap.MAP_SHARED, mmap.PROT_READ)
    except OSError:
        return None
    finally:
        os.close(fd)


def open_database(path: pathlib.Path, migrations: Sequence[Sequence[str]], what: str) -> Database:
    """A database in WAL mode with `synchronous=FULL`, mode 0600, its schema brought up to date.

    The connection is in autocommit mode (each statement commits, and fsyncs, before it returns) and has
    no busy timeout: use it through `retrying`. `what` names the database in errors ("memory database").
    Raises StoreError with the fix.

    Several processes may open one database at once (workers, instances on one stateDir). SQLite answers some
    of those meetings with SQLITE_BUSY without waiting on its busy timeout (a WAL index another connection is
    still building, a deadlock it refuses to wait on), so the whole open is tried again until
    OPEN_BUSY_TIMEOUT_MS has passed.
    """
    deadline = time.monotonic() + OPEN_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            return _open_once(path, migrations, what)
        except sqlite3.OperationalError as exc:  # busy: `_open_once` turns every other failure into StoreError
            if time.monotonic() >= deadline:
                raise StoreError(
                    f"the {what} {path} stayed locked by another process for {OPEN_BUSY_TIMEOUT_MS / 1000:g} s; "
                    "check for a hung aqe-mcp or sqlite3 process on this stateDir"
                ) from exc
            time.sleep(0.01)


def _open_once(path: pathlib.Path, migrations: Sequence[Sequence[str]], what: str) -> Database:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        db = sqlite3.connect(path, isolation_level=None, cached_statements=64, timeout=OPEN_BUSY_TIMEOUT_MS / 1000)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(
            f"cannot open the {what} {path}: {exc}; check that the state directory exists and is writable "
            "by the server's user"
        ) from exc
    try:
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(
                f"the {what} {path} cannot use WAL mode (got {mode!r}); put the state directory on a "
                "local filesystem"
            )
        # FULL fsyncs the WAL on every commit: an acknowledged write survives kill -9 and power loss.
        db.execute("PRAGMA synchronous = FULL")
        _migrate(db, path, migrations, what)
        # Reading the schema creates the -wal and -shm files: all three private, also when an older
        # version left them readable.
        for suffix in ("", "-wal", "-shm"):
            _tighten(pathlib.Path(f"{path}{suffix}"))
        db.execute("PRAGMA busy_timeout = 0")
        return Database(db, path, what)
    except sqlite3.OperationalError as exc:
        db.close()
        if is_busy(exc):
            raise  # open_database tries again
        raise StoreError(
            f"the {what} {path} is unusable: {exc}; move it aside to start empty, or restore it from a backup "
            "(`aqe-v3 state restore`)"
        ) from exc
    except sqlite3.Error as exc:
        db.close()
        raise StoreError(
            f"the {what} {path} is unusable: {exc}; move it aside to start empty, or restore it from a backup "
            "(`aqe-v3 state restore`)"
        ) from exc
    except BaseException:
        db.close()
        raise


def _tighten(path: pathlib.Path) -> None:
    try:
        if path.stat().st_mode & 0o077:
            path.chmod(FILE_MODE)
    except FileNotFoundError:
        pass


def _migrate(
    db: sqlite3.Connection, path: pathlib.Path, migrations: Sequence[Sequence[str]], what: str
) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    while True:
        # One transaction per step, so a crash mid-migration leaves the previous version intact; the
        # version is read inside it, so two processes starting at once apply each step once.
        with transaction(db):
            current = db.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0
            if current > len(migrations):
                raise StoreError(
                    f"the {what} {path} has schema version {current}, newer than this build understands "
                    f"({len(migrations)}); upgrade aqe-mcp or point stateDir elsewhere"
                )
            if current == len(migrations):
                return
            for statement in migrations[current]:
                db.execute(statement)
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (current + 1,))


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT on an autocommit connection; ROLLBACK when the block raises.

    IMMEDIATE takes the write lock at BEGIN, so SQLITE_BUSY can only come before anything was done and a
    retry of the whole block is safe.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        # SQLite has already rolled back by itself after some errors (disk full, I/O).
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


async def retrying(fn: Callable[P, T | Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """`fn(*args, **kwargs)` (a store call), run again after an async pause while another process holds
    the database's lock. Raises StoreBusyError when the lock is still held after BUSY_DEADLINE_S.

    A PostgreSQL store's methods are coroutines: their result is awaited here, so callers are the same
    for both backends (PostgreSQL waits for its own row locks; it never raises SQLITE_BUSY)."""
    delay = _BACKOFF_FIRST_S
    deadline = time.monotonic() + BUSY_DEADLINE_S
    while True:
        try:
            result = fn(*args, **kwargs)
            # What a PostgreSQL store returns (inspect.isawaitable's ABC check costs several times this).
            if hasattr(result, "__await__"):
                return await cast(Awaitable[T], result)
            return result
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                raise
            if time.monotonic() + delay > deadline:
                raise StoreBusyError(
                    f"the database stayed locked by another process for {BUSY_DEADLINE_S:g} s ({exc}); "
                    "retry, and check for a process holding a long transaction on this stateDir"
                ) from exc
        # Jitter keeps processes that collided from retrying in lockstep.
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))
        delay = min(delay * 2, _BACKOFF_MAX_S)


def retry_sync(fn: Callable[[], T]) -> T:
    """`fn()` retried with blocking sleeps: for the CLI and start-up, which have no event loop to keep."""
    delay = _BACKOFF_FIRST_S
    deadline = time.monotonic() + BUSY_DEADLINE_S
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, _BACKOFF_MAX_S)
