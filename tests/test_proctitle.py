"""Process titles: a real server's processes name themselves in /proc/PID/cmdline (what ps, top and
`systemctl status` show), so an operator can tell the server, the forkserver and each agent apart."""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import start_server


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        found += children
        frontier += children
    return found


def test_server_forkserver_and_agents_carry_their_titles(tmp_path: Path) -> None:
    server = start_server(tmp_path, {"fleet": {"agents": {"generalist": 2, "coverage-analyzer": 1}}})
    try:
        assert _cmdline(server.proc.pid) == f"aqe-mcp: server :{server.port}"
        deadline = time.monotonic() + 10
        while True:
            titles = sorted(_cmdline(pid) for pid in _descendants(server.proc.pid))
            agents = [t for t in titles if t.startswith("aqe-mcp: agent-")]
            if len(agents) == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert "aqe-mcp: forkserver" in titles, titles
        # Agents are numbered in the order fleet.agents lists their types.
        assert agents == [
            "aqe-mcp: agent-1 generalist", "aqe-mcp: agent-2 generalist", "aqe-mcp: agent-3 coverage-analyzer"
        ], titles
        # top shows the kernel's short name (15 characters): it is ours too.
        comm = Path(f"/proc/{server.proc.pid}/comm").read_text().strip()
        assert comm.startswith("aqe-mcp"), comm
    finally:
        server.stop()
