"""The contract every QE tool follows: one input Struct, one async handler, and its metadata.

The runner (tools/runner.py) decodes `arguments` straight into `input_type` (msgspec), calls `handler`, and
encodes what it returns as `structuredContent` (plus the same JSON as text). A `ToolError` becomes a normal
result with `isError: true` whose text is the error's message.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from qe_appliance.config import TOOL_DEFAULTS, Execution
from qe_appliance.fleet.compute import ComputeFn
from qe_appliance.sandbox import IN_PROCESS, UNAUTHENTICATED_HTTP, Caller

if TYPE_CHECKING:
    from qe_appliance.services import Services

# Names the server made (reportId, taskId) or keeps in its configuration: short, so errors can quote them.
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]

# Whether a call may run as an MCP task (`execution.taskSupport` in tools/list): "optional" for tools whose calls
# can outlast a client's patience, which then also accept `background: true`.
TaskSupport = Literal["forbidden", "optional"]
BACKGROUND = "background"
BACKGROUND_PROPERTY: dict[str, Any] = {
    "type": "boolean",
    "default": False,
    "description": "Return at once with a taskId and the task's resource (aqe://tasks/ then the taskId) instead "
    "of waiting; poll qe_fleet_status with that taskId until it is completed or failed. For clients without MCP "
    "tasks.",
}
# What a `background: true` call returns at once (the tool's outputSchema admits it beside its own result).
BACKGROUND_RESULT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "taskId": {"type": "string"},
        "status": {"type": "string", "enum": ["working", "input_required", "completed", "failed", "cancelled"]},
        "resource": {"type": "string", "description": "The task as a resource: aqe://tasks/ then the taskId."},
        "poll": {"type": "string", "description": "How to follow the task."},
    },
    "required": ["taskId", "status", "resource", "poll"],
}

ProgressFn = Callable[[float, float | None, str | None], Awaitable[None]]
LogFn = Callable[[str, str], Awaitable[None]]
# Runs a tool's CPU-heavy step (a registered `@compute` function) on its payload.
Offload = Callable[[ComputeFn, Any], Awaitable[Any]]


class ToolError(Exception):
    """A failure the caller can fix (bad input, missing data); reported as `isError: true`."""


class ToolFault(ToolError):
    """A failure on the server's side (a timeout, a crashed or saturated fleet): reported to the caller as
    `isError: true` like a ToolError, but counted as a server error."""


async def in_thread(fn: ComputeFn, payload: Any) -> Any:
    """A heavy step in a worker thread of this process (no fleet, or the fleet switched off)."""
    return await asyncio.to_thread(fn, payload)


@dataclass(slots=True)
class ToolContext:
    """What a handler may use while it runs.

    `services` is the appliance's shared state (stores, fleet, ...); `progress(progress, total, message)`
    sends `notifications/progress` when the caller asked for it (a no-op otherwise); `log(level, text)`
    sends `notifications/message` at or above the caller's log level.
    """

    services: Services
    progress: ProgressFn
    log: LogFn
    tool_name: str = ""
    # Who asked (transport, authenticated): decides whether the call may run the caller's code.
    caller: Caller = UNAUTHENTICATED_HTTP
    # Where `compute` runs a heavy step; the runner binds it to the tool's execution (fleet or thread).
    offload: Offload = in_thread

    async def compute(self, fn: ComputeFn, payload: Any) -> Any:
        """Run a `@compute` function (qe_appliance.fleet.compute) for this tool.

        On an agent of the fleet when the tool's `execution` is `fleet`, else in a worker thread; either
        way the event loop stays free. `payload` and the result must be msgpack-able (dicts, lists, str,
        bytes, numbers). A ToolError raised by `fn` reaches the caller as a ToolError.
        """
        return await self.offload(fn, payload)


async def no_progress(progress: float, total: float | None = None, message: str | None = None) -> None:
    return None


async def no_log(level: str, text: str) -> None:
    return None


def bare_context(services: Services, tool_name: str = "") -> ToolContext:
    """A context with no progress or log channel (stdio tests, CLI, unit tests)."""
    return ToolContext(services=services, progress=no_progress, log=no_log, tool_name=tool_name, caller=IN_PROCESS)


ToolHandler = Callable[[ToolContext, Any], Awaitable[Any]]


@dataclass(frozen=True)
class ToolSpec:
    """One tool: its wire metadata and the handler that does the work."""

    name: str
    title: str
    description: str
    input_type: type[msgspec.Struct]
    handler: ToolHandler
    output_type: Any = None
    # The design's tool table (config.TOOL_DEFAULTS) names each QE tool's category; a tool outside it says its own.
    category: str = ""
    # Where its heavy steps run and how long a call may take (tools.<name>.execution / timeoutMs).
    execution: Execution = "local"
    timeout_s: float = 60.0
    read_only: bool = False
    destructive: bool = False
    idempotent: bool = False
    open_world: bool = False
    # The tools.<name>.modes entry a call belongs to, for tools whose slow kinds of call are not a boolean
    # argument of the mode's name (the default rule); a name the config does not define counts as none.
    latency_mode: Callable[[Any], str] | None = None
    task_support: TaskSupport = "forbidden"

    def __post_init__(self) -> None:
        if not self.category:
            if self.name not in TOOL_DEFAULTS:
                raise ValueError(f"tool {self.name} needs a category: it is not in config.TOOL_DEFAULTS")
            object.__setattr__(self, "category", TOOL_DEFAULTS[self.name].category)

    # The schemas are made on first use, not at import: that is a third of the tool modules' import time,
    # paid by every start while the agents never need them.
    @functools.cached_property
    def input_schema(self) -> dict[str, Any]:
        schema = object_schema(self.input_type)
        if self.task_support == "optional":
            schema["properties"] = {**schema.get("properties", {}), BACKGROUND: BACKGROUND_PROPERTY}
        return schema

    @functools.cached_property
    def output_schema(self) -> dict[str, Any] | None:
        out = object_schema(self.output_type) if self.output_type is not None else None
        if out is not None and self.task_support == "optional":
            defs = out.pop("$defs", None)
            out = {"type": "object", "anyOf": [out, BACKGROUND_RESULT_SCHEMA]}
            if defs:
                out["$defs"] = defs
        return out

    def wire(self) -> dict[str, Any]:
        """The tool as `tools/list` describes it."""
        tool: dict[str, Any] = {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "inputSchema": self.input_schema,
            "annotations": {
                "title": self.title,
                "readOnlyHint": self.read_only,
                "destructiveHint": self.destructive,
                "idempotentHint": self.idempotent,
                "openWorldHint": self.open_world,
            },
            "execution": {"taskSupport": self.task_support},
            "_meta": {"io.aqe/category": self.category},
        }
        if self.output_schema is not None:
            tool["outputSchema"] = self.output_schema
        return tool


def object_schema(tp: Any) -> dict[str, Any]:
    """JSON Schema (2020-12) of a Struct type, with the top level inlined as an object schema.

    msgspec emits `{"$ref": ..., "$defs": {...}}`; MCP wants the object itself at the top, so the
    referenced definition is lifted up and the remaining definitions stay under `$defs`.
    """
    (ref,), components = msgspec.json.schema_components([tp], ref_template="#/$defs/{name}")
    name = ref["$ref"].rsplit("/", 1)[-1] if "$ref" in ref else None
    top = dict(components.pop(name)) if name else dict(ref)
    if components:
        top["$defs"] = components
    top.setdefault("type", "object")
    return top


def invalid_arguments(tool: str, exc: msgspec.ValidationError) -> str:
    """msgspec's validation message in the caller's terms: argument names, not `$.path` notation."""
    text = str(exc)
    text = re.sub(r" - at `\$\.?([^`]*)`", lambda m: f" (argument `{m.group(1) or '(root)'}`)", text)
    text = text.replace("Object missing required field", "missing required argument")
    text = text.replace("Object contains unknown field", "unknown argument")
    return f"invalid arguments for {tool}: {text}. See the tool's inputSchema in tools/list."
