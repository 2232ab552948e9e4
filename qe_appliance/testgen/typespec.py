"""Types of parameters as far as tests need them: read from an annotation or, when there is none, a
docstring, the default, the parameter's use in the body, or its name."""

from __future__ import annotations

import ast
import functools
import re
from typing import Final

import msgspec

from qe_appliance.testgen.source import FunctionInfo, ModuleFacts, Param, dotted, own_nodes

_BUILTIN_KINDS: Final = {
    "int": "int",
    "float": "float",
    "str": "str",
    "bytes": "bytes",
    "bytearray": "bytes",
    "bool": "bool",
    "list": "list",
    "tuple": "tuple",
    "dict": "dict",
    "set": "set",
    "frozenset": "frozenset",
    "None": "none",
    "NoneType": "none",
}
_SEQUENCES: Final = {
    "List",
    "Sequence",
    "MutableSequence",
    "Iterable",
    "Collection",
    "Reversible",
    "Iterator",
    "Generator",
}
_MAPPINGS: Final = {"Dict", "Mapping", "MutableMapping", "OrderedDict", "defaultdict", "DefaultDict"}
_SETS: Final = {"Set", "AbstractSet", "MutableSet"}
_IMPORTED_KINDS: Final = {
    ("decimal", "Decimal"): "decimal",
    ("fractions", "Fraction"): "fraction",
    ("datetime", "date"): "date",
    ("datetime", "datetime"): "datetime",
    ("pathlib", "Path"): "path",
    ("pathlib", "PurePath"): "path",
}

_STR_METHODS: Final = frozenset(
    "lower upper casefold capitalize title swapcase strip lstrip rstrip split rsplit splitlines startswith "
    "endswith replace find rfind format encode isdigit isalpha isalnum isspace isupper islower isnumeric "
    "isidentifier zfill center ljust rjust partition rpartition removeprefix removesuffix expandtabs".split()
)
_BYTES_METHODS: Final = frozenset({"decode", "hex"})
_LIST_METHODS: Final = frozenset({"append", "extend", "insert", "sort", "reverse", "remove"})
_DICT_METHODS: Final = frozenset({"items", "keys", "values", "get", "setdefault", "update", "popitem"})
_SET_METHODS: Final = frozenset({"add", "discard", "issubset", "issuperset", "symmetric_difference"})
_SEQUENCE_CALLS: Final = frozenset({"len", "sorted", "sum", "reversed", "enumerate", "list", "tuple", "set"})
_NUMBER_CALLS: Final = frozenset({"abs", "round", "divmod", "pow"})

_NAME_KINDS: Final = {
    "int": frozenset(
        "n i j k m count size width height index idx num number length limit times depth level port year "
        "month day hour minute second offset start stop step end quantity qty retries attempts capacity "
        "position pos".split()
    ),
    "float": frozenset(
        "x y z r g b h l v ratio rate amount price factor weight alpha beta threshold tolerance tol "
        "percent percentage temperature distance speed total cost balance score probability value".split()
    ),
    "str": frozenset(
        "s text string name title word prefix suffix sep separator label path key tok msg message pattern "
        "line char email url filename fmt template sentence query code sku slug token username host "
        "command content body".split()
    ),
    "bytes": frozenset("buf buffer payload blob raw octets".split()),
    "bool": frozenset("flag enabled strict verbose reverse force recursive inclusive quiet".split()),
    "dict": frozenset("mapping config options params headers env counts table lookup".split()),
}
_STR_PLURALS: Final = {
    "words",
    "lines",
    "names",
    "keys",
    "labels",
    "tags",
    "strings",
    "texts",
    "paths",
    "tokens",
}
_BOOL_PREFIXES: Final = ("is_", "has_", "allow_", "use_", "enable_", "include_", "should_", "can_")
_INT_SUFFIXES: Final = (
    "_count",
    "_size",
    "_len",
    "_length",
    "_index",
    "_id",
    "_num",
    "_limit",
    "_days",
    "_seconds",
)
_SUFFIX_KINDS: Final = (
    (("_string", "_str", "_name", "_text", "_path", "_spec", "_key", "_prefix", "_suffix", "_label"), "str"),
    (("_bytes",), "bytes"),
    (("_list", "_items", "_values"), "list"),
    (("_map", "_dict", "_mapping"), "dict"),
)
_LIST_NAMES: Final = {
    "data",
    "samples",
    "xs",
    "ys",
    "seq",
    "sequence",
    "iterable",
    "items",
    "values",
    "numbers",
}
# Prose such as "Encode the bytes-like object s", "the integer n" or "s is a bytes-like object" names a
# parameter's type.
_PROSE_TYPES: Final = (
    r"(bytes-like object|bytes object|byte string|bytes|string|integer|int|float|number|list|sequence"
    r"|dictionary|dict|mapping|boolean|bool)"
)


@functools.cache
def _prose() -> re.Pattern[str]:
    return re.compile(rf"\b{_PROSE_TYPES}\s+[`'\"]?(\w+)")


@functools.cache
def _prose_reversed() -> re.Pattern[str]:
    return re.compile(rf"\b(\w+)[`'\"]? (?:is|must be|should be) an? {_PROSE_TYPES}")


_PROSE_KINDS: Final = {
    "bytes-like object": "bytes",
    "bytes object": "bytes",
    "byte string": "bytes",
    "string": "str",
    "integer": "int",
    "number": "float",
    "sequence": "list",
    "dictionary": "dict",
    "mapping": "dict",
    "boolean": "bool",
}


@functools.cache
def _doc_google() -> re.Pattern[str]:
    return re.compile(r"^\s*\*{0,2}(\w+)\s*\(([^)]+)\)\s*:", re.M)


@functools.cache
def _doc_sphinx() -> re.Pattern[str]:
    return re.compile(r":type\s+(\w+)\s*:\s*(.+)$|:param\s+([\w\[\], .|]+?)\s+(\w+)\s*:", re.M)


@functools.cache
def _doc_numpy() -> re.Pattern[str]:
    return re.compile(r"^\s*(\w+)\s*:\s*([\w\[\], .|]+?)\s*(?:,\s*optional)?\s*$", re.M)


class TypeSpec(msgspec.Struct, frozen=True):
    """A parameter or return type as far as tests need it. `kind` is a builtin name (int, str, list, ...),
    `none`, `literal`, `union`, `enum`/`class` (a class of the module, `name`), `decimal`, `fraction`, `date`,
    `datetime` or `path`; `origin` says where it was read from."""

    kind: str
    args: tuple[TypeSpec, ...] = ()
    name: str = ""
    literals: tuple[object, ...] = ()
    variadic: bool = False
    origin: str = "annotation"

    def describe(self) -> str:
        if self.kind in ("enum", "class"):
            return self.name
        if self.kind == "literal":
            return f"Literal[{', '.join(map(repr, self.literals))}]"
        if self.kind == "union":
            return " | ".join(arg.describe() for arg in self.args)
        if self.kind == "none":
            return "None"
        if self.args:
            inner = ", ".join(arg.describe() for arg in self.args) + (", ..." if self.variadic else "")
            return f"{self.kind}[{inner}]"
        return self.kind

    def with_origin(self, origin: str) -> TypeSpec:
        return TypeSpec(self.kind, self.args, self.name, self.literals, self.variadic, origin)


INT: Final = TypeSpec("int")
STR: Final = TypeSpec("str")
NONE: Final = TypeSpec("none")


def union(*parts: TypeSpec, origin: str = "annotation") -> TypeSpec:
    flat: list[TypeSpec] = []
    for part in parts:
        for item in part.args if part.kind == "union" else (part,):
            if item not in flat:
                flat.append(item)
    return flat[0] if len(flat) == 1 else TypeSpec("union", tuple(flat), origin=origin)


# ---- reading types ---------------------------------------------------------------------------------------


def from_annotation(node: ast.expr | None, facts: ModuleFacts, depth: int = 0) -> TypeSpec | None:
    """The TypeSpec of an annotation, or None when it is not one tests can produce values for."""
    if node is None or depth > 6:
        return None
    if isinstance(node, ast.Constant):
        if node.value is None:
            return NONE
        if isinstance(node.value, str):  # a forward reference
            try:
                return from_annotation(ast.parse(node.value, mode="eval").body, facts, depth + 1)
            except SyntaxError:
                return None
        return None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        left, right = (
            from_annotation(node.left, facts, depth + 1),
            from_annotation(node.right, facts, depth + 1),
        )
        return union(left, right) if left and right else None
    if isinstance(node, ast.Subscript):
        return _generic(node, facts, depth)
    name = dotted(node)
    return None if name is None else _named(name, facts)


def _named(name: str, facts: ModuleFacts) -> TypeSpec | None:
    last = name.rsplit(".", 1)[-1]
    if "." not in name and name in _BUILTIN_KINDS and not facts.defines(name):
        kind = _BUILTIN_KINDS[name]
        if kind in ("list", "set", "frozenset"):
            return TypeSpec(kind, (INT,))
        if kind == "tuple":
            return TypeSpec(kind, (INT,), variadic=True)
        if kind == "dict":
            return TypeSpec(kind, (STR, INT))
        return TypeSpec(kind)
    if "." not in name and name in facts.classes:
        return TypeSpec("enum" if facts.classes[name].is_enum else "class", name=name)
    head = name.split(".", 1)[0]
    if head in facts.imports:
        module, attr = facts.imports[head]
        full = f"{module}.{attr}" if attr else module
        if "." in name:
            full = f"{full}.{name.split('.', 1)[1]}"
        module_name, _, attr_name = full.rpartition(".")
        imported = _IMPORTED_KINDS.get((module_name, attr_name))
        if imported is not None:
            return TypeSpec(imported)
    if last in _SEQUENCES:
        return TypeSpec("list", (INT,))
    if last in _MAPPINGS:
        return TypeSpec("dict", (STR, INT))
    return None


def _generic(node: ast.Subscript, facts: ModuleFacts, depth: int) -> TypeSpec | None:
    base = dotted(node.value)
    if base is None:
        return None
    last = base.rsplit(".", 1)[-1]
    items = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
    if last == "Literal":
        try:
            values = tuple(ast.literal_eval(item) for item in items)
        except ValueError:
            return None
        return TypeSpec("literal", literals=values)
    if last == "Annotated":
        return from_annotation(items[0], facts, depth + 1)
    if last == "Optional":
        inner = from_annotation(items[0], facts, depth + 1)
        return union(inner, NONE) if inner else None
    args = [from_annotation(item, facts, depth + 1) for item in items if not _is_ellipsis(item)]
    if last == "Union":
        return union(*args) if args and all(args) else None  # type: ignore[arg-type]
    if any(arg is None for arg in args):
        return None
    specs = tuple(arg for arg in args if arg is not None)
    if last in ("list", "List", *_SEQUENCES) and len(specs) == 1:
        return TypeSpec("list", specs)
    if last in ("set", "frozenset", "FrozenSet", *_SETS) and len(specs) == 1:
        return TypeSpec("frozenset" if last in ("frozenset", "FrozenSet") else "set", specs)
    if last in ("dict", *_MAPPINGS) and len(specs) == 2:
        return TypeSpec("dict", specs)
    if last in ("tuple", "Tuple"):
        variadic = len(items) == 2 and _is_ellipsis(items[1])
        return TypeSpec("tuple", specs, variadic=variadic) if specs else None
    return None


def _is_ellipsis(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is Ellipsis


def docstring_types(doc: str | None) -> dict[str, str]:
    """Parameter types written in a docstring (Google `x (int): ...`, Sphinx `:type x: int` or
    `:param int x:`, NumPy `x : int`)."""
    if not doc:
        return {}
    found: dict[str, str] = {}
    for match in _doc_sphinx().finditer(doc):
        if match.group(1):
            found[match.group(1)] = match.group(2).strip()
        else:
            found[match.group(4)] = match.group(3).strip()
    for name, text in _doc_google().findall(doc):
        found.setdefault(name, text.replace(", optional", "").strip())
    for name, text in _doc_numpy().findall(doc):
        found.setdefault(name, text.strip())
    return found


def param_type(param: Param, func: FunctionInfo, facts: ModuleFacts) -> TypeSpec | None:
    """The best-known type of a parameter; None when nothing tells what it takes."""
    if param.annotation is not None:
        return from_annotation(param.annotation, facts)
    spec = _from_docstring(param.name, func, facts) or _from_prose(param.name, func.docstring)
    default_none = isinstance(param.default, ast.Constant) and param.default.value is None
    if spec is None and param.default is not None and not default_none:
        spec = _from_default(param.default)
    if spec is None:
        spec = usage_type(param.name, func.node)
    if spec is None:
        spec = name_type(param.name)
    if default_none:
        return union(spec, NONE, origin=spec.origin) if spec else NONE.with_origin("default")
    return spec


def _from_docstring(name: str, func: FunctionInfo, facts: ModuleFacts) -> TypeSpec | None:
    text = docstring_types(func.docstring).get(name)
    if text is None:
        return None
    text = re.sub(r"\b(list|set|tuple) of (\w+)s?\b", r"\1[\2]", text)
    try:
        node = ast.parse(text.replace(" or ", " | "), mode="eval").body
    except SyntaxError:
        return None
    spec = from_annotation(node, facts)
    return spec.with_origin("docstring") if spec else None


def _from_prose(name: str, doc: str | None) -> TypeSpec | None:
    found = [(m.group(2), m.group(1)) for m in _prose().finditer(doc or "")]
    found += [(m.group(1), m.group(2)) for m in _prose_reversed().finditer(doc or "")]
    for param, kind in found:
        if param == name:
            spec = _named(_PROSE_KINDS.get(kind, kind), _EMPTY_FACTS)
            return spec.with_origin("docstring") if spec else None
    return None


def _from_default(node: ast.expr) -> TypeSpec | None:
    try:
        value = ast.literal_eval(node)
    except ValueError:
        return None
    spec = type_of(value)
    return spec.with_origin("default") if spec else None


def type_of(value: object) -> TypeSpec | None:
    """The TypeSpec of a literal value."""
    if isinstance(value, bool):
        return TypeSpec("bool")
    for kind, tp in (("int", int), ("float", float), ("str", str), ("bytes", bytes)):
        if isinstance(value, tp):
            return TypeSpec(kind)
    if value is None:
        return NONE
    if isinstance(value, list | tuple | set | frozenset):
        inner = type_of(next(iter(value))) if value else INT
        kind = type(value).__name__
        return TypeSpec(kind, (inner or INT,), variadic=kind == "tuple")
    if isinstance(value, dict):
        return TypeSpec("dict", (STR, INT))
    return None


def usage_type(name: str, func: ast.AST) -> TypeSpec | None:
    """A type guessed from how the body uses the parameter: its methods, the calls it is passed to, what it is
    compared with, isinstance checks and arithmetic."""
    votes: dict[str, int] = {}
    nodes = own_nodes(func)
    divides = any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div) for n in nodes)

    def vote(kind: str, weight: int = 1) -> None:
        votes[kind] = votes.get(kind, 0) + weight

    def is_param(node: ast.AST) -> bool:
        return isinstance(node, ast.Name) and node.id == name

    for node in nodes:
        if isinstance(node, ast.Call):
            func_name = dotted(node.func)
            if isinstance(node.func, ast.Attribute) and is_param(node.func.value):
                method = node.func.attr
                for kind, methods in (
                    ("str", _STR_METHODS),
                    ("bytes", _BYTES_METHODS),
                    ("list", _LIST_METHODS),
                    ("dict", _DICT_METHODS),
                    ("set", _SET_METHODS),
                ):
                    if method in methods:
                        vote(kind, 2)
                if method == "join":
                    vote("str", 2)
            elif (
                isinstance(node.func, ast.Attribute)
                and node.func.attr == "join"
                and any(map(is_param, node.args))
            ):
                vote("list[str]", 3)
            if func_name == "isinstance" and len(node.args) == 2 and is_param(node.args[0]):
                kinds = [
                    dotted(e)
                    for e in (node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]])
                ]
                if kinds and kinds[0] in (
                    "int",
                    "float",
                    "str",
                    "bytes",
                    "bool",
                    "list",
                    "dict",
                    "tuple",
                    "set",
                ):
                    vote(kinds[0] or "", 5)
            elif any(map(is_param, node.args)) and func_name is not None:
                if func_name == "range":
                    vote("int", 3)
                elif func_name in _SEQUENCE_CALLS or func_name in ("min", "max") and len(node.args) == 1:
                    vote("list", 2)
                elif (
                    func_name in _NUMBER_CALLS or func_name in ("min", "max") or func_name.startswith("math.")
                ):
                    vote("float" if divides or func_name.startswith("math.") else "int", 2)
        elif isinstance(node, ast.Compare) and (is_param(node.left) or any(map(is_param, node.comparators))):
            operands = [node.left, *node.comparators]
            for operand in operands:
                if isinstance(operand, ast.Constant) and operand.value is not None:
                    spec = type_of(operand.value)
                    if spec is not None and not isinstance(operand.value, bool):
                        vote(spec.kind, 2)
                if isinstance(operand, ast.Tuple | ast.List | ast.Set) and operand.elts:
                    first = operand.elts[0]
                    if isinstance(first, ast.Constant) and (spec := type_of(first.value)):
                        vote(spec.kind, 2)
        elif isinstance(node, ast.BinOp) and (is_param(node.left) or is_param(node.right)):
            other = node.right if is_param(node.left) else node.left
            if isinstance(other, ast.Constant) and isinstance(other.value, str):
                vote("str", 2)
            elif (
                isinstance(other, ast.Constant)
                and isinstance(other.value, float)
                or isinstance(node.op, ast.Div)
            ):
                vote("float", 2)
            elif not isinstance(node.op, ast.Mod) or not isinstance(node.left, ast.Constant):
                vote("float" if divides else "int", 1)
        elif isinstance(node, ast.For) and is_param(node.iter):
            vote("list", 2)
        elif isinstance(node, ast.Subscript) and is_param(node.value):
            vote("list", 1)
    if not votes:
        return None
    best = max(votes, key=lambda kind: votes[kind])
    if best == "list[str]":
        return TypeSpec("list", (STR,), origin="usage")
    if best == "list" and (name in _STR_PLURALS or votes.get("str")):
        return (STR if votes.get("str", 0) >= votes["list"] else TypeSpec("list", (STR,))).with_origin(
            "usage"
        )
    spec = _named(best, _EMPTY_FACTS)
    return spec.with_origin("usage") if spec else None


def name_type(name: str) -> TypeSpec | None:
    """A type guessed from the parameter's name alone (`count` -> int, `text` -> str, `items` -> list)."""
    lowered = name.lower()
    for kind, names in _NAME_KINDS.items():
        if lowered in names:
            spec = _named(kind, _EMPTY_FACTS)
            return spec.with_origin("name") if spec else None
    if lowered in _LIST_NAMES:
        return TypeSpec("list", (INT,), origin="name")
    if lowered.startswith(_BOOL_PREFIXES):
        return TypeSpec("bool", origin="name")
    for suffixes, kind in _SUFFIX_KINDS:
        if lowered.endswith(suffixes):
            spec = _named(kind, _EMPTY_FACTS)
            return spec.with_origin("name") if spec else None
    if lowered.endswith(_INT_SUFFIXES) or lowered.startswith(("max_", "min_", "num_", "n_")):
        return TypeSpec("int", origin="name")
    if lowered in _STR_PLURALS:
        return TypeSpec("list", (STR,), origin="name")
    if lowered.endswith("s") and not lowered.endswith("ss") and len(lowered) > 3:
        return TypeSpec("list", (INT,), origin="name")
    return None


_EMPTY_FACTS: Final = ModuleFacts(
    "", "", ast.Module(body=[], type_ignores=[]), {}, {}, set(), set(), {}, None, None
)
