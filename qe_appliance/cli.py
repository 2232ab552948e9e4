"""`aqe-v3`: start the appliance, check its configuration, back up its state, install it as a systemd service.

Exit codes: 0 ok, 1 failed, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from qe_appliance import __version__


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n(run with --help to see the commands and flags)\n")


def build_parser() -> argparse.ArgumentParser:
    from qe_appliance.config import STRATEGIES
    from qe_appliance.control import client_config
    from qe_appliance.control.commands import add_parsers as add_runtime_commands
    from qe_appliance.store.backup import add_parsers as add_state_commands

    parser = _Parser(prog="aqe-v3", description="Operate the aqe-mcp QE MCP server.")
    parser.add_argument("--version", action="version", version=f"aqe-mcp {__version__}")
    top = parser.add_subparsers(dest="group", required=True, parser_class=_Parser)
    mcp = top.add_parser("mcp", help="the MCP server")
    cmds = mcp.add_subparsers(dest="command", required=True, parser_class=_Parser)

    start = cmds.add_parser("start", help="run the server (HTTP by default, or --stdio)")
    start.add_argument("--config", help="YAML configuration file (default: built-in defaults)")
    start.add_argument("--host", help="listen address (overrides server.host)")
    start.add_argument("--port", type=int, help="listen port, 0 for any free port (overrides server.port)")
    start.add_argument("--stdio", action="store_true", help="speak MCP on stdin/stdout instead of HTTP")
    start.add_argument("--pool-size", type=int, help="pool.maxConnections")
    start.add_argument("--strategy", choices=STRATEGIES, help="balancer.strategy")
    start.add_argument(
        "--optimized",
        action="store_true",
        help="force the fast paths on: registry cache and fuzzy matching, monitoring",
    )
    start.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="server.logLevel")

    add_runtime_commands(cmds)
    client_config.add_parser(cmds)

    config = cmds.add_parser("config", help="configuration file tools")
    config_cmds = config.add_subparsers(dest="config_command", required=True, parser_class=_Parser)
    validate = config_cmds.add_parser("validate", help="check a configuration file; prints OK or the errors")
    validate.add_argument("path", nargs="?", default="config/qe-mcp.yaml")

    add_state_commands(top)

    systemd = top.add_parser("systemd", help="run the server as a systemd service")
    systemd_cmds = systemd.add_subparsers(dest="command", required=True, parser_class=_Parser)
    install = systemd_cmds.add_parser("install", help="put the unit and the default configuration in place")
    install.add_argument("--prefix", default="/", help="stage the files under this root (default /)")
    install.add_argument("--config-dir", help="where qe-mcp.yaml goes (default /etc/aqe-mcp)")
    install.add_argument("--unit-dir", help="where aqe-mcp.service goes (default /etc/systemd/system)")
    install.add_argument("--dry-run", action="store_true", help="print what would be written; write nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(words)
    if args.group == "systemd":
        return _install_systemd(args)
    if args.group == "state":
        from qe_appliance.store.backup import run as run_state_command

        return run_state_command(args)
    if args.command == "config":
        return _validate(args.path)
    if args.command == "client-config":
        from qe_appliance.control import client_config

        return client_config.run(args)
    if args.command != "start":
        from qe_appliance.control.commands import run as run_runtime_command

        return run_runtime_command(args)
    # Everything the server and its agents create (databases, WAL, sockets) is for the service user alone;
    # set before the agents' forkserver is forked, so they inherit it too.
    os.umask(0o077)
    return _start(args, words)


def _validate(path: str) -> int:
    from qe_appliance.config import ConfigError, load_config

    try:
        load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"OK: {path}")
    return 0


def _install_systemd(args: argparse.Namespace) -> int:
    from qe_appliance import systemd

    return systemd.install(
        args.prefix,
        args.config_dir or systemd.DEFAULT_CONFIG_DIR,
        args.unit_dir or systemd.DEFAULT_UNIT_DIR,
        dry_run=args.dry_run,
        version=systemd.systemd_version(),
    )


def _start(args: argparse.Namespace, words: list[str]) -> int:
    from qe_appliance.config import Config, ConfigError, apply_overrides, load_config

    # One of several workers a supervisor started (server.workers > 1), or None.
    me = None
    if os.environ.get("AQE_MCP_WORKER"):
        from qe_appliance import workers

        me = workers.role()

    # Relative paths in the file: said once logging is set up (the level and format come from the file).
    relative: list[str] = []

    def read() -> Config:
        # Start-up, and every reload: the same file with the same start flags on top.
        cfg = apply_overrides(
            load_config(args.config, relative.append),
            host=args.host,
            port=args.port,
            pool_size=args.pool_size,
            strategy=args.strategy,
            optimized=args.optimized,
        )
        return workers.for_worker(cfg, me) if me is not None else cfg

    try:
        cfg = read()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    from qe_appliance.logformat import configure as configure_logging

    level = (args.log_level or cfg.server.log_level).upper()
    configure_logging(level, cfg.server.log_format)
    for text in relative:
        logging.getLogger("aqe_mcp.config").warning("%s", text)
    source = read if args.config else None
    if me is None and not args.stdio and cfg.server.workers != 1:
        from qe_appliance import workers

        if workers.worker_count(cfg) > 1:  # this process supervises (and imports no server); each worker serves
            try:
                return workers.run_supervisor(cfg, words, source)
            except ConfigError as exc:
                print(exc, file=sys.stderr)
                return 2
            except OSError as exc:
                print(f"aqe-v3: cannot start: {exc}", file=sys.stderr)
                return 1
    from qe_appliance.lifecycle import run
    from qe_appliance.store.database import StoreError, StoreUnavailableError

    try:
        if me is not None:
            workers.become_worker(me)
            return run(cfg, source=source, worker=me)
        return run(cfg, stdio=args.stdio, source=source)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except StoreUnavailableError as exc:  # store.url names a server that cannot be used: fix the setting
        print(f"aqe-v3: cannot start: {exc}", file=sys.stderr)
        return 2
    except (OSError, StoreError) as exc:
        print(f"aqe-v3: cannot start: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
