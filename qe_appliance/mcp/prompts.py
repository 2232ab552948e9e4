"""MCP prompts: the QE workflows people run, as templates a client offers by name (Claude Code shows them as
`/mcp__aqe__<name>` slash commands). `prompts/get` fills one in; where it names a stored report, the report
(or the file's gaps) is embedded as a resource, or linked when it is larger than server.maxResultTextBytes.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec

from qe_appliance.mcp import jsonrpc as rpc
from qe_appliance.mcp.jsonrpc import RpcError
from qe_appliance.mcp.resources import Contents, Resources
from qe_appliance.tools.coverage import REPORT_ID
from qe_appliance.uris import gaps_uri, report_uri

TTL_MS: Final = 300_000


class Argument(msgspec.Struct, frozen=True):
    name: str
    description: str
    required: bool = True

    def wire(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "required": self.required}


Message = dict[str, Any]
Render = Callable[["Fill", dict[str, str]], Awaitable[list[Message]]]


class Prompt(msgspec.Struct, frozen=True):
    name: str
    title: str
    description: str
    arguments: tuple[Argument, ...]
    render: Render

    def wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "arguments": [argument.wire() for argument in self.arguments],
        }


def _user(text: str) -> Message:
    return {"role": "user", "content": {"type": "text", "text": text}}


def _args(**values: str | None) -> str:
    """Tool arguments as JSON, leaving out the ones not given."""
    return json.dumps({name: value for name, value in values.items() if value})


async def _generate_tests(fill: Fill, args: dict[str, str]) -> list[Message]:
    path, framework = args["path"], args.get("framework") or "pytest"
    return [_user(
        f"Write tests for `{path}`.\n\n"
        f"1. Call qe_test_generate with {_args(path=path, framework=framework)}. It runs candidate calls and "
        "keeps only tests that pass and add coverage or kill a mutant; its result names the module's file and "
        "a generationId (the module stays readable as aqe://tests/<generationId>).\n"
        "2. Read the module. Check that each test asserts behaviour a user of the code relies on, not an "
        "accident of the implementation; drop or rewrite any that would break on a harmless refactor.\n"
        "3. Save it under the project's tests directory with the suggested file name, run it, and report what "
        "it covers, what it leaves untested (the result's notes) and any test you changed and why."
    )]


async def _review_coverage(fill: Fill, args: dict[str, str]) -> list[Message]:
    report = args["report"]
    if REPORT_ID.fullmatch(report):
        embedded = await fill.embed(report_uri(report))
        return [
            embedded,
            _user(
                f"Review the coverage report above ({report}). Say which parts of the code are well tested and "
                f"which are not, in a few sentences a reviewer can act on. Then call qe_coverage_gaps with "
                f"{_args(reportId=report)} and, for the five riskiest gaps, say what a test should exercise "
                "and in which test file (each gap suggests one)."
            ),
        ]
    return [_user(
        f"Review the coverage of this project from `{report}`.\n\n"
        f"1. Call qe_coverage_analyze with {_args(path=report)}; note the reportId it returns.\n"
        "2. Summarise line, branch and function coverage and the least covered files.\n"
        "3. Call qe_coverage_gaps with that reportId and, for the five riskiest gaps, say what a test should "
        "exercise and in which test file (each gap suggests one)."
    )]


async def _release_gate(fill: Fill, args: dict[str, str]) -> list[Message]:
    policy, report, junit = args.get("policy") or "default", args["report"], args.get("junit")
    if policy not in fill.resources.services.config.quality.policies:
        known = ", ".join(sorted(fill.resources.services.config.quality.policies))
        raise RpcError(rpc.INVALID_PARAMS, f"no policy named {policy!r} in quality.policies; known: {known}")
    inputs = {"coverageReport": report, **({"junitXml": junit} if junit else {})}
    messages = [await fill.embed(report_uri(report))] if REPORT_ID.fullmatch(report) else []
    messages.append(_user(
        f"Decide whether this build may be released under the `{policy}` policy.\n\n"
        f"Call qe_quality_gate with {json.dumps({'policyName': policy, 'inputs': inputs})}. Report the verdict "
        "(pass, warn or fail) first, then every threshold that was missed with its measured value, and what "
        "would have to change to pass. Do not round a fail up to a pass: a missed threshold blocks the release "
        "unless a person decides otherwise."
    ))
    return messages


async def _triage_failures(fill: Fill, args: dict[str, str]) -> list[Message]:
    junit, path = args["junit"], args.get("path") or "."
    return [_user(
        f"Triage the failing tests in `{junit}`.\n\n"
        f"1. Call qe_quality_metrics with {_args(path=path, junitXml=junit)}: its `tests` gives the counts "
        "and `tests.failed` each failure with its message, beside the complexity of the code they test.\n"
        "2. For each failure, read its message and the code it exercises, and classify it: a bug in the code, a "
        "bug in the test, a flaky test (timing, order, shared state) or the environment (network, missing "
        "service, configuration).\n"
        "3. Group failures that share a cause. For each group give the evidence, the most likely fix and who "
        "should make it; list the ones you could not classify with what you would check next.\n"
        "4. Store what you learned with qe_memory_store (namespace `triage`), so the next triage starts from it."
    )]


async def _explain_gap(fill: Fill, args: dict[str, str]) -> list[Message]:
    report_id, file = args["reportId"], args["file"]
    return [
        await fill.embed(gaps_uri(report_id, file)),
        _user(
            f"Above are the uncovered blocks of `{file}` in coverage report {report_id}, riskiest first, each with "
            "the factors of its risk score. Explain the riskiest one: what the code does there, why no test "
            "reaches it (read the source), what could go wrong in it unnoticed, and the smallest test that would "
            "cover it, written out, in the test file the gap suggests."
        ),
    ]


class Fill(msgspec.Struct, frozen=True):
    """One prompts/get: where embedded resources come from, and whether the client's revision has
    resource_link content (2025-06-18 and later)."""

    resources: Resources
    links: bool
    principal: str | None

    async def embed(self, uri: str) -> Message:
        """A user message carrying the resource at `uri`: embedded, or linked when over the result size limit."""
        try:
            contents: Contents = await self.resources.contents(uri, True, self.principal)
        except RpcError as exc:
            raise RpcError(rpc.INVALID_PARAMS, exc.message, exc.data) from None
        limit = self.resources.services.config.server.max_result_text_bytes
        size = len(contents.text.encode())
        if size > limit:
            if not self.links:
                return _user(f"The resource {uri} ({size} bytes) is too large to include: read it with "
                             "resources/read if you need it.")
            link = {"type": "resource_link", "uri": uri, "name": uri.removeprefix("aqe://"),
                    "mimeType": contents.mime_type}
            return {"role": "user", "content": link}
        resource = {"uri": uri, "mimeType": contents.mime_type, "text": contents.text}
        return {"role": "user", "content": {"type": "resource", "resource": resource}}


PROMPTS: Final[tuple[Prompt, ...]] = (
    Prompt(
        "generate-tests", "Generate tests",
        "Write and check a test module for a Python file with qe_test_generate.",
        (Argument("path", "Python file or dotted module under the server's workspace roots."),
         Argument("framework", "pytest (default) or unittest.", required=False)),
        _generate_tests,
    ),
    Prompt(
        "review-coverage", "Review coverage",
        "Summarise a coverage report and plan tests for its riskiest gaps.",
        (Argument("report", "A reportId (cov-…) from qe_coverage_analyze, or a coverage report path."),),
        _review_coverage,
    ),
    Prompt(
        "release-gate", "Release gate",
        "Judge a build against a quality policy: coverage, test results, complexity.",
        (Argument("policy", "A policy of quality.policies (aqe://quality/policies); default: default.", required=False),
         Argument("report", "A reportId (cov-…) or a coverage report path."),
         Argument("junit", "JUnit XML results path.", required=False)),
        _release_gate,
    ),
    Prompt(
        "triage-failures", "Triage test failures",
        "Classify the failures of a JUnit XML run and propose fixes.",
        (Argument("junit", "JUnit XML results path (pytest, jest-junit, Maven Surefire)."),
         Argument("path", "The code under test (file or directory); default: the first workspace root.",
                  required=False)),
        _triage_failures,
    ),
    Prompt(
        "explain-gap", "Explain a coverage gap",
        "Explain the riskiest uncovered code of one file and write the test that covers it.",
        (Argument("reportId", "A reportId (cov-…) from qe_coverage_analyze."),
         Argument("file", "A file of that report, as the report names it.")),
        _explain_gap,
    ),
)


class Prompts:
    """prompts/list and prompts/get."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self.by_name = {prompt.name: prompt for prompt in PROMPTS}

    def listing(self, cursor: Any, modern: bool) -> dict[str, Any]:
        if cursor is not None:
            raise RpcError(rpc.INVALID_PARAMS, "invalid cursor: prompts/list has a single page")
        result: dict[str, Any] = {"prompts": [prompt.wire() for prompt in PROMPTS]}
        if modern:
            result["ttlMs"] = TTL_MS
            result["cacheScope"] = "public"
        return result

    async def get(self, name: Any, arguments: Any, links: bool, principal: str | None) -> dict[str, Any]:
        """The prompt filled in; without `links` (a revision before resource_link) a large embedded resource
        is named in a text message instead."""
        prompt = self.by_name.get(name) if isinstance(name, str) else None
        if prompt is None:
            raise RpcError(
                rpc.INVALID_PARAMS, f"unknown prompt {name!r}; prompts/list has: {', '.join(self.by_name)}"
            )
        given = arguments if arguments is not None else {}
        if not isinstance(given, dict) or not all(isinstance(v, str) for v in given.values()):
            raise RpcError(rpc.INVALID_PARAMS, "prompts/get arguments must be an object of strings")
        names = {argument.name for argument in prompt.arguments}
        unknown = sorted(set(given) - names)
        if unknown:
            raise RpcError(
                rpc.INVALID_PARAMS,
                f"prompt {prompt.name!r} has no argument {', '.join(map(repr, unknown))}; it takes: "
                + ", ".join(sorted(names)),
            )
        missing = [a.name for a in prompt.arguments if a.required and not str(given.get(a.name, "")).strip()]
        if missing:
            raise RpcError(
                rpc.INVALID_PARAMS,
                f"prompt {prompt.name!r} needs argument {', '.join(map(repr, missing))}: "
                + "; ".join(f"{a.name}: {a.description}" for a in prompt.arguments if a.name in missing),
            )
        fill = Fill(self.resources, links, principal)
        messages = await prompt.render(fill, {key: value.strip() for key, value in given.items()})
        return {"description": prompt.description, "messages": messages}
