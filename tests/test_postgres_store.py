"""The appliance on PostgreSQL (store.url), run as users run it: real `aqe-v3 mcp start` processes against a
real cluster, the official MCP client, kill -9 under write load, a server that goes away and comes back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters
from pg import Blocking, PostgresServer, close_pg_stores, open_pg_stores

from qe_appliance.config import ConfigError, load_config
from qe_appliance.store.database import StoreError
from tests.conftest import start_server, write_config
from tests.test_http_edges import modern, request
from tests.test_memory_durability import Writer, call, memory_args

REPO = Path(__file__).resolve().parents[1]


def pg_block(postgres: PostgresServer) -> dict[str, Any]:
    """store: a fresh database over loopback TCP, the password from a file (as an operator sets it up)."""
    return {"store": {"url": postgres.tcp_url(postgres.database()), "passwordFile": str(postgres.password_file)}}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qe_appliance.cli", *args], capture_output=True, text=True, timeout=60, cwd=REPO
    )


def test_two_servers_on_one_database_share_memory_through_the_official_client(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    store = pg_block(postgres)
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
    first = start_server(tmp_path / "a", store)
    second = start_server(tmp_path / "b", store)
    try:
        async def session() -> None:
            async with Client(first.url) as one, Client(second.url) as other:
                stored = await one.call_tool(
                    "qe_memory_store",
                    {"key": "flaky/login", "value": {"why": "Timeouts on the café API"}, "tags": ["flaky"],
                     "ttlSeconds": 3600},
                )
                assert stored.structured_content["persisted"] is True, stored
                got = await other.call_tool("qe_memory_retrieve", {"key": "flaky/login"})
                assert got.structured_content["found"] is True
                assert got.structured_content["value"] == {"why": "Timeouts on the café API"}
                found = await other.call_tool("qe_memory_search", {"query": "timeout cafe", "tags": ["flaky"]})
                assert [hit["key"] for hit in found.structured_content["matches"]] == ["flaky/login"], found
                learned = await other.call_tool(
                    "qe_learn_pattern",
                    {"pattern": "assert parse('') raises ValueError", "patternType": "edge-case",
                     "domain": "parsing", "language": "python", "confidence": 0.8},
                )
                assert learned.structured_content["action"] == "created"
                status = await one.call_tool("qe_learn_status", {"domain": "parsing"})
                assert status.structured_content["totals"]["patterns"] == 1

        anyio.run(session)
        # Nothing of the stores went to the state directories.
        assert not list(first.state.glob("*.db")) and not list(second.state.glob("*.db"))
    finally:
        first.stop()
        second.stop()


def test_every_acknowledged_write_survives_kill_9_under_write_load(postgres: PostgresServer, tmp_path: Path) -> None:
    store = pg_block(postgres)
    srv = start_server(tmp_path, store)
    deadline = time.monotonic() + 30
    writers = [Writer(srv, "qe_memory_store", memory_args(w), deadline) for w in range(3)]
    try:
        for writer in writers:
            writer.start()
        while time.monotonic() < deadline and sum(len(w.acked) for w in writers) < 150:
            time.sleep(0.01)
        assert all(writer.is_alive() for writer in writers), "a writer stopped before the kill"
        os.kill(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait(timeout=5)
        for writer in writers:
            writer.join(timeout=10)
    finally:
        srv.stop()
    assert srv.proc.returncode == -signal.SIGKILL
    acked = [args for writer in writers for args in writer.acked]
    assert len(acked) >= 150

    again = start_server(tmp_path, store)
    try:
        for args in acked:
            got = call(again, "qe_memory_retrieve", {"key": args["key"], "namespace": "crash"})
            assert got["found"] is True, f"acknowledged key {args['key']} was lost"
            assert (got["value"], got["tags"]) == (args["value"], sorted(args["tags"]))
        found = call(again, "qe_memory_search", {"query": "durable", "namespace": "crash", "tags": ["crash"]})
        # Each writer may have had one more store committed but not yet answered when it was killed.
        assert len(acked) <= found["total"] <= len(acked) + len(writers)
    finally:
        again.stop()


def test_a_lost_server_makes_readiness_503_and_calls_fail_retryably_until_it_is_back(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    srv = start_server(tmp_path, pg_block(postgres))
    try:
        assert call(srv, "qe_memory_store", {"key": "before", "value": 1})["persisted"] is True
        read = {"uri": "aqe://memory/default/before"}
        body, headers = modern("resources/read", read)
        headers["Mcp-Name"] = read["uri"]
        status, _, raw = request(srv, "POST", body=body, headers=headers)
        assert status == 200 and json.loads(json.loads(raw)["result"]["contents"][0]["text"])["value"] == 1
        postgres.stop("fast")
        try:
            # A resource read fails as a tool call does: unready (503), or a JSON-RPC error naming the store.
            status, _, raw = request(srv, "POST", body=body, headers=headers)
            assert status == 503 or (json.loads(raw)["error"]["code"] == -32603 and b"PostgreSQL" in raw), raw
            body, headers = modern("tools/call", {"name": "qe_memory_store", "arguments": {"key": "k", "value": 2}})
            status, _, raw = request(srv, "POST", body=body, headers=headers)
            assert b'"persisted":true' not in raw
            assert status == 503 or b'"isError":true' in raw, raw
            assert b"PostgreSQL" in raw and (b"Retry" in raw or status == 503), raw
            deadline = time.monotonic() + 10
            while (status := request(srv, "GET", "/readyz")[0]) != 503 and time.monotonic() < deadline:
                time.sleep(0.1)
            status, _, raw = request(srv, "GET", "/readyz")
            assert status == 503 and b"PostgreSQL" in raw and b"unreachable" in raw, raw
            assert srv.proc.poll() is None
        finally:
            postgres.start()
        deadline = time.monotonic() + 15
        while request(srv, "GET", "/readyz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert request(srv, "GET", "/readyz")[0] == 200
        assert call(srv, "qe_memory_store", {"key": "after", "value": 3})["persisted"] is True
        assert call(srv, "qe_memory_retrieve", {"key": "before"})["value"] == 1
    finally:
        srv.stop()


def test_an_unreachable_server_or_a_wrong_password_stops_start_up_with_exit_2(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password\n")
    name = postgres.database()
    cases = {
        # Nothing listens on port 1 of loopback.
        "unreachable": ({"url": "postgresql://aqe@127.0.0.1:1/aqe"}, "cannot reach PostgreSQL"),
        "password": ({"url": postgres.tcp_url(name), "passwordFile": str(wrong)}, "refused the password"),
        "database": ({"url": postgres.tcp_url("no_such_db"), "passwordFile": str(postgres.password_file)},
                     "createdb"),
    }
    for case, (block, message) in cases.items():
        config = write_config(tmp_path / f"{case}.yaml", tmp_path / "state", {"store": block})
        done = cli("mcp", "start", "--config", str(config))
        assert done.returncode == 2, (case, done.stderr)
        assert message in done.stderr, (case, done.stderr)


def test_state_backup_with_a_postgresql_store_says_to_use_pg_dump(tmp_path: Path) -> None:
    config = write_config(tmp_path / "qe-mcp.yaml", tmp_path / "state",
                          {"store": {"url": "postgresql://aqe@db.example.com:5432/aqe"}})
    done = cli("state", "backup", str(tmp_path / "b"), "--config", str(config))
    assert done.returncode == 2 and "pg_dump" in done.stderr, done.stderr
    done = cli("state", "restore", str(tmp_path / "b"), "--config", str(config))
    assert done.returncode == 2 and "pg_restore" in done.stderr, done.stderr
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"url": "postgresql://aqe:secret@db:5432/aqe"}, "holds a password; remove it from the URL and put it in a "
                                                         "file named by store.passwordFile"),
        ({"url": "mysql://aqe@db/aqe"}, "must be a postgresql:// URL"),
        ({"url": "postgresql://aqe@db:5432/"}, "names no database"),
        ({"url": "postgresql://db:5432/aqe"}, "names no user"),
        ({"url": "postgresql://aqe@db/aqe?sslmod=require"}, "unknown parameter(s) sslmod"),
        ({"passwordFile": "/etc/aqe/pw"}, "store.url is empty"),
        ({"uri": "postgresql://aqe@db/aqe"}, "uri"),
    ],
)
def test_store_settings_are_validated_with_the_fix(tmp_path: Path, block: dict[str, str], message: str) -> None:
    config = tmp_path / "qe-mcp.yaml"
    config.write_text(json.dumps({"store": block}))
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert message in str(caught.value), str(caught.value)
    assert "store." in str(caught.value)


def test_text_postgresql_cannot_hold_is_refused_with_what_to_change(postgres: PostgresServer) -> None:
    stores, loop = open_pg_stores(postgres.socket_url(postgres.database()))
    try:
        memory = Blocking(stores.memory, loop)
        with pytest.raises(StoreError, match="key contains a NUL character"):
            memory.put("default", "a\x00b", b"1", None)
        with pytest.raises(StoreError, match="tags contains a NUL character"):
            memory.put("default", "k", b"1", None, tags=["ok", "b\x00d"])
        assert memory.get("default", "a\x00b") is None
        assert memory.search(query="a\x00b") == ([], 0)
    finally:
        close_pg_stores(stores, loop)


def test_a_database_from_a_newer_build_is_refused_and_migration_runs_once(postgres: PostgresServer) -> None:
    url = postgres.socket_url(postgres.database())
    for _ in range(2):  # the second start finds the schema current and changes nothing
        stores, loop = open_pg_stores(url)
        close_pg_stores(stores, loop)
    name = url.split("/")[3].split("?")[0]
    # Each schema step is recorded once, however many times the stores open.
    assert postgres.execute("SELECT count(*) - count(DISTINCT version) FROM aqe_schema_version", database=name) == 0
    postgres.execute("INSERT INTO aqe_schema_version VALUES (99)", database=name)
    with pytest.raises(StoreError, match="schema version 99, newer than this build"):
        open_pg_stores(url)


def test_a_stdio_session_stores_in_postgresql_what_an_http_server_reads(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    store = pg_block(postgres)
    config = write_config(tmp_path / "stdio.yaml", tmp_path / "stdio-state", store)
    (tmp_path / "http").mkdir()
    srv = start_server(tmp_path / "http", store)
    try:
        async def session() -> None:
            params = StdioServerParameters(
                command=sys.executable,
                args=["-m", "qe_appliance.cli", "mcp", "start", "--stdio", "--config", str(config)],
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            async with Client(params) as client:
                stored = await client.call_tool("qe_memory_store", {"key": "from-stdio", "value": [1, "two"]})
                assert stored.structured_content["persisted"] is True, stored

        anyio.run(session)
        assert call(srv, "qe_memory_retrieve", {"key": "from-stdio"})["value"] == [1, "two"]
    finally:
        srv.stop()
