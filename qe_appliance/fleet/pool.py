"""The design's QEConnectionPool, made real: persistent unix-socket connections to agent processes.

One request is in flight per connection, so the pool bounds concurrency to the fleet. An acquire is a
hit when an idle connection to the chosen agent is ready, a miss when one has to be opened. Waiting
acquirers sleep on a condition, woken by releases; nothing polls.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import msgspec

from qe_appliance.config import PoolConfig
from qe_appliance.fleet import rpc
from qe_appliance.fleet.waiters import WaitQueue


class PoolStats(msgspec.Struct, rename="camel", frozen=True):
    """The pool as `pool status`, qe_fleet_status and /metrics show it (camelCase on the wire)."""

    available: int
    in_use: int
    total: int
    max_connections: int
    min_connections: int
    acquires: int
    hits: int
    # None until the first acquire: nothing measured yet.
    hit_rate: float | None
    average_wait_ms: float | None
    p95_wait_ms: float | None
    timeouts: int
    opened: int
    closed: int
    draining: bool


class PoolTimeout(Exception):
    """No connection could be had within the deadline."""


class AgentGone(ConnectionError):
    """The agent closed the connection (it died or was stopped) while a call was in flight."""


class AgentUnreachable(AgentGone):
    """The call never reached the agent (dead connection, refused connect): safe to send elsewhere."""


class AgentConnection(asyncio.Protocol):
    """A connection to one agent; `call` sends one request and waits for its result."""

    _ids = itertools.count(1)

    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        self.transport: asyncio.Transport | None = None
        self.created = time.monotonic()
        self.last_used = self.created
        self.closed = False
        self._buffer = bytearray()
        self._waiter: asyncio.Future[rpc.Result] | None = None
        self._call_id = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A unix stream transport (uvloop's do not subclass asyncio.Transport, but behave as one).
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(AgentGone(f"agent {self.agent_id} closed the connection"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) < rpc.HEADER.size:
            return
        (length,) = rpc.HEADER.unpack_from(self._buffer)
        if length > rpc.MAX_FRAME:  # refused before it is buffered
            self._broken(f"sent a reply of {length} bytes, over the {rpc.MAX_FRAME}-byte limit")
            return
        if len(self._buffer) < rpc.HEADER.size + length:
            return
        body = bytes(self._buffer[rpc.HEADER.size : rpc.HEADER.size + length])
        del self._buffer[: rpc.HEADER.size + length]
        try:
            result = rpc.result_decoder.decode(body)
        except msgspec.DecodeError as exc:
            self._broken(f"sent a malformed reply: {exc}")
            return
        if self._waiter is None or result.id != self._call_id:
            self._broken(f"sent a reply for call {result.id} while call {self._call_id} was waiting")
            return
        waiter, self._waiter = self._waiter, None
        if not waiter.done():
            waiter.set_result(result)

    def _broken(self, problem: str) -> None:
        """A reply that breaks the protocol: the waiting call fails and the connection is closed."""
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(AgentGone(f"agent {self.agent_id} {problem}"))
        self._buffer.clear()
        self.close()

    async def call(self, op: str, fn: str = "", payload: Any = None, trace: str = "") -> rpc.Result:
        if self.closed or self.transport is None:
            raise AgentUnreachable(f"agent {self.agent_id} connection is closed")
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        self._call_id = next(self._ids)
        self.transport.write(rpc.frame(rpc.Call(self._call_id, op, fn, payload, trace)))
        return await self._waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


Connector = Callable[[str], "asyncio.Future[AgentConnection] | Any"]


class ConnectionPool:
    """Connections by agent; `maxConnections` caps the total, idle ones beyond `minConnections` expire."""

    def __init__(self, connect: Connector, config: PoolConfig) -> None:
        self._connect = connect
        self.reconfigure(config)
        self._idle: dict[str, deque[AgentConnection]] = {}
        self._in_use: set[AgentConnection] = set()
        self._opening = 0
        # Acquirers waiting for a release, woken one per release.
        self._waiters = WaitQueue()
        self.draining = False
        # Counters for stats().
        self.acquires = 0
        self.hits = 0
        self.timeouts = 0
        self.opened = 0
        self.closed_count = 0
        self._waits: deque[float] = deque(maxlen=1024)
        self._wait_total = 0.0

    def reconfigure(self, config: PoolConfig) -> None:
        """New sizes and idle timeout (start, reload, or `pool configure`); connections adjust as they idle."""
        self.max_connections = config.max_connections
        self.min_connections = config.min_connections
        self.idle_timeout_s = config.idle_timeout_ms / 1000

    @property
    def total(self) -> int:
        return sum(len(q) for q in self._idle.values()) + len(self._in_use) + self._opening

    async def acquire(self, agent_id: str, timeout: float) -> AgentConnection:
        """A connection to `agent_id`: an idle one (hit), a new one (miss), or the next one released."""
        if self.draining:
            raise PoolTimeout("the pool is draining; no new work is taken")
        started = time.monotonic()
        deadline = started + timeout
        self.acquires += 1
        while True:
            conn = self._take_idle(agent_id)
            if conn is not None:
                self.hits += 1
                return self._lend(conn, started)
            if self.total >= self.max_connections:
                self._close_one_idle_elsewhere(agent_id)
            if self.total < self.max_connections:
                conn = await self._open(agent_id)
                return self._lend(conn, started)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.timeouts += 1
                raise PoolTimeout(
                    f"no connection within {timeout:.1f} s: {len(self._in_use)} in use of {self.max_connections}"
                )
            await self._waiters.wait(remaining)

    def _take_idle(self, agent_id: str) -> AgentConnection | None:
        queue = self._idle.get(agent_id)
        while queue:
            conn = queue.pop()  # most recently used first: keeps the others idle long enough to expire
            if not conn.closed:
                return conn
            self.closed_count += 1
        return None

    def _lend(self, conn: AgentConnection, started: float) -> AgentConnection:
        self._in_use.add(conn)
        waited = time.monotonic() - started
        self._waits.append(waited)
        self._wait_total += waited
        return conn

    async def _open(self, agent_id: str) -> AgentConnection:
        self._opening += 1
        try:
            conn: AgentConnection = await self._connect(agent_id)
        finally:
            self._opening -= 1
        self.opened += 1
        return conn

    def _close_one_idle_elsewhere(self, agent_id: str) -> None:
        for other, queue in self._idle.items():
            if other != agent_id and queue:
                queue.popleft().close()
                self.closed_count += 1
                return

    def release(self, conn: AgentConnection, *, broken: bool = False) -> None:
        """Return a connection; a broken one (timed out, protocol error) is closed instead."""
        self._in_use.discard(conn)
        if broken or conn.closed or self.draining:
            conn.close()
            self.closed_count += 1
        else:
            conn.last_used = time.monotonic()
            self._idle.setdefault(conn.agent_id, deque()).append(conn)
        self._waiters.wake_one()

    async def prewarm(self, agent_ids: list[str]) -> None:
        """Open `minConnections`, spread over the agents, before the server says it is ready."""
        if not agent_ids:
            return
        want = min(self.min_connections, self.max_connections) - self.total
        conns = await asyncio.gather(*(self._open(agent_ids[i % len(agent_ids)]) for i in range(max(want, 0))))
        for conn in conns:
            self._idle.setdefault(conn.agent_id, deque()).append(conn)

    def forget_agent(self, agent_id: str) -> None:
        """Close an agent's idle connections (it died or is being removed)."""
        for conn in self._idle.pop(agent_id, deque()):
            conn.close()
            self.closed_count += 1
        self._waiters.wake_one()

    def idle_connections(self) -> list[AgentConnection]:
        return [c for q in self._idle.values() for c in q]

    def expire_idle(self, now: float) -> int:
        """Close connections idle past the timeout, oldest first, never going below the minimum."""
        expired = 0
        for queue in self._idle.values():
            while queue and self.total > self.min_connections and now - queue[0].last_used > self.idle_timeout_s:
                queue.popleft().close()
                expired += 1
        self.closed_count += expired
        return expired

    def discard_idle(self, conn: AgentConnection) -> None:
        queue = self._idle.get(conn.agent_id)
        if queue and conn in queue:
            queue.remove(conn)
        conn.close()
        self.closed_count += 1

    async def drain(self, deadline_s: float) -> None:
        """Take no new acquires, wait for connections in use (up to the deadline), close everything."""
        self.draining = True
        end = time.monotonic() + deadline_s
        while self._in_use and time.monotonic() < end:
            await asyncio.sleep(0.01)
        for conn in [*self.idle_connections(), *self._in_use]:
            conn.close()
        self._idle.clear()
        self._in_use.clear()

    def stats(self) -> PoolStats:
        waits = sorted(self._waits)
        return PoolStats(
            available=sum(len(q) for q in self._idle.values()),
            in_use=len(self._in_use),
            total=self.total,
            max_connections=self.max_connections,
            min_connections=self.min_connections,
            acquires=self.acquires,
            hits=self.hits,
            hit_rate=self.hits / self.acquires if self.acquires else None,
            average_wait_ms=self._wait_total / self.acquires * 1000 if self.acquires else None,
            p95_wait_ms=waits[int(len(waits) * 0.95) - 1 if len(waits) > 1 else 0] * 1000 if waits else None,
            timeouts=self.timeouts,
            opened=self.opened,
            closed=self.closed_count,
            draining=self.draining,
        )
