"""Imported by the forkserver process alone (it is first in forkserver.PRELOAD): names it `aqe-mcp: forkserver`.
Agents forked from it carry that title until agent.main gives them their own."""

from qe_appliance.proctitle import set_title

set_title("forkserver")
