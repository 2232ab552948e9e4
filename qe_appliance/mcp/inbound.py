"""What a transport hands the dispatcher (one message and how it arrived) and what it writes back."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from qe_appliance.mcp.sessions import Session

if TYPE_CHECKING:
    from qe_appliance.tools.runner import CallResult

# Whose fault a failed request or tool call was: the caller's (bad arguments, unknown names) or the
# server's (a bug, a timeout, a crashed agent). Only server faults count towards the error-rate alert.
Fault = Literal["caller", "server"]

Send = Callable[[bytes], Awaitable[None]]


@dataclass(slots=True)
class Inbound:
    """One inbound message as its transport saw it.

    `headers` are lower-cased HTTP headers (None on stdio, which skips the header checks);
    `duplicated` names headers sent more than once; `session` is the stdio connection's session;
    `send` delivers a notification in-band before the reply (HTTP turns the reply into SSE);
    `principal` is who the transport authenticated (None without auth): sessions are bound to it.
    """

    headers: Mapping[str, str] | None = None
    duplicated: frozenset[str] = frozenset()
    principal: str | None = None
    session: Session | None = None
    send: Send | None = None
    # Filled in while handling, for metrics: the method (bounded to known names) and, when it was answered
    # with a JSON-RPC error, whose fault that was ("caller" or "server": only the latter pages anyone).
    method: str = "invalid"
    error: Fault | None = None
    # tools/call only: the tool that ran (typos resolved) and the runner's result (its outcome, for traces).
    tool: str = ""
    call: CallResult | None = None


@dataclass(slots=True)
class Reply:
    """What to send back: HTTP status, JSON body (None for 202) and extra headers."""

    status: int = 200
    body: bytes | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)


ACCEPTED = Reply(202)


@dataclass
class MethodCall:
    """One request to a method both eras share (the dispatcher's method table): its params object, the era
    it came in, and the handshake-era session (None in the 2026-07-28 era)."""

    params: dict[str, Any]
    modern: bool
    session: Session | None
    exch: Inbound


Method = Callable[[MethodCall], Awaitable[dict[str, Any]]]
