"""Length-prefixed msgpack RPC between the server and its agents (one request in flight per connection)."""

from __future__ import annotations

import socket
import struct
from typing import Any

import msgspec

HEADER = struct.Struct("!I")
MAX_FRAME = 256 * 1024 * 1024


class Call(msgspec.Struct, array_like=True):
    """`op` is "call" (run `fn` with `payload`), "ping" or "sleep" (tests: hold the agent busy); `trace` is the
    caller's W3C traceparent when the server traces ("" otherwise): the agent then times its work."""

    id: int
    op: str
    fn: str = ""
    payload: Any = None
    trace: str = ""


class Result(msgspec.Struct, array_like=True):
    id: int
    ok: bool
    value: Any = None
    error: str = ""
    # When the call carried a trace: when the agent started and ended the work (wall clock, ns).
    started_ns: int = 0
    ended_ns: int = 0


encoder = msgspec.msgpack.Encoder()
call_decoder = msgspec.msgpack.Decoder(Call)
result_decoder = msgspec.msgpack.Decoder(Result)


def frame(message: Call | Result) -> bytes:
    body = encoder.encode(message)
    return HEADER.pack(len(body)) + body


def recv_exact(sock: socket.socket, n: int) -> bytes | None:
    """n bytes from a blocking socket, or None when the peer closed first."""
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket) -> bytes | None:
    head = recv_exact(sock, HEADER.size)
    if head is None:
        return None
    (length,) = HEADER.unpack(head)
    if length > MAX_FRAME:
        raise ValueError(f"frame of {length} bytes is over the {MAX_FRAME}-byte limit")
    return recv_exact(sock, length)
