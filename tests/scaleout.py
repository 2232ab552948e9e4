"""Several aqe-mcp instances on one PostgreSQL database behind Debian's HAProxy running the shipped
deploy/haproxy/haproxy.cfg: what tests/test_scale_out.py and bench/scale_bench.py start."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pg import PostgresServer

from tests.components import missing
from tests.conftest import ServerProcess, start_server

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "deploy" / "haproxy" / "haproxy.cfg"
HAPROXY = Path("/usr/sbin/haproxy")
# Short leases and heartbeats so a dead instance's subtasks move within seconds.
QUEUE = {"leaseMs": 2000, "heartbeatMs": 400, "staleAfterHeartbeats": 3}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Proxy:
    """HAProxy running the shipped configuration, with only its `bind` and `server` lines replaced (and a
    stats socket added, so the test sees when HAProxy marks an instance down)."""

    def __init__(self, tmp: Path, instances: list[ServerProcess]) -> None:
        if not HAPROXY.exists():
            missing("HAProxy", "haproxy")
        self.port = _free_port()
        self.stats = tmp / "haproxy.sock"
        lines = []
        for line in SHIPPED.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith("server "):
                continue
            if stripped.startswith("bind "):
                line = f"    bind 127.0.0.1:{self.port}"
            lines.append(line)
            if stripped == "global":
                lines.append(f"    stats socket {self.stats} mode 600 level admin")
        lines += [f"    server aqe{i} 127.0.0.1:{srv.port} check" for i, srv in enumerate(instances)]
        self.config = tmp / "haproxy.cfg"
        self.config.write_text("\n".join(lines) + "\n")
        self.log_path = tmp / "haproxy.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([str(HAPROXY), "-db", "-f", str(self.config)], stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.host = "127.0.0.1"
        wait_for(lambda: self.status() and all(s == "UP" for s in self.status().values()), 20,
                 f"HAProxy to see every instance up:\n{self.log_path.read_text(errors='replace')}")

    def status(self) -> dict[str, str]:
        """Each server's state as HAProxy sees it (UP, DOWN, ...)."""
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(self.stats))
                sock.sendall(b"show stat\n")
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
        except OSError:
            return {}
        rows = [line.split(",") for line in data.decode().splitlines() if line and not line.startswith("#")]
        return {row[1]: row[17].split()[0] for row in rows if row[0] == "aqe_mcp" and row[1].startswith("aqe")}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Cluster:
    """`count` instances (three unless told) on one new database behind HAProxy."""

    def __init__(
        self, tmp: Path, postgres: PostgresServer, extra: dict[str, Any] | None = None, count: int = 3
    ) -> None:
        store = {"url": postgres.tcp_url(postgres.database()), "passwordFile": str(postgres.password_file)}
        config: dict[str, Any] = {
            "store": store,
            "fleet": {"agents": {"generalist": 1}, **QUEUE},
            "pool": {"minConnections": 1},
            "server": {"trustedProxies": ["127.0.0.1/32"]},
            "tools": {},
        }
        for block, values in (extra or {}).items():
            config.setdefault(block, {}).update(values)
        self.instances: list[ServerProcess] = []
        self.proxy: Proxy | None = None
        for i in range(count):
            (tmp / f"i{i}").mkdir()
        # Started side by side: each start is mostly waiting for its fleet.
        started: dict[int, ServerProcess | BaseException] = {}

        def start(i: int) -> None:
            try:
                started[i] = start_server(tmp / f"i{i}", config)
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                started[i] = exc

        threads = [threading.Thread(target=start, args=(i,)) for i in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        try:
            for i in range(count):
                outcome = started[i]
                if isinstance(outcome, BaseException):
                    raise outcome
                self.instances.append(outcome)
            self.proxy = Proxy(tmp, self.instances)
        except BaseException:
            self.stop()
            for outcome in started.values():
                if isinstance(outcome, ServerProcess) and outcome not in self.instances:
                    outcome.stop()
            raise

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        for srv in self.instances:  # all drain at once (a second SIGTERM would cut the drain short)
            if srv.proc.poll() is None:
                srv.proc.send_signal(signal.SIGTERM)
        for srv in self.instances:
            try:
                srv.proc.wait(15)
            except subprocess.TimeoutExpired:
                srv.proc.kill()
                srv.proc.wait(5)
