"""Talks to a running server's admin socket (one JSON command per line)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import msgspec


class NotRunning(Exception):
    """No server answers at the socket; the message says where we looked."""


class Refused(Exception):
    """The server answered with an error."""


def call(path: Path, cmd: str, args: dict[str, Any] | None = None, timeout: float = 60.0) -> Any:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except PermissionError:
        sock.close()
        raise NotRunning(
            f"permission denied on the admin socket {path}: only the service's user may use it; run the "
            "command as that user (e.g. with sudo)"
        ) from None
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise NotRunning(
            f"no aqe-mcp server is listening on {path}"
        ) from None
    with sock:
        sock.sendall(msgspec.json.encode({"cmd": cmd, "args": args or {}}) + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise NotRunning(f"the server at {path} closed the connection without answering")
            data += chunk
    reply = msgspec.json.decode(data)
    if not reply.get("ok"):
        raise Refused(reply.get("error", "the server refused the command"))
    return reply.get("result")


async def ask(path: Path, cmd: str, args: dict[str, Any] | None = None, timeout: float = 60.0) -> Any:
    """`call` from an event loop (a supervisor asking its workers); raises NotRunning or Refused the same way."""
    import asyncio

    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path), limit=1 << 26), timeout)
    except (TimeoutError, OSError):
        raise NotRunning(f"no aqe-mcp server is listening on {path}") from None
    try:
        writer.write(msgspec.json.encode({"cmd": cmd, "args": args or {}}) + b"\n")
        line = await asyncio.wait_for(reader.readline(), timeout)
    except (TimeoutError, OSError):
        raise NotRunning(f"the server at {path} did not answer {cmd} within {timeout:.0f} s") from None
    finally:
        writer.close()
    if not line.endswith(b"\n"):
        raise NotRunning(f"the server at {path} closed the connection without answering")
    reply = msgspec.json.decode(line)
    if not reply.get("ok"):
        raise Refused(reply.get("error", "the server refused the command"))
    return reply.get("result")
