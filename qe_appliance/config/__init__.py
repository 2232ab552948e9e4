"""The appliance's configuration, one name for all of it: `from qe_appliance.config import X`.

schema.py holds the Structs and named sets, loading.py reads and checks a YAML file (and the start flags),
paths.py says where the appliance keeps its files.
"""

from qe_appliance.config.loading import MAX_FILE_BYTES, apply_overrides, load_config
from qe_appliance.config.paths import control_socket, runtime_dir, state_dir
from qe_appliance.config.schema import (
    AGENT_TYPES,
    CATEGORIES,
    DEFAULT_NAMESPACE,
    POLICY_DEFAULTS,
    STRATEGIES,
    TOOL_DEFAULTS,
    AgentType,
    AlertThresholds,
    AuthConfig,
    BalancerConfig,
    Category,
    Config,
    ConfigError,
    Execution,
    FleetConfig,
    LearningConfig,
    LogLevel,
    MemoryConfig,
    MonitoringConfig,
    PoolConfig,
    QualityConfig,
    RateLimitConfig,
    RegistryConfig,
    ServerConfig,
    StoreConfig,
    Strategy,
    TargetsConfig,
    ToolConfig,
    is_loopback,
)

__all__ = [
    "AGENT_TYPES", "CATEGORIES", "DEFAULT_NAMESPACE", "MAX_FILE_BYTES", "POLICY_DEFAULTS", "STRATEGIES",
    "TOOL_DEFAULTS", "AgentType", "AlertThresholds", "AuthConfig", "BalancerConfig", "Category", "Config",
    "ConfigError", "Execution", "FleetConfig", "LearningConfig", "LogLevel", "MemoryConfig", "MonitoringConfig",
    "PoolConfig", "QualityConfig", "RateLimitConfig", "RegistryConfig", "ServerConfig", "StoreConfig", "Strategy",
    "TargetsConfig", "ToolConfig", "apply_overrides", "control_socket", "is_loopback", "load_config",
    "runtime_dir", "state_dir",
]
