"""The values tests use for a parameter: the boundary values of its type (and instances of the module's
classes, built by the caller's constructor), literals, and short labels for test names."""

from __future__ import annotations

import datetime
import decimal
import fractions
import re
from collections.abc import Callable
from typing import Final

import msgspec

from qe_appliance.testgen.source import ModuleFacts
from qe_appliance.testgen.typespec import INT, TypeSpec

MAX_MEMBERS: Final = 5


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
    code = literal_code(value)
    return Value(code, value, label_of(value))


def literal_code(value: object) -> str:
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
