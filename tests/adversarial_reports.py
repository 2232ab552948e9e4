"""Hostile coverage and test reports of a chosen size: the shapes that once made a parser quadratic or
worse (a regex retried from every position of a long run), for the timing tests and bench/fuzz_bench.py."""

from __future__ import annotations

from collections.abc import Callable

_COBERTURA_HEAD = b"<coverage><packages><package><classes>"
_COBERTURA_TAIL = b"</classes></package></packages></coverage>"


def cobertura_source_spaces(size: int) -> bytes:
    """A <source> of white space before a child element (was cubic: 3.2 KB took 12 s)."""
    return b"<coverage><sources><source>" + b" " * size + b"<b/></source></sources></coverage>"


def cobertura_open_conditions(size: int) -> bytes:
    """Self-closing <conditions/> elements, none ever closed (was quadratic: 112 KB took 4.9 s)."""
    line = b"<line number='1' hits='1'><conditions a='1'/></line>"
    body = line * max(size // len(line), 1)
    return _COBERTURA_HEAD + b"<class filename='a.py'><lines>" + body + b"</lines></class>" + _COBERTURA_TAIL


def cobertura_repeated_class(size: int) -> bytes:
    """One file named by thousands of classes, each with a branch line (merging was quadratic)."""
    one = (
        b"<class filename='a.py'><lines><line number='%d' hits='1' branch='true' "
        b"condition-coverage='50%% (1/2)'/></lines></class>"
    )
    count = max(size // len(one % 1), 1)
    return _COBERTURA_HEAD + b"".join(one % (i + 1) for i in range(count)) + _COBERTURA_TAIL


def cobertura_long_attribute_name(size: int) -> bytes:
    """An attribute name as long as the report (each of its letters once started a new match)."""
    return _COBERTURA_HEAD + b"<class filename='a.py' " + b"a" * size + b"='1'><lines/></class>" + _COBERTURA_TAIL


def jacoco_self_closing_methods(size: int) -> bytes:
    """Self-closing <method/> elements followed by one real method (each once scanned to the end)."""
    method = b"<method name='m' desc='()V' line='1'/>"
    real = b"<method name='r' desc='()V' line='2'><counter type='METHOD' missed='0' covered='1'/></method>"
    body = method * max(size // len(method), 1) + real
    return (
        b"<report name='x'><package name='p'><class name='p/A' sourcefilename='A.java'>" + body + b"</class>"
        b"<sourcefile name='A.java'><line nr='2' mi='0' ci='1' mb='0' cb='0'/></sourcefile></package></report>"
    )


def lcov_long_keyless_lines(size: int) -> bytes:
    """Records full of long lines that are not KEY:value (the line reader must reject them once)."""
    line = b"A" * 200 + b"\n"
    return b"SF:a.py\nDA:1,1\n" + line * max(size // len(line), 1) + b"end_of_record\n"


def junit_many_cases(size: int) -> bytes:
    """Distinct test cases, a third of them failing with a long message."""
    case = b'<testcase classname="pkg.TestThing" name="test_%d" time="0.001"/>\n'
    failing = b'<testcase classname="pkg.TestThing" name="test_%d"><failure>' + b"x" * 200 + b"</failure></testcase>\n"
    count = max(size // len(case % 0), 1)
    body = b"".join((failing if i % 3 == 0 else case) % i for i in range(count))
    return b'<testsuites><testsuite name="s">' + body + b"</testsuite></testsuites>"


# name: (make(size) -> bytes, the qe tool input kind it is: "coverage" or "junit")
ADVERSARIAL: dict[str, tuple[Callable[[int], bytes], str]] = {
    "cobertura-source-spaces": (cobertura_source_spaces, "coverage"),
    "cobertura-open-conditions": (cobertura_open_conditions, "coverage"),
    "cobertura-repeated-class": (cobertura_repeated_class, "coverage"),
    "cobertura-long-attribute-name": (cobertura_long_attribute_name, "coverage"),
    "jacoco-self-closing-methods": (jacoco_self_closing_methods, "coverage"),
    "lcov-long-keyless-lines": (lcov_long_keyless_lines, "coverage"),
    "junit-many-cases": (junit_many_cases, "junit"),
}
