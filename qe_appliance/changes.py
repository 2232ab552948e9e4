"""One place to say "the resource at this URI changed": stores' writers (memory entries, task progress, new
reports and artifacts) call `changed`, and the MCP layer turns it into `notifications/resources/updated` for
the sessions that subscribed to the URI (and `notifications/resources/list_changed` for a new one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("aqe_mcp.changes")

# (uri, new): `new` is true when the resource did not exist before, so the resource list changed too.
Listener = Callable[[str, bool], None]


class Changes:
    """Resource changes fanned out to listeners; calling it costs nothing when nobody listens."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def changed(self, uri: str, *, new: bool = False) -> None:
        for listener in self._listeners:
            try:
                listener(uri, new)
            except Exception:  # a listener's bug must not fail the write that reported the change
                log.exception("resource change listener failed for %s", uri)
