"""Orchestrated CPU-bound subtasks per second with 1, 2 and 3 aqe-mcp instances on one PostgreSQL database
(each instance with the same fixed fleet), submitted to one instance directly and, with 3, through HAProxy.

    .venv/bin/python bench/scale_bench.py [--subtasks 24] [--files 4] [--agents 1] [--runs 3]

Each subtask is qe_quality_metrics (radon: complexity and maintainability) over its own directory of --files
copies of a 1000-line module, run on the agents (new directories for every run: an agent keeps what it
parsed). One `qe_task_orchestrate` with `wait: true` per run: the time from submit to its answer, and the CPU
time (user + system) every process of every instance used meanwhile (servers and agents, read from /proc),
divided by the subtasks. Needs Debian's postgresql and haproxy.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from pg import PostgresServer  # noqa: E402
from scaleout import Cluster  # noqa: E402

from tests.test_http_edges import modern  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(roots: list[int]) -> float:
    """User + system CPU of the processes under `roots` (themselves included), children that exited included."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
        except (FileNotFoundError, IndexError):
            continue
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        # utime, stime, cutime, cstime: fields 14-17 of stat, 12-15 after the name.
        times[pid] = sum(int(v) for v in fields[11:15]) / TICKS
    family, frontier = set(roots), list(roots)
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in family]
        family.update(children)
        frontier += children
    return sum(times.get(pid, 0.0) for pid in family)


class Projects:
    """A new directory of `files` copies of a 1000-line module for every subtask."""

    def __init__(self, root: Path, files: int) -> None:
        self.root = root
        self.files = files
        self.source = (REPO / "qe_appliance" / "store" / "postgres.py").read_text()
        self.made = 0

    def make(self, count: int) -> list[str]:
        paths = []
        for _ in range(count):
            self.made += 1
            directory = self.root / f"p{self.made}"
            directory.mkdir(parents=True)
            for n in range(self.files):
                (directory / f"m{n}.py").write_text(self.source)
            paths.append(str(directory))
        return paths


def orchestrate(host: str, port: int, paths: list[str]) -> dict[str, Any]:
    subtasks = len(paths)
    body, headers = modern("tools/call", {"name": "qe_task_orchestrate", "arguments": {
        "task": {"tool": "qe_quality_metrics", "inputs": [{"path": path} for path in paths]}, "wait": True}})
    headers.update({"Content-Type": "application/json", "Accept": "application/json, text/event-stream"})
    conn = http.client.HTTPConnection(host, port, timeout=600)
    conn.request("POST", "/mcp", json.dumps(body), headers)
    response = conn.getresponse()
    raw = response.read()
    conn.close()
    result = json.loads(raw)["result"]
    if result.get("isError") or result["structuredContent"]["task"]["completed"] != subtasks:
        raise RuntimeError(f"the task did not complete: {raw[:500]!r}")
    return dict(result["structuredContent"]["task"])


def measure(
    cluster: Cluster, projects: Projects, args: argparse.Namespace, through_proxy: bool, postgres: PostgresServer
) -> dict[str, Any]:
    pids = [srv.proc.pid for srv in cluster.instances]
    database = [int((postgres.data / "postmaster.pid").read_text().split()[0])]
    if through_proxy:
        assert cluster.proxy is not None
        host, port = cluster.proxy.host, cluster.proxy.port
    else:
        host, port = cluster.instances[0].host, int(cluster.instances[0].port)
    orchestrate(host, port, projects.make(len(cluster.instances) * args.agents))  # warm-up: agents import radon
    rates, cpus, db_cpus, spread = [], [], [], []
    for _ in range(args.runs):
        paths = projects.make(args.subtasks)
        cpu_before, db_before, started = cpu_seconds(pids), cpu_seconds(database), time.perf_counter()
        task = orchestrate(host, port, paths)
        elapsed = time.perf_counter() - started
        rates.append(args.subtasks / elapsed)
        cpus.append((cpu_seconds(pids) - cpu_before) / args.subtasks * 1000)
        db_cpus.append((cpu_seconds(database) - db_before) / args.subtasks * 1000)
        spread.append(len({sub["instance"] for sub in task["subtasks"]}))
    return {"rate": statistics.median(rates), "cpu_ms": statistics.median(cpus), "db_ms": statistics.median(db_cpus),
            "instances_used": max(spread), "rates": rates}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subtasks", type=int, default=24)
    parser.add_argument("--files", type=int, default=4, help="files measured by each subtask")
    parser.add_argument("--agents", type=int, default=1, help="agents per instance")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"machine: {os.cpu_count()} CPUs; {args.agents} generalist agent(s) per instance; {args.subtasks} "
          f"subtasks of qe_quality_metrics over {args.files} files; median of {args.runs} runs")
    work = Path(tempfile.mkdtemp(prefix="aqe-scale-bench-", dir="/tmp"))
    work.chmod(0o755)  # the PostgreSQL cluster runs as an unprivileged user, who must reach its directory
    project = work / "project"
    projects = Projects(project, args.files)
    (work / "pg").mkdir(mode=0o755)
    postgres = PostgresServer(work / "pg")
    postgres.init()
    rows: list[tuple[str, dict[str, Any]]] = []
    try:
        for count in (1, 2, 3):
            tmp = work / f"n{count}"
            tmp.mkdir()
            # The whole task in the answer (maxResultTextBytes), not a summary with a link.
            extra = {"server": {"workspaceRoots": [str(project)], "maxResultTextBytes": 1 << 26},
                     "fleet": {"agents": {"generalist": args.agents}, "leaseMs": 30000, "heartbeatMs": 1000}}
            cluster = Cluster(tmp, postgres, extra, count=count)
            try:
                rows.append((f"{count} instance{'s' if count > 1 else ''}, submitted to one",
                             measure(cluster, projects, args, through_proxy=False, postgres=postgres)))
                if count == 3:
                    rows.append(("3 instances, submitted through HAProxy",
                                 measure(cluster, projects, args, through_proxy=True, postgres=postgres)))
            finally:
                cluster.stop()
    finally:
        postgres.stop("immediate")
    base = rows[0][1]["rate"]
    # Cores busy = subtasks/s x CPU s per subtask: how much of the machine the instances got.
    # PostgreSQL's CPU per subtask (queue, leases, results, heartbeats) bounds what more machines can add.
    print(f"\n{'setup':42} {'subtasks/s':>10} {'x 1 inst':>8} {'CPU ms/subtask':>15} {'cores busy':>10} "
          f"{'PG CPU ms/subtask':>17} {'instances used':>15}")
    for name, row in rows:
        print(f"{name:42} {row['rate']:10.2f} {row['rate'] / base:8.2f} {row['cpu_ms']:15.0f} "
              f"{row['rate'] * row['cpu_ms'] / 1000:10.2f} {row['db_ms']:17.1f} {row['instances_used']:15d}   "
              f"runs: {', '.join(f'{r:.2f}' for r in row['rates'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
