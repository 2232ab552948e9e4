"""The YAML configuration: shipped defaults, every error an operator can make (with its line), overrides."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import msgspec
import pytest
import yaml

from qe_appliance.config import (
    CATEGORIES,
    MAX_FILE_BYTES,
    TOOL_DEFAULTS,
    Config,
    ConfigError,
    apply_overrides,
    control_socket,
    load_config,
    state_dir,
)

SHIPPED = Path(__file__).resolve().parent.parent / "config" / "qe-mcp.yaml"

# QE_MCP_CONFIG from the design, verbatim.
DESIGN = {
    "pool": {
        "maxConnections": 50,
        "minConnections": 5,
        "idleTimeoutMs": 300000,
        "healthCheckIntervalMs": 30000,
    },
    "registry": {"cacheEnabled": True, "cacheSize": 1000, "indexType": "hash", "fuzzyMatchEnabled": True},
    "balancer": {"strategy": "least-connections", "healthCheckIntervalMs": 10000, "capacityAware": True},
    "targets": {"p95ResponseTime": 100, "poolHitRate": 0.9, "toolLookupTime": 5},
    "monitoring": {
        "enabled": True,
        "dashboardIntervalMs": 1000,
        "alertThresholds": {"p95ResponseTime": 200, "errorRate": 0.05, "poolHitRate": 0.7},
    },
}

# The design's tool table, in order.
TOOL_TABLE = [
    ("qe_test_generate", "test-generation", 500),
    ("qe_coverage_analyze", "coverage-analysis", 200),
    ("qe_coverage_gaps", "coverage-analysis", 100),
    ("qe_quality_gate", "quality-assessment", 100),
    ("qe_quality_metrics", "quality-assessment", 50),
    ("qe_fleet_init", "coordination", 200),
    ("qe_fleet_status", "coordination", 50),
    ("qe_agent_spawn", "coordination", 100),
    ("qe_task_orchestrate", "coordination", 150),
    ("qe_memory_store", "memory", 20),
    ("qe_memory_retrieve", "memory", 10),
    ("qe_memory_search", "memory", 50),
    ("qe_learn_pattern", "learning", 100),
    ("qe_learn_status", "learning", 30),
]


def as_plain(cfg: Config) -> dict:
    return msgspec.json.decode(msgspec.json.encode(cfg))


def write(tmp_path: Path, text: str, name: str = "qe-mcp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def errors_of(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.errors


def only_error(tmp_path: Path, text: str) -> str:
    errors = errors_of(tmp_path, text)
    assert len(errors) == 1, errors
    return errors[0]


# --- defaults and the shipped file ------------------------------------------------------------------


def beside(path: Path) -> Config:
    """The defaults as a file at `path` gives them: the empty stateDir becomes .aqe-state beside the file."""
    server = msgspec.structs.replace(Config().server, state_dir=str(path.parent / ".aqe-state"))
    return msgspec.structs.replace(Config(), server=server)


def test_shipped_file_loads_to_the_builtin_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    assert load_config(SHIPPED) == beside(SHIPPED) and load_config(None) == Config()
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/aqe-mcp")  # systemd's choice stays in force
    assert load_config(SHIPPED) == Config()


def test_shipped_file_spells_out_every_key_with_its_default() -> None:
    assert yaml.safe_load(SHIPPED.read_text()) == as_plain(Config())


def test_every_key_in_the_shipped_file_has_a_comment() -> None:
    lines = SHIPPED.read_text().splitlines()
    undocumented = [
        line
        for index, line in enumerate(lines)
        if ":" in line
        and not line.lstrip().startswith(("#", "qe_"))  # the tool table has one header comment
        and "#" not in line
        and not lines[index - 1].lstrip().startswith("#")
        and not line.rstrip().endswith(":")  # block headers
    ]
    assert undocumented == []


def test_defaults_are_the_design_values() -> None:
    plain = as_plain(load_config(None))
    for block, values in DESIGN.items():
        assert plain[block] == values
    server = plain["server"]
    assert (server["host"], server["port"], server["allowedOrigins"]) == ("127.0.0.1", 8765, [])
    assert (server["stateDir"], server["controlSocket"], server["logLevel"]) == ("", "", "info")


def test_tool_defaults_follow_the_design_table_in_order() -> None:
    assert [
        (name, tool.category, tool.target_latency_ms) for name, tool in TOOL_DEFAULTS.items()
    ] == TOOL_TABLE
    fleet = {name for name, tool in TOOL_DEFAULTS.items() if tool.execution == "fleet"}
    assert fleet == {
        "qe_test_generate", "qe_coverage_analyze", "qe_coverage_gaps", "qe_quality_gate", "qe_quality_metrics"
    }
    assert all(tool.enabled for tool in TOOL_DEFAULTS.values())
    assert set(CATEGORIES) == {category for _, category, _ in TOOL_TABLE}


def test_config_is_immutable() -> None:
    cfg = load_config(None)
    with pytest.raises(AttributeError):
        cfg.pool.max_connections = 1  # type: ignore[misc]


def test_yaml_keys_are_camel_case_and_attributes_snake_case(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            """
        pool: {maxConnections: 8, minConnections: 2}
        monitoring: {alertThresholds: {errorRate: 0.1}}
        server: {allowedOrigins: [https://agents.example.com]}
    """,
        )
    )
    assert (cfg.pool.max_connections, cfg.pool.min_connections) == (8, 2)
    assert cfg.monitoring.alert_thresholds.error_rate == 0.1
    assert cfg.monitoring.alert_thresholds.p95_response_time == 200
    assert cfg.server.allowed_origins == ("https://agents.example.com",)
    assert cfg.pool.idle_timeout_ms == 300000


def test_comment_only_file_and_empty_block_keep_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    assert load_config(write(tmp_path, "# nothing yet\n")) == beside(tmp_path / "qe-mcp.yaml")
    assert load_config(write(tmp_path, "pool:\n  # maxConnections: 9\ntools:\n")) == beside(tmp_path / "qe-mcp.yaml")


def test_relative_paths_are_taken_from_the_file_wherever_it_is_read_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    etc = tmp_path / "etc"
    etc.mkdir()
    path = write(etc, "server: {stateDir: data, controlSocket: run/c.sock, auth: {tokensFile: tokens}}\n"
                      "fleet: {runtimeDir: ../agents}\n")
    warnings: list[str] = []
    for cwd in (tmp_path, etc, Path("/")):
        monkeypatch.chdir(cwd)
        cfg = load_config(path, warnings.append)
        assert state_dir(cfg) == etc / "data" and control_socket(cfg) == etc / "run" / "c.sock"
        assert cfg.server.auth.tokens_file == str(etc / "tokens") and cfg.fleet.runtime_dir == str(etc / "../agents")
    assert len(warnings) == 12 and "server.stateDir: the relative path 'data' is taken from the configuration" \
        " file's directory" in warnings[0]
    monkeypatch.chdir(tmp_path)
    assert control_socket(load_config(write(etc, "pool: {}\n"))) == etc / ".aqe-state" / "control.sock"


# --- tools -------------------------------------------------------------------------------------------


def test_tool_entry_overrides_only_the_fields_it_gives(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            """
        tools:
          qe_test_generate: {enabled: false}
          qe_memory_store:
            execution: fleet
            targetLatencyMs: 12.5
    """,
        )
    )
    generate, store = cfg.tools["qe_test_generate"], cfg.tools["qe_memory_store"]
    assert (generate.enabled, generate.category, generate.target_latency_ms, generate.execution) == (
        False,
        "test-generation",
        500,
        "fleet",
    )
    assert (store.execution, store.target_latency_ms, store.category) == ("fleet", 12.5, "memory")
    assert cfg.tools["qe_learn_status"] == TOOL_DEFAULTS["qe_learn_status"]
    assert list(cfg.tools) == list(TOOL_DEFAULTS)


def test_unknown_tool_suggests_the_closest_name(tmp_path: Path) -> None:
    error = only_error(
        tmp_path,
        """
        tools:
          qe_learn_status: {enabled: true}
          qe_test_generat: {enabled: false}
    """,
    )
    assert error.startswith(f"{tmp_path / 'qe-mcp.yaml'}:4: tools.qe_test_generat: unknown tool")
    assert "did you mean `qe_test_generate`?" in error


def test_bad_tool_fields_are_each_reported(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        """
        tools:
          qe_memory_store:
            category: mem
            execution: remote
            targetLatencyMs: 0
            enabled: "no"
    """,
    )
    assert any(":4: tools.qe_memory_store.category: unknown category `mem`" in e for e in errors)
    assert any(":5: tools.qe_memory_store.execution: unknown execution `remote`" in e for e in errors)
    assert any(
        ":6: tools.qe_memory_store.targetLatencyMs: must be greater than 0, got 0" in e for e in errors
    )
    assert any(
        ":7: tools.qe_memory_store.enabled: expected true or false, got the string 'no'" in e for e in errors
    )
    assert len(errors) == 4



def test_tool_modes_have_their_own_targets_and_are_checked(tmp_path: Path) -> None:
    tools = load_config(write(tmp_path, """
        tools:
          qe_test_generate: {modes: {verify: {targetLatencyMs: 30000}}}
          qe_memory_search: {modes: {bulk: {targetLatencyMs: 400}}}
    """)).tools
    assert tools["qe_test_generate"].target_ms("") == 500 and tools["qe_test_generate"].target_ms("verify") == 30000
    assert tools["qe_memory_search"].target_ms("bulk") == 400
    assert Config().tools["qe_test_generate"].target_ms("verify") == 10_000  # the default for verify runs
    errors = errors_of(
        tmp_path,
        """
        tools:
          qe_test_generate:
            modes:
              verify: {targetLatencyMs: -1}
              Bad-Name: {targetLatencyMs: 10}
              fast: {}
    """,
    )
    assert any(":5: tools.qe_test_generate.modes.verify.targetLatencyMs: must be greater than 0" in e for e in errors)
    assert any(":6: tools.qe_test_generate.modes.Bad-Name: `Bad-Name` is not a valid mode name" in e for e in errors)
    assert any(":7: tools.qe_test_generate.modes.fast.targetLatencyMs: missing; this key is required" in e
               for e in errors)
    assert len(errors) == 3


# --- file-level errors -------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: no such file")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path, "pool: {}\n")
    path.chmod(0)
    with pytest.raises(ConfigError, match="permission denied"):
        load_config(path)


def test_file_over_one_mebibyte_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("# padding\n" * (MAX_FILE_BYTES // 10 + 1))
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        load_config(path)


def test_non_utf8_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"pool:\n  maxConnections: 5 # caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1.yaml:2: not UTF-8"):
        load_config(path)


def test_yaml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    error = only_error(
        tmp_path,
        """\
        pool:
          maxConnections: 5
           minConnections: 3
    """,
    )
    assert error.startswith(f"{tmp_path / 'qe-mcp.yaml'}:3:")
    assert "YAML syntax error" in error
    line, column = error.split(":")[1:3]
    assert (line, column.isdigit()) == ("3", True)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    error = only_error(tmp_path, "- pool\n- registry\n")
    assert (
        error == f"{tmp_path / 'qe-mcp.yaml'}:1: the top level must be a mapping of blocks such as `pool:`, "
        "got a list"
    )


# --- key and value errors, each with its path and line -----------------------------------------------


def test_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    error = only_error(
        tmp_path,
        """\
        pool:
          minConnections: 2
          maxConection: 10
    """,
    )
    assert (
        error == f"{tmp_path / 'qe-mcp.yaml'}:3: pool.maxConection: unknown key `maxConection`; "
        "did you mean `maxConnections`?"
    )


def test_snake_case_key_finds_its_camel_case_name(tmp_path: Path) -> None:
    assert "did you mean `idleTimeoutMs`?" in only_error(tmp_path, "pool:\n  idle_timeout_ms: 5\n")


def test_unknown_key_with_no_close_match_lists_the_valid_ones(tmp_path: Path) -> None:
    error = only_error(tmp_path, "balancer:\n  zzz: 1\n")
    assert (
        ":2: balancer.zzz: unknown key `zzz`; expected one of: strategy, healthCheckIntervalMs, capacityAware"
        in error
    )


def test_unknown_top_level_block(tmp_path: Path) -> None:
    error = only_error(tmp_path, "pool: {}\nmonitorin:\n  enabled: true\n")
    assert ":2: monitorin: unknown key `monitorin`; did you mean `monitoring`?" in error


def test_wrong_type_says_what_was_found(tmp_path: Path) -> None:
    error = only_error(tmp_path, "pool:\n  maxConnections: fifty\n")
    assert (
        error == f"{tmp_path / 'qe-mcp.yaml'}:2: pool.maxConnections: expected an integer, "
        "got the string 'fifty'"
    )


def test_quoted_number_hints_at_the_quotes(tmp_path: Path) -> None:
    assert only_error(tmp_path, "server:\n  port: '8080'\n").endswith("; remove the quotes")


def test_empty_value_names_the_default(tmp_path: Path) -> None:
    error = only_error(tmp_path, "pool:\n  idleTimeoutMs:\n")
    assert "expected an integer number of milliseconds, got nothing (null)" in error
    assert "default (300000)" in error


def test_booleans_are_not_numbers(tmp_path: Path) -> None:
    assert "got the boolean true" in only_error(tmp_path, "registry:\n  cacheSize: true\n")


def test_a_block_must_be_a_mapping(tmp_path: Path) -> None:
    error = only_error(tmp_path, "pool: 50\n")
    assert ":1: pool: expected a mapping of `key: value` lines, got the integer 50" in error


@pytest.mark.parametrize(
    ("text", "key_path", "line", "fragment"),
    [
        (
            "pool:\n  maxConnections: 0\n  minConnections: 0\n",
            "pool.maxConnections",
            2,
            "must be at least 1, got 0",
        ),
        (
            "pool:\n  maxConnections: 10\n  minConnections: 20\n",
            "pool.minConnections",
            3,
            "minConnections (20) is larger than maxConnections (10)",
        ),
        (
            "pool:\n  healthCheckIntervalMs: 1\n  maxConnections: 3\n",
            "pool.maxConnections",
            3,
            "minConnections (5) is larger than maxConnections (3)",
        ),
        ("pool:\n  idleTimeoutMs: -5\n", "pool.idleTimeoutMs", 2, "must be greater than 0, got -5"),
        ("pool:\n  healthCheckIntervalMs: 0\n", "pool.healthCheckIntervalMs", 2, "must be greater than 0"),
        ("balancer:\n  healthCheckIntervalMs: 0\n", "balancer.healthCheckIntervalMs", 2, "greater than 0"),
        ("monitoring:\n  dashboardIntervalMs: 0\n", "monitoring.dashboardIntervalMs", 2, "greater than 0"),
        ("server:\n  headerTimeoutMs: 0\n", "server.headerTimeoutMs", 2, "greater than 0"),
        ("server:\n  keepAliveTimeoutMs: -1\n", "server.keepAliveTimeoutMs", 2, "greater than 0"),
        ("server:\n  sessionIdleTimeoutMs: 0\n", "server.sessionIdleTimeoutMs", 2, "greater than 0"),
        (
            "targets:\n  poolHitRate: 90\n",
            "targets.poolHitRate",
            2,
            "between 0 and 1 (0.9 means 90%), got 90",
        ),
        ("targets:\n  p95ResponseTime: .nan\n", "targets.p95ResponseTime", 2, "must be a finite number"),
        (
            "monitoring:\n  alertThresholds:\n    errorRate: -0.1\n",
            "monitoring.alertThresholds.errorRate",
            3,
            "between 0 and 1",
        ),
        (
            "monitoring:\n  alertThresholds:\n    poolHitRate: 1.5\n",
            "monitoring.alertThresholds.poolHitRate",
            3,
            "between 0 and 1",
        ),
        ("server:\n  port: 70000\n", "server.port", 2, "must be between 0 and 65535, got 70000"),
        ("server:\n  host: ''\n", "server.host", 2, "must not be empty"),
        ("server:\n  maxSessions: 0\n", "server.maxSessions", 2, "must be at least 1"),
        ("server:\n  maxBodyBytes: 0\n", "server.maxBodyBytes", 2, "must be at least 1"),
        ("server:\n  logLevel: verbose\n", "server.logLevel", 2, "unknown logLevel `verbose`"),
        ("server:\n  logLevel: warn\n", "server.logLevel", 2, "did you mean `warning`?"),
        (
            "balancer:\n  strategy: least-connection\n",
            "balancer.strategy",
            2,
            "unknown strategy `least-connection`; did you mean `least-connections`?",
        ),
        (
            "registry:\n  indexType: tree\n",
            "registry.indexType",
            2,
            "unknown indexType `tree`; expected one of: hash",
        ),
        (
            "registry:\n  cacheSize: 0\n",
            "registry.cacheSize",
            2,
            "must be at least 1 while cacheEnabled is true",
        ),
        (
            "registry:\n  cacheSize: -1\n  cacheEnabled: false\n",
            "registry.cacheSize",
            2,
            "must be at least 0",
        ),
        (
            "server:\n  allowedOrigins:\n    - https://ok.example.com\n    - https://app.example.com/path\n",
            "server.allowedOrigins[1]",
            4,
            "is not an origin",
        ),
        (
            "server:\n  allowedOrigins: https://app.example.com\n",
            "server.allowedOrigins",
            2,
            "expected a list",
        ),
        ("server:\n  controlSocket: /" + "s" * 120 + "\n", "server.controlSocket", 2, "limited to 107 bytes"),
    ],
)
def test_impossible_values_name_key_path_and_line(
    tmp_path: Path, text: str, key_path: str, line: int, fragment: str
) -> None:
    error = only_error(tmp_path, text)
    assert error.startswith(f"{tmp_path / 'qe-mcp.yaml'}:{line}: {key_path}: "), error
    assert fragment in error


def test_cache_size_zero_is_fine_when_the_cache_is_off(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "registry:\n  cacheEnabled: false\n  cacheSize: 0\n"))
    assert (cfg.registry.cache_enabled, cfg.registry.cache_size) == (False, 0)


def test_all_errors_of_a_file_are_reported_together_in_line_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        tools:
          qe_memory_store: {execution: remote}
        pool:
          maxConnections: fifty
          idleTimeoutMs: 0
        balancer:
          strategy: fastest
        server:
          port: 99999
          bogus: 1
    """,
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    errors = caught.value.errors
    assert [e.split(": ")[0] for e in errors] == [f"{path}:{n}" for n in (2, 4, 5, 7, 9, 10)]
    assert str(caught.value) == "\n".join(errors)


def test_key_written_twice_is_an_error(tmp_path: Path) -> None:
    error = only_error(tmp_path, "pool:\n  maxConnections: 10\n  minConnections: 1\n  maxConnections: 20\n")
    assert error.startswith(
        f"{tmp_path / 'qe-mcp.yaml'}:4: pool.maxConnections: appears twice (first on line 2)"
    )


def test_errors_through_a_merge_key_point_at_the_written_lines(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        """\
        monitoring:
          alertThresholds: &thresholds
            errorRate: 0.1
        targets:
          <<: *thresholds
          poolHitRate: 2
    """,
    )
    assert len(errors) == 2
    assert ":3: targets.errorRate: unknown key `errorRate`" in errors[0]
    assert ":6: targets.poolHitRate: must be a fraction between 0 and 1" in errors[1]


# --- hostile files -----------------------------------------------------------------------------------


def test_billion_laughs_fails_fast(tmp_path: Path) -> None:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, 10):
        name, previous = chr(ord("a") + level), chr(ord("a") + level - 1)
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
    lines.append("pool: {maxConnections: *i}")
    path = write(tmp_path, "\n".join(lines) + "\n")
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="anchors and aliases expand to more than"):
        load_config(path)
    assert time.perf_counter() - started < 1.0


def test_merge_key_bomb_fails_fast(tmp_path: Path) -> None:
    lines = ["m0: &m0 {x: 1}"]
    lines += [f"m{n}: &m{n} {{<<: [*m{n - 1}, *m{n - 1}, *m{n - 1}, *m{n - 1}]}}" for n in range(1, 20)]
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="expand to more than"):
        load_config(write(tmp_path, "\n".join(lines) + "\n"))
    assert time.perf_counter() - started < 1.0


def test_self_referencing_alias_is_refused(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"qe-mcp.yaml:2: an alias refers to a list or mapping that contains it"
    ):
        load_config(write(tmp_path, "server:\n  allowedOrigins: &loop [*loop]\n"))


def test_python_tags_are_refused(tmp_path: Path) -> None:
    error = only_error(tmp_path, "pool: !!python/object/apply:os.system ['true']\n")
    assert error.startswith(f"{tmp_path / 'qe-mcp.yaml'}:1:") and "YAML" in error


def test_modest_aliases_still_work(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            """\
        tools:
          qe_test_generate: &off {enabled: false}
          qe_coverage_analyze: *off
    """,
        )
    )
    assert not cfg.tools["qe_test_generate"].enabled and not cfg.tools["qe_coverage_analyze"].enabled


# --- command-line overrides --------------------------------------------------------------------------


def test_pool_size_sets_max_and_lowers_min() -> None:
    base = load_config(None)
    small = apply_overrides(base, pool_size=3)
    assert (small.pool.max_connections, small.pool.min_connections) == (3, 3)
    big = apply_overrides(base, pool_size=80)
    assert (big.pool.max_connections, big.pool.min_connections) == (80, 5)
    assert base.pool.max_connections == 50


def test_optimized_forces_cache_fuzzy_and_monitoring_on(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            """\
        registry: {cacheEnabled: false, fuzzyMatchEnabled: false}
        monitoring: {enabled: false}
    """,
        )
    )
    fast = apply_overrides(cfg, optimized=True)
    assert (fast.registry.cache_enabled, fast.registry.fuzzy_match_enabled, fast.monitoring.enabled) == (
        True,
        True,
        True,
    )
    assert apply_overrides(cfg) == cfg


def test_optimized_refuses_a_zero_cache_naming_the_flag(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "registry: {cacheEnabled: false, cacheSize: 0}\n"))
    with pytest.raises(ConfigError) as caught:
        apply_overrides(cfg, optimized=True)
    assert caught.value.errors == [
        "--optimized: registry.cacheSize: must be at least 1 while cacheEnabled is true, got 0; "
        "raise it or set cacheEnabled: false"
    ]


def test_host_port_and_strategy_overrides() -> None:
    cfg = apply_overrides(load_config(None), host="::1", port=9000, strategy="round-robin")
    assert (cfg.server.host, cfg.server.port, cfg.balancer.strategy) == ("::1", 9000, "round-robin")


def test_bad_overrides_are_all_reported_with_their_flags() -> None:
    with pytest.raises(ConfigError) as caught:
        apply_overrides(load_config(None), port=70000, pool_size=0, strategy="response_time")
    assert sorted(caught.value.errors) == [
        "--pool-size 0: pool.maxConnections: must be at least 1, got 0",
        "--port 70000: server.port: must be between 0 and 65535, got 70000",
        "--strategy response_time: balancer.strategy: unknown strategy `response_time`; "
        "did you mean `response-time`? (choices: least-connections, response-time, round-robin)",
    ]


# --- state directory and control socket --------------------------------------------------------------


@pytest.fixture
def no_systemd_dirs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_state_dir_defaults_to_the_current_directory(no_systemd_dirs: Path) -> None:
    cfg = load_config(None)
    assert state_dir(cfg) == no_systemd_dirs / ".aqe-state"
    assert control_socket(cfg) == no_systemd_dirs / ".aqe-state" / "control.sock"
    assert not (no_systemd_dirs / ".aqe-state").exists()


def test_systemd_directories_are_used_when_set(
    no_systemd_dirs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/aqe-mcp:/var/lib/other")
    cfg = load_config(None)
    assert state_dir(cfg) == Path("/var/lib/aqe-mcp")
    assert control_socket(cfg) == Path("/var/lib/aqe-mcp/control.sock")
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/aqe-mcp")
    assert control_socket(cfg) == Path("/run/aqe-mcp/control.sock")


def test_explicit_paths_win_over_the_environment(
    no_systemd_dirs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/aqe-mcp")
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/aqe-mcp")
    cfg = load_config(write(no_systemd_dirs, "server: {stateDir: data, controlSocket: /tmp/aqe.sock}\n"))
    assert state_dir(cfg) == no_systemd_dirs / "data"
    assert control_socket(cfg) == Path("/tmp/aqe.sock")
    only_state = load_config(write(no_systemd_dirs, "server: {stateDir: /srv/aqe}\n"))
    assert control_socket(only_state) == Path("/run/aqe-mcp/control.sock")
