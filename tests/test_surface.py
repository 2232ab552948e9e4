"""Resources, prompts, completions and results sized for clients, through the official MCP client in both eras
(HTTP and stdio), and the wire details the client hides (statuses, batches) over raw HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError
from mcp_types import PromptReference, ResourceTemplateReference

from qe_appliance.mcp.completion import workspace_paths
from qe_appliance.mcp.dispatcher import INSTRUCTIONS
from qe_appliance.tools import ALL_TOOLS
from qe_appliance.workspace import Workspace
from tests.conftest import ServerProcess, start_server, stdio_command
from tests.sample_reports import lcov_gaps as lcov
from tests.test_http_edges import initialize, legacy, modern, request, rpc_error

pytestmark = pytest.mark.anyio

LIMIT = 32_768


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# 90 functions with a branch each: the static module for it is well over 32 KiB.
BIG_SOURCE = "".join(
    f"def f{i}(x: int, y: str = 'a') -> int:\n    if x > {i}:\n        raise ValueError('too big')\n"
    f"    return x + len(y)\n\n\n"
    for i in range(90)
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ws")
    (root / "src").mkdir()
    (root / "src" / "shop.py").write_text("def total(xs: list[int]) -> int:\n    return sum(xs)\n")
    (root / "src" / "shipping.py").write_text("RATE = 2\n")
    (root / "reports").mkdir()
    (root / "reports" / "junit.xml").write_text('<testsuite name="s" tests="1"><testcase name="t"/></testsuite>')
    (root / ".hidden").write_text("")
    (root / "many").mkdir()
    for i in range(150):
        (root / "many" / f"f{i:03}.py").write_text("")
    return root


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, workspace: Path) -> Iterator[ServerProcess]:
    server = start_server(tmp_path_factory.mktemp("surface"), {"server": {"workspaceRoots": [str(workspace)]}})
    yield server
    server.stop()


def _text(result: Any) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


async def _seed(client: Client, tag: str) -> dict[str, str]:
    """One of each kind of resource, made by the tools; returns their ids."""
    stored = await client.call_tool(
        "qe_memory_store", {"namespace": f"ns-{tag}", "key": "runs/42", "value": {"flaky": ["test_pay"]}}
    )
    assert not stored.is_error, _text(stored)
    analyzed = await client.call_tool("qe_coverage_analyze", {"content": lcov(3, 2)})
    assert not analyzed.is_error, _text(analyzed)
    task = await client.call_tool(
        "qe_task_orchestrate",
        {"task": {"tool": "qe_memory_store", "inputs": [{"namespace": f"t-{tag}", "key": "a", "value": 1}]},
         "wait": True},
    )
    assert not task.is_error, _text(task)
    generated = await client.call_tool(
        "qe_test_generate", {"source": "def add(a: int, b: int) -> int:\n    return a + b\n", "oracle": "static"}
    )
    assert not generated.is_error, _text(generated)
    return {
        "namespace": f"ns-{tag}",
        "report": analyzed.structured_content["reportId"],
        "task": task.structured_content["taskId"],
        "generation": generated.structured_content["generationId"],
        "module": generated.structured_content["module"],
    }


async def _all_resources(client: Client) -> list[Any]:
    listed, cursor = [], None
    while True:
        page = await client.list_resources(cursor=cursor, cache_mode="bypass")
        listed += page.resources
        cursor = page.next_cursor
        if cursor is None:
            return listed


async def _read(client: Client, uri: str) -> Any:
    result = await client.read_resource(uri, cache_mode="bypass")
    (contents,) = result.contents
    assert contents.uri == uri
    return contents


async def _exercise_resources(client: Client, tag: str, modern_era: bool) -> None:
    ids = await _seed(client, tag)
    report, task, generation = ids["report"], ids["task"], ids["generation"]
    memory = f"aqe://memory/{ids['namespace']}/runs%2F42"

    listed = {r.uri: r for r in await _all_resources(client)}
    for uri in (f"aqe://coverage/{report}", f"aqe://tasks/{task}", f"aqe://tests/{generation}", memory,
                "aqe://quality/policies", "aqe://dashboard"):
        assert uri in listed, uri
        assert listed[uri].name and listed[uri].title and listed[uri].mime_type
    assert listed[f"aqe://tests/{generation}"].mime_type == "text/x-python"
    # Deterministic order: listing twice gives the same sequence.
    assert [r.uri for r in await _all_resources(client)][:6] == list(listed)[:6]

    templates = await client.list_resource_templates(cache_mode="bypass")
    uri_templates = {t.uri_template for t in templates.resource_templates}
    assert {"aqe://coverage/{reportId}", "aqe://coverage/{reportId}/gaps{?file}", "aqe://memory/{namespace}/{key}",
            "aqe://tasks/{taskId}", "aqe://tests/{generationId}"} <= uri_templates

    text = (await _read(client, f"aqe://coverage/{report}")).text
    assert text.startswith(f"# Coverage report {report}") and "| src/mod2.py |" in text
    gaps = json.loads((await _read(client, f"aqe://coverage/{report}/gaps")).text)
    assert gaps["gapsTotal"] == 6 and len(gaps["gaps"]) == 6
    one_file = json.loads((await _read(client, f"aqe://coverage/{report}/gaps?file=src%2Fmod1.py")).text)
    assert {gap["file"] for gap in one_file["gaps"]} == {"src/mod1.py"} and len(one_file["gaps"]) == 2
    entry = json.loads((await _read(client, memory)).text)
    assert entry["key"] == "runs/42" and entry["value"] == {"flaky": ["test_pay"]}
    # An unencoded '/' in the key reads the same entry.
    assert json.loads((await _read(client, f"aqe://memory/{ids['namespace']}/runs/42")).text) == entry
    task_body = json.loads((await _read(client, f"aqe://tasks/{task}")).text)
    assert task_body["taskId"] == task and task_body["status"] == "completed" and len(task_body["subtasks"]) == 1
    module = await _read(client, f"aqe://tests/{generation}")
    assert module.mime_type == "text/x-python" and module.text == ids["module"]
    policies = json.loads((await _read(client, "aqe://quality/policies")).text)
    assert {"default", "strict"} <= set(policies)
    assert "generatedAt" in json.loads((await _read(client, "aqe://dashboard")).text)

    # resource not found: -32602 in 2026-07-28, -32002 before, both with the URI in data.
    missing = "aqe://coverage/cov-0000000000000000"
    with pytest.raises(MCPError) as err:
        await client.read_resource(missing, cache_mode="bypass")
    assert err.value.error.code == (-32602 if modern_era else -32002)
    assert err.value.error.data == {"uri": missing} and "not found" in err.value.error.message
    with pytest.raises(MCPError) as err:
        await client.list_resources(cursor="bm90LWEtY3Vyc29y", cache_mode="bypass")
    assert err.value.error.code == -32602 and "cursor" in err.value.error.message


async def _exercise_prompts(client: Client, report: str) -> None:
    listed = await client.list_prompts(cache_mode="bypass")
    by_name = {p.name: p for p in listed.prompts}
    assert list(by_name) == ["generate-tests", "review-coverage", "release-gate", "triage-failures", "explain-gap"]
    assert [(a.name, a.required) for a in by_name["release-gate"].arguments] == [
        ("policy", False), ("report", True), ("junit", False)]

    got = await client.get_prompt("generate-tests", {"path": "src/shop.py"})
    (message,) = got.messages
    assert message.role == "user" and '"path": "src/shop.py"' in message.content.text

    review = await client.get_prompt("review-coverage", {"report": report})
    embedded, ask = review.messages
    assert embedded.content.type == "resource" and embedded.content.resource.uri == f"aqe://coverage/{report}"
    assert embedded.content.resource.text.startswith(f"# Coverage report {report}")
    assert "qe_coverage_gaps" in ask.content.text

    explain = await client.get_prompt("explain-gap", {"reportId": report, "file": "src/mod1.py"})
    gaps = json.loads(explain.messages[0].content.resource.text)
    assert {gap["file"] for gap in gaps["gaps"]} == {"src/mod1.py"}

    gate = await client.get_prompt("release-gate", {"report": report, "policy": "strict", "junit": "reports/junit.xml"})
    assert '"policyName": "strict"' in gate.messages[-1].content.text

    triage = await client.get_prompt("triage-failures", {"junit": "reports/junit.xml"})
    assert '"junitXml": "reports/junit.xml"' in triage.messages[0].content.text

    with pytest.raises(MCPError) as err:
        await client.get_prompt("release-gate", {"policy": "strict"})
    assert err.value.error.code == -32602 and "'report'" in err.value.error.message
    with pytest.raises(MCPError) as err:
        await client.get_prompt("no-such-prompt", {})
    assert err.value.error.code == -32602 and "generate-tests" in err.value.error.message


async def _exercise_completions(client: Client, report: str, namespace: str) -> None:
    async def values(ref: Any, name: str, value: str, context: dict[str, str] | None = None) -> list[str]:
        done = await client.complete(ref, {"name": name, "value": value}, context)
        completion = done.completion
        assert completion.has_more is False and completion.total == len(completion.values)
        return completion.values

    path = PromptReference(type="ref/prompt", name="generate-tests")
    assert await values(path, "path", "src/sh") == ["src/shipping.py", "src/shop.py"]
    assert await values(path, "path", "") == ["many/", "reports/", "src/"]  # hidden files only when asked for
    assert await values(path, "path", "../") == []  # nothing outside the workspace roots
    assert await values(PromptReference(type="ref/prompt", name="release-gate"), "policy", "st") == ["strict"]
    assert await values(PromptReference(type="ref/prompt", name="release-gate"), "junit", "reports/") == [
        "reports/junit.xml"]
    assert report in await values(PromptReference(type="ref/prompt", name="explain-gap"), "reportId", "cov-")
    files = await values(PromptReference(type="ref/prompt", name="explain-gap"), "file", "src/mod",
                         {"reportId": report})
    assert files == ["src/mod0.py", "src/mod1.py", "src/mod2.py"]
    memory = ResourceTemplateReference(type="ref/resource", uri="aqe://memory/{namespace}/{key}")
    assert namespace in await values(memory, "namespace", "ns-")
    assert await values(memory, "key", "runs", {"namespace": namespace}) == ["runs/42"]
    tasks = ResourceTemplateReference(type="ref/resource", uri="aqe://tasks/{taskId}")
    assert all(value.startswith("task-") for value in await values(tasks, "taskId", "task-")) and await values(
        tasks, "taskId", "task-")
    generations = ResourceTemplateReference(type="ref/resource", uri="aqe://tests/{generationId}")
    assert all(value.startswith("gen-") for value in await values(generations, "generationId", ""))
    gaps = ResourceTemplateReference(type="ref/resource", uri="aqe://coverage/{reportId}/gaps{?file}")
    assert await values(gaps, "file", "src/mod1", {"reportId": report}) == ["src/mod1.py"]
    with pytest.raises(MCPError) as err:
        await client.complete(PromptReference(type="ref/prompt", name="nope"), {"name": "x", "value": ""})
    assert err.value.error.code == -32602


@pytest.mark.parametrize("mode", ["modern", "legacy"])
async def test_resources_prompts_and_completions_over_http(srv: ServerProcess, mode: str) -> None:
    kwargs: dict[str, Any] = {} if mode == "modern" else {"mode": "legacy"}
    async with Client(srv.url, **kwargs) as client:
        assert client.protocol_version == ("2026-07-28" if mode == "modern" else "2025-11-25")
        await _exercise_resources(client, f"http-{mode}", mode == "modern")
        report = (await client.call_tool("qe_coverage_analyze", {"content": lcov(3, 2)})).structured_content
        await _exercise_prompts(client, report["reportId"])
        await _exercise_completions(client, report["reportId"], f"ns-http-{mode}")


async def test_stdio_both_eras_and_subscriptions(tmp_path: Path, workspace: Path) -> None:
    command, args, env = stdio_command(tmp_path, {"server": {"workspaceRoots": [str(workspace)]}})
    params = StdioServerParameters(command=command, args=args, env=env)
    async with Client(params) as client:
        await _exercise_resources(client, "stdio-modern", True)
    updates: list[str] = []

    async def on_message(message: Any) -> None:
        root = getattr(message, "root", message)
        if getattr(root, "method", None) == "notifications/resources/updated":
            updates.append(root.params.uri)

    async with Client(params, mode="legacy", message_handler=on_message) as client:
        await _exercise_resources(client, "stdio-legacy", False)
        report = (await client.call_tool("qe_coverage_analyze", {"content": lcov(3, 2)})).structured_content
        await _exercise_prompts(client, report["reportId"])
        uri = "aqe://memory/ns-stdio-legacy/runs%2F42"
        await client.session.subscribe_resource(uri)
        await client.call_tool("qe_memory_store", {"namespace": "ns-stdio-legacy", "key": "runs/42", "value": 2})
        with anyio.fail_after(10):
            while uri not in updates:
                await anyio.sleep(0.05)


async def test_subscribe_then_updated_over_the_session_stream(srv: ServerProcess) -> None:
    """Handshake era over HTTP: the update arrives on the session's GET stream; unsubscribing stops it. A new
    resource makes the list change, which every session's stream hears."""
    updates: list[str] = []
    list_changed: list[bool] = []

    async def on_message(message: Any) -> None:
        root = getattr(message, "root", message)
        if getattr(root, "method", None) == "notifications/resources/updated":
            updates.append(root.params.uri)
        if getattr(root, "method", None) == "notifications/resources/list_changed":
            list_changed.append(True)

    async with Client(srv.url, mode="legacy", message_handler=on_message) as client:
        await client.call_tool("qe_memory_store", {"namespace": "watch", "key": "a/b", "value": 1})
        uri = "aqe://memory/watch/a%2Fb"
        await client.session.subscribe_resource(uri)
        with pytest.raises(MCPError) as err:
            await client.session.subscribe_resource("aqe://memory/watch/none")
        assert err.value.error.code == -32002
        await client.call_tool("qe_memory_store", {"namespace": "watch", "key": "other", "value": 1})
        with anyio.fail_after(10):
            while True:
                await client.call_tool("qe_memory_store", {"namespace": "watch", "key": "a/b", "value": 2})
                await anyio.sleep(0.2)
                if updates:
                    break
        assert set(updates) == {uri}
        with anyio.fail_after(10):
            while not list_changed:  # "other" was new
                await anyio.sleep(0.05)
        await client.session.unsubscribe_resource(uri)
        seen = len(updates)
        await client.call_tool("qe_memory_store", {"namespace": "watch", "key": "a/b", "value": 3})
        await anyio.sleep(0.5)
        assert len(updates) == seen


@pytest.mark.parametrize("mode", ["modern", "legacy"])
async def test_large_results_come_as_a_summary_with_resource_links(srv: ServerProcess, mode: str) -> None:
    kwargs: dict[str, Any] = {} if mode == "modern" else {"mode": "legacy"}
    async with Client(srv.url, **kwargs) as client:
        analyzed = await client.call_tool("qe_coverage_analyze", {"content": lcov(60)})
        rid = analyzed.structured_content["reportId"]
        gaps = await client.call_tool("qe_coverage_gaps", {"reportId": rid, "minRisk": 0, "limit": 500})
        assert not gaps.is_error
        text = gaps.content[0].text
        assert len(text.encode()) <= LIMIT and "server.maxResultTextBytes" in text
        assert len(gaps.structured_content["gaps"]) == 500 and gaps.structured_content["gapsTotal"] == 600
        links = {block.uri: block for block in gaps.content if block.type == "resource_link"}
        whole, = (uri for uri in links if uri.startswith("aqe://results/"))
        assert f"aqe://coverage/{rid}/gaps" in links
        assert gaps.meta["io.aqe/resultText"]["complete"] is False
        assert gaps.meta["io.aqe/resultText"]["bytes"] > LIMIT
        assert json.loads((await _read(client, whole)).text) == gaps.structured_content
        every = json.loads((await _read(client, f"aqe://coverage/{rid}/gaps")).text)
        assert len(every["gaps"]) == 600

        generated = await client.call_tool("qe_test_generate", {"source": BIG_SOURCE, "oracle": "static",
                                                                 "maxTests": 1000})
        assert not generated.is_error, _text(generated)
        module = generated.structured_content["module"]
        assert len(module.encode()) > LIMIT
        assert len(generated.content[0].text.encode()) <= LIMIT
        tests_uri = f"aqe://tests/{generated.structured_content['generationId']}"
        assert tests_uri in {block.uri for block in generated.content if block.type == "resource_link"}
        assert (await _read(client, tests_uri)).text == module

        # A tool without an outputSchema sends no structuredContent then: the linked resources hold it all.
        inputs = [{"namespace": f"big-{mode}", "key": f"k{i}", "value": "v" * 200} for i in range(120)]
        orchestrated = await client.call_tool(
            "qe_task_orchestrate", {"task": {"tool": "qe_memory_store", "inputs": inputs}, "wait": True})
        assert not orchestrated.is_error and orchestrated.structured_content is None
        linked = [block.uri for block in orchestrated.content if block.type == "resource_link"]
        assert linked[0].startswith("aqe://results/") and linked[1].startswith("aqe://tasks/task-")
        whole = json.loads((await _read(client, linked[0])).text)
        assert len(whole["task"]["subtasks"]) == 120 and whole["task"]["status"] == "completed"
        assert len(json.loads((await _read(client, linked[1])).text)["subtasks"]) == 120

        # A prompt that names a report too large to embed links it instead.
        big = (await client.call_tool("qe_coverage_analyze", {"content": lcov(1500, 1)})).structured_content
        review = await client.get_prompt("review-coverage", {"report": big["reportId"]})
        assert review.messages[0].content.type == "resource_link"
        assert review.messages[0].content.uri == f"aqe://coverage/{big['reportId']}"

        # Under the limit nothing changes: the text is the structured content's JSON.
        small = await client.call_tool("qe_memory_retrieve", {"key": "nothing-here"})
        assert json.loads(small.content[0].text) == small.structured_content and len(small.content) == 1


def test_path_completion_stays_inside_the_roots_and_is_bounded(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "many").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.py").write_text("")
    (root / "escape").symlink_to(outside)
    (root / "mod.py").write_text("")
    for i in range(150):
        (root / "many" / f"f{i:03}.py").write_text("")
    workspace = Workspace([root], 1 << 20)
    assert workspace_paths(workspace, "") == ["many/", "mod.py"]
    assert workspace_paths(workspace, "escape/") == [] and workspace_paths(workspace, "../outside/") == []
    assert workspace_paths(workspace, f"{root}/mo") == [f"{root}/mod.py"]
    assert len(workspace_paths(workspace, "many/f")) == 150


async def test_completion_says_when_there_is_more(srv: ServerProcess, workspace: Path) -> None:
    async with Client(srv.url) as client:
        done = await client.complete(PromptReference(type="ref/prompt", name="generate-tests"),
                                     {"name": "path", "value": "many/f"})
    assert len(done.completion.values) == 100 and done.completion.has_more is True
    assert done.completion.values[0] == "many/f000.py"


def test_descriptions_and_instructions_fit_clients() -> None:
    """Clients cut tool descriptions and server instructions at 2 KB."""
    assert len(INSTRUCTIONS.encode()) < 2048
    for spec in ALL_TOOLS:
        assert len(spec.description.encode()) < 2048, spec.name


# ---- raw HTTP: statuses and batches --------------------------------------------------------------------


def _named(method: str, params: dict[str, Any], name: str) -> tuple[dict, dict]:
    body, headers = modern(method, params)
    headers["Mcp-Name"] = name
    return body, headers


def test_handshake_errors_are_http_200_and_modern_keeps_its_statuses(srv: ServerProcess) -> None:
    sid = initialize(srv)
    status, _, raw = legacy(srv, sid, "no/such/method")
    assert status == 200 and rpc_error(raw)["code"] == -32601
    status, _, raw = legacy(srv, sid, "resources/read", {"uri": "aqe://tasks/task-missing"})
    assert status == 200 and rpc_error(raw) == {
        "code": -32002, "message": rpc_error(raw)["message"], "data": {"uri": "aqe://tasks/task-missing"}}
    status, _, raw = legacy(srv, sid, "prompts/get", {"name": "explain-gap", "arguments": {"file": "a.py"}})
    assert status == 200 and rpc_error(raw)["code"] == -32602 and "'reportId'" in rpc_error(raw)["message"]
    status, _, raw = legacy(srv, sid, "tools/call", {"name": "qe_no_such_tool_at_all"})
    assert status == 200 and rpc_error(raw)["code"] == -32602
    # Transport-level failures keep their 4xx.
    assert legacy(srv, None, "resources/list")[0] == 400
    assert legacy(srv, "no-such-session", "resources/list")[0] == 404
    assert request(srv, "POST", body=b"{not json", headers={"Mcp-Session-Id": sid})[0] == 400

    body, headers = _named("resources/read", {"uri": "aqe://tasks/task-missing"}, "aqe://tasks/task-missing")
    status, _, raw = request(srv, "POST", body=body, headers=headers)
    assert status == 400 and rpc_error(raw)["code"] == -32602 and rpc_error(raw)["data"] == {
        "uri": "aqe://tasks/task-missing"}
    body, headers = modern("resources/subscribe", {"uri": "aqe://dashboard"})
    status, _, raw = request(srv, "POST", body=body, headers=headers)
    assert status == 404 and "subscriptions/listen" in rpc_error(raw)["message"]


def test_mcp_name_is_checked_for_resources_and_prompts(srv: ServerProcess) -> None:
    body, headers = _named("resources/read", {"uri": "aqe://quality/policies"}, "aqe://dashboard")
    status, _, raw = request(srv, "POST", body=body, headers=headers)
    assert status == 400 and rpc_error(raw)["code"] == -32020 and "params.uri" in rpc_error(raw)["message"]
    body, headers = _named("prompts/get", {"name": "triage-failures", "arguments": {"junit": "j.xml"}},
                           "generate-tests")
    status, _, raw = request(srv, "POST", body=body, headers=headers)
    assert status == 400 and rpc_error(raw)["code"] == -32020
    body, headers = _named("resources/read", {"uri": "aqe://quality/policies"}, "aqe://quality/policies")
    status, _, raw = request(srv, "POST", body=body, headers=headers)
    result = json.loads(raw)["result"]
    assert status == 200 and result["cacheScope"] == "public" and result["ttlMs"] > 0


def test_batches_only_in_2025_03_26_sessions(srv: ServerProcess) -> None:
    sid = initialize(srv, "2025-03-26")
    headers = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-03-26"}
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": "two", "method": "prompts/get", "params": {"name": "nope"}},
        {"jsonrpc": "2.0", "id": 3, "method": "resources/read", "params": {"uri": "aqe://quality/policies"}},
    ]
    status, _, raw = request(srv, "POST", body=batch, headers=headers)
    assert status == 200
    replies = {reply["id"]: reply for reply in json.loads(raw)}
    assert set(replies) == {1, "two", 3}
    assert replies[1]["result"] == {} and replies["two"]["error"]["code"] == -32602
    assert "default" in json.loads(replies[3]["result"]["contents"][0]["text"])
    notes = [{"jsonrpc": "2.0", "method": "notifications/initialized"}]
    assert request(srv, "POST", body=notes, headers=headers)[0] == 202

    # 2025-03-26 has no resource_link content: a large result names its resources in the text instead.
    analyze = {"jsonrpc": "2.0", "id": 9, "method": "tools/call",
               "params": {"name": "qe_coverage_analyze", "arguments": {"content": lcov(400), "maxFiles": 400}}}
    status, _, raw = request(srv, "POST", body=analyze, headers=headers)
    result = json.loads(raw)["result"]
    assert status == 200 and [block["type"] for block in result["content"]] == ["text"]
    text = result["content"][0]["text"]
    assert len(text.encode()) <= LIMIT and "aqe://results/res-" in text and "aqe://coverage/cov-" in text

    newer = initialize(srv, "2025-11-25")
    status, _, raw = request(srv, "POST", body=batch, headers={"Mcp-Session-Id": newer})
    assert status == 400 and rpc_error(raw)["code"] == -32600 and "2025-03-26" in rpc_error(raw)["message"]
    body, hdrs = modern("tools/list")
    status, _, raw = request(srv, "POST", body=[body], headers=hdrs)
    assert status == 400 and rpc_error(raw)["code"] == -32600


def test_tools_list_is_deterministic(srv: ServerProcess) -> None:
    body, headers = modern("tools/list")
    first = request(srv, "POST", body=body, headers=headers)[2]
    assert request(srv, "POST", body=body, headers=headers)[2] == first
    assert quote("a/b", safe="") == "a%2Fb"  # the escaping a memory key's '/' gets in its URI
