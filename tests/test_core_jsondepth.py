"""exceeds_depth (Cython): the nesting-depth scan agrees with a plain reference and with what decoders see."""

from __future__ import annotations

import json
import time

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qe_appliance._core.jsondepth import exceeds_depth


def reference_depth(data: bytes) -> int:
    """Deepest `[`/`{` nesting outside strings; a closer with nothing open is ignored."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        c = chr(byte)
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}" and depth > 0:
            depth -= 1
    return deepest


def nested(depth: int, inner: bytes = b"1") -> bytes:
    return (
        b'{"a":' * (depth // 2)
        + b"[" * (depth - depth // 2)
        + inner
        + b"]" * (depth - depth // 2)
        + b"}" * (depth // 2)
    )


@pytest.mark.parametrize(
    "text,depth",
    [
        (b"", 0),
        (b"1", 0),
        (b'"[[[["', 0),
        (b"[]", 1),
        (b"{}", 1),
        (b'{"a":[{"b":[]}]}', 4),
        (b'["\\"[[[", []]', 2),  # an escaped quote does not end the string
        (b'["\\\\", [[]]]', 3),  # an escaped backslash does not escape the closing quote
        (b"]]]]][[", 2),  # stray closers do not hide the brackets that follow
        (b'"unterminated [[[[[[', 0),
    ],
)
def test_depth_of_known_texts(text: bytes, depth: int) -> None:
    assert reference_depth(text) == depth
    assert exceeds_depth(text, depth) is False
    if depth > 0:
        assert exceeds_depth(text, depth - 1) is True


def test_limit_is_inclusive() -> None:
    assert not exceeds_depth(nested(64), 64)
    assert exceeds_depth(nested(65), 64)
    assert exceeds_depth(b"[]", 0)
    assert not exceeds_depth(b"1", 0)
    with pytest.raises(ValueError, match="0 or more"):
        exceeds_depth(b"[]", -1)


def test_accepts_bytes_bytearray_and_memoryview() -> None:
    text = nested(10)
    for data in (text, bytearray(text), memoryview(text)):
        assert exceeds_depth(data, 9) and not exceeds_depth(data, 10)


def test_brackets_inside_long_strings_are_not_counted() -> None:
    text = json.dumps({"source": "[" * 100_000 + "{" * 100_000 + '\\"'}).encode()
    assert not exceeds_depth(text, 1)


@pytest.mark.parametrize("depth", [64, 65])
def test_openers_counted_across_blocks_still_reach_the_scan(depth: int) -> None:
    # Openers are counted 4 kB at a time before any scan: nesting split by a long string between blocks
    # must be seen whole.
    first = 30
    text = b"[" * first + b'"' + b"x" * 10_000 + b'",' + b"[" * (depth - first) + b"]" * depth
    assert reference_depth(text) == depth
    assert exceeds_depth(text, 64) is (depth > 64)


def test_everything_msgspec_cannot_decode_for_depth_is_flagged() -> None:
    # The scan exists to stop the decoder's RecursionError before it happens.
    text = nested(5000)
    with pytest.raises(RecursionError):
        msgspec.json.decode(text)
    assert exceeds_depth(text, 64)


def test_scan_is_linear_and_fast() -> None:
    flat = json.dumps({"items": [{"k": i, "s": "x" * 50} for i in range(40_000)]}).encode()  # ~3 MB
    deep_tail = b"[" * 3_000_000
    started = time.perf_counter()
    assert not exceeds_depth(flat, 64)
    assert exceeds_depth(deep_tail, 64)
    # Well under the cost of decoding the same body; generous for a loaded 2-core CI machine.
    assert time.perf_counter() - started < 0.25


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=60,
)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(json_values, st.integers(min_value=0, max_value=12))
def test_agrees_with_reference_on_json(value: object, limit: int) -> None:
    text = json.dumps(value).encode()
    assert exceeds_depth(text, limit) == (reference_depth(text) > limit)


JSONISH = st.sampled_from([b"[", b"]", b"{", b"}", b'"', b"\\", b",", b":", b"1", b"a", b" ", b"\xff"])


@settings(max_examples=600, deadline=None, derandomize=True)
@given(st.lists(JSONISH | st.binary(max_size=3), max_size=80).map(b"".join), st.integers(0, 10))
def test_agrees_with_reference_on_arbitrary_bytes(data: bytes, limit: int) -> None:
    assert exceeds_depth(data, limit) == (reference_depth(data) > limit)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(json_values, st.integers(min_value=1, max_value=8))
def test_decodable_texts_within_the_limit_never_nest_deeper(value: object, limit: int) -> None:
    # What the scan lets through, a decoder reaches no deeper than the limit.
    text = json.dumps(value).encode()
    if not exceeds_depth(text, limit):
        assert _decoded_depth(msgspec.json.decode(text)) <= limit


def _decoded_depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((_decoded_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_decoded_depth(v) for v in value.values()), default=0)
    return 0
