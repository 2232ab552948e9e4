"""The 14 QE tools, in the design's table order; each domain module defines its own."""

from __future__ import annotations

from qe_appliance.tools import coverage, fleet, learning, memory, quality, testgen
from qe_appliance.tools.base import ToolSpec

ALL_TOOLS: tuple[ToolSpec, ...] = (
    *testgen.TOOLS,
    *coverage.TOOLS,
    *quality.TOOLS,
    *fleet.TOOLS,
    *memory.TOOLS,
    *learning.TOOLS,
)

__all__ = ["ALL_TOOLS"]
