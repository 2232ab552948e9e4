"""The coordination tools: start and inspect the agent fleet, spawn agents, orchestrate tasks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from qe_appliance.config import AgentType
from qe_appliance.fleet.pipelines import PIPELINES
from qe_appliance.fleet.runtime import agent_summary
from qe_appliance.store.database import retrying
from qe_appliance.store.tasks import shared_tasks, visible_task
from qe_appliance.tools.base import Name, ToolContext, ToolError, ToolSpec, no_progress

if TYPE_CHECKING:
    from qe_appliance.fleet.orchestrator import Orchestrator
    from qe_appliance.fleet.runtime import Fleet
    from qe_appliance.store.interface import TaskBackend

FLEET_INIT = "qe_fleet_init"
FLEET_STATUS = "qe_fleet_status"
AGENT_SPAWN = "qe_agent_spawn"
TASK_ORCHESTRATE = "qe_task_orchestrate"

AgentLimit = Annotated[int, msgspec.Meta(ge=1, le=256)]


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
        msgspec.Meta(description="Cap on agents in the fleet, at most the configured fleet.maxAgents; omit for "
                     "the configured cap."),
    ] = None


class FleetStatusInput(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Report the fleet's agents, pool, balancer and tasks."""

    verbose: Annotated[
        bool, msgspec.Meta(description="Include per-agent latency history and finished subtask details.")
    ] = False
    task_id: Annotated[
        Name | None, msgspec.Meta(description="Report only this task (taskId from qe_task_orchestrate).")
    ] = None


class AgentSpawnInput(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Start one more agent process of the given type."""

    type: Annotated[AgentType, msgspec.Meta(description="Kind of work the agent serves.")]
    capacity: Annotated[
        Annotated[int, msgspec.Meta(ge=1, le=64)] | None,
        msgspec.Meta(description="Requests the agent runs at once; omit for the type's default."),
    ] = None


class TaskSpec(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """What to run once per item of `inputs`: one tool, or a named pipeline of tools."""

    inputs: Annotated[
        list[dict[str, Any]],
        msgspec.Meta(min_length=1, max_length=10_000, description="Arguments of each subtask, one per run."),
    ]
    tool: Annotated[Name | None, msgspec.Meta(description="A QE tool name, e.g. qe_coverage_analyze.")] = None
    pipeline: Annotated[
        Name | None,
        msgspec.Meta(
            description="A named pipeline instead of a tool: "
            + "; ".join(f"{name}: {text}" for name, (text, _) in PIPELINES.items())
        ),
    ] = None


class TaskOrchestrateInput(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Submit work to the fleet; it is accepted at once with a taskId whose progress qe_fleet_status shows."""

    task: Annotated[
        TaskSpec,
        msgspec.Meta(description="{tool | pipeline, inputs}: what to run once per item of inputs."),
    ]
    strategy: Annotated[
        Literal["parallel", "sequential", "adaptive"],
        msgspec.Meta(description="Run subtasks all at once, one after another, or as wide as the fleet serving them."),
    ] = "adaptive"
    priority: Annotated[
        Literal["low", "normal", "high", "critical"],
        msgspec.Meta(description="Subtasks of higher-priority tasks start first when the fleet is busy."),
    ] = "normal"
    max_agents: Annotated[
        AgentLimit | None, msgspec.Meta(description="Most subtasks of this task running at once.")
    ] = None
    wait: Annotated[
        bool,
        msgspec.Meta(
            description="Return when every subtask is done (with results and progress notifications) "
            "instead of at once with the taskId."
        ),
    ] = False


def _fleet(ctx: ToolContext) -> Fleet:
    fleet = ctx.services.fleet
    if fleet is None:
        raise ToolError("the agent fleet is not running in this server")
    return fleet


async def fleet_init(ctx: ToolContext, args: FleetInitInput) -> dict[str, Any]:
    fleet = _fleet(ctx)
    if args.max_agents is not None:
        # A caller may lower the cap, never raise it past what the operator configured.
        configured = fleet.config.fleet.max_agents
        if args.max_agents > configured:
            raise ToolError(
                f"maxAgents {args.max_agents} is above this server's cap (fleet.maxAgents = {configured}); ask for "
                f"at most {configured}, or have the operator raise fleet.maxAgents in the configuration"
            )
        fleet.max_agents = args.max_agents
    fleet.topology = args.topology
    started = await fleet.ensure({str(kind): n for kind, n in args.agents.items()})
    return {
        "fleetId": fleet.fleet_id,
        "topology": fleet.topology,
        "maxAgents": fleet.max_agents,
        "started": [a.id for a in started],
        "agents": fleet.status().agents,
    }


async def fleet_status(ctx: ToolContext, args: FleetStatusInput) -> dict[str, Any]:
    store: TaskBackend = ctx.services.tasks
    if args.task_id is not None:
        task = await visible_task(store, args.task_id, ctx.caller.principal)
        if task is None:
            raise ToolError(f"no task {args.task_id!r}; taskIds come from qe_task_orchestrate")
        return {"task": task}
    status: dict[str, Any] = msgspec.to_builtins(_fleet(ctx).status())
    if not args.verbose:
        status["agents"] = [agent_summary(a) for a in status["agents"]]
    recent = await retrying(store.recent, 20 if args.verbose else 5)
    status["tasks"] = shared_tasks(recent)
    instances = await fleet_view(ctx.services.orchestrator)
    if instances is not None:
        status["instances"] = instances
    return status


async def fleet_view(orchestrator: Orchestrator | None) -> list[dict[str, Any]] | None:
    """Every live instance's fleet on the shared store (PostgreSQL), this one marked `self`; None on SQLite."""
    if orchestrator is None or orchestrator.queue is None:
        return None
    instances = await orchestrator.queue.instances(orchestrator.stale_s)
    for entry in instances:
        entry["self"] = entry["instance"] == orchestrator.instance
    return instances


async def agents_everywhere(fleet: Fleet, orchestrator: Orchestrator | None) -> list[dict[str, Any]]:
    """`balance agents`: this fleet's agents; on a shared store, then every other live instance's, each row
    labelled with its instance."""
    agents = fleet.status().agents
    view = await fleet_view(orchestrator)
    if view is None or orchestrator is None:
        return agents
    rows = [{"instance": orchestrator.instance, **agent} for agent in agents]
    for entry in view:
        if not entry["self"]:
            rows += [{"instance": entry["instance"], **agent} for agent in entry["agents"]]
    return rows


async def agent_spawn(ctx: ToolContext, args: AgentSpawnInput) -> dict[str, Any]:
    agent = await _fleet(ctx).spawn(args.type, args.capacity)
    return agent.describe()


async def task_orchestrate(ctx: ToolContext, args: TaskOrchestrateInput) -> dict[str, Any]:
    spec = args.task
    if (spec.tool is None) == (spec.pipeline is None):
        raise ToolError("task needs exactly one of `tool` (a tool name) or `pipeline` (a pipeline name)")
    if spec.pipeline is not None:
        if spec.pipeline not in PIPELINES:
            raise ToolError(f"unknown pipeline {spec.pipeline!r}; known: {', '.join(PIPELINES)}")
        kind = spec.pipeline
    else:
        assert spec.tool is not None
        if spec.tool == TASK_ORCHESTRATE:
            raise ToolError("a task cannot orchestrate qe_task_orchestrate itself")
        kind = spec.tool
    orchestrator = ctx.services.orchestrator
    if orchestrator is None:
        raise ToolError("the agent fleet is not running in this server")
    task_id, done = await orchestrator.submit(
        kind,
        spec.inputs,
        strategy=args.strategy,
        priority=args.priority,
        max_agents=args.max_agents,
        progress=ctx.progress if args.wait else no_progress,
        caller=ctx.caller,
        wait=args.wait,
    )
    if args.wait:
        await done
        return {"taskId": task_id, "task": await retrying(ctx.services.tasks.get, task_id)}
    await ctx.progress(0, len(spec.inputs), f"accepted {len(spec.inputs)} subtasks")
    return {"taskId": task_id, "status": "running", "subtasks": len(spec.inputs)}


TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        name=FLEET_INIT,
        title="Start agent fleet",
        description=(
            "Start QE agent worker processes (test-generator, coverage-analyzer, quality-analyzer, "
            "generalist) until each type has the count asked for, and return the fleet id and its agents. "
            "Idempotent: agents already running count. The topology is recorded and reported; agents are "
            "always coordinated through this server."
        ),
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
        input_type=TaskOrchestrateInput,
        handler=task_orchestrate,
        task_support="optional",
    ),
)
