"""From a report's file name to the source file on disk, and from a source file to the test file that
should cover it, in the project's own convention."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Final

from qe_appliance.workspace import Workspace

# Where JVM builds keep sources; JaCoCo names files by package path relative to one of these.
_JVM_SOURCE_DIRS: Final = ("src/main/java", "src/main/kotlin", "src/main/scala", "src")
_JS_SUFFIXES: Final = (".js", ".jsx", ".ts", ".tsx", ".mjs", ".cjs", ".vue", ".svelte")


def locate(workspace: Workspace, name: str, root: Path, source_dirs: list[str]) -> Path | None:
    """The readable file inside the workspace that a report's file name refers to; None when there is none."""
    given = Path(name)
    if given.is_absolute():
        candidates = [given]
    else:
        bases = [root / directory for directory in source_dirs] + [root]
        bases += [
            root / directory for directory in _JVM_SOURCE_DIRS if name.endswith((".java", ".kt", ".scala"))
        ]
        candidates = [base / given for base in bases]
    return workspace.find_file(candidates)


class ProjectLayout:
    """Where tests live in one project: its test directories (and the Python test files already in them,
    found once by a bounded walk) and per-folder JavaScript habits (x.test.js, x.spec.js, __tests__/)."""

    def __init__(self, root: Path, max_entries: int = 20_000) -> None:
        self.root = root
        self._real_root = root.resolve()
        self._local_dirs: dict[Path, bool] = {}
        self.test_dirs = [
            name for name in ("tests", "test") if self._local(root / name) and (root / name).is_dir()
        ]
        self.python_tests: dict[str, str] = {}
        self.js_tests: dict[str, str] = {}
        seen = 0
        for directory in self.test_dirs:
            for current, dirs, files in os.walk(root / directory):
                dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
                seen += len(files) + len(dirs)
                for file in files:
                    relative = (Path(current) / file).relative_to(root).as_posix()
                    if file.startswith("test_") and file.endswith(".py"):
                        self.python_tests.setdefault(file, relative)
                    elif (".test." in file or ".spec." in file) and file.endswith(_JS_SUFFIXES):
                        self.js_tests.setdefault(file, relative)
                if seen > max_entries:
                    break

    def _local(self, directory: Path) -> bool:
        """Whether `directory` stays inside the root: the report's file names are the caller's text, and a
        name with '..' or a link out of the tree must not make us look at other directories. Remembered per
        directory, since a report names many files in each."""
        known = self._local_dirs.get(directory)
        if known is None:
            try:
                known = directory.resolve().is_relative_to(self._real_root)
            except (OSError, RuntimeError):  # RuntimeError: a symlink loop
                known = False
            self._local_dirs[directory] = known
        return known

    def suggest(self, source: Path | None, name: str) -> str:
        """Where a test for the file belongs, relative to the root ('/'-separated): an existing test file
        when one is found, else the path the project's layout implies (tests/test_<module>.py for Python,
        <name>.test.ts beside a TypeScript file, src/test/java/.../<Name>Test.java, <name>_test.go, ...)."""
        path = _relative(self.root, source, name)
        suffix, stem = path.suffix, path.stem
        if suffix == ".py":
            return self._python(path)
        if suffix in _JS_SUFFIXES:
            return self._javascript(path)
        if suffix in (".java", ".kt", ".scala"):
            parts = list(path.parts)
            if "main" in parts[1:] and parts[parts.index("main") - 1] == "src":
                parts[parts.index("main")] = "test"
                return str(PurePosixPath(*parts).with_name(f"{stem}Test{suffix}"))
            language = {".java": "java", ".kt": "kotlin", ".scala": "scala"}[suffix]
            return str(PurePosixPath("src/test", language, path.with_name(f"{stem}Test{suffix}")))
        if suffix == ".go":
            return str(path.with_name(f"{stem}_test.go"))
        if suffix == ".rb":
            inner = PurePosixPath(*path.parts[1:]) if path.parts[:1] == ("lib",) else path
            return str(PurePosixPath("spec", inner.with_name(f"{stem}_spec.rb")))
        return str(PurePosixPath("tests", f"test_{stem}{suffix}"))

    def _python(self, path: PurePosixPath) -> str:
        module = path.parent.name if path.stem == "__init__" else path.stem
        test_name = f"test_{module}.py"
        if test_name in self.python_tests:
            return self.python_tests[test_name]
        if self._local(self.root / path.parent) and (self.root / path.parent / test_name).is_file():
            return (path.parent / test_name).as_posix()
        return f"{self.test_dirs[0] if self.test_dirs else 'tests'}/{test_name}"

    def _javascript(self, path: PurePosixPath) -> str:
        stem, suffix = path.stem, path.suffix
        folder = self.root / path.parent
        if not self._local(folder):
            return (path.parent / f"{stem}.test{suffix}").as_posix()
        for kind in ("test", "spec"):
            name = f"{stem}.{kind}{suffix}"
            for candidate in (folder / name, folder / "__tests__" / name):
                if candidate.is_file():
                    return candidate.relative_to(self.root).as_posix()
            if name in self.js_tests:
                return self.js_tests[name]
        try:
            neighbours = os.listdir(folder)
        except OSError:
            neighbours = []
        known = [*neighbours, *self.js_tests]
        kind = "spec" if sum(".spec." in n for n in known) > sum(".test." in n for n in known) else "test"
        if "__tests__" in neighbours:
            return (path.parent / "__tests__" / f"{stem}.{kind}{suffix}").as_posix()
        colocated = any(".test." in n or ".spec." in n for n in neighbours)
        if self.js_tests and not colocated:
            return f"{self.test_dirs[0]}/{stem}.{kind}{suffix}"
        return (path.parent / f"{stem}.{kind}{suffix}").as_posix()


def _relative(root: Path, source: Path | None, name: str) -> PurePosixPath:
    if source is not None and source.is_relative_to(root):
        return PurePosixPath(source.relative_to(root).as_posix())
    given = PurePosixPath(name.replace(os.sep, "/"))
    return PurePosixPath(*given.parts[1:]) if given.is_absolute() else given
