"""Confines the files tools read to the configured workspace roots: every path is resolved (symbolic
links included) and refused when it leaves all roots, is missing or unreadable, or is over the size limit.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

import msgspec

# Directories no project keeps its own sources in; walking them would only slow a scan down.
SKIPPED_DIRS: Final = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        ".tox",
        ".nox",
        ".venv",
        "venv",
        "node_modules",
        "__pycache__",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        "site-packages",
        ".eggs",
    }
)
MAX_WALK_ENTRIES: Final = 200_000
SHOWN_CHARS: Final = 200


class InputError(Exception):
    """Something the caller gave cannot be used (a path, a report, a source file); the message says what
    to fix. The tool layer reports it as a tool error (isError), never as a server fault."""


class WorkspaceError(InputError):
    """A path the caller gave cannot be read: outside the roots, missing, unreadable or too large."""


class WorkspaceSpec(msgspec.Struct, frozen=True):
    """A workspace as data, to rebuild it in an agent process."""

    roots: tuple[str, ...]
    max_file_bytes: int


class Workspace:
    """The directories tools may read from, and the largest file they may read."""

    def __init__(self, roots: Sequence[str | os.PathLike[str]], max_file_bytes: int) -> None:
        if not roots:
            raise ValueError("a workspace needs at least one root")
        self.roots: tuple[Path, ...] = tuple(Path(root).resolve() for root in roots)
        # The roots as written too, so a path through a linked root (/tmp -> /private/tmp) is inside.
        self._written = tuple(Path(os.path.abspath(root)) for root in roots)
        self.max_file_bytes = max_file_bytes

    @classmethod
    def from_config(cls, roots: Sequence[str], max_file_bytes: int, cwd: Path | None = None) -> Workspace:
        """server.workspaceRoots, relative ones taken from `cwd`; none configured means `cwd` itself."""
        base = cwd or Path.cwd()
        return cls([base / root for root in roots] or [base], max_file_bytes)

    @classmethod
    def from_spec(cls, spec: WorkspaceSpec) -> Workspace:
        return cls(spec.roots, spec.max_file_bytes)

    def spec(self) -> WorkspaceSpec:
        return WorkspaceSpec(tuple(str(root) for root in self.roots), self.max_file_bytes)

    def contains(self, resolved: Path) -> bool:
        return any(_within(resolved, root) for root in self.roots)

    def resolve(self, path: str | os.PathLike[str], base: Path | None = None) -> Path:
        """The real path of an existing file or directory inside a root; relative paths start at `base`
        (default: the first root)."""
        given = os.fspath(path)
        if "\x00" in given:
            raise WorkspaceError(f"path {_shown(repr(given))} contains a NUL byte; give a plain file path")
        lexical = Path(os.path.abspath((base or self.roots[0]) / given))
        given = _shown(given)
        # Judged on the path as written before anything is looked up, so no answer tells whether a
        # file outside the roots exists.
        if not (self.contains(lexical) or any(_within(lexical, root) for root in self._written)):
            raise WorkspaceError(
                f"{given} is outside the workspace roots ({self._roots_text()}); give a path under one "
                "of them, or add its directory to server.workspaceRoots in the configuration"
            )
        try:
            real = lexical.resolve(strict=True)
        except FileNotFoundError:
            raise WorkspaceError(
                f"no such file or directory: {given} (looked for {_shown(str(lexical))})"
            ) from None
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop on older Pythons
            raise WorkspaceError(f"cannot resolve {given}: {_reason(exc)}") from None
        if not self.contains(real):
            raise WorkspaceError(
                f"{given} leads through a symbolic link to {real}, which is outside the workspace roots "
                f"({self._roots_text()}); copy the file into the workspace instead"
            )
        return real

    def file(self, path: str | os.PathLike[str], base: Path | None = None) -> Path:
        """Like `resolve`, for a regular file within the size limit."""
        real = self.resolve(path, base)
        if not real.is_file():
            raise WorkspaceError(f"{os.fspath(path)} is not a regular file ({real}); give a file's path")
        size = real.stat().st_size
        if size > self.max_file_bytes:
            raise WorkspaceError(self._too_large(path, size))
        return real

    def directory(self, path: str | os.PathLike[str], base: Path | None = None) -> Path:
        real = self.resolve(path, base)
        if not real.is_dir():
            raise WorkspaceError(f"{os.fspath(path)} is not a directory ({real}); give a directory's path")
        return real

    def read_bytes(self, path: str | os.PathLike[str], base: Path | None = None) -> bytes:
        real = self.file(path, base)
        try:
            # O_NOFOLLOW: the resolved path has no links left, so a link appearing now is a swap.
            fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise WorkspaceError(f"cannot read {os.fspath(path)}: {_reason(exc)}") from None
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(self.max_file_bytes + 1)
        if len(data) > self.max_file_bytes:
            raise WorkspaceError(self._too_large(path, len(data)))
        return data

    def read_text(self, path: str | os.PathLike[str], base: Path | None = None) -> str:
        data = self.read_bytes(path, base)
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise WorkspaceError(
                f"{os.fspath(path)} is not UTF-8 text (byte {exc.start} is invalid); save it as UTF-8"
            ) from None

    def find_file(self, candidates: Iterable[Path]) -> Path | None:
        """The first candidate that exists as a readable file inside the roots; None when none does.

        For file names found inside reports: those are hints, so a miss is not an error.
        """
        for candidate in candidates:
            try:
                return self.file(candidate)
            except WorkspaceError:
                continue
        return None

    def walk(
        self,
        directory: Path,
        suffixes: tuple[str, ...],
        include: Sequence[str] | None,
        exclude: Sequence[str] | None,
        max_files: int,
    ) -> list[Path]:
        """Files under `directory` (already resolved) ending in one of `suffixes`, filtered by globs
        matched against their path relative to `directory`; sorted. Symbolic links are followed only
        when they stay inside the roots, and directories in SKIPPED_DIRS or starting with '.' are left out.
        """
        includes = [glob_regex(pattern) for pattern in include or ()]
        excludes = [glob_regex(pattern) for pattern in exclude or ()]
        found: list[Path] = []
        pending = [directory]
        visited = {directory}  # real paths, so a link back up the tree is walked once
        seen = 0
        while pending:
            current = pending.pop()
            try:
                entries = list(os.scandir(current))
            except OSError as exc:
                raise WorkspaceError(f"cannot list {current}: {_reason(exc)}") from None
            for entry in entries:
                seen += 1
                if seen > MAX_WALK_ENTRIES:
                    raise WorkspaceError(
                        f"{directory} holds more than {MAX_WALK_ENTRIES} entries; give a narrower path"
                    )
                path = Path(entry.path)
                kind = self._kind(entry, path, suffixes)
                if kind is None:
                    continue
                if isinstance(kind, Path):
                    if kind not in visited:
                        visited.add(kind)
                        pending.append(path)
                    continue
                relative = path.relative_to(directory).as_posix()
                if includes and not any(rx.fullmatch(relative) for rx in includes):
                    continue
                if any(rx.fullmatch(relative) for rx in excludes):
                    continue
                found.append(path)
                if len(found) > max_files:
                    raise WorkspaceError(
                        f"more than {max_files} matching files under {directory}; give a narrower path "
                        "or add exclude globs"
                    )
        return sorted(found)

    def _kind(self, entry: os.DirEntry[str], path: Path, suffixes: tuple[str, ...]) -> Path | bool | None:
        """For `walk`: a directory to descend into (its real path), True for a file with one of the
        suffixes, None for anything to leave out (skipped directories, links leaving the roots, and entries
        that cannot be looked at, such as a symbolic-link loop or a file removed meanwhile)."""
        try:
            if entry.is_dir():
                if entry.name in SKIPPED_DIRS or entry.name.startswith("."):
                    return None
                real = path.resolve(strict=True) if entry.is_symlink() else path
                return real if self.contains(real) else None
            if not entry.name.endswith(suffixes) or not entry.is_file():
                return None
            if entry.is_symlink() and not self.contains(path.resolve(strict=True)):
                return None
        except (OSError, RuntimeError):  # RuntimeError: a symlink loop on older Pythons
            return None
        return True

    def _roots_text(self) -> str:
        return ", ".join(str(root) for root in self.roots)

    def _too_large(self, path: str | os.PathLike[str], size: int) -> str:
        return (
            f"{os.fspath(path)} is {size} bytes, over the {self.max_file_bytes}-byte limit "
            "(server.maxInputFileBytes); raise the limit or give a smaller file"
        )


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob on '/'-separated relative paths, for `fullmatch`: `*` and `?` stay within one directory, a
    `**` segment spans any number of them (`src/**/*.py` matches `src/a.py` and `src/a/b.py`; a `**` inside
    a segment is a `*`), `[...]` is a character set (`[!...]` its complement).

    The regex backtracks at most linearly, whatever the pattern: a plain translation of '*a*a*a*b' or
    '**/**/**/x' takes exponential time on a long path. Each wildcard commits to the first place where the
    literal text after it matches (an atomic group), which loses no match, because the next thing is again
    a wildcard that can take up whatever that choice skipped (fnmatch does the same for `*`).
    """
    segments: list[str] = []
    for segment in pattern.split("/"):
        if not (segment == "**" and segments and segments[-1] == "**"):
            segments.append(segment)
    out: list[str] = []
    index = 0
    while index < len(segments):
        segment = segments[index]
        if segment != "**":
            out.append(_segment_regex(segment) + ("/" if index < len(segments) - 1 else ""))
        elif index == len(segments) - 1:
            out.append(".*")
        elif "**" in segments[index + 1 :]:
            # Between two `**`: the segments up to the next one, at the first place they match, committed.
            following = segments.index("**", index + 1)
            run = "/".join(_segment_regex(part) for part in segments[index + 1 : following])
            out.append(f"(?>(?:[^/]*/)*?{run}/)")
            index = following
            continue
        else:
            out.append("(?:[^/]*/)*")
        index += 1
    return re.compile("".join(out))


def _segment_regex(segment: str) -> str:
    """One segment of a glob: literal pieces separated by `*`, the inner ones committed at their first match."""
    pieces: list[list[str]] = [[]]
    i, n = 0, len(segment)
    while i < n:
        char = segment[i]
        if char == "*":
            if pieces[-1] or len(pieces) == 1:
                pieces.append([])
            i += 1
            continue
        if char == "?":
            pieces[-1].append("[^/]")
        elif char == "[" and (end := segment.find("]", i + 2)) != -1:
            body = segment[i + 1 : end].replace("\\", "\\\\")
            if body.startswith("!"):
                body = "^" + body[1:]
            elif body.startswith("^"):
                body = "\\" + body
            pieces[-1].append(f"(?!/)[{body}]")
            i = end + 1
            continue
        else:
            pieces[-1].append(re.escape(char))
        i += 1
    fixed = ["".join(piece) for piece in pieces]
    if len(fixed) == 1:
        return fixed[0]
    inner = "".join(f"(?>[^/]*?{piece})" for piece in fixed[1:-1])
    return f"{fixed[0]}{inner}[^/]*{fixed[-1]}"


def _within(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _shown(text: str) -> str:
    """`text` cut short for a message: a path given by a caller may be thousands of characters long."""
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}... ({len(text)} characters)"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RuntimeError):  # pathlib's report of a symlink loop on older Pythons
        return "too many levels of symbolic links"
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        return "too many levels of symbolic links"
    if isinstance(exc, PermissionError):
        return "permission denied; make it readable by the server's user"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc)
