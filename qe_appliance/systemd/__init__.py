"""systemd integration: sd_notify messages (notify.py) and `aqe-v3 systemd install` (install.py)."""

from qe_appliance.systemd.install import (
    CONFIG_NAME,
    DEFAULT_CONFIG_DIR,
    DEFAULT_UNIT_DIR,
    NOTIFY_RELOAD_SINCE,
    UNIT_NAME,
    InstallError,
    UsageError,
    find_executable,
    install,
    render_unit,
    shipped_file,
    systemd_version,
)
from qe_appliance.systemd.notify import Notifier

__all__ = [
    "CONFIG_NAME", "DEFAULT_CONFIG_DIR", "DEFAULT_UNIT_DIR", "NOTIFY_RELOAD_SINCE", "UNIT_NAME", "InstallError",
    "Notifier", "UsageError", "find_executable", "install", "render_unit", "shipped_file", "systemd_version",
]
