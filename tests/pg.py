"""A real PostgreSQL server for the tests: Debian's binaries, a temporary cluster run as a non-root user,
listening on a unix socket in its own directory and on a loopback port (password auth there)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg

from tests.components import missing

PG_BIN = Path(os.environ.get("AQE_PG_BIN", "/usr/lib/postgresql/15/bin"))
# As root (CI) the cluster runs as this user: PostgreSQL refuses to run as root.
PG_USER = "nobody"
ROLE = "aqe"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """One temporary cluster; `database()` makes an empty database owned by the `aqe` role for a test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.sockets = root / "sockets"
        self.port = _free_port()
        self.password = secrets.token_hex(12)
        self.password_file = root / "password"
        self._as_user = ["runuser", "-u", PG_USER, "--"] if os.geteuid() == 0 else []

    def _run(self, *command: str) -> None:
        done = subprocess.run([*self._as_user, *command], capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    def init(self) -> None:
        self.sockets.mkdir()
        if self._as_user:
            owner = pwd.getpwnam(PG_USER)
            for path in (self.root, self.sockets):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8", "--no-locale",
                  "--auth-local=trust", "--auth-host=scram-sha-256")
        self.start()
        self.password_file.write_text(self.password + "\n")
        self.password_file.chmod(0o600)
        self.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{self.password}'")

    def start(self) -> None:
        options = f"-k {self.sockets} -p {self.port} -c listen_addresses=127.0.0.1 -c max_connections=200"
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options,
                  "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def execute(self, sql: str, database: str = "postgres") -> Any:
        """Run one statement as the superuser; the first column of its first row, if any."""
        async def run() -> Any:
            conn = await asyncpg.connect(host=str(self.sockets), port=self.port, user="postgres", database=database)
            try:
                return await conn.fetchval(sql)
            finally:
                await conn.close()

        return asyncio.run(run())

    def database(self) -> str:
        """The name of a new empty database owned by `aqe`."""
        name = f"t_{secrets.token_hex(6)}"
        self.execute(f"CREATE DATABASE {name} OWNER {ROLE}")
        return name

    def socket_url(self, name: str) -> str:
        """Over the unix socket, where the cluster trusts local users (no password)."""
        return f"postgresql://{ROLE}@/{name}?host={self.sockets}&port={self.port}"

    def tcp_url(self, name: str) -> str:
        """Over loopback TCP, where the server asks for the password (store.passwordFile)."""
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{name}"


def start_postgres() -> Iterator[PostgresServer]:
    if not (PG_BIN / "initdb").exists():
        missing(f"PostgreSQL ({PG_BIN})", "postgresql")
    root = Path(tempfile.mkdtemp(prefix="aqe-pg-", dir="/tmp"))
    server = PostgresServer(root)
    try:
        server.init()
        yield server
    finally:
        try:
            server.stop("immediate")
        except RuntimeError:
            pass  # never started, or already stopped by the test
        shutil.rmtree(root, ignore_errors=True)


class Blocking:
    """A PostgreSQL store's coroutines called as plain methods on the test's own event loop, so one test
    body drives a SQLite store and a PostgreSQL store alike."""

    def __init__(self, target: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._target = target
        self._loop = loop
        # Every call runs in this one context, as the calls of one server task would (batch() relies on it).
        self._context = contextvars.copy_context()

    def run(self, awaitable: Any) -> Any:
        return self._loop.run_until_complete(self._loop.create_task(awaitable, context=self._context))

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attribute(*args, **kwargs)
            if hasattr(result, "__aenter__"):
                return self._entered(result)
            return self.run(result) if inspect.isawaitable(result) else result

        return call


    @contextlib.contextmanager
    def _entered(self, manager: Any) -> Iterator[Any]:
        value = self.run(manager.__aenter__())
        try:
            yield value
        except BaseException as exc:
            if not self.run(manager.__aexit__(type(exc), exc, exc.__traceback__)):
                raise
        else:
            self.run(manager.__aexit__(None, None, None))


def open_pg_stores(url: str) -> tuple[Any, asyncio.AbstractEventLoop]:
    """PgStores on `url`, opened on a new event loop (close both with `close_pg_stores`)."""
    from qe_appliance.config import StoreConfig
    from qe_appliance.store.postgres import PgStores

    loop = asyncio.new_event_loop()
    stores = PgStores(StoreConfig(url=url))
    try:
        loop.run_until_complete(stores.open())
    except BaseException:
        loop.close()
        raise
    return stores, loop


def close_pg_stores(stores: Any, loop: asyncio.AbstractEventLoop) -> None:
    stores.close()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()


class BlockingStores:
    """Every store of a PgStores as `Blocking` (`.memory`, `.patterns`, `.tasks`, `.reports`, `.queue`)."""

    def __init__(self, stores: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._stores = stores
        self._loop = loop
        self._blocking: dict[str, Blocking] = {}

    def __getattr__(self, name: str) -> Blocking:
        # One Blocking a store, so its calls share one context as they would in one server task.
        if name not in self._blocking:
            self._blocking[name] = Blocking(getattr(self._stores, name), self._loop)
        return self._blocking[name]


@contextlib.contextmanager
def blocking_pg_stores(postgres: PostgresServer) -> Iterator[BlockingStores]:
    """The stores of a fresh database on `postgres`, their coroutines called as plain methods; closed after."""
    stores, loop = open_pg_stores(postgres.socket_url(postgres.database()))
    try:
        yield BlockingStores(stores, loop)
    finally:
        close_pg_stores(stores, loop)
