"""The `aqe://` URIs of what the tools produce, built in one place for the tools (which link to them and
report their changes) and the MCP resources layer (which serves them).

Each variable part is one path segment, percent-encoded as RFC 3986 (and RFC 6570's `{var}` expansion) does:
a memory key `run/42` is `aqe://memory/default/run%2F42`, so a key's `/` never splits the path.
"""

from __future__ import annotations

from urllib.parse import quote

SCHEME = "aqe://"


def segment(value: str) -> str:
    """One path segment: every character outside RFC 3986's unreserved set percent-encoded (UTF-8)."""
    return quote(value, safe="")


def report_uri(report_id: str) -> str:
    return f"{SCHEME}coverage/{segment(report_id)}"


def gaps_uri(report_id: str, file: str | None = None) -> str:
    uri = f"{report_uri(report_id)}/gaps"
    return uri if file is None else f"{uri}?file={segment(file)}"


def memory_uri(namespace: str, key: str) -> str:
    return f"{SCHEME}memory/{segment(namespace)}/{segment(key)}"


def task_uri(task_id: str) -> str:
    return f"{SCHEME}tasks/{segment(task_id)}"


def tests_uri(generation_id: str) -> str:
    return f"{SCHEME}tests/{segment(generation_id)}"


def result_uri(result_id: str) -> str:
    return f"{SCHEME}results/{segment(result_id)}"


POLICIES_URI = f"{SCHEME}quality/policies"
DASHBOARD_URI = f"{SCHEME}dashboard"
