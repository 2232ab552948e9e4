"""`aqe-v3 mcp pool|tools|balance|metrics|alerts|reload`: operate a running server over its admin socket.

Tables for people (drawn by control/render.py), `--json` for scripts. Exit codes: 0 ok, 1 the server refused,
2 usage or configuration error, 3 no server running (the message says where we looked).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from qe_appliance.config import STRATEGIES
from qe_appliance.control.client import NotRunning, Refused, call

NOT_RUNNING = 3


def add_parsers(cmds: Any) -> None:
    """Add the runtime commands to the `aqe-v3 mcp` subparsers."""

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = cmds.add_parser(name, help=help_text)
        parser.add_argument("--config", help="the server's YAML file (to find its admin socket)")
        parser.add_argument("--socket", help="the admin socket path (overrides --config)")
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")
        return parser

    pool = command("pool", "connection pool: status, configure, drain")
    pool.add_argument("action", nargs="?", choices=("status", "configure", "drain"), default="status")
    pool.add_argument("--configure", action="store_true", help="same as the configure action")
    pool.add_argument("--min", type=int, help="pool.minConnections")
    pool.add_argument("--max", type=int, help="pool.maxConnections")
    pool.add_argument("--idle-timeout", type=float, help="pool.idleTimeoutMs, in seconds")
    pool.add_argument("--timeout", type=float, default=30.0, help="drain deadline in seconds (default 30)")

    tools = command("tools", "tool registry: list, lookup NAME, stats")
    tools.add_argument("action", choices=("list", "lookup", "stats"))
    tools.add_argument("name", nargs="?", help="tool name for lookup (typos are resolved as clients' are)")

    balance = command("balance", "load balancer: status, configure, agents")
    balance.add_argument("action", nargs="?", choices=("status", "configure", "agents"), default="status")
    balance.add_argument("--strategy", choices=STRATEGIES)
    switch = balance.add_mutually_exclusive_group()
    switch.add_argument("--enable", action="store_true", help="run fleet tools on agents (the default)")
    switch.add_argument("--disable", action="store_true", help="run fleet tools in server threads instead")

    metrics = command("metrics", "metrics: summary, --dashboard, --export prometheus|json")
    metrics.add_argument("--dashboard", action="store_true", help="live view, refreshed every dashboardIntervalMs")
    metrics.add_argument("--export", choices=("prometheus", "json"))

    alerts = command("alerts", "alerts: list firing and recently resolved")
    alerts.add_argument("action", nargs="?", choices=("list",), default="list")

    command("reload", "re-read the configuration file and apply what changed (like SIGHUP)")
    command("status", "the server's state, overrides and last reload")


def run(args: argparse.Namespace) -> int:
    try:
        path = _socket_path(args)
        cmd, cmd_args = _request(args)
        if args.command == "metrics" and args.dashboard:
            if not args.json:
                return _live_dashboard(path)
            cmd, cmd_args = "metrics.dashboard", {"export": "dashboard"}  # one snapshot, for scripts
        result = call(path, "metrics" if cmd == "metrics.dashboard" else cmd, cmd_args)
    except NotRunning as exc:
        print(f"aqe-v3: {exc}\n  looked there because {_why(args, path)}", file=sys.stderr)
        return NOT_RUNNING
    except Refused as exc:
        print(f"aqe-v3: {exc}", file=sys.stderr)
        return 1
    except _Usage as exc:
        print(f"aqe-v3: {exc}", file=sys.stderr)
        return 2
    if cmd == "reload" and not result.get("ok"):
        print("reload refused, the running configuration stays:", file=sys.stderr)
        for error in result.get("errors", []):
            print(f"  {error}", file=sys.stderr)
        return 1
    _show(args, cmd, result)
    return 0


class _Usage(Exception):
    pass


# Where the systemd unit's RuntimeDirectory puts the socket; an operator's shell has no $RUNTIME_DIRECTORY.
SYSTEMD_SOCKET = Path("/run/aqe-mcp/control.sock")


def _socket_path(args: argparse.Namespace) -> Path:
    if args.socket:
        return Path(args.socket)
    path = _configured_socket(args)
    return SYSTEMD_SOCKET if not _present(path) and _present(SYSTEMD_SOCKET) else path


def _why(args: argparse.Namespace, path: Path) -> str:
    """Why the CLI took `path` for the server's admin socket, in the terms of the configuration."""
    if args.socket:
        return "--socket named it"
    if path == SYSTEMD_SOCKET:
        return "it is where the systemd unit's server listens and the configured socket is absent"
    fallback = f"; {SYSTEMD_SOCKET} (the systemd unit's) is absent too"
    if not args.config:
        return (f"no --config was given: the defaults put it in .aqe-state under the current directory "
                f"{Path.cwd()}; pass the server's --config or --socket{fallback}")
    return (f"{args.config} puts it there (server.controlSocket, else <server.stateDir>/control.sock, else "
            f".aqe-state beside the file; relative paths in the file are taken from the file's directory, "
            f"whatever the current directory){fallback}; pass --socket if the server runs with another file")


def _present(path: Path) -> bool:
    try:
        path.stat()
    except PermissionError:
        return True  # there but private: connecting to it says so, which beats "not running"
    except OSError:
        return False
    return True


def _configured_socket(args: argparse.Namespace) -> Path:
    from qe_appliance.config import Config, ConfigError, ServerConfig, control_socket, load_config

    try:
        return control_socket(load_config(args.config))
    except ConfigError as exc:
        # The file may be broken on purpose (about to be reloaded): the socket's location needs only
        # server.stateDir / server.controlSocket, so read just those before giving up.
        try:
            import yaml

            with open(args.config, encoding="utf-8") as f:
                server = (yaml.safe_load(f) or {}).get("server") or {}
            where = {k: server[k] for k in ("stateDir", "controlSocket") if isinstance(server.get(k), str)}
            return control_socket(Config(server=msgspec.convert(where, ServerConfig)))
        except Exception:
            raise _Usage(str(exc)) from None


def _request(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    group = args.command
    if group == "pool":
        action = "configure" if args.configure else args.action
        if action == "configure":
            given = {
                "min": args.min,
                "max": args.max,
                "idleTimeoutMs": None if args.idle_timeout is None else int(args.idle_timeout * 1000),
            }
            if all(v is None for v in given.values()):
                raise _Usage("pool configure needs --min, --max or --idle-timeout")
            return "pool.configure", {k: v for k, v in given.items() if v is not None}
        if action == "drain":
            return "pool.drain", {"timeoutS": args.timeout}
        return "pool.status", {}
    if group == "tools":
        if args.action == "lookup":
            if not args.name:
                raise _Usage("tools lookup needs a tool name, e.g. aqe-v3 mcp tools lookup qe_test_generate")
            return "tools.lookup", {"name": args.name}
        return f"tools.{args.action}", {}
    if group == "balance":
        if args.strategy or args.enable or args.disable or args.action == "configure":
            request: dict[str, Any] = {}
            if args.strategy:
                request["strategy"] = args.strategy
            if args.enable or args.disable:
                request["enabled"] = bool(args.enable)
            if not request:
                raise _Usage("balance configure needs --strategy, --enable or --disable")
            return "balance.configure", request
        return f"balance.{args.action}", {}
    if group == "metrics":
        return "metrics", {"export": args.export or "json"}
    if group == "alerts":
        return "alerts.list", {}
    return group, {}


def _show(args: argparse.Namespace, cmd: str, result: Any) -> None:
    if args.json or (cmd == "metrics" and args.export == "json"):
        print(msgspec.json.format(msgspec.json.encode(result)).decode())
    elif cmd == "metrics" and args.export == "prometheus":
        print(result, end="")
    else:
        from rich.console import Console

        from qe_appliance.control import render

        console = Console()
        views = {"metrics": render.metrics, "metrics.dashboard": lambda data: render.dashboard(data, console.width),
                 "tools.lookup": render.tool, "alerts.list": render.alerts}
        view = views.get(cmd)
        console.print(view(result) if view is not None else render.answer(result, console.width))


def _live_dashboard(path: Path) -> int:
    """A live terminal view at the terminal's width, redrawn every dashboardIntervalMs; Ctrl-C exits cleanly."""
    from rich.console import Console
    from rich.live import Live

    from qe_appliance.control import render

    console = Console()
    data = call(path, "metrics", {"export": "dashboard"})
    try:
        with Live(render.dashboard(data, console.width), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(float(data.get("intervalMs", 1000)) / 1000)
                data = call(path, "metrics", {"export": "dashboard"})
                live.update(render.dashboard(data, console.width), refresh=True)
    except KeyboardInterrupt:
        return 0
