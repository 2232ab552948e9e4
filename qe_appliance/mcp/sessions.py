"""Handshake-era sessions: bounded in number, expired when idle, cheap to look up, each usable only by the
principal (bearer token) that created it.

A stdio connection is one Session too (created by the transport, never in the table).
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec

from qe_appliance.mcp.jsonrpc import INVALID_REQUEST, RpcError

LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
# Notifications a server-to-client stream (GET /mcp, subscriptions/listen) may hold unsent before it is ended.
MAX_PENDING_EVENTS = 1024


def offer(queue: asyncio.Queue[bytes | None], event: bytes) -> None:
    """Queue a notification for one stream. A stream whose client stopped reading while the server went on
    notifying is ended once MAX_PENDING_EVENTS are waiting (its queue emptied, then the end marker): memory
    stays bounded, and the client opens the stream again when it reads on."""
    if queue.qsize() >= MAX_PENDING_EVENTS:
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(None)
        return
    queue.put_nowait(event)


class Session:
    """What the server remembers between requests of one handshake-era client."""

    __slots__ = (
        "id",
        "principal",
        "protocol_version",
        "client_info",
        "initialized",
        "log_level",
        "last_seen",
        "inflight",
        "listeners",
        "subscriptions",
        "__weakref__",
    )

    def __init__(
        self, session_id: str, protocol_version: str, client_info: Any = None, principal: str | None = None
    ) -> None:
        self.id = session_id
        # Who created it (Guard.check's principal; None without auth): nobody else may use or end it.
        self.principal = principal
        self.protocol_version = protocol_version
        self.client_info = client_info
        self.initialized = False
        # Index into LOG_LEVELS; None means the client never asked for log messages.
        self.log_level: int | None = None
        self.last_seen = time.monotonic()
        self.inflight: dict[Any, asyncio.Future[Any]] = {}
        # Queues of open GET /mcp streams, fed with server-initiated notifications.
        self.listeners: set[asyncio.Queue[bytes | None]] = set()
        # Resource URIs it subscribed to (resources/subscribe): their changes reach its streams.
        self.subscriptions: set[str] = set()

    def notify(self, event: bytes) -> None:
        """A server-initiated notification to this session's open streams (none open: it is dropped)."""
        for queue in self.listeners:
            offer(queue, event)

    def close(self) -> None:
        for fut in self.inflight.values():
            fut.cancel()
        for queue in self.listeners:
            queue.put_nowait(None)
        self.listeners.clear()


class SessionStats(msgspec.Struct, rename="camel", frozen=True):
    """The session table as status and metrics read it (camelCase on the wire)."""

    active: int
    max_sessions: int
    created: int
    expired: int
    evicted: int


class SessionTable:
    """Sessions by id, least recently used first. When the table is full the least recently used session
    with nothing running (no request in flight, no open stream) is evicted; if every one is busy, the new
    session is refused with 503."""

    def __init__(self, max_sessions: int, idle_timeout_s: float) -> None:
        self.max_sessions = max_sessions
        self.idle_timeout_s = idle_timeout_s
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self.created = 0
        self.expired = 0
        self.evicted = 0
        # Told "sessions" when a new session is refused (the appliance points it at its Monitor).
        self.on_refuse: Callable[[str], None] = lambda reason: None

    def __len__(self) -> int:
        return len(self._sessions)

    def stats(self) -> SessionStats:
        return SessionStats(len(self._sessions), self.max_sessions, self.created, self.expired, self.evicted)

    def reconfigure(self, max_sessions: int, idle_timeout_s: float) -> None:
        """New limits (reload): a smaller table evicts as new sessions arrive, never an active one."""
        self.max_sessions = max_sessions
        self.idle_timeout_s = idle_timeout_s

    def broadcast(self, event: bytes) -> None:
        """A server-initiated notification to every open GET /mcp stream (e.g. tools/list_changed)."""
        for session in self._sessions.values():
            session.notify(event)

    def create(self, protocol_version: str, client_info: Any, principal: str | None = None) -> Session:
        self.sweep()
        if len(self._sessions) >= self.max_sessions:
            idle = (sid for sid, s in self._sessions.items() if not s.inflight and not s.listeners)
            victims = list(itertools.islice(idle, len(self._sessions) - self.max_sessions + 1))
            if len(self._sessions) - len(victims) >= self.max_sessions:
                self.on_refuse("sessions")
                raise RpcError(
                    INVALID_REQUEST,
                    f"all {self.max_sessions} sessions (server.maxSessions) are busy; retry shortly, or close "
                    "unused sessions with DELETE /mcp",
                    http_status=503,
                )
            for sid in victims:
                self.remove(sid)
            self.evicted += len(victims)
        session = Session(secrets.token_urlsafe(24), protocol_version, client_info, principal)
        self._sessions[session.id] = session
        self.created += 1
        return session

    def get(self, session_id: str, principal: str | None = None) -> Session | None:
        """The session, for the principal that created it; for anyone else it does not exist (its existence is
        not revealed, nor is it kept alive)."""
        session = self._sessions.get(session_id)
        if session is None or session.principal != principal:
            return None
        now = time.monotonic()
        if now - session.last_seen > self.idle_timeout_s and not session.inflight and not session.listeners:
            self.remove(session_id)
            self.expired += 1
            return None
        session.last_seen = now
        self._sessions.move_to_end(session_id)
        return session

    def remove(self, session_id: str) -> bool:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        session.close()
        return True

    def sweep(self) -> int:
        """Drop sessions idle past the timeout (oldest first, so the scan stops early)."""
        deadline = time.monotonic() - self.idle_timeout_s
        dropped = 0
        for sid, session in list(self._sessions.items()):
            if session.last_seen > deadline:
                break
            if session.inflight or session.listeners:
                continue
            self.remove(sid)
            dropped += 1
        self.expired += dropped
        return dropped

    def sessions(self) -> list[Session]:
        return list(self._sessions.values())

    def close_all(self) -> None:
        for session in self._sessions.values():
            session.close()
        self._sessions.clear()
