"""Hostile tool arguments against a real server: every tool, every argument it takes, sent path traversal,
huge or nested values, invalid UTF-8, NUL bytes, out-of-range numbers and malicious XML. Each must come back
as a tool error that says what was wrong (or -32602), never an internal error; nothing outside the workspace
root is read, stored memory survives, and the server keeps serving."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec
import pytest
from mcp import Client

from qe_appliance.coverage.sources import ProjectLayout
from qe_appliance.tools import ALL_TOOLS
from qe_appliance.workspace import glob_regex
from tests.conftest import ServerProcess, start_server

MODERN = "2026-07-28"
SECRET = f"canary{secrets.token_hex(8)}"
# Built by the `hostile` fixture and removed after it; the name carries no part of the secret, since error
# messages may echo the paths they refuse.
BASE = Path(tempfile.gettempdir()) / f"aqe-hostile-{secrets.token_hex(6)}"
ROOT, OUTSIDE = BASE / "root", BASE / "outside"
CANARY = OUTSIDE / "canary.txt"
SENTINEL = {"key": "hostile/sentinel", "value": {"kept": SECRET[::-1]}, "namespace": "hostile", "tags": ["keep"]}
# What a caller must never see: a traceback, or an exception's class name standing in for an explanation.
INTERNALS = re.compile(
    r"Traceback|File \"|\bat 0x[0-9a-f]+|\b[A-Z]\w*(?:Error|Exception|Exit|Interrupt): |"
    r"\b(?:OverflowError|RecursionError|MemoryError|UnicodeEncodeError|KeyError|TypeError|AttributeError)\b"
)
Expect = Literal["error", "any"]


@dataclass(frozen=True)
class Case:
    """One call: `expect` error (isError or -32602) or any (a success is fine too); `hints` are words of
    which at least one must appear in an error's text (case-insensitive); `subtasks_fail`: the call is a
    qe_task_orchestrate that waits, and each of its subtasks must fail with a clear error."""

    tool: str
    args: Any
    expect: Expect = "error"
    hints: tuple[str, ...] = ()
    raw: bytes | None = None  # the arguments' JSON text as sent, when it cannot be built from `args`
    label: str = ""
    subtasks_fail: bool = False


# ---- the workspace: a root, a canary outside it, and hostile files inside it ---------------------------------

LCOV = "TN:\nSF:ok.py\nDA:1,1\nDA:2,0\nDA:3,1\nend_of_record\n"
LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE {root} [\n<!ENTITY a "{payload}">\n'
    + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">\n' for i in range(9))
    + "]>\n<{root}>&j;</{root}>\n"
)
XXE = '<?xml version="1.0"?>\n<!DOCTYPE {root} [<!ENTITY xxe SYSTEM "file://{canary}">]>\n{body}\n'
XXE_PARAM = '<?xml version="1.0"?>\n<!DOCTYPE {root} [<!ENTITY % p SYSTEM "file://{canary}"> %p;]>\n<{root}/>\n'
EXTERNAL_DTD = '<?xml version="1.0"?>\n<!DOCTYPE {root} SYSTEM "file://{canary}">\n<{root}/>\n'
XML_BODIES = {
    "cobertura": '<coverage><sources><source>&xxe;</source></sources><packages><package name="p"><classes>'
    '<class filename="&xxe;" name="x"><lines><line number="1" hits="0"/></lines></class></classes></package>'
    "</packages></coverage>",
    "jacoco": '<report name="&xxe;"><package name="p"><sourcefile name="a.java"><line nr="1" mi="1" ci="0" '
    'mb="0" cb="0"/></sourcefile></package></report>',
    "junit": '<testsuite name="s" tests="1"><testcase classname="c" name="t"><failure message="m">&xxe;'
    "</failure></testcase></testsuite>",
}
XML_ROOTS = {"cobertura": "coverage", "jacoco": "report", "junit": "testsuite"}
TRAPS = ("laughs", "xxe", "xxe_param", "dtd")


def trap_xml(trap: str, fmt: str) -> str:
    """A malicious document of one format: entity expansion (billion laughs), an external entity, a
    parameter entity or an external DTD, the last three pointing at the canary."""
    xml_root = XML_ROOTS[fmt]
    if trap == "laughs":
        return LAUGHS.format(root=xml_root, payload="lol" * 10)
    if trap == "xxe":
        return XXE.format(root=xml_root, canary=CANARY, body=XML_BODIES[fmt])
    if trap == "xxe_param":
        return XXE_PARAM.format(root=xml_root, canary=CANARY)
    return EXTERNAL_DTD.format(root=xml_root, canary=CANARY)


def build_workspace() -> None:
    """ROOT full of traps, and OUTSIDE beside it holding the canary in every format a tool reads."""
    (OUTSIDE / f"dir_{SECRET}").mkdir(parents=True)
    CANARY.write_text(f"{SECRET}\n")
    (OUTSIDE / "canary.py").write_text(
        f'"""{SECRET}"""\n\n\ndef {SECRET}(x: int) -> int:\n    """>>> {SECRET}(1)\n    1\n    """\n    return x\n'
    )
    (OUTSIDE / "canary.xml").write_text(
        f'<testsuite name="{SECRET}" tests="1"><testcase classname="{SECRET}" name="{SECRET}">'
        f'<failure message="{SECRET}"/></testcase></testsuite>'
    )
    (OUTSIDE / "canary.lcov").write_text(f"TN:{SECRET}\nSF:{SECRET}.py\nDA:1,0\nend_of_record\n")
    (OUTSIDE / f"dir_{SECRET}" / f"{SECRET}.py").write_text(f"def {SECRET}(): return 1\n")
    ROOT.mkdir()
    (ROOT / "ok.py").write_text('def add(a: int, b: int) -> int:\n    """Sum."""\n    return a + b\n')
    (ROOT / "subdir").mkdir()
    (ROOT / "link_file.py").symlink_to(OUTSIDE / "canary.py")
    (ROOT / "link_txt").symlink_to(CANARY)
    (ROOT / "link_xml").symlink_to(OUTSIDE / "canary.xml")
    (ROOT / "link_lcov").symlink_to(OUTSIDE / "canary.lcov")
    (ROOT / "link_dir").symlink_to(OUTSIDE)
    (ROOT / "link_dev_zero").symlink_to("/dev/zero")
    (ROOT / "loop_a").symlink_to(ROOT / "loop_b")
    (ROOT / "loop_b").symlink_to(ROOT / "loop_a")
    os.mkfifo(ROOT / "fifo")
    (ROOT / "bad_utf8.py").write_bytes(b"def f(x: int) -> int:\n    return x  # \xff\xfe\xc0\n")
    (ROOT / "nul.py").write_bytes(b"def f(x):\n    return x\x00\n")
    (ROOT / "binary.bin").write_bytes(bytes(range(256)) * 64)
    (ROOT / "bad_utf8.lcov").write_bytes(b"TN:\nSF:\xff\xfe.py\nDA:1,1\nend_of_record\n")
    (ROOT / "bad_utf8_cobertura.xml").write_bytes(
        b'<coverage><packages><package name="p"><classes><class filename="\xff\xfe.py" name="x"><lines>'
        b'<line number="1" hits="0"/></lines></class></classes></package></packages></coverage>'
    )
    (ROOT / "bad_utf8_junit.xml").write_bytes(
        b'<testsuite tests="1"><testcase classname="c" name="\xff\xfe"/></testsuite>'
    )
    (ROOT / "bad_utf8.json").write_bytes(b'{"meta": {}, "files": {"\xff.py": {"executed_lines": [1]}}}')
    for fmt in XML_ROOTS:
        for trap in TRAPS:
            (ROOT / f"{trap}_{fmt}.xml").write_text(trap_xml(trap, fmt))
    (ROOT / "huge_branches.xml").write_text(
        '<coverage><packages><package name="p"><classes><class filename="ok.py" name="x"><lines>'
        '<line number="1" hits="1" branch="true" condition-coverage="50% (1/4000000000)"/>'
        "</lines></class></classes></package></packages></coverage>"
    )
    (ROOT / "huge_branches_jacoco.xml").write_text(
        '<report name="r"><package name="p"><sourcefile name="a.java">'
        '<line nr="1" mi="0" ci="1" mb="4000000000" cb="1"/></sourcefile></package></report>'
    )
    (ROOT / "huge_line.lcov").write_text(f"TN:\nSF:ok.py\nDA:{2**70},1\nend_of_record\n")
    (ROOT / ("n" * 200 + ".py")).write_text("X = 1\n")  # a long name for glob patterns to chew on


@pytest.fixture(scope="module")
def hostile() -> Iterator[ServerProcess]:
    build_workspace()
    (BASE / "server").mkdir()
    try:
        server = start_server(
            BASE / "server",
            {"server": {"workspaceRoots": [str(ROOT)]}, "fleet": {"agents": {"generalist": 2}}},
        )
        try:
            outcome = call(server, "qe_memory_store", SENTINEL)
            assert outcome["result"]["isError"] is False, outcome
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(BASE, ignore_errors=True)


# ---- calling a tool over raw HTTP (the 2026-07-28 stateless era) -------------------------------------------


def _header_value(value: Any) -> str | None:
    """The Mcp-Param-* header a client mirrors for an argument, base64-wrapped so any text travels."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str | int | float):
        text = str(value)
    else:
        return None
    return "=?base64?" + base64.b64encode(text.encode("utf-8", "surrogatepass")).decode() + "?="


def post(server: ServerProcess, tool: str, args: Any, raw: bytes | None = None) -> tuple[int, bytes]:
    """One tools/call; `raw` is sent as the arguments' JSON text verbatim when given."""
    meta = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
    arguments = raw if raw is not None else json.dumps(args).encode()
    body = (
        b'{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": '
        + json.dumps(tool).encode()
        + b', "arguments": '
        + arguments
        + b', "_meta": '
        + json.dumps(meta).encode()
        + b"}}"
    )
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
        "Mcp-Name": tool,
    }
    if tool.startswith("qe_memory") and isinstance(args, dict) and "namespace" in args:
        mirrored = _header_value(args["namespace"])
        if mirrored is not None:
            headers["Mcp-Param-Namespace"] = mirrored
    conn = http.client.HTTPConnection(server.host, int(server.port), timeout=60)
    try:
        conn.request("POST", "/mcp", body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def call(server: ServerProcess, tool: str, args: Any, raw: bytes | None = None) -> dict[str, Any]:
    status, body = post(server, tool, args, raw)
    assert status != 500, body[:2000]
    assert SECRET.encode() not in body, f"the canary leaked: {body[:2000]!r}"
    message = json.loads(body)
    assert status == 200 or "error" in message, (status, body[:2000])
    return message


def error_text(message: dict[str, Any], raw: bool = False) -> str | None:
    """The text of a tool error or an invalid-params error (or, for arguments that are not valid JSON, a
    parse error); None for a successful result."""
    if "error" in message:
        error = message["error"]
        allowed = (-32602, -32700) if raw else (-32602,)
        assert error["code"] in allowed, f"not an invalid-params error: {error}"
        return str(error["message"])
    result = message["result"]
    assert isinstance(result["isError"], bool)
    if not result["isError"]:
        return None
    return "\n".join(block["text"] for block in result["content"] if block["type"] == "text")


def check(message: dict[str, Any], case: Case) -> None:
    text = error_text(message, raw=case.raw is not None)
    if text is None:
        assert case.expect == "any", f"{case.tool} accepted {case.label or case.args!r:.300}: {message}"[:3000]
        if case.subtasks_fail:
            for subtask in message["result"]["structuredContent"]["task"]["subtasks"]:
                assert subtask["status"] == "failed", subtask
                check_clear(subtask["error"], case.hints)
        return
    check_clear(text, case.hints)


def check_clear(text: str, hints: tuple[str, ...]) -> None:
    """An error a caller can act on: long enough to explain, no Python internals, naming what was wrong."""
    assert len(text.strip()) >= 15, f"too terse to act on: {text!r}"
    assert not INTERNALS.search(text), f"python internals in the error: {text[:2000]}"
    if hints:
        assert any(hint.lower() in text.lower() for hint in hints), (
            f"the error does not say what was wrong (wanted one of {hints}): {text[:2000]}"
        )


# ---- the cases ------------------------------------------------------------------------------------------------

LEAVES_ROOT = ("outside the workspace", "symbolic link")
MISSING = ("no such file",)
NOT_FILE = ("not a regular file", "not a python file", "not a directory", "neither", "no python files")


def path_attacks(canary_dir: str) -> list[tuple[str, str, tuple[str, ...], bool]]:
    """(label, path, hints, fine_for_a_directory): every way out of the root, and paths that are not files."""
    return [
        ("dotdot", "../outside/canary.txt", LEAVES_ROOT, False),
        ("dotdot-chain", "../" * 30 + "etc/passwd", LEAVES_ROOT, False),
        ("dotdot-inside-out", "subdir/../../outside/canary.py", LEAVES_ROOT, False),
        ("etc-passwd", "/etc/passwd", LEAVES_ROOT, False),
        ("abs-canary", f"{canary_dir}/canary.txt", LEAVES_ROOT, False),
        ("abs-canary-dir", canary_dir, LEAVES_ROOT, False),
        ("symlink-file", "link_file.py", LEAVES_ROOT, False),
        ("symlink-txt", "link_txt", LEAVES_ROOT, False),
        ("symlink-dir", "link_dir", LEAVES_ROOT, False),
        ("through-symlink-dir", "link_dir/canary.py", LEAVES_ROOT, False),
        ("symlink-dev-zero", "link_dev_zero", LEAVES_ROOT, False),
        ("dev-zero", "/dev/zero", LEAVES_ROOT, False),
        ("proc-self", "/proc/self/environ", LEAVES_ROOT, False),
        ("tilde", "~", MISSING, False),
        ("tilde-file", "~/.bashrc", MISSING, False),
        ("directory", "subdir", NOT_FILE, True),
        ("fifo", "fifo", NOT_FILE, False),
        ("symlink-loop", "loop_a", ("symbolic links", "cannot resolve"), False),
        ("nul-byte", "ok.py\x00../../outside/canary.txt", ("NUL",), False),
        ("long-name", "a" * 5000, ("too long", "no such file"), False),
        ("long-path", "/".join(["a"] * 2500), ("too long", "no such file"), False),
        ("missing", "does/not/exist.py", MISSING, False),
    ]


# Every argument of every tool that names a file or directory: (tool, argument label, arguments builder,
# whether the argument is a directory).
def path_arguments() -> list[tuple[str, str, Any, bool]]:
    return [
        # A plain name is a dotted module name to this tool: it is looked for, and refused, as one.
        ("qe_test_generate", "path", lambda p: {"path": p}, False),
        ("qe_coverage_analyze", "path", lambda p: {"path": p}, False),
        ("qe_coverage_analyze", "root", lambda p: {"content": LCOV, "root": p}, True),
        ("qe_coverage_gaps", "path", lambda p: {"path": p}, False),
        ("qe_coverage_gaps", "sourceRoot", lambda p: {"content": LCOV, "sourceRoot": p}, True),
        (
            "qe_quality_gate",
            "inputs.coverageReport",
            lambda p: {"policy": {"minLineCoverage": 10}, "inputs": {"coverageReport": p}},
            False,
        ),
        (
            "qe_quality_gate",
            "inputs.junitXml",
            lambda p: {"policy": {"maxFailedTests": 0}, "inputs": {"junitXml": p}},
            False,
        ),
        (
            "qe_quality_gate",
            "inputs.sourcePath",
            lambda p: {"policy": {"maxComplexity": 10}, "inputs": {"sourcePath": p}},
            True,
        ),
        ("qe_quality_metrics", "path", lambda p: {"path": p}, True),
        ("qe_quality_metrics", "junitXml", lambda p: {"path": "ok.py", "junitXml": p}, False),
    ]


def file_cases() -> list[Case]:
    """Files inside the root that are hostile by content: invalid UTF-8, binary, NUL bytes, malicious XML."""
    cases: list[Case] = []
    xml_refused = ("entit", "doctype", "external", "not well-formed", "undefined")
    for fmt in XML_ROOTS:
        for trap in TRAPS:
            name = f"{trap}_{fmt}.xml"
            hints = xml_refused
            # Real reports name their DTD (JaCoCo's report.dtd); it is never loaded, so the document reads
            # as if it had none, and the canary check is what matters.
            expect: Expect = "any" if trap == "dtd" else "error"
            if fmt == "junit":
                cases.append(
                    Case("qe_quality_metrics", {"path": "ok.py", "junitXml": name}, expect=expect, hints=hints)
                )
                cases.append(
                    Case(
                        "qe_quality_gate",
                        {"policy": {"maxFailedTests": 0}, "inputs": {"junitXml": name}},
                        expect=expect,
                        hints=hints,
                    )
                )
                inline = trap_xml(trap, fmt)
                cases.append(
                    Case(
                        "qe_quality_metrics",
                        {"path": "ok.py", "junitXml": inline},
                        expect=expect,
                        hints=hints,
                        label=f"inline {name}",
                    )
                )
            else:
                cases.append(Case("qe_coverage_analyze", {"path": name}, expect=expect, hints=hints))
                cases.append(Case("qe_coverage_gaps", {"path": name}, expect=expect, hints=hints))
                cases.append(
                    Case(
                        "qe_coverage_analyze",
                        {"content": trap_xml(trap, fmt)},
                        expect=expect,
                        hints=hints,
                        label=f"inline {name}",
                    )
                )
                cases.append(
                    Case(
                        "qe_quality_gate",
                        {"policy": {"minLineCoverage": 1}, "inputs": {"coverageReport": name}},
                        expect=expect,
                        hints=hints,
                    )
                )
    not_utf8 = ("utf-8", "utf8", "not valid", "invalid", "encoding", "malformed")
    cases += [
        Case("qe_coverage_analyze", {"path": "bad_utf8.lcov"}, "any"),
        Case("qe_coverage_analyze", {"path": "bad_utf8_cobertura.xml"}, hints=not_utf8),
        Case("qe_coverage_analyze", {"path": "bad_utf8.json"}, hints=not_utf8),
        Case("qe_coverage_analyze", {"path": "binary.bin"}, hints=("not a coverage report", "format")),
        Case("qe_coverage_analyze", {"path": "binary.bin", "format": "lcov"}),
        Case("qe_coverage_analyze", {"path": "binary.bin", "format": "cobertura"}),
        Case("qe_coverage_analyze", {"path": "binary.bin", "format": "jacoco"}),
        Case("qe_coverage_analyze", {"path": "binary.bin", "format": "istanbul"}),
        Case("qe_coverage_analyze", {"path": "binary.bin", "format": "coveragepy-json"}),
        Case("qe_coverage_gaps", {"path": "bad_utf8.lcov"}, "any"),
        Case("qe_coverage_analyze", {"path": "huge_branches.xml"}, hints=("branch",)),
        Case("qe_coverage_analyze", {"path": "huge_branches_jacoco.xml"}, hints=("branch", "mb")),
        Case("qe_coverage_analyze", {"path": "huge_line.lcov"}, hints=("line",)),
        Case("qe_quality_metrics", {"path": "ok.py", "junitXml": "bad_utf8_junit.xml"}, hints=not_utf8),
        Case("qe_quality_metrics", {"path": "ok.py", "junitXml": "binary.bin"}),
        Case("qe_quality_metrics", {"path": "bad_utf8.py"}, "any"),
        Case("qe_quality_metrics", {"path": "nul.py"}, "any"),
        Case("qe_quality_metrics", {"path": "."}, "any"),
        Case("qe_test_generate", {"path": "bad_utf8.py"}, hints=not_utf8),
        Case("qe_test_generate", {"path": "nul.py"}, hints=("null", "NUL")),
        Case("qe_test_generate", {"path": "binary.bin"}, hints=("python file", ".py")),
        Case("qe_test_generate", {"path": "link_dir.canary"}, hints=("no module",)),
        Case("qe_quality_gate", {"policy": {"maxComplexity": 5}, "inputs": {"sourcePath": "nul.py"}}, "any"),
    ]
    return cases


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"a": value}
    return value


def nested_list(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


BIG = 3 * 1024 * 1024
# A valid call of each tool that changes nothing lasting (no agent started), to vary one argument at a time.
VALID: dict[str, dict[str, Any]] = {
    "qe_test_generate": {"source": "def f(x: int) -> int:\n    return x\n"},
    "qe_coverage_analyze": {"content": LCOV},
    "qe_coverage_gaps": {"content": LCOV},
    "qe_quality_gate": {"policy": {"minLineCoverage": 50}, "metrics": {"lineCoverage": 60}},
    "qe_quality_metrics": {"path": "ok.py"},
    "qe_fleet_init": {"agents": {"generalist": 0}},
    "qe_fleet_status": {},
    "qe_agent_spawn": {"type": "generalist", "capacity": 0},
    "qe_task_orchestrate": {"task": {"tool": "qe_memory_retrieve", "inputs": [{"key": "x"}]}},
    "qe_memory_store": {"key": "k", "value": 1},
    "qe_memory_retrieve": {"key": "k"},
    "qe_memory_search": {},
    "qe_learn_pattern": {"pattern": "p", "patternType": "mock", "domain": "d", "language": "python", "confidence": 0.5},
    "qe_learn_status": {},
}
NUMBERS: list[tuple[str, Any]] = [
    ("negative", -1),
    ("zero", 0),
    ("1e308", 1e308),
    ("2**64", 2**64),
    ("-2**64", -(2**64)),
    ("nan-string", "NaN"),
    ("inf-string", "Infinity"),
    ("numeric-string", "10"),
    ("null", None),
    ("object", {}),
    ("array", [1]),
    ("bool", True),
    ("fraction", 1.5),
]


def number_cases() -> list[Case]:
    """Every numeric argument, given every out-of-range or wrongly typed number."""
    targets = [
        ("qe_test_generate", "maxTests"),
        ("qe_coverage_analyze", "maxFiles"),
        ("qe_coverage_gaps", "minRisk"),
        ("qe_coverage_gaps", "limit"),
        ("qe_quality_metrics", "maxFiles"),
        ("qe_fleet_init", "maxAgents"),
        ("qe_agent_spawn", "capacity"),
        ("qe_task_orchestrate", "maxAgents"),
        ("qe_memory_store", "ttlSeconds"),
        ("qe_memory_search", "limit"),
        ("qe_memory_search", "offset"),
        ("qe_learn_pattern", "confidence"),
        ("qe_quality_gate", "policy.minLineCoverage"),
        ("qe_quality_gate", "metrics.lineCoverage"),
        ("qe_quality_gate", "metrics.failedTests"),
    ]
    cases = []
    for tool, name in targets:
        for label, value in NUMBERS:
            args = json.loads(json.dumps(VALID[tool]))
            holder = args
            *parents, leaf = name.split(".")
            for parent in parents:
                holder = holder.setdefault(parent, {})
            holder[leaf] = value
            # Some values are in range for some arguments (0 offset, 1.5 minRisk...): a success is fine then,
            # as long as it is not an internal error.
            cases.append(Case(tool, args, "any", label=f"{name}={label}"))
    strict = [
        ("qe_memory_search", {"offset": 2**64}, ("offset",)),
        ("qe_memory_search", {"limit": 2**64}, ("limit",)),
        ("qe_memory_store", {"key": "t", "value": 1, "ttlSeconds": -1}, ("ttl",)),
        ("qe_memory_store", {"key": "t", "value": 1, "ttlSeconds": 1e308}, ("ttl",)),
        ("qe_memory_store", {"key": "t", "value": 1, "ttlSeconds": "NaN"}, ("ttl",)),
        (
            "qe_learn_pattern",
            {"pattern": "p", "patternType": "mock", "domain": "d", "language": "py", "confidence": 1e308},
            ("confidence",),
        ),
        ("qe_coverage_gaps", {"content": LCOV, "limit": 2**64}, ("limit",)),
        ("qe_fleet_init", {"agents": {"generalist": 2**64}}, ("agents",)),
        ("qe_fleet_init", {"agents": {"generalist": -1}}, ("agents",)),
        ("qe_agent_spawn", {"type": "generalist", "capacity": 0}, ("capacity",)),
    ]
    cases += [Case(tool, args, hints=hints, label=f"strict {args}") for tool, args, hints in strict]
    return cases


def shape_cases() -> list[Case]:
    """Wrong types, unknown and missing arguments, empty strings and NUL bytes, for every argument of every
    tool, each varied alone in an otherwise valid call."""
    cases: list[Case] = []
    for tool in ALL_TOOLS:
        schema, valid = tool.input_schema, VALID[tool.name]
        # qe_agent_spawn's base call is invalid on purpose (capacity 0: no agent is started), which is
        # reported first.
        unknown = ("unknown argument",) if tool.name != "qe_agent_spawn" else ("capacity",)
        cases.append(Case(tool.name, {**valid, "noSuchArgument": 1}, label="unknown argument", hints=unknown))
        cases.append(Case(tool.name, [], label="array for arguments", hints=("object", "expected")))
        cases.append(Case(tool.name, "text", label="string for arguments", hints=("object", "expected")))
        cases.append(Case(tool.name, None, "any", label="null arguments"))
        if schema.get("required"):
            cases.append(Case(tool.name, {}, label="missing required", hints=("missing required",)))
        for name in schema.get("properties", {}):
            values = (("object", {"x": 1}), ("array", [1, 2]), ("number", 12345), ("null", None), ("empty", ""))
            for label, value in values:
                cases.append(Case(tool.name, {**valid, name: value}, "any", label=f"{name} {label}"))
            if name != "namespace":  # a namespace travels in a header too, where NUL cannot
                cases.append(Case(tool.name, {**valid, name: "x\x00y"}, "any", label=f"{name} with NUL"))
    return cases


def huge_cases() -> list[Case]:
    """Huge inline content, huge arrays and deep nesting, for the arguments that take them."""
    big_lcov = "TN:\n" + "".join(f"SF:f{i:07d}.py\nDA:1,1\nDA:2,0\nend_of_record\n" for i in range(BIG // 43))
    deep_lcov = "TN:\n" + "".join(
        f"SF:f{i}.py\n" + "".join(f"DA:{n},{n % 2}\n" for n in range(1, BIG // 1000)) + "end_of_record\n"
        for i in range(100)
    )
    # 3 MB, most of it one string literal (quick to parse), around more functions than one call takes.
    big_source = f'DATA = """{"lorem ipsum " * (BIG // 12)}"""\n\n\n' + "".join(
        f"def f{i}(x: int) -> int:\n    return x + {i}\n\n\n" for i in range(250)
    )
    big_junit = "<testsuite>" + '<testcase classname="c" name="t"/>' * (BIG // 36) + "</testsuite>"
    deep_source = "x = " + "(" * 300 + "1" + ")" * 300 + "\n"
    unary_source = "x = " + "-" * 200_000 + "1\n"
    return [
        Case("qe_coverage_analyze", {"content": big_lcov}, "any", label="3 MB lcov"),
        Case("qe_coverage_analyze", {"content": "x" * BIG}, hints=("not a coverage report",), label="3 MB junk"),
        Case("qe_coverage_gaps", {"content": deep_lcov}, "any", label="3 MB lcov gaps"),
        Case("qe_test_generate", {"source": big_source}, hints=("targets",), label="3 MB source"),
        Case("qe_test_generate", {"source": "# c\n" * (BIG // 4)}, label="3 MB comments"),
        Case("qe_test_generate", {"source": deep_source}, hints=("parse", "nested"), label="nested parens"),
        Case(
            "qe_test_generate",
            {"source": unary_source},
            hints=("parse", "nested", "complex", "deep"),
            label="200k unary minus",
        ),
        Case("qe_test_generate", {"source": "def f(x):\n    return x\x00\n"}, hints=("null", "NUL")),
        Case(
            "qe_test_generate",
            {"source": "def f(x): return x\n", "targets": ["../x"] * 100_000},
            hints=("targets",),
            label="100k targets",
        ),
        Case(
            "qe_test_generate", {"source": "def f(x): return x\n", "module": "../../etc/passwd"}, hints=("module name",)
        ),
        Case("qe_test_generate", {"source": "def f(x): return x\n", "module": "a\x00b"}, hints=("module name",)),
        Case("qe_quality_metrics", {"path": "ok.py", "junitXml": big_junit}, "any", label="3 MB junit"),
        Case(
            "qe_quality_metrics",
            {"path": ".", "include": ["*"] * 100_000},
            hints=("include",),
            label="100k include globs",
        ),
        Case(
            "qe_quality_metrics", {"path": ".", "include": ["**/" * 300 + "x.py"]}, "any", label="pathological ** glob"
        ),
        Case("qe_quality_metrics", {"path": ".", "include": ["*?" * 15 + "x"]}, "any", label="pathological * glob"),
        Case("qe_quality_metrics", {"path": ".", "exclude": ["*n" * 20 + "x"]}, "any", label="pathological exclude"),
        Case("qe_quality_metrics", {"path": ".", "include": ["[" * 1000]}, "any", label="unbalanced sets"),
        Case(
            "qe_learn_pattern",
            {"pattern": "p" * BIG, "patternType": "mock", "domain": "d", "language": "py", "confidence": 0.5},
            hints=("pattern",),
            label="3 MB pattern",
        ),
        Case("qe_memory_store", {"key": "big", "value": "v" * BIG}, hints=("maxValueBytes",), label="3 MB value"),
        Case(
            "qe_memory_store",
            {"key": "deep", "value": nested(50), "metadata": nested(50)},
            "any",
            label="50-deep value and metadata",
        ),
        Case("qe_memory_store", {"key": "deep-list", "value": nested_list(55)}, "any", label="55-deep list"),
        Case("qe_memory_store", {"key": "wide", "value": list(range(100_000))}, "any", label="100k array"),
        Case(
            "qe_memory_store", {"key": "tags", "value": 1, "tags": ["t"] * 100_000}, hints=("tags",), label="100k tags"
        ),
        Case("qe_memory_store", {"key": "meta", "value": 1, "metadata": [1, 2]}, hints=("metadata",)),
        Case(
            "qe_task_orchestrate",
            {"task": {"tool": "qe_memory_retrieve", "inputs": [{}] * 100_000}},
            hints=("inputs",),
            label="100k subtasks",
        ),
        Case(
            "qe_task_orchestrate",
            {"task": {"tool": "qe_memory_retrieve", "inputs": {"key": "x"}}},
            hints=("inputs",),
            label="object for inputs",
        ),
        Case(
            "qe_task_orchestrate",
            {"task": {"tool": "qe_memory_retrieve", "inputs": [1, "x", None]}},
            hints=("inputs",),
            label="scalar inputs",
        ),
        Case("qe_quality_gate", {"policy": nested(50)}, hints=("policy",), label="50-deep policy"),
    ]


def memory_cases() -> list[Case]:
    namespace = ("namespace",)
    return [
        Case("qe_memory_store", {"key": "../../../etc/passwd", "value": "not a file"}, "any"),
        Case("qe_memory_store", {"key": "k", "value": 1, "namespace": "../escape"}, hints=namespace),
        Case("qe_memory_store", {"key": "k", "value": 1, "namespace": "/etc"}, hints=namespace),
        Case("qe_memory_store", {"key": "k", "value": 1, "namespace": "a\x00b"}, hints=namespace),
        Case("qe_memory_store", {"key": "k", "value": 1, "namespace": ""}, hints=namespace),
        Case("qe_memory_store", {"key": "k", "value": 1, "namespace": "n" * 5000}, hints=namespace),
        Case("qe_memory_store", {"key": "nul\x00key", "value": "nul\x00value", "tags": ["t\x00g"]}, "any"),
        Case("qe_memory_store", {"key": "k" * 5000, "value": 1}, hints=("maxKeyLength",)),
        Case("qe_memory_store", {"key": "", "value": 1}, hints=("key",)),
        Case("qe_memory_store", {"key": "k", "value": 1, "tags": {"a": 1}}, hints=("tags",)),
        Case("qe_memory_store", {"key": "k", "value": 1, "tags": [""]}, hints=("tags",)),
        Case("qe_memory_store", {"key": "k", "value": 1, "tags": ["t" * 65]}, hints=("tags",)),
        Case("qe_memory_store", {"key": "k"}, hints=("value",)),
        Case("qe_memory_store", {"key": "k", "value": 1, "ttlSeconds": 2**64}, hints=("ttl",)),
        Case("qe_memory_retrieve", {"key": "../../etc/passwd"}, "any"),
        Case("qe_memory_retrieve", {"key": "k", "namespace": "../.."}, hints=namespace),
        Case("qe_memory_retrieve", {"key": "k", "namespace": "*"}, hints=namespace),
        Case("qe_memory_search", {"namespace": "%"}, hints=namespace),
        Case("qe_memory_search", {"pattern": "*" * 1000}, "any"),
        Case("qe_memory_search", {"pattern": "*a" * 500}, "any"),
        Case("qe_memory_search", {"pattern": "[" * 1000}, "any"),
        Case("qe_memory_search", {"pattern": "*" * 1001}, hints=("pattern",)),
        Case("qe_memory_search", {"query": '"'}, hints=("no words",)),
        Case("qe_memory_search", {"query": '"unbalanced'}, "any"),
        Case("qe_memory_search", {"query": "NEAR("}, "any"),
        Case("qe_memory_search", {"query": "NEAR(a b, 2"}, "any"),
        Case("qe_memory_search", {"query": "*"}, hints=("no words",)),
        Case("qe_memory_search", {"query": "a* OR b* NOT c* AND ^d {e} col:f"}, "any"),
        Case("qe_memory_search", {"query": "a\x00b"}, "any"),
        Case("qe_memory_search", {"query": "\x00"}, hints=("no words",)),
        Case("qe_memory_search", {"query": "word " * 200}, "any"),
        Case("qe_memory_search", {"prefix": "\x00"}, "any"),
        Case("qe_memory_search", {"prefix": "\U0010ffff" * 10}, "any"),
        Case("qe_memory_search", {"tags": ["t"] * 33}, hints=("tags",)),
        Case("qe_memory_search", {"tags": "keep"}, hints=("tags",)),
        Case(
            "qe_learn_pattern",
            {"pattern": "p", "patternType": "mock", "domain": "d\x00", "language": "py", "confidence": 0.5},
            "any",
        ),
        Case(
            "qe_learn_pattern",
            {"pattern": " ", "patternType": "mock", "domain": "d", "language": "py", "confidence": 0.5},
            hints=("blank",),
        ),
        Case(
            "qe_learn_pattern",
            {"pattern": "p", "patternType": "../x", "domain": "d", "language": "py", "confidence": 0.5},
            hints=("patternType",),
        ),
        Case(
            "qe_learn_pattern",
            {
                "pattern": "p",
                "patternType": "mock",
                "domain": "d",
                "language": "py",
                "confidence": 0.5,
                "outcome": {"patternId": "../../x", "success": True},
            },
            hints=("pattern",),
        ),
        Case("qe_learn_status", {"domain": "'; DROP TABLE patterns; --"}, "any"),
        Case("qe_fleet_status", {"taskId": "../../etc/passwd"}, hints=("no task",)),
        Case("qe_fleet_status", {"taskId": "\x00"}, hints=("no task",)),
        Case("qe_fleet_status", {"taskId": "t" * 5000}, hints=("taskId",)),
        Case("qe_fleet_init", {"agents": {}}, hints=("agents",)),
        Case("qe_fleet_init", {"agents": {"../etc": 1}}, hints=("agents", "expected")),
        Case("qe_fleet_init", {"agents": {"generalist": 0}, "topology": "../x"}, hints=("topology",)),
        Case("qe_agent_spawn", {"type": "../../bin/sh"}, hints=("type",)),
        Case("qe_task_orchestrate", {"task": {"tool": "../../bin/sh", "inputs": [{}]}}, hints=("tool",)),
        Case("qe_task_orchestrate", {"task": {"tool": "qe_task_orchestrate", "inputs": [{}]}}, hints=("orchestrate",)),
        Case("qe_task_orchestrate", {"task": {"pipeline": "../x", "inputs": [{}]}}, hints=("pipeline",)),
        Case(
            "qe_task_orchestrate",
            {"task": {"tool": "qe_memory_retrieve", "pipeline": "coverage-gate", "inputs": [{}]}},
            hints=("exactly one",),
        ),
        Case("qe_task_orchestrate", {"task": {"inputs": [{}]}}, hints=("exactly one",)),
        Case("qe_coverage_gaps", {"reportId": "../../etc/passwd"}, hints=("reportId",)),
        Case("qe_coverage_gaps", {"reportId": "cov-0000000000000000"}, hints=("no stored report",)),
        Case("qe_coverage_gaps", {"reportId": "cov-\x00"}, hints=("reportId",)),
        Case("qe_coverage_analyze", {"content": LCOV, "format": "../x"}, hints=("format",)),
        Case(
            "qe_quality_gate", {"policyName": "../../etc/passwd", "metrics": {"lineCoverage": 1}}, hints=("no policy",)
        ),
        Case("qe_quality_gate", {"policyName": "\x00", "metrics": {"lineCoverage": 1}}, hints=("no policy",)),
        Case(
            "qe_quality_gate",
            {"policy": {"maxFailedTests": 0}, "inputs": {"junitXml": "<" + "a" * 100}},
            hints=("junit", "xml"),
        ),
    ]


def raw_cases() -> list[Case]:
    """Argument texts no JSON encoder would write: numbers out of double range, invalid UTF-8 bytes."""
    return [
        Case(
            "qe_memory_store",
            None,
            raw=b'{"key": "r", "value": 1, "ttlSeconds": 1e400}',
            label="1e400 ttl",
            hints=("ttl", "range"),
        ),
        Case("qe_memory_search", None, raw=b'{"limit": 1e400}', label="1e400 limit", hints=("limit", "range")),
        Case(
            "qe_memory_search",
            None,
            raw=b'{"offset": 99999999999999999999999999999999}',
            label="huge offset",
            hints=("offset",),
        ),
        Case(
            "qe_memory_store",
            None,
            raw=b'{"key": "k\\ud800", "value": 1}',
            label="lone surrogate key",
            hints=("surrogate", "hex escape", "malformed"),
        ),
        Case(
            "qe_memory_store",
            None,
            raw=b'{"key": "k\xff\xfe", "value": 1}',
            label="invalid utf-8 key",
            hints=("utf-8", "malformed"),
        ),
        Case(
            "qe_test_generate",
            None,
            raw=b'{"source": "def f(x):\\n    return \xc0\x80x\\n"}',
            label="invalid utf-8 source",
            hints=("utf-8", "malformed"),
        ),
    ]


def cobertura(line: str, method: str = "") -> str:
    methods = f"<methods>{method}</methods>" if method else ""
    return (
        '<coverage><packages><package name="p"><classes><class filename="ok.py" name="x">'
        f"{methods}<lines>{line}</lines></class></classes></package></packages></coverage>"
    )


def report_cases() -> list[Case]:
    """Inline reports that are well-formed but state numbers no real report does."""
    line = '<line number="1" hits="1"/>'
    many_branches = "".join(
        f'<line number="{i}" hits="1" branch="true" condition-coverage="50% (1/9000)"/>' for i in range(1, 2000)
    )
    sneaky = "".join(
        f'<line number="{i}" hits="1" branch="true" condition-coverage="0% (0/{-9000 if i % 2 else 9000})"/>'
        for i in range(1, 2000)
    )
    return [
        Case("qe_coverage_analyze", {"content": cobertura(line.replace('"1"', f'"{2**70}"', 1))}, hints=("line",)),
        Case(
            "qe_coverage_analyze",
            {"content": cobertura(many_branches)},
            hints=("branch",),
            label="2000 lines of 9000 branches",
        ),
        Case("qe_coverage_analyze", {"content": cobertura(sneaky)}, "any", label="negative branch counts"),
        Case(
            "qe_coverage_analyze",
            {"content": cobertura(line, f'<method name="m" complexity="inf">{line}</method>')},
            "any",
            label="infinite complexity",
        ),
        Case(
            "qe_coverage_analyze",
            {"content": cobertura(line, f'<method name="m" complexity="1e300">{line}</method>')},
            hints=("line number or count",),
            label="huge complexity",
        ),
        Case(
            "qe_coverage_analyze",
            {
                "content": '<report name="r"><package name="p"><class name="p/A" '
                'sourcefilename="A.java"><method name="m" line="\u00b2"><counter type="METHOD" missed="0" '
                'covered="1"/></method></class><sourcefile name="A.java"><line nr="1" mi="0" ci="1" mb="0" cb="0"/>'
                "</sourcefile></package></report>"
            },
            "any",
            label="superscript method line",
        ),
        Case(
            "qe_coverage_analyze",
            {"content": f"TN:\nSF:ok.py\nFN:{2**70},f\nDA:1,1\nend_of_record\n"},
            hints=("line number or count",),
            label="lcov huge function line",
        ),
        Case(
            "qe_coverage_analyze",
            {"content": f'{{"meta": {{}}, "files": {{"a.py": {{"executed_lines": [{2**70}], "missing_lines": []}}}}}}'},
            hints=("line number or count",),
            label="coverage.py huge line",
        ),
        Case(
            "qe_quality_metrics",
            {"path": "ok.py", "junitXml": f'<testsuite tests="{2**70}" failures="0"/>'},
            hints=("count",),
            label="junit huge count",
        ),
        Case(
            "qe_quality_metrics",
            {"path": "ok.py", "junitXml": f'<testsuite tests="{"9" * 5000}"/>'},
            hints=("count",),
            label="junit 5000-digit count",
        ),
        Case(
            "qe_coverage_analyze",
            {"content": cobertura(line.replace('"1"', f'"{"9" * 400}"', 1))},
            hints=("line number or count",),
            label="400-digit line number",
        ),
        Case(
            "qe_coverage_analyze",
            {"content": cobertura(line.replace('"1"', f'"{"9" * 5000}"', 1))},
            hints=("line number",),
            label="5000-digit line number",
        ),
        Case(
            "qe_coverage_analyze",
            {"content": f"TN:\nSF:ok.py\nDA:{'9' * 5000},1\nend_of_record\n"},
            hints=("DA",),
            label="lcov 5000-digit line",
        ),
        Case(
            "qe_coverage_analyze",
            {
                "content": '<report name="r"><package name="p"><class name="p/A" '
                f'sourcefilename="A.java"><method name="m" line="{"9" * 5000}"><counter type="METHOD" missed="0" '
                'covered="1"/></method></class><sourcefile name="A.java"><line nr="1" mi="0" ci="1" mb="0" cb="0"/>'
                "</sourcefile></package></report>"
            },
            "any",
            label="jacoco 5000-digit method line",
        ),
        Case(
            "qe_quality_metrics",
            {"path": "ok.py", "junitXml": '<testsuite tests="\u00b2"/>'},
            hints=("count",),
            label="junit superscript count",
        ),
        Case(
            "qe_quality_metrics",
            {
                "path": "ok.py",
                "junitXml": '<testsuite time="1e999" tests="1"><testcase name="t" time="nan"/></testsuite>',
            },
            "any",
            label="junit infinite time",
        ),
        Case(
            "qe_quality_metrics",
            {"path": "ok.py", "junitXml": "<testsuite>" + "<a>" * 100_000 + "</a>" * 100_000 + "</testsuite>"},
            "any",
            label="junit 100k deep",
        ),
    ]


def orchestrated_cases(canary_dir: str) -> list[Case]:
    """The same attacks one level down: arguments of subtasks run by qe_task_orchestrate."""
    inputs = [
        {"path": f"{canary_dir}/canary.lcov"},
        {"path": "link_lcov"},
        {"path": "../outside/canary.lcov"},
        {"path": "xxe_cobertura.xml"},
        {"content": LCOV, "root": canary_dir},
    ]
    refused = ("outside the workspace", "symbolic link", "entities")
    return [
        Case(
            "qe_task_orchestrate",
            {"task": {"tool": "qe_coverage_analyze", "inputs": inputs}, "wait": True},
            "any",
            refused,
            label="orchestrated coverage attacks",
            subtasks_fail=True,
        ),
        Case(
            "qe_task_orchestrate",
            {"task": {"pipeline": "coverage-gate", "inputs": inputs}, "wait": True},
            "any",
            refused,
            label="orchestrated pipeline attacks",
            subtasks_fail=True,
        ),
        Case(
            "qe_task_orchestrate",
            {"task": {"tool": "qe_memory_search", "inputs": [{"offset": 2**64}, {"query": "*"}]}, "wait": True},
            "any",
            ("offset", "no words"),
            label="orchestrated memory attacks",
            subtasks_fail=True,
        ),
        Case(
            "qe_task_orchestrate",
            {"task": {"tool": "qe_test_generate", "inputs": [{"path": "link_file.py"}]}, "wait": True},
            "any",
            ("symbolic link",),
            label="orchestrated symlink",
            subtasks_fail=True,
        ),
    ]


def all_cases() -> list[Case]:
    canary_dir = str(OUTSIDE)
    cases: list[Case] = []
    for tool, argument, build, is_dir in path_arguments():
        for label, path, hints, fine_for_dir in path_attacks(canary_dir):
            fine = is_dir and fine_for_dir
            if tool == "qe_test_generate":
                hints = (*hints, "no module")
            cases.append(
                Case(tool, build(path), "any" if fine else "error", () if fine else hints, label=f"{argument} {label}")
            )
    cases += file_cases() + number_cases() + shape_cases() + huge_cases() + memory_cases() + raw_cases()
    cases += report_cases() + orchestrated_cases(canary_dir)
    # A valid qe_agent_spawn starts a process: not what this file is about, and it would slow every case after.
    spawn = next(tool.input_type for tool in ALL_TOOLS if tool.name == "qe_agent_spawn")
    return [case for case in cases if not (case.tool == "qe_agent_spawn" and _valid(case.args, spawn))]


def _valid(args: Any, input_type: type) -> bool:
    try:
        msgspec.convert(args, input_type)
    except msgspec.ValidationError:
        return False
    return True


def case_id(case: Case) -> str:
    text = case.label or json.dumps(case.args)[:40]
    return f"{case.tool}:{re.sub(r'[^A-Za-z0-9_.=:-]+', '-', text)[:60]}"


CASES = all_cases()


def test_every_tool_is_attacked() -> None:
    attacked = {case.tool for case in CASES}
    assert attacked == {tool.name for tool in ALL_TOOLS}


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_hostile_arguments_are_refused_clearly(hostile: ServerProcess, case: Case) -> None:
    message = call(hostile, case.tool, case.args, case.raw)
    check(message, case)


# ---- through the official client ------------------------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_official_client_sees_clear_tool_errors(hostile: ServerProcess) -> None:
    async with Client(hostile.url) as client:
        for tool, args, hint in [
            ("qe_coverage_analyze", {"path": str(OUTSIDE / "canary.lcov")}, "outside the workspace"),
            ("qe_coverage_analyze", {"path": "link_lcov"}, "symbolic link"),
            ("qe_quality_metrics", {"path": "ok.py", "junitXml": "xxe_junit.xml"}, "entit"),
            ("qe_test_generate", {"path": "link_dir/canary.py"}, "symbolic link"),
            ("qe_memory_store", {"key": "k", "value": 1, "namespace": "../up"}, "namespace"),
            ("qe_memory_search", {"offset": 2**64}, "offset"),
        ]:
            result = await client.call_tool(tool, args)
            texts = "\n".join(getattr(block, "text", "") for block in result.content)
            assert result.is_error, (tool, args, texts)
            assert hint.lower() in texts.lower() and SECRET not in texts
            assert not INTERNALS.search(texts), texts
        kept = await client.call_tool("qe_memory_retrieve", {"key": SENTINEL["key"], "namespace": "hostile"})
        assert kept.structured_content["value"] == SENTINEL["value"]


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("*?" * 15 + "x", "n" * 200 + ".py", False),
        ("*n" * 40 + "x", "n" * 200 + ".py", False),
        ("*n" * 40 + ".py", "n" * 200 + ".py", True),
        ("**/" * 300 + "x.py", "a/" * 50 + "y.py", False),
        ("**/a/**/a/**/a/**/b.py", "a/" * 60 + "c.py", False),
        ("**/a/**/a/**/b.py", "x/a/y/a/b.py", True),
    ],
)
def test_glob_patterns_cannot_stall_a_walk(pattern: str, path: str, matches: bool) -> None:
    """include/exclude globs come from callers; each must match in about linear time whatever its shape
    (a plain regex translation of these takes minutes to hours)."""
    started = time.monotonic()
    assert bool(glob_regex(pattern).fullmatch(path)) is matches
    assert time.monotonic() - started < 0.5


def test_report_file_names_do_not_send_the_layout_probe_outside_the_root(tmp_path: Path) -> None:
    """Where a gap's test belongs is guessed from the files beside it; for a name leading out of the root
    (by '..' or a linked directory) nothing outside is looked at, so the guess cannot reveal it."""
    (tmp_path / "root").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.spec.js").write_text("")
    (tmp_path / "outside" / "test_y.py").write_text("")
    (tmp_path / "root" / "linked").symlink_to(tmp_path / "outside")
    layout = ProjectLayout(tmp_path / "root")
    for name in ("../outside/x.js", "linked/x.js"):
        assert layout.suggest(None, name).endswith("x.test.js")
    for name in ("../outside/y.py", "linked/y.py"):
        assert layout.suggest(None, name) == "tests/test_y.py"


# ---- afterwards -----------------------------------------------------------------------------------------------


def test_nul_key_round_trips(hostile: ServerProcess) -> None:
    stored = call(hostile, "qe_memory_store", {"key": "nul\x00k2", "value": "a\x00b", "namespace": "hostile"})
    assert stored["result"]["isError"] is False, stored
    found = call(hostile, "qe_memory_retrieve", {"key": "nul\x00k2", "namespace": "hostile"})
    assert found["result"]["structuredContent"]["value"] == "a\x00b"


def test_server_survives_and_memory_is_intact(hostile: ServerProcess) -> None:
    assert hostile.proc.poll() is None, "the server died"
    found = call(hostile, "qe_memory_retrieve", {"key": SENTINEL["key"], "namespace": "hostile"})
    content = found["result"]["structuredContent"]
    assert content["found"] and content["value"] == SENTINEL["value"] and content["tags"] == ["keep"]
    listed = call(hostile, "qe_memory_search", {"tags": ["keep"]})
    assert listed["result"]["structuredContent"]["total"] == 1
    ok = call(hostile, "qe_coverage_analyze", {"content": LCOV})
    assert ok["result"]["isError"] is False, ok
    status = call(hostile, "qe_fleet_status", {})
    agents = status["result"]["structuredContent"]["agents"]
    assert agents and all(agent["status"] != "dead" for agent in agents)
    log = hostile.log
    assert "Traceback" not in log, log[-5000:]
    assert " died " not in log and "did not answer" not in log, "an agent was lost to an argument"
    assert "unhandled" not in log.lower(), log[-5000:]
    assert SECRET not in log
