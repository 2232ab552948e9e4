"""What our server's start-up imports: start it once under `python -X importtime` (HTTP, as http_bench does),
wait for /readyz 200 (fleet warm), stop it, and summarise the import log: total, the top costs by module and
by top-level package, and the modules imported in more than one process (the forkserver and agents inherit -X).

    python bench/importtime_bench.py [--top 15]
"""

from __future__ import annotations

import argparse
import compileall
import re
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import http_bench as hb

LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)$")


@dataclass(frozen=True)
class Import:
    self_us: int
    cumulative_us: int
    depth: int
    name: str


def parse(log: str) -> list[Import]:
    imports = []
    for line in log.splitlines():
        match = LINE.match(line)
        if match:
            self_us, cumulative_us, indent, name = match.groups()
            imports.append(Import(int(self_us), int(cumulative_us), len(indent) // 2, name))
    return imports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--top", type=int, default=15, help="rows per table (default 15)")
    args = parser.parse_args(argv)
    # Bytecode first, as `pip install .` leaves it: otherwise this measures compiling, not importing.
    compileall.compile_dir(hb.REPO / "qe_appliance", quiet=1)
    with tempfile.TemporaryDirectory(prefix="aqe-importtime-") as tmp:
        workdir = Path(tmp)
        state_dir = workdir / "state"
        hb.seed_store(state_dir, 10)
        port = hb.free_port()
        config = hb.write_config(state_dir, port)
        command = [sys.executable, "-X", "importtime", "-m", "qe_appliance.cli", "mcp", "start", "--config",
                   str(config), "--port", str(port)]  # fmt: skip
        server = hb.start_server("ours", command, port, workdir)
        try:
            ready = hb.wait_ready(server)
        except hb.BenchError as exc:
            print(f"importtime_bench: {exc}", file=sys.stderr)
            return 1
        finally:
            hb.stop_server(server)
        imports = parse(server.log.read_text(errors="replace"))
    if not imports:
        print("importtime_bench: the server's log holds no `import time:` lines", file=sys.stderr)
        return 1
    total_ms = sum(i.self_us for i in imports) / 1000
    top_level_ms = sum(i.cumulative_us for i in imports if i.depth == 0) / 1000
    print(f"command: {' '.join(command)}")
    print(f"spawn to /readyz 200 under -X importtime: {ready * 1000:.0f} ms")
    print(
        f"{len(imports)} imports logged (all processes), {total_ms:.1f} ms of import time in all "
        f"({top_level_ms:.1f} ms by top-level cumulative)"
    )
    print(f"\ntop {args.top} by cumulative time, top-level imports (ms)")
    for item in sorted((i for i in imports if i.depth == 0), key=lambda i: -i.cumulative_us)[: args.top]:
        print(f"  {item.cumulative_us / 1000:8.1f}  {item.name}")
    print(f"\ntop {args.top} by own time (ms)")
    for item in sorted(imports, key=lambda i: -i.self_us)[: args.top]:
        print(f"  {item.self_us / 1000:8.1f}  {item.name}")
    packages: Counter[str] = Counter()
    for item in imports:
        packages[item.name.split(".")[0]] += item.self_us
    print(f"\ntop {args.top} top-level packages by own time, summed (ms)")
    for name, self_us in packages.most_common(args.top):
        print(f"  {self_us / 1000:8.1f}  {name}")
    repeated = [name for name, count in Counter(i.name for i in imports).items() if count > 1]
    repeated_ms = sum(i.self_us for i in imports if i.name in repeated) / 1000
    costliest = sorted(repeated, key=lambda n: -sum(i.self_us for i in imports if i.name == n))[:10]
    print(f"\n{len(repeated)} modules imported in more than one process, {repeated_ms:.1f} ms together; the costliest:")
    print("  " + ", ".join(costliest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
