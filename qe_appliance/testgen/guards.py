"""The exits of a function's body that depend on its arguments: `raise` and `return` under `if` conditions
(and `assert`s), with those conditions evaluated on candidate arguments by a small evaluator that knows
comparisons, arithmetic, `len`, `isinstance` and a few pure methods — never by running the code."""

from __future__ import annotations

import ast
import builtins
import math
import numbers
import operator
from collections.abc import Callable, Iterator
from typing import Any, Final, Literal

import msgspec

from qe_appliance.testgen.source import FunctionInfo, ModuleFacts, dotted, own_nodes
from qe_appliance.testgen.typespec import TypeSpec
from qe_appliance.testgen.values import Opaque, Value, label_of, literal_value

Truth = Literal["true", "false", "unknown", "error"]

MAX_LENGTH_THRESHOLD: Final = 64
_SAFE_CALLS: Final[dict[str, Callable[..., Any]]] = {
    "len": len,
    "abs": abs,
    "min": min,
    "max": max,
    "sum": sum,
    "bool": bool,
    "round": round,
    "sorted": sorted,
    "any": any,
    "all": all,
    "set": set,
    "tuple": tuple,
    "list": list,
}
_PURE_METHODS: Final = frozenset(
    "startswith endswith strip lstrip rstrip lower upper isdigit isalpha isalnum isspace isidentifier "
    "isnumeric isdecimal islower isupper count find index keys values items get".split()
)
_TYPES: Final[dict[str, type | tuple[type, ...]]] = {
    "int": int,
    "float": float,
    "str": str,
    "bytes": bytes,
    "bool": bool,
    "list": list,
    "dict": dict,
    "tuple": tuple,
    "set": set,
    "frozenset": frozenset,
    "bytearray": bytearray,
    "complex": complex,
    "Number": numbers.Number,
    "Real": numbers.Real,
    "Integral": numbers.Integral,
    "Rational": numbers.Rational,
}
_COMPARE: Final[dict[type[ast.cmpop], Callable[[Any, Any], Any]]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_BINARY: Final[dict[type[ast.operator], Callable[[Any, Any], Any]]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_,
    ast.BitXor: operator.xor,
}
_EVAL_ERRORS: Final = (
    TypeError,
    ValueError,
    ZeroDivisionError,
    IndexError,
    KeyError,
    AttributeError,
    OverflowError,
)


class _Unknown(Exception):
    """The condition depends on something the evaluator cannot see."""


class Exit(msgspec.Struct, frozen=True):
    """A `raise` (or `return`) reached when all of `conds` hold. `exc` is the test-side expression of the
    exception class (None when it cannot be named from outside); `usable` is False when the conditions
    depend on more than the arguments."""

    kind: Literal["raise", "return"]
    conds: tuple[ast.expr, ...]
    line: int
    exc: str | None
    exc_name: str
    message: str | None
    message_prefix: bool
    names: frozenset[str]
    usable: bool

    def condition_text(self) -> str:
        if not self.conds:
            return "always"
        return " and ".join(ast.unparse(cond) for cond in self.conds)


def find_exits(
    func: FunctionInfo, facts: ModuleFacts, params: list[str], fields_are_params: bool
) -> list[Exit]:
    """The exits of `func`'s body in source order. With `fields_are_params` (a dataclass's __post_init__),
    `self.x` reads the constructor argument `x`."""
    walker = _Walker(func, facts, set(params), fields_are_params)
    body = func.node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    walker.block(body, [], top=True)
    return walker.exits


class _Walker:
    def __init__(self, func: FunctionInfo, facts: ModuleFacts, params: set[str], fields: bool) -> None:
        self.facts = facts
        self.params = params
        self.fields = fields
        self.exits: list[Exit] = []
        self.rebound: set[str] = set()
        stores: dict[str, int] = {}
        for node in own_nodes(func.node):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                stores[node.id] = stores.get(node.id, 0) + 1
        self.single = {name for name, count in stores.items() if count == 1 and name not in params}
        self.locals: dict[str, ast.expr] = {}

    def block(self, stmts: list[ast.stmt], path: list[ast.expr], top: bool = False) -> bool:
        """Walk a statement list; True when it always ends in an exit."""
        for stmt in stmts:
            if isinstance(stmt, ast.Raise | ast.Return):
                self.exit(stmt, path)
                return True
            if isinstance(stmt, ast.Assert):
                self.add(
                    "raise", path + [ast.UnaryOp(ast.Not(), stmt.test)], stmt.lineno, "AssertionError", None
                )
            elif isinstance(stmt, ast.If):
                body_exits = self.block(stmt.body, path + [stmt.test])
                else_exits = self.block(stmt.orelse, path + [ast.UnaryOp(ast.Not(), stmt.test)])
                if body_exits and else_exits:
                    return True
            elif top and isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
                target = stmt.targets[0]
                if isinstance(target, ast.Name) and target.id in self.single:
                    self.locals[target.id] = stmt.value
            self.rebound.update(
                n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
            )
        return False

    def exit(self, stmt: ast.Raise | ast.Return, path: list[ast.expr]) -> None:
        if isinstance(stmt, ast.Return):
            self.add("return", path, stmt.lineno, "", None)
            return
        exc = stmt.exc
        if exc is None:  # a bare re-raise
            return
        call = exc if isinstance(exc, ast.Call) else None
        name = dotted(call.func if call is not None else exc)
        message, prefix = _message(call.args[0]) if call is not None and call.args else (None, False)
        self.add("raise", path, stmt.lineno, name or ast.unparse(exc), message, prefix)

    def add(
        self,
        kind: Literal["raise", "return"],
        path: list[ast.expr],
        line: int,
        name: str,
        message: str | None,
        prefix: bool = False,
    ) -> None:
        conds = tuple(self.inline(cond) for cond in path)
        names = self.names(conds)
        exc = self.exception(name) if kind == "raise" else None
        usable = self.usable(names)
        self.exits.append(Exit(kind, conds, line, exc, name, message, prefix, names & self.params, usable))

    def exception(self, name: str) -> str | None:
        head = name.split(".", 1)[0]
        if not self.facts.defines(head):
            builtin = getattr(builtins, name, None)
            if isinstance(builtin, type) and issubclass(builtin, BaseException):
                return name
            return None
        return self.facts.ref(name) if head in self.facts.top_names else None

    def inline(self, cond: ast.expr, depth: int = 0) -> ast.expr:
        """`cond` with single-assignment locals replaced by their expressions, and `self.x` by `x` in a
        dataclass's __post_init__."""
        walker = self

        class Inline(ast.NodeTransformer):
            def visit_Name(self, node: ast.Name) -> ast.expr:
                if node.id in walker.locals and depth < 4:
                    return walker.inline(walker.locals[node.id], depth + 1)
                return node

            def visit_Attribute(self, node: ast.Attribute) -> ast.expr:
                if walker.fields and isinstance(node.value, ast.Name) and node.value.id == "self":
                    return ast.Name(node.attr, ast.Load())
                self.generic_visit(node)
                return node

        inlined: ast.expr = ast.fix_missing_locations(Inline().visit(_copy(cond)))
        return inlined

    def names(self, conds: tuple[ast.expr, ...]) -> frozenset[str]:
        return frozenset(n.id for cond in conds for n in ast.walk(cond) if isinstance(n, ast.Name))

    def usable(self, names: frozenset[str]) -> bool:
        for name in names:
            if name in self.params:
                if name in self.rebound:
                    return False
            elif not (
                name in _SAFE_CALLS
                or name in _TYPES
                or name in self.facts.classes
                or name in self.facts.constants
            ):
                return False
        return True


def _copy(node: ast.expr) -> ast.expr:
    return ast.parse(ast.unparse(node), mode="eval").body


def _message(node: ast.expr) -> tuple[str | None, bool]:
    """The exception message as written: (text, False) for a literal, (literal prefix, True) for an f-string
    or %-/format-string, (None, False) otherwise."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value, False
    if isinstance(node, ast.JoinedStr):
        prefix = ""
        for part in node.values:
            if not (isinstance(part, ast.Constant) and isinstance(part.value, str)):
                break
            prefix += part.value
        return (prefix, True) if len(prefix) >= 3 else (None, False)
    template = None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) and isinstance(node.left, ast.Constant):
        template, marker = node.left.value, "%"
    elif (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "format"
        and isinstance(node.func.value, ast.Constant)
    ):
        template, marker = node.func.value.value, "{"
    if isinstance(template, str):
        prefix = template.split(marker, 1)[0]
        return (prefix, True) if len(prefix) >= 3 else (None, False)
    return None, False


# ---- evaluation -------------------------------------------------------------------------------------------


def truth(exit_: Exit, env: dict[str, object], facts: ModuleFacts) -> Truth:
    """Whether `exit_` is taken for these arguments."""
    if not exit_.usable:
        return "unknown"
    try:
        for cond in exit_.conds:
            if not _truthy(_eval(cond, env, facts)):
                return "false"
    except _Unknown:
        return "unknown"
    except _EVAL_ERRORS:
        return "error"
    return "true"


def _truthy(value: object) -> bool:
    if isinstance(value, Opaque):
        raise _Unknown
    return bool(value)


def _eval(node: ast.expr, env: dict[str, object], facts: ModuleFacts) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in env:
            return env[node.id]
        if node.id in facts.constants:
            return facts.constants[node.id]
        raise _Unknown
    if isinstance(node, ast.Dict):
        if any(key is None for key in node.keys):
            raise _Unknown
        return {
            _eval(k, env, facts): _eval(v, env, facts)
            for k, v in zip(node.keys, node.values, strict=True)
            if k
        }
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        items = [_eval(elt, env, facts) for elt in node.elts]
        return (
            tuple(items)
            if isinstance(node, ast.Tuple)
            else set(items)
            if isinstance(node, ast.Set)
            else items
        )
    if isinstance(node, ast.UnaryOp):
        value = _eval(node.operand, env, facts)
        if isinstance(node.op, ast.Not):
            return not _truthy(value)
        if isinstance(value, Opaque):
            raise _Unknown
        unary: dict[type[ast.unaryop], Callable[[Any], Any]] = {
            ast.USub: operator.neg,
            ast.UAdd: operator.pos,
            ast.Invert: operator.invert,
        }
        return unary[type(node.op)](value)
    if isinstance(node, ast.BoolOp):
        is_and = isinstance(node.op, ast.And)
        result: Any = None
        for operand in node.values:
            result = _eval(operand, env, facts)
            if _truthy(result) != is_and:
                return result
        return result
    if isinstance(node, ast.Compare):
        return _compare(node, env, facts)
    if isinstance(node, ast.BinOp):
        return _binary(node, env, facts)
    if isinstance(node, ast.Call):
        return _call(node, env, facts)
    if isinstance(node, ast.Subscript):
        container = _eval(node.value, env, facts)
        if isinstance(container, Opaque):
            raise _Unknown
        if isinstance(node.slice, ast.Slice):
            parts = [
                None if p is None else _eval(p, env, facts)
                for p in (node.slice.lower, node.slice.upper, node.slice.step)
            ]
            return container[slice(*parts)]
        return container[_eval(node.slice, env, facts)]
    raise _Unknown


def _compare(node: ast.Compare, env: dict[str, object], facts: ModuleFacts) -> bool:
    left = _eval(node.left, env, facts)
    for op, right_node in zip(node.ops, node.comparators, strict=True):
        right = _eval(right_node, env, facts)
        if isinstance(left, Opaque) or isinstance(right, Opaque):
            # An instance is never None; anything else about it is unknown.
            if isinstance(op, ast.Is | ast.IsNot) and (left is None or right is None):
                outcome = isinstance(op, ast.IsNot)
            else:
                raise _Unknown
        else:
            outcome = bool(_COMPARE[type(op)](left, right))
        if not outcome:
            return False
        left = right
    return True


def _binary(node: ast.BinOp, env: dict[str, object], facts: ModuleFacts) -> Any:
    left, right = _eval(node.left, env, facts), _eval(node.right, env, facts)
    if isinstance(left, Opaque) or isinstance(right, Opaque) or type(node.op) not in _BINARY:
        raise _Unknown
    # Keep evaluation cheap whatever the condition says.
    if isinstance(node.op, ast.Pow) and (abs(_number(right)) > 64 or abs(_number(left)) > 1e6):
        raise _Unknown
    if isinstance(node.op, ast.Mult) and any(
        isinstance(v, str | bytes | list | tuple) for v in (left, right)
    ):
        count = right if isinstance(right, int) else left
        if isinstance(count, int) and count > 10_000:
            raise _Unknown
    return _BINARY[type(node.op)](left, right)


def _number(value: object) -> float:
    if isinstance(value, int | float):
        return float(value)
    raise _Unknown


def _call(node: ast.Call, env: dict[str, object], facts: ModuleFacts) -> Any:
    if node.keywords:
        raise _Unknown
    name = dotted(node.func)
    if name == "isinstance" and len(node.args) == 2:
        value = _eval(node.args[0], env, facts)
        kinds = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
        return any(_is_instance(value, kind, facts) for kind in kinds)
    if name is not None and name in _SAFE_CALLS and not facts.defines(name):
        args = [_eval(arg, env, facts) for arg in node.args]
        if any(isinstance(arg, Opaque) for arg in args):
            raise _Unknown
        return _SAFE_CALLS[name](*args)
    if isinstance(node.func, ast.Attribute) and node.func.attr in _PURE_METHODS:
        target = _eval(node.func.value, env, facts)
        if not isinstance(target, str | bytes | list | tuple | dict):
            raise _Unknown
        args = [_eval(arg, env, facts) for arg in node.args]
        return getattr(target, node.func.attr)(*args)
    if name == "math.isnan" and len(node.args) == 1:
        return math.isnan(_number(_eval(node.args[0], env, facts)))
    raise _Unknown


def _is_instance(value: object, kind: ast.expr, facts: ModuleFacts) -> bool:
    name = dotted(kind)
    if name is None:
        raise _Unknown
    last = name.rsplit(".", 1)[-1]
    if isinstance(value, Opaque):
        if last in value.classes:
            return True
        if last in _TYPES or last in facts.classes:
            return False
        raise _Unknown
    if last in facts.classes or last not in _TYPES:
        if last in facts.classes:
            return False
        raise _Unknown
    return isinstance(value, _TYPES[last])


# ---- boundary values from conditions -----------------------------------------------------------------------


def thresholds(exits: list[Exit], param: str, spec: TypeSpec | None, facts: ModuleFacts) -> list[Value]:
    """Values at and around the constants `param` is compared with in the exits' conditions: c-1, c, c+1
    for numbers, strings of length n-1, n, n+1 for len(), the members of `in` containers, the literal a
    string is compared with or starts with, and a wrong-typed value for an isinstance check."""
    kinds: set[str | None] = {None}
    if spec is not None:
        kinds = {arg.kind for arg in spec.args} if spec.kind == "union" else {spec.kind}
    found: list[Value] = []
    for exit_ in exits:
        if not exit_.usable:
            continue
        for cond in exit_.conds:
            for node in ast.walk(cond):
                found.extend(_around(node, param, kinds, facts))
    unique: dict[str, Value] = {}
    for value in found:
        unique.setdefault(value.code, value)
    return list(unique.values())


def _around(node: ast.AST, param: str, kinds: set[str | None], facts: ModuleFacts) -> Iterator[Value]:
    if isinstance(node, ast.Call) and _is_param_call(node, param, ("isinstance",)):
        yield Value("'1'", "1", "wrong_type") if "str" not in kinds else Value("1", 1, "wrong_type")
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("startswith", "endswith")
        and _is_name(node.func.value, param)
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        yield literal_value(node.args[0].value)
    if not isinstance(node, ast.Compare):
        return
    operands = [node.left, *node.comparators]
    for i, op in enumerate(node.ops):
        pair = (operands[i], operands[i + 1])
        for mine, other in (pair, pair[::-1]):
            constant = _constant(other, facts)
            if _is_name(mine, param) and constant is not None:
                yield from _near(constant, kinds, op)
            elif _is_param_call(mine, param, ("len",)) and isinstance(constant, int):
                yield from _lengths(constant, kinds)


def _near(constant: object, kinds: set[str | None], op: ast.cmpop) -> Iterator[Value]:
    if isinstance(constant, bool):
        return
    if isinstance(constant, int | float) and kinds & {"int", "float", None}:
        as_float = "float" in kinds and "int" not in kinds or isinstance(constant, float)
        for delta in (-1, 0, 1):
            number = constant + delta
            yield literal_value(float(number) if as_float else number)
    elif isinstance(constant, str | bytes) and kinds & {"str", "bytes", None}:
        yield literal_value(constant)
    elif isinstance(constant, tuple | list | frozenset | set | dict) and isinstance(op, ast.In | ast.NotIn):
        for member in list(constant)[:5]:
            if not isinstance(member, bool) and (None in kinds or type(member).__name__ in kinds):
                yield literal_value(member)


def allowed_values(exits: list[Exit], param: str, facts: ModuleFacts) -> list[object] | None:
    """The only values `param` may take when an exit raises for anything outside a constant collection
    (`if rate not in RATES: raise ...`); None when no exit says so."""
    for exit_ in exits:
        if exit_.kind != "raise" or not exit_.usable or len(exit_.conds) != 1:
            continue
        cond = exit_.conds[0]
        if (
            isinstance(cond, ast.Compare)
            and len(cond.ops) == 1
            and isinstance(cond.ops[0], ast.NotIn)
            and _is_name(cond.left, param)
        ):
            members = _constant(cond.comparators[0], facts)
            if isinstance(members, tuple | list | set | frozenset | dict) and members:
                return sorted(members, key=repr) if isinstance(members, set | frozenset) else list(members)
    return None


def _lengths(limit: int, kinds: set[str | None]) -> Iterator[Value]:
    for n in (limit - 1, limit, limit + 1):
        if not 0 <= n <= MAX_LENGTH_THRESHOLD:
            continue
        if "str" in kinds or None in kinds:
            yield Value(repr("a" * n) if n <= 8 else f"'a' * {n}", "a" * n, f"length_{n}")
        elif "list" in kinds:
            yield Value(f"[0] * {n}" if n > 3 else repr([0] * n), [0] * n, f"length_{n}")
        elif "bytes" in kinds:
            yield Value(repr(b"a" * n) if n <= 8 else f"b'a' * {n}", b"a" * n, f"length_{n}")


def _constant(node: ast.expr, facts: ModuleFacts) -> object | None:
    if isinstance(node, ast.Name):
        return facts.constants.get(node.id)
    try:
        value: object = ast.literal_eval(node)
        return value
    except (ValueError, SyntaxError, TypeError):
        return None


def _is_name(node: ast.expr, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


def _is_param_call(node: ast.AST, param: str, funcs: tuple[str, ...]) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in funcs
        and bool(node.args)
        and _is_name(node.args[0], param)
    )


def describe(value: Value) -> str:
    return value.code if len(value.code) <= 40 else f"{label_of(value.py)} ({value.code[:30]}...)"
