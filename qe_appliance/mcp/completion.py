"""`completion/complete`: suggestions for prompt arguments and resource-template variables, from what the
server knows: workspace paths (under server.workspaceRoots only), policy names, report ids and their files,
memory namespaces and keys, task and artifact ids. At most 100 values, with `total` and `hasMore`.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

from qe_appliance.mcp import jsonrpc as rpc
from qe_appliance.mcp.jsonrpc import RpcError
from qe_appliance.mcp.prompts import Prompts
from qe_appliance.mcp.resources import TEMPLATES, Resources
from qe_appliance.store.database import retrying
from qe_appliance.tools.artifacts import RESULT, TEST_MODULE
from qe_appliance.tools.coverage import decode_report
from qe_appliance.workspace import InputError, Workspace

MAX_VALUES: Final = 100
# Directory entries looked at for one path completion: a huge directory is not listed whole.
MAX_SCANNED: Final = 5_000
# Candidates fetched from a store before filtering by the typed prefix.
MAX_CANDIDATES: Final = 1_000

Source = Callable[[str, dict[str, str]], Awaitable[list[str]]]


def workspace_paths(workspace: Workspace, value: str, suffixes: tuple[str, ...] = ()) -> list[str]:
    """Files and directories (with a trailing /) under the workspace roots that complete `value`, written as
    the tools take them (relative to the first root, or absolute). Nothing outside the roots is listed."""
    directory, _, prefix = value.rpartition("/")
    try:
        base = workspace.directory(directory or ("/" if value.startswith("/") else "."))
    except InputError:
        return []
    try:
        return _listing(workspace, base, directory, prefix, value.startswith("/"), suffixes)
    except OSError:
        return []  # unreadable directory: nothing to suggest


def _listing(
    workspace: Workspace, base: Path, directory: str, prefix: str, absolute: bool, suffixes: tuple[str, ...]
) -> list[str]:
    found: list[str] = []
    with os.scandir(base) as entries:
        for entry in itertools.islice(entries, MAX_SCANNED):
            name = entry.name
            if not name.startswith(prefix) or (name.startswith(".") and not prefix.startswith(".")):
                continue
            real = Path(os.path.realpath(entry.path))
            if not workspace.contains(real):
                continue  # a symbolic link that leads outside the roots
            is_dir = real.is_dir()
            if not is_dir and suffixes and not name.endswith(suffixes):
                continue
            found.append(f"{directory}/{name}" if directory or absolute else name)
            if is_dir:
                found[-1] += "/"
    return sorted(found)


class Completions:
    def __init__(self, resources: Resources, prompts: Prompts) -> None:
        self.resources = resources
        self.prompts = prompts
        services = resources.services
        paths = self._paths()
        python = self._paths((".py",))
        xml = self._paths((".xml",))
        reports = self._report_ids
        self.prompt_args: dict[tuple[str, str], Source] = {
            ("generate-tests", "path"): python,
            ("generate-tests", "framework"): _fixed("pytest", "unittest"),
            ("review-coverage", "report"): _either(reports, paths),
            ("release-gate", "policy"): self._policies,
            ("release-gate", "report"): _either(reports, paths),
            ("release-gate", "junit"): xml,
            ("triage-failures", "junit"): xml,
            ("triage-failures", "path"): paths,
            ("explain-gap", "reportId"): reports,
            ("explain-gap", "file"): self._report_files("reportId"),
        }
        self.template_args: dict[tuple[str, str], Source] = {
            ("aqe://coverage/{reportId}", "reportId"): reports,
            ("aqe://coverage/{reportId}/gaps{?file}", "reportId"): reports,
            ("aqe://coverage/{reportId}/gaps{?file}", "file"): self._report_files("reportId"),
            ("aqe://memory/{namespace}/{key}", "namespace"): self._namespaces,
            ("aqe://memory/{namespace}/{key}", "key"): self._keys,
            ("aqe://tasks/{taskId}", "taskId"): self._task_ids,
            ("aqe://tests/{generationId}", "generationId"): self._artifact_ids(TEST_MODULE),
            ("aqe://results/{resultId}", "resultId"): self._artifact_ids(RESULT),
        }
        self.services = services

    async def complete(self, params: dict[str, Any]) -> dict[str, Any]:
        ref, argument = params.get("ref"), params.get("argument")
        if not isinstance(ref, dict) or not isinstance(argument, dict):
            raise RpcError(rpc.INVALID_PARAMS, "completion/complete needs params.ref and params.argument objects")
        name, value = argument.get("name"), argument.get("value", "")
        if not isinstance(name, str) or not isinstance(value, str):
            raise RpcError(rpc.INVALID_PARAMS, "argument.name and argument.value must be strings")
        context = params.get("context")
        given = context.get("arguments") if isinstance(context, dict) else None
        known = {k: v for k, v in given.items() if isinstance(v, str)} if isinstance(given, dict) else {}
        source = self._source(ref, name)
        values = await source(value, known) if source is not None else []
        if len(values) > MAX_VALUES:
            # Sources stop looking past a bound (a directory's first entries, the newest ids): the total is unknown.
            return {"completion": {"values": values[:MAX_VALUES], "hasMore": True}}
        return {"completion": {"values": values, "total": len(values), "hasMore": False}}

    def _source(self, ref: dict[str, Any], name: str) -> Source | None:
        kind = ref.get("type")
        if kind == "ref/prompt":
            prompt = ref.get("name")
            if not isinstance(prompt, str) or prompt not in self.prompts.by_name:
                raise RpcError(rpc.INVALID_PARAMS, f"unknown prompt {prompt!r}; prompts/list has: "
                               + ", ".join(self.prompts.by_name))
            return self.prompt_args.get((prompt, name))
        if kind == "ref/resource":
            uri = ref.get("uri")
            if not isinstance(uri, str) or not any(template["uriTemplate"] == uri for template in TEMPLATES):
                raise RpcError(rpc.INVALID_PARAMS, f"unknown resource template {uri!r}; see resources/templates/list")
            return self.template_args.get((uri, name))
        raise RpcError(rpc.INVALID_PARAMS, 'ref.type must be "ref/prompt" or "ref/resource"')

    # ---- sources -------------------------------------------------------------------------------------

    def _paths(self, suffixes: tuple[str, ...] = ()) -> Source:
        async def paths(value: str, known: dict[str, str]) -> list[str]:
            return await asyncio.to_thread(workspace_paths, self.resources.services.workspace, value, suffixes)

        return paths

    async def _policies(self, value: str, known: dict[str, str]) -> list[str]:
        return sorted(name for name in self.resources.services.config.quality.policies if name.startswith(value))

    async def _report_ids(self, value: str, known: dict[str, str]) -> list[str]:
        reports = await retrying(self.resources.services.reports.recent, MAX_CANDIDATES)
        return [report.id for report in reports if report.id.startswith(value)]

    def _report_files(self, variable: str) -> Source:
        async def files(value: str, known: dict[str, str]) -> list[str]:
            found = await retrying(self.resources.services.reports.get, known.get(variable, ""))
            if found is None:
                return []
            return await asyncio.to_thread(_files_of, found[1], value)

        return files

    async def _namespaces(self, value: str, known: dict[str, str]) -> list[str]:
        return await retrying(self.resources.services.memory.namespaces, value, MAX_VALUES + 1)

    async def _keys(self, value: str, known: dict[str, str]) -> list[str]:
        namespace = known.get("namespace")
        if namespace is None:
            return []
        hits, _ = await retrying(self.resources.services.memory.search, namespace=namespace, prefix=value,
                                 limit=MAX_VALUES + 1)
        return [hit.entry.key for hit in hits]

    async def _task_ids(self, value: str, known: dict[str, str]) -> list[str]:
        tasks = await retrying(self.resources.services.tasks.recent, MAX_CANDIDATES)
        return [task["taskId"] for task in tasks if task["taskId"].startswith(value)]

    def _artifact_ids(self, kind: str) -> Source:
        async def ids(value: str, known: dict[str, str]) -> list[str]:
            found = await retrying(self.resources.services.reports.recent_artifacts, kind, MAX_CANDIDATES)
            return [artifact.id for artifact in found if artifact.id.startswith(value)]

        return ids


def _files_of(body: bytes, value: str) -> list[str]:
    return sorted(entry.path for entry in decode_report(body).files if entry.path.startswith(value))


def _fixed(*choices: str) -> Source:
    async def fixed(value: str, known: dict[str, str]) -> list[str]:
        return [choice for choice in choices if choice.startswith(value)]

    return fixed


def _either(first: Source, second: Source) -> Source:
    async def both(value: str, known: dict[str, str]) -> list[str]:
        return [*(await first(value, known)), *(await second(value, known))]

    return both
