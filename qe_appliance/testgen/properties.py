"""Property-based tests with hypothesis, chosen the way hypothesis's ghostwriter chooses them: a fuzz test
per callable (valid input only leads to the exceptions the code raises on purpose), round-trip pairs found
by the ghostwriter's naming rules (encode/decode, dumps/loads, to_x/from_x, a2b/b2a, x_to_y/y_to_x, ...),
idempotent functions by name (normalize, sort, strip, ...), and equivalent implementations (f and f_fast).

Strategies come from the same types the example tests use; conditions of explicit raises become
`assume(not ...)`, and the exceptions of conditions that cannot be read are rejected as the ghostwriter's
`except_` does.
"""

from __future__ import annotations

import ast
import copy
import re
from typing import Final, Literal

import msgspec

from qe_appliance.testgen.cases import CallPlan, Planner
from qe_appliance.testgen.guards import allowed_values, truth
from qe_appliance.testgen.model import Check, Expect, Line, Stmt, TestCase
from qe_appliance.testgen.source import RESERVED, ModuleFacts, qualify, words
from qe_appliance.testgen.strategies import Code
from qe_appliance.testgen.values import literal_value

RelationKind = Literal["roundtrip", "idempotent", "equivalence"]

# hypothesis.extra.ghostwriter.ROUNDTRIP_PAIRS: (writer name pattern, reader name template).
ROUNDTRIP_PAIRS: Final = (
    (r"write(.+)", "read{}"),
    (r"save(.+)", "load{}"),
    (r"dump(.+)", "load{}"),
    (r"to(.+)", "from{}"),
    (r"(.*)en(.+)", "{}de{}"),
    (r"(.+)", "de{}"),
    (r"(?!safe)(.+)", "un{}"),
    (r"(.+)2(.+?)(_.+)?", "{1}2{0}{2}"),
    (r"(.+)_to_(.+)", "{1}_to_{0}"),
    (r"(inet|if)_(.+)to(.+)", "{0}_{2}to{1}"),
    (r"(\w)to(\w)(.+)", "{1}to{0}{2}"),
    (r"send(.+)", "recv{}"),
    (r"send(.+)", "receive{}"),
)
IDEMPOTENT_WORDS: Final = frozenset(
    "normalize normalise normalized canonical canonicalize canonicalise sort sorted dedupe dedup deduplicate "
    "unique uniq strip trim clean sanitize sanitise slugify dedent lower upper casefold simplify squash "
    "collapse compact flatten clamp abs floor ceil".split()
)
EQUIVALENT_SUFFIXES: Final = (
    "fast",
    "slow",
    "naive",
    "simple",
    "reference",
    "ref",
    "recursive",
    "iterative",
    "loop",
    "optimized",
    "optimised",
    "v2",
    "old",
    "new",
    "alt",
    "python",
    "py",
    "builtin",
    "impl",
    "original",
    "cached",
)
MAX_EXAMPLES: Final = 50


class Relation(msgspec.Struct, frozen=True):
    """A property linking a target to another function of the module."""

    kind: RelationKind
    other: str


def relations(facts: ModuleFacts) -> dict[str, list[Relation]]:
    """Round-trip pairs, idempotent functions and equivalent pairs among the module's functions, keyed by
    the function whose tests carry the property."""
    found: dict[str, list[Relation]] = {}
    names = sorted(name for name, info in facts.functions.items() if not info.conditional)
    paired: set[str] = set()
    for writer, reader in ROUNDTRIP_PAIRS:
        for name in names:
            match = re.fullmatch(writer, name)
            if name in paired or match is None:
                continue
            inverse = reader.format(*match.groups())
            if inverse in facts.functions and inverse != name and inverse not in paired:
                found.setdefault(name, []).append(Relation("roundtrip", inverse))
                paired.update((name, inverse))
    for name in names:
        if IDEMPOTENT_WORDS.intersection(words(name)):
            found.setdefault(name, []).append(Relation("idempotent", name))
    stems: dict[str, list[str]] = {}
    for name in names:
        stems.setdefault(_stem(name), []).append(name)
    for group in stems.values():
        if len(group) < 2:
            continue
        signature = [p.name for p in facts.functions[group[0]].call_params()]
        for other in group[1:]:
            if [p.name for p in facts.functions[other].call_params()] == signature:
                found.setdefault(group[0], []).append(Relation("equivalence", other))
    return found


def _stem(name: str) -> str:
    for suffix in EQUIVALENT_SUFFIXES:
        for form in (f"_{suffix}", suffix.capitalize()):
            if name.endswith(form) and len(name) > len(form):
                return name[: -len(form)]
    return name


class _Given(msgspec.Struct):
    """Strategies for a plan's required arguments, the assumptions and the tolerated exceptions."""

    args: list[tuple[str, str]]
    imports: set[str]
    assumes: list[str]
    tolerated: list[str]
    floats: bool


def _given(planner: Planner, plan: CallPlan) -> _Given | None:
    args: list[tuple[str, str]] = []
    imports: set[str] = set()
    floats = False
    params = [p for p in plan.params if p.required]
    if any(p.param.name in RESERVED for p in params):
        return None  # a test argument would hide a name the test itself uses (assume, result, ...)
    for p in params:
        allowed = allowed_values(plan.exits, p.param.name, planner.facts)
        if allowed is not None:
            code: Code | None = Code(
                f"st.sampled_from([{', '.join(literal_value(v).code for v in allowed)}])"
            )
        else:
            code = planner.strategy_of(p.spec) if p.spec is not None else None
        if code is None:
            return None
        args.append((p.param.name, code.text))
        imports |= code.imports
        floats = floats or code.text.startswith("st.floats")
    given_names = {name for name, _ in args}
    defaults = {p.param.name: p.default for p in plan.params if not p.required and p.has_literal_default}
    assumes: list[str] = []
    tolerated: set[str] = set()
    for exit_ in plan.exits:
        if exit_.kind != "raise":
            continue
        if exit_.usable and exit_.conds and exit_.names <= given_names | set(defaults):
            if exit_.names & given_names:
                conds = [_with_defaults(cond, defaults) for cond in exit_.conds]
                text = " and ".join(qualify(cond, planner.facts, given_names)[0] for cond in conds)
                assumes.append(f"not ({text})")
                continue
            if truth(exit_, dict(defaults), planner.facts) == "false":
                continue  # the defaults never take this exit
        if exit_.exc is not None and exit_.exc not in ("Exception", "BaseException", "AssertionError"):
            tolerated.add(exit_.exc)
    return _Given(args, imports, assumes, sorted(tolerated), floats)


def _with_defaults(cond: ast.expr, defaults: dict[str, object]) -> ast.expr:
    """`cond` with the parameters the test leaves at their defaults replaced by those defaults."""

    class Substitute(ast.NodeTransformer):
        def visit_Name(self, node: ast.Name) -> ast.expr:
            if node.id in defaults:
                literal = ast.parse(repr(defaults[node.id]), mode="eval").body
                return ast.copy_location(literal, node)
            return node

    substituted: ast.expr = ast.fix_missing_locations(Substitute().visit(copy.deepcopy(cond)))
    return substituted


def _call(plan: CallPlan, values: list[str]) -> str:
    """A call of `plan` with its required arguments given as code, in order."""
    args = []
    required = [p for p in plan.params if p.required]
    for p, value in zip(required, values, strict=True):
        args.append(value if p.param.kind != "keyword-only" else f"{p.param.name}={value}")
    return _wrap(plan, f"{plan.callee}({', '.join(args)})" if not plan.is_property else plan.callee)


def _wrap(plan: CallPlan, call: str) -> str:
    """`call` awaited when the target is a coroutine function, drained when it is a generator."""
    if plan.is_async:
        call = f"asyncio.run({call})"
    if plan.is_generator:
        call = f"list(itertools.islice({call}, 100))"
    return call


def _guarded(assign: str, given: _Given, plan: CallPlan) -> list[Stmt]:
    if not given.tolerated:
        return [Line(assign)]
    reason = f"{plan.display} raises it on purpose for some inputs"
    return [Expect(given.tolerated, [Line(assign)], reason)]


def _runtime_imports(plan: CallPlan) -> set[str]:
    return {name for name, used in (("asyncio", plan.is_async), ("itertools", plan.is_generator)) if used}


def fuzz_test(planner: Planner, plan: CallPlan) -> TestCase | None:
    """Valid input only leads to the exceptions `plan`'s target raises on purpose (and its declared return
    type)."""
    given = _given(planner, plan)
    if given is None:
        plan.notes.append(f"{plan.display}: no property test (some argument has no hypothesis strategy)")
        return None
    if not given.args:
        return None  # nothing to generate: the smoke test already calls it
    call = _call(plan, [name for name, _ in given.args])
    checks, imports = planner.checks(plan)
    body: list[Stmt] = [Line(line) for line in plan.setup]
    body += _guarded(f"result = {call}" if checks else call, given, plan)
    body += checks
    what = f"returns {plan.returns.describe()}" if plan.returns else "does not fail"
    if plan.returns_none:
        what = "returns None"
    if given.tolerated:
        what += f" or raises {', '.join(e.rsplit('.', 1)[-1] for e in given.tolerated)} on purpose"
    rationale = f"hypothesis fuzz: for generated arguments {plan.display} {what}"
    imports |= given.imports | _runtime_imports(plan)
    return plan.test(
        "property",
        "property",
        rationale,
        body,
        given=given.args,
        assumes=given.assumes,
        imports=sorted(imports),
    )


def relation_test(planner: Planner, plan: CallPlan, other: CallPlan, relation: Relation) -> TestCase | None:
    given = _given(planner, plan)
    if given is None or not given.args:
        return None
    names = [name for name, _ in given.args]
    call = _call(plan, names)
    body: list[Stmt] = [Line(line) for line in plan.setup]
    op: Literal["eq", "approx"] = "approx" if given.floats else "eq"
    imports = set(given.imports) | _runtime_imports(plan) | _runtime_imports(other)
    other_required = [p for p in other.params if p.required]
    if relation.kind == "roundtrip":
        if len(names) == 1 and len(other_required) == 1:
            body += _guarded(f"encoded = {call}", given, plan)
            body += [Line(f"decoded = {_call(other, ['encoded'])}"), Check(op, "decoded", names[0])]
        elif len(names) == len(other_required) > 1:
            body += _guarded(f"converted = {call}", given, plan)
            restored = _wrap(other, f"{other.callee}(*converted)")
            body += [Line(f"restored = {restored}"), Check(op, "restored", f"({', '.join(names)})")]
        else:
            return None
        rationale = f"round trip: {other.display}({plan.display}(x)) == x"
    elif relation.kind == "idempotent":
        first = next(p.spec for p in plan.params if p.required)
        if plan.returns is not None and first is not None and plan.returns.kind != first.kind:
            return None  # f(f(x)) does not even type-check when f changes the type
        rest = names[1:]
        body += _guarded(f"once = {call}", given, plan)
        body += [Line(f"twice = {_call(plan, ['once', *rest])}"), Check(op, "twice", "once")]
        rationale = f"idempotence: {plan.display}({plan.display}(x)) == {plan.display}(x)"
    else:
        if len(other_required) != len(names):
            return None
        body += _guarded(f"expected = {call}", given, plan)
        body += [Line(f"actual = {_call(other, names)}"), Check(op, "actual", "expected")]
        rationale = f"equivalence: {other.display} gives the same results as {plan.display}"
    suffix = "" if relation.kind == "idempotent" else f"_{relation.other}"
    return plan.test(
        f"{relation.kind}{suffix}",
        relation.kind,
        f"hypothesis {rationale}",
        body,
        given=given.args,
        assumes=given.assumes,
        imports=sorted(imports),
    )
