"""qe_test_generate (observed oracles) against Pynguin 0.48 (DYNAMOSA, 60 s) on real modules from PyPI.

The packages are fetched at bench time with `pip download` into bench/.cache (not committed); Pynguin runs in
its own virtual environment (Python 3.10, which it needs), on one core (taskset -c 0), one module at a time.
Each tool's test module is then run the same way: pytest on the correct code (failing tests counted, then
deselected), line and branch coverage of the target by the passing tests (coverage.py), and the mutation
score on one fixed set of mutants shared by both (every k-th mutant of qe_appliance/testgen/mutate.py, each
written into a copy of the package; killed when the passing tests fail on it).

Run: `python bench/testgen_vs_pynguin.py` (`--help` for the knobs). Setting up Pynguin's environment takes a
minute the first time.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import msgspec  # noqa: E402

from qe_appliance.app import Services  # noqa: E402
from qe_appliance.config import TOOL_DEFAULTS, Config, ServerConfig  # noqa: E402
from qe_appliance.testgen import mutate  # noqa: E402
from qe_appliance.tools.base import bare_context  # noqa: E402
from qe_appliance.tools.testgen import TEST_GENERATE, TOOLS  # noqa: E402

CACHE = REPO / "bench" / ".cache"
PYTHON_310 = Path("/root/.pyenv/versions/3.10.13/bin/python")
MUTANT_SECONDS = 20.0
# (requirement, module, file inside the unpacked distribution)
MODULES: list[tuple[str, str, str]] = [
    ("pytimeparse==1.1.8", "pytimeparse.timeparse", "pytimeparse/timeparse.py"),
    ("roman==5.2", "roman", "roman/__init__.py"),
    ("isodate==0.7.2", "isodate.isotime", "isodate/isotime.py"),
    ("isodate==0.7.2", "isodate.isoduration", "isodate/isoduration.py"),
    ("boltons==26.2.0", "boltons.mathutils", "boltons/mathutils.py"),
    ("boltons==26.2.0", "boltons.typeutils", "boltons/typeutils.py"),
    ("boltons==26.2.0", "boltons.queueutils", "boltons/queueutils.py"),
    ("inflection==0.5.1", "inflection", "inflection/__init__.py"),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pynguin-seconds", type=int, default=60, help="Pynguin's search budget (default 60)")
    parser.add_argument("--budget", type=float, default=5.0, help="our budgetSeconds (default 5)")
    parser.add_argument("--mutants", type=int, default=25, help="shared mutants per module (default 25)")
    parser.add_argument("--only", nargs="*", help="module names to run (default all)")
    parser.add_argument("--fresh", action="store_true", help="run Pynguin again even when its output is cached")
    parser.add_argument("--skip-pynguin", action="store_true", help="only our rows")
    return parser.parse_args(argv)


def fetch(requirement: str) -> Path:
    """The unpacked distribution of `requirement` under bench/.cache/src."""
    downloads, src = CACHE / "dl", CACHE / "src"
    downloads.mkdir(parents=True, exist_ok=True)
    name, _, version = requirement.partition("==")
    found = [p for p in downloads.iterdir() if p.name.lower().startswith(f"{name}-{version}")]
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(downloads),
                        requirement], check=True)
        found = [p for p in downloads.iterdir() if p.name.lower().startswith(f"{name}-{version}")]
    target = src / f"{name}-{version}"
    if not target.exists():
        with zipfile.ZipFile(found[0]) as wheel:
            wheel.extractall(target)
    return target


def pynguin_env() -> Path:
    venv = CACHE / "pynguin-venv"
    if not (venv / "bin" / "pynguin").exists():
        subprocess.run([str(PYTHON_310), "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "pynguin==0.48"], check=True)
    return venv


def ours(root: Path, file: str, budget: float) -> tuple[str, float, dict[str, Any]]:
    with tempfile.TemporaryDirectory() as state:
        config = Config(
            server=ServerConfig(state_dir=state, workspace_roots=(str(root),)), tools=dict(TOOL_DEFAULTS)
        )
        services = Services(config)
        spec = TOOLS[0]
        args = msgspec.convert({"path": file, "budgetSeconds": budget}, spec.input_type)
        started = time.monotonic()
        try:
            result = asyncio.run(spec.handler(bare_context(services, TEST_GENERATE), args))
        finally:
            services.close()
        elapsed = time.monotonic() - started
    data = msgspec.to_builtins(result)
    return data["module"], elapsed, data


def pynguin(venv: Path, root: Path, module: str, seconds: int, out: Path) -> tuple[str, float]:
    env = {**os.environ, "PYNGUIN_DANGER_AWARE": "1"}
    started = time.monotonic()
    try:
        _pynguin_run(venv, root, module, seconds, out, env)
    except subprocess.TimeoutExpired:
        pass  # what it wrote before the deadline (usually nothing) is what it produced
    elapsed = time.monotonic() - started
    produced = sorted(out.glob("test_*.py"))
    return (produced[0].read_text() if produced else ""), elapsed


def _pynguin_run(venv: Path, root: Path, module: str, seconds: int, out: Path, env: dict[str, str]) -> None:
    subprocess.run(
        ["taskset", "-c", "0", str(venv / "bin" / "pynguin"), "--project-path", str(root), "--module-name",
         module, "--output-path", str(out), "--algorithm", "DYNAMOSA", "--maximum-search-time", str(seconds),
         "--seed", "1"],
        env=env, capture_output=True, stdin=subprocess.DEVNULL, check=False, timeout=seconds * 3 + 60,
        cwd=out,  # it writes a pynguin-report directory where it runs
    )


def pynguin_cached(venv: Path, root: Path, module: str, options: argparse.Namespace) -> tuple[str, float]:
    """Pynguin's module and time, from bench/.cache/pynguin-out when an earlier run with the same budget left
    them (--fresh runs it again)."""
    out = CACHE / "pynguin-out" / f"{module}-{options.pynguin_seconds}s"
    timing = out / "seconds.txt"
    if timing.exists() and not options.fresh:
        produced = sorted(out.glob("test_*.py"))
        return (produced[0].read_text() if produced else ""), float(timing.read_text())
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    text, seconds = pynguin(venv, root, module, options.pynguin_seconds, out)
    timing.write_text(f"{seconds:.3f}")
    return text, seconds


def run_tests(text: str, root: Path, target: Path, deselect: list[str] | None = None,
              measure: bool = False, seconds: float = 300) -> tuple[int, list[str], dict[str, float]]:
    """(tests run, failing node ids, {line, branch} coverage of `target` in percent)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "test_subject.py").write_text(text)
        report = work / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", os.devnull,
                   "--rootdir", str(work), "test_subject.py", f"--junitxml={report}"]
        for node in deselect or []:
            command += ["--deselect", node]
        if measure:
            command = [sys.executable, "-m", "coverage", "run", "--branch", f"--include={target}",
                       "--data-file", str(work / ".coverage"), *command[1:]]
        env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
        try:
            subprocess.run(command, cwd=work, env=env, capture_output=True, timeout=seconds, check=False)
        except subprocess.TimeoutExpired:
            return 0, ["<timeout>"], {}
        failing, total = _junit(report)
        figures: dict[str, float] = {}
        if measure:
            subprocess.run([sys.executable, "-m", "coverage", "json", "--data-file", str(work / ".coverage"),
                            "-o", str(work / "cov.json")], cwd=work, capture_output=True, check=False)
            if (work / "cov.json").exists():
                totals = json.loads((work / "cov.json").read_text())["totals"]
                figures = {
                    "line": 100 * totals["covered_lines"] / max(totals["num_statements"], 1),
                    "branch": 100 * totals["covered_branches"] / max(totals["num_branches"], 1),
                }
            else:
                figures = {"line": 0.0, "branch": 0.0}
        return total, failing, figures


def _junit(report: Path) -> tuple[list[str], int]:
    import xml.etree.ElementTree as ElementTree

    if not report.exists():
        return ["<no report>"], 0
    failing, total = [], 0
    for case in ElementTree.parse(report).iter("testcase"):
        total += 1
        if case.find("failure") is not None or case.find("error") is not None:
            classname = case.get("classname", "").split(".")[-1]
            name = case.get("name", "")
            node = f"test_subject.py::{classname}::{name}" if classname.startswith("Test") else (
                f"test_subject.py::{name}")
            failing.append(node)
    return failing, total


def shared_mutants(source: str, count: int) -> list[str]:
    """Every k-th mutant's source, the same for both tools: operators, comparisons, constants, conditions,
    returns and jumps (the kinds the recorded results used; statement removal is left out)."""
    tree = ast.parse(source)
    every = [m for m in mutate.mutants(tree) if m.how.split(":")[0] not in ("stmt", "assign")]
    step = max(1, len(every) // count)
    chosen = every[::step][:count]
    return [ast.unparse(mutate.apply(ast.parse(source), m)) for m in chosen]


def mutation_score(text: str, root: Path, file: str, deselect: list[str], mutants: list[str]) -> int:
    killed = 0
    for mutant in mutants:
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "root"
            shutil.copytree(root, copy)
            (copy / file).write_text(mutant)
            # A mutant that makes the tests hang is killed (as mutation tools count a timeout).
            total, failing, _ = run_tests(text, copy, copy / file, deselect, seconds=MUTANT_SECONDS)
            remaining = [f for f in failing if f not in deselect]
            killed += bool(remaining) or total == 0
    return killed


def evaluate(text: str, root: Path, file: str, mutants: list[str]) -> dict[str, Any]:
    if not text.strip():
        return {"tests": 0, "failing": 0, "line": 0.0, "branch": 0.0, "killed": 0}
    total, failing, _ = run_tests(text, root, root / file)
    _, _, figures = run_tests(text, root, root / file, failing, measure=True)
    passing = total - len(failing)
    killed = mutation_score(text, root, file, failing, mutants) if passing else 0
    return {"tests": total, "failing": len(failing), **figures, "killed": killed}


def main(argv: list[str] | None = None) -> None:
    options = parse_args(argv)
    venv = pynguin_env()
    rows: list[dict[str, Any]] = []
    print("| module | tool | seconds | tests | failing | line % | branch % | mutants killed |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for requirement, module, file in MODULES:
        if options.only and module not in options.only:
            continue
        root = fetch(requirement)
        source = (root / file).read_text()
        mutants = shared_mutants(source, options.mutants)
        our_text, our_seconds, _ = ours(root, file, options.budget)
        runs = [("aqe", our_text, our_seconds)]
        if not options.skip_pynguin:
            runs.append(("pynguin", *pynguin_cached(venv, root, module, options)))
        for tool, text, seconds in runs:
            figures = evaluate(text, root, file, mutants)
            row = {"module": module, "tool": tool, "seconds": seconds, "mutants": len(mutants), **figures}
            rows.append(row)
            print(f"| {module} | {tool} | {seconds:.1f} | {row['tests']} | {row['failing']} | "
                  f"{row['line']:.1f} | {row['branch']:.1f} | {row['killed']}/{len(mutants)} |", flush=True)
    print()
    for tool in ("aqe", "pynguin"):
        mine = [r for r in rows if r["tool"] == tool]
        if not mine:
            continue
        killed = sum(r["killed"] for r in mine)
        total = sum(r["mutants"] for r in mine)
        print(f"{tool}: mean seconds {statistics.mean(r['seconds'] for r in mine):.1f}, "
              f"tests {sum(r['tests'] for r in mine)}, failing {sum(r['failing'] for r in mine)}, "
              f"mean line {statistics.mean(r['line'] for r in mine):.1f}%, "
              f"mean branch {statistics.mean(r['branch'] for r in mine):.1f}%, "
              f"mutation score {100 * killed / max(total, 1):.1f}% ({killed}/{total})")


if __name__ == "__main__":
    main()
