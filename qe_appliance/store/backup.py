"""`aqe-v3 state backup DEST` and `aqe-v3 state restore SRC`: an online, consistent copy of every store
database of a state directory, and putting one back while no server runs on it.

Backup uses SQLite's backup API in one step, so each file is a snapshot of one read transaction: it holds
every write committed before it began, and running servers keep writing meanwhile (a WAL reader blocks no
writer). Restore takes the state directory's lock exclusively (every running server holds it shared, see
`stores.LOCK_FILE`), so it refuses while any server, stdio session included, uses the directory, and no
server can start until it has finished.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import sqlite3
import sys
import time
from typing import Any

from qe_appliance import __version__
from qe_appliance.store.database import DIR_MODE, FILE_MODE, OPEN_BUSY_TIMEOUT_MS, StoreError
from qe_appliance.store.statedir import DATABASE_FILES, LOCK_FILE, lock_state

MANIFEST = "backup.json"


def add_parsers(top: Any) -> None:
    """Register the `state` command group on the CLI's top-level subparsers."""
    state = top.add_parser("state", help="back up and restore the server's state (the store databases)")
    cmds = state.add_subparsers(dest="command", required=True, parser_class=type(state))
    backup = cmds.add_parser("backup", help="copy every store database to DEST while servers keep running")
    backup.add_argument("dest", help="a directory to create (or an empty one)")
    restore = cmds.add_parser("restore", help="replace the state with a backup (no server may be running)")
    restore.add_argument("src", help="a directory written by `aqe-v3 state backup`")
    for parser in (backup, restore):
        parser.add_argument("--config", help="YAML configuration file naming server.stateDir (default: built-in)")


def run(args: argparse.Namespace) -> int:
    """Run `state backup` or `state restore`; prints what it did, or the error and its fix (exit 1/2)."""
    from qe_appliance.config import ConfigError, load_config, state_dir

    # The copies hold what the state does (stored secrets included): for this user alone.
    os.umask(0o077)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if config.store.url:
        # The state is in PostgreSQL: its own tools copy it consistently while servers write.
        verb = "pg_dump --format=custom --file=FILE" if args.command == "backup" else "pg_restore --clean --dbname"
        print(
            f"aqe-v3: state {args.command}: the stores are in PostgreSQL (store.url {config.store.url}), not in "
            f"files; use PostgreSQL's tools instead: {verb} '{config.store.url}' (see README, Backup and restore)",
            file=sys.stderr,
        )
        return 2
    directory = state_dir(config)
    try:
        if args.command == "backup":
            copied = backup(directory, pathlib.Path(args.dest))
            print(f"backed up {', '.join(copied)} from {directory} to {pathlib.Path(args.dest).absolute()}")
        else:
            copied = restore(pathlib.Path(args.src), directory)
            print(f"restored {', '.join(copied)} from {pathlib.Path(args.src).absolute()} into {directory}")
    except (StoreError, OSError, sqlite3.Error) as exc:
        print(f"aqe-v3: state {args.command} failed: {exc}", file=sys.stderr)
        return 1
    return 0


def backup(directory: pathlib.Path, dest: pathlib.Path) -> list[str]:
    """Copy each store database of `directory` into the new or empty directory `dest`; returns the names.

    Each copy is written beside its final name, checked with PRAGMA integrity_check, fsynced and then
    renamed, so `dest` never holds a partial database under a real name.
    """
    present = [name for name in DATABASE_FILES if (directory / name).is_file()]
    if not present:
        raise StoreError(
            f"no store databases in {directory}; check server.stateDir (--config) names the server's state"
        )
    dest.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    if any(dest.iterdir()):
        raise StoreError(f"{dest} is not empty; give a new directory so no earlier backup is overwritten")
    started = time.time()
    for name in present:
        temporary = dest / f".{name}.partial"
        _copy(directory / name, temporary)
        _check(temporary)
        _fsync(temporary)
        temporary.rename(dest / name)
    manifest = {"aqeMcp": __version__, "source": str(directory), "startedAt": started, "files": present}
    fd = os.open(dest / MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(fd, "w") as handle:
        json.dump(manifest, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    _fsync(dest)
    return present


def restore(src: pathlib.Path, directory: pathlib.Path) -> list[str]:
    """Replace `directory`'s store databases by those in the backup `src`; returns the names restored.

    Refuses while a server uses `directory`. Every file in `src` is checked before any is written.
    """
    present = [name for name in DATABASE_FILES if (src / name).is_file()]
    if not present:
        raise StoreError(f"{src} holds no store databases ({', '.join(DATABASE_FILES)}); give a backup directory")
    for name in present:
        _check(src / name)
    directory.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    lock = lock_state(directory, exclusive=True)
    if lock is None:
        raise StoreError(
            f"a server is running on {directory} (it holds {directory / LOCK_FILE}); stop every aqe-mcp "
            "using this state directory (the HTTP server and any stdio sessions), then run the restore again"
        )
    try:
        for name in present:
            _copy(src / name, directory / name)
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.chmod(f"{directory / name}{suffix}", FILE_MODE)
    finally:
        os.close(lock)
    return present


def _copy(source: pathlib.Path, target: pathlib.Path) -> None:
    """SQLite's online backup of `source` into `target` (replacing its content), in one step."""
    # The URI's mode=rw: a missing source is an error, not a new empty database.
    with contextlib.closing(
        sqlite3.connect(f"{source.absolute().as_uri()}?mode=rw", uri=True, timeout=OPEN_BUSY_TIMEOUT_MS / 1000)
    ) as reader, contextlib.closing(sqlite3.connect(target, timeout=OPEN_BUSY_TIMEOUT_MS / 1000)) as writer:
        reader.backup(writer)
        # Out of WAL mode, so the copy is one self-contained file (a server switches it back on open).
        writer.execute("PRAGMA journal_mode = DELETE")


def _check(path: pathlib.Path) -> None:
    with contextlib.closing(sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)) as db:
        verdict = db.execute("PRAGMA integrity_check").fetchall()
    if verdict != [("ok",)]:
        raise StoreError(f"{path} fails SQLite's integrity check: {verdict[:5]}; use another backup")


def _fsync(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
