"""Docstring examples (`>>>` lines) as asserts: each example with expected output or an expected exception
becomes a test that replays the examples before it, with the module's names reached through the module."""

from __future__ import annotations

import ast
import builtins
import functools
import re
from types import ModuleType
from typing import TYPE_CHECKING, Final

import msgspec

from qe_appliance.testgen.cases import regex_escape
from qe_appliance.testgen.model import Capture, Check, Line, Raises, Stmt, TestCase
from qe_appliance.testgen.source import RESERVED, ModuleFacts, qualify

if TYPE_CHECKING:
    import doctest

MAX_EXAMPLES: Final = 20


@functools.cache
def _address() -> re.Pattern[str]:
    return re.compile(r" at 0x[0-9a-fA-F]+")


@functools.cache
def _exception_line() -> re.Pattern[str]:
    return re.compile(r"^([A-Za-z_][\w.]*)(?::\s*(.*))?$")


@functools.cache
def _doctest() -> ModuleType:
    # doctest pulls in pdb and friends (~12 ms): loaded with the first docstring, not at every start-up.
    import doctest

    return doctest


class Docstring(msgspec.Struct, frozen=True):
    """A docstring to mine: whose it is, and the file line its text starts on."""

    text: str
    target: str
    group: str | None
    stem: str
    first_line: int


def _bound(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".", 1)[0] for a in node.names)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
    return names


def docstring_tests(doc: Docstring, facts: ModuleFacts) -> tuple[list[TestCase], list[str]]:
    """Tests from one docstring's examples, and notes on examples that could not be used."""
    try:
        examples = _doctest().DocTestParser().get_examples(doc.text)
    except ValueError as exc:
        return [], [f"{doc.target}: docstring examples are malformed ({exc})"]
    tests: list[TestCase] = []
    notes: list[str] = []
    setup: list[Stmt] = []
    local: set[str] = set()
    # Names the examples bind that the test itself uses (io, buffer, result, ...) get a trailing underscore.
    renames: dict[str, str] = {}
    for example in examples:
        if len(tests) >= MAX_EXAMPLES:
            notes.append(f"{doc.target}: only the first {MAX_EXAMPLES} docstring examples were used")
            break
        line = doc.first_line + example.lineno
        if example.options.get(_doctest().SKIP):
            continue
        try:
            tree = ast.parse(example.source)
        except SyntaxError:
            notes.append(f"{doc.target}: the docstring example at line {line} does not parse")
            continue
        if any(isinstance(node, ast.ImportFrom) and node.names[0].name == "*" for node in ast.walk(tree)):
            notes.append(
                f"{doc.target}: the docstring example at line {line} imports with *, which a test function "
                "cannot; it was left out"
            )
            continue
        bound = _bound(tree)
        renames.update((name, f"{name}_") for name in bound & RESERVED)
        code, unresolved = qualify(tree, facts, local | bound, renames)
        if unresolved:
            notes.append(
                f"{doc.target}: the docstring example at line {line} uses {', '.join(sorted(unresolved))}, "
                "which the module does not define; it was left out"
            )
            continue
        check = _check(example, tree, code, facts, local, renames)
        local |= bound
        if check is None:
            setup.append(Line(code))
            continue
        stmt, how = check
        first = example.source.strip().splitlines()[0]
        tests.append(
            TestCase(
                target=doc.target,
                group=doc.group,
                stem=doc.stem,
                case=f"example_{len(tests) + 1}",
                kind="doctest",
                rationale=f"docstring example at line {line}: >>> {first} {how}",
                body=[*setup, stmt],
                imports=_imports(stmt),
            )
        )
        replay = _replay(tree, code, stmt)
        if replay is not None:
            setup.append(replay)
    return tests, notes


def _replay(tree: ast.Module, code: str, stmt: Stmt) -> Stmt | None:
    """How a checked example reappears before later ones: an expected exception is expected again; an
    expression with a call in it (`stack.pop()`, `next(it)`) is replayed for its effect, which later
    examples may rely on; an expression without one has no effect to replay."""
    if isinstance(stmt, Raises):
        return stmt
    body = tree.body
    if len(body) == 1 and isinstance(body[0], ast.Expr):
        if not any(isinstance(node, ast.Call) for node in ast.walk(body[0].value)):
            return None
    return Line(code)


def _check(
    example: doctest.Example,
    tree: ast.Module,
    code: str,
    facts: ModuleFacts,
    local: set[str],
    renames: dict[str, str],
) -> tuple[Stmt, str] | None:
    """The statement checking an example, and how it reads in a rationale; None when it only sets up."""
    options = example.options
    if example.exc_msg is not None:
        return _raises(example, code, facts)
    want = example.want
    if not want:
        return None
    want = want.replace("<BLANKLINE>", "")
    normalize = bool(options.get(_doctest().NORMALIZE_WHITESPACE))
    body = tree.body
    expression = len(body) == 1 and isinstance(body[0], ast.Expr)
    printing = expression and _is_print(body[0])
    if not expression or printing:
        shown = " ".join(want.split()) if normalize else want
        return Capture([Line(code)], shown, normalize), f"prints {_short(want)}"
    if options.get(_doctest().ELLIPSIS) and "..." in want or _address().search(want):
        return Line(code), "runs (its output is not compared: it varies)"
    text = want.strip()
    try:
        expected_tree = ast.parse(text, mode="eval")
    except SyntaxError:
        expected_tree = None
    if expected_tree is not None:
        expected, unresolved = qualify(expected_tree, facts, local, renames)
        if not unresolved:
            if text in ("True", "False", "None"):
                return Check("is", code, text), f"is {text}"
            return Check("eq", code, expected), f"== {_short(text)}"
    return Check("eq", f"repr({code})", repr(text)), f"shows {_short(text)}"


def _raises(example: doctest.Example, code: str, facts: ModuleFacts) -> tuple[Stmt, str] | None:
    # doctest's exc_msg is the traceback's last part: "statistics.StatisticsError: message".
    first = (example.exc_msg or "").strip().splitlines()
    match = _exception_line().match(first[0]) if first else None
    if match is None:
        return None
    name = match.group(1).rsplit(".", 1)[-1]
    builtin = getattr(builtins, name, None)
    if isinstance(builtin, type) and issubclass(builtin, BaseException) and not facts.defines(name):
        exc = name
    elif name in facts.top_names:
        exc = facts.ref(name)
    else:
        return None
    message = match.group(2)
    pattern = None
    if message and not example.options.get(_doctest().IGNORE_EXCEPTION_DETAIL):
        pattern = regex_escape(message)
    return Raises(exc, pattern, [Line(code)]), f"raises {name}"


def _is_print(stmt: ast.stmt) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Call)
        and isinstance(stmt.value.func, ast.Name)
        and stmt.value.func.id == "print"
    )


def _imports(stmt: Stmt) -> list[str]:
    return ["contextlib", "io"] if isinstance(stmt, Capture) else []


def _short(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= 60 else flat[:57] + "..."
