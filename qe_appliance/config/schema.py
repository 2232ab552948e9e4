"""The configuration's schema: frozen msgspec Structs mirroring `config/qe-mcp.yaml`, their limits declared once
in the types, and the named sets (categories, strategies, agent types, the design's tool table) built on them.
"""

import ipaddress
from typing import Annotated, Final, Literal, get_args

import msgspec

from qe_appliance.quality.gate import GatePolicy

LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1"})

Category = Literal[
    "test-generation", "coverage-analysis", "quality-assessment", "coordination", "memory", "learning"
]
CATEGORIES: Final[tuple[str, ...]] = get_args(Category)
Strategy = Literal["least-connections", "response-time", "round-robin"]
STRATEGIES: Final[tuple[str, ...]] = get_args(Strategy)
Execution = Literal["local", "fleet"]
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]

Millis = Annotated[int, msgspec.Meta(gt=0)]
LatencyMs = Annotated[float, msgspec.Meta(gt=0)]
Ratio = Annotated[float, msgspec.Meta(ge=0, le=1)]
AtLeastOne = Annotated[int, msgspec.Meta(ge=1)]


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="camel", kw_only=True):
    """Shared options: immutable (so a reload can diff old and new), camelCase keys, no stray keys."""


class AuthConfig(_Section, frozen=True):
    tokens_file: str = ""
    tokens_env: str = ""
    protect_metrics: bool = False
    allow_unauthenticated: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.tokens_file or self.tokens_env)


class RateLimitConfig(_Section, frozen=True):
    requests_per_second: Annotated[float, msgspec.Meta(ge=0)] = 1000.0
    burst: AtLeastOne = 2000


class ServerConfig(_Section, frozen=True):
    host: Annotated[str, msgspec.Meta(min_length=1)] = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8765
    allowed_origins: tuple[str, ...] = ()
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    rate_limit: RateLimitConfig = msgspec.field(default_factory=RateLimitConfig)
    max_connections: AtLeastOne = 1024
    max_body_bytes: AtLeastOne = 4_194_304
    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 65_536
    max_json_depth: Annotated[int, msgspec.Meta(ge=2, le=512)] = 64
    header_timeout_ms: Millis = 10_000
    keep_alive_timeout_ms: Millis = 30_000
    # After a drain begins, /readyz answers 503 while requests are still served for this long, so a proxy's
    # health checks take the instance out of rotation before its listener closes (0: close at once).
    drain_grace_ms: Annotated[int, msgspec.Meta(ge=0, le=600_000)] = 5_000
    # Proxies (addresses or CIDR networks) whose X-Forwarded-For names the client for rate limits and logs;
    # empty: the header is never trusted and the client is the peer address.
    trusted_proxies: tuple[str, ...] = ()
    max_sessions: AtLeastOne = 1024
    # Open subscriptions/listen streams (2026-07-28) held at once; more are refused with 503.
    max_subscriptions: AtLeastOne = 256
    session_idle_timeout_ms: Millis = 1_800_000
    state_dir: str = ""
    control_socket: str = ""
    stdio_control_socket: bool = False
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"
    workspace_roots: tuple[str, ...] = ()
    allow_code_execution: bool = True
    allow_unauthenticated_code_execution: bool = False
    max_input_file_bytes: AtLeastOne = 67_108_864
    # A tool result's text past this many bytes (~10k tokens) is sent as a summary plus resource links.
    max_result_text_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 32_768
    # HTTP server processes accepting on the one port (SO_REUSEPORT) under a supervisor; "auto": one per core.
    workers: Annotated[int, msgspec.Meta(ge=1, le=256)] | Literal["auto"] = 1


class PoolConfig(_Section, frozen=True):
    max_connections: AtLeastOne = 50
    min_connections: Annotated[int, msgspec.Meta(ge=0)] = 5
    idle_timeout_ms: Millis = 300_000
    health_check_interval_ms: Millis = 30_000


class RegistryConfig(_Section, frozen=True):
    cache_enabled: bool = True
    cache_size: Annotated[int, msgspec.Meta(ge=0)] = 1000
    index_type: Literal["hash"] = "hash"
    fuzzy_match_enabled: bool = True


class BalancerConfig(_Section, frozen=True):
    strategy: Strategy = "least-connections"
    health_check_interval_ms: Millis = 10_000
    capacity_aware: bool = True


class TargetsConfig(_Section, frozen=True):
    p95_response_time: LatencyMs = 100.0
    pool_hit_rate: Ratio = 0.9
    tool_lookup_time: LatencyMs = 5.0


class AlertThresholds(_Section, frozen=True):
    p95_response_time: LatencyMs = 200.0
    error_rate: Ratio = 0.05
    pool_hit_rate: Ratio = 0.7


class MonitoringConfig(_Section, frozen=True):
    enabled: bool = True
    dashboard_interval_ms: Millis = 1000
    alert_thresholds: AlertThresholds = msgspec.field(default_factory=AlertThresholds)


# The namespace memory tools use when the caller names none; memory.namespacePattern must accept it.
DEFAULT_NAMESPACE: Final = "default"


class MemoryConfig(_Section, frozen=True):
    max_value_bytes: AtLeastOne = 1_048_576
    max_key_length: AtLeastOne = 512
    namespace_pattern: Annotated[str, msgspec.Meta(min_length=1)] = "[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}"
    purge_interval_ms: Millis = 60_000


class StoreConfig(_Section, frozen=True):
    """Where the stores live: empty `url` = SQLite files in server.stateDir; `postgresql://user@host:port/db`
    = PostgreSQL, the password read from `passwordFile` or libpq's environment (PGPASSWORD, ~/.pgpass)."""

    url: str = ""
    password_file: str = ""


class LearningConfig(_Section, frozen=True):
    dedupe_threshold: Ratio = 0.9
    promotion_min_successes: AtLeastOne = 3
    promotion_min_success_rate: Ratio = 0.7
    promotion_min_confidence: Ratio = 0.6


class ToolModeConfig(_Section, frozen=True):
    target_latency_ms: LatencyMs


class ToolConfig(_Section, frozen=True):
    category: Category
    target_latency_ms: LatencyMs
    enabled: bool = True
    execution: Execution = "local"
    timeout_ms: Millis = 60_000
    # Calls with a boolean argument of this name set to true (`verify: true`) are a different kind of work:
    # their latency is judged against the mode's own target instead of target_latency_ms.
    modes: dict[Annotated[str, msgspec.Meta(pattern="^[a-z][A-Za-z0-9]*$")], ToolModeConfig] = msgspec.field(
        default_factory=dict
    )

    def target_ms(self, mode: str) -> float:
        """The latency target of calls in `mode` ("" for calls in no mode)."""
        return self.modes[mode].target_latency_ms if mode else self.target_latency_ms


AgentType = Literal["generalist", "test-generator", "coverage-analyzer", "quality-analyzer"]
# The tool categories each agent type serves.
AGENT_TYPES: Final[dict[str, frozenset[str]]] = {
    "generalist": frozenset(CATEGORIES),
    "test-generator": frozenset({"test-generation"}),
    "coverage-analyzer": frozenset({"coverage-analysis"}),
    "quality-analyzer": frozenset({"quality-assessment"}),
}
assert tuple(AGENT_TYPES) == get_args(AgentType), "every agent type says which categories it serves"


class FleetConfig(_Section, frozen=True):
    agents: dict[AgentType, Annotated[int, msgspec.Meta(ge=0)]] = msgspec.field(
        default_factory=lambda: {"generalist": 2}
    )
    max_agents: AtLeastOne = 8
    capacity: AtLeastOne = 1
    eject_after_failures: AtLeastOne = 5
    base_ejection_ms: Millis = 10_000
    restart_backoff_ms: Millis = 500
    runtime_dir: str = ""
    preload: tuple[str, ...] = ()
    # With store.url on PostgreSQL: how long an instance holds an orchestrated subtask it took from the queue
    # without renewing it (then another instance runs it again), and how often leases are renewed, the queue
    # polled and this instance's fleet reported to the store. Instances silent for staleAfterHeartbeats
    # heartbeats leave the fleet view.
    lease_ms: Annotated[int, msgspec.Meta(ge=500, le=3_600_000)] = 30_000
    heartbeat_ms: Annotated[int, msgspec.Meta(ge=100, le=600_000)] = 5_000
    stale_after_heartbeats: Annotated[int, msgspec.Meta(ge=2, le=100)] = 3


# Named qe_quality_gate policies; a configured name replaces or adds to these.
POLICY_DEFAULTS: Final[dict[str, GatePolicy]] = {
    "default": GatePolicy(
        min_line_coverage=80.0, min_branch_coverage=70.0, max_complexity=15, min_maintainability=20.0,
        max_failed_tests=0, max_critical_gaps=0, max_skipped_ratio=0.1,
    ),
    "strict": GatePolicy(
        min_line_coverage=90.0, min_branch_coverage=85.0, max_complexity=10, min_maintainability=40.0,
        max_failed_tests=0, min_pass_rate=1.0, max_critical_gaps=0, max_skipped_ratio=0.02,
    ),
}


class QualityConfig(_Section, frozen=True):
    policies: dict[str, GatePolicy] = msgspec.field(default_factory=lambda: dict(POLICY_DEFAULTS))


# The design's tool table; the CPU-heavy tools run on the agent fleet, the rest on the event loop.
TOOL_DEFAULTS: Final[dict[str, ToolConfig]] = {
    # Running the tests (`verify: true`) or observing calls (the observed oracle, bounded by budgetSeconds, 10 s
    # by default) takes seconds by nature: 500 ms is for static generation alone.
    "qe_test_generate": ToolConfig(
        category="test-generation", target_latency_ms=500.0, execution="fleet",
        modes={
            "verify": ToolModeConfig(target_latency_ms=10_000.0),
            "observed": ToolModeConfig(target_latency_ms=20_000.0),
        },
    ),
    "qe_coverage_analyze": ToolConfig(
        category="coverage-analysis", target_latency_ms=200.0, execution="fleet"
    ),
    "qe_coverage_gaps": ToolConfig(category="coverage-analysis", target_latency_ms=100.0, execution="fleet"),
    # The gate parses the reports it is given (caller files): that runs on an agent, never on the loop.
    "qe_quality_gate": ToolConfig(category="quality-assessment", target_latency_ms=100.0, execution="fleet"),
    "qe_quality_metrics": ToolConfig(
        category="quality-assessment", target_latency_ms=50.0, execution="fleet"
    ),
    "qe_fleet_init": ToolConfig(category="coordination", target_latency_ms=200.0),
    "qe_fleet_status": ToolConfig(category="coordination", target_latency_ms=50.0),
    "qe_agent_spawn": ToolConfig(category="coordination", target_latency_ms=100.0),
    "qe_task_orchestrate": ToolConfig(category="coordination", target_latency_ms=150.0),
    "qe_memory_store": ToolConfig(category="memory", target_latency_ms=20.0),
    "qe_memory_retrieve": ToolConfig(category="memory", target_latency_ms=10.0),
    "qe_memory_search": ToolConfig(category="memory", target_latency_ms=50.0),
    "qe_learn_pattern": ToolConfig(category="learning", target_latency_ms=100.0),
    "qe_learn_status": ToolConfig(category="learning", target_latency_ms=30.0),
}


class Config(_Section, frozen=True):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    pool: PoolConfig = msgspec.field(default_factory=PoolConfig)
    registry: RegistryConfig = msgspec.field(default_factory=RegistryConfig)
    balancer: BalancerConfig = msgspec.field(default_factory=BalancerConfig)
    targets: TargetsConfig = msgspec.field(default_factory=TargetsConfig)
    monitoring: MonitoringConfig = msgspec.field(default_factory=MonitoringConfig)
    memory: MemoryConfig = msgspec.field(default_factory=MemoryConfig)
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    learning: LearningConfig = msgspec.field(default_factory=LearningConfig)
    fleet: FleetConfig = msgspec.field(default_factory=FleetConfig)
    quality: QualityConfig = msgspec.field(default_factory=QualityConfig)
    tools: dict[str, ToolConfig] = msgspec.field(default_factory=lambda: dict(TOOL_DEFAULTS))


class ConfigError(Exception):
    """The configuration cannot be used; `errors` holds every problem found, one message each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def is_loopback(host: str) -> bool:
    """True for names and addresses that only this machine can reach."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
