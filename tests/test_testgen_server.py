"""qe_test_generate through a real server with the official client: the jobs run on the agent fleet, the
tests are verified by pytest on an agent, progress arrives per target, and bad input is an isError result."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from mcp import Client
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ServerProcess, start_server
from tests.fixtures.testgen.samples import ROOT as FIXTURES
from tests.test_http_edges import request

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def testgen_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(
        tmp_path_factory.mktemp("testgen"),
        {"server": {"workspaceRoots": [str(FIXTURES)], "allowUnauthenticatedCodeExecution": True}},
    )
    yield server
    server.stop()


def text(result: Any) -> str:
    return "\n".join(block.text for block in result.content if getattr(block, "type", "") == "text")


async def completed_on_agents(client: Client) -> int:
    status = (await client.call_tool("qe_fleet_status", {"verbose": True})).structured_content
    return sum(agent["completed"] for agent in status["agents"])


async def test_generate_and_verify_on_the_fleet_with_progress_per_target(
    testgen_server: ServerProcess,
) -> None:
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async with Client(testgen_server.url) as client:
        before = await completed_on_agents(client)
        result = await client.call_tool(
            "qe_test_generate",
            {"path": "shopkit/textutil.py", "verify": True, "oracle": "static"},
            progress_callback=on_progress,
        )
        # The reading, each target's generation and the rendering with its pytest run were agent jobs.
        assert await completed_on_agents(client) - before == len(result.structured_content["targets"]) + 2
    assert not result.is_error, text(result)
    generated = result.structured_content
    sized = (result.meta or {}).get("io.aqe/resultText")
    if sized is None:
        assert json.loads(text(result)) == generated
    else:  # over server.maxResultTextBytes: the text is a summary, structuredContent holds it all
        assert sized["complete"] is False and sized["bytes"] > sized["limit"] >= len(text(result).encode())
    targets = [target["name"] for target in generated["targets"]]
    assert "slugify" in targets and "parse_duration" in targets
    # One notification per target as its job finishes, then the pytest run starting and done.
    assert [value for value, _, _ in progress] == list(range(1, len(targets) + 3))
    assert {total for _, total, _ in progress} == {len(targets) + 2}
    assert (
        progress[-1][2]
        == f"{generated['verification']['passed']} passed, {generated['verification']['failed']} failed"
    )
    assert {message.split(":")[0] for _, _, message in progress[: len(targets)] if message} == set(targets)
    verification = generated["verification"]
    assert verification["passed"] + verification["failed"] + verification["errors"] == len(generated["tests"])
    assert verification["passed"] > 0.9 * len(generated["tests"])
    assert all(test["status"] in ("passed", "failed", "error") for test in generated["tests"])
    assert "Traceback" not in testgen_server.log


async def test_observed_tests_on_the_fleet_pass_and_report_what_was_measured(
    testgen_server: ServerProcess,
) -> None:
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async with Client(testgen_server.url) as client:
        before = await completed_on_agents(client)
        result = await client.call_tool(
            "qe_test_generate",
            {"path": "shopkit/textutil.py", "budgetSeconds": 3},
            progress_callback=on_progress,
        )
        # Reading, observing, and the pytest run: three jobs on the agents.
        assert await completed_on_agents(client) - before == 3
    assert not result.is_error, text(result)
    generated = result.structured_content
    assert generated["oracle"] == "observed"
    assert [value for value, _, _ in progress] == [0, 1, 3]
    measured = generated["measured"]
    assert measured["testsKept"] == len(generated["tests"]) > 0
    assert measured["after"]["linesCovered"] > measured["before"]["linesCovered"]
    assert 0 < measured["mutants"]["killed"] <= measured["mutants"]["evaluated"]
    assert "Traceback" not in testgen_server.log


async def test_bad_input_through_the_server(testgen_server: ServerProcess) -> None:
    async with Client(testgen_server.url) as client:
        syntax = await client.call_tool("qe_test_generate", {"source": "def broken(:\n    pass\n"})
        assert syntax.is_error and "line 1, column 12" in text(syntax)
        outside = await client.call_tool("qe_test_generate", {"path": "../../conftest.py"})
        assert outside.is_error and "outside the workspace roots" in text(outside)
        empty = await client.call_tool("qe_test_generate", {"source": "_private = 1\n"})
        assert empty.is_error and "nothing public to test" in text(empty)
        source = "raise RuntimeError('no config')\n\n\ndef f(x: int) -> int:\n    return x\n"
        unimportable = await client.call_tool("qe_test_generate", {"source": source, "verify": True})
        assert unimportable.is_error
        assert "RuntimeError: no config" in text(unimportable) and "Traceback" not in text(unimportable)
        wrong = await client.call_tool("qe_test_generate", {"source": "def f(): pass", "style": "fuzzy"})
        assert wrong.is_error and "style" in text(wrong)


async def test_metrics_tell_callers_mistakes_from_server_faults_and_verify_runs_apart(
    testgen_server: ServerProcess,
) -> None:
    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, _, raw = request(testgen_server, "GET", "/metrics")
        assert status == 200
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(raw.decode()) for s in f.samples
        }

    def errors(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], kind: str) -> float:
        return samples.get(("aqe_mcp_tool_errors_total", (("kind", kind), ("tool", "qe_test_generate"))), 0.0)

    def calls(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], mode: str) -> float:
        key = ("aqe_mcp_tool_duration_seconds_count", (("mode", mode), ("tool", "qe_test_generate")))
        return samples.get(key, 0.0)

    before = scrape()
    async with Client(testgen_server.url) as client:
        for _ in range(3):
            wrong = await client.call_tool("qe_test_generate", {"source": "def f(): pass", "style": "fuzzy"})
            assert wrong.is_error
        verified = await client.call_tool(
            "qe_test_generate", {"source": "def f(x: int) -> int:\n    return x\n", "verify": True}
        )
        assert not verified.is_error, text(verified)
        plain = await client.call_tool("qe_test_generate", {"source": "def f(x: int) -> int:\n    return x\n"})
        assert not plain.is_error, text(plain)
        static = await client.call_tool(
            "qe_test_generate", {"source": "def f(x: int) -> int:\n    return x\n", "oracle": "static"}
        )
        assert not static.is_error, text(static)
    after = scrape()
    # Bad arguments are the caller's mistakes: counted as such, never as the server's faults.
    assert errors(after, "caller") - errors(before, "caller") == 3
    assert errors(after, "server") == errors(before, "server")
    # The verify run is timed under its own mode (and judged against its own target, 10 s by default).
    assert calls(after, "verify") - calls(before, "verify") == 1
    # Observing calls (the default oracle here) has its own mode too; static generation and refusals have none.
    assert calls(after, "observed") - calls(before, "observed") == 1
    assert calls(after, "default") - calls(before, "default") == 4
    target = ("aqe_mcp_tool_target_latency_seconds", (("mode", "verify"), ("tool", "qe_test_generate")))
    assert after[target] == 10.0
