"""Peak memory and time of parsing one large JUnit report (issue 17 item 4).

    .venv/bin/python bench/junit_memory.py [--mib 28] [--parser PATH]

Writes `junit_many_cases(--mib)` from tests/adversarial_reports.py to a temporary file, reads it, parses it
and prints the peak RSS above the input already held in memory. `--parser` loads `parse` from another
junit.py (e.g. an older version taken with `git show REV:qe_appliance/quality/junit.py`) for a before/after.
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qe_appliance.quality import junit  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=28, help="size argument of junit_many_cases (default 28)")
    parser.add_argument("--parser", help="path of another junit.py to measure instead")
    args = parser.parse_args()
    parse = junit.parse
    if args.parser:
        spec = importlib.util.spec_from_file_location("junit_under_test", args.parser)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        parse = module.parse
    with tempfile.NamedTemporaryFile(suffix=".xml") as handle:
        # Written by a child process, so building it does not set this process's peak RSS.
        root = Path(__file__).resolve().parent.parent
        write = (
            "from tests.adversarial_reports import junit_many_cases as m; "
            f"open({handle.name!r}, 'wb').write(m({args.mib * 2**20}))"
        )
        subprocess.run([sys.executable, "-c", write], cwd=root, check=True)
        data = Path(handle.name).read_bytes()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    result = parse(data)
    seconds = time.perf_counter() - started
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    size = len(data) / 2**20
    print(f"{size:.0f} MiB, {result.tests} test cases: {seconds:.2f} s, peak RSS +{peak:.0f} MiB over the input")
    return 0


if __name__ == "__main__":
    sys.exit(main())
