"""Types of parameters and the values tests use for them: a type read from an annotation (or, when there is
none, a docstring, the default, the parameter's use in the body, or its name), the boundary values of that
type, its hypothesis strategy, and the runtime check of a returned value."""

from __future__ import annotations

import ast
import datetime
import decimal
import fractions
import re
from collections.abc import Callable
from typing import Final

import msgspec

from qe_appliance.testgen.source import FunctionInfo, ModuleFacts, Param, dotted, own_nodes

MAX_MEMBERS: Final = 5

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
_PROSE: Final = re.compile(rf"\b{_PROSE_TYPES}\s+[`'\"]?(\w+)")
_PROSE_REVERSED: Final = re.compile(rf"\b(\w+)[`'\"]? (?:is|must be|should be) an? {_PROSE_TYPES}")
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
_DOC_GOOGLE: Final = re.compile(r"^\s*\*{0,2}(\w+)\s*\(([^)]+)\)\s*:", re.M)
_DOC_SPHINX: Final = re.compile(r":type\s+(\w+)\s*:\s*(.+)$|:param\s+([\w\[\], .|]+?)\s+(\w+)\s*:", re.M)
_DOC_NUMPY: Final = re.compile(r"^\s*(\w+)\s*:\s*([\w\[\], .|]+?)\s*(?:,\s*optional)?\s*$", re.M)


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


class Opaque(msgspec.Struct, frozen=True):
    """Stands for a value the guards cannot look into (an enum member, an instance): only its class is
    known."""

    classes: tuple[str, ...]


class Value(msgspec.Struct, frozen=True):
    """A value for a test: `code` is how the test writes it, `py` what guard conditions are evaluated on."""

    code: str
    py: object
    label: str
    imports: frozenset[str] = frozenset()
    pattern: str | None = None  # the learned edge-case pattern it came from


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
        # all(args) rules out None, which mypy cannot see through a list.
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
    for match in _DOC_SPHINX.finditer(doc):
        if match.group(1):
            found[match.group(1)] = match.group(2).strip()
        else:
            found[match.group(4)] = match.group(3).strip()
    for name, text in _DOC_GOOGLE.findall(doc):
        found.setdefault(name, text.replace(", optional", "").strip())
    for name, text in _DOC_NUMPY.findall(doc):
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
    found = [(m.group(2), m.group(1)) for m in _PROSE.finditer(doc or "")]
    found += [(m.group(1), m.group(2)) for m in _PROSE_REVERSED.finditer(doc or "")]
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


# ---- values ----------------------------------------------------------------------------------------------

Construct = Callable[[str, int], "Value | None"]


class ValueMaker(msgspec.Struct):
    """Boundary values of a TypeSpec; `construct(class_name, depth)` builds an instance of a module class."""

    facts: ModuleFacts
    construct: Construct
    cache: dict[tuple[TypeSpec, int], list[Value]] = msgspec.field(default_factory=dict)

    def values(self, spec: TypeSpec, depth: int = 0) -> list[Value]:
        """Boundary values, the preferred nominal one first."""
        key = (spec, depth)
        if key not in self.cache:
            self.cache[key] = self._values(spec, depth) if depth <= 3 else []
        return self.cache[key]

    def _values(self, spec: TypeSpec, depth: int) -> list[Value]:
        kind = spec.kind
        if kind == "int":
            return [Value("1", 1, "1"), Value("0", 0, "0"), Value("-1", -1, "minus_1")]
        if kind == "float":
            return [Value("1.5", 1.5, "1_5"), Value("0.0", 0.0, "0"), Value("-1.5", -1.5, "minus_1_5")]
        if kind == "str":
            return [
                Value("'abc'", "abc", "abc"),
                Value("''", "", "empty"),
                Value("' '", " ", "space"),
                Value("'ünïcødé ✓'", "ünïcødé ✓", "unicode"),
            ]
        if kind == "bytes":
            return [
                Value("b'abc'", b"abc", "abc"),
                Value("b''", b"", "empty"),
                Value("b'\\x00\\xff'", b"\0\xff", "binary"),
            ]
        if kind == "bool":
            return [Value("True", True, "true"), Value("False", False, "false")]
        if kind == "none":
            return [Value("None", None, "none")]
        if kind == "literal":
            return [literal_value(v) for v in spec.literals[:MAX_MEMBERS]]
        if kind == "union":
            merged: list[Value] = []
            # Nominal from the first part that is not None: a value is more telling than None.
            parts = sorted(spec.args, key=lambda part: part.kind == "none")
            for part in parts:
                for value in self.values(part, depth):
                    if value.code not in {m.code for m in merged}:
                        merged.append(value)
            return merged
        if kind in ("list", "tuple", "set", "frozenset"):
            return self._collections(spec, depth)
        if kind == "dict":
            keys, values = self.values(spec.args[0], depth + 1), self.values(spec.args[1], depth + 1)
            if not keys or not values or not _hashable(keys[0].py):
                return []
            k, v = keys[0], values[0]
            pair = Value(f"{{{k.code}: {v.code}}}", {k.py: v.py}, "one_item", k.imports | v.imports)
            return [pair, Value("{}", {}, "empty")]
        if kind == "enum":
            info = self.facts.classes[spec.name]
            return [
                Value(f"{self.facts.ref(spec.name)}.{member}", Opaque((spec.name,)), member.lower())
                for member in info.enum_members[:MAX_MEMBERS]
            ]
        if kind == "class":
            built = self.construct(spec.name, depth + 1)
            return [built] if built is not None else []
        return _stdlib_values(kind)

    def _collections(self, spec: TypeSpec, depth: int) -> list[Value]:
        kind = spec.kind
        if kind == "tuple" and not spec.variadic:
            parts = [self.values(arg, depth + 1) for arg in spec.args]
            if not all(parts):
                return []
            first = [p[0] for p in parts]
            code = "(" + ", ".join(v.code for v in first) + ("," if len(first) == 1 else "") + ")"
            return [Value(code, tuple(v.py for v in first), "nominal", _imports(first))]
        inner = self.values(spec.args[0], depth + 1) if spec.args else self.values(INT, depth + 1)
        if not inner or kind in ("set", "frozenset") and not _hashable(inner[0].py):
            return []
        three = (inner * 3)[:3] if len(inner) < 3 else inner[:3]
        if kind in ("set", "frozenset"):
            three = [v for i, v in enumerate(three) if v.py not in [w.py for w in three[:i]]]
        made: list[Value] = []
        for items, label in ((inner[:1], "one_item"), ([], "empty"), (three, f"{len(three)}_items")):
            if label != "empty" and made and len(items) == 1:
                continue
            made.append(_collection(kind, items, label))
        return made


def _collection(kind: str, items: list[Value], label: str) -> Value:
    codes = ", ".join(v.code for v in items)
    pys = [v.py for v in items]
    imports = _imports(items)
    if kind == "list":
        return Value(f"[{codes}]", pys, label, imports)
    if kind == "tuple":
        return Value(f"({codes}{',' if len(items) == 1 else ''})", tuple(pys), label, imports)
    if not items:
        return Value(f"{kind}()", set() if kind == "set" else frozenset(), label)
    if kind == "set":
        return Value(f"{{{codes}}}", set(pys), label, imports)
    return Value(f"frozenset({{{codes}}})", frozenset(pys), label, imports)


def _imports(values: list[Value]) -> frozenset[str]:
    return frozenset().union(*(v.imports for v in values)) if values else frozenset()


def _hashable(value: object) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _stdlib_values(kind: str) -> list[Value]:
    if kind == "decimal":
        return [
            Value(f"decimal.Decimal({text!r})", decimal.Decimal(text), label, frozenset({"decimal"}))
            for text, label in (("1.5", "1_5"), ("0", "0"), ("-1.5", "minus_1_5"))
        ]
    if kind == "fraction":
        return [
            Value(f"fractions.Fraction({n}, {d})", fractions.Fraction(n, d), label, frozenset({"fractions"}))
            for n, d, label in ((1, 2, "half"), (0, 1, "0"), (-1, 2, "minus_half"))
        ]
    if kind == "date":
        return [
            Value(
                f"datetime.date({y}, {m}, {d})",
                datetime.date(y, m, d),
                f"{y}_{m:02}_{d:02}",
                frozenset({"datetime"}),
            )
            for y, m, d in ((2024, 2, 29), (1970, 1, 1), (9999, 12, 31))
        ]
    if kind == "datetime":
        return [
            Value(
                f"datetime.datetime({y}, {m}, {d}, {h}, 0)",
                datetime.datetime(y, m, d, h),
                f"{y}_{m:02}_{d:02}",
                frozenset({"datetime"}),
            )
            for y, m, d, h in ((2024, 2, 29, 12), (1970, 1, 1, 0))
        ]
    if kind == "path":
        return [Value("pathlib.Path('example.txt')", Opaque(("Path",)), "file", frozenset({"pathlib"}))]
    return []


def literal_value(value: object) -> Value:
    """A Value for a Python literal (a Literal[...] member, a constant a guard compares with, a learned edge
    case)."""
    code = _literal_code(value)
    return Value(code, value, label_of(value))


def _literal_code(value: object) -> str:
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return f"float({str(value)!r})"
    return repr(value)


def label_of(value: object) -> str:
    """A short identifier-safe description of a value, for test names."""
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, int | float):
        text = str(value).replace("-", "minus_").replace(".", "_").replace("+", "")
        return re.sub(r"\W", "_", text)[:24]
    if isinstance(value, str | bytes):
        if not value:
            return "empty"
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        if not text.strip():
            return "blank"
        slug = re.sub(r"\W+", "_", text.encode("ascii", "ignore").decode()).strip("_").lower()
        return (slug[:20] or "text") if len(text) <= 20 else "long"
    if isinstance(value, list | tuple | set | frozenset | dict):
        return "empty" if not value else f"{len(value)}_items"
    return "value"


# ---- hypothesis strategies and runtime checks --------------------------------------------------------------


class Code(msgspec.Struct, frozen=True):
    """A piece of generated code and the stdlib modules it needs imported."""

    text: str
    imports: frozenset[str] = frozenset()


def strategy(
    spec: TypeSpec, facts: ModuleFacts, ctor: Callable[[str, int], Code | None], depth: int = 0
) -> Code | None:
    """The hypothesis strategy (as code) for a TypeSpec, or None when there is none to write."""
    if depth > 3:
        return None
    simple = {
        "int": "st.integers(min_value=-1000, max_value=1000)",
        "float": "st.floats(min_value=-1e6, max_value=1e6)",
        "str": "st.text(max_size=20)",
        "bytes": "st.binary(max_size=20)",
        "bool": "st.booleans()",
        "none": "st.none()",
        "date": "st.dates()",
        "datetime": "st.datetimes()",
        "fraction": "st.fractions(min_value=-1000, max_value=1000)",
        "decimal": "st.decimals(min_value=-1000, max_value=1000, places=2)",
    }
    kind = spec.kind
    if kind in simple:
        return Code(simple[kind])
    if kind == "literal":
        return Code(f"st.sampled_from([{', '.join(_literal_code(v) for v in spec.literals)}])")
    if kind == "enum":
        return Code(f"st.sampled_from({facts.ref(spec.name)})") if spec.name in facts.top_names else None
    if kind == "class":
        return ctor(spec.name, depth + 1)
    parts = [strategy(arg, facts, ctor, depth + 1) for arg in spec.args]
    if any(part is None for part in parts):
        return None
    codes = [part for part in parts if part is not None]
    imports = frozenset().union(*(c.imports for c in codes)) if codes else frozenset()
    texts = [c.text for c in codes]
    if kind == "union":
        return Code(f"st.one_of({', '.join(texts)})", imports)
    if kind == "list":
        return Code(f"st.lists({texts[0]}, max_size=5)", imports)
    if kind in ("set", "frozenset") and spec.args[0].kind not in ("list", "dict", "set"):
        return Code(f"st.{kind}s({texts[0]}, max_size=5)", imports)
    if kind == "dict" and spec.args[0].kind not in ("list", "dict", "set"):
        return Code(f"st.dictionaries({texts[0]}, {texts[1]}, max_size=5)", imports)
    if kind == "tuple":
        if spec.variadic:
            return Code(f"st.lists({texts[0]}, max_size=5).map(tuple)", imports)
        return Code(f"st.tuples({', '.join(texts)})", imports)
    return None


_RUNTIME: Final = {
    "int": ["int"],
    "float": ["int", "float"],
    "str": ["str"],
    "bytes": ["bytes", "bytearray"],
    "bool": ["bool"],
    "none": ["type(None)"],
    "list": ["list"],
    "tuple": ["tuple"],
    "dict": ["dict"],
    "set": ["set"],
    "frozenset": ["frozenset"],
}
_RUNTIME_STDLIB: Final = {
    "decimal": ("decimal.Decimal", "decimal"),
    "fraction": ("fractions.Fraction", "fractions"),
    "date": ("datetime.date", "datetime"),
    "datetime": ("datetime.datetime", "datetime"),
    "path": ("pathlib.PurePath", "pathlib"),
}


def runtime_check(spec: TypeSpec, facts: ModuleFacts) -> Code | None:
    """The second argument of an isinstance() check for values of this type, or None."""
    parts: list[str] = []
    imports: set[str] = set()
    for part in spec.args if spec.kind == "union" else (spec,):
        if part.kind in _RUNTIME:
            parts.extend(_RUNTIME[part.kind])
        elif part.kind in _RUNTIME_STDLIB:
            text, module = _RUNTIME_STDLIB[part.kind]
            parts.append(text)
            imports.add(module)
        elif part.kind in ("enum", "class") and part.name in facts.top_names:
            parts.append(facts.ref(part.name))
        elif part.kind == "literal":
            kinds = {type(v).__name__ for v in part.literals}
            if not kinds <= {"int", "str", "bytes", "bool", "float", "NoneType"}:
                return None
            parts.extend("type(None)" if k == "NoneType" else k for k in sorted(kinds))
        else:
            return None
    unique = list(dict.fromkeys(parts))
    text = unique[0] if len(unique) == 1 else f"({', '.join(unique)})"
    return Code(text, frozenset(imports))
