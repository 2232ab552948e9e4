"""MCP over stdio: newline-delimited JSON-RPC on stdin/stdout; nothing else ever goes to stdout.

Requests run concurrently (a slow tool does not hold up a ping); each reply is one line, written whole.
The transport exits when stdin closes, after the requests in flight have answered.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from qe_appliance.mcp import jsonrpc as rpc
from qe_appliance.mcp.dispatcher import Dispatcher, Inbound
from qe_appliance.mcp.sessions import Session

log = logging.getLogger("aqe_mcp.stdio")

MAX_LINE = 64 * 1024 * 1024


async def serve_stdio(dispatcher: Dispatcher, drain_timeout_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer
    session = Session("stdio", rpc.LATEST_HANDSHAKE)

    async def send(line: bytes) -> None:
        out.write(line + b"\n")
        out.flush()

    pending: set[asyncio.Task[None]] = set()
    # Server-initiated notifications (resource updates it subscribed to) go out between replies.
    notices: asyncio.Queue[bytes | None] = asyncio.Queue()
    session.listeners.add(notices)

    async def forward() -> None:
        while (event := await notices.get()) is not None:
            await send(event)

    forwarder = asyncio.create_task(forward())

    async def answer(line: bytes) -> None:
        reply = await dispatcher.handle(line, Inbound(session=session, send=send))
        if reply.body is not None:
            await send(reply.body)

    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            line = exc.partial  # the last message may lack its newline
        except asyncio.LimitOverrunError:
            await send(rpc.error_bytes(None, rpc.INVALID_REQUEST, f"message over the {MAX_LINE}-byte line limit"))
            if await _skip_line(reader):
                continue
            break
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        task = asyncio.create_task(answer(line))
        pending.add(task)
        task.add_done_callback(pending.discard)
    dispatcher.subscriptions.close()  # the client is gone: its subscriptions end with it
    if pending:
        _, late = await asyncio.wait(pending, timeout=drain_timeout_s)
        for task in late:
            task.cancel()
    session.listeners.discard(notices)
    forwarder.cancel()
    log.info("stdin closed; exiting")


async def _skip_line(reader: asyncio.StreamReader) -> bool:
    """Drop the rest of an over-long line, so its tail is not read as messages; False at end of input."""
    while True:
        try:
            await reader.readuntil(b"\n")
            return True
        except asyncio.LimitOverrunError as exc:
            await reader.readexactly(exc.consumed)
        except asyncio.IncompleteReadError:
            return False
