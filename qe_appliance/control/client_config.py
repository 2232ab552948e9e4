"""`aqe-v3 mcp client-config CLIENT [--http URL | --stdio]`: the snippet each MCP client expects for this install.

The snippet goes to stdout (pipe it into the client's file); where it goes and what to set goes to stderr.
Formats follow each client's documentation: `claude mcp add` (Claude Code), `claude_desktop_config.json`
(Claude Desktop), `.cursor/mcp.json` (Cursor) and `.vscode/mcp.json` (VS Code). A bearer token is never
printed: the header refers to the environment variable TOKEN_ENV (or, in VS Code, a password prompt).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any, Final

CLIENTS: Final = ("claude-code", "claude-desktop", "cursor", "vscode")
SERVER_NAME: Final = "aqe-mcp"
TOKEN_ENV: Final = "AQE_MCP_TOKEN"

# Where each client reads the snippet from, shown on stderr.
_WHERE: Final = {
    "claude-code": "run this in your project (add --scope user to use it in every project)",
    "claude-desktop": "merge into claude_desktop_config.json: ~/.config/Claude/ (Linux), "
    "~/Library/Application Support/Claude/ (macOS), %APPDATA%\\Claude\\ (Windows); then restart Claude Desktop",
    "cursor": "merge into .cursor/mcp.json in your project, or ~/.cursor/mcp.json for every project",
    "vscode": "merge into .vscode/mcp.json in your workspace (or run 'MCP: Open User Configuration')",
}


class Unsupported(Exception):
    """The client cannot be set up that way; the message says what to do instead."""


def add_parser(cmds: Any) -> None:
    parser: argparse.ArgumentParser = cmds.add_parser(
        "client-config", help="print the set-up snippet for an MCP client (claude-code, cursor, ...)"
    )
    parser.add_argument("client", choices=CLIENTS)
    parser.add_argument("--config", help="the server's YAML file (default: built-in defaults)")
    transport = parser.add_mutually_exclusive_group()
    transport.add_argument("--http", metavar="URL", nargs="?", const="",
                           help="connect to a running server (default URL from the config's server.host/port)")
    transport.add_argument("--stdio", action="store_true", help="let the client start the server (the default)")


def run(args: argparse.Namespace) -> int:
    from qe_appliance.config import ConfigError, load_config

    config_path = str(Path(args.config).resolve()) if args.config else None
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        if args.http is not None:
            host, port = cfg.server.host, cfg.server.port
            url = args.http or f"http://{host if ':' not in host else f'[{host}]'}:{port}/mcp"
            text = http_snippet(args.client, url, cfg.server.auth.enabled)
        else:
            text = stdio_snippet(args.client, server_command(config_path))
    except Unsupported as exc:
        print(f"aqe-v3: {exc}", file=sys.stderr)
        return 2
    print(f"# {args.client}: {_WHERE[args.client]}", file=sys.stderr)
    if args.http is not None and cfg.server.auth.enabled:
        print(f"# auth is on: export {TOKEN_ENV}=<a token from server.auth> where the client runs", file=sys.stderr)
    print(text)
    return 0


def server_command(config_path: str | None) -> list[str]:
    """The command line that starts this install's server on stdio, with absolute paths."""
    script = Path(sys.executable).parent / "aqe-v3"
    found = str(script) if script.exists() else shutil.which("aqe-v3")
    command = [found] if found else [sys.executable, "-m", "qe_appliance.cli"]
    command += ["mcp", "start", "--stdio"]
    return command + (["--config", config_path] if config_path else [])


def stdio_snippet(client: str, command: list[str]) -> str:
    program, args = command[0], command[1:]
    if client == "claude-code":
        return shlex.join(["claude", "mcp", "add", "--transport", "stdio", SERVER_NAME, "--", *command])
    if client == "vscode":
        return _json({"servers": {SERVER_NAME: {"type": "stdio", "command": program, "args": args}}})
    return _json({"mcpServers": {SERVER_NAME: {"command": program, "args": args}}})


def http_snippet(client: str, url: str, auth: bool) -> str:
    if client == "claude-desktop":
        raise Unsupported(
            "claude_desktop_config.json only starts local servers: use --stdio, or add the URL in "
            "Claude Desktop under Settings > Connectors"
        )
    if client == "claude-code":
        # Double quotes: the shell expands the variable, so the token stays out of the printed line.
        header = f' --header "Authorization: Bearer ${TOKEN_ENV}"' if auth else ""
        return shlex.join(["claude", "mcp", "add", "--transport", "http", SERVER_NAME, url]) + header
    if client == "vscode":
        server: dict[str, Any] = {"type": "http", "url": url}
        doc: dict[str, Any] = {"servers": {SERVER_NAME: server}}
        if auth:
            server["headers"] = {"Authorization": "Bearer ${input:aqe-mcp-token}"}
            doc["inputs"] = [{"type": "promptString", "id": "aqe-mcp-token",
                              "description": "aqe-mcp bearer token (from server.auth)", "password": True}]
        return _json(doc)
    entry: dict[str, Any] = {"url": url}
    if auth:
        entry["headers"] = {"Authorization": f"Bearer ${{env:{TOKEN_ENV}}}"}
    return _json({"mcpServers": {SERVER_NAME: entry}})


def _json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2)
