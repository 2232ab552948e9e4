"""Resource change notifications for the handshake era: `resources/subscribe` / `resources/unsubscribe`, then
`notifications/resources/updated` on the session's stream (GET /mcp, or stdout on stdio) whenever a writer
reports the URI changed (`Services.changes`), and `notifications/resources/list_changed` to every session's
stream when a new resource appears (coalesced: at most one per LIST_CHANGED_DELAY_S).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Final

from qe_appliance.changes import Changes
from qe_appliance.mcp import jsonrpc as rpc
from qe_appliance.mcp.sessions import Session, SessionTable

LIST_CHANGED_DELAY_S: Final = 0.5
# Subscriptions one session may hold: each is a string kept until unsubscribed or the session ends.
MAX_SUBSCRIPTIONS: Final = 1000


class ResourceUpdates:
    def __init__(self, changes: Changes, sessions: SessionTable) -> None:
        self.sessions = sessions
        # Sessions holding a subscription (HTTP and stdio alike); a session that ends drops out by itself.
        self._subscribers: weakref.WeakSet[Session] = weakref.WeakSet()
        self._list_changed: asyncio.TimerHandle | None = None
        changes.listen(self._changed)

    def subscribe(self, session: Session, uri: str) -> None:
        if uri not in session.subscriptions and len(session.subscriptions) >= MAX_SUBSCRIPTIONS:
            raise rpc.RpcError(
                rpc.INVALID_PARAMS,
                f"this session holds {MAX_SUBSCRIPTIONS} resource subscriptions already; unsubscribe some first",
            )
        session.subscriptions.add(uri)
        self._subscribers.add(session)

    def unsubscribe(self, session: Session, uri: str) -> None:
        session.subscriptions.discard(uri)

    def _changed(self, uri: str, new: bool) -> None:
        event: bytes | None = None
        for session in list(self._subscribers):
            if uri in session.subscriptions:
                event = event or rpc.notification_bytes("notifications/resources/updated", {"uri": uri})
                session.notify(event)
        if new and self._list_changed is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # a write outside the server (CLI, tests): nobody listens
            self._list_changed = loop.call_later(LIST_CHANGED_DELAY_S, self._announce_list)

    def _announce_list(self) -> None:
        self._list_changed = None
        event = rpc.notification_bytes("notifications/resources/list_changed", {})
        self.sessions.broadcast(event)
