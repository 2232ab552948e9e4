"""Handshake-era session table: bounded, idle expiry, eviction of the least recently used idle session."""

from __future__ import annotations

import asyncio
import time

import pytest

from qe_appliance.mcp.jsonrpc import RpcError
from qe_appliance.mcp.sessions import MAX_PENDING_EVENTS, SessionTable
from qe_appliance.mcp.subscriptions import Listener, Subscriptions


def test_ids_are_unguessable_and_visible_ascii() -> None:
    table = SessionTable(10, 60)
    ids = {table.create("2025-11-25", None).id for _ in range(10)}
    assert len(ids) == 10
    assert all(len(i) >= 32 and i.isascii() and i.isprintable() and " " not in i for i in ids)


def test_full_table_evicts_the_least_recently_used() -> None:
    table = SessionTable(3, 60)
    a, b, c = (table.create("2025-11-25", None) for _ in range(3))
    assert table.get(a.id) is a  # a is now the most recent
    d = table.create("2025-11-25", None)
    assert len(table) == 3 and table.evicted == 1
    assert table.get(b.id) is None and table.get(a.id) is a and table.get(c.id) is c and table.get(d.id) is d


def test_busy_sessions_are_never_evicted_and_a_full_busy_table_refuses() -> None:
    table = SessionTable(2, 60)
    refusals: list[str] = []
    table.on_refuse = refusals.append
    a, b = table.create("2025-11-25", None), table.create("2025-11-25", None)
    a.listeners.add(asyncio.Queue())  # an open GET stream
    c = table.create("2025-11-25", None)  # b is idle: evicted although a is older
    assert table.get(a.id) is a and table.get(b.id) is None and table.evicted == 1
    loop = asyncio.new_event_loop()
    c.inflight[1] = loop.create_future()  # a request running
    with pytest.raises(RpcError, match="server.maxSessions") as refused:
        table.create("2025-11-25", None)
    loop.close()
    assert refused.value.http_status == 503 and refusals == ["sessions"] and len(table) == 2


def test_idle_sessions_expire() -> None:
    table = SessionTable(10, 0.05)
    s = table.create("2025-11-25", None)
    time.sleep(0.08)
    assert table.get(s.id) is None and table.expired == 1
    for _ in range(5):
        table.create("2025-11-25", None)
    time.sleep(0.08)
    assert table.sweep() == 5 and len(table) == 0


def test_remove_ends_the_session() -> None:
    table = SessionTable(10, 60)
    s = table.create("2025-11-25", None)
    assert table.remove(s.id) is True and table.remove(s.id) is False and table.get(s.id) is None


def test_a_stream_whose_client_stopped_reading_is_ended_not_grown() -> None:
    """GET /mcp streams and subscriptions/listen streams alike: at most MAX_PENDING_EVENTS wait, then the stream
    gets its end marker, and a reader that catches up reads what came after."""
    session = SessionTable(4, 60.0).create("2025-11-25", None)
    stream: asyncio.Queue[bytes | None] = asyncio.Queue()
    session.listeners.add(stream)
    subscriptions = Subscriptions(4)
    listener = Listener(1, None, frozenset(), frozenset({"aqe://memory/a/b"}), frozenset())
    subscriptions._listeners.add(listener)
    for _ in range(3 * MAX_PENDING_EVENTS):
        session.notify(b"{}")
        subscriptions.resource_changed("aqe://memory/a/b", False)
    for queue in (stream, listener.queue):
        assert queue.qsize() <= MAX_PENDING_EVENTS
        assert None in [queue.get_nowait() for _ in range(queue.qsize())]
    session.notify(b'{"after": 1}')
    assert stream.get_nowait() == b'{"after": 1}'
