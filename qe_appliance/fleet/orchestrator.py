"""Orchestrated tasks: a tool (or a pipeline of tools) run once per input, spread over the fleet.

Subtasks of every task wait in one priority queue and start while the fleet has free capacity, so a
critical task overtakes a low one. Each task also limits its own concurrency (sequential: one at a time;
parallel: all, up to maxAgents; adaptive: as many as the agents that serve it). Every outcome is written to
the task store as it happens.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from qe_appliance.fleet.pipelines import Step
from qe_appliance.sandbox import UNAUTHENTICATED_HTTP, Caller
from qe_appliance.store.database import StoreError, retrying
from qe_appliance.store.interface import TaskBackend
from qe_appliance.tools.base import ProgressFn, ToolError, ToolSpec, no_progress
from qe_appliance.tools.runner import ToolRunner
from qe_appliance.uris import task_uri

log = logging.getLogger("aqe_mcp.orchestrator")

PRIORITIES = {"critical": 0, "high": 1, "normal": 2, "low": 3}

_decode = msgspec.json.Decoder().decode


@dataclass
class _Task:
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
    context: contextvars.Context = field(default_factory=contextvars.copy_context)
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Orchestrator:
    def __init__(
        self,
        store: TaskBackend,
        tools: Callable[[], dict[str, ToolSpec]],
        runner: ToolRunner,
        capacity: Callable[[str], int],
    ) -> None:
        self.store = store
        self._tools = tools
        self._runner = runner
        # How many subtasks the fleet can take at once for a category (its available agents' capacity).
        self._capacity = capacity
        self._queue: list[tuple[int, int, _Task, int]] = []
        self._seq = itertools.count()
        self._running = 0
        self._active: set[asyncio.Task[None]] = set()

    async def submit(
        self,
        kind: str,
        steps: Sequence[Step],
        inputs: list[dict[str, Any]],
        *,
        strategy: str,
        priority: str,
        max_agents: int | None,
        progress: ProgressFn = no_progress,
        caller: Caller = UNAUTHENTICATED_HTTP,
    ) -> tuple[str, asyncio.Future[None]]:
        """Record the task and start it; returns its id and a future that completes with it."""
        tools = self._tools()
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
        if max_agents is not None:
            limit = min(limit, max_agents)
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
        for job in list(self._active):
            job.cancel()
