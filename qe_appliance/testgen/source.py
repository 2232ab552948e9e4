"""What a Python module offers to test, read with `ast` and never imported: its functions, classes and
methods with their signatures, and the names the module defines at its top level."""

from __future__ import annotations

import ast
import builtins
import copy
import functools
import re
from functools import lru_cache
from typing import Final, Literal

import msgspec

from qe_appliance.workspace import InputError

ParamKind = Literal["positional-only", "positional", "keyword-only", "varargs", "varkw"]
CallableKind = Literal["function", "method", "static", "class", "property"]
TargetKind = Literal["function", "class", "method", "module"]

ENUM_BASES: Final = frozenset({"Enum", "IntEnum", "StrEnum", "Flag", "IntFlag"})
SKIPPED_BASES: Final = frozenset({"Protocol", "TypedDict", "ABC", "ABCMeta"})
_EXCEPTION_SUFFIXES: Final = ("Error", "Exception", "Warning", "Exit", "Interrupt")
SHOWN_LINE_CHARS: Final = 160


@functools.cache
def _camel() -> re.Pattern[str]:
    return re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


class SourceError(InputError):
    """The source cannot be used for generation: it does not parse, or has nothing to test."""


class Param(msgspec.Struct, frozen=True):
    name: str
    kind: ParamKind
    annotation: ast.expr | None
    default: ast.expr | None


class _Documented:
    """The docstring and first line of a definition's `node`."""

    __slots__ = ()  # a mixin of Structs
    node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef

    @property
    def docstring(self) -> str | None:
        return ast.get_docstring(self.node, clean=True)

    @property
    def line(self) -> int:
        return self.node.lineno


class FunctionInfo(_Documented, msgspec.Struct):
    """A function or method as written: `qualname` is `f` or `Class.f`."""

    name: str
    qualname: str
    node: ast.FunctionDef | ast.AsyncFunctionDef
    params: list[Param]
    kind: CallableKind
    owner: str | None
    conditional: bool

    @property
    def returns(self) -> ast.expr | None:
        return self.node.returns

    @property
    def is_async(self) -> bool:
        return isinstance(self.node, ast.AsyncFunctionDef)

    @property
    def is_generator(self) -> bool:
        return any(isinstance(node, ast.Yield | ast.YieldFrom) for node in own_nodes(self.node))

    def call_params(self) -> list[Param]:
        """The parameters a caller passes: without `self`/`cls`."""
        if (
            self.kind in ("method", "class", "property")
            and self.params
            and self.params[0].kind != "keyword-only"
        ):
            return self.params[1:]
        return self.params


class Field(msgspec.Struct):
    """A dataclass or NamedTuple field, which is also a constructor parameter."""

    name: str
    annotation: ast.expr | None
    default: ast.expr | None


class ClassInfo(_Documented, msgspec.Struct):
    name: str
    node: ast.ClassDef
    bases: list[str]
    methods: dict[str, FunctionInfo]
    fields: list[Field] | None  # dataclass / NamedTuple fields; None for a plain class
    enum_members: list[str]
    conditional: bool
    abstract: bool

    @property
    def is_enum(self) -> bool:
        return bool(ENUM_BASES.intersection(base.rsplit(".", 1)[-1] for base in self.bases))


class ModuleFacts(msgspec.Struct):
    """One module: `name` is its import name, `alias` the name the tests refer to it by."""

    name: str
    alias: str
    tree: ast.Module
    functions: dict[str, FunctionInfo]
    classes: dict[str, ClassInfo]
    # Names bound whatever the path through the module body; tests may reference these at import time.
    top_names: set[str]
    conditional_names: set[str]
    # `from decimal import Decimal as D` -> {"D": ("decimal", "Decimal")};
    # `import datetime` -> {"datetime": ("datetime", "")}
    imports: dict[str, tuple[str, str]]
    exported: list[str] | None
    docstring: str | None
    # Module-level names bound once, unconditionally, to a literal (MAX_ITEMS = 10, RATES = {...}).
    constants: dict[str, object] = msgspec.field(default_factory=dict)

    def defines(self, name: str) -> bool:
        return name in self.top_names or name in self.conditional_names

    def ref(self, name: str) -> str:
        """The test-side expression for a module-level name."""
        return f"{self.alias}.{name}"

    def is_exception_class(self, name: str, depth: int = 0) -> bool:
        info = self.classes.get(name)
        if info is None:
            builtin = getattr(builtins, name, None)
            return (
                isinstance(builtin, type)
                and issubclass(builtin, BaseException)
                or name.endswith(_EXCEPTION_SUFFIXES)
            )
        return depth < 8 and any(self.is_exception_class(b.rsplit(".", 1)[-1], depth + 1) for b in info.bases)

    def constructor(self, name: str, depth: int = 0) -> FunctionInfo | None:
        """The `__init__` a class uses, searched through its bases defined in this module."""
        info = self.classes.get(name)
        if info is None or depth > 8:
            return None
        if "__init__" in info.methods:
            return info.methods["__init__"]
        for base in info.bases:
            found = self.constructor(base, depth + 1)
            if found is not None:
                return found
        return None


class Target(msgspec.Struct, frozen=True):
    """Something to write tests for: a function, a class (its construction), a method, or the module's
    own docstring examples."""

    name: str
    kind: TargetKind
    owner: str | None = None
    words: tuple[str, ...] = ()


def own_nodes(node: ast.AST) -> list[ast.AST]:
    """The nodes of a function body, leaving out nested functions, classes and lambdas."""
    found: list[ast.AST] = []
    pending = list(ast.iter_child_nodes(node))
    while pending:
        current = pending.pop()
        if isinstance(current, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            continue
        found.append(current)
        pending.extend(ast.iter_child_nodes(current))
    return found


def dotted(node: ast.expr) -> str | None:
    """`a.b.c` for a Name/Attribute chain, else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


class _Qualify(ast.NodeTransformer):
    """Reads of module-level names become `<alias>.<name>`, except names in `local`; names in `rename`
    (bound by the code itself) are renamed wherever they appear."""

    def __init__(self, facts: ModuleFacts, local: set[str], rename: dict[str, str]) -> None:
        self.facts = facts
        self.local = local
        self.rename = rename
        self.unresolved: set[str] = set()

    def visit_alias(self, node: ast.alias) -> ast.alias:
        bound = node.asname or node.name.split(".", 1)[0]
        if bound in self.rename and node.name != "*":
            node.asname = self.rename[bound]
        return node

    def visit_Name(self, node: ast.Name) -> ast.expr:
        if node.id in self.rename:
            return ast.copy_location(ast.Name(self.rename[node.id], node.ctx), node)
        if not isinstance(node.ctx, ast.Load) or node.id in self.local:
            return node
        if node.id == self.facts.name.rsplit(".", 1)[-1] and not self.facts.defines(node.id):
            return ast.copy_location(ast.Name(self.facts.alias, ast.Load()), node)  # the module itself
        if self.facts.defines(node.id):
            return ast.copy_location(
                ast.Attribute(ast.Name(self.facts.alias, ast.Load()), node.id, ast.Load()), node
            )
        if not hasattr(builtins, node.id):
            self.unresolved.add(node.id)
        return node


def qualify(
    tree: ast.AST, facts: ModuleFacts, local: set[str], rename: dict[str, str] | None = None
) -> tuple[str, set[str]]:
    """Source for `tree` as a test writes it: module-level names read through the module; returns it and
    the names that are neither local, the module's, nor builtins."""
    qualifier = _Qualify(facts, local, rename or {})
    fixed = ast.fix_missing_locations(qualifier.visit(copy.deepcopy(tree)))
    return ast.unparse(fixed), qualifier.unresolved


def words(name: str) -> list[str]:
    """Lower-case words of an identifier: `parseHTTPDate_v2` -> parse, http, date, v2."""
    return [w.lower() for part in name.split("_") for w in _camel().findall(part)]


def _params(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[Param]:
    args = node.args
    positional = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    params = [
        Param(
            arg.arg, "positional-only" if i < len(args.posonlyargs) else "positional", arg.annotation, default
        )
        for i, (arg, default) in enumerate(zip(positional, defaults, strict=True))
    ]
    if args.vararg is not None:
        params.append(Param(args.vararg.arg, "varargs", args.vararg.annotation, None))
    for arg, default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        params.append(Param(arg.arg, "keyword-only", arg.annotation, default))
    if args.kwarg is not None:
        params.append(Param(args.kwarg.arg, "varkw", args.kwarg.annotation, None))
    return params


def _decorator_names(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> set[str]:
    names = set()
    for deco in node.decorator_list:
        target = deco.func if isinstance(deco, ast.Call) else deco
        name = dotted(target)
        if name is not None:
            names.add(name.rsplit(".", 1)[-1])
    return names


def _function(
    node: ast.FunctionDef | ast.AsyncFunctionDef, owner: str | None, conditional: bool
) -> FunctionInfo | None:
    decorators = _decorator_names(node)
    if "overload" in decorators:
        return None
    kind: CallableKind = "function"
    if owner is not None:
        if "staticmethod" in decorators:
            kind = "static"
        elif "classmethod" in decorators:
            kind = "class"
        elif "property" in decorators or "cached_property" in decorators:
            kind = "property"
        elif decorators & {"setter", "deleter", "getter"}:
            return None
        else:
            kind = "method"
    qualname = node.name if owner is None else f"{owner}.{node.name}"
    return FunctionInfo(node.name, qualname, node, _params(node), kind, owner, conditional)


def _class(node: ast.ClassDef, conditional: bool) -> ClassInfo:
    bases = [name for base in node.bases if (name := dotted(base)) is not None]
    decorators = _decorator_names(node)
    methods: dict[str, FunctionInfo] = {}
    abstract = "ABC" in {b.rsplit(".", 1)[-1] for b in bases}
    members: list[str] = []
    annotated: list[Field] = []
    for stmt in node.body:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            info = _function(stmt, node.name, conditional)
            if info is not None and stmt.name not in methods:
                methods[stmt.name] = info
            abstract = abstract or "abstractmethod" in _decorator_names(stmt)
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            if not _is_classvar(stmt.annotation):
                annotated.append(Field(stmt.target.id, stmt.annotation, stmt.value))
        elif isinstance(stmt, ast.Assign):
            members.extend(t.id for t in stmt.targets if isinstance(t, ast.Name) and not t.id.startswith("_"))
    simple_bases = {b.rsplit(".", 1)[-1] for b in bases}
    fields = annotated if "dataclass" in decorators or "NamedTuple" in simple_bases else None
    return ClassInfo(node.name, node, bases, methods, fields, members, conditional, abstract)


def _is_classvar(annotation: ast.expr) -> bool:
    target = annotation.value if isinstance(annotation, ast.Subscript) else annotation
    name = dotted(target)
    return name is not None and name.rsplit(".", 1)[-1] == "ClassVar"


def _bound_names(stmt: ast.stmt) -> list[str]:
    if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [stmt.name]
    if isinstance(stmt, ast.Import):
        return [alias.asname or alias.name.split(".", 1)[0] for alias in stmt.names]
    if isinstance(stmt, ast.ImportFrom):
        return [alias.asname or alias.name for alias in stmt.names if alias.name != "*"]
    names: list[str] = []
    if isinstance(stmt, ast.Assign | ast.AnnAssign | ast.AugAssign):
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        for target in targets:
            names.extend(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def _nested_blocks(stmt: ast.stmt) -> list[list[ast.stmt]]:
    """The statement lists inside a module-level if/try/with, whose definitions may or may not run."""
    if isinstance(stmt, ast.If):
        return [stmt.body, stmt.orelse]
    if isinstance(stmt, ast.Try):
        return [stmt.body, *(handler.body for handler in stmt.handlers), stmt.orelse, stmt.finalbody]
    if isinstance(stmt, ast.With):
        return [stmt.body]
    return []


def _exported(tree: ast.Module) -> list[str] | None:
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in stmt.targets
        ):
            try:
                value = ast.literal_eval(stmt.value)
            except ValueError:
                return None
            if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
                return list(value)
    return None


# Names the generated module uses itself: a module under test called one of these is imported under
# another name.
RESERVED: Final = frozenset(
    "pytest unittest hypothesis st given settings assume reject HealthCheck asyncio itertools math io "
    "contextlib decimal fractions datetime pathlib re sys result instance encoded decoded converted restored "
    "once twice expected actual buffer item got want self".split()
)


@lru_cache(maxsize=16)
def parse(text: str, module: str, filename: str) -> ModuleFacts:
    """Parse `text` (the module `module`); a SourceError names the line and column of a syntax error.

    Cached: each target of one request is generated by a separate job, often on the same agent. The facts
    are shared, so callers must not change them.
    """
    try:
        tree = ast.parse(text, filename=filename)
    except SyntaxError as exc:
        line = (exc.text or "").strip()
        # The line is shown cut short: a generated or minified file can hold megabytes on one line.
        shown = f":\n    {line[:SHOWN_LINE_CHARS]}{'...' if len(line) > SHOWN_LINE_CHARS else ''}" if line else ""
        where = f" at line {exc.lineno}, column {exc.offset}" if exc.lineno is not None else ""
        raise SourceError(
            f"{filename} does not parse: {exc.msg}{where}{shown}; fix the syntax error and generate again"
        ) from None
    except ValueError as exc:  # source with NUL bytes
        raise SourceError(f"{filename} does not parse: {exc}; remove the NUL bytes") from None
    except (RecursionError, MemoryError):
        # The parser gives up on hundreds of nested brackets or operators; real code never nests so.
        raise SourceError(
            f"{filename} does not parse: it nests too deeply (hundreds of levels of brackets or "
            "operators); simplify the deepest expression"
        ) from None
    facts = ModuleFacts(
        name=module,
        alias="",
        tree=tree,
        functions={},
        classes={},
        top_names=set(),
        conditional_names=set(),
        imports={},
        exported=_exported(tree),
        docstring=ast.get_docstring(tree, clean=True),
    )
    _scan(facts, tree.body, conditional=False)
    facts.constants = _constants(tree)
    facts.alias = _alias(module, facts)
    return facts


def _constants(tree: ast.Module) -> dict[str, object]:
    found: dict[str, object] = {}
    bound: dict[str, int] = {}
    for stmt in ast.walk(tree):
        if isinstance(stmt, ast.Global):
            for name in stmt.names:
                bound[name] = bound.get(name, 0) + 2  # rebound from inside a function
    for stmt in tree.body:
        for name in _bound_names(stmt):
            bound[name] = bound.get(name, 0) + 1
        target, value = None, None
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            target, value = stmt.targets[0].id, stmt.value
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            target, value = stmt.target.id, stmt.value
        if target is None or value is None:
            continue
        try:
            found[target] = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return {name: value for name, value in found.items() if bound.get(name) == 1}


def _alias(module: str, facts: ModuleFacts) -> str:
    """The name tests refer to the module by: its last component, unless that would clash with a name the
    tests use (an import, a local, or a parameter that becomes a hypothesis argument)."""
    last = module.rsplit(".", 1)[-1]
    params = {p.name for f in facts.functions.values() for p in f.params}
    params |= {p.name for c in facts.classes.values() for m in c.methods.values() for p in m.params}
    return f"{last}_module" if last in RESERVED or last in params else last


def _scan(facts: ModuleFacts, body: list[ast.stmt], conditional: bool) -> None:
    for stmt in body:
        names = facts.conditional_names if conditional else facts.top_names
        names.update(_bound_names(stmt))
        if isinstance(stmt, ast.Import):
            for alias in stmt.names:
                facts.imports[alias.asname or alias.name.split(".", 1)[0]] = (alias.name, "")
        elif isinstance(stmt, ast.ImportFrom) and stmt.module and not stmt.level:
            for alias in stmt.names:
                facts.imports[alias.asname or alias.name] = (stmt.module, alias.name)
        elif isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            info = _function(stmt, None, conditional)
            if info is not None and stmt.name not in facts.functions:
                facts.functions[stmt.name] = info
        elif isinstance(stmt, ast.ClassDef) and stmt.name not in facts.classes:
            facts.classes[stmt.name] = _class(stmt, conditional)
        for block in _nested_blocks(stmt):
            _scan(facts, block, conditional=True)
    facts.conditional_names -= facts.top_names


def _public(name: str) -> bool:
    return not name.startswith("_")


def testable_class(facts: ModuleFacts, info: ClassInfo) -> bool:
    simple_bases = {base.rsplit(".", 1)[-1] for base in info.bases}
    return not (
        info.is_enum or facts.is_exception_class(info.name) or simple_bases & SKIPPED_BASES or info.abstract
    )


def targets(facts: ModuleFacts, requested: list[str] | None) -> list[Target]:
    """The targets to generate for, in source order: the requested ones, or every public one.

    A SourceError names an unknown requested target (with the closest names), or says there is nothing
    public to test.
    """
    available = _all_targets(facts)
    if requested is None:
        public = set(facts.exported) if facts.exported is not None else None
        chosen = [
            t
            for t in available
            if (t.kind == "module" and facts.docstring and ">>>" in facts.docstring)
            or (t.kind != "module" and _is_public(t, public))
        ]
        if not [t for t in chosen if t.kind != "module"]:
            raise SourceError(
                f"{facts.name} has nothing public to test: no public function, class or method (names "
                "starting with _ are private; list them in targets to test them anyway)"
            )
        return chosen
    by_name = {t.name: t for t in available}
    chosen_names: list[str] = []
    for name in requested:
        if name not in by_name:
            names = [t.name for t in available if t.kind != "module"]
            from rapidfuzz import process  # only a misspelt target needs it

            close = [match for match, score, _ in process.extract(name, names, limit=3) if score >= 60]
            hint = f"; did you mean {', '.join(close)}?" if close else f"; it defines {', '.join(names[:20])}"
            if not names:
                hint = "; it defines no function or class"
            raise SourceError(f"{facts.name} has no function, class or method named {name!r}{hint}")
        chosen_names.append(name)
        if by_name[name].kind == "class":  # a class brings its public methods along
            chosen_names.extend(
                t.name for t in available if t.owner == name and _public(t.name.split(".")[-1])
            )
    wanted = set(chosen_names)
    return [t for t in available if t.name in wanted]


def target_named(facts: ModuleFacts, name: str) -> Target:
    """The target called `name` (as `targets` lists it)."""
    for target in _all_targets(facts):
        if target.name == name:
            return target
    raise SourceError(f"{facts.name} has no target named {name!r}")


def raw_docstring(
    node: ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef,
) -> tuple[str, int] | None:
    """The docstring as written (what doctest reads) and the line it starts on."""
    if node.body and isinstance(node.body[0], ast.Expr):
        value = node.body[0].value
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            return value.value, node.body[0].lineno
    return None


def _is_public(target: Target, exported: set[str] | None) -> bool:
    top = target.name.split(".", 1)[0]
    if exported is not None and top not in exported:
        return False
    return all(_public(part) for part in target.name.split("."))


def _all_targets(facts: ModuleFacts) -> list[Target]:
    module_words = tuple(w for part in facts.name.split(".") for w in words(part))
    found: list[tuple[int, Target]] = [(0, Target(facts.name, "module", None, module_words))]
    for info in facts.functions.values():
        found.append((info.line, Target(info.name, "function", None, module_words + tuple(words(info.name)))))
    for cls in facts.classes.values():
        if not testable_class(facts, cls):
            continue
        class_words = module_words + tuple(words(cls.name))
        found.append((cls.line, Target(cls.name, "class", None, class_words)))
        for method in cls.methods.values():
            if method.name.startswith("__") and method.name.endswith("__"):
                continue
            found.append(
                (
                    method.line,
                    Target(method.qualname, "method", cls.name, class_words + tuple(words(method.name))),
                )
            )
    found.sort(key=lambda item: item[0])
    return [target for _, target in found]
