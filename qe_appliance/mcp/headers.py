"""The 2026-07-28 routing headers: MCP-Protocol-Version, Mcp-Method and Mcp-Name must agree with the body,
and `Mcp-Param-*` headers must mirror the `x-mcp-header` arguments they claim to carry."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

from qe_appliance.mcp import jsonrpc as rpc
from qe_appliance.mcp.jsonrpc import RpcError
from qe_appliance.tools.base import ToolSpec

# One `x-mcp-header` argument: (property path, JSON type, header name as documented, the name lower-cased as
# headers are looked up, the dotted path for messages), the strings made once per tool.
HeaderParam = tuple[tuple[str, ...], Any, str, str, str]

_B64 = re.compile(r"^=\?base64\?(.*)\?=$")
_CANON_INT = re.compile(r"^-?[0-9]+(\.0+)?$")


def decode_header_value(value: str | None) -> str | None:
    """Trim optional whitespace and undo the `=?base64?...?=` wrapping; None when malformed."""
    if value is None:
        return None
    value = value.strip(" \t")
    if not value.startswith("=?"):
        return value
    m = _B64.fullmatch(value)
    if m is None:
        return value
    try:
        raw = base64.b64decode(m.group(1), validate=True)
        return raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def check_routing_headers(
    headers: Mapping[str, str], duplicated: frozenset[str], version: Any, method: str, name: Any
) -> None:
    """The routing headers against the body, in the order the reference SDK checks them."""
    for header in ("mcp-protocol-version", "mcp-method", "mcp-name"):
        if header in duplicated:
            raise RpcError(rpc.HEADER_MISMATCH, f"the {header} header appears more than once")
    if decode_header_value(headers.get("mcp-protocol-version")) != version:
        raise RpcError(
            rpc.HEADER_MISMATCH,
            f"MCP-Protocol-Version header does not match params._meta protocol version ({version!r})",
        )
    if decode_header_value(headers.get("mcp-method")) != method:
        raise RpcError(rpc.HEADER_MISMATCH, f"Mcp-Method header does not match the body's method {method!r}")
    if name is not None and decode_header_value(headers.get("mcp-name")) != name:
        field = "params.uri" if method == "resources/read" else "params.name"
        raise RpcError(rpc.HEADER_MISMATCH, f"Mcp-Name header does not match {field} {name!r}")


def header_params(tool: ToolSpec) -> tuple[HeaderParam, ...]:
    """Every `x-mcp-header` property of a tool's input (HeaderParam)."""
    found: list[HeaderParam] = []
    stack: list[tuple[tuple[str, ...], Any]] = [((), tool.input_schema)]
    while stack:
        path, schema = stack.pop()
        if not isinstance(schema, dict):
            continue
        token = schema.get("x-mcp-header")
        if path and isinstance(token, str):
            header = f"Mcp-Param-{token}"
            found.append((path, schema.get("type"), header, header.lower(), ".".join(path)))
        for name, sub in (schema.get("properties") or {}).items():
            stack.append(((*path, name), sub))
    return tuple(found)


def check_param_headers(
params: tuple[HeaderParam, ...], arguments: Any, headers: Mapping[str, str], duplicated: frozenset[str],
absent_ok: bool,
) -> None:
    """`Mcp-Param-*` headers must mirror the `x-mcp-header` arguments they claim to carry."""
    for path, json_type, header, key, where in params:
        raw = headers.get(key)
        value: Any = arguments
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if raw is not None and key in duplicated:
            raise RpcError(rpc.HEADER_MISMATCH, f"{header} header appears more than once")
        rendered = _render(value) if value is not None else None
        if rendered is None:
            if raw is not None:
                raise RpcError(rpc.HEADER_MISMATCH, f"{header} header is present but argument {where!r} is absent")
            continue
        if raw is None:
            if absent_ok:
                continue
            raise RpcError(rpc.HEADER_MISMATCH, f"{header} header is missing but argument {where!r} is present")
        decoded = decode_header_value(raw)
        if decoded is None:
            raise RpcError(rpc.HEADER_MISMATCH, f"{header} header carries a malformed base64 value")
        same = decoded == rendered
        # Bounded length: int() refuses over 4300 digits, and no real argument comes near 40.
        if not same and json_type == "integer" and len(decoded) <= 40 and _CANON_INT.fullmatch(decoded):
            same = isinstance(value, int | float) and int(decoded.split(".")[0]) == value
        if not same:
            raise RpcError(rpc.HEADER_MISMATCH, f"{header} header does not match argument {where!r}")


def _render(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None
