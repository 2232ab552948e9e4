"""Where the appliance keeps its files: state directory, admin socket, agent sockets (systemd-aware)."""

import os
import pathlib

from qe_appliance.config.schema import Config

# The state directory's name when server.stateDir is empty and systemd gives none: beside the configuration
# file (config.loading), or in the current directory without one.
DEFAULT_STATE_DIR = ".aqe-state"


def state_dir(cfg: Config) -> pathlib.Path:
    """Where the appliance keeps its data (not created here).

    server.stateDir when set, else $STATE_DIRECTORY (systemd), else ./.aqe-state; always absolute.
    """
    if cfg.server.state_dir:
        return pathlib.Path(cfg.server.state_dir).absolute()
    return _systemd_dir("STATE_DIRECTORY") or pathlib.Path.cwd() / DEFAULT_STATE_DIR


def control_socket(cfg: Config) -> pathlib.Path:
    """The admin unix socket's path.

    server.controlSocket when set, else $RUNTIME_DIRECTORY/control.sock, else <stateDir>/control.sock.
    """
    if cfg.server.control_socket:
        return pathlib.Path(cfg.server.control_socket).absolute()
    return (_systemd_dir("RUNTIME_DIRECTORY") or state_dir(cfg)) / "control.sock"


def runtime_dir(cfg: Config) -> pathlib.Path:
    """Where agent sockets live: fleet.runtimeDir, else $RUNTIME_DIRECTORY (systemd), else <stateDir>/run."""
    if cfg.fleet.runtime_dir:
        return pathlib.Path(cfg.fleet.runtime_dir).absolute()
    return _systemd_dir("RUNTIME_DIRECTORY") or state_dir(cfg) / "run"


def _systemd_dir(variable: str) -> pathlib.Path | None:
    # systemd joins several configured directories with ':'; the first one is ours.
    first = os.environ.get(variable, "").split(":")[0]
    return pathlib.Path(first) if first else None
