"""The Python-side CPU of one HTTP `tools/call` of qe_memory_retrieve, without the sockets: the appliance is
built in this process (real config, stores, registry, routes and HTTP protocol), and wrk's exact request bytes
are fed to its HttpProtocol through an in-memory transport, one request and one turn of the event loop at a time,
answers checked.

What it leaves out (syscalls, the event loop's polling, the kernel's TCP) is what a wrk run adds; what it keeps
moves far less with other load on the machine than a wrk run does, so it tells one change's gain apart from
noise. CPU per call is process time over the calls; the minimum over repeats is reported (the least disturbed).

    .venv/bin/python bench/hotpath_bench.py [--calls 20000] [--repeats 7]
    .venv/bin/python bench/hotpath_bench.py --against /tmp/base --runs 6   # this tree against another checkout

With --against, runs of this tree and of the other checkout's copy of this file alternate (A, B, B, A, ...),
each `--calls` (default there 5000) x `--repeats` (3), and the median of each tree's per-run minimums is
compared: one short run each way is what a shared machine leaves steady.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import http_bench as hb  # noqa: E402

from qe_appliance.app import App  # noqa: E402
from qe_appliance.config.loading import load_config  # noqa: E402

KEYS = 1000


class MemoryTransport(asyncio.Transport):
    """Collects what the protocol writes; enough of a transport for keep-alive request/answer."""

    def __init__(self) -> None:
        super().__init__()
        self.out: list[bytes] = []
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True


def request_bytes(n: int, port: int) -> bytes:
    """wrk_tools_call.lua's request n, byte for byte as wrk sends it."""
    body = hb.request_body(n, f"{hb.KEY_PREFIX}{n % KEYS}")
    headers = {"Host": f"127.0.0.1:{port}", **hb.request_headers(), "Content-Length": str(len(body))}
    head = "POST /mcp HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode() + body


async def measure(calls: int, repeats: int) -> list[float]:
    work = Path(tempfile.mkdtemp(prefix="aqe-hotpath-"))
    hb.seed_store(work, KEYS)
    port = 8080
    config = load_config(hb.write_config(work, port, {"rateLimit": {"requestsPerSecond": 0}}))
    app = App(config)
    app.state = None
    assert app.http is not None
    requests = [request_bytes(n, port) for n in range(KEYS)]
    conn = app.http.server._protocol()
    transport = MemoryTransport()
    conn.connection_made(transport)
    results = []
    for _ in range(repeats):
        transport.out.clear()
        started = time.process_time()
        for n in range(calls):
            conn.data_received(requests[n % KEYS])
            # One turn of the loop per call, as a server gets: a handler run in a Task answers in it.
            await asyncio.sleep(0)
        spent = time.process_time() - started
        if len(transport.out) != calls or not all(b'"found":true' in out for out in transport.out):
            raise SystemExit(f"expected {calls} found answers; got {len(transport.out)}: {transport.out[:1]!r}")
        results.append(spent / calls * 1e6)
    app.services.stores.close()
    return results


def alternate(other: Path, runs: int, calls: int, repeats: int) -> int:
    """This tree against `other` (a checkout with its kernels built), runs alternating; medians of minimums."""
    trees = {"this": REPO, "other": other.resolve()}
    for tree in trees.values():
        if not (tree / "bench" / "hotpath_bench.py").exists():
            shutil.copy(Path(__file__), tree / "bench" / "hotpath_bench.py")
    minimums: dict[str, list[float]] = {name: [] for name in trees}
    for n in range(runs):
        for name in list(trees) if n % 2 == 0 else list(reversed(trees)):
            command = [sys.executable, str(trees[name] / "bench" / "hotpath_bench.py"),
                       "--calls", str(calls), "--repeats", str(repeats)]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            found = re.search(r"min ([0-9.]+)", out)
            if found is None:
                raise SystemExit(f"{name}: no result in {out!r}")
            minimums[name].append(float(found.group(1)))
    medians = {name: statistics.median(values) for name, values in minimums.items()}
    for name, values in minimums.items():
        print(f"{name} ({trees[name]}): median of minimums {medians[name]:.1f} us CPU/call; runs "
              + ", ".join(f"{v:.1f}" for v in values))
    print(f"this / other: {medians['this'] / medians['other']:.3f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, help="calls per repeat (default 20000; with --against 5000)")
    parser.add_argument("--repeats", type=int, help="repeats per run (default 7; with --against 3)")
    parser.add_argument("--against", type=Path, help="another checkout to alternate runs with")
    parser.add_argument("--runs", type=int, default=6, help="runs of each tree with --against (default 6)")
    args = parser.parse_args()
    if args.against is not None:
        return alternate(args.against, args.runs, args.calls or 5000, args.repeats or 3)
    args.calls = args.calls or 20000
    args.repeats = args.repeats or 7
    results = uvloop.run(measure(args.calls, args.repeats))
    print(f"in-process tools/call: min {min(results):.2f} us CPU/call, median {statistics.median(results):.2f} "
          f"({args.repeats} x {args.calls} calls)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
