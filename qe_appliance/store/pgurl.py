"""The `store.url` setting: what a PostgreSQL URL may hold (never a password) and the password it is used with."""

from __future__ import annotations

import pathlib
import urllib.parse
from typing import Final

SCHEMES: Final = ("postgresql", "postgres")
# Query parameters asyncpg understands that an operator may need; anything else is probably a typo.
QUERY_KEYS: Final = frozenset({"host", "port", "sslmode", "application_name", "connect_timeout"})
EXAMPLE: Final = "postgresql://aqe@db.example.com:5432/aqe"


def url_problem(url: str) -> str | None:
    """None for a usable PostgreSQL URL; else what is wrong with it and how to write it."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"is not a valid URL ({exc}); write it like {EXAMPLE}"
    if parts.scheme not in SCHEMES:
        return (f"must be a postgresql:// URL such as {EXAMPLE} (or empty, for SQLite files in "
                "server.stateDir); got the scheme " + repr(parts.scheme))
    if parts.password is not None:
        return ("holds a password; remove it from the URL and put it in a file named by store.passwordFile "
                "(readable by the server's user only), or in PGPASSWORD or ~/.pgpass")
    if not parts.username:
        return f"names no user; write it like {EXAMPLE}"
    if not parts.path.strip("/"):
        return f"names no database; end it with /DATABASE, like {EXAMPLE}"
    if port is not None and not 0 < port < 65536:
        return f"has port {port}; use 1-65535 (PostgreSQL listens on 5432 by default)"
    unknown = sorted(set(urllib.parse.parse_qs(parts.query, keep_blank_values=True)) - QUERY_KEYS)
    if unknown:
        return f"has unknown parameter(s) {', '.join(unknown)}; allowed: {', '.join(sorted(QUERY_KEYS))}"
    if not parts.hostname and "host" not in urllib.parse.parse_qs(parts.query):
        return f"names no host; write it like {EXAMPLE}, or ?host=/run/postgresql for a unix socket"
    return None


def read_password(path: str) -> str:
    """The first line of the password file. Raises OSError with the file named."""
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise OSError(f"store.passwordFile {path}: {exc.strerror or exc}; check the path and that the server's "
                      "user can read it") from exc
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise OSError(f"store.passwordFile {path} is empty; put the password on its first line")
    return lines[0]
