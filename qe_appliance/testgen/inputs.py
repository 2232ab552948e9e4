"""Candidate calls for execution-derived tests: for each parameter a pool of values (its annotation's
boundary values, its default, the thresholds of explicit raises, the constants and comparisons in the
body, learned edge cases, and — where the type is only guessed or unknown — a generic pool whose
outcomes are observed rather than assumed), combined across the parameters: the typical call, each value
alone, pairs of values, then a fixed pseudo-random sample."""

from __future__ import annotations

import ast
import itertools
import random
import zlib
from typing import Final

import msgspec

from qe_appliance.testgen.cases import CallPlan, ParamPlan, Planner
from qe_appliance.testgen.source import ModuleFacts, Target, dotted, own_nodes
from qe_appliance.testgen.values import Value, literal_value

MAX_POOL: Final = 14
MAX_PAIR_VALUES: Final = 5
MAX_PER_TARGET: Final = 160
RANDOM_COMBINATIONS: Final = 40
MAX_CONSTANT_CHARS: Final = 60

# Values for a parameter nothing types: each kind of value once, the call's outcome observed.
GENERIC: Final[tuple[object, ...]] = (
    "abc", 1, 0, -1, "", "Hello World", "hello_world", 3, 2.5, None, True, False, [], [1, 2, 3],
    ["a", "b"], {}, {"a": 1}, (1, 2), b"abc", 10**6, -0.5, " ", "a-b c",
)
_OMIT: Final = Value("", None, "default")  # an optional parameter left to its default


class Candidate(msgspec.Struct, frozen=True):
    """One call to observe. `args` are (keyword or None, code, variable or None): a mutable argument is
    bound to a variable first so the test can check what the call did to it."""

    target: str
    group: str | None
    stem: str
    label: str
    setup: list[str]
    call: str
    callee: str  # `call` is `callee(args...)`, or `callee` alone for a property; the search rebuilds it
    args: list[tuple[str | None, str, str | None]]
    imports: list[str]
    is_async: bool = False
    patterns: list[str] = []


def candidates(facts: ModuleFacts, target: Target, planner: Planner, edges: list[Value]) -> tuple[
    list[Candidate], str | None
]:
    """The candidate calls of one target, simplest first; or none and why."""
    plan = planner.plan(target, edges)
    if plan is None:
        return [], planner.refusal
    constants = _constants(plan, facts)
    params = [p for p in plan.params if p.param.kind not in ("varargs", "varkw")]
    documented = _documented(plan, params)
    pools = [_pool(p, documented.get(p.param.name, []) + constants) for p in params]
    if plan.is_property:
        return [_candidate(plan, [], [], facts)], None
    found: dict[str, Candidate] = {}
    for combo in _combinations(pools, target.name):
        if len(found) >= MAX_PER_TARGET:
            break
        made = _candidate(plan, params, list(combo), facts)
        found.setdefault(made.call + "\x00" + "\x00".join(a[1] for a in made.args), made)
    return list(found.values()), None


def _pool(plan: ParamPlan, constants: list[Value]) -> list[Value]:
    """The values tried for one parameter, its typical one first."""
    values: list[Value] = [] if plan.required else [_OMIT]
    values += plan.values
    guessed = plan.spec is None or plan.spec.origin != "annotation"
    kinds = _kinds(plan)
    for value in constants:
        if guessed or type(value.py).__name__ in kinds:
            values.append(value)
    if guessed:
        values += [literal_value(v) for v in GENERIC]
    unique: dict[str, Value] = {}
    for value in values:
        unique.setdefault(value.code, value)
    chosen = list(unique.values())
    learned = [v for v in chosen[MAX_POOL:] if v.pattern]
    return chosen[:MAX_POOL] + learned


def _kinds(plan: ParamPlan) -> set[str]:
    spec = plan.spec
    if spec is None:
        return set()
    parts = spec.args if spec.kind == "union" else (spec,)
    names = {p.kind for p in parts}
    if "float" in names:
        names.add("int")
    return names


def _documented(plan: CallPlan, params: list[ParamPlan]) -> dict[str, list[Value]]:
    """Argument values of the calls in the docstring's examples (`>>> f('1:24')`), by parameter."""
    found: dict[str, list[Value]] = {}
    doc = plan.func.docstring if plan.func is not None else None
    if not doc or ">>>" not in doc or plan.func is None:
        return found
    name = plan.func.name if plan.target.kind != "class" else plan.target.name
    for line in doc.splitlines():
        code = line.strip()
        if not code.startswith(">>> "):
            continue
        try:
            tree = ast.parse(code[4:])
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or (dotted(node.func) or "").rsplit(".", 1)[-1] != name:
                continue
            for index, arg in enumerate(node.args[: len(params)]):
                _add_literal(found, params[index].param.name, arg)
            for keyword in node.keywords:
                if keyword.arg is not None:
                    _add_literal(found, keyword.arg, keyword.value)
    return found


def _add_literal(found: dict[str, list[Value]], name: str, node: ast.expr) -> None:
    try:
        value = ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return
    found.setdefault(name, []).append(literal_value(value))


def _constants(plan: CallPlan, facts: ModuleFacts) -> list[Value]:
    """The literals the callable's body compares with or uses (and the integers next to them), then the
    module's own constants: the values where its behaviour changes."""
    if plan.func is None:
        return []
    found: list[object] = []
    nodes = own_nodes(plan.func.node)
    nodes += [ast.Constant(v) for v in facts.constants.values() if isinstance(v, int | float | str | bytes)]
    for node in nodes:
        if isinstance(node, ast.Constant) and not isinstance(node.value, bool):
            value = node.value
            if isinstance(value, str) and (len(value) > MAX_CONSTANT_CHARS or "\n" in value):
                continue
            if isinstance(value, int | float | str | bytes):
                found.append(value)
                if isinstance(value, int):
                    found += [value - 1, value + 1]
    unique = list(dict.fromkeys((type(v).__name__, v) for v in found))
    return [literal_value(v) for _, v in unique]


def _combinations(pools: list[list[Value]], seed_text: str) -> itertools.chain[tuple[Value, ...]]:
    """The typical call, each value alone, pairs of values, then a fixed pseudo-random sample."""
    if not pools:
        return itertools.chain([()])
    nominal = tuple(pool[0] for pool in pools)

    def alone() -> list[tuple[Value, ...]]:
        return [nominal[:i] + (v,) + nominal[i + 1 :] for i, pool in enumerate(pools) for v in pool[1:]]

    def pairs() -> list[tuple[Value, ...]]:
        made = []
        for i, j in itertools.combinations(range(len(pools)), 2):
            for a in pools[i][1:MAX_PAIR_VALUES]:
                for b in pools[j][1:MAX_PAIR_VALUES]:
                    combo = list(nominal)
                    combo[i], combo[j] = a, b
                    made.append(tuple(combo))
        return made

    def sampled() -> list[tuple[Value, ...]]:
        rng = random.Random(zlib.crc32(seed_text.encode()))
        return [tuple(rng.choice(pool) for pool in pools) for _ in range(RANDOM_COMBINATIONS)]

    return itertools.chain([nominal], alone(), pairs(), sampled())


def _mutable(value: Value) -> bool:
    return isinstance(value.py, list | dict | set | bytearray)


def _candidate(plan: CallPlan, params: list[ParamPlan], combo: list[Value], facts: ModuleFacts) -> Candidate:
    args: list[tuple[str | None, str, str | None]] = []
    parts: list[str] = []
    imports: set[str] = set()
    labels: list[str] = []
    reserved = {"result", "instance", facts.alias}
    omitted = False
    for p, value in zip(params, combo, strict=True):
        if value is _OMIT:
            omitted = True
            continue
        imports |= value.imports
        keyword = p.param.kind == "keyword-only" or omitted or not p.required
        if p.param.kind == "positional-only":
            keyword = False
            if omitted:
                break  # a later positional-only argument cannot follow an omitted one
        bind = None
        if _mutable(value) and p.param.name not in reserved:
            bind = p.param.name
        code = bind or value.code
        parts.append(f"{p.param.name}={code}" if keyword else code)
        args.append((p.param.name if keyword else None, value.code, bind))
        if p.values and value.code != p.values[0].code:
            labels.append(f"{p.param.name}_{value.label}")
    call = plan.callee if plan.is_property else f"{plan.callee}({', '.join(parts)})"
    return Candidate(
        target=plan.target.name,
        group=plan.group,
        stem=plan.stem,
        label="_".join(labels)[:60] or "typical",
        setup=list(plan.setup),
        call=call,
        callee=plan.callee if not plan.is_property else "",
        args=args,
        imports=sorted(imports),
        is_async=plan.is_async,
        patterns=sorted({v.pattern for v in combo if v.pattern}),
    )
