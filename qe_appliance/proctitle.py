"""Process titles (`aqe-mcp: server :8765`, `aqe-mcp: forkserver`, `aqe-mcp: agent-2 generalist`), so ps, top
and `systemctl status` tell the appliance's processes apart instead of showing `python3 -B -c …` for all.
"""

from __future__ import annotations

import setproctitle


def set_title(role: str) -> None:
    """Name this process `aqe-mcp: <role>` (its command line in /proc, and the short name top shows)."""
    setproctitle.setproctitle(f"aqe-mcp: {role}")
