"""Runtime overrides: live changes made through the admin socket, listed by `status`, cleared by every reload.

The YAML stays the source of truth (as with HAProxy's runtime API): a reload hands every component its part
of the file again and empties this one object, so `status` never lists an override that no longer holds.
"""

from __future__ import annotations

from typing import Any


class Overrides:
    """Key path (as the config spells it, e.g. `pool.maxConnections`) -> the value set at run time."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}

    def set(self, key: str, value: Any) -> None:
        self._values[key] = value

    def under(self, block: str) -> dict[str, Any]:
        """The overrides of one config block (`pool`, `balancer`)."""
        return {k: v for k, v in self._values.items() if k.startswith(block + ".")}

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def clear(self) -> None:
        self._values.clear()

    @property
    def fleet_enabled(self) -> bool:
        """False after `aqe-v3 mcp balance --disable`: fleet tools then run in server threads, not on agents."""
        return bool(self._values.get("balancer.enabled", True))
