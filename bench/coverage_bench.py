"""Coverage and quality benchmark: the four tools end to end over HTTP, and the parsers at scale.

1. A generated 200-module Python package with 200 pytest files is run under coverage.py for real
   (`coverage run --branch -m pytest --junitxml`), giving a real coverage.py JSON, Cobertura XML and LCOV
   report and a real JUnit file. A server started on that directory (workspaceRoots) is then called one
   request at a time over a keep-alive connection: qe_coverage_analyze on each report, qe_coverage_gaps on
   the stored report, qe_quality_metrics on the package, qe_quality_gate from those inputs. Each call is
   timed by the client (request written to response read) after warm-up calls that fill every agent's
   caches; the first, cold call of gaps and metrics is reported too.
2. Scale: a 50 MB LCOV tracefile (c8-style records) and a 10,000-file Cobertura report (coverage.py-style)
   analysed through the server (read, parse on an agent, store; 3 calls each), and their parse time in
   this process, best and median of several runs (the previous result freed outside the timing).

Run: `python bench/coverage_bench.py` (`--help` for the knobs).
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import http_bench
from http_bench import BenchError
from memory_bench import McpClient

if str(http_bench.REPO) not in sys.path:
    sys.path.insert(0, str(http_bench.REPO))

from qe_appliance.coverage.formats import parse_report  # noqa: E402
from qe_appliance.coverage.model import report_totals  # noqa: E402
from tests.fixtures.coverage.samples import run_coverage  # noqa: E402

# The design's targets, in ms.
TARGETS_MS = {
    "qe_coverage_analyze": 200.0,
    "qe_coverage_gaps": 100.0,
    "qe_quality_gate": 100.0,
    "qe_quality_metrics": 50.0,
}
PARSE_TARGET_S = 1.0
LARGE_REPORTS = ("big.lcov", "big-cobertura.xml")

MODULE = '''"""Module {i}: prices, stock and a report, as a real package would hold them."""

from __future__ import annotations

RATES_{i} = {{"standard": 0.2, "reduced": 0.05}}


def net_price_{i}(price: float, quantity: int) -> float:
    if quantity <= 0:
        raise ValueError("quantity must be positive")
    return price * quantity


def discount_{i}(total: float, code: str | None) -> float:
    if code is None:
        return total
    if code == "HALF":
        return total / 2
    if code.startswith("MINUS"):
        return max(0.0, total - float(code[5:]))
    raise ValueError(code)


class Stock{i}:
    def __init__(self) -> None:
        self.items: dict[str, int] = {{}}

    def add(self, sku: str, count: int) -> None:
        if count <= 0:
            raise ValueError("count must be positive")
        self.items[sku] = self.items.get(sku, 0) + count

    def take(self, sku: str, count: int) -> int:
        have = self.items.get(sku, 0)
        if have < count:
            raise KeyError(sku)
        self.items[sku] = have - count
        return self.items[sku]

    def rebalance(self, other: Stock{i}, threshold: int) -> list[tuple[str, int]]:
        moves = []
        for sku, count in sorted(self.items.items()):
            if count <= threshold:
                continue
            need = threshold - other.items.get(sku, 0)
            if need <= 0:
                continue
            moved = min(count - threshold, need)
            self.items[sku] -= moved
            other.items[sku] = other.items.get(sku, 0) + moved
            moves.append((sku, moved))
        return moves


def report_{i}(stock: Stock{i}) -> str:
    lines = []
    for sku in sorted(stock.items):
        flag = "LOW" if stock.items[sku] < 5 else ""
        lines.append(f"{{sku:10}} {{stock.items[sku]:5}} {{flag}}")
    return "\\n".join(lines)
'''

# Four test depths, so coverage varies from module to module.
TESTS = [
    "def test_price():\n    assert m.net_price_{i}(2.0, 3) == 6.0\n",
    "def test_discount():\n    assert m.discount_{i}(10.0, 'HALF') == 5.0\n"
    "    assert m.discount_{i}(10.0, None) == 10.0\n",
    "def test_stock():\n    s = m.Stock{i}()\n    s.add('a', 5)\n    assert s.take('a', 2) == 3\n",
    "def test_rebalance():\n    a, b = m.Stock{i}(), m.Stock{i}()\n    a.add('x', 20)\n"
    "    assert a.rebalance(b, 5) == [('x', 5)]\n",
]


def make_project(root: Path, modules: int) -> None:
    (root / "pkg").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "pkg" / "__init__.py").write_text('"""Generated package."""\n')
    for i in range(modules):
        (root / "pkg" / f"mod_{i:03}.py").write_text(MODULE.format(i=i))
        body = "".join(test.format(i=i) + "\n\n" for test in TESTS[: 1 + i % 4])
        if i % 50 == 7:
            body += f"def test_known_bug():\n    assert m.discount_{i}(10.0, 'MINUS3') == 6.0\n"
        (root / "tests" / f"test_mod_{i:03}.py").write_text(f"import pkg.mod_{i:03} as m\n\n\n{body}")


def lcov_tracefile(target_bytes: int, seed: int = 1) -> bytes:
    """c8-style records (FN/FNDA, DA, BRDA with the usual proportions) until `target_bytes` is reached."""
    rng = random.Random(seed)
    out: list[str] = []
    size = index = 0
    while size < target_bytes:
        lines = rng.randint(60, 1400)
        functions = max(1, lines // 30)
        record = [f"TN:\nSF:src/module{index // 100}/file{index}.ts\n"]
        record += [f"FN:{f * 30 + 1},fn{f}\n" for f in range(functions)]
        record.append(f"FNF:{functions}\nFNH:{functions}\n")
        record += [f"FNDA:{rng.choice((0, 1, 4, 17))},fn{f}\n" for f in range(functions)]
        executable = [n for n in range(1, lines) if rng.random() < 0.7]
        record += [f"DA:{n},{rng.choice((0, 1, 2, 9, 120))}\n" for n in executable]
        record.append(f"LF:{len(executable)}\nLH:{len(executable)}\n")
        branch_lines = [n for n in executable if rng.random() < 0.12]
        record += [
            f"BRDA:{n},{b},{k},{rng.choice(('-', '0', '3'))}\n"
            for b, n in enumerate(branch_lines)
            for k in range(2)
        ]
        record.append(f"BRF:{2 * len(branch_lines)}\nBRH:0\nend_of_record\n")
        text = "".join(record)
        out.append(text)
        size += len(text)
        index += 1
    return "".join(out).encode()


def cobertura_report(files: int, seed: int = 2) -> bytes:
    """coverage.py-style Cobertura: one class per file, branch lines with condition-coverage."""
    rng = random.Random(seed)
    out = [
        '<?xml version="1.0" ?>\n<coverage version="7.6" timestamp="1" lines-valid="0" lines-covered="0" '
        'line-rate="0" branches-covered="0" branches-valid="1" branch-rate="0" complexity="0">\n'
        "\t<sources>\n\t\t<source>/repo</source>\n\t</sources>\n\t<packages>\n"
    ]
    for package in range(files // 100):
        out.append(
            f'\t\t<package name="pkg{package}" line-rate="0.5" branch-rate="0.5" complexity="0">\n'
            "\t\t\t<classes>\n"
        )
        for module in range(100):
            out.append(
                f'\t\t\t\t<class name="mod{module}.py" filename="pkg{package}/mod{module}.py" '
                'complexity="0" line-rate="0.5" branch-rate="0.5">\n\t\t\t\t\t<methods/>\n\t\t\t\t\t<lines>\n'
            )
            for line in range(1, rng.randint(40, 160)):
                if rng.random() < 0.3:
                    continue
                hits = rng.choice((0, 1, 1, 3))
                if rng.random() < 0.15:
                    taken = rng.randint(0, 2)
                    out.append(
                        f'\t\t\t\t\t\t<line number="{line}" hits="{hits}" branch="true" '
                        f'condition-coverage="{taken * 50}% ({taken}/2)" missing-branches="{line + 2}"/>\n'
                    )
                else:
                    out.append(f'\t\t\t\t\t\t<line number="{line}" hits="{hits}"/>\n')
            out.append("\t\t\t\t\t</lines>\n\t\t\t\t</class>\n")
        out.append("\t\t\t</classes>\n\t\t</package>\n")
    out.append("\t</packages>\n</coverage>\n")
    return "".join(out).encode()


def parse_times(name: str, data: bytes, runs: int) -> str:
    times = []
    report = None
    for _ in range(runs):
        report = None  # the previous result is freed outside the timed part
        started = time.perf_counter()
        report = parse_report(data, "auto", "/repo")
        times.append(time.perf_counter() - started)
    assert report is not None
    totals = report_totals(report.files)
    verdict = "ok" if min(times) <= PARSE_TARGET_S else "OVER"
    return (
        f"{name:<44} {len(data) / 1e6:8.1f} MB {len(report.files):>7} files {totals.lines.total:>9} lines "
        f"best {min(times):6.3f} s  median {statistics.median(times):6.3f} s  "
        f"(<= {PARSE_TARGET_S:g} s {verdict})"
    )


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def timed(client: McpClient, tool: str, arguments: dict, calls: int, warmup: int) -> tuple[list[float], dict]:
    result: dict = {}
    for _ in range(warmup):
        client.call(tool, arguments)
    samples = []
    for _ in range(calls):
        elapsed, result = client.call(tool, arguments)
        samples.append(elapsed)
    return samples, result


def end_to_end(root: Path, workdir: Path, calls: int, warmup: int) -> list[str]:
    port = http_bench.free_port()
    state = workdir / "state"
    state.mkdir()
    config = http_bench.write_config(state, port)
    config.write_text(config.read_text() + f"  workspaceRoots: [{str(root)!r}]\n")
    command = http_bench.ours_command(config, port)
    print(shlex.join(command), flush=True)
    server = http_bench.start_server("coverage", command, port, workdir)
    rows = []
    try:
        http_bench.wait_ready(server)
        client = McpClient(port)
        try:
            cold_gaps = cold_metrics = None
            report_id = ""
            for name in ("coverage.json", "coverage.xml", "coverage.lcov"):
                samples, result = timed(client, "qe_coverage_analyze", {"path": name}, calls, warmup)
                report_id = result["reportId"]
                if cold_gaps is None:
                    cold_gaps = client.call("qe_coverage_gaps", {"reportId": report_id})[0]
                    cold_metrics = client.call("qe_quality_metrics", {"path": "pkg"})[0]
                size = (root / name).stat().st_size
                what = f"{name} ({size / 1e3:.0f} kB, {result['files']} files)"
                rows.append(row("qe_coverage_analyze", what, samples))
            # Warm-up calls land on every agent (the balancer spreads them), so each has its caches filled.
            samples, gaps = timed(client, "qe_coverage_gaps", {"reportId": report_id}, calls, warmup)
            rows.append(
                row(
                    "qe_coverage_gaps",
                    f"reportId, {gaps['gapsTotal']} gaps (cold: {(cold_gaps or 0) * 1000:.0f} ms)",
                    samples,
                )
            )
            samples, metrics = timed(client, "qe_quality_metrics", {"path": "pkg"}, calls, warmup)
            rows.append(
                row(
                    "qe_quality_metrics",
                    f"pkg: {metrics['totals']['files']} files, "
                    f"{metrics['totals']['sloc']} SLOC (cold: {(cold_metrics or 0) * 1000:.0f} ms)",
                    samples,
                )
            )
            inputs = {"coverageReport": report_id, "junitXml": "junit.xml", "sourcePath": "pkg"}
            samples, gate = timed(
                client, "qe_quality_gate", {"policyName": "default", "inputs": inputs}, calls, warmup
            )
            rows.append(row("qe_quality_gate", f"from report + JUnit + sources: {gate['verdict']}", samples))
            given = {
                "lineCoverage": 81.5,
                "branchCoverage": 72.0,
                "maxComplexity": 9,
                "failedTests": 0,
                "maintainability": 60.0,
                "criticalGaps": 0,
                "skippedRatio": 0.01,
            }
            samples, _ = timed(
                client, "qe_quality_gate", {"policyName": "default", "metrics": given}, calls, warmup
            )
            rows.append(row("qe_quality_gate", "metrics given", samples))
            for name in LARGE_REPORTS:
                samples, _ = timed(client, "qe_coverage_analyze", {"path": name}, 3, 0)
                size = (root / name).stat().st_size
                what = f"{name} ({size / 1e6:.0f} MB): read, parse, store"
                rows.append(row("qe_coverage_analyze", what, samples, target=False))
        finally:
            client.close()
        if server.process.poll() is not None:
            raise BenchError(f"the server died during the run; its log:\n{http_bench.log_tail(server.log)}")
    finally:
        http_bench.stop_server(server)
    return rows


def row(tool: str, what: str, samples: list[float], target: bool = True) -> str:
    p50, p95 = percentile(samples, 0.5), percentile(samples, 0.95)
    verdict = "ok" if p95 <= TARGETS_MS[tool] else "OVER"
    goal = f"< {TARGETS_MS[tool]:g} ms {verdict}" if target else "(scale: no latency target)"
    return f"{tool:<20} {what:<58} {len(samples):>5} {p50:8.1f} {p95:8.1f}  {goal}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modules", type=int, default=200, help="modules in the generated package")
    parser.add_argument("--calls", type=int, default=50, help="timed calls per operation")
    parser.add_argument("--warmup", type=int, default=6, help="untimed calls before each operation")
    parser.add_argument("--lcov-mb", type=float, default=50.0, help="size of the generated LCOV tracefile")
    parser.add_argument(
        "--cobertura-files", type=int, default=10_000, help="files in the generated Cobertura"
    )
    parser.add_argument("--parse-runs", type=int, default=5, help="parses of each large report")
    parser.add_argument("--keep", action="store_true", help="keep the generated project and logs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    workdir = Path(tempfile.mkdtemp(prefix="aqe-coverage-bench-"))
    failure = None
    try:
        with http_bench.interrupt_on_sigterm():
            root = workdir / "project"
            make_project(root, args.modules)
            started = time.perf_counter()
            try:
                run_coverage(root, "pkg")
            except RuntimeError as exc:
                raise BenchError(str(exc)) from None
            took = time.perf_counter() - started
            print(f"coverage.py over {args.modules} modules and their tests: {took:.1f} s", flush=True)
            large = {
                "big.lcov": ("LCOV tracefile (c8-style records)", lcov_tracefile(int(args.lcov_mb * 1e6))),
                "big-cobertura.xml": (
                    f"Cobertura, {args.cobertura_files} files (coverage.py-style)",
                    cobertura_report(args.cobertura_files),
                ),
            }
            for name, (_, data) in large.items():
                (root / name).write_bytes(data)
            rows = end_to_end(root, workdir, args.calls, args.warmup)
            print(f"\n{'tool':<20} {'input':<58} {'calls':>5} {'p50 ms':>8} {'p95 ms':>8}  target")
            for line in rows:
                print(line)
            print("\nparse only, in process:")
            for title, data in large.values():
                print(parse_times(title, data, args.parse_runs))
    except (BenchError, KeyboardInterrupt) as exc:
        failure = f"error: {exc}" if isinstance(exc, BenchError) else "interrupted"
    finally:
        if failure is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"files kept in {workdir}")
    if failure is not None:
        print(failure, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
