"""The module under test: found by file path or dotted name under the workspace roots (its import name and
the directory it imports from worked out from its packages), or given inline with a module name."""

from __future__ import annotations

import functools
import keyword
import re
from pathlib import Path
from typing import Final

import msgspec

from qe_appliance.workspace import Workspace, WorkspaceError

DEFAULT_MODULE: Final = "module_under_test"


@functools.cache
def _dotted() -> re.Pattern[str]:
    return re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


_KEYWORDS: Final = frozenset(keyword.kwlist)


class Subject(msgspec.Struct, frozen=True):
    """`module` is the import name, `alias` the name the tests use; `filename` names it in messages; a
    module read from the workspace has its `path` and the `import_root` it is imported from."""

    module: str
    alias: str
    filename: str
    path: str | None = None
    import_root: str | None = None

    def import_line(self) -> str:
        """The statement that binds the module under test. A submodule is looked up by its full name: `from
        pkg import mod` would bind whatever `pkg` exports as `mod`, and a package that re-exports a function
        of the same name (`from .mod import mod`) hands the tests the function instead."""
        package, _, last = self.module.rpartition(".")
        if package:
            return f"{self.alias} = importlib.import_module({self.module!r})"
        return f"import {last} as {self.alias}" if self.alias != last else f"import {last}"

    @property
    def import_needs(self) -> set[str]:
        """The modules the import line itself needs imported first."""
        return {"importlib"} if "." in self.module else set()


def check_module_name(name: str) -> str:
    if not _dotted().fullmatch(name) or any(part in _KEYWORDS for part in name.split(".")):
        raise WorkspaceError(
            f"{name!r} is not an importable module name; give dotted Python identifiers such as "
            "'shop.pricing'"
        )
    return name


def locate(workspace: Workspace, given: str) -> tuple[Path, str, Path]:
    """The file, import name and import root of a module given as a path (file or package directory) or
    as a dotted name; WorkspaceError when it is outside the roots, missing, or not importable by name."""
    if _dotted().fullmatch(given) and not given.endswith(".py"):
        return _by_name(workspace, given)
    resolved = workspace.resolve(given)
    if resolved.is_dir():
        resolved = workspace.file(resolved / "__init__.py")
    else:
        resolved = workspace.file(resolved)
    if resolved.suffix != ".py":
        raise WorkspaceError(
            f"{given} is not a Python file (.py); give a module's .py file or its dotted name"
        )
    parts = [] if resolved.name == "__init__.py" else [resolved.stem]
    directory = resolved.parent
    # Climb through packages (directories with __init__.py), staying inside the workspace.
    while (directory / "__init__.py").is_file() and workspace.contains(directory.parent):
        parts.insert(0, directory.name)
        directory = directory.parent
    if not parts:
        raise WorkspaceError(
            f"{given} is a package's __init__.py at a workspace root; give a module inside it"
        )
    module = ".".join(parts)
    if not _dotted().fullmatch(module):
        raise WorkspaceError(
            f"{given} cannot be imported as {module!r} (not Python identifiers); rename it, or give its "
            "source inline with a module name"
        )
    return resolved, check_module_name(module), directory


def _by_name(workspace: Workspace, name: str) -> tuple[Path, str, Path]:
    relative = Path(*name.split("."))
    looked: list[Path] = []
    for root in workspace.roots:
        for base in (root, root / "src"):
            candidates = [base / relative.with_suffix(".py"), base / relative / "__init__.py"]
            looked += candidates
            found = workspace.find_file(candidates)
            if found is not None:
                return found, check_module_name(name), base
    shown = ", ".join(str(p) for p in looked[:4])
    raise WorkspaceError(
        f"no module {name} under the workspace roots (looked for {shown}); give its file path"
    )


def display_name(workspace: Workspace, path: Path) -> str:
    """`path` relative to the workspace root that holds it."""
    for root in workspace.roots:
        if path.is_relative_to(root):
            return path.relative_to(root).as_posix()
    return str(path)
