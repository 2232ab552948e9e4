"""Learned patterns applied to generated tests. An `edge-case` pattern is a Python literal (`''`, `-0.0`,
`float('nan')`, `[None]`) tried as a boundary value of every parameter of its type. A `test-template`
pattern is test code with placeholders, filled in for every target it fits:

    $call      the call with typical arguments, e.g. pricing.net_price(1.5, 1)
    $function  what is called, e.g. pricing.net_price
    $args      the typical arguments, e.g. 1.5, 1
    $name      the target's name, e.g. net_price
    $module    the module as the tests name it
    $returns   the isinstance() type of the declared result (the template fits only annotated targets)

`${name}` is the same as `$name` (for a placeholder followed by letters); `$$` is a literal `$`. A template
fits when every placeholder it uses has a value and the filled-in code parses."""

from __future__ import annotations

import ast
import string
import sys
from typing import Final

import msgspec

from qe_appliance.testgen.cases import CallPlan, Planner
from qe_appliance.testgen.model import Line, Stmt, TestCase
from qe_appliance.testgen.strategies import runtime_check
from qe_appliance.testgen.values import Value, label_of, literal_value

MAX_TEMPLATES_PER_TARGET: Final = 5
# The placeholders a test template may use, and what each becomes.
TEMPLATE_FIELDS: Final = {
    "call": "the call with typical arguments, e.g. pricing.net_price(1.5, 1)",
    "function": "what is called, e.g. pricing.net_price",
    "args": "the typical arguments, e.g. 1.5, 1",
    "name": "the target's name, e.g. net_price",
    "module": "the module as the tests name it",
    "returns": "the isinstance() type of the declared result (only annotated targets)",
}
TEMPLATE_SYNTAX: Final = (
    "A test-template is test code with placeholders "
    + ", ".join(f"${name} ({what})" for name, what in TEMPLATE_FIELDS.items())
    + "; ${name} is the same as $name, and $$ is a literal $."
)
_SPECIAL_FLOATS: Final = {
    "float('nan')": float("nan"),
    "float('inf')": float("inf"),
    "float('-inf')": float("-inf"),
    "-float('inf')": float("-inf"),
}


class LearnedPattern(msgspec.Struct, frozen=True):
    """A pattern from the store, as generation jobs receive it."""

    id: str
    pattern_type: str
    text: str
    domain: str


def edge_values(patterns: list[LearnedPattern]) -> list[Value]:
    """The edge-case patterns that are Python literals, as boundary values carrying their pattern id."""
    found: list[Value] = []
    for pattern in patterns:
        if pattern.pattern_type != "edge-case":
            continue
        text = pattern.text.strip()
        special = _SPECIAL_FLOATS.get(text.replace('"', "'").replace(" ", ""))
        if special is not None:
            value = literal_value(special)
        else:
            try:
                value = literal_value(ast.literal_eval(text))
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
        found.append(Value(value.code, value.py, f"learned_{label_of(value.py)}", value.imports, pattern.id))
    return found


def template_problems(text: str) -> list[str]:
    """What is wrong with a test template's placeholders: unknown names, and a `$` that starts none."""
    problems: list[str] = []
    for match in string.Template.pattern.finditer(text):
        name = match.group("named") or match.group("braced")
        if name is not None and name not in TEMPLATE_FIELDS:
            problems.append(f"unknown placeholder ${name}")
        elif match.group("invalid") is not None:
            line = text.count("\n", 0, match.start()) + 1
            problems.append(f"a $ on line {line} starts no placeholder (write $$ for a literal $)")
    return problems


def template_tests(planner: Planner, plan: CallPlan, patterns: list[LearnedPattern]) -> list[TestCase]:
    """A test per test-template pattern that fits `plan`."""
    templates = [p for p in patterns if p.pattern_type == "test-template"][:MAX_TEMPLATES_PER_TARGET]
    if not templates:
        return []
    nominal = planner.nominal(plan)
    if nominal is None:
        return []
    call, imports = planner.call_code(plan, nominal)
    fields = {
        "call": call,
        "function": plan.callee,
        "args": call[len(plan.callee) + 1 : -1] if not plan.is_property else "",
        "name": plan.target.name,
        "module": planner.facts.alias,
    }
    needed = set(imports)
    if plan.returns is not None:
        check = runtime_check(plan.returns, planner.facts)
        if check is not None:
            fields["returns"] = check.text
            needed |= check.imports
    tests: list[TestCase] = []
    for pattern in templates:
        try:
            code = string.Template(pattern.text).substitute(fields)
            tree = ast.parse(code)
        except (KeyError, ValueError, SyntaxError):
            continue
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        modules = sorted(name for name in used if name in sys.stdlib_module_names or name == "pytest")
        body: list[Stmt] = [Line(line) for line in [*plan.setup, code.strip("\n")]]
        preview = " ".join(pattern.text.split())
        rationale = f"learned test template {pattern.id} ({pattern.domain}): {preview[:80]}"
        case = f"pattern_{pattern.id[-6:]}"
        uses = sorted(needed | set(modules))
        tests.append(plan.test(case, "pattern", rationale, body, patterns=[pattern.id], imports=uses))
    return tests
