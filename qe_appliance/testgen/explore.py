"""Execution-derived tests: candidate calls run in a child process (probe.py) that imports the module under
test by its path; the calls that add line or branch coverage, or kill a mutant the others miss, become
tests asserting what was observed — return values, exceptions with their messages, and what the call did
to its arguments and to the instance."""

from __future__ import annotations

import ast
import json
import math
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, Final

import msgspec

from qe_appliance.sandbox import Cancelled, Limits, run_sandboxed
from qe_appliance.testgen.cases import Planner, message_pattern
from qe_appliance.testgen.inputs import GENERIC, Candidate, candidates
from qe_appliance.testgen.learned import LearnedPattern, edge_values
from qe_appliance.testgen.model import Check, Kind, Line, Raises, Stmt, TestCase
from qe_appliance.testgen.source import ModuleFacts, target_named
from qe_appliance.testgen.subject import Subject
from qe_appliance.testgen.values import literal_value

PROBE: Final = Path(__file__).with_name("probe.py")
MUTATOR: Final = Path(__file__).with_name("mutate.py")
# Of the budget: observing calls, then mutants; the rest is the child's start and the final pytest run.
OBSERVE_SHARE: Final = 0.45
MUTATE_SHARE: Final = 0.3
MAX_CALL_SECONDS: Final = 1.0
# Beyond its own deadlines, the child gets this long before it is killed (a call stuck in C code).
GRACE_SECONDS: Final = 5.0
MAX_MUTATION_SECONDS: Final = 600.0
_PROBLEM_TAIL: Final = 1500
MAX_CONSTANTS: Final = 40


class ChildFailed(Exception):
    """The observation child did not produce results (killed at its deadline, or crashed)."""


class Figures(msgspec.Struct, frozen=True):
    lines: int
    lines_covered: int
    branches: int
    branches_covered: int


class Mutation(msgspec.Struct, frozen=True):
    total: int
    evaluated: int
    killed: int
    survivors: list[str]
    checks_dropped: int = 0


class Focus(msgspec.Struct, frozen=True):
    """A coverage report's view of the module: its executable and missed lines, and the line of every
    branch point and of every point never taken. Generation aims at what it misses."""

    lines: list[int]
    missed: list[int]
    branch_points: list[int]
    missed_branch_lines: list[int]


class Explored(msgspec.Struct, frozen=True):
    """The tests from observed calls and what was measured on the way."""

    tests: list[TestCase]
    notes: list[str]
    candidates: int
    ran: int
    before: Figures | None
    after: Figures | None
    mutation: Mutation | None
    seconds: float
    import_error: str | None = None


def explore(
    subject: Subject,
    source: str,
    facts: ModuleFacts,
    names: list[str],
    patterns: dict[str, list[LearnedPattern]],
    budget: float,
    full_mutation: bool,
    focus: Focus | None,
) -> Explored:
    """Observe calls of the named targets within `budget` seconds."""
    planner = Planner(facts, fallback=[literal_value(v) for v in GENERIC[:6]])
    per_target: list[list[Candidate]] = []
    notes: list[str] = []
    for name in names:
        target = target_named(facts, name)
        if target.kind == "module":
            continue
        found, refusal = candidates(facts, target, planner, edge_values(patterns.get(name, [])))
        if not found:
            notes.append(f"{name}: no call to observe: {refusal}")
        per_target.append(found)
    # Round robin over the targets, so each gets its simplest calls run before any gets its rarest.
    ordered = [c for row in _interleave(per_target) for c in row]
    with tempfile.TemporaryDirectory(prefix="aqe-probe-") as tmp:
        work = Path(tmp)
        path, root = _module_file(subject, source, work)
        spec = {
            "module": subject.module,
            "alias": subject.alias,
            "path": path,
            "import_root": root,
            "candidates": [msgspec.to_builtins(c) for c in ordered],
            "observe_seconds": budget * OBSERVE_SHARE,
            "mutate_seconds": MAX_MUTATION_SECONDS if full_mutation else budget * MUTATE_SHARE,
            "call_seconds": min(MAX_CALL_SECONDS, max(budget / 20, 0.2)),
            "mutate": True,
            "mutator": str(MUTATOR),
            "constants": _source_constants(facts),
            "focus": msgspec.to_builtins(focus) if focus is not None else None,
        }
        (work / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
        limit = (MAX_MUTATION_SECONDS if full_mutation else budget) + GRACE_SECONDS
        out = run_child([str(work / "spec.json"), str(work / "out.json")], work, subject.module, limit)
    if out.get("import_error"):
        return Explored([], notes, len(ordered), 0, None, None, None, 0.0, out["import_error"])
    tests = [_test(msgspec.convert(k["candidate"], Candidate), k, subject) for k in out["kept"]]
    dropped = out.get("dropped", {})
    if out.get("cut_by_time"):
        notes.append(
            f"budgetSeconds ran out after {out['ran']} calls ({len(ordered)} planned, then the search): a "
            "larger budget may find more, and the same call on a faster machine may keep other tests"
        )
    if dropped:
        shown = ", ".join(f"{n} {why}" for why, n in sorted(dropped.items()))
        notes.append(f"calls not turned into tests (nothing stable to assert): {shown}")
    mutation = msgspec.convert(out["mutants"], Mutation) if out.get("mutants") else None
    return Explored(
        tests,
        notes,
        len(ordered),
        out["ran"],
        msgspec.convert(out["before"], Figures),
        msgspec.convert(out["after"], Figures),
        mutation,
        out["seconds"],
    )


def _source_constants(facts: ModuleFacts) -> list[object]:
    """The short string and integer literals of the module, which the search combines with inputs."""
    found: dict[tuple[str, object], None] = {}
    for node in ast.walk(facts.tree):
        if isinstance(node, ast.Constant) and type(node.value) in (int, str):
            value = node.value
            if isinstance(value, str) and not (0 < len(value) <= 12) or isinstance(value, int) and abs(value) > 10**6:
                continue
            found.setdefault((type(value).__name__, value), None)
            if len(found) >= MAX_CONSTANTS:
                break
    return [value for _, value in found]


def _interleave(rows: list[list[Candidate]]) -> list[list[Candidate]]:
    longest = max((len(r) for r in rows), default=0)
    return [[row[i] for row in rows if i < len(row)] for i in range(longest)]


def _module_file(subject: Subject, source: str, work: Path) -> tuple[str, str]:
    """The module's file and import root; inline source is written under `work` as its module name."""
    if subject.path is not None and subject.import_root is not None:
        return subject.path, subject.import_root
    root = work / "src"
    *packages, last = subject.module.split(".")
    directory = root
    for package in packages:
        directory = directory / package
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "__init__.py").touch()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{last}.py").write_text(source, encoding="utf-8")
    return str(directory / f"{last}.py"), str(root)


def run_child(argv: list[str], work: Path, module: str, seconds: float) -> dict[str, Any]:
    """Run the observation child in the sandbox every run of callers' code shares (its own process group,
    CPU/memory/file-size limits, no network where the platform allows; killed at `seconds` or when the
    call is cancelled)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_", "COVERAGE_"))}
    # AQE_TESTGEN_SUBJECT names the module under test, as for verify runs, so ps/proc tell the runs apart.
    env.update(PYTHONDONTWRITEBYTECODE="1", PYTHONHASHSEED="0", AQE_TESTGEN_SUBJECT=module)
    log_file = work / "observe.log"
    ran = run_sandboxed(
        # -P: the child's own directory is not on its path, so no module of ours shadows one of the caller's.
        [sys.executable, "-P", str(PROBE), *argv],
        work,
        env=env,
        timeout_s=seconds,
        limits=Limits(cpu_seconds=math.ceil(seconds) + 1),
        output=log_file,
    )
    if ran.cancelled:
        raise Cancelled("observing the calls was cancelled")
    if ran.timed_out or ran.returncode == -signal.SIGXCPU:
        raise ChildFailed(f"observing the calls took longer than {seconds:.0f} s and was stopped")
    out_file = Path(argv[1])
    if ran.returncode != 0 or not out_file.exists():
        tail = log_file.read_text(errors="replace")[-_PROBLEM_TAIL:].strip()
        raise ChildFailed(f"the observation process exited with code {ran.returncode}: {tail}")
    result: dict[str, Any] = json.loads(out_file.read_text(encoding="utf-8"))
    return result


def _test(candidate: Candidate, kept: dict[str, Any], subject: Subject) -> TestCase:
    body: list[Stmt] = [Line(line) for line in candidate.setup]
    body += [Line(f"{bind} = {code}") for _, code, bind in candidate.args if bind]
    imports = set(candidate.imports) | set(kept.get("imports", []))
    call = candidate.call
    if candidate.is_async:
        call = f"asyncio.run({call})"
        imports.add("asyncio")
    why = "it reaches code no other kept test does" if kept["why"] == "coverage" else (
        "it kills a mutant the other tests miss"
    )
    raises = kept["raises"]
    if raises is not None:
        ref, message, _, drained = raises
        if drained:
            call = f"list(itertools.islice({call}, 100))"
            imports.add("itertools")
        match = message_pattern(message, False) if message else None
        body.append(Raises(ref, match, [Line(call)]))
        rationale = f"Observed: {candidate.call} raises {ref.rsplit('.', 1)[-1]}; kept because {why}."
        kind: Kind = "raises"
    else:
        checks = [Check(op, left, right) for left, op, right in kept["checks"]]
        body.append(Line(f"result = {call}") if checks else Line(call))
        body += checks
        rationale = f"Observed: what {candidate.call} returns today; kept because {why}."
        kind = "regression"
    return TestCase(
        target=candidate.target,
        group=candidate.group,
        stem=candidate.stem,
        case=candidate.label,
        kind=kind,
        rationale=rationale,
        body=body,
        patterns=candidate.patterns,
        imports=sorted(imports),
    )

