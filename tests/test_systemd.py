"""systemd: the installed unit passes `systemd-analyze verify`, `aqe-v3 systemd install` puts the unit and
the default configuration in place, and a real server process reports READY, WATCHDOG, RELOADING (with
MONOTONIC_USEC) and STOPPING on a real NOTIFY_SOCKET.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from qe_appliance import systemd
from qe_appliance.lifecycle import DRAIN_DEADLINE_S
from qe_appliance.tools import ALL_TOOLS
from tests.components import missing
from tests.conftest import ServerProcess, start_server

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_UNIT = ROOT / "systemd" / "aqe-mcp.service"
WATCHDOG_USEC = 400_000  # the server should ping every 0.2 s


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class NotifySocket:
    """The service manager's end of NOTIFY_SOCKET: keeps every datagram a server sends, in order."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.messages: list[dict[str, str]] = []

    def next_with(self, key: str, timeout: float = 20) -> dict[str, str]:
        """Read datagrams until one carries `key`; returns it (all of them are kept in `messages`)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            message = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append(message)
            if key in message:
                return message
        raise AssertionError(f"no {key} within {timeout} s; got {self.messages}")

    def drain(self) -> None:
        """Keep what is already queued, so what is read next was sent from now on."""
        self.sock.settimeout(0)
        try:
            while data := self.sock.recv(4096):
                self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))
        except BlockingIOError:
            pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    """A NOTIFY_SOCKET and a watchdog, in the environment the server processes inherit."""
    listener = NotifySocket(str(tmp_path / "notify.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield listener
    listener.close()


def readyz(url: str) -> int:
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/readyz")
        return conn.getresponse().status
    finally:
        conn.close()


def start_with_manager(tmp_path: Path, manager: NotifySocket) -> tuple[ServerProcess, dict[str, str], int]:
    """Start a server; at its READY=1, probe /readyz at once. Returns the server, READY and that status."""
    started: list[ServerProcess] = []
    runner = threading.Thread(target=lambda: started.append(start_server(tmp_path)))
    runner.start()
    try:
        ready = manager.next_with("READY")
        found = re.search(r"http://\S+/mcp", ready.get("STATUS", ""))
        assert found, f"READY=1 should say what is served: {ready}"
        status = readyz(found.group(0))
    except BaseException:
        runner.join(30)
        for srv in started:
            srv.stop()
        raise
    runner.join(30)
    assert started, "the server did not log its listening line"
    return started[0], ready, status


def test_ready_only_when_warm_then_watchdog_pings_then_stopping_and_exit_0(
    tmp_path: Path, manager: NotifySocket
) -> None:
    srv, ready, status = start_with_manager(tmp_path, manager)
    try:
        assert status == 200, "READY=1 was sent before /readyz answered 200"
        assert "fleet warm" in srv.log, "READY=1 must wait for the agent fleet"
        before = manager.messages[: manager.messages.index(ready)]
        assert any(m.get("STATUS", "").startswith("starting") for m in before)
        assert ready["STATUS"] == f"serving {srv.url} with {len(ALL_TOOLS)} tools"

        manager.drain()
        pings = []
        for _ in range(3):
            manager.next_with("WATCHDOG", timeout=5)
            pings.append(time.monotonic())
        gaps = [later - earlier for earlier, later in zip(pings, pings[1:], strict=False)]
        # Half of WATCHDOG_USEC, with room for a busy test machine; never a burst.
        assert all(0.1 < gap < 1.5 for gap in gaps), gaps

        srv.proc.send_signal(signal.SIGTERM)
        stopping = manager.next_with("STOPPING", timeout=10)
        assert stopping["STOPPING"] == "1" and stopping["STATUS"].startswith("draining")
        assert srv.proc.wait(DRAIN_DEADLINE_S) == 0
    finally:
        srv.stop()
    after = manager.messages[manager.messages.index(stopping):]
    assert not any("READY" in m for m in after), "no READY=1 once stopping"


def test_sighup_sends_reloading_with_monotonic_usec_then_ready_even_for_a_refused_file(
    tmp_path: Path, manager: NotifySocket
) -> None:
    srv, _, _ = start_with_manager(tmp_path, manager)
    try:
        config = tmp_path / "qe-mcp.yaml"
        valid = config.read_text().replace('"port": 0', '"port": 0, "maxSessions": 99')
        for text in (valid, "pool: [broken"):
            config.write_text(text)
            sent = monotonic_usec()
            srv.proc.send_signal(signal.SIGHUP)
            reloading = manager.next_with("RELOADING", timeout=10)
            # systemd matches RELOADING=1 to its SIGHUP by this timestamp (same clock, same machine).
            assert sent <= int(reloading["MONOTONIC_USEC"]) <= monotonic_usec()
            ready = manager.next_with("READY", timeout=10)
            assert ready["STATUS"].startswith("serving http://")
        assert srv.proc.poll() is None and readyz(srv.url) == 200, "a refused reload keeps the server up"
        assert "reload: 1 change(s) applied" in srv.log and "reload refused" in srv.log
    finally:
        srv.stop()
    assert srv.proc.returncode == 0


def test_notifier_speaks_the_abstract_namespace_and_keeps_status_on_one_line() -> None:
    name = f"aqe-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        receiver.settimeout(5)
        notifier = systemd.Notifier({"NOTIFY_SOCKET": "@" + name})
        try:
            assert notifier.ready("serving\nsomething")
            assert receiver.recv(4096) == b"READY=1\nSTATUS=serving something\n"
            assert notifier.reloading() and notifier.ready()
            assert receiver.recv(4096).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
            assert receiver.recv(4096) == b"READY=1\nSTATUS=serving something\n", "status is kept"
        finally:
            notifier.close()


def test_watchdog_only_for_this_process_and_only_when_asked() -> None:
    here = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"}
    assert systemd.Notifier(here).watchdog_interval_s == 15.0
    assert systemd.Notifier({**here, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval_s == 15.0
    assert systemd.Notifier({**here, "WATCHDOG_PID": "1"}).watchdog_interval_s is None
    assert systemd.Notifier({"NOTIFY_SOCKET": "/run/x"}).watchdog_interval_s is None
    assert systemd.Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval_s is None


def test_a_missing_manager_costs_a_warning_not_the_server(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert not systemd.Notifier({}).ready(), "without NOTIFY_SOCKET there is nothing to send"
    notifier = systemd.Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    with caplog.at_level(logging.WARNING, "aqe_mcp.systemd"):
        assert not notifier.ready("x")
        assert not notifier.watchdog()
    notifier.close()
    assert len(caplog.records) == 1 and "NOTIFY_SOCKET" in caplog.text


# --- the unit and its installation --------------------------------------------------------------------


def unit_settings(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def seconds(value: str) -> float:
    assert value.endswith("s"), value
    return float(value[:-1])


def test_shipped_unit_declares_the_service_contract() -> None:
    unit = unit_settings(SHIPPED_UNIT.read_text())
    assert unit["Type"] == "notify-reload"
    assert unit["ExecStart"].endswith("aqe-v3 mcp start --config %E/aqe-mcp/qe-mcp.yaml")
    assert unit["ConfigurationDirectory"] == unit["StateDirectory"] == unit["RuntimeDirectory"] == "aqe-mcp"
    assert unit["WorkingDirectory"] == "%S/aqe-mcp"
    # systemd must not SIGKILL a drain that is still within its deadline, nor signal the agents itself.
    assert seconds(unit["TimeoutStopSec"]) > DRAIN_DEADLINE_S + 5
    assert unit["KillMode"] == "mixed"
    assert seconds(unit["WatchdogSec"]) >= 10 and unit["Restart"] == "on-failure"
    for key in ("DynamicUser", "NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert unit[key] == "yes", key
    assert unit["ProtectSystem"] == "strict"
    assert unit["RestrictAddressFamilies"] == "AF_UNIX AF_INET AF_INET6"
    assert "MemoryMax" in unit


def test_install_writes_the_unit_and_the_defaults_then_keeps_an_edited_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    umask = os.umask(0o077)  # a strict root umask must not lock the service's dynamic user out
    try:
        assert systemd.install(str(tmp_path)) == 0
    finally:
        os.umask(umask)
    unit_file = tmp_path / "etc/systemd/system/aqe-mcp.service"
    config_file = tmp_path / "etc/aqe-mcp/qe-mcp.yaml"
    assert config_file.read_bytes() == (ROOT / "config/qe-mcp.yaml").read_bytes()
    assert unit_file.stat().st_mode & 0o777 == config_file.stat().st_mode & 0o777 == 0o644
    assert config_file.parent.stat().st_mode & 0o777 == 0o755
    exe = systemd.find_executable()
    assert exe and os.access(exe, os.X_OK)
    installed = unit_file.read_text().splitlines()
    shipped = SHIPPED_UNIT.read_text().splitlines()
    assert [a for a, b in zip(installed, shipped, strict=True) if a != b] == [
        f"ExecStart={exe} mcp start --config %E/aqe-mcp/qe-mcp.yaml"
    ]
    out = capsys.readouterr().out
    assert "systemctl daemon-reload && systemctl enable --now aqe-mcp" in out
    assert "on the target system" in out, "a staged install says where the next steps apply"

    config_file.write_text("pool: {maxConnections: 7}\n")
    assert systemd.install(str(tmp_path)) == 0
    assert config_file.read_text() == "pool: {maxConnections: 7}\n", "an operator's config is never replaced"
    assert f"kept {config_file}" in capsys.readouterr().out


def test_install_for_systemd_before_253_reloads_through_the_admin_socket(tmp_path: Path) -> None:
    assert systemd.install(str(tmp_path), "/opt/aqe/conf", "/lib/systemd/system", version=252) == 0
    unit = unit_settings((tmp_path / "lib/systemd/system/aqe-mcp.service").read_text())
    assert unit["Type"] == "notify"
    assert unit["ExecStart"].endswith(" mcp start --config /opt/aqe/conf/qe-mcp.yaml")
    assert unit["ExecReload"].endswith(" mcp reload --config /opt/aqe/conf/qe-mcp.yaml")
    assert (tmp_path / "opt/aqe/conf/qe-mcp.yaml").is_file()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qe_appliance.cli", *args], capture_output=True, text=True,
                          timeout=30)


def test_cli_dry_run_prints_the_unit_and_writes_nothing(tmp_path: Path) -> None:
    done = run_cli("systemd", "install", "--prefix", str(tmp_path), "--dry-run")
    assert done.returncode == 0, done.stderr
    assert f"would write {tmp_path}/etc/systemd/system/aqe-mcp.service:" in done.stdout
    assert "[Service]" in done.stdout and "systemctl enable --now aqe-mcp" in done.stdout
    assert list(tmp_path.iterdir()) == []


def test_cli_install_errors_say_what_to_do(tmp_path: Path) -> None:
    done = run_cli("systemd", "install", "--prefix", str(tmp_path), "--config-dir", "etc/aqe-mcp")
    assert done.returncode == 2 and "--config-dir etc/aqe-mcp: give an absolute path" in done.stderr
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = run_cli("systemd", "install", "--prefix", str(blocker))
    assert done.returncode == 1 and "cannot write" in done.stderr and "--prefix" in done.stderr
    assert "Traceback" not in done.stderr


# --- systemd-analyze verify ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def analyzer() -> tuple[str, int]:
    """systemd-analyze and its version (Debian's `systemd` package, which .ci/run installs)."""
    found = shutil.which("systemd-analyze")
    if found is None:
        missing("systemd-analyze", "systemd")
    version = re.match(r"systemd (\d+)", subprocess.run([found, "--version"], capture_output=True, text=True,
                                                       timeout=30).stdout)
    assert version, "systemd-analyze --version says which systemd it is"
    return found, int(version.group(1))


def verify(analyzer: tuple[str, int], unit: Path) -> list[str]:
    done = subprocess.run([analyzer[0], "verify", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 0, complaints
    return complaints


def test_installed_unit_passes_systemd_analyze_verify(tmp_path: Path, analyzer: tuple[str, int]) -> None:
    current, older = tmp_path / "current", tmp_path / "older"
    assert systemd.install(str(current)) == 0
    assert systemd.install(str(older), version=systemd.NOTIFY_RELOAD_SINCE - 1) == 0
    unit_path = Path("etc/systemd/system/aqe-mcp.service")
    # The form for systemd before 253 is clean everywhere; the Type=notify-reload form on 253 and later.
    assert verify(analyzer, older / unit_path) == []
    complaints = verify(analyzer, current / unit_path)
    if analyzer[1] < systemd.NOTIFY_RELOAD_SINCE:
        complaints = [line for line in complaints if "notify-reload" not in line]
    assert complaints == []
