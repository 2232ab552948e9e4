"""Orchestrated tasks: a tool (or a pipeline of tools) run once per input, spread over the fleet.

Subtasks of every task wait in one priority queue and start while the fleet has free capacity, so a
critical task overtakes a low one. Each task also limits its own concurrency (sequential: one at a time;
parallel: all, up to maxAgents; adaptive: as many as the agents that serve it). Every outcome is written to
the task store as it happens.

On one machine (SQLite) that queue is in this process. With PostgreSQL it is in the database
(store/pgqueue.py): every instance takes subtasks while its fleet has room, holds them under a lease it
renews every heartbeat, and a subtask whose instance died runs again elsewhere once its lease ran out. The
instance a caller submitted through waits for the task in the database (notified, or polling each
heartbeat) and sends that caller its progress. Adaptive tasks then are as wide as all instances' fleets.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import logging
import os
import socket
import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from qe_appliance.config import FleetConfig
from qe_appliance.fleet.pipelines import Step, steps_of
from qe_appliance.sandbox import UNAUTHENTICATED_HTTP, Caller
from qe_appliance.store.database import StoreError, StoreUnavailableError, retrying
from qe_appliance.store.interface import TaskBackend
from qe_appliance.tools.base import ProgressFn, ToolError, ToolSpec, no_progress
from qe_appliance.tools.runner import ToolRunner
from qe_appliance.uris import task_uri

if TYPE_CHECKING:  # asyncpg, which the queue imports, is loaded only with a PostgreSQL store
    from qe_appliance.store.pgqueue import Claim, PgTaskQueue

log = logging.getLogger("aqe_mcp.orchestrator")

PRIORITIES = {"critical": 0, "high": 1, "normal": 2, "low": 3}

_decode = msgspec.json.Decoder().decode


class _Task(msgspec.Struct):
    id: str
    category: str
    steps: Sequence[Step]
    inputs: list[dict[str, Any]]
    priority: int
    limit: int
    progress: ProgressFn
    caller: Caller
    next_index: int = 0
    queued: int = 0
    finished: int = 0
    # The submitting call's context (its trace span, when tracing is on): each subtask runs in a copy of it,
    # whichever call's moment the queue happens to start it in.
    context: contextvars.Context = msgspec.field(default_factory=contextvars.copy_context)
    done: asyncio.Future[None] = msgspec.field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Orchestrator:
    def __init__(
        self,
        store: TaskBackend,
        tools: Callable[[], dict[str, ToolSpec]],
        runner: ToolRunner,
        capacity: Callable[[str], int],
        queue: PgTaskQueue | None = None,
    ) -> None:
        self.store = store
        self.queue = queue
        self._tools = tools
        self._runner = runner
        # How many subtasks the fleet can take at once for a category (its available agents' capacity).
        self._capacity = capacity
        self._queue: list[tuple[int, int, _Task, int]] = []
        self._seq = itertools.count()
        self._running = 0
        self._active: set[asyncio.Task[None]] = set()
        # The shared queue (PostgreSQL): who this instance is there, and the tasks its callers wait for.
        self.instance = f"{socket.gethostname()}:{os.getpid()}"
        self.address: str | None = None
        self._lease_s = self._heartbeat_s = self.stale_s = 1.0
        self._report: Callable[[], dict[str, Any]] = dict
        self._draining: Callable[[], bool] = lambda: False
        self._wake = asyncio.Event()
        self._watched: dict[str, asyncio.Event] = {}
        self._loops: list[asyncio.Task[None]] = []

    async def submit(
        self,
        kind: str,
        inputs: list[dict[str, Any]],
        *,
        strategy: str,
        priority: str,
        max_agents: int | None,
        progress: ProgressFn = no_progress,
        caller: Caller = UNAUTHENTICATED_HTTP,
        wait: bool = True,
    ) -> tuple[str, asyncio.Future[None]]:
        """Record the task and start it; returns its id and a future that completes with it (with the shared
        queue, only when the caller will `wait` for it: the task is then followed in the database)."""
        tools = self._tools()
        steps = steps_of(kind)
        for name, _ in steps:
            if name not in tools:
                raise ToolError(f"unknown or disabled tool {name!r}; see tools/list for the available ones")
        category = tools[steps[0][0]].category
        if strategy == "sequential":
            limit = 1
        elif strategy == "parallel":
            limit = len(inputs)
        else:  # adaptive: as wide as the fleet that serves it, at least one
            limit = max(1, self._capacity(category))
        if self.queue is not None and strategy == "adaptive":
            limit = len(inputs)  # each instance takes what its own fleet has room for
        if max_agents is not None:
            limit = min(limit, max_agents)
        if self.queue is not None:
            task_id = await self.queue.enqueue(
                kind, strategy, priority, PRIORITIES[priority], category, limit,
                (caller.transport, caller.authenticated), inputs, (socket.gethostname(), os.getpid()),
            )
            self._wake.set()
            if not wait:
                return task_id, asyncio.get_running_loop().create_future()
            return task_id, self._follow(task_id, len(inputs), progress)
        task_id = await retrying(self.store.create, kind, strategy, priority, inputs)
        self._runner.services.changes.changed(task_uri(task_id), new=True)
        task = _Task(task_id, category, steps, inputs, PRIORITIES[priority], limit, progress, caller)
        self._fill(task)
        self._dispatch()
        return task_id, task.done

    def _fill(self, task: _Task) -> None:
        while task.queued < task.limit and task.next_index < len(task.inputs):
            heapq.heappush(self._queue, (task.priority, next(self._seq), task, task.next_index))
            task.next_index += 1
            task.queued += 1

    def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            _, _, task, index = self._queue[0]
            # Local tools (no fleet capacity) still run a few at a time.
            if self._running >= max(self._capacity(task.category), 2):
                return
            heapq.heappop(self._queue)
            self._running += 1
            job = loop.create_task(self._run(task, index), context=task.context.copy())
            self._active.add(job)
            job.add_done_callback(self._active.discard)

    async def _run(self, task: _Task, index: int) -> None:
        result: bytes | None = None
        error: str | None = None
        try:
            await retrying(self.store.started, task.id, index)
            result = await self._pipeline(task.steps, task.inputs[index], task.caller)
        except ToolError as exc:
            error = str(exc)
        except asyncio.CancelledError:
            error = "cancelled: the server is stopping"
            raise
        except Exception as exc:
            log.exception("subtask %s/%d failed", task.id, index)
            error = f"{type(exc).__name__}: {exc}"
        finally:
            try:
                await retrying(self.store.finished, task.id, index, result, error)
            except (StoreError, sqlite3.Error) as exc:
                log.error("subtask %s/%d: its outcome could not be recorded: %s", task.id, index, exc)
            else:
                self._runner.services.changes.changed(task_uri(task.id))
            self._running -= 1
            task.queued -= 1
            task.finished += 1
            if task.finished == len(task.inputs) and not task.done.done():
                task.done.set_result(None)
            else:
                self._fill(task)
            self._dispatch()
        await task.progress(task.finished, len(task.inputs), f"{task.finished}/{len(task.inputs)} subtasks done")

    async def _pipeline(self, steps: Sequence[Step], item: dict[str, Any], caller: Caller) -> bytes:
        """Run the steps in order; returns the last step's result as JSON."""
        results: list[Any] = []
        encoded = b"null"
        tools = self._tools()
        for name, build in steps:
            tool = tools.get(name)
            if tool is None:
                raise ToolError(f"tool {name} was disabled while the task ran")
            # The same path as a direct tools/call: decoding, metrics, errors in the same words.
            outcome = await self._runner.call(tool, build(item, results), caller=caller)
            if outcome.value is None:
                raise ToolError(outcome.message)
            encoded = outcome.value
            results.append(_decode(encoded))
        return encoded

    def cancel_all(self) -> None:
        for job in [*self._active, *self._loops]:
            job.cancel()

    # ---- the shared queue (PostgreSQL) ------------------------------------------------------------------

    def start(
        self,
        config: FleetConfig,
        address: str | None,
        report: Callable[[], dict[str, Any]],
        draining: Callable[[], bool],
    ) -> None:
        """Take part in the shared queue: claim (unless `draining()`), renew leases and report this fleet every
        heartbeat."""
        if self.queue is None:
            return
        self.reconfigure(config)
        self.address = address
        self._draining = draining
        if address is not None:
            self.instance += ":" + address.rsplit(":", 1)[-1]
        self._report = report
        self.queue.on_queue = self._wake.set
        self.queue.on_task = self._task_changed
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self._claim_loop()), loop.create_task(self._heartbeat_loop())]

    def reconfigure(self, config: FleetConfig) -> None:
        self._lease_s = config.lease_ms / 1000
        self._heartbeat_s = config.heartbeat_ms / 1000
        self.stale_s = self._heartbeat_s * config.stale_after_heartbeats

    async def stop(self) -> None:
        """Stop taking work; hand back the subtasks still running here so other instances take them now."""
        if self.queue is None or not self._loops:
            return
        jobs = [*self._loops, *self._active]
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        self._loops.clear()
        try:
            released = await self.queue.release(self.instance)
            await self.queue.leave(self.instance)
        except StoreError as exc:
            log.warning("could not hand back this instance's subtasks (%s); they run elsewhere once their "
                        "leases run out", exc)
            return
        if released:
            log.info("handed back %d running subtask(s) to the queue", released)

    async def _claim_loop(self) -> None:
        assert self.queue is not None
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self._heartbeat_s)
            except TimeoutError:
                pass  # a poll: leases that ran out are found this way
            self._wake.clear()
            # Draining: no new work, except what this instance's own callers wait for (their calls are in flight).
            only = list(self._watched) if self._draining() else None
            if only == []:
                continue
            try:
                claims = await self.queue.claim(self.instance, self._room, self._lease_s, only)
            except StoreUnavailableError:
                continue  # the outage is logged once, where it is noticed; polling resumes with the server
            except StoreError as exc:
                log.warning("cannot take subtasks from the queue: %s", exc)
                continue
            loop = asyncio.get_running_loop()
            for claim in claims:
                self._running += 1
                job = loop.create_task(self._run_claim(claim))
                self._active.add(job)
                job.add_done_callback(self._active.discard)

    def _room(self, category: str) -> int:
        # The fleet's room for the category; tools that run in the server (no agents serve them) two at a time.
        return (self._capacity(category) or 2) - self._running

    async def _heartbeat_loop(self) -> None:
        assert self.queue is not None
        while True:
            try:
                await self.queue.renew(self.instance, self._lease_s)
                await self.queue.heartbeat(self.instance, self.address, self._report())
            except StoreUnavailableError:
                pass  # logged once where noticed; leases held past leaseMs of outage run again elsewhere
            except StoreError as exc:
                log.warning("cannot renew this instance's leases (%s); its subtasks may run again elsewhere", exc)
            self._wake.set()
            await asyncio.sleep(self._heartbeat_s)

    async def _run_claim(self, claim: Claim) -> None:
        assert self.queue is not None
        result: bytes | None = None
        error: str | None = None
        caller = Caller(claim.caller_transport, claim.caller_authenticated)
        try:
            try:
                result = await self._pipeline(steps_of(claim.kind), _decode(claim.input), caller)
            except ToolError as exc:
                error = str(exc)
            except asyncio.CancelledError:
                raise  # stopping: stop() hands the subtask back
            except Exception as exc:
                log.exception("subtask %s/%d failed", claim.task_id, claim.index)
                error = f"{type(exc).__name__}: {exc}"
            try:
                if not await self.queue.finish(claim, self.instance, result, error):
                    log.info("subtask %s/%d was taken over by another instance (its lease ran out); this "
                             "outcome is dropped", claim.task_id, claim.index)
            except StoreError as exc:
                log.error("subtask %s/%d: its outcome could not be recorded: %s", claim.task_id, claim.index, exc)
        finally:
            self._running -= 1
            self._wake.set()

    def _task_changed(self, task_id: str) -> None:
        event = self._watched.get(task_id)
        if event is not None:
            event.set()

    def _follow(self, task_id: str, total: int, progress: ProgressFn) -> asyncio.Future[None]:
        """A future done when the task is, wherever its subtasks run; progress is sent as they finish."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        changed = self._watched[task_id] = asyncio.Event()

        async def follow() -> None:
            seen = 0
            try:
                while True:
                    try:
                        await asyncio.wait_for(changed.wait(), self._heartbeat_s)
                    except TimeoutError:
                        pass
                    changed.clear()
                    try:
                        task = await retrying(self.store.get, task_id, subtasks=False)
                    except StoreError:
                        continue
                    assert task is not None
                    finished = task["completed"] + task["failed"]
                    if finished > seen:
                        seen = finished
                        await progress(finished, total, f"{finished}/{total} subtasks done")
                    if task["status"] != "running":
                        done.set_result(None)
                        return
            finally:
                self._watched.pop(task_id, None)
                if not done.done():
                    done.cancel()

        job = asyncio.get_running_loop().create_task(follow())
        self._active.add(job)
        job.add_done_callback(self._active.discard)
        return done
