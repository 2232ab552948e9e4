"""Fleet benchmark: agent spawn-to-ready, pool hit rate under steady load, the latency a fleet call adds
over a local call, and how CPU-bound throughput scales with agents.

    .venv/bin/python bench/fleet_bench.py [--spawns 20] [--calls 2000] [--burn 200000]

Runs real agent processes (forkserver) in a temporary state directory; nothing listens on the network.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qe_appliance.config import apply_overrides, load_config  # noqa: E402
from qe_appliance.fleet.compute import compute  # noqa: E402

CATEGORY = "quality-assessment"
# Agents import this file as bench.fleet_bench (fleet.preload); run as a script it is __main__.
MODULE = "bench.fleet_bench"


@compute
def echo(payload: Any) -> Any:
    return payload


@compute
def burn(n: int) -> int:
    return sum(i * i for i in range(n))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def make_fleet(tmp: Path, agents: int, capacity: int = 1, min_conns: int = 2, max_agents: int = 64) -> Any:
    from qe_appliance.fleet.runtime import Fleet

    path = tmp / f"c{agents}.yaml"
    path.write_text(json.dumps({
        "server": {"stateDir": str(tmp / "state")},
        "fleet": {"agents": {"generalist": agents}, "capacity": capacity, "maxAgents": max_agents,
                  "preload": ["bench.fleet_bench"]},
        "pool": {"minConnections": min_conns, "maxConnections": 50},
    }))
    return Fleet(apply_overrides(load_config(path)))


async def spawn_times(tmp: Path, n: int) -> list[float]:
    fleet = make_fleet(tmp, 1)
    await fleet.start()  # the forkserver's own start is not an agent spawn: it happens once per server
    try:
        times = []
        for _ in range(n):
            started = time.perf_counter()
            await fleet.spawn("generalist")
            times.append((time.perf_counter() - started) * 1000)
        return times
    finally:
        await fleet.stop(5)


async def hit_rate_and_overhead(tmp: Path, calls: int) -> dict[str, Any]:
    fleet = make_fleet(tmp, 2, min_conns=2)
    await fleet.start()
    try:
        fn = f"{MODULE}:{echo.__qualname__}"
        payload = {"file": "src/app.py", "lines": list(range(50))}
        for _ in range(50):  # warm-up
            await fleet.run(CATEGORY, fn, payload, 10, idempotent=True)
        before = fleet.pool.stats()
        fleet_us = []
        for _ in range(calls):
            started = time.perf_counter()
            await fleet.run(CATEGORY, fn, payload, 10, idempotent=True)
            fleet_us.append((time.perf_counter() - started) * 1e6)
        # Steady concurrent load at the fleet's capacity (2 agents x 1).
        for _ in range(calls // 2):
            await asyncio.gather(*(fleet.run(CATEGORY, fn, payload, 10, idempotent=True) for _ in range(2)))
        after = fleet.pool.stats()
        thread_us = []
        for _ in range(calls):
            started = time.perf_counter()
            await asyncio.to_thread(echo, payload)
            thread_us.append((time.perf_counter() - started) * 1e6)
        direct_us = []
        for _ in range(calls):
            started = time.perf_counter()
            echo(payload)
            direct_us.append((time.perf_counter() - started) * 1e6)
        acquires = after.acquires - before.acquires
        hits = after.hits - before.hits
        return {
            "acquires": acquires,
            "hitRate": hits / acquires,
            "opened": after.opened,
            "fleet_p50_us": statistics.median(fleet_us),
            "fleet_p99_us": pct(fleet_us, 0.99),
            "thread_p50_us": statistics.median(thread_us),
            "direct_p50_us": statistics.median(direct_us),
        }
    finally:
        await fleet.stop(5)


async def scaling(tmp: Path, work: int, agents_list: list[int], seconds: float) -> dict[int, float]:
    out = {}
    for agents in agents_list:
        (tmp / f"s{agents}").mkdir(exist_ok=True)
        fleet = make_fleet(tmp / f"s{agents}", agents, min_conns=agents)
        await fleet.start()
        try:
            started = time.perf_counter()
            counts = await asyncio.gather(*(_burn_until(fleet, work, started + seconds) for _ in range(agents)))
            out[agents] = sum(counts) / (time.perf_counter() - started)
        finally:
            await fleet.stop(5)
    return out


async def _burn_until(fleet: Any, work: int, end: float) -> int:
    done = 0
    while time.perf_counter() < end:
        await fleet.run(CATEGORY, f"{MODULE}:{burn.__qualname__}", work, 60, idempotent=True)
        done += 1
    return done


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spawns", type=int, default=20)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--burn", type=int, default=200_000, help="work per CPU-bound call (squares summed)")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each scaling run")
    args = parser.parse_args()
    print("$ " + " ".join([os.path.relpath(sys.executable), *sys.argv]))
    print(f"cores: {os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        spawns = await spawn_times(tmp, args.spawns)
        print(f"agent spawn-to-ready: p50 {statistics.median(spawns):.1f} ms, p95 {pct(spawns, 0.95):.1f} ms, "
              f"max {max(spawns):.1f} ms over {len(spawns)} spawns (goal p95 <= 50 ms)")
        r = await hit_rate_and_overhead(tmp, args.calls)
        print(f"pool hit rate at steady load: {r['hitRate'] * 100:.2f}% of {r['acquires']} acquires, "
              f"{r['opened']} connections opened in all (goal >= 99%)")
        added = r["fleet_p50_us"] - r["direct_p50_us"]
        print(f"fleet call (echo, 50-int payload): p50 {r['fleet_p50_us']:.0f} us, p99 {r['fleet_p99_us']:.0f} us; "
              f"worker-thread call p50 {r['thread_p50_us']:.0f} us; direct call p50 {r['direct_p50_us']:.1f} us")
        print(f"added latency of a fleet call over a local call: p50 {added:.0f} us (goal <= 150 us)")
        rates = await scaling(tmp, args.burn, [1, 2], args.seconds)
        base = rates[1]
        for agents, rate in rates.items():
            print(f"CPU-bound burn({args.burn}): {agents} agent(s): {rate:.1f} calls/s ({rate / base:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
