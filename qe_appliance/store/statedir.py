"""The state directory itself: which databases it holds, keeping it private, and the lock through which
running servers and `aqe-v3 state restore` keep out of each other's way. Standard library only, so the CLI
can use it without loading the stores.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pathlib
from typing import Final

from qe_appliance.store.database import DIR_MODE, FILE_MODE

log = logging.getLogger("aqe_mcp.store")

# Every running process holds this file with a shared flock for its whole life; a restore takes it
# exclusively, so neither can start while the other runs. The kernel drops a lock when its process dies,
# even by kill -9, so a crashed server never blocks a restore.
LOCK_FILE: Final = "server.lock"
# The database files of a state directory, in the order they are opened (and backed up).
DATABASE_FILES: Final = ("memory.db", "patterns.db", "tasks.db", "reports.db")


def lock_state(directory: pathlib.Path, *, exclusive: bool) -> int | None:
    """A descriptor holding `directory`'s lock (closing it releases it), or None when the lock is held
    the other way (a restore running, or for `exclusive` a server running)."""
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def private_directory(path: pathlib.Path) -> None:
    """Create `path` (mode 700), or make it private with a warning when it exists open to other users."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("made %s private (mode %o -> 700): it holds the appliance's data", path, mode)
        path.chmod(DIR_MODE)

