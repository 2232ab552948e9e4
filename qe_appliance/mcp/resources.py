"""MCP resources: what the tools produced, addressable as `aqe://` URIs (qe_appliance/uris.py) and readable
by any client (Claude Code's `@aqe:` mentions, VS Code, Cursor) in both protocol eras.

| URI | content |
|---|---|
| aqe://coverage/{reportId} | the stored report: totals and every file (text/markdown) |
| aqe://coverage/{reportId}/gaps{?file} | every gap, riskiest first, as qe_coverage_gaps returns them (JSON) |
| aqe://memory/{namespace}/{key} | one memory entry with its tags, metadata and times (JSON) |
| aqe://tasks/{taskId} | an orchestrated task and its subtasks, as qe_fleet_status {taskId} shows it (JSON) |
| aqe://tests/{generationId} | a module qe_test_generate wrote (text/x-python) |
| aqe://results/{resultId} | a tool result too large to send whole, exactly as its structuredContent (JSON) |
| aqe://quality/policies | the configured qe_quality_gate policies (JSON) |
| aqe://dashboard | latency, pool, agents and alerts now, as /dashboard.json (JSON; with monitoring on) |

`resources/list` lists a bounded, deterministic selection (the fixed resources, then the newest reports,
tasks, test modules and results, then memory entries by namespace and key); the templates reach the rest.
Everything heavy (rendering a report, ranking gaps) runs off the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import parse_qs, unquote

import msgspec

from qe_appliance.coverage.model import file_totals, missed_runs, ranges_text, report_totals
from qe_appliance.mcp import jsonrpc as rpc
from qe_appliance.mcp.jsonrpc import RpcError
from qe_appliance.services import Services
from qe_appliance.store.database import retrying
from qe_appliance.store.tasks import shared_tasks, visible_task
from qe_appliance.tools.artifacts import RESULT, TEST_MODULE
from qe_appliance.tools.base import ToolContext
from qe_appliance.tools.coverage import COVERAGE_GAPS, decode_report, rank_all_gaps
from qe_appliance.uris import (
    DASHBOARD_URI,
    POLICIES_URI,
    SCHEME,
    memory_uri,
    report_uri,
    result_uri,
    task_uri,
    tests_uri,
)

# resources/read of a URI that names nothing: 2025-11-25 and before use -32002; 2026-07-28 uses -32602.
RESOURCE_NOT_FOUND_LEGACY: Final = -32002

PAGE_SIZE: Final = 50
# How many of each kind resources/list shows (the newest first); the templates reach the rest.
LIST_REPORTS: Final = 20
LIST_TASKS: Final = 20
LIST_ARTIFACTS: Final = 20
LIST_MEMORY: Final = 50
# Caching hints (2026-07-28): stored reports and artifacts never change; the rest may change at any time.
TTL_IMMUTABLE_MS: Final = 300_000
TTL_LIST_MS: Final = 5_000
TTL_CONFIG_MS: Final = 30_000
# Gap rankings kept for re-reads (a report's ranking reads its sources and git history).
GAPS_CACHE_SIZE: Final = 8
GAPS_CACHE_S: Final = 60.0
GAPS_CACHE_S_MS: Final = int(GAPS_CACHE_S * 1000)

JSON = "application/json"
MARKDOWN = "text/markdown"
PYTHON = "text/x-python"
# A resource kind's reader: (uri, path segments after the kind, query, principal) -> its contents, or why not.
Reader = Callable[[str, list[str], dict[str, str], str | None], Awaitable["Contents | str"]]

TEMPLATES: Final[tuple[dict[str, Any], ...]] = (
    {
        "uriTemplate": "aqe://coverage/{reportId}",
        "name": "coverage-report",
        "title": "Coverage report",
        "description": "A stored coverage report (reportId from qe_coverage_analyze): totals and every file.",
        "mimeType": MARKDOWN,
    },
    {
        "uriTemplate": "aqe://coverage/{reportId}/gaps{?file}",
        "name": "coverage-gaps",
        "title": "Coverage gaps",
        "description": "Every uncovered block of a stored report ranked by risk (qe_coverage_gaps' shape, all "
        "gaps); ?file= keeps one file's.",
        "mimeType": JSON,
    },
    {
        "uriTemplate": "aqe://memory/{namespace}/{key}",
        "name": "memory-entry",
        "title": "Memory entry",
        "description": "One qe_memory_store entry; a key's '/' is written %2F.",
        "mimeType": JSON,
    },
    {
        "uriTemplate": "aqe://tasks/{taskId}",
        "name": "task",
        "title": "Orchestrated task",
        "description": "A qe_task_orchestrate task: status, counts and every subtask's result.",
        "mimeType": JSON,
    },
    {
        "uriTemplate": "aqe://tests/{generationId}",
        "name": "generated-tests",
        "title": "Generated test module",
        "description": "A module qe_test_generate wrote (generationId from its result).",
        "mimeType": PYTHON,
    },
    {
        "uriTemplate": "aqe://results/{resultId}",
        "name": "tool-result",
        "title": "Full tool result",
        "description": "A tool result too large to send whole (server.maxResultTextBytes), as its structuredContent.",
        "mimeType": JSON,
    },
)


def not_found(uri: str, modern: bool, why: str) -> RpcError:
    code = rpc.INVALID_PARAMS if modern else RESOURCE_NOT_FOUND_LEGACY
    return RpcError(code, f"Resource not found: {uri}: {why}", {"uri": uri})


class Contents(msgspec.Struct, frozen=True):
    """What a read returns: the contents and how long a client may cache them (2026-07-28)."""

    uri: str
    mime_type: str
    text: str
    ttl_ms: int = 0
    cache_scope: str = "private"

    def wire(self, modern: bool) -> dict[str, Any]:
        result: dict[str, Any] = {"contents": [{"uri": self.uri, "mimeType": self.mime_type, "text": self.text}]}
        if modern:
            result["ttlMs"] = self.ttl_ms
            result["cacheScope"] = self.cache_scope
        return result


def parse_uri(uri: str) -> tuple[list[str], dict[str, str]]:
    """The decoded path segments and query parameters of an `aqe://` URI ([] when it is not one)."""
    if not uri.startswith(SCHEME):
        return [], {}
    path, _, query = uri[len(SCHEME) :].partition("?")
    segments = [unquote(part) for part in path.split("/")]
    params = {name: values[-1] for name, values in parse_qs(query, keep_blank_values=True).items()}
    return segments, params


class Resources:
    """resources/list, resources/templates/list and resources/read over the appliance's stores."""

    def __init__(
        self,
        services: Services,
        context_for: Callable[[str], ToolContext],
        dashboard: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        self.services = services
        # Where work done for a tool's resource runs (a gap ranking: qe_coverage_gaps' fleet and timeout).
        self.context_for = context_for
        self.dashboard = dashboard
        self._gaps: OrderedDict[tuple[str, str | None], tuple[float, bytes]] = OrderedDict()

    # ---- listing ------------------------------------------------------------------------------------

    async def listing(self, cursor: Any, modern: bool) -> dict[str, Any]:
        entries = await self._entries()
        start = decode_cursor(cursor, "resources", len(entries)) if cursor is not None else 0
        result: dict[str, Any] = {"resources": entries[start : start + PAGE_SIZE]}
        if start + PAGE_SIZE < len(entries):
            result["nextCursor"] = encode_cursor("resources", start + PAGE_SIZE)
        if modern:
            result["ttlMs"] = TTL_LIST_MS
            result["cacheScope"] = "private"
        return result

    def templates(self, cursor: Any, modern: bool) -> dict[str, Any]:
        if cursor is not None:
            decode_cursor(cursor, "templates", 0)  # one page: any cursor is stale
        result: dict[str, Any] = {"resourceTemplates": list(TEMPLATES)}
        if modern:
            result["ttlMs"] = TTL_IMMUTABLE_MS
            result["cacheScope"] = "public"
        return result

    async def _entries(self) -> list[dict[str, Any]]:
        services = self.services
        entries = [
            _entry(POLICIES_URI, "quality-policies", "Quality gate policies",
                   "The qe_quality_gate policies this server judges builds by.", JSON),
        ]
        if self.dashboard is not None:
            entries.append(_entry(DASHBOARD_URI, "dashboard", "Server dashboard",
                                  "Latency against targets, pool, agents and alerts, now.", JSON))
        reports = await retrying(services.reports.recent, LIST_REPORTS)
        for report in reports:
            entries.append(_entry(
                report_uri(report.id), f"coverage/{report.id}", f"Coverage of {report.root} ({report.format})",
                f"{report.format} report from {report.origin}, stored {_when(report.created_at)}.", MARKDOWN,
            ))
        for task in shared_tasks(await retrying(services.tasks.recent, LIST_TASKS)):
            entries.append(_entry(
                task_uri(task["taskId"]), f"tasks/{task['taskId']}",
                f"Task {task['kind']} ({task['status']}, {task['completed']}/{task['total']})",
                f"{task['strategy']} task started {_when(task['createdAt'])}.", JSON,
            ))
        kinds = ((TEST_MODULE, tests_uri, PYTHON, "tests"), (RESULT, result_uri, JSON, "results"))
        for kind, uri_of, mime, noun in kinds:
            for artifact in await retrying(services.reports.recent_artifacts, kind, LIST_ARTIFACTS):
                entries.append(_entry(
                    uri_of(artifact.id), f"{noun}/{artifact.id}", artifact.title,
                    f"Kept {_when(artifact.created_at)}.", mime,
                ))
        hits, _ = await retrying(services.memory.search, limit=LIST_MEMORY)
        for hit in hits:
            entry = hit.entry
            entries.append(_entry(
                memory_uri(entry.namespace, entry.key), f"memory/{entry.namespace}/{entry.key}",
                f"Memory {entry.namespace}: {entry.key}",
                f"Version {entry.version}, updated {_when(entry.updated_at)}.", JSON,
            ))
        return entries

    # ---- reading ------------------------------------------------------------------------------------

    async def read(self, uri: Any, modern: bool, principal: str | None) -> dict[str, Any]:
        if not isinstance(uri, str) or not uri:
            raise RpcError(rpc.INVALID_PARAMS, "resources/read needs params.uri (an aqe:// URI from resources/list)")
        return (await self.contents(uri, modern, principal)).wire(modern)

    async def contents(self, uri: str, modern: bool, principal: str | None) -> Contents:
        """The resource at `uri` as `principal` (who the transport authenticated) may see it; the era's
        resource-not-found error when there is none."""
        segments, params = parse_uri(uri)
        kind, rest = (segments[0], segments[1:]) if segments else ("", [])
        reader = self._readers().get((kind, len(rest)))
        if kind == "memory" and len(rest) > 2:
            # A key's '/' should be %2F, but an unencoded one is unambiguous here: the namespace has none.
            reader, rest = self._memory, [rest[0], "/".join(rest[1:])]
        if reader is None:
            raise not_found(uri, modern, "not an aqe:// URI this server serves; see resources/templates/list")
        found = await reader(uri, rest, params, principal)
        if isinstance(found, str):
            raise not_found(uri, modern, found)
        return found

    def _readers(self) -> dict[tuple[str, int], Reader]:
        return {
            ("coverage", 1): self._report,
            ("coverage", 2): self._gaps_of,
            ("memory", 2): self._memory,
            ("tasks", 1): self._task,
            ("tests", 1): self._artifact,
            ("results", 1): self._artifact,
            ("quality", 1): self._policies,
            ("dashboard", 0): self._dashboard,
        }

    async def _report(self, uri: str, rest: list[str], params: dict[str, str], who: str | None) -> Contents | str:
        found = await retrying(self.services.reports.get, rest[0])
        if found is None:
            return f"no stored report {rest[0]!r} (the newest {self.services.reports.max_reports} are kept)"
        meta, body = found
        text = await asyncio.to_thread(render_report, meta.id, meta.origin, meta.created_at, body)
        return Contents(uri, MARKDOWN, text, TTL_IMMUTABLE_MS)

    async def _gaps_of(self, uri: str, rest: list[str], params: dict[str, str], who: str | None) -> Contents | str:
        if rest[1] != "gaps":
            return "the only resource under a report is /gaps"
        ranked = await self.gaps(rest[0], params.get("file"))
        if ranked is None:
            return f"no stored report {rest[0]!r}"
        return Contents(uri, JSON, ranked.decode(), GAPS_CACHE_S_MS)

    async def gaps(self, report_id: str, file: str | None = None) -> bytes | None:
        """Every gap of a stored report (or of one of its files) as JSON, riskiest first; None without the
        report. Rankings are kept for GAPS_CACHE_S: one reads sources and git history."""
        now, key = time.monotonic(), (report_id, file)
        cached = self._gaps.get(key)
        if cached is not None and now - cached[0] < GAPS_CACHE_S:
            return cached[1]
        found = await retrying(self.services.reports.get, report_id)
        if found is None:
            return None
        ranked = await rank_all_gaps(self.context_for(COVERAGE_GAPS), report_id, found[1], file)
        self._gaps[key] = (now, ranked)
        while len(self._gaps) > GAPS_CACHE_SIZE:
            self._gaps.popitem(last=False)
        return ranked

    async def _memory(self, uri: str, rest: list[str], params: dict[str, str], who: str | None) -> Contents | str:
        namespace, key = rest
        entry = await retrying(self.services.memory.get, namespace, key)
        if entry is None:
            return f"no live memory entry {key!r} in namespace {namespace!r}"
        raw = msgspec.Raw
        body = {
            "namespace": entry.namespace,
            "key": entry.key,
            "value": raw(entry.value_json),
            "tags": entry.tags,
            "metadata": raw(entry.metadata_json) if entry.metadata_json is not None else None,
            "version": entry.version,
            "createdAt": _when(entry.created_at),
            "updatedAt": _when(entry.updated_at),
            "expiresAt": _when(entry.expires_at) if entry.expires_at is not None else None,
        }
        return Contents(uri, JSON, rpc.encoder.encode(body).decode())

    async def _task(self, uri: str, rest: list[str], params: dict[str, str], who: str | None) -> Contents | str:
        task = await visible_task(self.services.tasks, rest[0], who)
        if task is None:
            return f"no task {rest[0]!r}; qe_task_orchestrate returns task ids"
        finished = task["status"] not in ("running", "pending")
        text = (await asyncio.to_thread(rpc.encoder.encode, task)).decode()
        return Contents(uri, JSON, text, TTL_IMMUTABLE_MS if finished else 0)

    async def _artifact(self, uri: str, rest: list[str], params: dict[str, str], who: str | None) -> Contents | str:
        found = await retrying(self.services.reports.get_artifact, rest[0])
        if found is None:
            return f"nothing kept under {rest[0]!r} (the newest artifacts are kept)"
        meta, body = found
        return Contents(uri, meta.mime_type, body.decode(), TTL_IMMUTABLE_MS)

    async def _policies(self, uri: str, rest: list[str], params: dict[str, str], who: str | None) -> Contents | str:
        if rest != ["policies"]:
            return "the only quality resource is aqe://quality/policies"
        policies = self.services.config.quality.policies
        text = rpc.encoder.encode({name: policies[name] for name in sorted(policies)}).decode()
        return Contents(uri, JSON, text, TTL_CONFIG_MS, "public")

    async def _dashboard(self, uri: str, rest: list[str], params: dict[str, str], who: str | None) -> Contents | str:
        if self.dashboard is None:
            return "monitoring is off on this server (monitoring.enabled)"
        return Contents(uri, JSON, rpc.encoder.encode(await self.dashboard()).decode(), 1_000)



def _entry(uri: str, name: str, title: str, description: str, mime: str) -> dict[str, Any]:
    return {"uri": uri, "name": name, "title": title, "description": description, "mimeType": mime}


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def encode_cursor(kind: str, offset: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{offset}".encode()).decode()


def decode_cursor(cursor: Any, kind: str, size: int) -> int:
    """The offset an opaque cursor of a `kind` list carries; -32602 for anything else."""
    try:
        text = base64.urlsafe_b64decode(str(cursor).encode()).decode()
        got, _, offset = text.partition(":")
        start = int(offset)
        if got != kind or not 0 < start < size:
            raise ValueError
        return start
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise RpcError(
            rpc.INVALID_PARAMS, f"invalid cursor: pass back the nextCursor of a previous {kind} list"
        ) from None


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _measure(measure: Any) -> str:
    if measure is None:
        return "–"
    percent = "n/a" if measure.percent is None else f"{measure.percent:g}%"
    return f"{measure.covered}/{measure.total} ({percent})"


def render_report(report_id: str, origin: str, created_at: float, body: bytes) -> str:
    """A stored report as Markdown: what it is, its totals, and one row per file (lowest line coverage first)."""
    report = decode_report(body)
    totals = report_totals(report.files)
    rows = sorted(((entry, file_totals(entry)) for entry in report.files),
                  key=lambda row: (row[1].lines.percent is None, row[1].lines.percent or 0.0, row[0].path))
    out = [
        f"# Coverage report {report_id}",
        "",
        f"{report.format} report of `{report.root}` from {origin}, stored {_when(created_at)}; "
        f"{len(report.files)} files.",
        "",
        f"- lines: {_measure(totals.lines)}",
        f"- branches: {_measure(totals.branches)}",
        f"- functions: {_measure(totals.functions)}",
        "",
        "| file | lines | branches | functions | missed lines |",
        "|---|---|---|---|---|",
    ]
    for entry, file in rows:
        missed = ranges_text(missed_runs(entry.lines, entry.missed), limit=10_000)
        out.append(
            f"| {_cell(entry.path)} | {_measure(file.lines)} | {_measure(file.branches)} | "
            f"{_measure(file.functions)} | {missed} |"
        )
    return "\n".join(out) + "\n"
