"""sd_notify: READY, RELOADING (with MONOTONIC_USEC), STOPPING, WATCHDOG and STATUS over $NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Final

log = logging.getLogger("aqe_mcp.systemd")

# A full receive queue on the manager's side must not stall the event loop for long.
SEND_TIMEOUT_S: Final = 1.0


class Notifier:
    """Tells the service manager how the server is doing; does nothing when none started it."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = _notify_address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval_s = _watchdog_interval(env) if self.address is not None else None
        self._sock: socket.socket | None = None
        self._serving = ""
        self._failing = False

    def notify(self, *fields: str) -> bool:
        """Send `KEY=value` fields in one datagram; False when there is no manager or it cannot be reached."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.settimeout(SEND_TIMEOUT_S)
            self._sock.sendto("".join(f"{field}\n" for field in fields).encode(), self.address)
        except OSError as exc:
            if not self._failing:  # once per outage, not once per watchdog ping
                log.warning("cannot notify systemd at NOTIFY_SOCKET (%s); the server keeps running", exc)
            self._failing = True
            return False
        self._failing = False
        return True

    def status(self, text: str) -> bool:
        return self.notify(_status(text))

    def ready(self, status: str | None = None) -> bool:
        """Start-up or a reload is complete; `status` (kept for later READY=1s) says what is served."""
        if status is not None:
            self._serving = status
        return self.notify("READY=1", _status(self._serving or "ready"))

    def reloading(self) -> bool:
        # systemd matches this to the SIGHUP it sent by the monotonic time (Type=notify-reload).
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", _status("reloading the configuration"))

    def stopping(self) -> bool:
        return self.notify("STOPPING=1", _status("draining: finishing requests in flight"))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    async def keep_alive(self) -> None:
        """Ping the watchdog from the event loop until cancelled, so a stuck loop stops the pings."""
        if self.watchdog_interval_s is None:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(self.watchdog_interval_s)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _notify_address(value: str) -> str | None:
    if not value:
        return None
    if value.startswith("@"):  # abstract namespace: the name starts with a NUL byte
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    log.warning("NOTIFY_SOCKET=%s is not a unix socket path; systemd notifications are off", value)
    return None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half the watchdog timeout, as systemd recommends; None when no watchdog is meant for this process."""
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


def _status(text: str) -> str:
    return "STATUS=" + " ".join(text.split())  # one line: a newline would start another field


# --- installation -------------------------------------------------------------------------------------
