"""Generated tests as a pytest or unittest module: imports, one function (or method) per test, each
checked to parse on its own so the module as a whole always compiles."""

from __future__ import annotations

import ast
import functools
import keyword
import re
import textwrap
from typing import Final, Literal

import msgspec

from qe_appliance.testgen.model import PRIORITY, Check, Expect, Line, Raises, Stmt, TestCase
from qe_appliance.testgen.subject import Subject

Framework = Literal["pytest", "unittest"]

MAX_EXAMPLES: Final = 50
_IND: Final = "    "
_THIRD_PARTY: Final = frozenset({"pytest", "hypothesis"})


@functools.cache
def _non_identifier() -> re.Pattern[str]:
    return re.compile(r"\W+")


class Rendered(msgspec.Struct, frozen=True):
    """The module text, and for each test in it (`kept`: indexes into the tests given) how pytest names it
    (`test_x` or `TestX::test_y`) and the line its definition starts on. `dropped` names the tests left out
    because they did not parse."""

    text: str
    kept: list[int]
    names: list[str]
    lines: list[int]
    dropped: list[str]


def select(tests: list[TestCase], limit: int | None) -> list[TestCase]:
    """At most `limit` tests, taken in turns across targets, the most telling kinds first; source order is
    kept in what is returned."""
    if limit is None or len(tests) <= limit:
        return tests
    by_target: dict[str, list[int]] = {}
    for index, test in enumerate(tests):
        by_target.setdefault(test.target, []).append(index)
    queues = [sorted(indexes, key=lambda i: (PRIORITY[tests[i].kind], i)) for indexes in by_target.values()]
    chosen: list[int] = []
    while len(chosen) < limit and any(queues):
        for queue in queues:
            if queue and len(chosen) < limit:
                chosen.append(queue.pop(0))
    return [tests[i] for i in sorted(chosen)]


def _identifier(text: str) -> str:
    name = _non_identifier().sub("_", text).strip("_") or "case"
    return f"{name}_" if keyword.iskeyword(name) else name


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part) or "Module"


def _placement(test: TestCase, framework: Framework) -> tuple[str | None, str]:
    """(class name or None, test function name) before de-duplication."""
    stem, case = _identifier(test.stem), _identifier(test.case)
    if test.group is not None:
        return f"Test{_identifier(test.group)}", f"test_{stem}_{case}"
    if framework == "unittest":
        return f"Test{_camel(stem)}", f"test_{case}"
    return None, f"test_{stem}_{case}"


class _Writer:
    def __init__(self, framework: Framework, in_class: bool, property_test: bool) -> None:
        self.unittest = framework == "unittest"
        self.in_class = in_class
        self.property_test = property_test
        self.lines: list[str] = []
        self.imports: set[str] = set()

    def emit(self, depth: int, code: str) -> None:
        for line in code.splitlines() or [""]:
            self.lines.append(f"{_IND * depth}{line}" if line else "")

    def stmts(self, stmts: list[Stmt], depth: int) -> None:
        for stmt in stmts:
            self.stmt(stmt, depth)

    def stmt(self, stmt: Stmt, depth: int) -> None:
        if isinstance(stmt, Line):
            self.emit(depth, stmt.code)
        elif isinstance(stmt, Check):
            self.emit(depth, self.check(stmt))
        elif isinstance(stmt, Raises):
            self.emit(depth, f"with {self.raises(stmt)}:")
            self.stmts(stmt.body, depth + 1)
        elif isinstance(stmt, Expect):
            excs = stmt.excs[0] if len(stmt.excs) == 1 else f"({', '.join(stmt.excs)})"
            self.emit(depth, "try:")
            self.stmts(stmt.body, depth + 1)
            self.emit(depth, f"except {excs}:")
            action = "reject()" if self.property_test else "return"
            self.emit(depth + 1, f"{action}  # {stmt.reason}")
        else:
            self.imports |= {"io", "contextlib"}
            self.emit(depth, "buffer = io.StringIO()")
            self.emit(depth, "with contextlib.redirect_stdout(buffer):")
            self.stmts(stmt.body, depth + 1)
            got = '" ".join(buffer.getvalue().split())' if stmt.normalize else "buffer.getvalue()"
            self.emit(depth, self.check(Check("eq", got, repr(stmt.want))))

    def raises(self, stmt: Raises) -> str:
        if self.unittest:
            if stmt.match is None:
                return f"self.assertRaises({stmt.exc})"
            return f"self.assertRaisesRegex({stmt.exc}, {_pattern(stmt.match)})"
        self.imports.add("pytest")
        match = f", match={_pattern(stmt.match)}" if stmt.match is not None else ""
        return f"pytest.raises({stmt.exc}{match})"

    def check(self, check: Check) -> str:
        left, right, op = _operand(check.left), _operand(check.right), check.op
        if op == "approx":
            if not self.unittest:
                self.imports.add("pytest")
                return f"assert {left} == pytest.approx({right})"
            self.imports.add("math")
            if right.startswith("("):
                return (
                    f"for got, want in zip({left}, {right}, strict=True):\n"
                    f"{_IND}self.assertTrue(math.isclose(got, want, rel_tol=1e-06, abs_tol=1e-12))"
                )
            return f"self.assertTrue(math.isclose({left}, {right}, rel_tol=1e-06, abs_tol=1e-12))"
        if not self.unittest:
            return {
                "eq": f"assert {left} == {right}",
                "is": f"assert {left} is {right}",
                "isinstance": f"assert isinstance({left}, {right})",
                "in": f"assert {left} in {right}",
                "true": f"assert {left}",
            }[op]
        if op == "is" and right == "None":
            return f"self.assertIsNone({left})"
        return {
            "eq": f"self.assertEqual({left}, {right})",
            "is": f"self.assertIs({left}, {right})",
            "isinstance": f"self.assertIsInstance({left}, {right})",
            "in": f"self.assertIn({left}, {right})",
            "true": f"self.assertTrue({left})",
        }[op]


def _pattern(text: str) -> str:
    """A regular expression as a string literal: raw when that reads better."""
    if "\\" in text and "'" not in text and "\n" not in text and not text.endswith("\\"):
        return f"r'{text}'"
    return repr(text)


def _function(test: TestCase, name: str, framework: Framework, in_class: bool) -> tuple[str, set[str]]:
    """One test as source at column 0, and the imports it needs."""
    writer = _Writer(framework, in_class, bool(test.given))
    writer.imports.update(test.imports)
    params = ["self"] if in_class else []
    decorators: list[str] = []
    if test.given:
        writer.imports.add("hypothesis")
        # The same examples on every run, so a test that passed verification passes in CI. Filtering by
        # assume() is how the code's own raise conditions are kept out; a slow example is the code's speed,
        # not a broken test.
        decorators.append(
            f"@settings(max_examples={MAX_EXAMPLES}, deadline=None, derandomize=True, "
            "suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])"
        )
        decorators.append(f"@given({', '.join(f'{arg}={strategy}' for arg, strategy in test.given)})")
        params += [arg for arg, _ in test.given]
    writer.lines.extend(decorators)
    writer.lines.append(f"def {name}({', '.join(params)}):")
    writer.emit(1, f'"""{_docstring(test.rationale)}"""')
    for assumption in test.assumes:
        writer.emit(1, f"assume({assumption})")
    writer.stmts(test.body, 1)
    return "\n".join(writer.lines) + "\n", writer.imports


def _docstring(text: str) -> str:
    """`text` made safe between triple quotes: shortened, backslashes doubled, no closing quote inside."""
    flat = textwrap.shorten(" ".join(text.split()), width=200, placeholder=" ...")
    flat = flat.replace("\\", "\\\\").replace('"""', "'''")
    return flat + " " if flat.endswith('"') else flat


def _operand(code: str) -> str:
    """`code` parenthesized when it would otherwise bind into the comparison around it (`a == b is True`
    must read `(a == b) is True`)."""
    try:
        node = ast.parse(code, mode="eval").body
    except SyntaxError:
        return f"({code})"
    loose = (ast.Compare, ast.BoolOp, ast.UnaryOp, ast.IfExp, ast.Lambda, ast.NamedExpr, ast.Await)
    return f"({code})" if isinstance(node, loose) else code


def _hypothesis_names(text: str) -> list[str]:
    used = [name for name in ("assume", "given", "reject", "settings") if re.search(rf"\b{name}\(", text)]
    return ["HealthCheck", *used] if "HealthCheck." in text else used


def render(subject: Subject, framework: Framework, tests: list[TestCase], purpose: str) -> Rendered:
    """The test module for `tests`. A test that does not parse is left out and named in `dropped`."""
    classes: dict[str | None, list[tuple[int, str]]] = {}
    names: list[str] = [""] * len(tests)
    imports: set[str] = set()
    taken: dict[str | None, set[str]] = {}
    dropped: list[str] = []
    for index, test in enumerate(tests):
        owner, name = _placement(test, framework)
        used = taken.setdefault(owner, set())
        unique, n = name, 2
        while unique in used:
            unique, n = f"{name}_{n}", n + 1
        source, needs = _function(test, unique, framework, owner is not None)
        try:
            compile(source, "<generated test>", "exec", dont_inherit=True)
        except (SyntaxError, ValueError):
            dropped.append(f"{test.target}: {unique}")
            continue
        used.add(unique)
        imports |= needs
        classes.setdefault(owner, []).append((index, source))
        names[index] = f"{owner}::{unique}" if owner else unique

    body: list[str] = []
    for owner, items in classes.items():
        if owner is None:
            body += ["\n\n" + source for _, source in items]
            continue
        base = "(unittest.TestCase)" if framework == "unittest" else ""
        methods = [textwrap.indent(source, _IND, lambda text: bool(text.strip())) for _, source in items]
        body.append(f"\n\nclass {owner}{base}:\n" + "\n".join(methods))
    code = "".join(body)
    footer = '\n\nif __name__ == "__main__":\n    unittest.main()\n' if framework == "unittest" else ""
    text = _header(subject, framework, imports, purpose, code) + code + footer
    # Every test parsed alone; the module as a whole must compile too.
    tree = ast.parse(text)
    compile(tree, "<generated tests>", "exec")
    starts = _definition_lines(tree)
    kept = [i for i in range(len(tests)) if names[i]]
    return Rendered(text, kept, [names[i] for i in kept], [starts[names[i]] for i in kept], dropped)


def _definition_lines(tree: ast.Module) -> dict[str, int]:
    """`name` or `Class::name` -> the first line of the test's definition (its first decorator)."""
    found: dict[str, int] = {}
    for node in tree.body:
        members = node.body if isinstance(node, ast.ClassDef) else [node]
        prefix = f"{node.name}::" if isinstance(node, ast.ClassDef) else ""
        for member in members:
            if isinstance(member, ast.FunctionDef):
                first = min([member.lineno, *(d.lineno for d in member.decorator_list)])
                found[prefix + member.name] = first
    return found


def _header(subject: Subject, framework: Framework, imports: set[str], purpose: str, code: str) -> str:
    stdlib = sorted(
        imports - _THIRD_PARTY - {"unittest"}
        | ({"unittest"} if framework == "unittest" else set())
        | subject.import_needs
    )
    lines = [f'"""{purpose}"""', ""]
    lines += [f"import {name}" for name in stdlib]
    third = []
    if "pytest" in imports:
        third.append("import pytest")
    if "hypothesis" in imports:
        used = _hypothesis_names(code)
        if used:
            third.append(f"from hypothesis import {', '.join(used)}")
        third.append("from hypothesis import strategies as st")
    for group in (third, [subject.import_line()]):
        if group:
            if lines[-1] != "":
                lines.append("")
            lines += group
    return "\n".join(lines) + "\n"
