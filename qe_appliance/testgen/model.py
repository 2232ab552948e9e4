"""Generated tests as data, independent of the framework they are rendered for: a test is a list of
statements (plain lines, checks, expected exceptions, captured output) plus what it is for and why."""

from __future__ import annotations

from typing import Literal

import msgspec

Kind = Literal[
    "smoke",
    "boundary",
    "raises",
    "doctest",
    "property",
    "roundtrip",
    "idempotent",
    "equivalence",
    "pattern",
    "regression",
]
CheckOp = Literal["eq", "is", "isinstance", "in", "true", "approx"]

# When --maxTests cuts, lower numbers are kept first (taken in turns across targets).
PRIORITY: dict[str, int] = {
    "doctest": 0,
    "raises": 1,
    "regression": 1,
    "smoke": 2,
    "pattern": 3,
    "roundtrip": 4,
    "idempotent": 4,
    "equivalence": 4,
    "property": 5,
    "boundary": 6,
}


class Line(msgspec.Struct, tag="line", frozen=True):
    """Statement(s) written as they are."""

    code: str


class Check(msgspec.Struct, tag="check", frozen=True):
    """An assertion: `left == right`, `left is right`, `isinstance(left, right)`, `left in right`, `left`
    (true), or `left` approximately equal to `right`."""

    op: CheckOp
    left: str
    right: str = ""


class Raises(msgspec.Struct, tag="raises", frozen=True):
    """`body` raises `exc` (whose message contains `match`, a regular expression, when given)."""

    exc: str
    match: str | None
    body: list[Stmt]


class Expect(msgspec.Struct, tag="expect", frozen=True):
    """Run `body`; if it raises one of `excs` (raised on purpose by the code under test), the test ends
    there (a property test rejects the example instead)."""

    excs: list[str]
    body: list[Stmt]
    reason: str


class Capture(msgspec.Struct, tag="capture", frozen=True):
    """`body` prints exactly `want` (compared word by word when `normalize` is set, as doctest's
    NORMALIZE_WHITESPACE does)."""

    body: list[Stmt]
    want: str
    normalize: bool = False


Stmt = Line | Check | Raises | Expect | Capture


class TestCase(msgspec.Struct, frozen=True, kw_only=True):
    """One generated test. It is rendered as `test_<stem>_<case>`, inside class `Test<Group>` when `group`
    is set (the class of a method or constructor)."""

    __test__ = False  # not a pytest test class itself

    target: str
    group: str | None
    stem: str
    case: str
    kind: Kind
    rationale: str
    body: list[Stmt]
    given: list[tuple[str, str]] = []
    assumes: list[str] = []
    patterns: list[str] = []
    imports: list[str] = []
