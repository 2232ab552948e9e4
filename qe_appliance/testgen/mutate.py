"""A fast AST mutator: the mutants of a module (one small change each: an operator, a comparison, a
constant, a condition, a return value, a call statement, an attribute assignment), listed in a fixed
order and applied to a fresh tree.

Standard library only: the observation child loads it by path, next to the module under test.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from typing import Final

# Replacements tried for each operator; the first differing one is enough for a mutant to matter.
_BINOPS: Final[dict[type[ast.operator], tuple[type[ast.operator], ...]]] = {
    ast.Add: (ast.Sub,),
    ast.Sub: (ast.Add,),
    ast.Mult: (ast.Div,),
    ast.Div: (ast.Mult,),
    ast.FloorDiv: (ast.Mult,),
    ast.Mod: (ast.FloorDiv,),
    ast.Pow: (ast.Mult,),
    ast.LShift: (ast.RShift,),
    ast.RShift: (ast.LShift,),
    ast.BitAnd: (ast.BitOr,),
    ast.BitOr: (ast.BitAnd,),
}
_CMPOPS: Final[dict[type[ast.cmpop], tuple[type[ast.cmpop], ...]]] = {
    ast.Lt: (ast.LtE, ast.GtE),
    ast.LtE: (ast.Lt, ast.Gt),
    ast.Gt: (ast.GtE, ast.LtE),
    ast.GtE: (ast.Gt, ast.Lt),
    ast.Eq: (ast.NotEq,),
    ast.NotEq: (ast.Eq,),
    ast.Is: (ast.IsNot,),
    ast.IsNot: (ast.Is,),
    ast.In: (ast.NotIn,),
    ast.NotIn: (ast.In,),
}


class Mutant:
    """One mutant: the `index`-th mutable node (in ast.walk order of the function bodies), what it becomes
    (`how`), and where it is."""

    __slots__ = ("index", "how", "line", "description")

    def __init__(self, index: int, how: str, line: int, description: str) -> None:
        self.index = index
        self.how = how
        self.line = line
        self.description = description


def _sites(tree: ast.Module) -> Iterator[ast.AST]:
    """The nodes mutants change: those inside function bodies (module-level code runs at import, where a
    mutant would only break the import)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for stmt in node.body:
                yield from ast.walk(stmt)


def _is_docstring(node: ast.AST, parents: dict[int, ast.AST]) -> bool:
    parent = parents.get(id(node))
    return isinstance(parent, ast.Expr)


def _options(node: ast.AST, parents: dict[int, ast.AST]) -> list[tuple[str, str]]:
    """(how, description) pairs for a node."""
    found: list[tuple[str, str]] = []
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        for new in _BINOPS[type(node.op)]:
            found.append((f"binop:{new.__name__}", f"{type(node.op).__name__} -> {new.__name__}"))
    elif isinstance(node, ast.AugAssign) and type(node.op) in _BINOPS:
        new = _BINOPS[type(node.op)][0]
        found.append((f"augop:{new.__name__}", f"{type(node.op).__name__}= -> {new.__name__}="))
    elif isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _CMPOPS:
        for cmp in _CMPOPS[type(node.ops[0])]:
            found.append((f"cmp:{cmp.__name__}", f"{type(node.ops[0]).__name__} -> {cmp.__name__}"))
    elif isinstance(node, ast.BoolOp):
        other = "Or" if isinstance(node.op, ast.And) else "And"
        found.append((f"bool:{other}", f"{type(node.op).__name__} -> {other}"))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        found.append(("drop-not", "not x -> x"))
    elif isinstance(node, ast.Constant) and not _is_docstring(node, parents):
        value = node.value
        if isinstance(value, bool):
            found.append(("const:flip", f"{value} -> {not value}"))
        elif isinstance(value, int):
            found.append(("const:inc", f"{value} -> {value + 1}"))
        elif isinstance(value, float):
            found.append(("const:inc", f"{value} -> {value + 1}"))
        elif isinstance(value, str) and value:
            found.append(("const:empty", f"{value[:20]!r} -> ''"))
    elif isinstance(node, ast.If | ast.While):
        found.append(("cond:negate", "condition negated"))
    elif isinstance(node, ast.Return) and node.value is not None:
        if not (isinstance(node.value, ast.Constant) and node.value.value is None):
            found.append(("return:none", "return value -> None"))
    elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        found.append(("stmt:drop", "call statement removed"))
    elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Attribute) for t in node.targets):
        found.append(("assign:none", "attribute assigned None"))
    elif isinstance(node, ast.Break | ast.Continue):
        other = "Continue" if isinstance(node, ast.Break) else "Break"
        found.append((f"jump:{other}", f"{type(node).__name__.lower()} -> {other.lower()}"))
    return found


def _parents(tree: ast.Module) -> dict[int, ast.AST]:
    return {id(child): node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def mutants(tree: ast.Module) -> list[Mutant]:
    """Every mutant of a module, in a fixed order."""
    parents = _parents(tree)
    found: list[Mutant] = []
    for index, node in enumerate(_sites(tree)):
        for how, description in _options(node, parents):
            found.append(Mutant(index, how, getattr(node, "lineno", 0), description))
    return found


def apply(tree: ast.Module, mutant: Mutant) -> ast.Module:
    """`tree` (a fresh parse, changed in place) with `mutant` applied."""
    node = next(n for i, n in enumerate(_sites(tree)) if i == mutant.index)
    kind, _, arg = mutant.how.partition(":")
    if kind == "binop" and isinstance(node, ast.BinOp):
        node.op = getattr(ast, arg)()
    elif kind == "augop" and isinstance(node, ast.AugAssign):
        node.op = getattr(ast, arg)()
    elif kind == "cmp" and isinstance(node, ast.Compare):
        node.ops = [getattr(ast, arg)()]
    elif kind == "bool" and isinstance(node, ast.BoolOp):
        node.op = getattr(ast, arg)()
    elif kind == "drop-not" and isinstance(node, ast.UnaryOp):
        _replace(tree, node, node.operand)
    elif kind == "const" and isinstance(node, ast.Constant):
        value = node.value
        node.value = not value if arg == "flip" else "" if arg == "empty" else value + 1  # type: ignore[operator]
    elif kind == "cond" and isinstance(node, ast.If | ast.While):
        node.test = ast.copy_location(ast.UnaryOp(op=ast.Not(), operand=node.test), node.test)
    elif kind == "return" and isinstance(node, ast.Return):
        node.value = ast.copy_location(ast.Constant(value=None), node)
    elif kind == "stmt" and isinstance(node, ast.Expr):
        _replace(tree, node, ast.copy_location(ast.Pass(), node))
    elif kind == "assign" and isinstance(node, ast.Assign):
        node.value = ast.copy_location(ast.Constant(value=None), node.value)
    elif kind == "jump" and isinstance(node, ast.Break | ast.Continue):
        _replace(tree, node, ast.copy_location(getattr(ast, arg)(), node))
    return ast.fix_missing_locations(tree)


def _replace(tree: ast.Module, old: ast.AST, new: ast.AST) -> None:
    """Put `new` where `old` is in its parent."""
    parent = _parents(tree)[id(old)]
    for field, value in ast.iter_fields(parent):
        if value is old:
            setattr(parent, field, new)
            return
        if isinstance(value, list):
            for i, item in enumerate(value):
                if item is old:
                    value[i] = new
                    return
