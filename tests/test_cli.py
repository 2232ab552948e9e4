"""The `aqe-v3` command line: config validation, start-up errors and exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from qe_appliance.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qe_appliance.cli", *args], capture_output=True, text=True, timeout=30)


def test_validate_shipped_config_is_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mcp", "config", "validate", str(ROOT / "config" / "qe-mcp.yaml")]) == 0
    assert capsys.readouterr().out.startswith("OK")


def test_validate_reports_every_error_with_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("pool:\n  maxConection: 10\n  minConnections: 90\nbalancer:\n  strategy: fastest\n")
    done = run_cli("mcp", "config", "validate", str(bad))
    assert done.returncode == 2
    assert f"{bad}:2: pool.maxConection" in done.stderr and "maxConnections" in done.stderr
    assert f"{bad}:5: balancer.strategy" in done.stderr
    assert "Traceback" not in done.stderr


def test_start_with_missing_config_exits_2(tmp_path: Path) -> None:
    done = run_cli("mcp", "start", "--config", str(tmp_path / "absent.yaml"))
    assert done.returncode == 2 and "absent.yaml" in done.stderr and "Traceback" not in done.stderr


def test_start_flag_override_is_validated(tmp_path: Path) -> None:
    done = run_cli("mcp", "start", "--port", "70000")
    assert done.returncode == 2 and "--port 70000" in done.stderr


def test_usage_errors_exit_2() -> None:
    done = run_cli("mcp", "frobnicate")
    assert done.returncode == 2 and "invalid choice" in done.stderr
    done = run_cli("mcp", "start", "--strategy", "fastest")
    assert done.returncode == 2 and "least-connections" in done.stderr


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"server: {{port: {port}, stateDir: '{tmp_path}/state'}}\n")
        done = run_cli("mcp", "start", "--config", str(cfg))
    assert done.returncode == 1 and "cannot start" in done.stderr and "Traceback" not in done.stderr


def test_a_second_http_server_on_the_same_state_dir_needs_its_own_admin_socket(tmp_path: Path) -> None:
    from tests.conftest import start_server

    (tmp_path / "a").mkdir()
    first = start_server(tmp_path / "a")
    try:
        cfg = tmp_path / "b.yaml"
        cfg.write_text(f"server: {{port: 0, stateDir: '{first.state}'}}\n")
        done = run_cli("mcp", "start", "--config", str(cfg))
        assert done.returncode == 1 and "belongs to another running aqe-mcp" in done.stderr
        assert "server.controlSocket" in done.stderr and "Traceback" not in done.stderr
        # The refused server left the first one's admin socket alone.
        assert run_cli("mcp", "status", "--socket", str(first.state / "control.sock")).returncode == 0
    finally:
        first.stop()
