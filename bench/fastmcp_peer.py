"""The benchmark's fastmcp peer: qe_memory_retrieve served by fastmcp (streamable HTTP, stateless, JSON; or
stdio with `--stdio`), from the same `<stateDir>/memory.db` through bench/peer_data.py.

fastmcp pins its own `mcp`, so it runs from a venv of its own: `python bench/fastmcp_peer.py --setup` creates
bench/.cache/fastmcp-venv (gitignored) and prints its python; then `<that python> bench/fastmcp_peer.py --port N
--state-dir DIR`. The venv holds fastmcp and msgspec; peer_data imports the appliance's store from this tree.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

VENV = Path(__file__).resolve().parent / ".cache" / "fastmcp-venv"
VENV_PYTHON = VENV / "bin" / "python"
PACKAGES = ("fastmcp", "msgspec")
SETUP_TIMEOUT_S = 600.0


def python(install: bool = True) -> Path | None:
    """The fastmcp venv's python, creating the venv first when missing and `install` is true."""
    probe = [str(VENV_PYTHON), "-c", "import fastmcp, msgspec"]
    if VENV_PYTHON.exists() and subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return VENV_PYTHON
    if not install:
        return None
    venv.create(VENV, with_pip=True)
    pip = [str(VENV_PYTHON), "-m", "pip", "install", "-q", *PACKAGES]
    done = subprocess.run(pip, capture_output=True, text=True, timeout=SETUP_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(pip)}` failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return VENV_PYTHON


def serve(args: argparse.Namespace) -> None:
    from fastmcp import FastMCP
    from peer_data import MemoryStore, retrieve_result

    store = MemoryStore(args.state_dir / "memory.db")
    server = FastMCP("fastmcp-peer")

    @server.tool(description="Read one memory entry by namespace and key.")
    async def qe_memory_retrieve(key: str, namespace: str = "default") -> dict[str, Any]:
        return retrieve_result(store, key, namespace)

    if args.stdio:
        server.run(transport="stdio", show_banner=False)
        return

    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    @server.custom_route("/readyz", methods=["GET"])
    async def readyz(request: Request) -> Response:
        return JSONResponse({"status": "ready"})

    server.run(
        transport="http",
        host=args.host,
        port=args.port,
        json_response=True,
        stateless_http=True,
        log_level="warning",
        show_banner=False,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", action="store_true", help="create the fastmcp venv and print its python")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, help="HTTP port (required unless --stdio)")
    parser.add_argument("--stdio", action="store_true", help="speak MCP on stdin/stdout instead of HTTP")
    parser.add_argument("--state-dir", type=Path, help="directory holding memory.db")
    args = parser.parse_args(argv)
    if args.setup:
        print(python())
        return 0
    if args.state_dir is None or (not args.stdio and args.port is None):
        parser.error("give --state-dir, and --port for HTTP or --stdio")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the peer listens on loopback only: use --host 127.0.0.1")
    serve(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
