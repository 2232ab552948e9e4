"""`aqe-v3 systemd install`: puts the unit and the default configuration in place."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Final

UNIT_NAME: Final = "aqe-mcp.service"
CONFIG_NAME: Final = "qe-mcp.yaml"
DEFAULT_CONFIG_DIR: Final = "/etc/aqe-mcp"
DEFAULT_UNIT_DIR: Final = "/etc/systemd/system"
# The unit's own spelling of DEFAULT_CONFIG_DIR: ConfigurationDirectory=aqe-mcp under %E (/etc).
UNIT_CONFIG_PATH: Final = f"%E/aqe-mcp/{CONFIG_NAME}"
# Type=notify-reload appeared in systemd 253; older managers ignore the line and run the unit as simple.
NOTIFY_RELOAD_SINCE: Final = 253
# Where the server's executable must not live: the unit hides these directories from the service.
HIDDEN_DIRS: Final = ("/home", "/root", "/run/user", "/tmp", "/var/tmp")
# Unit files split on whitespace and treat quotes and backslashes specially; paths with them are refused.
_UNQUOTABLE: Final = re.compile(r"[\s\"'\\]")
# The source checkout's directory of each shipped file (installed, they all sit in share/aqe-mcp).
SHIPPED_IN: Final = {UNIT_NAME: "systemd", CONFIG_NAME: "config"}


class InstallError(Exception):
    """The unit or configuration cannot be put in place; the message says what to do."""

    exit_code = 1


class UsageError(InstallError):
    """A flag's value cannot be used."""

    exit_code = 2


def shipped_file(name: str) -> Path:
    """A file shipped with aqe-mcp (the unit or the default configuration).

    From the source checkout when running from one (editable installs), else from the installed package's
    data files (share/aqe-mcp).
    """
    checkout = Path(__file__).resolve().parents[2] / SHIPPED_IN[name] / name
    if checkout.is_file():
        return checkout
    import importlib.metadata  # here: it costs start-up ~10 ms and only an install needs it

    try:
        files = importlib.metadata.files("aqe-mcp") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for packaged in files:
        if packaged.parts[-3:] == ("share", "aqe-mcp", name):
            return Path(str(packaged.locate())).resolve()
    raise InstallError(f"{name} is not part of this installation; reinstall aqe-mcp (pip install .) "
                       "from its source directory")


def find_executable() -> str | None:
    """The aqe-v3 of this Python environment, else the one on PATH; an absolute path."""
    beside = Path(sys.executable).parent / "aqe-v3"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside.absolute())
    found = shutil.which("aqe-v3")
    return str(Path(found).absolute()) if found else None


def systemd_version() -> int | None:
    """The version of this machine's systemd, or None when it has none (a container, a build host)."""
    try:
        done = subprocess.run(["systemctl", "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.match(r"systemd (\d+)", done.stdout)
    return int(found.group(1)) if found else None


def render_unit(template: str, executable: str, config_dir: str = DEFAULT_CONFIG_DIR,
                version: int | None = None) -> str:
    """The shipped unit for this machine: ExecStart runs `executable` on the file in `config_dir`.

    Before systemd 253 (`version`; None means a current one) Type=notify-reload does not exist: the unit
    then says Type=notify, and `systemctl reload` runs `aqe-v3 mcp reload`, which waits for the result.
    """
    config = UNIT_CONFIG_PATH
    if config_dir != DEFAULT_CONFIG_DIR:
        config = _unit_path(f"{config_dir}/{CONFIG_NAME}")
    exe = _unit_path(executable)
    lines = []
    for line in template.splitlines():
        if line.startswith("ExecStart="):
            line = f"ExecStart={exe} mcp start --config {config}"
        elif line == "Type=notify-reload" and version is not None and version < NOTIFY_RELOAD_SINCE:
            lines += [
                f"# systemd {version} predates Type=notify-reload: `systemctl reload` asks the server.",
                "Type=notify",
                f"ExecReload={exe} mcp reload --config {config}",
            ]
            continue
        lines.append(line)
    return "\n".join(lines) + "\n"


def _unit_path(path: str) -> str:
    if _UNQUOTABLE.search(path):
        raise InstallError(f"{path}: a path with spaces, quotes or backslashes cannot go into the unit "
                           "unquoted; choose another directory")
    return path.replace("%", "%%")  # % starts a specifier in unit files


def _check_directory(flag: str, path: str) -> None:
    if not path.startswith("/"):
        raise UsageError(f"{flag} {path}: give an absolute path")
    if _UNQUOTABLE.search(path):
        raise UsageError(f"{flag} {path}: choose a directory without spaces, quotes or backslashes")


def install(prefix: str = "/", config_dir: str = DEFAULT_CONFIG_DIR, unit_dir: str = DEFAULT_UNIT_DIR, *,
            dry_run: bool = False, version: int | None = None) -> int:
    """`aqe-v3 systemd install`: write the unit and, unless one is there, the default configuration.

    `prefix` stages the files under another root (a package build, an image); the paths inside the unit
    stay those of the target system. Prints what it did and the next steps; returns the exit code.
    """
    try:
        executable = find_executable()
        if executable is None:
            raise InstallError("aqe-v3 is not installed in this environment; pip install aqe-mcp first")
        _check_directory("--config-dir", config_dir)
        _check_directory("--unit-dir", unit_dir)
        config_dir = str(PurePosixPath(config_dir))
        unit = render_unit(shipped_file(UNIT_NAME).read_text(), executable, config_dir, version)
        defaults = shipped_file(CONFIG_NAME).read_bytes()
    except InstallError as exc:
        print(f"aqe-v3: {exc}", file=sys.stderr)
        return exc.exit_code
    if executable.startswith(tuple(f"{hidden}/" for hidden in HIDDEN_DIRS)):
        print(f"aqe-v3: warning: {executable} is under a directory the service cannot see (ProtectHome, "
              "PrivateTmp); install aqe-mcp in a virtualenv under /opt or /usr/local and run its aqe-v3",
              file=sys.stderr)
    root = Path(prefix)
    unit_path = root / PurePosixPath(unit_dir).relative_to("/") / UNIT_NAME
    config_path = root / PurePosixPath(config_dir).relative_to("/") / CONFIG_NAME
    verb = "would write" if dry_run else "wrote"
    try:
        if dry_run:
            print(f"{verb} {unit_path}:\n{unit}")
        else:
            _write(unit_path, unit.encode())
            print(f"{verb} {unit_path}")
        if config_path.exists():
            print(f"kept {config_path} (already there; `aqe-v3 mcp config validate {config_path}` checks it)")
        else:
            if not dry_run:
                _write(config_path, defaults)
            print(f"{verb} {config_path} (the documented defaults)")
    except OSError as exc:
        print(f"aqe-v3: cannot write {exc.filename or prefix}: {exc.strerror}; run as root "
              "(sudo aqe-v3 systemd install) or stage the files elsewhere with --prefix", file=sys.stderr)
        return 1
    if version is not None and version < NOTIFY_RELOAD_SINCE:
        print(f"systemd {version} here: the unit uses Type=notify with an ExecReload "
              f"(Type=notify-reload needs systemd {NOTIFY_RELOAD_SINCE})")
    where = "on the target system, " if root.resolve() != Path("/") else ""
    print(f"\nNext, {where}as root:\n  systemctl daemon-reload && systemctl enable --now aqe-mcp\n"
          f"  systemctl status aqe-mcp    # journalctl -u aqe-mcp -f for the log\n"
          f"Edit {config_dir}/{CONFIG_NAME}, then `systemctl reload aqe-mcp` applies it.")
    return 0


def _write(path: Path, data: bytes) -> None:
    # World-readable, whatever the caller's umask: the service's dynamic user reads both files (and the
    # directories on the way); only root may change them.
    missing = [directory for directory in (path.parent, *path.parent.parents) if not directory.exists()]
    for directory in reversed(missing):
        directory.mkdir()
        directory.chmod(0o755)
    staging = path.with_name(f".{path.name}.new")
    staging.write_bytes(data)
    staging.chmod(0o644)
    staging.replace(path)
