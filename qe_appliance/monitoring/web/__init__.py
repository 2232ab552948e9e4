"""The /dashboard page: one self-contained HTML file (inline CSS and script, nothing fetched from elsewhere) that
polls /dashboard.json and draws it, and the headers it is served with.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources
from typing import Final

PAGE: Final = resources.files(__package__).joinpath("dashboard.html").read_bytes()


def _hashes(tag: str) -> str:
    """CSP source expressions allowing exactly the page's inline <tag> blocks, and nothing injected later."""
    blocks = re.findall(rb"<%s>(.*?)</%s>" % (tag.encode(), tag.encode()), PAGE, re.S)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b).digest()).decode()}'" for b in blocks)


HEADERS: Final = (
    ("content-security-policy",
     f"default-src 'none'; script-src {_hashes('script')}; style-src {_hashes('style')}; connect-src 'self'; "
     "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-cache"),
)
HTML: Final = "text/html; charset=utf-8"


def since(query: str) -> float | None:
    """The `since` parameter of /dashboard.json (history points newer than this Unix time), None when absent.

    Raises ValueError with what to send instead."""
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name == "since":
            try:
                stamp = float(value)
            except ValueError:
                raise ValueError(
                    f"since must be a Unix time in seconds (e.g. since=1700000000.5), got {value!r}"
                ) from None
            if stamp != stamp or stamp in (float("inf"), float("-inf")):
                raise ValueError(f"since must be a finite Unix time in seconds, got {value!r}")
            return stamp
    return None
