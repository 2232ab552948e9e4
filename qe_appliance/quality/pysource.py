"""What radon measures in one Python file (raw line counts, cyclomatic complexity per function, the
maintainability index) plus the line ranges of its functions and classes, cached by file identity so a
second look at an unchanged file costs one stat.
"""

from __future__ import annotations

import ast
import os
import threading
import tokenize
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

import msgspec

from qe_appliance.workspace import InputError, Workspace, WorkspaceError

if TYPE_CHECKING:
    from radon.visitors import Class, Function

ScopeKind = Literal["function", "method", "class"]
CACHE_ENTRIES: Final = 20_000


class SourceError(InputError):
    """A Python file that does not parse; the message gives the line."""


class Scope(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A function, method or class: qualified name, first and last line, and cyclomatic complexity
    (None for classes, whose complexity is their methods')."""

    name: str
    kind: ScopeKind
    start: int
    end: int
    complexity: int | None


class PySource(msgspec.Struct, frozen=True, gc=False):
    """radon's raw counts (loc, lloc, sloc, comments, multi, blank), the maintainability index (0..100,
    multi-line strings counted as comments, as `radon mi` does by default) and the scopes."""

    loc: int
    lloc: int
    sloc: int
    comments: int
    multi: int
    blank: int
    maintainability: float
    scopes: tuple[Scope, ...]

    def functions(self) -> list[Scope]:
        return [scope for scope in self.scopes if scope.complexity is not None]


def analyze_text(text: str, name: str = "<source>") -> PySource:
    try:
        return _analyze(text, name)
    except (RecursionError, MemoryError):
        # ast, radon and the compiler recurse once per nesting level: only generated or hostile code
        # nests deep enough to exhaust them.
        raise SourceError(
            f"{name}: nested too deeply to measure (hundreds of levels of brackets, operators or blocks); "
            "leave it out with exclude"
        ) from None


def _analyze(text: str, name: str) -> PySource:
    # Imported by the first measurement (the agents' forkserver preloads radon): the server's start-up skips it.
    from radon.metrics import h_visit_ast, mi_compute
    from radon.raw import analyze
    from radon.visitors import ComplexityVisitor

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)  # e.g. invalid escapes: still measurable
            tree = ast.parse(text, filename=name)
        raw = analyze(text)
    except SyntaxError as exc:
        where = f"line {exc.lineno}: " if exc.lineno is not None else ""
        raise SourceError(f"{name}: {where}{exc.msg}; fix the syntax error to measure it") from None
    except (tokenize.TokenError, ValueError) as exc:
        raise SourceError(f"{name}: cannot be tokenized: {exc}") from None
    visitor = ComplexityVisitor.from_ast(tree)
    scopes: list[Scope] = []
    for function in visitor.functions:
        _function_scopes(function, "", "function", scopes)
    for cls in visitor.classes:
        _class_scopes(cls, "", scopes)
    scopes.sort(key=lambda scope: (scope.start, -scope.end))
    comments = raw.comments + raw.multi
    comment_percent = comments / raw.sloc * 100 if raw.sloc else 0.0
    volume = h_visit_ast(tree).total.volume
    maintainability = mi_compute(volume, visitor.total_complexity, raw.lloc, comment_percent)
    return PySource(
        raw.loc,
        raw.lloc,
        raw.sloc,
        raw.comments,
        raw.multi,
        raw.blank,
        round(maintainability, 2),
        tuple(scopes),
    )


def _function_scopes(function: Function, prefix: str, kind: ScopeKind, out: list[Scope]) -> None:
    name = f"{prefix}{function.name}"
    out.append(Scope(name, kind, function.lineno, function.endline, function.complexity))
    for closure in function.closures:
        _function_scopes(closure, f"{name}.", "function", out)


def _class_scopes(cls: Class, prefix: str, out: list[Scope]) -> None:
    name = f"{prefix}{cls.name}"
    out.append(Scope(name, "class", cls.lineno, cls.endline, None))
    for method in cls.methods:
        _function_scopes(method, f"{name}.", "method", out)
    for inner in cls.inner_classes:
        _class_scopes(inner, f"{name}.", out)


class SourceCache:
    """PySource by resolved path, valid while the file's mtime, size and inode are unchanged; the least
    recently used entries go beyond `max_entries`. Safe to share between worker threads."""

    def __init__(self, max_entries: int = CACHE_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[Path, tuple[tuple[int, int, int], PySource]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, workspace: Workspace, path: Path) -> PySource:
        """The measurements of `path` (already resolved inside the workspace); SourceError if it does
        not parse, WorkspaceError if it cannot be read."""
        try:
            stat = os.stat(path)
        except OSError as exc:
            raise WorkspaceError(f"cannot read {path}: {exc.strerror or exc}") from None
        key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        with self._lock:
            hit = self._entries.get(path)
            if hit is not None and hit[0] == key:
                self._entries.move_to_end(path)
                return hit[1]
        source = analyze_text(workspace.read_text(path), str(path))
        with self._lock:
            self._entries[path] = (key, source)
            self._entries.move_to_end(path)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return source


SOURCES: Final = SourceCache()
