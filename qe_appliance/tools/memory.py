"""The memory tools: store, retrieve and search JSON values that agents share across sessions.

Values are kept as the JSON text they arrived as and returned as raw JSON (msgspec.Raw), never re-encoded.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

from qe_appliance.store.memory import MemoryEntry, MemoryStore
from qe_appliance.tools.base import ToolContext, ToolError, ToolSpec

CATEGORY = "memory"

KEY_MAX_CHARS = 512
NAMESPACE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
VALUE_MAX_BYTES = 1024 * 1024
TTL_MAX_SECONDS = 10 * 365 * 86400
SEARCH_LIMIT_MAX = 500
DEFAULT_NAMESPACE = "default"

# `$` in a Python regex also matches before a trailing newline (which the decoder's `pattern` check lets
# through), so the handler checks again with fullmatch.
_NAMESPACE_RE = re.compile(NAMESPACE_PATTERN)
_HEADER = {"x-mcp-header": "Namespace"}

Key = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=KEY_MAX_CHARS,
        description=f"Entry key, 1..{KEY_MAX_CHARS} characters, e.g. 'coverage/last-run' or 'flaky:login'.",
    ),
]
NamespaceName = Annotated[str, msgspec.Meta(pattern=NAMESPACE_PATTERN)]
Namespace = Annotated[
    NamespaceName,
    msgspec.Meta(
        description="Namespace that groups related keys (letters, digits, '_', '.', ':', '-'; at most 64).",
        extra_json_schema=_HEADER,
    ),
]
Timestamp = Annotated[datetime, msgspec.Meta(extra_json_schema={"format": "date-time"})]


class MemoryStoreInput(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Save a JSON value under a key; storing an existing key replaces it and bumps its version."""

    key: Key
    value: Annotated[
        Any,
        msgspec.Meta(
            description="Any JSON value (object, array, string, number, bool, null), "
            f"at most {VALUE_MAX_BYTES} bytes encoded."
        ),
    ]
    namespace: Namespace = DEFAULT_NAMESPACE
    ttl_seconds: Annotated[
        Annotated[float, msgspec.Meta(gt=0, le=TTL_MAX_SECONDS)] | None,
        msgspec.Meta(
            description="Seconds until the entry expires and reads stop finding it; omit to keep it."
        ),
    ] = None


class MemoryStoreResult(msgspec.Struct, rename="camel"):
    """The stored entry's identity and version; `persisted` is true once the write is on disk."""

    key: str
    namespace: str
    version: Annotated[int, msgspec.Meta(description="1 for a new entry, +1 for each replacement.")]
    replaced: Annotated[bool, msgspec.Meta(description="True when a live value was overwritten.")]
    expires_at: Annotated[Timestamp | None, msgspec.Meta(description="null when the entry never expires.")]
    persisted: Annotated[
        bool, msgspec.Meta(description="Always true: the write was on disk before replying.")
    ]


class MemoryRetrieveInput(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Read the value stored under a key; a missing or expired key answers found=false."""

    key: Key
    namespace: Namespace = DEFAULT_NAMESPACE


class MemoryRetrieveResult(msgspec.Struct, rename="camel", omit_defaults=True):
    """The entry when found; only found, key and namespace when it is missing or expired."""

    found: bool
    key: str
    namespace: str
    value: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    version: int | msgspec.UnsetType = msgspec.UNSET
    created_at: Timestamp | msgspec.UnsetType = msgspec.UNSET
    updated_at: Timestamp | msgspec.UnsetType = msgspec.UNSET
    expires_at: Timestamp | None | msgspec.UnsetType = msgspec.UNSET


class MemorySearchInput(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Find entries by key: a glob pattern, a key prefix, or both; all live entries when neither is given."""

    pattern: Annotated[
        Annotated[str, msgspec.Meta(min_length=1)] | None,
        msgspec.Meta(
            description="Glob on keys, case-sensitive: * any run, ? one character, [abc] one of a set; "
            "e.g. 'coverage/*'."
        ),
    ] = None
    prefix: Annotated[
        Annotated[str, msgspec.Meta(min_length=1)] | None,
        msgspec.Meta(description="Only keys starting with this text."),
    ] = None
    # UNSET rather than None: clients only mirror `x-mcp-header` from a plain string property.
    namespace: (
        Annotated[
            NamespaceName,
            msgspec.Meta(
                description="Search only this namespace; omit to search all namespaces.",
                extra_json_schema=_HEADER,
            ),
        ]
        | msgspec.UnsetType
    ) = msgspec.UNSET
    limit: Annotated[
        int, msgspec.Meta(ge=1, le=SEARCH_LIMIT_MAX, description="Most matches to return (page size).")
    ] = 20
    offset: Annotated[int, msgspec.Meta(ge=0, description="Matches to skip, for the next page.")] = 0


class MemoryMatch(msgspec.Struct, rename="camel"):
    """One entry that matched."""

    key: str
    namespace: str
    value: msgspec.Raw
    version: int
    updated_at: Timestamp
    expires_at: Timestamp | None


class MemorySearchResult(msgspec.Struct, rename="camel"):
    """One page of matches ordered by key then namespace, and how many match in all."""

    matches: list[MemoryMatch]
    total: int


def _timestamp(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _optional_timestamp(epoch: float | None) -> datetime | None:
    return None if epoch is None else _timestamp(epoch)


def _check_key(key: str) -> None:
    if not 1 <= len(key) <= KEY_MAX_CHARS:
        raise ToolError(
            f"key is {len(key)} characters; the limit is 1..{KEY_MAX_CHARS} characters (key length). "
            "Use a shorter key, e.g. a path-like name or a hash of the long one."
        )


def _check_namespace(namespace: str) -> None:
    if not _NAMESPACE_RE.fullmatch(namespace):
        raise ToolError(
            f"namespace {namespace!r} is not allowed; it must match {NAMESPACE_PATTERN} "
            "(start with a letter or digit, then letters, digits, '_', '.', ':' or '-', 64 at most)."
        )


def _check_limit(name: str, value: int, low: int, high: int | None) -> None:
    if value < low or (high is not None and value > high):
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        raise ToolError(f"{name} is {value}; it must be {bounds}.")


@contextmanager
def _store_errors(store: MemoryStore) -> Iterator[None]:
    """Turn a database failure into a result the caller can read instead of an internal error."""
    try:
        yield
    except sqlite3.Error as exc:
        raise ToolError(
            f"the memory store at {store.path} failed: {exc}. Retry; if it persists, check free disk "
            "space and the server log."
        ) from exc


async def memory_store(ctx: ToolContext, args: MemoryStoreInput) -> MemoryStoreResult:
    _check_key(args.key)
    _check_namespace(args.namespace)
    if args.ttl_seconds is not None and not 0 < args.ttl_seconds <= TTL_MAX_SECONDS:
        raise ToolError(
            f"ttlSeconds is {args.ttl_seconds}; it must be > 0 and <= {TTL_MAX_SECONDS} (10 years). "
            "Omit it to keep the entry until it is replaced."
        )
    value_json = msgspec.json.encode(args.value)
    if len(value_json) > VALUE_MAX_BYTES:
        raise ToolError(
            f"value is {len(value_json)} bytes as JSON; the limit is {VALUE_MAX_BYTES} bytes (value size). "
            "Store a summary, or split it over several keys."
        )
    store: MemoryStore = ctx.services.memory
    with _store_errors(store):
        put = store.put(args.namespace, args.key, value_json, args.ttl_seconds)
    return MemoryStoreResult(
        key=args.key,
        namespace=args.namespace,
        version=put.version,
        replaced=put.replaced,
        expires_at=_optional_timestamp(put.expires_at),
        persisted=True,
    )


async def memory_retrieve(ctx: ToolContext, args: MemoryRetrieveInput) -> MemoryRetrieveResult:
    _check_key(args.key)
    _check_namespace(args.namespace)
    store: MemoryStore = ctx.services.memory
    with _store_errors(store):
        entry = store.get(args.namespace, args.key)
    if entry is None:
        return MemoryRetrieveResult(found=False, key=args.key, namespace=args.namespace)
    return MemoryRetrieveResult(
        found=True,
        key=entry.key,
        namespace=entry.namespace,
        value=msgspec.Raw(entry.value_json),
        version=entry.version,
        created_at=_timestamp(entry.created_at),
        updated_at=_timestamp(entry.updated_at),
        expires_at=_optional_timestamp(entry.expires_at),
    )


def _match(entry: MemoryEntry) -> MemoryMatch:
    return MemoryMatch(
        key=entry.key,
        namespace=entry.namespace,
        value=msgspec.Raw(entry.value_json),
        version=entry.version,
        updated_at=_timestamp(entry.updated_at),
        expires_at=_optional_timestamp(entry.expires_at),
    )


async def memory_search(ctx: ToolContext, args: MemorySearchInput) -> MemorySearchResult:
    namespace = None if args.namespace is msgspec.UNSET else args.namespace
    if namespace is not None:
        _check_namespace(namespace)
    _check_limit("limit", args.limit, 1, SEARCH_LIMIT_MAX)
    _check_limit("offset", args.offset, 0, None)
    store: MemoryStore = ctx.services.memory
    with _store_errors(store):
        entries, total = store.search(
            namespace=namespace,
            pattern=args.pattern,
            prefix=args.prefix,
            limit=args.limit,
            offset=args.offset,
        )
    return MemorySearchResult(matches=[_match(entry) for entry in entries], total=total)


TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        name="qe_memory_store",
        title="Store memory",
        description=(
            "Save any JSON value under a key in a namespace so later sessions and other agents can read it "
            "(test results, flaky-test notes, decisions). Storing an existing key replaces its value and "
            "increments its version. Optional ttlSeconds makes the entry expire. The write is durable on "
            "disk before the result is returned."
        ),
        category=CATEGORY,
        input_type=MemoryStoreInput,
        handler=memory_store,
        output_type=MemoryStoreResult,
        read_only=False,
        destructive=True,  # an existing value is overwritten
        idempotent=True,
    ),
    ToolSpec(
        name="qe_memory_retrieve",
        title="Retrieve memory",
        description=(
            "Read the JSON value stored under a key in a namespace, with its version and timestamps. "
            "A key that was never stored or has expired returns found=false (not an error)."
        ),
        category=CATEGORY,
        input_type=MemoryRetrieveInput,
        handler=memory_retrieve,
        output_type=MemoryRetrieveResult,
        read_only=True,
        idempotent=True,
    ),
    ToolSpec(
        name="qe_memory_search",
        title="Search memory",
        description=(
            "List stored entries whose keys match a glob pattern (e.g. 'coverage/*') and/or start with a "
            "prefix, in one namespace or all of them, with their values. Results are ordered by key and "
            "paged with limit and offset; total is the number of matches across all pages."
        ),
        category=CATEGORY,
        input_type=MemorySearchInput,
        handler=memory_search,
        output_type=MemorySearchResult,
        read_only=True,
        idempotent=True,
    ),
)
