"""The memory tools through their handlers and over HTTP: tags, metadata, full-text search, the limits the
config sets (and their errors), the namespace header, and the background purge of expired entries."""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import sqlite3
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import jsonschema
import msgspec
import pytest
from mcp import Client

from qe_appliance.config import Config, ConfigError, MemoryConfig, ServerConfig, load_config
from qe_appliance.services import Services
from qe_appliance.tools.base import ToolError, bare_context
from qe_appliance.tools.memory import TOOLS
from tests.conftest import ServerProcess, start_server

SPECS = {spec.name: spec for spec in TOOLS}


def make_services(tmp_path: pathlib.Path, **memory: Any) -> Services:
    return Services(Config(server=ServerConfig(state_dir=str(tmp_path)), memory=MemoryConfig(**memory)))


@pytest.fixture
def services(tmp_path: pathlib.Path) -> Iterator[Services]:
    svc = make_services(tmp_path)
    yield svc
    svc.close()


def run(services: Services, name: str, args: Any) -> dict[str, Any]:
    """Run a handler on already-built arguments; the result is checked against the tool's outputSchema."""
    spec = SPECS[name]
    result = asyncio.run(spec.handler(bare_context(services, name), args))
    content: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(result))
    jsonschema.validate(content, spec.output_schema)
    return content


def call(services: Services, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """One tool call as the dispatcher makes it: arguments decoded into the input Struct first."""
    args = msgspec.json.decode(json.dumps(arguments), type=SPECS[name].input_type)
    return run(services, name, args)


def keys_of(result: dict[str, Any]) -> list[str]:
    return [match["key"] for match in result["matches"]]


def test_store_then_retrieve_round_trips_value_tags_and_metadata(services: Services) -> None:
    value = {"lines": 81.5, "files": ["a.py", "b.py"], "note": "Zoë ✓", "ok": True, "none": None}
    stored = call(
        services,
        "qe_memory_store",
        {"key": "cov/last", "value": value, "tags": ["coverage", "nightly"], "metadata": {"run": 42}},
    )
    assert stored == {
        "key": "cov/last",
        "namespace": "default",
        "version": 1,
        "replaced": False,
        "expiresAt": None,
        "persisted": True,
    }
    got = call(services, "qe_memory_retrieve", {"key": "cov/last"})
    assert got["found"] is True and got["value"] == value
    assert (got["tags"], got["metadata"], got["version"]) == (["coverage", "nightly"], {"run": 42}, 1)

    again = call(services, "qe_memory_store", {"key": "cov/last", "value": [1, 2], "ttlSeconds": 60})
    assert (again["version"], again["replaced"]) == (2, True) and again["expiresAt"].endswith("Z")
    got = call(services, "qe_memory_retrieve", {"key": "cov/last"})
    assert (got["value"], got["tags"], got["metadata"]) == ([1, 2], [], None)
    assert got["expiresAt"] == again["expiresAt"] and got["createdAt"] <= got["updatedAt"]


def test_retrieve_of_a_missing_or_expired_key_is_a_normal_not_found(services: Services) -> None:
    missing = call(services, "qe_memory_retrieve", {"key": "nope", "namespace": "proj"})
    assert missing == {"found": False, "key": "nope", "namespace": "proj"}
    call(services, "qe_memory_store", {"key": "brief", "value": 1, "ttlSeconds": 0.05})
    time.sleep(0.1)
    assert call(services, "qe_memory_retrieve", {"key": "brief"})["found"] is False


def test_search_ranks_words_and_returns_snippets(services: Services) -> None:
    call(
        services,
        "qe_memory_store",
        {
            "key": "flaky/login",
            "value": {"why": "timeout waiting for the redirect"},
            "tags": ["flaky", "auth"],
            "namespace": "proj",
        },
    )
    call(
        services,
        "qe_memory_store",
        {"key": "notes", "value": "login works, no timeout seen", "namespace": "proj"},
    )
    call(services, "qe_memory_store", {"key": "coverage/api", "value": {"lines": 80}, "namespace": "proj"})

    result = call(services, "qe_memory_search", {"query": "login timeout"})
    assert result["total"] == 2 and keys_of(result) == ["flaky/login", "notes"]
    first = result["matches"][0]
    assert first["score"] > result["matches"][1]["score"]
    assert "**timeout**" in first["snippet"] and first["tags"] == ["auth", "flaky"]

    tagged = call(services, "qe_memory_search", {"query": "timeout", "tags": ["flaky"], "namespace": "proj"})
    assert keys_of(tagged) == ["flaky/login"] and tagged["total"] == 1

    listed = call(services, "qe_memory_search", {"pattern": "*/*", "limit": 1})
    assert listed["total"] == 2 and keys_of(listed) == ["coverage/api"]
    assert listed["matches"][0]["score"] is None and listed["matches"][0]["snippet"] is None
    assert call(services, "qe_memory_search", {"query": "timeout", "namespace": "other"})["total"] == 0


def test_search_by_glob_prefix_and_namespace_with_paging(services: Services) -> None:
    for i in range(5):
        call(services, "qe_memory_store", {"key": f"flaky/t{i}", "value": {"i": i}, "namespace": "proj"})
    call(services, "qe_memory_store", {"key": "flaky/t0", "value": "other", "namespace": "other"})
    call(services, "qe_memory_store", {"key": "coverage/x", "value": 0, "namespace": "proj"})

    page = call(services, "qe_memory_search", {"pattern": "flaky/*", "limit": 2})
    assert page["total"] == 6
    assert [(m["namespace"], m["key"], m["value"]) for m in page["matches"]] == [
        ("other", "flaky/t0", "other"),
        ("proj", "flaky/t0", {"i": 0}),
    ]
    scoped = call(services, "qe_memory_search", {"prefix": "flaky/", "namespace": "proj", "offset": 3})
    assert scoped["total"] == 5 and keys_of(scoped) == ["flaky/t3", "flaky/t4"]


def test_a_query_without_words_is_an_error_that_says_what_to_send(services: Services) -> None:
    with pytest.raises(ToolError, match="no words to search for; give one or more words"):
        call(services, "qe_memory_search", {"query": "*** ---"})


@pytest.mark.parametrize(
    ("name", "arguments", "expected"),
    [
        (
            "qe_memory_store",
            {"key": "k" * 513, "value": 1},
            "key is 513 characters; keys must be 1..512 characters (memory.maxKeyLength = 512)",
        ),
        ("qe_memory_retrieve", {"key": ""}, "keys must be 1..512 characters"),
        (
            "qe_memory_store",
            {"key": "k", "value": "x" * (1024 * 1024)},
            "value is 1048578 bytes as JSON; the limit is memory.maxValueBytes = 1048576 bytes",
        ),
        (
            "qe_memory_store",
            {"key": "k", "value": 1, "metadata": {"x": "y" * (1024 * 1024)}},
            "metadata is 1048584 bytes as JSON; the limit is memory.maxValueBytes",
        ),
        ("qe_memory_store", {"key": "k", "value": 1, "ttl_seconds": 0}, "ttlSeconds is 0"),
        ("qe_memory_store", {"key": "k", "value": 1, "ttl_seconds": 400_000_000}, "<= 315360000 (10 years)"),
        ("qe_memory_retrieve", {"key": "k", "namespace": "default\n"}, "must match memory.namespacePattern"),
        ("qe_memory_store", {"key": "k", "value": 1, "namespace": "has space"}, "'has space' is not allowed"),
        ("qe_memory_search", {"namespace": "-bad"}, "must match memory.namespacePattern"),
        ("qe_memory_search", {"limit": 0}, "limit is 0; it must be 1..500"),
        ("qe_memory_search", {"offset": -1}, "offset is -1"),
    ],
)
def test_limit_breaches_are_tool_errors_naming_the_limit_and_its_value(
    services: Services, name: str, arguments: dict[str, Any], expected: str
) -> None:
    # Built without decoding, as a caller that bypasses the schema (CLI, fleet RPC) would.
    args = SPECS[name].input_type(**arguments)
    with pytest.raises(ToolError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        run(services, name, args)
    assert services.memory.search() == ([], 0)


def test_the_limits_follow_the_memory_config(tmp_path: pathlib.Path) -> None:
    svc = make_services(tmp_path, max_key_length=600, max_value_bytes=40, namespace_pattern="[a-z]+")
    try:
        assert call(svc, "qe_memory_store", {"key": "k" * 600, "value": 1})["version"] == 1
        with pytest.raises(ToolError, match="key is 601 characters.*maxKeyLength = 600"):
            call(svc, "qe_memory_store", {"key": "k" * 601, "value": 1})
        with pytest.raises(
            ToolError, match="value is 42 bytes as JSON; the limit is memory.maxValueBytes = 40"
        ):
            call(svc, "qe_memory_store", {"key": "k", "value": "x" * 40})
        with pytest.raises(ToolError, match=r"'team-a' is not allowed: it must match .* = '\[a-z\]\+'"):
            call(svc, "qe_memory_store", {"key": "k", "value": 1, "namespace": "team-a"})
        assert call(svc, "qe_memory_retrieve", {"key": "k", "namespace": "teama"})["found"] is False
    finally:
        svc.close()


def _config_errors(tmp_path: pathlib.Path, text: str) -> list[str]:
    path = tmp_path / "qe-mcp.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.errors


def test_memory_and_learning_blocks_load_from_yaml(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "qe-mcp.yaml"
    path.write_text(
        "memory: {maxKeyLength: 64, namespacePattern: '[a-z]{1,8}', purgeIntervalMs: 500}\n"
        "learning: {dedupeThreshold: 0.8, promotionMinSuccesses: 5}\n"
    )
    cfg = load_config(path)
    assert (cfg.memory.max_key_length, cfg.memory.namespace_pattern, cfg.memory.purge_interval_ms) == (
        64,
        "[a-z]{1,8}",
        500,
    )
    assert (cfg.learning.dedupe_threshold, cfg.learning.promotion_min_successes) == (0.8, 5)
    assert cfg.learning.promotion_min_success_rate == 0.7


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            "memory:\n  namespacePattern: '[a-z'\n",
            ":2: memory.namespacePattern: is not a valid regular expression",
        ),
        (
            "memory:\n  namespacePattern: '[A-Z]+'\n",
            ":2: memory.namespacePattern: does not accept the default namespace `default`",
        ),
        ("memory:\n  maxValueBytes: 0\n", ":2: memory.maxValueBytes: must be at least 1"),
        ("memory:\n  purgeIntervalMs: 0\n", ":2: memory.purgeIntervalMs: must be greater than 0"),
        ("memory:\n  maxKeyLenght: 10\n", "unknown key `maxKeyLenght`; did you mean `maxKeyLength`?"),
        (
            "learning:\n  dedupeThreshold: 90\n",
            ":2: learning.dedupeThreshold: must be a fraction between 0 and 1",
        ),
        ("learning:\n  promotionMinSuccesses: 0\n", ":2: learning.promotionMinSuccesses: must be at least 1"),
    ],
)
def test_bad_memory_and_learning_settings_name_the_key_and_line(
    tmp_path: pathlib.Path, text: str, fragment: str
) -> None:
    (error,) = _config_errors(tmp_path, text)
    assert fragment in error


# --- over HTTP, against a real server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def purging_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path_factory.mktemp("memory-tools"), {"memory": {"purgeIntervalMs": 100}})
    yield srv
    srv.stop()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _text(result: Any) -> str:
    return "\n".join(block.text for block in result.content if getattr(block, "type", "") == "text")


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["2026-07-28", "legacy"])
async def test_tags_search_and_namespace_header_through_the_official_client(
    purging_server: ServerProcess, mode: str
) -> None:
    namespace = f"client-{mode}"
    async with Client(purging_server.url, mode=mode) as client:  # type: ignore[arg-type]
        stored = await client.call_tool(
            "qe_memory_store",
            {
                "key": "flaky/checkout",
                "value": {"why": "socket timeout in payment step"},
                "namespace": namespace,
                "tags": ["flaky"],
                "metadata": {"ticket": "QE-7"},
            },
        )
        assert not stored.is_error, _text(stored)
        # The modern client mirrors `namespace` as Mcp-Param-Namespace; the server checks it matches.
        found = await client.call_tool(
            "qe_memory_search", {"query": "payment timeout", "namespace": namespace, "tags": ["flaky"]}
        )
        assert not found.is_error, _text(found)
        content = found.structured_content
        assert content is not None and content["total"] == 1
        assert "**payment**" in content["matches"][0]["snippet"]
        assert content["matches"][0]["metadata"] == {"ticket": "QE-7"}

        too_long = await client.call_tool(
            "qe_memory_store", {"key": "k" * 600, "value": 1, "namespace": namespace}
        )
        assert too_long.is_error and "memory.maxKeyLength = 512" in _text(too_long)


@pytest.mark.anyio
async def test_learning_tools_through_the_official_client(purging_server: ServerProcess) -> None:
    async with Client(purging_server.url) as client:
        taught = await client.call_tool(
            "qe_learn_pattern",
            {
                "pattern": "mock the clock with freezegun",
                "patternType": "mock",
                "domain": "scheduling",
                "language": "python",
                "framework": "pytest",
                "confidence": 0.9,
            },
        )
        assert not taught.is_error, _text(taught)
        pid = taught.structured_content["pattern"]["id"]  # type: ignore[index]
        status = await client.call_tool("qe_learn_status", {"domain": "scheduling"})
        assert not status.is_error, _text(status)
        assert status.structured_content["topPatterns"][0]["id"] == pid  # type: ignore[index]


def test_expired_entries_are_purged_from_disk_in_the_background(tmp_path: pathlib.Path) -> None:
    srv = start_server(tmp_path, {"memory": {"purgeIntervalMs": 100}})
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": "qe_memory_store",
            "arguments": {"key": "gone-soon", "value": 1, "ttlSeconds": 0.2},
        },
    }
    try:
        _post(srv, body)
        body["params"]["arguments"] = {"key": "stays", "value": 2}  # type: ignore[index]
        _post(srv, body)
        time.sleep(0.6)  # past the TTL and several purge intervals
    finally:
        assert srv.stop() == 0
    # The running server holds its database exclusively; once it has stopped, the file tells the truth.
    with contextlib.closing(sqlite3.connect(srv.state / "memory.db")) as db:
        remaining = db.execute("SELECT key FROM memory_entries WHERE key IN ('gone-soon', 'stays')").fetchall()
    assert remaining == [("stays",)]


def _post(srv: ServerProcess, body: dict[str, Any]) -> None:
    """A handshake-free legacy-shaped call is refused, so this uses the 2026-07-28 envelope and headers."""
    from tests.test_http_edges import modern, request

    envelope, headers = modern("tools/call", body["params"])
    status, _, raw = request(srv, "POST", body=envelope, headers=headers)
    assert status == 200 and b'"isError":false' in raw, raw
