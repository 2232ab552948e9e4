"""The memory tools: store, retrieve and search JSON values that agents share across sessions.

Values are kept as the JSON text they arrived as and returned as raw JSON (msgspec.Raw), never re-encoded.
Key length, value size and namespace characters are limited by the `memory` block of the configuration.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any

import msgspec

from qe_appliance._core.lru import LRUCache
from qe_appliance.config import DEFAULT_NAMESPACE, MemoryConfig
from qe_appliance.store.database import StoreError, retrying
from qe_appliance.store.interface import MemoryBackend
from qe_appliance.store.memory import HOT_ENTRIES, MemoryEntry, MemoryHit, SearchQueryError
from qe_appliance.tools.base import ToolContext, ToolError, ToolSpec
from qe_appliance.uris import memory_uri

TTL_MAX_SECONDS = 10 * 365 * 86400
SEARCH_LIMIT_MAX = 500
# Beyond any real store, and within SQLite's 64-bit integers.
SEARCH_OFFSET_MAX = 1_000_000_000
TAGS_MAX = 32
TAG_MAX_CHARS = 64
QUERY_MAX_CHARS = 1000

_DEFAULTS = MemoryConfig()
_HEADER = {"x-mcp-header": "Namespace"}

Key = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        description="Entry key, e.g. 'coverage/last-run' or 'flaky:login'; at most "
        f"{_DEFAULTS.max_key_length} characters unless the server's memory.maxKeyLength says otherwise.",
    ),
]
_NAMESPACE_TEXT = (
    "Namespace that groups related keys; by default letters, digits, '_', '.', ':' and '-', starting with a "
    "letter or digit, 64 at most (the server's memory.namespacePattern)."
)
Namespace = Annotated[str, msgspec.Meta(description=_NAMESPACE_TEXT, extra_json_schema=_HEADER)]
Timestamp = Annotated[datetime, msgspec.Meta(extra_json_schema={"format": "date-time"})]
Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=TAG_MAX_CHARS)]
Tags = Annotated[list[Tag], msgspec.Meta(max_length=TAGS_MAX)]


class MemoryStoreInput(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Save a JSON value under a key; storing an existing key replaces it and bumps its version."""

    key: Key
    value: Annotated[
        Any,
        msgspec.Meta(
            description="Any JSON value (object, array, string, number, bool, null), "
            f"at most {_DEFAULTS.max_value_bytes} bytes encoded unless memory.maxValueBytes says otherwise."
        ),
    ]
    namespace: Namespace = DEFAULT_NAMESPACE
    ttl_seconds: Annotated[
        Annotated[float, msgspec.Meta(gt=0, le=TTL_MAX_SECONDS)] | None,
        msgspec.Meta(
            description="Seconds until the entry expires and reads stop finding it; omit to keep it."
        ),
    ] = None
    tags: Annotated[
        Tags | None,
        msgspec.Meta(
            description=f"Labels for finding the entry again (case-sensitive, at most {TAGS_MAX} of "
            f"{TAG_MAX_CHARS} characters each), e.g. ['flaky', 'checkout']. Replaces the previous tags."
        ),
    ] = None
    metadata: Annotated[
        dict[str, Any] | None,
        msgspec.Meta(
            description="A JSON object about the value (source, author, run id); returned as given, not "
            "searched. Replaces the previous metadata."
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
    tags: list[str] | msgspec.UnsetType = msgspec.UNSET
    metadata: msgspec.Raw | None | msgspec.UnsetType = msgspec.UNSET
    version: int | msgspec.UnsetType = msgspec.UNSET
    created_at: Timestamp | msgspec.UnsetType = msgspec.UNSET
    updated_at: Timestamp | msgspec.UnsetType = msgspec.UNSET
    expires_at: Timestamp | None | msgspec.UnsetType = msgspec.UNSET


class MemorySearchInput(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Find entries by words (ranked), key glob, key prefix and tags; all live entries when none is given."""

    query: Annotated[
        Annotated[str, msgspec.Meta(min_length=1, max_length=QUERY_MAX_CHARS)] | None,
        msgspec.Meta(
            description="Words to find in keys, values and tags; every word must occur (case- and "
            "accent-insensitive, English stemming), 'word*' matches a prefix. Results are ranked by "
            "relevance (BM25) and carry a snippet."
        ),
    ] = None
    pattern: Annotated[
        Annotated[str, msgspec.Meta(min_length=1, max_length=QUERY_MAX_CHARS)] | None,
        msgspec.Meta(
            description="Glob on keys, case-sensitive: * any run, ? one character, [abc] one of a set; "
            "e.g. 'coverage/*'."
        ),
    ] = None
    prefix: Annotated[
        Annotated[str, msgspec.Meta(min_length=1)] | None,
        msgspec.Meta(description="Only keys starting with this text (taken literally)."),
    ] = None
    # UNSET rather than None: clients only mirror `x-mcp-header` from a plain string property.
    namespace: (
        Annotated[
            str,
            msgspec.Meta(
                description=f"Search only this namespace; omit to search all namespaces. {_NAMESPACE_TEXT}",
                extra_json_schema=_HEADER,
            ),
        ]
        | msgspec.UnsetType
    ) = msgspec.UNSET
    tags: Annotated[
        Tags | None, msgspec.Meta(description="Only entries carrying all of these tags (case-sensitive).")
    ] = None
    limit: Annotated[
        int, msgspec.Meta(ge=1, le=SEARCH_LIMIT_MAX, description="Most matches to return (page size).")
    ] = 20
    offset: Annotated[
        int, msgspec.Meta(ge=0, le=SEARCH_OFFSET_MAX, description="Matches to skip, for the next page.")
    ] = 0


class MemoryMatch(msgspec.Struct, rename="camel"):
    """One entry that matched."""

    key: str
    namespace: str
    value: msgspec.Raw
    tags: list[str]
    metadata: msgspec.Raw | None
    version: int
    updated_at: Timestamp
    expires_at: Timestamp | None
    score: Annotated[
        float | None, msgspec.Meta(description="Relevance to the query, higher is better; null without one.")
    ]
    snippet: Annotated[
        str | None,
        msgspec.Meta(
            description="Excerpt of the value with matched words in **bold**; null without a query."
        ),
    ]


class MemorySearchResult(msgspec.Struct, rename="camel"):
    """One page of matches (best first for a query, else by key then namespace) and how many match in all."""

    matches: list[MemoryMatch]
    total: int


def _timestamp(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _optional_timestamp(epoch: float | None) -> datetime | None:
    return None if epoch is None else _timestamp(epoch)


def _limits(ctx: ToolContext) -> MemoryConfig:
    limits: MemoryConfig = ctx.services.config.memory
    return limits


def _check_key(key: str, limits: MemoryConfig) -> None:
    if not 1 <= len(key) <= limits.max_key_length:
        raise ToolError(
            f"key is {len(key)} characters; keys must be 1..{limits.max_key_length} characters "
            f"(memory.maxKeyLength = {limits.max_key_length}). Use a shorter key, e.g. a path-like name or "
            "a hash of the long one."
        )


@functools.lru_cache(maxsize=1024)
def _namespace_allowed(pattern: str, namespace: str) -> bool:
    return re.fullmatch(pattern, namespace) is not None


def _check_namespace(namespace: str, limits: MemoryConfig) -> None:
    if not _namespace_allowed(limits.namespace_pattern, namespace):
        raise ToolError(
            f"namespace {namespace[:80]!r} is not allowed: it must match memory.namespacePattern = "
            f"{limits.namespace_pattern!r}. Pick a namespace that matches it, e.g. 'team-api' under the "
            "default pattern."
        )


def _check_size(name: str, encoded: bytes, limits: MemoryConfig) -> None:
    if len(encoded) > limits.max_value_bytes:
        raise ToolError(
            f"{name} is {len(encoded)} bytes as JSON; the limit is memory.maxValueBytes = "
            f"{limits.max_value_bytes} bytes. Store a summary, or split it over several keys."
        )


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ToolError(f"{name} is {value}; it must be {low}..{high}.")


class store_failures:  # noqa: N801 - used as `with store_failures(path):`, like contextlib's helpers
    """Turn a database failure into a result the caller can read instead of an internal error."""

    __slots__ = ("path",)

    def __init__(self, path: Path | str) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if isinstance(exc, StoreError):  # another process holds the lock too long, or the state directory vanished
            raise ToolError(str(exc)) from exc
        if isinstance(exc, sqlite3.Error):
            raise ToolError(
                f"the database {self.path} failed: {exc}. Retry; if it persists, check free disk space and the "
                "server log."
            ) from exc


async def memory_store(ctx: ToolContext, args: MemoryStoreInput) -> MemoryStoreResult:
    limits = _limits(ctx)
    _check_key(args.key, limits)
    _check_namespace(args.namespace, limits)
    if args.ttl_seconds is not None and not 0 < args.ttl_seconds <= TTL_MAX_SECONDS:
        raise ToolError(
            f"ttlSeconds is {args.ttl_seconds}; it must be > 0 and <= {TTL_MAX_SECONDS} (10 years). "
            "Omit it to keep the entry until it is replaced."
        )
    value_json = msgspec.json.encode(args.value)
    _check_size("value", value_json, limits)
    metadata_json = None if args.metadata is None else msgspec.json.encode(args.metadata)
    if metadata_json is not None:
        _check_size("metadata", metadata_json, limits)
    store: MemoryBackend = ctx.services.memory
    with store_failures(store.path):
        put = await retrying(
            store.put,
            args.namespace,
            args.key,
            value_json,
            args.ttl_seconds,
            tags=args.tags or (),
            metadata_json=metadata_json,
        )
    ctx.services.changes.changed(memory_uri(args.namespace, args.key), new=not put.replaced)
    return MemoryStoreResult(
        key=args.key,
        namespace=args.namespace,
        version=put.version,
        replaced=put.replaced,
        expires_at=_optional_timestamp(put.expires_at),
        persisted=True,
    )


def _raw(data: bytes | None) -> msgspec.Raw | None:
    return None if data is None else msgspec.Raw(data)


# The answer last built for an entry, by (namespace, key): the SQLite store hands back the very same entry
# object while what it read is still current, and then the answer is too.
_answers: LRUCache[tuple[str, str], tuple[MemoryEntry, msgspec.Raw]] = LRUCache(HOT_ENTRIES)


async def memory_retrieve(ctx: ToolContext, args: MemoryRetrieveInput) -> MemoryRetrieveResult | msgspec.Raw:
    limits = _limits(ctx)
    _check_key(args.key, limits)
    _check_namespace(args.namespace, limits)
    store: MemoryBackend = ctx.services.memory
    with store_failures(store.path):
        entry = await retrying(store.get, args.namespace, args.key)
    if entry is None:
        return MemoryRetrieveResult(found=False, key=args.key, namespace=args.namespace)
    where = (args.namespace, args.key)
    known = _answers.get(where)
    if known is not None and known[0] is entry:
        return known[1]
    result = MemoryRetrieveResult(found=True, created_at=_timestamp(entry.created_at), **_shown(entry))
    answer = msgspec.Raw(msgspec.json.encode(result))
    _answers.put(where, (entry, answer))
    return answer


def _match(hit: MemoryHit) -> MemoryMatch:
    return MemoryMatch(score=hit.score, snippet=hit.snippet, **_shown(hit.entry))


def _shown(entry: MemoryEntry) -> dict[str, Any]:
    """The fields a retrieved entry and a search match both show."""
    return {
        "key": entry.key,
        "namespace": entry.namespace,
        "value": msgspec.Raw(entry.value_json),
        "tags": entry.tags,
        "metadata": _raw(entry.metadata_json),
        "version": entry.version,
        "updated_at": _timestamp(entry.updated_at),
        "expires_at": _optional_timestamp(entry.expires_at),
    }


async def memory_search(ctx: ToolContext, args: MemorySearchInput) -> MemorySearchResult:
    namespace = None if args.namespace is msgspec.UNSET else args.namespace
    if namespace is not None:
        _check_namespace(namespace, _limits(ctx))
    _check_range("limit", args.limit, 1, SEARCH_LIMIT_MAX)
    _check_range("offset", args.offset, 0, SEARCH_OFFSET_MAX)
    store: MemoryBackend = ctx.services.memory
    try:
        with store_failures(store.path):
            hits, total = await retrying(
                store.search,
                query=args.query,
                namespace=namespace,
                pattern=args.pattern,
                prefix=args.prefix,
                tags=args.tags or (),
                limit=args.limit,
                offset=args.offset,
            )
    except SearchQueryError as exc:
        raise ToolError(str(exc)) from None
    return MemorySearchResult(matches=[_match(hit) for hit in hits], total=total)


TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        name="qe_memory_store",
        title="Store memory",
        description=(
            "Save any JSON value under a key in a namespace so later sessions and other agents can read it "
            "(test results, flaky-test notes, decisions), with optional tags and metadata. Storing an "
            "existing "
            "key replaces its value and increments its version. Optional ttlSeconds makes the entry expire. "
            "The write is durable on disk before the result is returned."
        ),
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
            "Read the JSON value stored under a key in a namespace, with its tags, metadata, version and "
            "timestamps. A key that was never stored or has expired returns found=false (not an error)."
        ),
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
            "Search stored entries: full-text words over keys, values and tags ranked by relevance (BM25) "
            "with a highlighted snippet, and/or a glob or prefix on keys, required tags and a namespace. "
            "Paged with limit and offset; total is the number of matches across all pages."
        ),
        input_type=MemorySearchInput,
        handler=memory_search,
        output_type=MemorySearchResult,
        read_only=True,
        idempotent=True,
    ),
)
