"""The benchmark's peer: qe_memory_retrieve served by the official MCP SDK (streamable HTTP, stateless, JSON;
or stdio with `--stdio`).

It reads the same `<stateDir>/memory.db` through our MemoryStore (bench/peer_data.py), so every server answers
from identical data. Run: `python bench/sdk_peer.py --port 8801 --state-dir /tmp/x` (`--seed N` fills
namespace `bench` with keys key-0..key-N-1 first).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from peer_data import MemoryStore, retrieve_result, seed
from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response


def build_server(state_dir: Path) -> MCPServer[Any]:
    """An MCPServer with the one tool, plus GET /readyz for the bench's startup timing."""
    store = MemoryStore(state_dir / "memory.db")
    # WARNING keeps uvicorn's per-request access log off, as our server has none on its hot path.
    server: MCPServer[Any] = MCPServer(name="sdk-peer", version="2.3.0", log_level="WARNING")

    @server.tool(description="Read one memory entry by namespace and key.")
    async def qe_memory_retrieve(
        key: str,
        # Declared as in our tool, so the SDK also checks the Mcp-Param-Namespace header clients mirror.
        namespace: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Namespace"})] = "default",
    ) -> dict[str, Any]:
        return retrieve_result(store, key, namespace)

    @server.custom_route("/readyz", methods=["GET"])
    async def readyz(request: Request) -> Response:
        return JSONResponse({"status": "ready"})

    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, help="HTTP port (required unless --stdio)")
    parser.add_argument("--stdio", action="store_true", help="speak MCP on stdin/stdout instead of HTTP")
    parser.add_argument("--state-dir", type=Path, required=True, help="directory holding memory.db")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="first write N bench entries")
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the peer listens on loopback only: use --host 127.0.0.1")
    if not args.stdio and args.port is None:
        parser.error("give --port for HTTP, or --stdio")
    if args.seed:
        seed(args.state_dir, args.seed)
    server = build_server(args.state_dir)
    if args.stdio:
        server.run(transport="stdio")
    else:
        server.run(transport="streamable-http", host=args.host, port=args.port, json_response=True, stateless_http=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
