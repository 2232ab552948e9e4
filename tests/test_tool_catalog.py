"""The 14 QE tool definitions as clients see them: order, categories, schemas, hints and headers."""

from __future__ import annotations

from typing import Any

import jsonschema
import msgspec
import pytest
from mcp.shared.inbound import find_invalid_x_mcp_header

from qe_appliance.tools import ALL_TOOLS
from qe_appliance.tools.base import ToolSpec

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
MEMORY_TOOLS = ("qe_memory_store", "qe_memory_retrieve", "qe_memory_search")
LEARNING_TOOLS = ("qe_learn_pattern", "qe_learn_status")

TOOLS = {spec.name: spec for spec in ALL_TOOLS}


def decode(spec: ToolSpec, arguments: dict[str, Any]) -> Any:
    """Arguments as the dispatcher turns them into the tool's input Struct."""
    return msgspec.json.decode(msgspec.json.encode(arguments), type=spec.input_type)


def test_the_catalog_is_the_design_table_in_order() -> None:
    assert [(spec.name, spec.category) for spec in ALL_TOOLS] == DESIGN_TABLE
    assert len({spec.name for spec in ALL_TOOLS}) == 14


def test_categories_agree_with_the_config_defaults() -> None:
    from qe_appliance.config import TOOL_DEFAULTS

    assert set(TOOL_DEFAULTS) == set(TOOLS)
    for name, entry in TOOL_DEFAULTS.items():
        assert entry.category == TOOLS[name].category, name


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


def test_memory_and_learning_tools_declare_outputs_and_hints() -> None:
    for name in MEMORY_TOOLS + LEARNING_TOOLS:
        assert TOOLS[name].output_schema is not None, name
    store, retrieve, search = (TOOLS[name] for name in MEMORY_TOOLS)
    assert (store.read_only, store.destructive, store.idempotent) == (False, True, True)
    assert retrieve.read_only and search.read_only
    learn, status = (TOOLS[name] for name in LEARNING_TOOLS)
    assert not learn.read_only and not learn.idempotent  # teaching twice counts twice
    assert status.read_only and status.idempotent


def test_every_memory_tool_mirrors_its_namespace_in_a_header() -> None:
    for name in MEMORY_TOOLS:
        prop = TOOLS[name].input_schema["properties"]["namespace"]
        assert (prop["type"], prop["x-mcp-header"]) == ("string", "Namespace"), name
        # The allowed characters come from the server's config, so the schema only describes them.
        assert "pattern" not in prop and "namespacePattern" in prop["description"]


def test_memory_limits_are_described_but_left_to_the_server_config() -> None:
    key = TOOLS["qe_memory_store"].input_schema["properties"]["key"]
    assert "maxLength" not in key and "512" in key["description"] and "maxKeyLength" in key["description"]
    value = TOOLS["qe_memory_store"].input_schema["properties"]["value"]
    assert "1048576" in value["description"] and "maxValueBytes" in value["description"]


def test_the_learning_schema_lists_the_pattern_types() -> None:
    props = TOOLS["qe_learn_pattern"].input_schema["properties"]
    assert set(props["patternType"]["enum"]) == {
        "test-template",
        "assertion",
        "mock",
        "edge-case",
        "flaky-fix",
        "anti-pattern",
    }
    assert (props["confidence"]["minimum"], props["confidence"]["maximum"]) == (0, 1)
    assert set(TOOLS["qe_learn_pattern"].input_schema["required"]) == {
        "pattern",
        "patternType",
        "domain",
        "language",
        "confidence",
    }


@pytest.mark.parametrize(
    ("name", "arguments", "error"),
    [
        ("qe_memory_store", {"key": "a", "valu": 1}, r"Object contains unknown field `valu`"),
        ("qe_memory_store", {"key": 7, "value": 1}, r"Expected `str`, got `int` - at `\$.key`"),
        ("qe_memory_store", {"key": "", "value": 1}, r"length >= 1 - at `\$.key`"),
        ("qe_memory_store", {"key": "a", "value": 1, "tags": ["t"] * 33}, r"length <= 32 - at `\$.tags`"),
        (
            "qe_memory_store",
            {"key": "a", "value": 1, "tags": ["x" * 65]},
            r"length <= 64 - at `\$.tags\[0\]`",
        ),
        ("qe_memory_store", {"key": "a", "value": 1, "metadata": [1]}, r"Expected `object | null`"),
        ("qe_memory_search", {"limit": 501}, r"`\$.limit`"),
        (
            "qe_learn_pattern",
            {**{"pattern": "p", "domain": "d", "language": "l"}, "patternType": "fixture", "confidence": 0.5},
            r"Invalid enum value 'fixture' - at `\$.patternType`",
        ),
        (
            "qe_learn_pattern",
            {"pattern": "p", "patternType": "mock", "domain": "d", "language": "l", "confidence": 1.5},
            r"Expected `float` <= 1.0 - at `\$.confidence`",
        ),
    ],
)
def test_arguments_are_checked_by_the_schema_type(name: str, arguments: dict[str, Any], error: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=error):
        decode(TOOLS[name], arguments)
