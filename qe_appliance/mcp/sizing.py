"""Tool results sized for clients: one rule for every tool, applied where a call's result is shaped.

A result's text is the JSON of its structuredContent. When that text is over `server.maxResultTextBytes`
(32 KiB by default: ~10k tokens with no tokenizer, where Claude Code starts warning), the text becomes a
summary (the same JSON with long strings cut and long lists shortened, each cut saying how much is left
out) followed by `resource_link` items: `aqe://results/{id}`, which holds exactly the whole structuredContent,
and the resources the result is about (the coverage report, its gaps, the generated module, the task).
structuredContent still carries the whole object when the tool has an outputSchema (which requires it); a
tool without one (the fleet tools) then sends no structuredContent, since the resource holds it. The
result's `_meta["io.aqe/resultText"]` says the text is a summary, how large the whole is, and where it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

import msgspec

from qe_appliance.services import Services
from qe_appliance.tools.artifacts import RESULT, keep
from qe_appliance.tools.base import ToolError, ToolSpec
from qe_appliance.tools.runner import CallResult
from qe_appliance.uris import gaps_uri, memory_uri, report_uri, result_uri, task_uri, tests_uri

META_KEY: Final = "io.aqe/resultText"
# The first revision with resource_link content items.
LINKS_SINCE: Final = "2025-06-18"
# Summary shapes: strings cut to this many characters, lists to this many items, nesting to this depth.
STRING_CUT: Final = 300
LIST_CUT: Final = 5
DEPTH: Final = 4

Link = dict[str, Any]

_decode = msgspec.json.Decoder()
_encode = msgspec.json.Encoder()


def _link(uri: str, name: str, title: str, mime: str) -> Link:
    return {"type": "resource_link", "uri": uri, "name": name, "title": title, "mimeType": mime}


def _analyze(value: dict[str, Any]) -> list[Link]:
    rid = value.get("reportId")
    return [_link(report_uri(rid), f"coverage/{rid}", "The whole coverage report", "text/markdown")] if rid else []


def _gaps(value: dict[str, Any]) -> list[Link]:
    rid = value.get("reportId")
    return [_link(gaps_uri(rid), f"coverage/{rid}/gaps", "Every gap of the report", "application/json")] if rid else []


def _tests(value: dict[str, Any]) -> list[Link]:
    gid = value.get("generationId")
    return [_link(tests_uri(gid), f"tests/{gid}", "The generated module", "text/x-python")] if gid else []


def _task(value: dict[str, Any]) -> list[Link]:
    task = value.get("task")
    tid = task.get("taskId") if isinstance(task, dict) else value.get("taskId")
    return [_link(task_uri(tid), f"tasks/{tid}", "The task and its subtasks", "application/json")] if tid else []


def _memory(value: dict[str, Any]) -> list[Link]:
    if not value.get("found"):
        return []
    namespace, key = value["namespace"], value["key"]
    return [_link(memory_uri(namespace, key), f"memory/{namespace}/{key}", "The memory entry", "application/json")]


# The resources a tool's result is about, found from the result itself.
ABOUT: Final[dict[str, Callable[[dict[str, Any]], list[Link]]]] = {
    "qe_coverage_analyze": _analyze,
    "qe_coverage_gaps": _gaps,
    "qe_test_generate": _tests,
    "qe_fleet_status": _task,
    "qe_task_orchestrate": _task,
    "qe_memory_retrieve": _memory,
}


def summarize(value: Any, depth: int = 0) -> Any:
    """`value` with long strings cut and long lists shortened, each cut saying what it left out."""
    if isinstance(value, str) and len(value) > STRING_CUT:
        return f"{value[:STRING_CUT]}… [{len(value) - STRING_CUT} more characters in the linked resource]"
    if isinstance(value, list):
        if depth >= DEPTH:
            return f"[{len(value)} items in the linked resource]"
        kept = [summarize(item, depth + 1) for item in value[:LIST_CUT]]
        if len(value) > LIST_CUT:
            kept.append(f"… {len(value) - LIST_CUT} more items in the linked resource")
        return kept
    if isinstance(value, dict):
        if depth >= DEPTH:
            return f"{{{len(value)} fields in the linked resource}}"
        return {key: summarize(item, depth + 1) for key, item in value.items()}
    return value


def _summary_text(tool: str, value: Any, size: int, limit: int, uri: str) -> str:
    head = (
        f"{tool} returned {size} bytes of JSON, over this server's {limit}-byte limit for result text "
        f"(server.maxResultTextBytes). Below is a summary: long strings are cut and lists shortened, each "
        f"saying what it left out. The whole result is in structuredContent and in the resource {uri}.\n"
    )
    body = _encode.encode(summarize(value)).decode()
    if len(head.encode()) + len(body.encode()) > limit:
        # Even the summary is too large (very many fields): the top-level names must do.
        names = list(value) if isinstance(value, dict) else []
        body = _encode.encode({"fields": names}).decode()
    return (head + body).encode()[:limit].decode(errors="ignore")


def links_supported(version: str) -> bool:
    """Whether a protocol revision has `resource_link` content (2025-06-18 and later)."""
    return version >= LINKS_SINCE


def fits(services: Services, outcome: CallResult) -> bool:
    """Whether `outcome`'s text is within server.maxResultTextBytes, so its CallToolResult is sent whole."""
    return outcome.value is None or len(outcome.value) <= services.config.server.max_result_text_bytes


async def sized(services: Services, spec: ToolSpec, outcome: CallResult, links: bool = True) -> dict[str, Any]:
    """The CallToolResult of `outcome`, its text within server.maxResultTextBytes (see the module doc).
    Without `links` (a client of a revision before resource_link), the links are listed in the text."""
    tool = spec.name
    result = outcome.wire()
    if fits(services, outcome) or outcome.value is None:
        return result
    limit = services.config.server.max_result_text_bytes
    size = len(outcome.value)
    value = await asyncio.to_thread(_decode.decode, outcome.value)
    title = f"Whole {tool} result ({size} bytes)"
    try:
        result_id = await keep(services, RESULT, title, "application/json", outcome.value)
    except ToolError as exc:
        # Nowhere to keep it: the whole text then, rather than a summary pointing at nothing.
        result.setdefault("_meta", {})[META_KEY] = {"complete": True, "bytes": size, "limit": limit,
                                                    "note": f"not summarised: {exc}"}
        return result
    uri = result_uri(result_id)
    about = ABOUT.get(tool)
    resources = [_link(uri, f"results/{result_id}", title, "application/json")]
    resources += about(value) if about is not None and isinstance(value, dict) else []
    # Listed in the text, the links take room of their own.
    budget = limit if links else max(limit // 2, limit - 1024)
    text = await asyncio.to_thread(_summary_text, tool, value, size, budget, uri)
    if links:
        result["content"] = [{"type": "text", "text": text}, *resources]
    else:
        listed = "".join(f"\n{item['title']}: {item['uri']}" for item in resources)
        result["content"] = [{"type": "text", "text": text + "\n\nResources (resources/read):" + listed}]
    if spec.output_schema is None:
        del result["structuredContent"]
    result.setdefault("_meta", {})[META_KEY] = {"complete": False, "bytes": size, "limit": limit, "resource": uri}
    return result
