"""Path confinement for the tools that read files: roots, symlink escapes, missing and oversized files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qe_appliance.workspace import Workspace, WorkspaceError, glob_regex


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "a.py").write_text("x = 1\n")
    (root / "src" / "pkg" / "b.py").write_text("y = 2\n")
    (root / "src" / "notes.txt").write_text("not python\n")
    (root / "src" / "migrations").mkdir()
    (root / "src" / "migrations" / "0001.py").write_text("z = 3\n")
    (root / "node_modules" / "dep").mkdir(parents=True)
    (root / "node_modules" / "dep" / "c.py").write_text("w = 4\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("secret\n")
    return root


def test_a_relative_path_is_read_from_the_first_root(tree: Path) -> None:
    ws = Workspace([tree], 1 << 20)
    assert ws.read_text("src/pkg/a.py") == "x = 1\n"
    assert ws.file(tree / "src" / "pkg" / "b.py") == (tree / "src" / "pkg" / "b.py").resolve()


def test_paths_outside_every_root_are_refused_with_the_roots_named(tree: Path) -> None:
    ws = Workspace([tree], 1 << 20)
    with pytest.raises(WorkspaceError, match="outside the workspace roots") as caught:
        ws.read_bytes("../outside/secret.txt")
    assert str(tree.resolve()) in str(caught.value) and "server.workspaceRoots" in str(caught.value)
    with pytest.raises(WorkspaceError, match="outside the workspace roots"):
        ws.read_bytes("/etc/hostname")
    # Whether a file outside exists is not revealed: a missing one gets the same answer.
    with pytest.raises(WorkspaceError, match="outside the workspace roots"):
        ws.read_bytes("/etc/no-such-file-anywhere")


def test_a_symlink_leading_out_of_the_root_is_refused_and_nothing_is_read(tree: Path) -> None:
    link = tree / "src" / "escape.txt"
    link.symlink_to(tree.parent / "outside" / "secret.txt")
    dir_link = tree / "src" / "elsewhere"
    dir_link.symlink_to(tree.parent / "outside")
    ws = Workspace([tree], 1 << 20)
    with pytest.raises(WorkspaceError, match="through a symbolic link to .*outside the workspace roots"):
        ws.read_bytes("src/escape.txt")
    with pytest.raises(WorkspaceError, match="symbolic link"):
        ws.read_bytes("src/elsewhere/secret.txt")
    # A link that stays inside the root is fine.
    (tree / "src" / "alias.py").symlink_to(tree / "src" / "pkg" / "a.py")
    assert ws.read_text("src/alias.py") == "x = 1\n"


def test_missing_directory_and_oversized_files_say_what_is_wrong(tree: Path) -> None:
    ws = Workspace([tree], 8)
    with pytest.raises(WorkspaceError, match="no such file or directory: src/nope.py"):
        ws.file("src/nope.py")
    with pytest.raises(WorkspaceError, match="is not a regular file"):
        ws.file("src")
    with pytest.raises(WorkspaceError, match="is not a directory"):
        ws.directory("src/pkg/a.py")
    (tree / "big.txt").write_bytes(b"0123456789")
    with pytest.raises(WorkspaceError, match=r"10 bytes, over the 8-byte limit \(server.maxInputFileBytes\)"):
        ws.read_bytes("big.txt")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_refused(tree: Path) -> None:
    target = tree / "src" / "pkg" / "a.py"
    target.chmod(0)
    try:
        with pytest.raises(WorkspaceError, match="permission denied"):
            Workspace([tree], 1 << 20).read_bytes(target)
    finally:
        target.chmod(0o644)


def test_several_roots_and_the_default_root(tree: Path, tmp_path: Path) -> None:
    ws = Workspace([tree / "src", tmp_path / "outside"], 1 << 20)
    assert ws.read_text(tmp_path / "outside" / "secret.txt") == "secret\n"
    with pytest.raises(WorkspaceError, match="outside"):
        ws.read_bytes(tree / "node_modules" / "dep" / "c.py")
    default = Workspace.from_config((), 1 << 20, cwd=tree)
    assert default.roots == (tree.resolve(),)
    relative = Workspace.from_config(("src",), 1 << 20, cwd=tree)
    assert relative.roots == ((tree / "src").resolve(),)
    assert Workspace.from_spec(relative.spec()).roots == relative.roots


def test_walk_filters_by_suffix_and_globs_and_skips_vendored_dirs(tree: Path) -> None:
    ws = Workspace([tree], 1 << 20)
    root = tree.resolve()
    every = ws.walk(root, (".py",), None, None, 100)
    assert [p.relative_to(root).as_posix() for p in every] == [
        "src/migrations/0001.py",
        "src/pkg/a.py",
        "src/pkg/b.py",
    ]
    kept = ws.walk(root, (".py",), ["src/**/*.py"], ["**/migrations/*"], 100)
    assert [p.name for p in kept] == ["a.py", "b.py"]
    with pytest.raises(WorkspaceError, match="more than 2 matching files"):
        ws.walk(root, (".py",), None, None, 2)


def test_walk_does_not_follow_a_directory_link_out_of_the_roots_or_round_a_loop(tree: Path) -> None:
    (tree / "src" / "linked").symlink_to(tree.parent / "outside")
    (tree.parent / "outside" / "evil.py").write_text("import os\n")
    (tree / "src" / "pkg" / "loop").symlink_to(tree / "src")
    ws = Workspace([tree], 1 << 20)
    found = ws.walk(tree.resolve(), (".py",), None, None, 100)
    assert all("evil" not in p.name for p in found)
    assert len(found) == 3  # the files under src/ once, not again through the loop


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("src/**/*.py", "src/a.py", True),
        ("src/**/*.py", "src/a/b/c.py", True),
        ("src/**/*.py", "lib/a.py", False),
        ("*.py", "a/b.py", False),
        ("**/test_*.py", "tests/unit/test_x.py", True),
        ("[ab]*.py", "b1.py", True),
        ("[!ab]*.py", "a1.py", False),
        ("file?.py", "file1.py", True),
    ],
)
def test_glob_semantics(pattern: str, path: str, matches: bool) -> None:
    assert bool(glob_regex(pattern).fullmatch(path)) is matches
