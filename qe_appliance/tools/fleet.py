"""The coordination tools: start and inspect the agent fleet, spawn agents, orchestrate tasks (issue 3)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, NoReturn

import msgspec

from qe_appliance.tools.base import NotAvailable, ToolContext, ToolSpec

CATEGORY = "coordination"
FLEET_INIT = "qe_fleet_init"
FLEET_STATUS = "qe_fleet_status"
AGENT_SPAWN = "qe_agent_spawn"
TASK_ORCHESTRATE = "qe_task_orchestrate"

AgentType = Literal["test-generator", "coverage-analyzer", "quality-analyzer", "generalist"]
AgentLimit = Annotated[int, msgspec.Meta(ge=1, le=256)]
Text = Annotated[str, msgspec.Meta(min_length=1)]


class FleetInitInput(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Start the agent fleet; calling it again with the same arguments returns the running fleet."""

    agents: Annotated[
        dict[AgentType, Annotated[int, msgspec.Meta(ge=0, le=256)]],
        msgspec.Meta(
            min_length=1,
            description='How many agents of each type to start, e.g. {"test-generator": 2, "generalist": 1}.',
        ),
    ]
    topology: Annotated[
        Literal["hierarchical", "mesh", "ring", "adaptive"],
        msgspec.Meta(description="How agents coordinate."),
    ] = "hierarchical"
    max_agents: Annotated[
        AgentLimit | None,
        msgspec.Meta(description="Cap on agents in the fleet; omit for the configured cap."),
    ] = None


class FleetStatusInput(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Report the fleet's agents, pool, balancer and tasks."""

    verbose: Annotated[
        bool, msgspec.Meta(description="Include per-agent latency history and finished subtask details.")
    ] = False
    task_id: Annotated[
        Text | None, msgspec.Meta(description="Report only this task (taskId from qe_task_orchestrate).")
    ] = None


class AgentSpawnInput(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Start one more agent process of the given type."""

    type: Annotated[AgentType, msgspec.Meta(description="Kind of work the agent serves.")]
    capacity: Annotated[
        Annotated[int, msgspec.Meta(ge=1, le=64)] | None,
        msgspec.Meta(description="Requests the agent runs at once; omit for the type's default."),
    ] = None


class ToolTask(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Run one tool once per item of `inputs`, spread over the fleet."""

    tool: Annotated[Text, msgspec.Meta(description="A QE tool name, e.g. qe_coverage_gaps.")]
    inputs: Annotated[
        list[dict[str, Any]],
        msgspec.Meta(min_length=1, max_length=10_000, description="Arguments of each subtask, one per run."),
    ]


class TaskOrchestrateInput(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Submit work to the fleet; it is accepted at once with a taskId whose progress qe_fleet_status shows."""

    task: Annotated[
        ToolTask | Text,
        msgspec.Meta(
            description="Either {tool, inputs} or the name of a configured pipeline "
            "(e.g. coverage analyze, then gaps, then gate).",
        ),
    ]
    strategy: Annotated[
        Literal["parallel", "sequential", "adaptive"],
        msgspec.Meta(description="Run subtasks all at once, one after another, or as the fleet allows."),
    ] = "adaptive"
    priority: Annotated[
        Literal["low", "normal", "high", "critical"], msgspec.Meta(description="Queue priority.")
    ] = "normal"
    max_agents: Annotated[
        AgentLimit | None, msgspec.Meta(description="Most agents this task may occupy at once.")
    ] = None


async def fleet_init(ctx: ToolContext, args: FleetInitInput) -> NoReturn:
    raise NotAvailable(FLEET_INIT)


async def fleet_status(ctx: ToolContext, args: FleetStatusInput) -> NoReturn:
    raise NotAvailable(FLEET_STATUS)


async def agent_spawn(ctx: ToolContext, args: AgentSpawnInput) -> NoReturn:
    raise NotAvailable(AGENT_SPAWN)


async def task_orchestrate(ctx: ToolContext, args: TaskOrchestrateInput) -> NoReturn:
    raise NotAvailable(TASK_ORCHESTRATE)


TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        name=FLEET_INIT,
        title="Start agent fleet",
        description=(
            "Start QE agent worker processes (test-generator, coverage-analyzer, quality-analyzer, "
            "generalist) in a topology and return the fleet id and its agents. Idempotent: a running fleet "
            "with the same shape is returned as is."
        ),
        category=CATEGORY,
        input_type=FleetInitInput,
        handler=fleet_init,
        idempotent=True,
    ),
    ToolSpec(
        name=FLEET_STATUS,
        title="Fleet status",
        description=(
            "Show the agents (type, status, in-flight requests, latency, completed and failed counts), the "
            "connection pool, the load balancer's strategy and stats, and running and recent tasks with "
            "their per-subtask results."
        ),
        category=CATEGORY,
        input_type=FleetStatusInput,
        handler=fleet_status,
        read_only=True,
        idempotent=True,
    ),
    ToolSpec(
        name=AGENT_SPAWN,
        title="Spawn agent",
        description=(
            "Start one more agent process of a type and register it with the load balancer. Refused when "
            "the fleet is at maxAgents."
        ),
        category=CATEGORY,
        input_type=AgentSpawnInput,
        handler=agent_spawn,
    ),
    ToolSpec(
        name=TASK_ORCHESTRATE,
        title="Orchestrate task",
        description=(
            "Run a tool over many inputs, or a named pipeline, across the agent fleet (parallel, sequential "
            "or adaptive). Returns a taskId at once; progress notifications follow when requested, and "
            "results per subtask are kept and shown by qe_fleet_status."
        ),
        category=CATEGORY,
        input_type=TaskOrchestrateInput,
        handler=task_orchestrate,
    ),
)
