"""JSON-RPC 2.0 framing for MCP: error codes, the error -> HTTP status table, and msgspec codecs."""

from __future__ import annotations

from typing import Any

import msgspec

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
HEADER_MISMATCH = -32020
MISSING_CLIENT_CAPABILITY = -32021
UNSUPPORTED_PROTOCOL_VERSION = -32022
REQUEST_CANCELLED = -32800

# Protocol-level rejections map to 4xx so intermediaries see them; everything else rides a 200.
HTTP_STATUS = {
    PARSE_ERROR: 400,
    INVALID_REQUEST: 400,
    INVALID_PARAMS: 400,
    HEADER_MISMATCH: 400,
    MISSING_CLIENT_CAPABILITY: 400,
    UNSUPPORTED_PROTOCOL_VERSION: 400,
    METHOD_NOT_FOUND: 404,
}

MODERN_VERSIONS = ("2026-07-28",)
HANDSHAKE_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
LATEST_HANDSHAKE = HANDSHAKE_VERSIONS[-1]

META_PROTOCOL_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CLIENT_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
META_LOG_LEVEL = "io.modelcontextprotocol/logLevel"
META_SERVER_INFO = "io.modelcontextprotocol/serverInfo"

NESTED_TOO_DEEPLY = "JSON nested too deeply to decode"
# msgspec reports bad JSON as DecodeError, but invalid UTF-8 in a string as UnicodeDecodeError and nesting
# past the interpreter's stack as RecursionError: all three mean the client sent something unreadable.
UNREADABLE = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


class RpcError(Exception):
    """A JSON-RPC error to send back; `data` is attached verbatim."""

    def __init__(self, code: int, message: str, data: Any = None, http_status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
        # Overrides the code -> status table where HTTP semantics differ (an ended session is a 404).
        self.http_status = http_status


class Message(msgspec.Struct, omit_defaults=True):
    """One inbound JSON-RPC message; `params` stays raw until the method's handler decodes it."""

    jsonrpc: Any = None
    id: Any = msgspec.UNSET
    method: Any = msgspec.UNSET
    params: msgspec.Raw = msgspec.Raw(b"")
    result: Any = msgspec.UNSET
    error: Any = msgspec.UNSET


class ErrorObject(msgspec.Struct, omit_defaults=True):
    """The JSON-RPC 2.0 error object (`error` of an error response)."""

    code: int
    message: str
    data: Any = None


class ErrorResponse(msgspec.Struct):
    jsonrpc: str
    id: Any
    error: ErrorObject


class ResultResponse(msgspec.Struct):
    jsonrpc: str
    id: Any
    result: Any


class Notification(msgspec.Struct):
    jsonrpc: str
    method: str
    params: Any


encoder = msgspec.json.Encoder()
_message_decoder = msgspec.json.Decoder(Message)
_any_decoder = msgspec.json.Decoder()


def decode_message(body: bytes) -> Message:
    """Decode one message; raises RpcError with -32700/-32600 for what is not a single JSON-RPC object."""
    try:
        msg = _message_decoder.decode(body)
    except msgspec.ValidationError:
        # Valid JSON but not an object: say what it was so a batch sender knows batching is gone.
        value = decode_any(body)
        if isinstance(value, list):
            raise RpcError(
                INVALID_REQUEST, "JSON-RPC batches are not supported; send one message per request"
            ) from None
        raise RpcError(INVALID_REQUEST, "a JSON-RPC message must be a JSON object") from None
    except UNREADABLE as exc:
        raise parse_error(exc) from None
    if msg.jsonrpc != "2.0":
        raise RpcError(INVALID_REQUEST, 'a JSON-RPC message must carry "jsonrpc": "2.0"')
    if msg.id is not msgspec.UNSET and (isinstance(msg.id, bool) or not isinstance(msg.id, str | int)):
        raise RpcError(INVALID_REQUEST, "the request id must be a string or an integer")
    if msg.method is not msgspec.UNSET and not isinstance(msg.method, str):
        raise RpcError(INVALID_REQUEST, "method must be a string")
    if msg.method is msgspec.UNSET and msg.result is msgspec.UNSET and msg.error is msgspec.UNSET:
        raise RpcError(INVALID_REQUEST, "a JSON-RPC message needs a method (request) or a result/error")
    return msg


def decode_any(body: bytes) -> Any:
    try:
        return _any_decoder.decode(body)
    except UNREADABLE as exc:
        raise parse_error(exc) from None


def unreadable_reason(exc: Exception) -> str:
    """What is wrong with JSON that raised one of UNREADABLE, in words a client can act on."""
    if isinstance(exc, RecursionError):
        # Only reachable when server.maxJsonDepth is set above what the decoder's stack allows.
        return f"{NESTED_TOO_DEEPLY}; flatten it"
    if isinstance(exc, UnicodeDecodeError):
        return f"a string is not valid UTF-8 ({exc.reason}); JSON text must be UTF-8"
    return str(exc)


def parse_error(exc: Exception) -> RpcError:
    return RpcError(PARSE_ERROR, f"Parse error: {unreadable_reason(exc)}")


def error_bytes(msg_id: Any, code: int, message: str, data: Any = None) -> bytes:
    return encoder.encode(ErrorResponse("2.0", msg_id, ErrorObject(code, message, data)))


def result_bytes(msg_id: Any, result: Any) -> bytes:
    return encoder.encode(ResultResponse("2.0", msg_id, result))


def notification_bytes(method: str, params: Any) -> bytes:
    return encoder.encode(Notification("2.0", method, params))
