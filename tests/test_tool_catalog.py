"""The 14 QE tool definitions as clients see them, and the memory tools end to end through their handlers."""

from __future__ import annotations

import asyncio
import pathlib
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import jsonschema
import msgspec
import pytest
from mcp.shared.inbound import find_invalid_x_mcp_header

from qe_appliance.store.memory import MemoryStore
from qe_appliance.tools import ALL_TOOLS
from qe_appliance.tools.base import NotAvailable, ToolError, ToolSpec, bare_context

# The design's tool table, in order.
DESIGN_TABLE = [
    ("qe_test_generate", "test-generation"),
    ("qe_coverage_analyze", "coverage-analysis"),
    ("qe_coverage_gaps", "coverage-analysis"),
    ("qe_quality_gate", "quality-assessment"),
    ("qe_quality_metrics", "quality-assessment"),
    ("qe_fleet_init", "coordination"),
    ("qe_fleet_status", "coordination"),
    ("qe_agent_spawn", "coordination"),
    ("qe_task_orchestrate", "coordination"),
    ("qe_memory_store", "memory"),
    ("qe_memory_retrieve", "memory"),
    ("qe_memory_search", "memory"),
    ("qe_learn_pattern", "learning"),
    ("qe_learn_status", "learning"),
]
MEMORY_TOOLS = {"qe_memory_store", "qe_memory_retrieve", "qe_memory_search"}

# Smallest valid arguments of each tool that is not implemented yet.
MINIMAL_ARGS: dict[str, dict[str, Any]] = {
    "qe_test_generate": {"source": "def f(x: int) -> int:\n    return x\n"},
    "qe_coverage_analyze": {"path": "coverage.json"},
    "qe_coverage_gaps": {"reportId": "r1"},
    "qe_quality_gate": {"policy": {"minLineCoverage": 80}, "metrics": {"lineCoverage": 85.0}},
    "qe_quality_metrics": {"path": "src"},
    "qe_fleet_init": {"agents": {"generalist": 2}},
    "qe_fleet_status": {},
    "qe_agent_spawn": {"type": "test-generator"},
    "qe_task_orchestrate": {"task": {"tool": "qe_coverage_gaps", "inputs": [{"reportId": "r1"}]}},
    "qe_learn_pattern": {
        "pattern": "assert f(0) == 0",
        "patternType": "edge-case",
        "domain": "math",
        "language": "python",
        "confidence": 0.7,
    },
    "qe_learn_status": {},
}

TOOLS = {spec.name: spec for spec in ALL_TOOLS}


def decode(spec: ToolSpec, arguments: dict[str, Any]) -> Any:
    """Arguments as the dispatcher turns them into the tool's input Struct."""
    return msgspec.json.decode(msgspec.json.encode(arguments), type=spec.input_type)


def run(spec: ToolSpec, services: Any, args: Any) -> Any:
    async def invoke() -> Any:
        return await spec.handler(bare_context(services, spec.name), args)

    return asyncio.run(invoke())


def call(name: str, services: Any, arguments: dict[str, Any]) -> Any:
    spec = TOOLS[name]
    return run(spec, services, decode(spec, arguments))


def structured(name: str, result: Any) -> dict[str, Any]:
    """The result as structuredContent, checked against the tool's outputSchema as a client would."""
    content = msgspec.json.decode(msgspec.json.encode(result))
    jsonschema.validate(content, TOOLS[name].output_schema)
    return content


@pytest.fixture
def services(tmp_path: pathlib.Path) -> Iterator[SimpleNamespace]:
    store = MemoryStore(tmp_path / "memory.db")
    yield SimpleNamespace(memory=store)
    store.close()


def test_the_catalog_is_the_design_table_in_order() -> None:
    assert [(spec.name, spec.category) for spec in ALL_TOOLS] == DESIGN_TABLE
    assert len({spec.name for spec in ALL_TOOLS}) == 14


def test_categories_agree_with_the_config_defaults() -> None:
    config = pytest.importorskip("qe_appliance.config")
    defaults = getattr(config, "TOOL_DEFAULTS", None)
    if defaults is None:
        pytest.skip("qe_appliance.config has no TOOL_DEFAULTS yet")
    assert set(defaults) == set(TOOLS)
    for name, entry in defaults.items():
        category = entry["category"] if isinstance(entry, dict) else entry.category
        assert category == TOOLS[name].category, name


@pytest.mark.parametrize("spec", ALL_TOOLS, ids=lambda spec: spec.name)
def test_each_tool_lists_a_valid_object_schema_with_described_properties(spec: ToolSpec) -> None:
    wire = spec.wire()
    schema = wire["inputSchema"]
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["type"] == "object" and "$ref" not in schema
    assert schema["additionalProperties"] is False
    assert schema["properties"]
    for prop, sub in schema["properties"].items():
        assert sub.get("description"), f"{spec.name}.{prop} has no description"
    assert find_invalid_x_mcp_header(schema) is None
    assert wire["title"] and len(wire["description"]) > 40
    hints = wire["annotations"]
    assert not (hints["readOnlyHint"] and hints["destructiveHint"])
    if spec.output_schema is not None:
        jsonschema.Draft202012Validator.check_schema(wire["outputSchema"])
        assert wire["outputSchema"]["type"] == "object"


def test_memory_tools_declare_outputs_hints_and_the_namespace_header() -> None:
    for name in MEMORY_TOOLS:
        spec = TOOLS[name]
        assert spec.output_schema is not None
        assert spec.input_schema["properties"]["namespace"]["x-mcp-header"] == "Namespace"
    store, retrieve, search = (
        TOOLS[n] for n in ("qe_memory_store", "qe_memory_retrieve", "qe_memory_search")
    )
    assert (store.read_only, store.destructive, store.idempotent) == (False, True, True)
    assert retrieve.read_only and search.read_only


@pytest.mark.parametrize("name", sorted(MINIMAL_ARGS))
def test_tools_not_built_yet_say_so_instead_of_faking_output(name: str) -> None:
    with pytest.raises(NotAvailable, match=f"^{name} is not available in this build$"):
        call(name, SimpleNamespace(), MINIMAL_ARGS[name])


def test_a_namespace_with_a_trailing_newline_passes_the_decoder_but_not_the_handler(
    services: SimpleNamespace,
) -> None:
    with pytest.raises(ToolError, match="must match"):
        call("qe_memory_store", services, {"key": "k", "value": 1, "namespace": "default\n"})


def test_arguments_are_checked_by_the_schema_type() -> None:
    spec = TOOLS["qe_memory_store"]
    with pytest.raises(msgspec.ValidationError, match=r"Object contains unknown field `valu`"):
        decode(spec, {"key": "a", "valu": 1})
    with pytest.raises(msgspec.ValidationError, match=r"length <= 512 - at `\$.key`"):
        decode(spec, {"key": "k" * 513, "value": 1})
    with pytest.raises(msgspec.ValidationError, match=r"`\$.namespace`"):
        decode(spec, {"key": "a", "value": 1, "namespace": "has space"})
    with pytest.raises(msgspec.ValidationError, match=r"`\$.limit`"):
        decode(TOOLS["qe_memory_search"], {"limit": 501})


def test_store_then_retrieve_round_trips_any_json(services: SimpleNamespace) -> None:
    value = {"lines": 81.5, "files": ["a.py", "b.py"], "note": "Zoë ✓", "ok": True, "none": None}
    stored = structured(
        "qe_memory_store", call("qe_memory_store", services, {"key": "cov/last", "value": value})
    )
    assert stored == {
        "key": "cov/last",
        "namespace": "default",
        "version": 1,
        "replaced": False,
        "expiresAt": None,
        "persisted": True,
    }

    again = call("qe_memory_store", services, {"key": "cov/last", "value": [1, 2], "ttlSeconds": 60})
    again_content = structured("qe_memory_store", again)
    assert (again_content["version"], again_content["replaced"]) == (2, True)
    assert again_content["expiresAt"].endswith("Z")

    got = structured("qe_memory_retrieve", call("qe_memory_retrieve", services, {"key": "cov/last"}))
    assert got["found"] is True and got["value"] == [1, 2] and got["version"] == 2
    assert got["expiresAt"] == again_content["expiresAt"]
    assert got["createdAt"] <= got["updatedAt"]

    call("qe_memory_store", services, {"key": "scalar", "value": None})
    assert (
        structured("qe_memory_retrieve", call("qe_memory_retrieve", services, {"key": "scalar"}))["value"]
        is None
    )


def test_retrieve_of_a_missing_or_expired_key_is_a_normal_not_found(services: SimpleNamespace) -> None:
    missing = call("qe_memory_retrieve", services, {"key": "nope", "namespace": "proj"})
    assert structured("qe_memory_retrieve", missing) == {"found": False, "key": "nope", "namespace": "proj"}

    call("qe_memory_store", services, {"key": "brief", "value": 1, "ttlSeconds": 0.05})
    time.sleep(0.1)
    assert (
        structured("qe_memory_retrieve", call("qe_memory_retrieve", services, {"key": "brief"}))["found"]
        is False
    )


def test_search_by_glob_prefix_and_namespace_with_paging(services: SimpleNamespace) -> None:
    for i in range(5):
        call("qe_memory_store", services, {"key": f"flaky/t{i}", "value": {"i": i}, "namespace": "proj"})
    call("qe_memory_store", services, {"key": "flaky/t0", "value": "other", "namespace": "other"})
    call("qe_memory_store", services, {"key": "coverage/x", "value": 0, "namespace": "proj"})

    page = structured(
        "qe_memory_search", call("qe_memory_search", services, {"pattern": "flaky/*", "limit": 2})
    )
    assert page["total"] == 6
    assert [(m["namespace"], m["key"], m["value"]) for m in page["matches"]] == [
        ("other", "flaky/t0", "other"),
        ("proj", "flaky/t0", {"i": 0}),
    ]

    scoped = call("qe_memory_search", services, {"prefix": "flaky/", "namespace": "proj", "offset": 3})
    content = structured("qe_memory_search", scoped)
    assert content["total"] == 5 and [m["key"] for m in content["matches"]] == ["flaky/t3", "flaky/t4"]
    assert all(m["version"] == 1 and m["expiresAt"] is None for m in content["matches"])


@pytest.mark.parametrize(
    ("name", "arguments", "expected"),
    [
        ("qe_memory_store", {"key": "k" * 513, "value": 1}, "1..512 characters"),
        ("qe_memory_retrieve", {"key": ""}, "1..512 characters"),
        ("qe_memory_store", {"key": "k", "value": "x" * (1024 * 1024)}, "limit is 1048576 bytes"),
        ("qe_memory_store", {"key": "k", "value": 1, "ttlSeconds": 0}, "ttlSeconds is 0"),
        ("qe_memory_store", {"key": "k", "value": 1, "ttlSeconds": 400_000_000}, "<= 315360000 (10 years)"),
        ("qe_memory_retrieve", {"key": "k", "namespace": "default\n"}, "must match"),
        ("qe_memory_search", {"namespace": "-bad"}, "must match"),
        ("qe_memory_search", {"limit": 0}, "limit is 0; it must be 1..500"),
        ("qe_memory_search", {"offset": -1}, "offset is -1"),
    ],
)
def test_limit_breaches_are_tool_errors_naming_the_limit(
    services: SimpleNamespace, name: str, arguments: dict[str, Any], expected: str
) -> None:
    spec = TOOLS[name]
    # Built without decoding, as a caller that bypasses the schema (CLI, fleet RPC) would.
    args = spec.input_type(**{_field(k): v for k, v in arguments.items()})
    with pytest.raises(ToolError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        run(spec, services, args)
    assert services.memory.search(namespace=None, pattern=None, prefix=None, limit=10, offset=0) == ([], 0)


def _field(camel: str) -> str:
    return {"ttlSeconds": "ttl_seconds"}.get(camel, camel)
