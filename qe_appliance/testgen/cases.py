"""Example-based tests for one callable: a smoke test with typical arguments, one test per boundary value of
each parameter, and a `raises` test for each explicit `raise` whose condition the arguments can meet."""

from __future__ import annotations

import ast
import itertools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

import msgspec

from qe_appliance.testgen.guards import Exit, describe, find_exits, thresholds, truth
from qe_appliance.testgen.model import Check, Expect, Kind, Line, Raises, Stmt, TestCase
from qe_appliance.testgen.source import FunctionInfo, ModuleFacts, Param, Target, dotted
from qe_appliance.testgen.strategies import Code, runtime_check, strategy
from qe_appliance.testgen.typespec import TypeSpec, from_annotation, param_type
from qe_appliance.testgen.values import Opaque, Value, ValueMaker

MAX_CANDIDATES: Final = 8
MAX_COMBINATIONS: Final = 2000
MAX_RAISES_PER_EXIT: Final = 3
GENERATOR_ITEMS: Final = 100
_ITERATOR_BASES: Final = frozenset({"Iterator", "Generator", "Iterable", "AsyncIterator", "AsyncGenerator"})
_BROAD: Final = frozenset({"Exception", "BaseException", "AssertionError"})


class ParamPlan(msgspec.Struct):
    param: Param
    spec: TypeSpec | None
    values: list[Value]
    required: bool
    default: object = None  # the default's value when it is a literal (guards read it)
    has_literal_default: bool = False


class CallPlan(msgspec.Struct):
    """How tests call one target. `setup` lines run first; `callee` is what is called."""

    target: Target
    func: FunctionInfo | None
    group: str | None
    stem: str
    setup: list[str]
    callee: str
    params: list[ParamPlan]
    exits: list[Exit]
    returns: TypeSpec | None
    returns_none: bool
    is_property: bool = False
    is_async: bool = False
    is_generator: bool = False
    notes: list[str] = msgspec.field(default_factory=list)

    @property
    def display(self) -> str:
        return self.target.name

    def test(self, case: str, kind: Kind, rationale: str, body: list[Stmt], **rest: Any) -> TestCase:
        """A test of this plan's target, in its group."""
        return TestCase(
            target=self.target.name,
            group=self.group,
            stem=self.stem,
            case=case,
            kind=kind,
            rationale=rationale,
            body=body,
            **rest,
        )


class Outcome(msgspec.Struct):
    """What calling with an assignment of values does, as far as the guards tell."""

    raises: Exit | None = None
    error: bool = False
    unknown: list[Exit] = msgspec.field(default_factory=list)
    early_return: Exit | None = None


class Planner:
    """Builds CallPlans and tests for the targets of one module."""

    def __init__(self, facts: ModuleFacts, fallback: list[Value] | None = None) -> None:
        self.facts = facts
        # Values for a parameter nothing types, when the caller observes what calls do instead of
        # predicting it; without them such a parameter makes its callable untestable.
        self.fallback = fallback or []
        self.values = ValueMaker(facts, self._construct)
        self._building: set[str] = set()
        self.refusal = ""  # why the last plan() returned None

    # ---- plans ---------------------------------------------------------------------------------------------

    def plan(self, target: Target, edges: list[Value] | None = None) -> CallPlan | None:
        """The call plan of a function, method or class target; None when it cannot be called from a test
        (the reason is in `self.refusal`)."""
        self.refusal = ""
        facts = self.facts
        if target.kind == "function":
            func = facts.functions[target.name]
            return self._plan_function(target, func, None, facts.ref(func.name), [], edges)
        if target.kind == "class":
            return self._plan_class(target, edges)
        owner = target.owner or ""
        func = facts.classes[owner].methods[target.name.split(".", 1)[1]]
        if func.kind in ("static", "class"):
            return self._plan_function(target, func, owner, f"{facts.ref(owner)}.{func.name}", [], edges)
        instance = self._construct(owner, 1)
        if instance is None:
            why = self.refusal or "see its constructor"
            self.refusal = f"{target.name}: no instance of {owner} can be built ({why})"
            return None
        setup = [f"instance = {instance.code}"]
        return self._plan_function(target, func, owner, f"instance.{func.name}", setup, edges)

    def _plan_function(
        self,
        target: Target,
        func: FunctionInfo,
        group: str | None,
        callee: str,
        setup: list[str],
        edges: list[Value] | None,
    ) -> CallPlan | None:
        params = func.call_params()
        names = [p.name for p in params]
        exits = find_exits(func, self.facts, names, fields_are_params=False)
        plans = self._param_plans(params, func, exits, edges)
        if plans is None:
            return None
        returns, returns_none = self._returns(func)
        return CallPlan(
            target,
            func,
            group,
            func.name,
            setup,
            callee,
            plans,
            exits,
            returns,
            returns_none,
            is_property=func.kind == "property",
            is_async=func.is_async,
            is_generator=func.is_generator,
        )

    def _plan_class(self, target: Target, edges: list[Value] | None) -> CallPlan | None:
        facts = self.facts
        info = facts.classes[target.name]
        spec = TypeSpec("class", name=info.name)
        ctor = facts.constructor(info.name)
        if info.fields is not None and ctor is None:
            params = [Param(f.name, "positional", f.annotation, f.default) for f in info.fields]
            post = info.methods.get("__post_init__")
            exits = find_exits(post, facts, [p.name for p in params], fields_are_params=True) if post else []
            plans = self._param_plans(params, None, exits, edges)
        elif ctor is not None:
            params = ctor.call_params()
            exits = find_exits(ctor, facts, [p.name for p in params], fields_are_params=False)
            plans = self._param_plans(params, ctor, exits, edges)
        else:
            exits, plans = [], []
        if plans is None:
            return None
        return CallPlan(target, ctor, info.name, "init", [], facts.ref(info.name), plans, exits, spec, False)

    def _param_plans(
        self,
        params: list[Param],
        func: FunctionInfo | None,
        exits: list[Exit],
        edges: list[Value] | None,
    ) -> list[ParamPlan] | None:
        plans: list[ParamPlan] = []
        for param in params:
            if param.kind in ("varargs", "varkw"):
                continue
            if func is not None:
                spec = param_type(param, func, self.facts)
            else:
                spec = from_annotation(param.annotation, self.facts)
            values = list(self.values.values(spec)) if spec is not None else []
            seen = {v.code for v in values}
            learned = (edges or []) if spec is not None else []
            for value in thresholds(exits, param.name, spec, self.facts) + learned:
                if value.code not in seen and _fits(value, spec):
                    values.append(value)
                    seen.add(value.code)
            kept = values[:MAX_CANDIDATES] + [v for v in values[MAX_CANDIDATES:] if v.pattern]
            if not kept and param.default is None:
                kept = list(self.fallback)
            plan = ParamPlan(param, spec, kept, param.default is None)
            if param.default is not None:
                try:
                    plan.default = ast.literal_eval(param.default)
                    plan.has_literal_default = True
                except ValueError:
                    pass
            if plan.required and not plan.values:
                why = (
                    "no annotation, default or telling use"
                    if spec is None
                    else f"no values for {spec.describe()}"
                )
                self.refusal = f"parameter {param.name!r} has {why}; annotate it"
                return None
            plans.append(plan)
        return plans

    def _returns(self, func: FunctionInfo) -> tuple[TypeSpec | None, bool]:
        node = func.returns
        if node is None:
            return None, False
        if isinstance(node, ast.Constant) and node.value is None:
            return None, not func.is_generator
        if func.is_generator:
            if (
                not isinstance(node, ast.Subscript)
                or (dotted(node.value) or "").rsplit(".", 1)[-1] not in _ITERATOR_BASES
            ):
                return None, False
            first = node.slice.elts[0] if isinstance(node.slice, ast.Tuple) else node.slice
            return from_annotation(first, self.facts), False
        return from_annotation(node, self.facts), False

    def _class_plan(self, name: str, depth: int) -> Iterator[CallPlan | None]:
        """The constructor plan of a module class, for building an argument of that class; None (and no
        plan) for a class already being built further up, too deep a nesting, or a name the tests cannot
        reach."""
        if name in self._building or depth > 3 or name not in self.facts.top_names:
            yield None
            return
        self._building.add(name)
        try:
            yield self._plan_class(Target(name, "class"), None)
        finally:
            self._building.discard(name)

    def _construct(self, name: str, depth: int) -> Value | None:
        """An instance of a module class with typical constructor arguments, or None."""
        with contextmanager(self._class_plan)(name, depth) as plan:
            assignment = self.nominal(plan) if plan is not None else None
            if plan is None or assignment is None:
                return None
            code, imports = self.call_code(plan, assignment)
            classes = (name, *(b.rsplit(".", 1)[-1] for b in self.facts.classes[name].bases))
            return Value(code, Opaque(classes), name.lower(), imports)

    def strategy_of(self, spec: TypeSpec) -> Code | None:
        return strategy(spec, self.facts, self._builds)

    def _builds(self, name: str, depth: int) -> Code | None:
        """`st.builds(<class>, ...)` with strategies for the constructor's required arguments, or None."""
        with contextmanager(self._class_plan)(name, depth) as plan:
            if plan is None:
                return None
            args: list[str] = []
            imports: set[str] = set()
            for p in plan.params:
                if not p.required:
                    continue
                code = strategy(p.spec, self.facts, self._builds, depth) if p.spec is not None else None
                if code is None:
                    return None
                imports |= code.imports
                args.append(code.text if p.param.kind == "positional-only" else f"{p.param.name}={code.text}")
            return Code(f"st.builds({', '.join([self.facts.ref(name), *args])})", frozenset(imports))

    # ---- assignments ---------------------------------------------------------------------------------------

    def env(self, plan: CallPlan, assignment: dict[str, Value]) -> dict[str, object]:
        env: dict[str, object] = {}
        for p in plan.params:
            if p.param.name in assignment:
                env[p.param.name] = assignment[p.param.name].py
            elif p.has_literal_default:
                env[p.param.name] = p.default
        return env

    def outcome(self, plan: CallPlan, assignment: dict[str, Value]) -> Outcome:
        env = self.env(plan, assignment)
        result = Outcome()
        for exit_ in plan.exits:
            verdict = truth(exit_, env, self.facts)
            if verdict == "error":
                result.error = True
                return result
            if verdict == "unknown":
                result.unknown.append(exit_)
            elif verdict == "true":
                if exit_.kind == "raise":
                    result.raises = exit_
                elif exit_.conds:
                    result.early_return = exit_
                return result
        return result

    def nominal(self, plan: CallPlan) -> dict[str, Value] | None:
        """Typical values for the required parameters, chosen so no raise condition holds (when the
        conditions can be evaluated); None when some required parameter has no value."""
        required = [p for p in plan.params if p.required]
        if any(not p.values for p in required):
            return None
        choices = [p.values[:MAX_CANDIDATES] for p in required]
        first: dict[str, Value] | None = None
        for combo in itertools.islice(itertools.product(*choices), MAX_COMBINATIONS):
            assignment = {p.param.name: v for p, v in zip(required, combo, strict=True)}
            if first is None:
                first = assignment
            outcome = self.outcome(plan, assignment)
            if outcome.raises is None and not outcome.error:
                return assignment
        return first

    # ---- code ----------------------------------------------------------------------------------------------

    def call_code(self, plan: CallPlan, assignment: dict[str, Value]) -> tuple[str, frozenset[str]]:
        """The call expression for an assignment: required arguments positionally (keyword-only ones by
        keyword), optional ones by keyword."""
        if plan.is_property:
            return plan.callee, frozenset()
        args: list[str] = []
        imports: set[str] = set()
        for p in plan.params:
            value = assignment.get(p.param.name)
            if value is None:
                continue
            imports |= value.imports
            if p.required and p.param.kind != "keyword-only":
                args.append(value.code)
            else:
                args.append(f"{p.param.name}={value.code}")
        return f"{plan.callee}({', '.join(args)})", frozenset(imports)

    def result_stmts(self, plan: CallPlan, call: str) -> tuple[list[Stmt], set[str]]:
        """`result = <call>` (awaited, or a generator drained) and the checks on the result."""
        imports: set[str] = set()
        if plan.is_async:
            call = f"asyncio.run({call})"
            imports.add("asyncio")
        if plan.is_generator:
            call = f"list(itertools.islice({call}, {GENERATOR_ITEMS}))"
            imports.add("itertools")
        checks, check_imports = self.checks(plan)
        if not checks:
            return [Line(call)], imports
        return [Line(f"result = {call}"), *checks], imports | check_imports

    def checks(self, plan: CallPlan) -> tuple[list[Stmt], set[str]]:
        if plan.returns_none:
            return [Check("is", "result", "None")], set()
        spec = plan.returns
        if spec is None:
            return [], set()
        if spec.kind == "literal":
            return [Check("in", "result", f"({', '.join(map(repr, spec.literals))},)")], set()
        check = runtime_check(spec, self.facts)
        if check is None:
            return [], set()
        if plan.is_generator:
            return [Check("true", f"all(isinstance(item, {check.text}) for item in result)")], set(
                check.imports
            )
        stmts: list[Stmt] = [Check("isinstance", "result", check.text)]
        if spec.kind in ("list", "set", "frozenset") and spec.args:
            inner = runtime_check(spec.args[0], self.facts)
            if inner is not None:
                stmts.append(Check("true", f"all(isinstance(item, {inner.text}) for item in result)"))
                return stmts, set(check.imports | inner.imports)
        return stmts, set(check.imports)

    # ---- tests ---------------------------------------------------------------------------------------------

    def example_tests(self, plan: CallPlan) -> list[TestCase]:
        """The smoke test, a test per boundary value and the raises tests of one call plan."""
        nominal = self.nominal(plan)
        if nominal is None:
            plan.notes.append(f"{plan.display}: no typical arguments could be chosen")
            return []
        tests: list[TestCase] = []
        described = ", ".join(f"{name}={describe(v)}" for name, v in nominal.items()) or "no arguments"
        # Say which types were guessed, so a reader knows which tests rest on a guess.
        guessed = [
            f"{p.param.name} {p.spec.describe()} from its {p.spec.origin}"
            for p in plan.params
            if p.spec and p.spec.origin != "annotation"
        ]
        if guessed:
            described += f"; types guessed: {', '.join(guessed)}"
        smoke = self.call_test(plan, nominal, "smoke", "smoke", f"typical arguments ({described})")
        if smoke is not None:
            tests.append(smoke)
        covered: dict[int, int] = {}
        for p in plan.params:
            if p.param.kind == "positional-only" and not p.required:
                continue
            current = nominal.get(p.param.name)
            for value in p.values:
                if current is not None and value.code == current.code:
                    continue
                if (
                    not p.required
                    and p.param.default is not None
                    and value.code == ast.unparse(p.param.default)
                ):
                    continue
                assignment = {**nominal, p.param.name: value}
                case = f"{p.param.name}_{value.label}"
                why = f"boundary value {p.param.name}={describe(value)}"
                if value.pattern:
                    why = f"learned edge case {p.param.name}={describe(value)}"
                test = self.call_test(plan, assignment, "boundary", case, why, covered)
                if test is not None:
                    tests.append(test)
        for exit_ in plan.exits:
            if exit_.kind == "raise" and exit_.line not in covered and exit_.exc is not None:
                test = self._pair_raise(plan, nominal, exit_)
                if test is not None:
                    tests.append(test)
                    covered[exit_.line] = 1
        for exit_ in plan.exits:
            if exit_.kind == "raise" and exit_.line not in covered and exit_.conds:
                if exit_.exc is None:
                    why = "its exception cannot be named from a test"
                elif exit_.usable:
                    why = "no argument value tried meets its condition"
                else:
                    why = "its condition depends on more than the arguments"
                plan.notes.append(
                    f"{plan.display}: raise {exit_.exc_name} at line {exit_.line} "
                    f"(if {exit_.condition_text()}) has no test: {why}"
                )
        return tests

    def call_test(
        self,
        plan: CallPlan,
        assignment: dict[str, Value],
        kind: Kind,
        case: str,
        why: str,
        covered: dict[int, int] | None = None,
    ) -> TestCase | None:
        outcome = self.outcome(plan, assignment)
        if outcome.error:
            return None
        call, imports = self.call_code(plan, assignment)
        patterns = sorted({v.pattern for v in assignment.values() if v.pattern})
        if outcome.raises is not None:
            exit_ = outcome.raises
            if exit_.exc is None or covered is None or covered.get(exit_.line, 0) >= MAX_RAISES_PER_EXIT:
                return None
            if not _certain(outcome):
                return None
            covered[exit_.line] = covered.get(exit_.line, 0) + 1
            return self.raises_test(
                plan, call, imports, exit_, case, why, patterns, exact=not outcome.unknown
            )
        body, extra_imports = self.result_stmts(plan, call)
        tolerated = sorted(
            {e.exc for e in outcome.unknown if e.kind == "raise" and e.exc and e.exc not in _BROAD}
        )
        rationale = f"{why}: {plan.display} returns normally"
        if outcome.early_return is not None:
            rationale += f" (the early return at line {outcome.early_return.line})"
        if plan.returns_none:
            rationale += " and its result is None"
        elif plan.returns is not None:
            rationale += f" and its result is {plan.returns.describe()}"
        stmts: list[Stmt] = [Line(line) for line in plan.setup]
        if tolerated:
            lines = ", ".join(str(e.line) for e in outcome.unknown if e.exc in tolerated)
            reason = f"{plan.display} raises it on purpose for some inputs (line {lines})"
            stmts.append(Expect(tolerated, body[:1], reason))
            stmts.extend(body[1:])
            rationale += f", unless it raises {', '.join(e.rsplit('.', 1)[-1] for e in tolerated)} on purpose"
        else:
            stmts.extend(body)
        return plan.test(
            case, kind, rationale, stmts, patterns=patterns, imports=sorted(imports | extra_imports)
        )

    def raises_test(
        self,
        plan: CallPlan,
        call: str,
        imports: frozenset[str],
        exit_: Exit,
        case: str,
        why: str,
        patterns: list[str],
        exact: bool = True,
    ) -> TestCase:
        """`exact`: no other exit can come first, so the message is checked too."""
        assert exit_.exc is not None
        match = None
        if exit_.message and exact:
            match = message_pattern(exit_.message, exit_.message_prefix)
        if plan.is_async:
            call = f"asyncio.run({call})"
            imports = imports | {"asyncio"}
        if plan.is_generator:
            call = f"list(itertools.islice({call}, {GENERATOR_ITEMS}))"
            imports = imports | {"itertools"}
        body: list[Stmt] = [Line(line) for line in plan.setup]
        body.append(Raises(exit_.exc, match, [Line(call)]))
        exc_short = exit_.exc_name.rsplit(".", 1)[-1]
        rationale = f"{why}: raises {exc_short} (line {exit_.line}: if {exit_.condition_text()})"
        return plan.test(
            f"{case}_raises", "raises", rationale, body, patterns=patterns, imports=sorted(imports)
        )

    def _pair_raise(self, plan: CallPlan, nominal: dict[str, Value], exit_: Exit) -> TestCase | None:
        """A raises test for an exit no single boundary value reaches: two arguments varied together."""
        names = [p for p in plan.params if p.param.name in exit_.names and p.values]
        for a, b in itertools.combinations(names, 2):
            for va, vb in itertools.islice(itertools.product(a.values, b.values), 200):
                assignment = {**nominal, a.param.name: va, b.param.name: vb}
                outcome = self.outcome(plan, assignment)
                if outcome.raises is exit_ and _certain(outcome):
                    call, imports = self.call_code(plan, assignment)
                    case = f"{a.param.name}_{va.label}_{b.param.name}_{vb.label}"
                    why = f"{a.param.name}={describe(va)} with {b.param.name}={describe(vb)}"
                    return self.raises_test(
                        plan, call, imports, exit_, case, why, [], exact=not outcome.unknown
                    )
        return None


def _certain(outcome: Outcome) -> bool:
    """Whether the raise an assignment reaches is sure to be the exception seen: every exit before it that
    might be taken raises the same exception (only its message may differ)."""
    raised = outcome.raises
    assert raised is not None
    return all(e.kind == "raise" and e.exc == raised.exc for e in outcome.unknown)


def _fits(value: Value, spec: TypeSpec | None) -> bool:
    """Whether a threshold or learned value suits a parameter of this type."""
    if spec is None or value.label == "wrong_type":
        return True
    kinds = {arg.kind for arg in spec.args} if spec.kind == "union" else {spec.kind}
    py = value.py
    if isinstance(py, bool):
        return "bool" in kinds
    if isinstance(py, int):
        return bool(kinds & {"int", "float"})
    if isinstance(py, float):
        return "float" in kinds
    for kind, tp in (("str", str), ("bytes", bytes), ("list", list), ("tuple", tuple), ("dict", dict)):
        if isinstance(py, tp):
            return kind in kinds
    if isinstance(py, set | frozenset):
        return bool(kinds & {"set", "frozenset"})
    return py is None and "none" in kinds


def message_pattern(message: str, prefix: bool) -> str:
    """A `match=` pattern for an exception message: the whole literal (its first line), or its literal
    prefix."""
    lines = message.strip().splitlines()
    escaped = regex_escape(lines[0] if lines else message)
    return f"^{escaped}" if prefix else escaped


def regex_escape(text: str) -> str:
    """Like re.escape, but only for characters that mean something in a pattern, so it stays readable."""
    return re.sub(r"([.^$*+?{}\[\]\\|()])", r"\\\1", text)
