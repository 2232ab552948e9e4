"""The benchmark's peer: qe_memory_retrieve served by the official MCP SDK (streamable HTTP, stateless, JSON).

It reads the same `<stateDir>/memory.db` through our MemoryStore, so both servers answer from identical data.
Run: `python bench/sdk_peer.py --port 8801 --state-dir /tmp/x` (`--seed N` fills
namespace `bench` with keys key-0..key-N-1 first).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    # The peer imports the appliance's MemoryStore from the working tree, wherever it is started from.
    sys.path.insert(0, str(REPO))

from mcp.server.mcpserver import MCPServer  # noqa: E402
from pydantic import Field  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse, Response  # noqa: E402

from qe_appliance.store.memory import MemoryStore  # noqa: E402

SEED_NAMESPACE = "bench"
SEED_KEY_PREFIX = "key-"


def seed(state_dir: Path, count: int, namespace: str = SEED_NAMESPACE, key_prefix: str = SEED_KEY_PREFIX) -> None:
    """Write `count` small JSON entries (`key_prefix`0 ..) into `<state_dir>/memory.db`."""
    state_dir.mkdir(parents=True, exist_ok=True)
    store = MemoryStore(state_dir / "memory.db")
    try:
        for i in range(count):
            value = {
                "index": i,
                "verdict": "pass",
                "coverage": round(0.8 + (i % 20) / 100, 2),
                "tags": ["bench", "seed"],
            }
            store.put(namespace, f"{key_prefix}{i}", json.dumps(value).encode(), None)
    finally:
        store.close()


def iso_utc(epoch: float) -> str:
    """Epoch seconds as our server writes timestamps: ISO 8601 in UTC with a Z suffix."""
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def retrieve_result(store: MemoryStore, key: str, namespace: str) -> dict[str, Any]:
    """The result our server's qe_memory_retrieve returns, built from the same store."""
    entry = store.get(namespace, key)
    if entry is None:
        return {"found": False, "key": key, "namespace": namespace}
    return {
        "found": True,
        "key": entry.key,
        "namespace": entry.namespace,
        "value": json.loads(entry.value_json),
        "version": entry.version,
        "createdAt": iso_utc(entry.created_at),
        "updatedAt": iso_utc(entry.updated_at),
        "expiresAt": None if entry.expires_at is None else iso_utc(entry.expires_at),
    }


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
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state-dir", type=Path, required=True, help="directory holding memory.db")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="first write N bench entries")
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the peer listens on loopback only: use --host 127.0.0.1")
    if args.seed:
        seed(args.state_dir, args.seed)
    build_server(args.state_dir).run(
        transport="streamable-http", host=args.host, port=args.port, json_response=True, stateless_http=True
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
