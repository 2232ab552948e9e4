"""The .pyi stubs of the Cython kernels match what the compiled modules define (mypy's stubtest)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

KERNELS = ("lru", "registry", "balancer", "histogram", "jsondepth", "httphead")
MODULES = [f"qe_appliance._core.{name}" for name in KERNELS]
# What introspection of a compiled module cannot see or the stubs leave out on purpose: Cython's pickling
# helpers and doctest table, and constructors whose arguments go to __cinit__ or to msgspec's Struct __new__
# (the runtime signature shows no parameters for them).
ALLOWED = [
    r"qe_appliance\._core\.[\w.]+\.(__reduce_cython__|__setstate_cython__|__test__)",
    r"qe_appliance\._core\.(lru\.LRUCache|histogram\.Histogram|balancer\.AgentLoad|balancer\.BalancerStats)\.__init__",
]


def test_stubs_match_the_compiled_kernels(tmp_path: Path) -> None:
    allowlist = tmp_path / "allowlist.txt"
    allowlist.write_text("\n".join(ALLOWED) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", *MODULES, "--ignore-disjoint-bases", "--allowlist", str(allowlist),
         "--mypy-config-file", str(Path(__file__).resolve().parent.parent / "pyproject.toml")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
