"""The observation child: imports the module under test by its file path, runs candidate calls under
coverage.py, writes down what they return, raise and change, keeps the calls that add coverage, and runs
them against mutants to keep the ones that kill what the others miss.

Run as a program (`python probe.py SPEC OUT`) in a child process with a deadline; it imports nothing of
qe_appliance (the mutator is loaded by path), so the module under test is the only code of the caller's it
runs. SPEC and OUT are JSON files; the record shapes are in qe_appliance/testgen/explore.py.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import importlib
import importlib.util
import io
import itertools
import json
import math
import os
import re
import signal
import sys
import time
import types
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

# Items of an iterator a test drains, and literal sizes above which a value is summarised.
DRAIN = 100
MAX_LITERAL = 400
MAX_ATTRS = 8
HEAD = 3
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{4,}|<[\w.]+ object at ")
# Failures of the run, not of the code under test: a call that ends this way is not observed.
_ENVIRONMENT = (RecursionError, MemoryError, KeyboardInterrupt, SystemExit)

Check = list[str]  # [left, op, right]


class Timeout(BaseException):
    """A call ran past its limit (raised by the interval timer)."""


def _alarm(signum: int, frame: object) -> None:
    raise Timeout()


class Limit:
    """An interval timer around one call."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __enter__(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, self.seconds)

    def __exit__(self, *exc: object) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)


# ---- stable descriptions of values -------------------------------------------------------------------------


def literal(value: object, depth: int = 0) -> str | None:
    """Python source that evaluates to an equal value, written the same in every process; None when there
    is none (objects, nan, sets of mixed types...)."""
    if depth > 6:
        return None
    kind = type(value)
    if value is None or kind is bool or kind is int or kind is str or kind is bytes:
        return repr(value)
    if kind is float:
        return repr(value) if math.isfinite(value) else None  # type: ignore[arg-type]
    if kind is list or kind is tuple:
        parts = [literal(item, depth + 1) for item in value]  # type: ignore[attr-defined]
        if any(p is None for p in parts):
            return None
        inner = ", ".join(parts)  # type: ignore[arg-type]
        if kind is list:
            return f"[{inner}]"
        return f"({inner},)" if len(parts) == 1 else f"({inner})"
    if kind is dict:
        items = []
        for key, item in value.items():  # type: ignore[attr-defined]
            k, v = literal(key, depth + 1), literal(item, depth + 1)
            if k is None or v is None:
                return None
            items.append(f"{k}: {v}")
        return "{" + ", ".join(items) + "}"
    if kind is set or kind is frozenset:
        parts = [literal(item, depth + 1) for item in value]  # type: ignore[attr-defined]
        if any(p is None for p in parts):
            return None
        ordered = sorted(parts)  # type: ignore[type-var]
        if not ordered:
            return "set()" if kind is set else "frozenset()"
        body = "{" + ", ".join(ordered) + "}"  # type: ignore[arg-type]
        return body if kind is set else f"frozenset({body})"
    return None


def _numbers_only(value: object) -> bool:
    """A float, or a list/tuple/dict of numbers holding a float: what pytest.approx compares."""
    if type(value) is float:
        return True
    items: list[Any]
    if type(value) in (list, tuple):
        items = list(value)  # type: ignore[call-overload]
    elif type(value) is dict:
        items = list(value.values())
    else:
        return False
    return (
        bool(items)
        and all(type(i) in (int, float) for i in items)
        and any(type(i) is float for i in items)
        and all(math.isfinite(i) for i in items)
    )


class Observer:
    """Turns observed values into checks, naming the classes it meets the way a test can reach them."""

    def __init__(self, module: types.ModuleType, name: str, alias: str) -> None:
        self.module = module
        self.name = name
        self.alias = alias
        self.imports: set[str] = set()

    def ref(self, cls: type) -> str | None:
        """How a test names `cls`: a builtin, `alias.X` for the module's own, or `package.module.X`."""
        if cls.__module__ == "builtins":
            return cls.__qualname__ if getattr(builtins, cls.__qualname__, None) is cls else None
        if "<" in cls.__qualname__:
            return None
        if cls.__module__ == self.name:
            found: Any = self.module
            for part in cls.__qualname__.split("."):
                found = getattr(found, part, None)
            return f"{self.alias}.{cls.__qualname__}" if found is cls else None
        module = sys.modules.get(cls.__module__)
        if module is None or cls.__module__.startswith("_"):
            return None
        found = module
        for part in cls.__qualname__.split("."):
            found = getattr(found, part, None)
        if found is not cls:
            return None
        self.imports.add(cls.__module__)
        return f"{cls.__module__}.{cls.__qualname__}"

    def exception_ref(self, cls: type) -> str | None:
        """The exception class a test expects: `cls` itself when reachable, else its nearest reachable base."""
        for base in cls.__mro__:
            ref = self.ref(base)
            if ref is not None:
                return ref
        return None

    def checks(self, value: object, left: str) -> list[Check]:
        """Assertions that hold for `value`, which the test has in the expression `left`."""
        if value is None or type(value) is bool:
            return [[left, "is", repr(value)]]
        if type(value) is float:
            if math.isnan(value):
                self.imports.add("math")
                return [[f"math.isnan({left})", "true", ""]]
            if math.isinf(value):
                self.imports.add("math")
                return [[left, "eq", "math.inf" if value > 0 else "-math.inf"]]
        code = literal(value)
        if code is not None:
            if len(code) <= MAX_LITERAL:
                return [[left, "approx" if _numbers_only(value) else "eq", code]]
            return self._summary(value, left)
        if isinstance(value, type):
            ref = self.ref(value)
            return [[left, "is", ref]] if ref else []
        return self._object(value, left)

    def _summary(self, value: Any, left: str) -> list[Check]:
        """A large value by its length and first few items."""
        found: list[Check] = [[f"len({left})", "eq", str(len(value))]]
        if isinstance(value, str | bytes):
            found.append([f"{left}[:40]", "eq", repr(value[:40])])
        elif isinstance(value, list | tuple):
            head = literal(value[:HEAD])
            if head is not None and len(head) <= MAX_LITERAL:
                found.append([f"{left}[:{HEAD}]", "eq", head])
        elif isinstance(value, dict):
            for key in itertools.islice(value, HEAD):
                k, v = literal(key), literal(value[key])
                if k is not None and v is not None and len(v) <= MAX_LITERAL:
                    found.append([f"{left}[{k}]", "eq", v])
        return found

    def _object(self, value: object, left: str) -> list[Check]:
        cls = type(value)
        ref = self.ref(cls)
        # A value whose class compares by value and whose repr builds it again is written as that repr.
        if ref is not None and cls.__eq__ is not object.__eq__:
            code = self._rebuilt(value, ref)
            if code is not None:
                return [[left, "eq", code]]
        found: list[Check] = []
        if ref is not None:
            found.append([left, "isinstance", ref])
        else:
            found.append([f"type({left}).__name__", "eq", repr(cls.__name__)])
        if isinstance(value, BaseException):
            message = str(value)
            if not _ADDRESS.search(message) and len(message) <= MAX_LITERAL:
                found.append([f"str({left})", "eq", repr(message)])
            return found
        state = _state(value)
        for attr, item in itertools.islice(state.items(), MAX_ATTRS):
            found.extend(self.checks_shallow(item, f"{left}.{attr}"))
        return found

    def checks_shallow(self, value: object, left: str) -> list[Check]:
        """Checks on an attribute: literal values only (an object inside an object is not followed)."""
        if value is None or type(value) is bool:
            return [[left, "is", repr(value)]]
        code = literal(value)
        if code is None or len(code) > MAX_LITERAL:
            return []
        return [[left, "approx" if _numbers_only(value) else "eq", code]]

    def _rebuilt(self, value: object, ref: str) -> str | None:
        text = repr(value)
        cls = type(value)
        if _ADDRESS.search(text) or len(text) > MAX_LITERAL:
            return None
        prefix = ref.rsplit(".", 1)[0] + "." if "." in ref else ""
        code = prefix + text if text.startswith(cls.__qualname__ + "(") else text
        try:
            namespace = {self.alias: self.module, **{m.split(".")[0]: importlib.import_module(m.split(".")[0])
                                                     for m in self.imports}}
            top = cls.__module__.split(".")[0]
            if cls.__module__ != self.name:
                namespace.setdefault(top, importlib.import_module(top))
            rebuilt = eval(code, namespace)
            same = bool(rebuilt == value) and type(rebuilt) is cls
        except Exception:
            return None
        if not same:
            return None
        if cls.__module__ != self.name:
            self.imports.add(cls.__module__)
        return code


def _state(value: object) -> dict[str, object]:
    """An object's own attributes (not its methods), in definition order."""
    try:
        state = dict(vars(value))
    except TypeError:
        slots = getattr(type(value), "__slots__", ())
        state = {name: getattr(value, name) for name in slots if hasattr(value, name)}
    return {k: v for k, v in state.items() if not k.startswith("__") and not callable(v)}


# ---- checks evaluated again ----------------------------------------------------------------------------------


def holds(check: Check, namespace: dict[str, Any]) -> bool:
    left, op, right = check
    try:
        actual = eval(left, namespace)
        if op == "true":
            return bool(actual)
        expected = eval(right, namespace)
        if op == "eq":
            return bool(actual == expected) and type(actual) is type(expected)
        if op == "is":
            return actual is expected
        if op == "isinstance":
            return isinstance(actual, expected)
        if op == "approx":
            return _close(actual, expected)
    except Exception:
        return False
    return False


def _close(actual: Any, expected: Any) -> bool:
    if isinstance(expected, dict):
        return isinstance(actual, dict) and actual.keys() == expected.keys() and all(
            _close(actual[k], expected[k]) for k in expected
        )
    if isinstance(expected, list | tuple):
        return (
            isinstance(actual, list | tuple)
            and len(actual) == len(expected)
            and all(_close(a, e) for a, e in zip(actual, expected, strict=True))
        )
    if not isinstance(actual, int | float) or isinstance(actual, bool):
        return False
    return math.isclose(actual, expected, rel_tol=1e-6, abs_tol=1e-12)


# ---- running calls -----------------------------------------------------------------------------------------


class Run:
    """What one candidate did: `status` is returned, raised or error (it could not be observed)."""

    def __init__(self, status: str, namespace: dict[str, Any], result: object = None,
                 error: BaseException | None = None, why: str = "") -> None:
        self.status = status
        self.namespace = namespace
        self.result = result
        self.error = error
        self.why = why


def _namespace(alias: str, module: types.ModuleType, imports: list[str]) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__builtins__": builtins, alias: module, "itertools": itertools, "math": math}
    for name in imports:
        namespace.setdefault(name.split(".")[0], importlib.import_module(name.split(".")[0]))
        importlib.import_module(name)
    return namespace


def run_call(candidate: dict[str, Any], alias: str, module: types.ModuleType, seconds: float) -> Run:
    namespace = _namespace(alias, module, candidate["imports"])
    sink = io.StringIO()
    try:
        with Limit(seconds), redirect_stdout(sink), redirect_stderr(sink):
            for line in candidate["setup"]:
                exec(line, namespace)
            for _, code, bind in candidate["args"]:
                if bind:
                    namespace[bind] = eval(code, namespace)
    except BaseException as exc:  # noqa: BLE001 - whatever the setup raises, the candidate is unusable
        return Run("error", namespace, why=f"setup: {type(exc).__name__}")
    before = {bind: _snapshot(namespace[bind]) for _, _, bind in candidate["args"] if bind}
    if "instance" in namespace:
        before["instance"] = _snapshot(namespace["instance"])
    try:
        with Limit(seconds), redirect_stdout(sink), redirect_stderr(sink):
            result = eval(candidate["call"], namespace)
            if asyncio.iscoroutine(result):
                result = asyncio.run(result)
            if _is_iterator(result):
                namespace["__drained__"] = True
                result = list(itertools.islice(result, DRAIN))
    except Timeout:
        return Run("error", namespace, why="timeout")
    except _ENVIRONMENT as exc:
        return Run("error", namespace, why=type(exc).__name__)
    except BaseException as exc:  # noqa: BLE001 - what the code under test raises is the observation
        namespace["__before__"] = before
        return Run("raised", namespace, error=exc)
    namespace["result"] = result
    namespace["__before__"] = before
    return Run("returned", namespace, result=result)


def _is_iterator(value: object) -> bool:
    return hasattr(type(value), "__next__") and hasattr(type(value), "__iter__") and not isinstance(
        value, str | bytes | io.IOBase
    )


def _snapshot(value: object) -> str | None:
    """A comparable picture of a value that can change in place (None when it has no stable one)."""
    code = literal(value)
    if code is not None:
        return code
    state = _state(value)
    parts = [f"{k}={literal(v)}" for k, v in state.items()]
    return ";".join(parts) if parts else None


def observe(run: Run, candidate: dict[str, Any], observer: Observer) -> dict[str, Any] | None:
    """The record of a run: its checks (returned) or exception (raised); None when nothing stable."""
    namespace = run.namespace
    if run.status == "raised":
        assert run.error is not None
        ref = observer.exception_ref(type(run.error))
        if ref is None:
            return None
        message = str(run.error)
        stable = not _ADDRESS.search(message)
        drained = bool(namespace.get("__drained__"))
        return {
            "raises": [ref, message if stable else None, type(run.error).__qualname__, drained],
            "checks": [],
        }
    drained = namespace.get("__drained__", False)
    left = f"list(itertools.islice(result, {DRAIN}))" if drained else "result"
    if drained:
        observer.imports.add("itertools")
    found = observer.checks(run.result, left)
    before = namespace["__before__"]
    for name, picture in before.items():
        if picture is not None and _snapshot(namespace[name]) != picture:
            if name == "instance":
                state = _state(namespace[name])
                for attr, item in itertools.islice(state.items(), MAX_ATTRS):
                    found.extend(observer.checks_shallow(item, f"instance.{attr}"))
            else:
                found.extend(observer.checks(namespace[name], name))
    return {"raises": None, "checks": found}


def same_outcome(record: dict[str, Any], run: Run) -> bool:
    """Whether a run (again, or on a mutant) behaves as the record says."""
    raises = record["raises"]
    if raises is not None:
        if run.status != "raised" or run.error is None:
            return False
        if type(run.error).__qualname__ != raises[2]:
            return False
        return raises[1] is None or str(run.error) == raises[1]
    if run.status != "returned":
        return False
    return all(holds(check, run.namespace) for check in record["checks"])


# ---- the module, its coverage and its mutants ----------------------------------------------------------------


def load(spec: dict[str, Any]) -> types.ModuleType:
    """The module under test, imported by name with its import root first on the path, and by its file path
    when that name resolves to another file (a package re-exporting a same-named function, an installed
    copy)."""
    name, path = spec["module"], spec["path"]
    if spec["import_root"]:
        sys.path.insert(0, spec["import_root"])
    try:
        module = importlib.import_module(name)
        if os.path.realpath(getattr(module, "__file__", "") or "") == os.path.realpath(path):
            return module
    except ImportError:
        pass
    found = importlib.util.spec_from_file_location(name, path)
    assert found is not None and found.loader is not None
    module = importlib.util.module_from_spec(found)
    sys.modules[name] = module
    found.loader.exec_module(module)
    return module


def mutant_module(original: types.ModuleType, tree: ast.Module, path: str, seconds: float) -> types.ModuleType:
    module = types.ModuleType(original.__name__)
    for attr in ("__file__", "__package__", "__spec__", "__path__", "__loader__"):
        if hasattr(original, attr):
            setattr(module, attr, getattr(original, attr))
    code = compile(tree, path, "exec")
    sys.modules[original.__name__] = module
    try:
        with Limit(seconds), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            exec(code, module.__dict__)
    finally:
        sys.modules[original.__name__] = original
    return module


def totals(text: str) -> tuple[set[int], set[tuple[int, int]]]:
    """The statements and the branch arcs (arcs out of lines with more than one way out) of a source."""
    from coverage.parser import PythonParser

    parser = PythonParser(text=text)
    parser.parse_source()
    exits = parser.exit_counts()
    arcs = {arc for arc in parser.arcs() if exits.get(arc[0], 0) > 1}
    return set(parser.statements), arcs


def main(spec_path: str, out_path: str) -> None:
    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    signal.signal(signal.SIGALRM, _alarm)
    started = time.monotonic()
    out: dict[str, Any] = {"problems": []}
    sys.setrecursionlimit(2000)
    import coverage

    path = os.path.realpath(spec["path"])
    cov = coverage.Coverage(data_file=None, branch=True, include=[path], config_file=False)
    cov.start()
    cov.switch_context("import")
    try:
        with Limit(max(spec["call_seconds"] * 5, 5.0)), redirect_stdout(io.StringIO()):
            module = load(spec)
    except BaseException as exc:  # noqa: BLE001 - reported to the caller as why nothing was observed
        cov.stop()
        out["import_error"] = f"{type(exc).__name__}: {exc}"
        _write(out_path, out)
        return
    alias, name = spec["alias"], spec["module"]
    observer = Observer(module, name, alias)
    candidates: list[dict[str, Any]] = spec["candidates"]
    records: dict[int, dict[str, Any]] = {}
    why_dropped: dict[str, int] = {}
    deadline = started + spec["observe_seconds"]
    ran = 0
    reached: set[object] = set()

    def attempt(index: int, candidate: dict[str, Any]) -> bool:
        """Run and observe one candidate under its own coverage context; True when it was recorded."""
        cov.switch_context(f"c{index}")
        observer.imports = set()
        first = run_call(candidate, alias, module, spec["call_seconds"])
        record = observe(first, candidate, observer) if first.status != "error" else None
        if record is None:
            reason = first.why or "no stable observation"
            why_dropped[reason] = why_dropped.get(reason, 0) + 1
            return False
        # Run again: only what happens both times is asserted (no clocks, randomness or leftover state).
        second = run_call(candidate, alias, module, spec["call_seconds"])
        if second.status != first.status:
            why_dropped["unstable"] = why_dropped.get("unstable", 0) + 1
            return False
        if record["raises"] is None:
            record["checks"] = [c for c in record["checks"] if holds(c, second.namespace)]
        elif not same_outcome(record, second):
            record["raises"][1] = None
        record["imports"] = sorted(observer.imports)
        records[index] = record
        return True

    for index, candidate in enumerate(candidates):
        if time.monotonic() > deadline:
            break
        ran += 1
        attempt(index, candidate)
    # Coverage-guided search for the rest of the time: variants of the arguments of the calls that reached
    # new code, run and kept the same way.
    seen = {_key(c) for c in candidates}
    seeds = sorted(records)
    _new_coverage(cov, path, r"\d+", reached)  # what the first calls reached together
    frontier = 0
    while time.monotonic() < deadline and frontier < len(seeds):
        seed = candidates[seeds[frontier]]
        frontier += 1
        for variant in _variants(seed, spec.get("constants", [])):
            if time.monotonic() > deadline or len(candidates) >= MAX_SEARCHED + len(spec["candidates"]):
                break
            if _key(variant) in seen:
                continue
            seen.add(_key(variant))
            candidates.append(variant)
            ran += 1
            index = len(candidates) - 1
            if attempt(index, variant) and _new_coverage(cov, path, index, reached):
                seeds.append(index)
    cov.stop()
    # Calls and search are bounded by count, so the same module gives the same tests; the clock is a
    # safety stop, and the caller is told when it cut the run short.
    out["cut_by_time"] = time.monotonic() > deadline
    data = cov.get_data()
    measured = data.measured_files()
    file = next((f for f in measured if os.path.realpath(f) == path), None)
    lines: dict[int, set[int]] = {}
    arcs: dict[int, set[tuple[int, int]]] = {}
    base_lines: set[int] = set()
    base_arcs: set[tuple[int, int]] = set()
    if file is not None:
        data.set_query_contexts(["^import$"])
        base_lines |= set(data.lines(file) or [])
        base_arcs |= set(data.arcs(file) or [])
        for index in records:
            data.set_query_contexts([f"^c{index}$"])  # patterns: c2 alone would match c20..c29 too
            lines[index] = set(data.lines(file) or [])
            arcs[index] = set(data.arcs(file) or [])
    with open(path, encoding="utf-8", errors="replace") as handle:
        text = handle.read()
    statements, branch_arcs = totals(text)
    focus = spec.get("focus")
    # Aiming at a report's gaps: what the report covers counts as had, and a new arc counts only out of a
    # line whose branches the report found missed, into a line it missed or out of the function (the report
    # names lines, not arcs, so an arc into a covered line may be one it took).
    aimed = set(focus["missed_branch_lines"]) if focus else None
    missed = set(focus["missed"]) if focus else set()
    have_lines = set(base_lines) | (set(focus["lines"]) - set(focus["missed"]) if focus else set())
    have_arcs = set(base_arcs)
    # Greedy, in candidate order (simple values first): a call is kept when it reaches a line or an arc the
    # kept ones do not.
    kept: list[int] = []
    why: dict[int, str] = {}
    for index in sorted(records):
        new_lines = lines.get(index, set()) - have_lines
        new_arcs = {
            a for a in arcs.get(index, set()) - have_arcs
            if aimed is None or a[0] in aimed and (a[1] in missed or a[1] < 0)
        }
        if new_lines or new_arcs:
            kept.append(index)
            why[index] = "coverage"
            have_lines |= lines.get(index, set())
            have_arcs |= arcs.get(index, set())
    before = _figures(base_lines, base_arcs, statements, branch_arcs)
    if spec["mutate"]:
        out["mutants"] = _mutate(spec, module, text, path, candidates, records, lines, kept, why, alias)
        have_lines |= set().union(*(lines.get(i, set()) for i in kept))
        have_arcs |= set().union(*(arcs.get(i, set()) for i in kept))
    after = _figures(have_lines, have_arcs, statements, branch_arcs)
    if focus:
        before, after = _report_figures(focus, have_lines, have_arcs, branch_arcs)
    out["before"], out["after"] = before, after
    out["ran"] = ran
    out["candidates"] = len(candidates)
    out["dropped"] = why_dropped
    out["kept"] = [{"i": i, "why": why[i], "candidate": candidates[i], **records[i]} for i in sorted(kept)]
    out["seconds"] = round(time.monotonic() - started, 3)
    _write(out_path, out)


MAX_SEARCHED = 1500
_STR_SUFFIXES = ("_x", " y", "1", ":", ".", "-", "/", "s")


def _key(candidate: dict[str, Any]) -> str:
    return str(candidate["call"]) + "\x00" + "\x00".join(str(a[1]) for a in candidate["args"])


def _new_coverage(cov: Any, path: str, index: int | str, reached: set[object]) -> bool:
    """Whether the candidate just run reached a line or arc none before it did (and note what it did)."""
    data = cov.get_data()
    file = next((f for f in data.measured_files() if os.path.realpath(f) == path), None)
    if file is None:
        return False
    data.set_query_contexts([f"^c{index}$"])
    found = set(data.arcs(file) or ()) | set(data.lines(file) or ())
    new = found - reached
    reached |= found
    return bool(new)


def _variants(seed: dict[str, Any], constants: list[Any]) -> list[dict[str, Any]]:
    """Candidates that differ from `seed` in one argument (a nearby value), or in two at once."""
    if not seed.get("callee"):
        return []
    values: list[Any] = []
    for _, code, _ in seed["args"]:
        try:
            values.append(ast.literal_eval(code))
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            values.append(_OPAQUE)
    made: list[dict[str, Any]] = []
    for position, value in enumerate(values):
        if value is _OPAQUE:
            continue
        for other in _nearby(value, constants):
            code = literal(other)
            if code is not None and len(code) <= MAX_LITERAL:
                made.append(_with_arg(seed, position, code))
    # Two arguments at once: the first variant of each, pairwise.
    firsts = [(i, next(iter(_nearby(v, constants)), _OPAQUE)) for i, v in enumerate(values) if v is not _OPAQUE]
    for (i, a), (j, b) in itertools.combinations(firsts, 2):
        ca, cb = literal(a), literal(b)
        if ca is not None and cb is not None:
            made.append(_with_arg(_with_arg(seed, i, ca), j, cb))
    return made


_OPAQUE = object()


def _nearby(value: Any, constants: list[Any]) -> list[Any]:
    kind = type(value)
    if kind is bool:
        return [not value]
    if kind is int:
        near = [value + 1, value - 1, -value, value * 2, value * 10, 0, 7, 100]
        return near + [c for c in constants if type(c) is int]
    if kind is float:
        return [-value, value * 10, value / 10, 0.0, value + 0.5] + [float(c) for c in constants if type(c) is int]
    if kind is str:
        near = [value[:1], value[1:], value + value, value.upper(), value.lower(), value.title(),
                value[::-1], " " + value, value + " ", value.replace("_", " "), value.replace(" ", "_"), "42"]
        near += [value + suffix for suffix in _STR_SUFFIXES]
        near += [value + c for c in constants if type(c) is str and c] + [c + value for c in constants
                                                                         if type(c) is str and c]
        near += [f"{value}{c}" for c in constants if type(c) is int][:5]
        return [n for n in near if n != value]
    if kind is bytes:
        return [value[:1], value + value, b"", value.upper()]
    if kind is list:
        return [[], value + value[:1], value[:-1], list(reversed(value)), [value]] + [[c] for c in constants[:3]]
    if kind is dict:
        return [{}, {**value, "extra": 1}]
    if kind is tuple:
        return [(), value + value[:1], value[:-1]]
    if value is None:
        return [0, "", [], "abc"]
    return []


def _with_arg(seed: dict[str, Any], position: int, code: str) -> dict[str, Any]:
    args = [list(a) for a in seed["args"]]
    args[position][1] = code
    parts = [
        (f"{kw}={bind or value}" if kw else (bind or value)) for kw, value, bind in args
    ]
    label = f"{seed['label']}_v"[:60] if not seed["label"].endswith("_v") else seed["label"]
    return {**seed, "args": args, "call": f"{seed['callee']}({', '.join(parts)})", "label": label}


def _figures(lines: set[int], arcs: set[tuple[int, int]], statements: set[int],
             branch_arcs: set[tuple[int, int]]) -> dict[str, int]:
    return {
        "lines": len(statements),
        "lines_covered": len(lines & statements),
        "branches": len(branch_arcs),
        "branches_covered": len(arcs & branch_arcs),
    }


def _report_figures(focus: dict[str, list[int]], have_lines: set[int], have_arcs: set[tuple[int, int]],
                    branch_arcs: set[tuple[int, int]]) -> tuple[dict[str, int], dict[str, int]]:
    """Coverage of the file by the report, and by the report together with the kept calls: a missed branch
    point counts as taken once every branch arc out of its line ran."""
    lines, missed = set(focus["lines"]), set(focus["missed"])
    points, missed_points = focus["branch_points"], focus["missed_branch_lines"]
    before = {
        "lines": len(lines),
        "lines_covered": len(lines - missed),
        "branches": len(points),
        "branches_covered": len(points) - len(missed_points),
    }
    done = {
        line for line in set(missed_points)
        if (out_of := {a for a in branch_arcs if a[0] == line}) and out_of <= have_arcs
    }
    after = {
        **before,
        "lines_covered": len(lines - (missed - have_lines)),
        "branches_covered": before["branches_covered"] + sum(1 for line in missed_points if line in done),
    }
    return before, after


def _mutate(spec: dict[str, Any], module: types.ModuleType, text: str, path: str,
            candidates: list[dict[str, Any]], records: dict[int, dict[str, Any]],
            lines: dict[int, set[int]], kept: list[int], why: dict[int, str], alias: str) -> dict[str, Any]:
    """Run the candidates against each mutant (kept ones first); a candidate that kills a mutant the kept
    ones miss is kept too. Returns the mutation figures of the kept set."""
    loader = importlib.util.spec_from_file_location("_aqe_mutate", spec["mutator"])
    assert loader is not None and loader.loader is not None
    mutator = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(mutator)
    all_mutants = mutator.mutants(ast.parse(text))
    focus = spec.get("focus")
    if focus:  # aiming at a report's gaps: the mutants of the lines it misses or whose branches it misses
        aimed = set(focus["missed"]) | set(focus["missed_branch_lines"])
        all_mutants = [m for m in all_mutants if m.line in aimed]
    deadline = time.monotonic() + spec["mutate_seconds"]
    killed = evaluated = 0
    survivors: list[str] = []
    credited: dict[int, set[int]] = {}
    for mutant in all_mutants:
        if time.monotonic() > deadline:
            break
        reaching = [i for i in records if mutant.line in lines.get(i, ())]
        evaluated += 1
        if not reaching:
            survivors.append(f"{mutant.line}: {mutant.description} (no call reaches it)")
            continue
        order = [i for i in kept if i in reaching] + [i for i in sorted(reaching) if i not in kept]
        try:
            mutated = mutant_module(module, mutator.apply(ast.parse(text), mutant), path, spec["call_seconds"])
        except BaseException:  # noqa: BLE001 - a mutant that breaks the import is killed by any test
            killed += 1
            continue
        killer = _first_killer(order, candidates, records, alias, mutated, spec["call_seconds"], credited)
        if killer is None:
            survivors.append(f"{mutant.line}: {mutant.description}")
            continue
        killed += 1
        if killer not in kept:
            kept.append(killer)
            why[killer] = "mutant"
    # Assertions are cut to those that kill mutants only when every mutant ran: otherwise a check could be
    # the only one that would have told an unevaluated mutant apart.
    checks_dropped = minimise(records, kept, credited) if evaluated == len(all_mutants) else 0
    return {
        "checks_dropped": checks_dropped,
        "total": len(all_mutants),
        "evaluated": evaluated,
        "killed": killed,
        "survivors": survivors[:20],
    }


def _first_killer(order: list[int], candidates: list[dict[str, Any]], records: dict[int, dict[str, Any]],
                  alias: str, mutated: types.ModuleType, seconds: float,
                  credited: dict[int, set[int]]) -> int | None:
    """The first call (in `order`) whose test fails on the mutant. When it fails on its checks alone, the
    checks that fail are credited with the kill (`credited`: call -> check indexes)."""
    for index in order:
        run = run_call(candidates[index], alias, mutated, seconds)
        record = records[index]
        if run.status == "error" or not same_outcome(record, run):
            if run.status == "returned" and record["raises"] is None:
                failing = {i for i, check in enumerate(record["checks"]) if not holds(check, run.namespace)}
                credited.setdefault(index, set()).update(failing)
            else:
                credited.setdefault(index, set()).add(-1)  # killed by its outcome, not one check
            return index
    return None


def minimise(records: dict[int, dict[str, Any]], kept: list[int], credited: dict[int, set[int]]) -> int:
    """Drop the checks of kept calls that told no mutant apart, keeping each call's first check (what it
    returned); returns how many were dropped. Every mutant stays killed: its killer keeps a failing check."""
    dropped = 0
    for index in kept:
        record = records[index]
        if record["raises"] is not None or len(record["checks"]) <= 1:
            continue
        useful = credited.get(index, set())
        # The first check, and after an isinstance() the first that looks at a value.
        first = {0} | ({1} if record["checks"][0][1] == "isinstance" else set())
        chosen = [c for i, c in enumerate(record["checks"]) if i in first or i in useful]
        dropped += len(record["checks"]) - len(chosen)
        record["checks"] = chosen
    return dropped


def _write(path: str, out: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(out, handle)


if __name__ == "__main__":
    run_main: Callable[[str, str], None] = main
    run_main(sys.argv[1], sys.argv[2])
