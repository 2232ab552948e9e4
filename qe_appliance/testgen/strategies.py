"""Hypothesis strategies (as code) for parameter types, and the runtime checks of returned values."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import msgspec

from qe_appliance.testgen.source import ModuleFacts
from qe_appliance.testgen.typespec import TypeSpec
from qe_appliance.testgen.values import literal_code


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
        return Code(f"st.sampled_from([{', '.join(literal_code(v) for v in spec.literals)}])")
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
