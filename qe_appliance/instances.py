"""What lets several processes share one state directory: unix socket names and locks such that none may
delete or take over a socket another live process serves (while what a killed process left behind is still
cleaned up), and telling whether a process still runs.

The admin socket has a fixed name, so its owner holds an flock on `<socket>.lock` for its whole life; the
kernel drops it when the process dies, even by kill -9. Agent sockets carry the server's pid in their name
(`agent-<pid>-<n>.sock`), so each process has its own, and only those of dead pids are removed.
"""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

from qe_appliance import sandbox

_AGENT_SOCKET = re.compile(r"agent-(\d+)-\d+\.sock")


class SocketInUseError(OSError):
    """Another running process serves this socket; the message says how to give this one its own."""


def claim(path: Path) -> int:
    """Take `path` for this process: an open descriptor holding its lock (close it to give the path up).

    A socket left at `path` by a process that has stopped is removed. Raises SocketInUseError when a
    running process holds it.
    """
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SocketInUseError(
            f"the admin socket {path} belongs to another running aqe-mcp on this state directory; give this "
            "server its own with server.controlSocket (or stop the other one)"
        ) from None
    if path.exists() or path.is_symlink():
        path.unlink()
    return fd


def release(path: Path, fd: int) -> None:
    """Remove the socket this process claimed, then its lock (in that order, so no one else's goes)."""
    path.unlink(missing_ok=True)
    os.close(fd)


def agent_socket(directory: Path, seq: int) -> Path:
    """This process's socket for its `seq`th agent."""
    return directory / f"agent-{os.getpid()}-{seq}.sock"


def remove_stale_agent_sockets(directory: Path) -> None:
    """Remove the agent sockets of servers that are no longer running (killed before they cleaned up)."""
    for path in directory.glob("agent-*.sock"):
        match = _AGENT_SOCKET.fullmatch(path.name)
        # Names without a pid come from an older version, which held the state directory alone.
        if match is None or not pid_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            # Its agents' sandboxed runs may outlive it (setsid); their groups were recorded beside the socket.
            sandbox.kill_recorded_groups(sandbox.groups_file(path))


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs (a reused pid reads as alive: the safe side here)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
