"""Fixtures that run the appliance the way users do: a real `aqe-v3` process on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
from pg import PostgresServer, start_postgres

from qe_appliance.tools import ALL_TOOLS
from qe_appliance.tools.base import bare_context

LISTENING = re.compile(r"listening on (http://\S+/mcp)")


class ServerProcess:
    """A running `aqe-v3 mcp start` with its log file and URL."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path, url: str, state: Path) -> None:
        self.proc = proc
        self.log_path = log_path
        self.url = url
        self.state = state
        base = url.rsplit("/", 1)[0]
        self.host, self.port = base.split("//", 1)[1].rsplit(":", 1)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def write_config(path: Path, state: Path, extra: dict | None = None) -> Path:
    """A config file with a private state dir, listening on any free loopback port."""
    # A short drain grace: every stop of a test server passes through it (the default is 5 s).
    cfg: dict = {"server": {"host": "127.0.0.1", "port": 0, "stateDir": str(state), "drainGraceMs": 200}}
    for block, values in (extra or {}).items():
        cfg.setdefault(block, {}).update(values)
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def start_server(tmp: Path, extra: dict | None = None, args: list[str] | None = None) -> ServerProcess:
    state = tmp / "state"
    config = write_config(tmp / "qe-mcp.yaml", state, extra)
    log_path = tmp / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qe_appliance.cli", "mcp", "start", "--config", str(config), *(args or [])],
            stdout=subprocess.DEVNULL,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        m = LISTENING.search(log_path.read_text(errors="replace"))
        if m:
            return ServerProcess(proc, log_path, m.group(1), state)
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError(f"server did not start:\n{log_path.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path_factory.mktemp("server"))
    yield srv
    srv.stop()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path)
    yield srv
    srv.stop()


def stdio_command(tmp: Path, extra: dict | None = None) -> tuple[str, list[str], dict[str, str]]:
    config = write_config(tmp / "qe-mcp.yaml", tmp / "state", extra)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return sys.executable, ["-m", "qe_appliance.cli", "mcp", "start", "--stdio", "--config", str(config)], env


_SPECS = {spec.name: spec for spec in ALL_TOOLS}


def call_tool(services: Any, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """One tool call as the dispatcher makes it, without a server: the arguments decoded into the tool's input
    Struct, its handler run, and the result checked against its outputSchema."""
    spec = _SPECS[name]
    args = msgspec.json.decode(msgspec.json.encode(arguments), type=spec.input_type)
    result = asyncio.run(spec.handler(bare_context(services, name), args))
    content: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(result))
    jsonschema.validate(content, spec.output_schema)
    return content


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL cluster for the session (skipped without the binaries, failed without them in CI)."""
    yield from start_postgres()
