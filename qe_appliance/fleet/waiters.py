"""Waiting for capacity without polling: callers queue in order and each release wakes one of them."""

from __future__ import annotations

import asyncio
from collections import deque


class WaitQueue:
    """A condition without a lock, for the event loop's single thread (pool acquires, fleet picks)."""

    def __init__(self) -> None:
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def wait(self, timeout_s: float) -> None:
        """Return when woken or after `timeout_s`; either way the caller checks again for what it wants."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError:
            pass
        finally:
            if not waiter.done():
                waiter.cancel()

    def wake_one(self) -> None:
        """Wake the longest waiting caller that is still waiting."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def wake_all(self) -> None:
        """Wake every waiting caller (what they wait for changed for all of them)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
