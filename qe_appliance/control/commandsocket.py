"""The admin socket itself, without the commands: what a server's ControlServer (control/server.py) and a
supervisor of several workers (workers.py) both serve, kept apart so the supervisor imports no server."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from qe_appliance.instances import claim, release

log = logging.getLogger("aqe_mcp.control")
MAX_COMMAND_BYTES = 64 * 1024


class CommandError(Exception):
    """A command the server refuses; the message says what to fix."""


Command = Callable[[dict[str, Any]], Awaitable[Any]]


class CommandSocket:
    """The admin socket itself: a private unix socket this process claims, one JSON command per line, each
    answered by the handler of its name in `commands` (a server's own, or a supervisor's fan-out to its workers)."""

    def __init__(self, path: Path, commands: dict[str, Command], own_directory: bool = False) -> None:
        self.path = path
        self._commands = commands
        # The socket's directory is the appliance's own (state or runtime directory): tighten it rather than
        # refuse to start when an older version or another tool left it open.
        self.own_directory = own_directory
        self._server: asyncio.AbstractServer | None = None
        # Held while this process owns the socket's name: others on the same state directory keep off it.
        self._claim: int | None = None

    async def start(self) -> None:
        # The directory is private too: nobody else can even reach the socket's name.
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        mode = self.path.parent.stat().st_mode & 0o777
        if mode & 0o077 and self.own_directory:
            log.warning("made %s private (mode %o -> 700): the admin socket lives there", self.path.parent, mode)
            self.path.parent.chmod(0o700)
        elif mode & 0o077:
            raise OSError(
                f"the admin socket's directory {self.path.parent} is open to other users (mode {mode:o}); "
                f"make it private (chmod 700 {self.path.parent}) or set server.controlSocket to a path in a "
                "directory only the service user can enter"
            )
        self._claim = claim(self.path)
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_COMMAND_BYTES)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._claim is not None:
            release(self.path, self._claim)
            self._claim = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(msgspec.json.encode(await self.execute(line)) + b"\n")
                await writer.drain()
        except (ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    async def execute(self, line: bytes) -> dict[str, Any]:
        try:
            request = msgspec.json.decode(line)
            if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
                raise CommandError('a command is a JSON object {"cmd": "...", "args": {...}}')
            handler = self._commands.get(request["cmd"])
            if handler is None:
                raise CommandError(f"unknown command {request['cmd']!r}; known: {', '.join(self._commands)}")
            args = request.get("args") or {}
            if not isinstance(args, dict):
                raise CommandError("args must be a JSON object")
            return {"ok": True, "result": await handler(args)}
        except CommandError as exc:
            return {"ok": False, "error": str(exc)}
        except msgspec.DecodeError as exc:
            return {"ok": False, "error": f"not JSON: {exc}"}
