"""XML reports without a tree: expat checks the whole document first (C speed, with line and column on
error, entity declarations refused), then regular expressions pull attribute columns out of the checked
text. A 10k-file Cobertura report has ~10^6 `<line>` elements; building a tree of them costs seconds.

Every scan here is linear in the document: each pattern either starts at a literal and stops at the next
delimiter, or is anchored so that a failed attempt cannot be retried from inside the same run of text
(a lazy `.*?` that may scan to the end of the document, once per start, is how a 100 KB report took seconds).
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Iterator
from pyexpat import ExpatError, ParserCreate, XMLParserType, errors
from typing import Final, NamedTuple

import msgspec

from qe_appliance.coverage.model import ReportError


@functools.cache
def _comment() -> re.Pattern[bytes]:
    return re.compile(rb"<!--.*?-->|<!\[CDATA\[.*?\]\]>", re.S)


# The lookbehind keeps a name from being tried again from each of its own letters (quadratic on long names).
@functools.cache
def _attr() -> re.Pattern[bytes]:
    return re.compile(rb"""(?<![\w:.-])([A-Za-z_][\w:.-]*)\s*=\s*(?:"([^"]*)"|'([^']*)')""")


# The attribute text of a start tag: everything up to the first `>` outside quotes.
@functools.cache
def _tag_rest() -> re.Pattern[bytes]:
    return re.compile(rb"""((?:[^>"']|"[^"]*"|'[^']*')*)>""")


@functools.cache
def _root() -> re.Pattern[bytes]:
    return re.compile(rb"<([A-Za-z_][\w:.-]*)")


_INTS: Final = msgspec.json.Decoder(list[int])
_NUMBERS: Final = msgspec.json.Decoder(list[float])
# ExpatError.code is a number; pyexpat's XML_ERROR_* names are messages, mapped to numbers by errors.codes.
_TRUNCATED: Final = {
    errors.codes[errors.XML_ERROR_UNCLOSED_TOKEN],
    errors.codes[errors.XML_ERROR_NO_ELEMENTS],
    errors.codes[errors.XML_ERROR_PARTIAL_CHAR],
    errors.codes[errors.XML_ERROR_UNCLOSED_CDATA_SECTION],
}


class _EntityRefused(Exception):
    pass


def _refuse_entity(*_args: object) -> None:
    raise _EntityRefused


def parser() -> XMLParserType:
    """An expat parser that refuses entity declarations: internal entities are how "billion laughs" and
    external-entity reads start, and no report needs them. Set handlers on it to read while checking."""
    created = ParserCreate()
    created.EntityDeclHandler = _refuse_entity
    return created


def run(expat: XMLParserType, data: bytes, fmt: str) -> None:
    """Feed `data` to `expat`; ReportError naming line and column unless it is well-formed XML."""
    try:
        expat.Parse(data, True)
    except _EntityRefused:
        raise ReportError(
            fmt, f"line {expat.CurrentLineNumber}", "the document declares XML entities, which are refused"
        ) from None
    except ExpatError as exc:
        where = f"line {exc.lineno}, column {exc.offset + 1}"
        problem = errors.messages[exc.code]
        last_line = data.rstrip().count(b"\n") + 1
        if exc.code in _TRUNCATED or (exc.lineno >= last_line and not data.rstrip().endswith(b">")):
            problem += "; the file ends early (truncated?)"
        elif exc.lineno >= last_line and exc.code == errors.codes[errors.XML_ERROR_TAG_MISMATCH]:
            problem += "; elements are left open at the end (truncated?)"
        raise ReportError(fmt, where, problem) from None


def check(data: bytes, fmt: str) -> bytes:
    """Raise ReportError naming line and column unless `data` is well-formed XML without entity
    declarations; returns the text with comments and CDATA sections removed, ready for scanning."""
    run(parser(), data, fmt)
    if b"<!--" in data or b"<![CDATA[" in data:
        # Blanked out line for line, so offsets found later still give the file's line numbers.
        data = _comment().sub(lambda match: b"\n" * match.group().count(b"\n"), data)
    return data


def document(data: bytes, fmt: str, root: str) -> bytes:
    """`check`, and ReportError unless the document element is `<root>`."""
    text = check(data, fmt)
    found = root_name(text)
    if found != root:
        raise ReportError(fmt, "line 1", f"the document element is <{found}>, not <{root}>")
    return text


def start_of(name: str) -> re.Pattern[bytes]:
    """Finds `<name` as a whole start tag name (not `<names`)."""
    return re.compile(b"<" + re.escape(name.encode()) + rb"(?=[\s/>])")


def split(text: bytes, start: re.Pattern[bytes]) -> tuple[bytes, Iterator[tuple[str, bytes]]]:
    """The text before the first match of `start`, and each piece from one match to the next with
    `line N`, the line it starts on (for errors)."""
    head, *pieces = start.split(text)

    def numbered() -> Iterator[tuple[str, bytes]]:
        line = head.count(b"\n") + 1
        for piece in pieces:
            yield f"line {line}", piece
            line += piece.count(b"\n")

    return head, numbered()


def root_name(data: bytes) -> str | None:
    """The document element's name, read from the prolog without parsing the document."""
    position = 0
    while True:
        start = data.find(b"<", position)
        if start == -1 or start > 65536:
            return None
        if data.startswith((b"<?", b"<!"), start):
            comment = data.startswith(b"<!--", start)
            end = data.find(b"-->", start) + 3 if comment else data.find(b">", start) + 1
            if end <= 0:
                return None
            position = end
            continue
        match = _root().match(data, start)
        return match.group(1).decode(errors="replace") if match else None


def attributes(tag_text: bytes) -> dict[str, str]:
    """Attributes of one start tag's text, entity references resolved."""
    return {
        name.decode(): html.unescape((double or single).decode("utf-8", errors="replace"))
        for name, double, single in _attr().findall(tag_text)
    }


def start_tag(text: bytes, position: int = 0) -> tuple[dict[str, str], int]:
    """Attributes of the tag whose name ends at `position`, and the offset just past its `>`."""
    match = _tag_rest().match(text, position)
    if match is None:
        return {}, len(text)
    return attributes(match.group(1)), match.end()


class Span(NamedTuple):
    """One element in the checked text: `attrs` is its start tag's attribute text, `inner` its content's
    offsets (empty for `<name .../>`), `end` the offset just past its end tag."""

    start: int
    attrs: bytes
    inner: tuple[int, int]
    end: int


def elements(text: bytes, name: str) -> Iterator[Span]:
    """Every `<name>` element of `text` in document order, in one forward pass.

    An element of the same name nested inside another is part of the outer one's content. Each search
    starts where the previous element ended, so no byte is scanned twice, whatever the document holds.
    """
    opening = start_of(name)
    closing = b"</" + name.encode()
    position = 0
    while (found := opening.search(text, position)) is not None:
        tag = _tag_rest().match(text, found.end())
        if tag is None:
            return
        attrs = tag.group(1)
        if attrs.endswith(b"/"):
            yield Span(found.start(), attrs[:-1], (tag.end(), tag.end()), tag.end())
            position = tag.end()
            continue
        close = text.find(closing, tag.end())
        if close == -1:
            return
        end = text.find(b">", close) + 1
        yield Span(found.start(), attrs, (tag.end(), close), end)
        position = end


def without(text: bytes, spans: Iterator[Span]) -> bytes:
    """`text` with the given elements cut out."""
    kept: list[bytes] = []
    position = 0
    for span in spans:
        kept.append(text[position : span.start])
        position = span.end
    kept.append(text[position:])
    return b"".join(kept)


def attribute_pattern(name: str) -> re.Pattern[bytes]:
    """Finds every value of one attribute: an attribute is preceded by white space inside a tag."""
    return re.compile(rb"""\s""" + re.escape(name.encode()) + rb"""\s*=\s*["']([^"']*)["']""")


def ints(values: list[bytes], fmt: str, what: str, where: str) -> list[int]:
    if not values:
        return []
    try:
        return _INTS.decode(b"[" + b",".join(values) + b"]")
    except msgspec.DecodeError:
        bad = next((v for v in values if not v.strip().isdigit()), values[0]).decode(errors="replace")
        raise ReportError(fmt, where, f"{what} must be a whole number, got {bad[:40]!r}") from None


def numbers(values: list[bytes], fmt: str, what: str, where: str) -> list[int] | list[float]:
    """Counts as whole numbers, or as decimals when a tool writes them so (hits="1.0")."""
    if not values:
        return []
    text = b"[" + b",".join(values) + b"]"
    try:
        return _INTS.decode(text)
    except msgspec.DecodeError:
        pass
    try:
        return _NUMBERS.decode(text)
    except msgspec.DecodeError:
        raise ReportError(fmt, where, f"{what} must be numbers") from None
