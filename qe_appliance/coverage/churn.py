"""Git churn: lines added plus deleted per file over the repository's recent history, from a bounded
`git log --numstat`. Cached per repository and HEAD commit, so it runs once per new commit."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import Final

MAX_COMMITS: Final = 500
TIMEOUT_S: Final = 3.0
_ENV: Final = {"GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}

_cache: dict[tuple[Path, str], dict[Path, int]] = {}
_lock = threading.Lock()


def _git(cwd: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(cwd), *args],
            capture_output=True,
            timeout=TIMEOUT_S,
            env={**os.environ, **_ENV},
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.decode("utf-8", errors="surrogateescape") if done.returncode == 0 else None


def churn(directory: Path) -> dict[Path, int] | None:
    """{absolute file path: lines changed in the last MAX_COMMITS commits}; None when `directory` is not
    inside a git work tree (or git is unavailable)."""
    head = _git(directory, "rev-parse", "--show-toplevel", "HEAD")
    if head is None:
        return None
    parts = head.split("\n")
    if len(parts) < 2 or not parts[1]:
        return None
    top, commit = Path(parts[0]).resolve(), parts[1]
    with _lock:
        hit = _cache.get((top, commit))
    if hit is not None:
        return hit
    log = _git(top, "log", f"--max-count={MAX_COMMITS}", "--numstat", "--format=", "--no-renames")
    if log is None:
        return None
    changed: dict[Path, int] = {}
    for line in log.splitlines():
        fields = line.split("\t", 2)
        if len(fields) != 3 or not fields[0].isdigit() or not fields[1].isdigit():
            continue  # blank separator lines, binary files ("-")
        path = top / fields[2]
        changed[path] = changed.get(path, 0) + int(fields[0]) + int(fields[1])
    with _lock:
        if len(_cache) > 64:
            _cache.clear()
        _cache[(top, commit)] = changed
    return changed
