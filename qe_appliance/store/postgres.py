"""Every store in one PostgreSQL database (`store.url`), for several aqe-mcp instances on several machines:
memory with full-text search (tsvector + GIN, ts_rank), learned patterns, tasks and coverage reports.

The driver is asyncpg: it is async (no thread per query, nothing blocks the event loop), pools connections,
speaks the binary protocol with prepared statements cached per connection, and is the async PostgreSQL
driver our house style is modelled on. Each store method is a coroutine with the name, arguments and result
of its SQLite counterpart, so the tools call both through `database.retrying` unchanged.

A lost server is not a crash: a call fails with StoreUnavailableError (retryable; nothing half-written,
since every multi-statement write is one transaction), and `PgStores.problem()` makes /readyz 503 until a
ping succeeds again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import socket
import time
import unicodedata
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any, Final, Literal

import asyncpg
import msgspec

from qe_appliance.config import LearningConfig, StoreConfig
from qe_appliance.instances import pid_alive
from qe_appliance.store.database import StoreError, StoreUnavailableError
from qe_appliance.store.memory import (
    PURGE_BATCH,
    MemoryEntry,
    MemoryHit,
    PutResult,
    SearchQueryError,
    prefix_upper_bound,
)
from qe_appliance.store.patterns import (
    EVENTS_KEPT,
    PREVIEW_CHARS,
    EventKind,
    LearningStatus,
    LearnResult,
    Pattern,
    PatternDraft,
    UnknownPatternError,
    best_filters,
    learning_status,
    normalise,
    pattern_filters,
    pattern_from_row,
    quality_score,
)
from qe_appliance.store.pgqueue import PgTaskQueue
from qe_appliance.store.pgurl import read_password
from qe_appliance.store.reports import MAX_ARTIFACTS, MAX_REPORTS, Artifact, StoredReport
from qe_appliance.store.tasks import CALL_COLUMNS, CALL_STRATEGY, CALL_SUBTASK, call_row, subtask_row, task_row

log = logging.getLogger("aqe_mcp.store")

CONNECT_TIMEOUT_S: Final = 5.0
# A statement that takes longer is cancelled and reported; no store call needs more than milliseconds.
COMMAND_TIMEOUT_S: Final = 30.0
POOL_MAX: Final = 10
PING_INTERVAL_S: Final = 1.0
# Full-text configuration: Snowball English stemming without a stop-word list, so every word counts as in
# SQLite's porter tokenizer; case and accents are folded in Python (`search_text`) before PostgreSQL sees it.
TS_CONFIG: Final = "aqe_search"

_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        f"CREATE TEXT SEARCH DICTIONARY {TS_CONFIG}_stem (TEMPLATE = snowball, Language = english)",
        f"CREATE TEXT SEARCH CONFIGURATION {TS_CONFIG} (COPY = simple)",
        f"""ALTER TEXT SEARCH CONFIGURATION {TS_CONFIG} ALTER MAPPING FOR asciiword, word, numword,
            asciihword, hword, numhword, hword_asciipart, hword_part, hword_numpart WITH {TS_CONFIG}_stem""",
        # COLLATE "C": keys order and compare by code point, as SQLite's TEXT does.
        """CREATE TABLE memory_entries (
            id BIGSERIAL PRIMARY KEY,
            namespace TEXT COLLATE "C" NOT NULL,
            key TEXT COLLATE "C" NOT NULL,
            value BYTEA NOT NULL,
            tags TEXT[] NOT NULL DEFAULT '{}',
            metadata BYTEA,
            version INTEGER NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION,
            search TSVECTOR NOT NULL,
            UNIQUE (namespace, key)
        )""",
        "CREATE INDEX memory_entries_key ON memory_entries (key, namespace)",
        "CREATE INDEX memory_entries_expires ON memory_entries (expires_at) WHERE expires_at IS NOT NULL",
        "CREATE INDEX memory_entries_tags ON memory_entries USING GIN (tags)",
        "CREATE INDEX memory_entries_search ON memory_entries USING GIN (search)",
        """CREATE TABLE patterns (
            id TEXT PRIMARY KEY,
            text TEXT NOT NULL,
            norm TEXT NOT NULL,
            pattern_type TEXT NOT NULL,
            domain TEXT NOT NULL,
            language TEXT NOT NULL,
            framework TEXT,
            example TEXT,
            confidence DOUBLE PRECISION NOT NULL,
            times_taught INTEGER NOT NULL,
            usage_count INTEGER NOT NULL,
            success_count INTEGER NOT NULL,
            quality DOUBLE PRECISION NOT NULL,
            tier TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            promoted_at DOUBLE PRECISION
        )""",
        "CREATE INDEX patterns_group ON patterns (language, pattern_type, domain, framework)",
        "CREATE INDEX patterns_quality ON patterns (quality DESC)",
        """CREATE TABLE learning_events (
            id BIGSERIAL PRIMARY KEY,
            at DOUBLE PRECISION NOT NULL,
            kind TEXT NOT NULL,
            pattern_id TEXT NOT NULL,
            domain TEXT NOT NULL,
            language TEXT NOT NULL,
            detail TEXT NOT NULL
        )""",
        """CREATE TABLE task (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            strategy TEXT NOT NULL,
            priority TEXT NOT NULL,
            status TEXT NOT NULL,
            total INTEGER NOT NULL,
            done INTEGER NOT NULL DEFAULT 0,
            failed INTEGER NOT NULL DEFAULT 0,
            created_at DOUBLE PRECISION NOT NULL,
            finished_at DOUBLE PRECISION,
            owner_host TEXT NOT NULL,
            owner_pid INTEGER NOT NULL
        )""",
        "CREATE INDEX task_created ON task (created_at)",
        """CREATE TABLE subtask (
            task_id TEXT NOT NULL REFERENCES task (id),
            idx INTEGER NOT NULL,
            input BYTEA NOT NULL,
            status TEXT NOT NULL,
            result BYTEA,
            error TEXT,
            started_at DOUBLE PRECISION,
            finished_at DOUBLE PRECISION,
            PRIMARY KEY (task_id, idx)
        )""",
        """CREATE TABLE reports (
            id TEXT PRIMARY KEY,
            format TEXT NOT NULL,
            root TEXT NOT NULL,
            origin TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            body BYTEA NOT NULL
        )""",
        "CREATE INDEX reports_root ON reports (root, created_at)",
        "CREATE INDEX reports_created ON reports (created_at)",
    ),
    (
        """CREATE TABLE artifacts (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            title TEXT NOT NULL,
            mime_type TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            body BYTEA NOT NULL
        )""",
        "CREATE INDEX artifacts_kind ON artifacts (kind, created_at)",
        "CREATE INDEX artifacts_created ON artifacts (created_at)",
    ),
    # tasks.CALL_MIGRATION: tool calls run as MCP tasks.
    (
        """CREATE TABLE task_call (
            task_id TEXT PRIMARY KEY REFERENCES task (id),
            principal TEXT,
            ttl_ms BIGINT,
            expires_at DOUBLE PRECISION
        )""",
        "CREATE INDEX task_call_expiry ON task_call (expires_at)",
    ),
    # Orchestrated subtasks as a queue any instance takes from (store/pgqueue.py), and the instances' fleets.
    # Tasks not queued (max_running NULL: older ones, MCP tool-call tasks) stay owned by the process running them.
    (
        """ALTER TABLE task ADD COLUMN category TEXT, ADD COLUMN rank INTEGER, ADD COLUMN max_running INTEGER,
            ADD COLUMN caller_transport TEXT, ADD COLUMN caller_authenticated BOOLEAN""",
        """ALTER TABLE subtask ADD COLUMN owner TEXT, ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0,
            ADD COLUMN lease_until DOUBLE PRECISION""",
        "CREATE INDEX task_queued ON task (rank, created_at) WHERE status = 'running' AND max_running IS NOT NULL",
        "CREATE INDEX subtask_owner ON subtask (owner) WHERE status = 'running'",
        """CREATE TABLE instance (
            id TEXT PRIMARY KEY,
            address TEXT,
            started_at DOUBLE PRECISION NOT NULL,
            last_seen DOUBLE PRECISION NOT NULL,
            fleet BYTEA NOT NULL
        )""",
    ),
)
# Migrations of several instances starting at once are serialised on this advisory lock.
_MIGRATION_LOCK: Final = 0x61716533

# Connection-level failures: the server is down, restarting or unreachable. Retrying later may work.
_UNAVAILABLE: Final = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.TooManyConnectionsError,
)


# The connection of the `PgMemoryStore.batch()` this task is inside, whose transaction its puts join.
_BATCH: ContextVar[asyncpg.Connection | None] = ContextVar("aqe_pg_batch", default=None)

_NAMED = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")


def bind(sql: str, params: dict[str, Any]) -> tuple[str, list[Any]]:
    """`:name` placeholders (as the SQLite stores write them) as asyncpg's `$n`, with the argument list."""
    order: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in order:
            order[name] = len(order) + 1
        return f"${order[name]}"

    text = _NAMED.sub(number, sql)
    return text, [params[name] for name in order]


class PgDatabase:
    """The pool of one PostgreSQL database, its schema, and whether the server is reachable now."""

    def __init__(self, config: StoreConfig) -> None:
        self.url = config.url
        self._password = read_password(config.password_file) if config.password_file else None
        self.pool: asyncpg.Pool | None = None
        self._problem: str | None = None
        self._monitor: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Connect, bring the schema up to date and start watching the server. Raises StoreUnavailableError
        (unreachable, refused, bad password) or StoreError (anything else) with the fix."""
        try:
            try:
                self.pool = await asyncpg.create_pool(
                    dsn=self.url,
                    password=self._password,
                    min_size=1,
                    max_size=POOL_MAX,
                    timeout=CONNECT_TIMEOUT_S,
                    command_timeout=COMMAND_TIMEOUT_S,
                )
                async with self.pool.acquire() as conn:
                    await self._migrate(conn)
            except BaseException:
                if self.pool is not None:
                    self.pool.terminate()
                raise
        except asyncpg.InvalidPasswordError as exc:
            raise StoreUnavailableError(
                f"PostgreSQL at {self.url} refused the password ({exc}); check store.passwordFile, PGPASSWORD "
                "or ~/.pgpass"
            ) from exc
        except asyncpg.InvalidCatalogNameError as exc:
            raise StoreUnavailableError(
                f"PostgreSQL at {self.url}: {exc}; create it (createdb -O USER DATABASE) or fix store.url"
            ) from exc
        except _UNAVAILABLE as exc:
            raise StoreUnavailableError(
                f"cannot reach PostgreSQL at {self.url}: {exc or type(exc).__name__}; check that the server runs "
                "and that store.url names its host, port and database"
            ) from exc
        except asyncpg.PostgresError as exc:
            raise StoreError(f"PostgreSQL at {self.url} failed while preparing the schema: {exc}") from exc
        self._monitor = asyncio.get_running_loop().create_task(self._watch())

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute("CREATE TABLE IF NOT EXISTS aqe_schema_version (version INTEGER NOT NULL)")
            current = await conn.fetchval("SELECT max(version) FROM aqe_schema_version") or 0
            if current > len(_MIGRATIONS):
                raise StoreError(
                    f"the database at {self.url} has schema version {current}, newer than this build "
                    f"understands ({len(_MIGRATIONS)}); upgrade aqe-mcp or point store.url elsewhere"
                )
            # Each step in the one transaction: a crash mid-way leaves the previous version intact.
            for version in range(current, len(_MIGRATIONS)):
                for statement in _MIGRATIONS[version]:
                    await conn.execute(statement)
                await conn.execute("INSERT INTO aqe_schema_version (version) VALUES ($1)", version + 1)

    async def _watch(self) -> None:
        """Ping every PING_INTERVAL_S so readiness tells a lost server (and its return) without traffic."""
        while True:
            await asyncio.sleep(PING_INTERVAL_S)
            try:
                async with self.connection() as conn:
                    await conn.fetchval("SELECT 1", timeout=CONNECT_TIMEOUT_S)
            except StoreError:
                continue

    async def connect(self) -> asyncpg.Connection:
        """A connection of its own, outside the pool (a LISTEN needs one that stays)."""
        return await asyncpg.connect(dsn=self.url, password=self._password, timeout=CONNECT_TIMEOUT_S)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; a lost server becomes StoreUnavailableError and is reported by `problem`."""
        assert self.pool is not None, "PgDatabase.open() first"
        batch = _BATCH.get()
        if batch is not None:
            yield batch
            return
        try:
            async with self.pool.acquire(timeout=CONNECT_TIMEOUT_S) as conn:
                yield conn
        except _UNAVAILABLE as exc:
            self._lost(f"{exc or type(exc).__name__}")
            raise StoreUnavailableError(
                f"PostgreSQL at {self.url} is unreachable ({exc or type(exc).__name__}); nothing was stored. "
                "Retry when it is back"
            ) from exc
        except asyncpg.PostgresError as exc:
            raise StoreError(f"PostgreSQL at {self.url} failed: {exc}. Retry; if it persists, check its log") from exc
        if self._problem is not None:
            log.warning("PostgreSQL at %s is reachable again", self.url)
            self._problem = None

    def _lost(self, cause: str) -> None:
        if self._problem is None:
            log.error("PostgreSQL at %s is unreachable (%s); tool calls that store fail until it is back",
                      self.url, cause)
        self._problem = f"PostgreSQL at {self.url} is unreachable: {cause}"

    def problem(self) -> str | None:
        return self._problem

    def close(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
        if self.pool is not None:
            self.pool.terminate()


def search_text(text: str) -> str:
    """Text as the full-text index sees it: accents and case folded, words split where SQLite's unicode61
    tokenizer splits them (at every character that is not a letter or digit)."""
    folded = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return " ".join(re.findall(r"[^\W_]+", folded.casefold()))


def ts_query(text: str) -> str:
    """A user's search words as a to_tsquery expression with the semantics of `memory.fts_query`: every word
    must occur, `word*` matches a prefix, a word with punctuation inside matches as a phrase."""
    terms = []
    for word in text.replace("\x00", " ").split():
        prefix = word.endswith("*")
        tokens = search_text(word.rstrip("*")).split()
        if not tokens:
            continue
        # Tokens are letters and digits only, so quoting them needs no escaping.
        quoted = [f"'{token}'" for token in tokens]
        if prefix:
            quoted[-1] += ":*"
        terms.append("(" + " <-> ".join(quoted) + ")")
    if not terms:
        raise SearchQueryError(
            f"query {text!r} has no words to search for; give one or more words (letters or digits), "
            "or search by pattern or tags instead"
        )
    return " & ".join(terms)


def glob_regex(pattern: str) -> str:
    """SQLite's GLOB (`*`, `?`, `[...]`, `[^...]`, case-sensitive) as an anchored POSIX regular expression."""
    out = ["^"]
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : end]
            negate = body.startswith("^")
            body = body[1:] if negate else body
            escaped = body.replace("\\", "\\\\").replace("[", "\\[")
            out.append("[" + ("^" if negate else "") + escaped + "]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    out.append("$")
    return "".join(out)


_TAGS = msgspec.json.Encoder()
_UPSERT = """
INSERT INTO memory_entries AS e
    (namespace, key, value, tags, metadata, version, created_at, updated_at, expires_at, search)
VALUES (:namespace, :key, :value, :tags, :metadata, 1, :now, :now, :expires_at,
        setweight(to_tsvector('aqe_search', :s_key), 'A') || setweight(to_tsvector('aqe_search', :s_tags), 'B')
        || setweight(to_tsvector('aqe_search', :s_value), 'C'))
ON CONFLICT (namespace, key) DO UPDATE SET
    value = excluded.value,
    tags = excluded.tags,
    metadata = excluded.metadata,
    version = CASE WHEN e.expires_at <= :now THEN 1 ELSE e.version + 1 END,
    created_at = CASE WHEN e.expires_at <= :now THEN :now ELSE e.created_at END,
    updated_at = :now,
    expires_at = excluded.expires_at,
    search = excluded.search
RETURNING version, created_at
"""
_LIVE = "(e.expires_at IS NULL OR e.expires_at > :now)"
_COLUMNS = "e.namespace, e.key, e.value, e.version, e.created_at, e.updated_at, e.expires_at, e.tags, e.metadata"


def _without_nul(**texts: str | Sequence[str] | None) -> None:
    """PostgreSQL text cannot hold U+0000 (SQLite can): refuse it with what to change, not a driver error."""
    for name, text in texts.items():
        values = [text] if isinstance(text, str) else text or ()
        if any("\x00" in value for value in values):
            raise StoreError(f"{name} contains a NUL character (U+0000), which the PostgreSQL store cannot hold; "
                             "remove it")


def _entry(row: Sequence[Any]) -> MemoryEntry:
    namespace, key, value, version, created, updated, expires, tags, metadata = row
    return MemoryEntry(namespace, key, value, version, created, updated, expires, list(tags), metadata)


class PgMemoryStore:
    """`memory.MemoryStore` in PostgreSQL: the same methods, as coroutines."""

    def __init__(self, database: PgDatabase) -> None:
        self.database = database
        self.path = database.url  # where the store lives, for messages

    async def put(
        self,
        namespace: str,
        key: str,
        value_json: bytes,
        ttl_seconds: float | None,
        *,
        tags: Sequence[str] = (),
        metadata_json: bytes | None = None,
    ) -> PutResult:
        """Insert or replace `key` in `namespace`; committed (and durable) on return."""
        _without_nul(namespace=namespace, key=key, tags=tags)
        now = time.time()
        expires_at = None if ttl_seconds is None else now + ttl_seconds
        distinct = sorted(set(tags))
        sql, args = bind(_UPSERT, {
            "namespace": namespace,
            "key": key,
            "value": value_json,
            "tags": distinct,
            "metadata": metadata_json,
            "now": now,
            "expires_at": expires_at,
            "s_key": search_text(key),
            "s_tags": search_text(" ".join(distinct)),
            "s_value": search_text(value_json.decode()),
        })
        async with self.database.connection() as conn:
            version, created_at = await conn.fetchrow(sql, *args)
        return PutResult(version=version, replaced=version > 1, created_at=created_at, updated_at=now,
                         expires_at=expires_at)

    async def get(self, namespace: str, key: str) -> MemoryEntry | None:
        """The live entry, or None when the key is missing or has expired."""
        if "\x00" in key or "\x00" in namespace:
            return None  # such a key cannot have been stored
        sql, args = bind(
            f"SELECT {_COLUMNS} FROM memory_entries e WHERE e.namespace = :namespace AND e.key = :key AND {_LIVE}",
            {"namespace": namespace, "key": key, "now": time.time()},
        )
        async with self.database.connection() as conn:
            row = await conn.fetchrow(sql, *args)
        return None if row is None else _entry(row)

    async def search(
        self,
        *,
        query: str | None = None,
        namespace: str | None = None,
        pattern: str | None = None,
        prefix: str | None = None,
        tags: Sequence[str] = (),
        limit: int = 20,
        offset: int = 0,
    ) -> tuple[list[MemoryHit], int]:
        """As `MemoryStore.search`; words are matched with tsvector/tsquery and ranked with ts_rank."""
        _without_nul(namespace=namespace, pattern=pattern, prefix=prefix, tags=tags)
        params: dict[str, Any] = {"now": time.time(), "limit": limit, "offset": offset}
        clauses = [_LIVE]
        if namespace is not None:
            clauses.append("e.namespace = :namespace")
            params["namespace"] = namespace
        if pattern is not None:
            clauses.append("e.key ~ :pattern")
            params["pattern"] = glob_regex(pattern)
        if prefix:
            clauses.append("e.key >= :prefix")
            params["prefix"] = prefix
            upper = prefix_upper_bound(prefix)
            if upper is not None:
                clauses.append("e.key < :upper")
                params["upper"] = upper
        if tags:
            clauses.append("e.tags @> :tags")
            params["tags"] = sorted(set(tags))
        if query is not None:
            params["query"] = ts_query(query)
            clauses.append("e.search @@ to_tsquery('aqe_search', :query)")
        where = " AND ".join(clauses)
        if query is None:
            columns, order = _COLUMNS, "e.key, e.namespace"
        else:
            columns = (f"{_COLUMNS}, ts_rank(e.search, to_tsquery('aqe_search', :query)) AS score, "
                       "ts_headline('aqe_search', convert_from(e.value, 'UTF8'), to_tsquery('aqe_search', :query), "
                       "'StartSel=**, StopSel=**, MaxWords=12, MinWords=4, MaxFragments=1, "
                       "FragmentDelimiter=…')")
            order = "score DESC, e.key, e.namespace"
        page_sql, page_args = bind(
            f"SELECT {columns} FROM memory_entries e WHERE {where} ORDER BY {order} LIMIT :limit OFFSET :offset",
            params,
        )
        count_sql, count_args = bind(f"SELECT count(*) FROM memory_entries e WHERE {where}",
                                     {k: v for k, v in params.items() if k not in ("limit", "offset")})
        # One snapshot for the page and its total.
        async with self.database.connection() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            rows = await conn.fetch(page_sql, *page_args)
            total = await conn.fetchval(count_sql, *count_args)
        if query is None:
            return [MemoryHit(_entry(row)) for row in rows], total
        return [MemoryHit(_entry(row[:9]), float(row[9]), row[10]) for row in rows], total

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        """Run the puts this task makes inside the block as one transaction (imports, seeding); an
        exception rolls all of it back."""
        async with self.database.connection() as conn, conn.transaction():
            token = _BATCH.set(conn)
            try:
                yield
            finally:
                _BATCH.reset(token)

    async def namespaces(self, prefix: str, limit: int) -> list[str]:
        """Namespaces with a live entry that start with `prefix`, in order, at most `limit`."""
        sql, args = bind(
            f"SELECT DISTINCT e.namespace FROM memory_entries e WHERE {_LIVE} "
            "AND starts_with(e.namespace, :prefix) ORDER BY e.namespace LIMIT :limit",
            {"now": time.time(), "prefix": prefix, "limit": limit},
        )
        async with self.database.connection() as conn:
            rows = await conn.fetch(sql, *args)
        return [row[0] for row in rows]

    async def purge_expired(self, batch: int = PURGE_BATCH) -> int:
        """Delete up to `batch` expired entries; returns how many were removed."""
        async with self.database.connection() as conn:
            status = await conn.execute(
                "DELETE FROM memory_entries WHERE id IN "
                "(SELECT id FROM memory_entries WHERE expires_at <= $1 LIMIT $2)",
                time.time(), batch,
            )
        return int(status.split()[-1])

    async def integrity_check(self) -> bool:
        """Every row's search vector is the one its key, tags and value give now (PostgreSQL checks its own
        indexes; what could drift is the vector this store computes on write)."""
        async with self.database.connection() as conn, conn.transaction(isolation="repeatable_read"):
            rows = await conn.fetch("SELECT id, key, tags, value FROM memory_entries")
            differing = await conn.fetchval(
                "SELECT count(*) FROM memory_entries e "
                "JOIN unnest($1::bigint[], $2::text[], $3::text[], $4::text[]) AS f(id, k, t, v) ON f.id = e.id "
                "WHERE e.search IS DISTINCT FROM (setweight(to_tsvector('aqe_search', f.k), 'A') || "
                "setweight(to_tsvector('aqe_search', f.t), 'B') || setweight(to_tsvector('aqe_search', f.v), 'C'))",
                [row[0] for row in rows],
                [search_text(row[1]) for row in rows],
                [search_text(" ".join(row[2])) for row in rows],
                [search_text(bytes(row[3]).decode()) for row in rows],
            )
        return int(differing) == 0

    def close(self) -> None:
        """The pool belongs to PgStores, which closes it."""


_RATE = "CASE WHEN usage_count > 0 THEN success_count::float8 / usage_count ELSE 0.0 END"


def _r4(expression: str) -> str:
    return f"round(({expression})::numeric, 4)::float8"


# In the order of Pattern's fields, as in patterns._PATTERN_COLUMNS.
_PATTERN_COLUMNS = (
    f"id, text, pattern_type, domain, language, framework, example, {_r4('confidence')}, times_taught, "
    f"usage_count, success_count, {_r4(_RATE)}, {_r4('quality')}, tier, created_at, updated_at, promoted_at"
)


class PgPatternStore:
    """`patterns.PatternStore` in PostgreSQL: the same methods, as coroutines."""

    def __init__(self, database: PgDatabase) -> None:
        self.database = database
        self.path = database.url

    async def get(self, pattern_id: str) -> Pattern | None:
        async with self.database.connection() as conn:
            return await self._get(conn, pattern_id)

    @staticmethod
    async def _get(conn: asyncpg.Connection, pattern_id: str) -> Pattern | None:
        row = await conn.fetchrow(f"SELECT {_PATTERN_COLUMNS} FROM patterns WHERE id = $1", pattern_id)
        return None if row is None else pattern_from_row(row)

    async def learn(
        self, draft: PatternDraft, rules: LearningConfig, outcome: tuple[str, bool] | None = None
    ) -> LearnResult:
        """As `PatternStore.learn`: one transaction, serialised against every other learner (any instance)
        by a table lock, so two instances teaching the same pattern merge instead of both creating it."""
        now = time.time()
        fields = {
            "text": draft.text,
            "norm": normalise(draft.text),
            "pattern_type": draft.pattern_type,
            "domain": normalise(draft.domain),
            "language": normalise(draft.language),
            "framework": None if draft.framework is None else normalise(draft.framework),
        }
        async with self.database.connection() as conn:
            async with conn.transaction():
                await conn.execute("LOCK TABLE patterns IN SHARE ROW EXCLUSIVE MODE")
                if outcome is not None and await self._get(conn, outcome[0]) is None:
                    raise UnknownPatternError(
                        f"no pattern has id {outcome[0]!r}; use an id returned by qe_learn_pattern or listed "
                        "by qe_learn_status"
                    )
                similar = await self._near_duplicate(conn, fields, rules.dedupe_threshold)
                action: Literal["created", "merged"]
                if similar is None:
                    pattern_id, action, similarity = await self._insert(conn, fields, draft, now), "created", None
                else:
                    pattern_id, similarity = similar
                    await self._merge(conn, pattern_id, draft, similarity, now)
                    action = "merged"
                touched = [pattern_id]
                if outcome is not None:
                    await self._record_outcome(conn, *outcome, now)
                    if outcome[0] != pattern_id:
                        touched.append(outcome[0])
                promoted = [pid for pid in touched if await self._promote_if_due(conn, pid, rules, now)]
                await conn.execute(
                    "DELETE FROM learning_events WHERE id <= (SELECT max(id) FROM learning_events) - $1", EVENTS_KEPT
                )
            learned = await self._get(conn, pattern_id)
            assert learned is not None
            outcome_pattern = None if outcome is None else await self._get(conn, outcome[0])
        return LearnResult(action=action, similarity=similarity, pattern=learned, outcome_pattern=outcome_pattern,
                           promoted=promoted)

    async def replace(self, pattern_id: str, draft: PatternDraft) -> LearnResult:
        """As `PatternStore.replace`: corrected text, uses and successes from zero, one transaction."""
        now = time.time()
        async with self.database.connection() as conn:
            async with conn.transaction():
                updated = await conn.fetchval(
                    "UPDATE patterns SET text = $2, norm = $3, pattern_type = $4, domain = $5, language = $6, "
                    "framework = $7, example = $8, confidence = $9, times_taught = 1, usage_count = 0, "
                    "success_count = 0, quality = $10, tier = 'short-term', promoted_at = NULL, updated_at = $11 "
                    "WHERE id = $1 RETURNING id",
                    pattern_id, draft.text, normalise(draft.text), draft.pattern_type, normalise(draft.domain),
                    normalise(draft.language), None if draft.framework is None else normalise(draft.framework),
                    draft.example, draft.confidence, quality_score(draft.confidence, 0, 0), now,
                )
                if updated is None:
                    raise UnknownPatternError(
                        f"no pattern has id {pattern_id!r} to replace; use an id returned by qe_learn_pattern or "
                        "listed by qe_learn_status"
                    )
                await self._event(conn, now, "replaced", pattern_id, "text replaced; uses and successes start again")
            replaced = await self._get(conn, pattern_id)
        assert replaced is not None
        return LearnResult(action="replaced", similarity=None, pattern=replaced, outcome_pattern=None, promoted=[])

    @staticmethod
    async def _near_duplicate(
        conn: asyncpg.Connection, fields: dict[str, Any], threshold: float
    ) -> tuple[str, float] | None:
        from rapidfuzz import fuzz, process

        rows = await conn.fetch(
            "SELECT id, norm FROM patterns WHERE language = $1 AND pattern_type = $2 AND domain = $3 "
            "AND framework IS NOT DISTINCT FROM $4",
            fields["language"], fields["pattern_type"], fields["domain"], fields["framework"],
        )
        if not rows:
            return None
        best = process.extractOne(
            fields["norm"], [row[1] for row in rows], scorer=fuzz.ratio, score_cutoff=threshold * 100
        )
        if best is None:
            return None
        _, score, index = best
        return rows[index][0], round(score / 100, 4)

    async def _insert(self, conn: asyncpg.Connection, fields: dict[str, Any], draft: PatternDraft, now: float) -> str:
        pattern_id = f"pat_{secrets.token_hex(8)}"
        sql, args = bind(
            "INSERT INTO patterns (id, text, norm, pattern_type, domain, language, framework, example, confidence, "
            "times_taught, usage_count, success_count, quality, tier, created_at, updated_at) VALUES (:id, :text, "
            ":norm, :pattern_type, :domain, :language, :framework, :example, :confidence, 1, 0, 0, :quality, "
            "'short-term', :now, :now)",
            {**fields, "id": pattern_id, "example": draft.example, "confidence": draft.confidence,
             "quality": quality_score(draft.confidence, 0, 0), "now": now},
        )
        await conn.execute(sql, *args)
        framework = f"/{fields['framework']}" if fields["framework"] else ""
        detail = f"new {draft.pattern_type} for {fields['language']}{framework} in {fields['domain']}"
        await self._event(conn, now, "created", pattern_id, f"{detail} (confidence {draft.confidence:.2f})")
        return pattern_id

    async def _merge(
        self, conn: asyncpg.Connection, pattern_id: str, draft: PatternDraft, similarity: float, now: float
    ) -> None:
        confidence, taught = await conn.fetchrow(
            "UPDATE patterns SET confidence = (confidence * times_taught + $2) / (times_taught + 1), "
            "times_taught = times_taught + 1, example = coalesce(example, $3), updated_at = $4 "
            "WHERE id = $1 RETURNING confidence, times_taught",
            pattern_id, draft.confidence, draft.example, now,
        )
        await self._rescore(conn, pattern_id)
        detail = f"confidence now {confidence:.2f}, taught {taught} times"
        await self._event(conn, now, "merged", pattern_id,
                          f"merged a near-duplicate (similarity {similarity:.2f}); {detail}")

    async def _record_outcome(self, conn: asyncpg.Connection, pattern_id: str, success: bool, now: float) -> None:
        uses, successes = await conn.fetchrow(
            "UPDATE patterns SET usage_count = usage_count + 1, success_count = success_count + $2, "
            "updated_at = $3 WHERE id = $1 RETURNING usage_count, success_count",
            pattern_id, int(success), now,
        )
        await self._rescore(conn, pattern_id)
        verdict = "success" if success else "failure"
        await self._event(conn, now, "outcome", pattern_id, f"{verdict}: {successes} of {uses} uses succeeded")

    @staticmethod
    async def _rescore(conn: asyncpg.Connection, pattern_id: str) -> None:
        confidence, uses, successes = await conn.fetchrow(
            "SELECT confidence, usage_count, success_count FROM patterns WHERE id = $1", pattern_id
        )
        await conn.execute("UPDATE patterns SET quality = $2 WHERE id = $1", pattern_id,
                           quality_score(confidence, uses, successes))

    async def _promote_if_due(
        self, conn: asyncpg.Connection, pattern_id: str, rules: LearningConfig, now: float
    ) -> bool:
        row = await conn.fetchrow(
            "UPDATE patterns SET tier = 'long-term', promoted_at = $2 WHERE id = $1 AND tier = 'short-term' "
            f"AND success_count >= $3 AND {_RATE} >= $4 AND confidence >= $5 "
            f"RETURNING success_count, {_RATE}, confidence",
            pattern_id, now, rules.promotion_min_successes, rules.promotion_min_success_rate,
            rules.promotion_min_confidence,
        )
        if row is None:
            return False
        successes, rate, confidence = row
        detail = f"{successes} successful uses, success rate {rate:.2f}, confidence {confidence:.2f}"
        await self._event(conn, now, "promoted", pattern_id, f"promoted to long-term: {detail}")
        return True

    @staticmethod
    async def _event(conn: asyncpg.Connection, now: float, kind: EventKind, pattern_id: str, detail: str) -> None:
        await conn.execute(
            "INSERT INTO learning_events (at, kind, pattern_id, domain, language, detail) "
            "SELECT $1, $2, id, domain, language, $3 FROM patterns WHERE id = $4",
            now, kind, detail, pattern_id,
        )

    async def best(
        self,
        language: str,
        *,
        framework: str | None = None,
        domain: str | None = None,
        pattern_type: str | None = None,
        limit: int = 5,
    ) -> list[Pattern]:
        """As `PatternStore.best`."""
        where, params = best_filters(language, framework, domain, pattern_type, limit)
        sql, args = bind(f"SELECT {_PATTERN_COLUMNS} FROM patterns {where}", params)
        async with self.database.connection() as conn:
            return [pattern_from_row(row) for row in await conn.fetch(sql, *args)]

    async def status(
        self, *, domain: str | None = None, language: str | None = None, top: int = 10, recent: int = 10
    ) -> LearningStatus:
        """As `PatternStore.status`."""
        clauses, params = pattern_filters(domain, language)
        where = " AND ".join(clauses)
        groups_sql, groups_args = bind(
            "SELECT pattern_type, domain, tier, count(*), sum(confidence), sum(usage_count), sum(success_count), "
            f"sum(CASE WHEN usage_count > 0 THEN {_RATE} END), sum((usage_count > 0)::int) "
            f"FROM patterns WHERE {where} GROUP BY pattern_type, domain, tier",
            params,
        )
        top_sql, top_args = bind(
            f"SELECT id, substr(text, 1, {PREVIEW_CHARS + 1}), pattern_type, domain, language, framework, tier, "
            f"quality, usage_count, {_RATE} FROM patterns WHERE {where} ORDER BY quality DESC, updated_at DESC "
            "LIMIT :top",
            {**params, "top": top},
        )
        events_sql, events_args = bind(
            f"SELECT at, kind, pattern_id, domain, language, detail FROM learning_events WHERE {where} "
            "ORDER BY id DESC LIMIT :recent",
            {**params, "recent": recent},
        )
        async with self.database.connection() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            groups = await conn.fetch(groups_sql, *groups_args)
            top_rows = await conn.fetch(top_sql, *top_args)
            events = await conn.fetch(events_sql, *events_args)
        return learning_status(groups, top_rows, events)

    def close(self) -> None:
        """The pool belongs to PgStores, which closes it."""


_json = msgspec.json.Encoder()
_TASK_COLUMNS = "id, kind, strategy, priority, status, total, done, failed, created_at, finished_at"


class PgTaskStore:
    """`tasks.TaskStore` in PostgreSQL. A task's owner is host and pid: an instance starting up marks as
    interrupted only the tasks of its own host's processes that are gone, never another machine's."""

    def __init__(self, database: PgDatabase) -> None:
        self.database = database
        self.path = database.url
        self._host = socket.gethostname()
        self._pid = os.getpid()

    async def interrupt_orphans(self) -> None:
        async with self.database.connection() as conn, conn.transaction():
            owners = [row[0] for row in await conn.fetch(
                "SELECT DISTINCT owner_pid FROM task WHERE status = 'running' AND owner_host = $1 "
                "AND max_running IS NULL", self._host)]
            gone = [pid for pid in owners if pid == self._pid or not pid_alive(pid)]
            ids = [row[0] for row in await conn.fetch(
                "UPDATE task SET status = 'interrupted', finished_at = $1 WHERE status = 'running' "
                "AND max_running IS NULL AND owner_host = $2 AND owner_pid = ANY($3::int[]) RETURNING id",
                time.time(), self._host, gone,
            )]
            await conn.execute(
                "UPDATE subtask SET status = 'interrupted' WHERE task_id = ANY($1::text[]) "
                "AND status IN ('pending', 'running')",
                ids,
            )

    async def create(self, kind: str, strategy: str, priority: str, inputs: list[Any]) -> str:
        task_id = "task-" + secrets.token_hex(6)
        async with self.database.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO task (id, kind, strategy, priority, status, total, created_at, owner_host, owner_pid) "
                "VALUES ($1, $2, $3, $4, 'running', $5, $6, $7, $8)",
                task_id, kind, strategy, priority, len(inputs), time.time(), self._host, self._pid,
            )
            await conn.executemany(
                "INSERT INTO subtask (task_id, idx, input, status) VALUES ($1, $2, $3, 'pending')",
                [(task_id, i, _json.encode(item)) for i, item in enumerate(inputs)],
            )
        return task_id

    async def started(self, task_id: str, idx: int) -> None:
        async with self.database.connection() as conn:
            await conn.execute("UPDATE subtask SET status = 'running', started_at = $1 WHERE task_id = $2 AND idx = $3",
                               time.time(), task_id, idx)

    async def finished(self, task_id: str, idx: int, result: bytes | None, error: str | None) -> None:
        """Record one subtask's outcome (result is JSON) and close the task when it was the last."""
        now = time.time()
        column = "failed" if error else "done"
        async with self.database.connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE subtask SET status = $1, result = $2, error = $3, finished_at = $4 WHERE task_id = $5 "
                "AND idx = $6",
                "failed" if error else "completed", result, error, now, task_id, idx,
            )
            await conn.execute(f"UPDATE task SET {column} = {column} + 1 WHERE id = $1", task_id)
            await conn.execute(
                "UPDATE task SET finished_at = $1, status = CASE WHEN failed > 0 THEN 'failed' ELSE 'completed' END "
                "WHERE id = $2 AND done + failed = total",
                now, task_id,
            )

    async def get(self, task_id: str, *, subtasks: bool = True) -> dict[str, Any] | None:
        async with self.database.connection() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            row = await conn.fetchrow(f"SELECT {_TASK_COLUMNS} FROM task WHERE id = $1", task_id)
            if row is None:
                return None
            task = task_row(row)
            if subtasks:
                # Queued subtasks also say which instance ran them (or runs them) and on which attempt.
                task["subtasks"] = [
                    {**subtask_row(sub[:7]), "instance": sub[7], "attempts": sub[8]}
                    for sub in await conn.fetch(
                        "SELECT idx, input, status, result, error, started_at, finished_at, owner, attempt "
                        "FROM subtask WHERE task_id = $1 ORDER BY idx",
                        task_id,
                    )
                ]
        return task

    async def recent(self, limit: int = 10) -> list[dict[str, Any]]:
        async with self.database.connection() as conn:
            rows = await conn.fetch(f"SELECT {_TASK_COLUMNS} FROM task ORDER BY created_at DESC LIMIT $1", limit)
        return [task_row(row) for row in rows]

    def close(self) -> None:
        """The pool belongs to PgStores, which closes it."""

    # ---- tool calls run as MCP tasks (see tasks.TaskStore) -------------------------------------------

    async def create_call(
        self, kind: str, arguments: Any, principal: str | None, ttl_ms: int | None
    ) -> dict[str, Any]:
        task_id = "task-" + secrets.token_hex(16)
        now = time.time()
        expires = None if ttl_ms is None else now + ttl_ms / 1000
        async with self.database.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO task (id, kind, strategy, priority, status, total, created_at, owner_host, owner_pid) "
                "VALUES ($1, $2, $3, 'normal', 'running', 1, $4, $5, $6)",
                task_id, kind, CALL_STRATEGY, now, self._host, self._pid,
            )
            await conn.execute(
                "INSERT INTO subtask (task_id, idx, input, status, started_at) VALUES ($1, 0, $2, 'running', $3)",
                task_id, _json.encode(arguments), now,
            )
            await conn.execute(
                "INSERT INTO task_call (task_id, principal, ttl_ms, expires_at) VALUES ($1, $2, $3, $4)",
                task_id, principal, ttl_ms, expires,
            )
        return call_row((task_id, kind, "running", now, None, principal, ttl_ms, None, None))

    async def finish_call(self, task_id: str, status: str, result: bytes | None, error: str | None) -> bool:
        now = time.time()
        async with self.database.connection() as conn, conn.transaction():
            closed = await conn.fetchval(
                "UPDATE task SET status = $1, finished_at = $2, done = $3, failed = $4 WHERE id = $5 "
                "AND status = 'running' RETURNING id",
                status, now, int(status == "completed"), int(status == "failed"), task_id,
            )
            if closed is not None:
                await conn.execute(
                    "UPDATE subtask SET status = $1, result = $2, error = $3, finished_at = $4 WHERE task_id = $5 "
                    "AND idx = 0",
                    CALL_SUBTASK[status], result, error, now, task_id,
                )
        return closed is not None

    async def get_call(self, task_id: str) -> dict[str, Any] | None:
        async with self.database.connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {CALL_COLUMNS} WHERE t.id = $1 AND (c.expires_at IS NULL OR c.expires_at > $2)",
                task_id, time.time(),
            )
        return None if row is None else call_row(row)

    async def list_calls(
        self, principal: str | None, after: tuple[float, str] | None, limit: int
    ) -> list[dict[str, Any]]:
        created, last = after if after is not None else (-1.0, "")
        async with self.database.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {CALL_COLUMNS} WHERE c.principal IS NOT DISTINCT FROM $1 "
                "AND (c.expires_at IS NULL OR c.expires_at > $2) AND (t.created_at, t.id) > ($3, $4) "
                "ORDER BY t.created_at, t.id LIMIT $5",
                principal, time.time(), created, last, limit,
            )
        return [call_row(row) for row in rows]

    async def purge_expired_calls(self) -> int:
        async with self.database.connection() as conn, conn.transaction():
            ids = [row[0] for row in await conn.fetch(
                "DELETE FROM task_call WHERE expires_at <= $1 RETURNING task_id", time.time()
            )]
            await conn.execute("DELETE FROM subtask WHERE task_id = ANY($1::text[])", ids)
            await conn.execute("DELETE FROM task WHERE id = ANY($1::text[])", ids)
        return len(ids)


class PgReportStore:
    """`reports.ReportStore` in PostgreSQL."""

    def __init__(self, database: PgDatabase, max_reports: int = MAX_REPORTS) -> None:
        self.database = database
        self.path = database.url
        self.max_reports = max_reports

    async def put(self, meta: StoredReport, body: bytes) -> None:
        async with self.database.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO reports (id, format, root, origin, created_at, body) VALUES ($1, $2, $3, $4, $5, $6) "
                "ON CONFLICT (id) DO UPDATE SET created_at = excluded.created_at, origin = excluded.origin",
                meta.id, meta.format, meta.root, meta.origin, meta.created_at, body,
            )
            await conn.execute(
                "DELETE FROM reports WHERE id NOT IN (SELECT id FROM reports ORDER BY created_at DESC LIMIT $1)",
                self.max_reports,
            )

    async def get(self, report_id: str) -> tuple[StoredReport, bytes] | None:
        async with self.database.connection() as conn:
            row = await conn.fetchrow(
                "SELECT id, format, root, origin, created_at, body FROM reports WHERE id = $1", report_id)
        return None if row is None else (StoredReport(*row[:5]), bytes(row[5]))

    async def latest_for(self, path: str) -> StoredReport | None:
        """The newest report whose root is `path`, contains it, or lies inside it."""
        async with self.database.connection() as conn:
            row = await conn.fetchrow(
                "SELECT id, format, root, origin, created_at FROM reports WHERE root = $1 "
                "OR substr($1, 1, length(root) + 1) = root || '/' OR substr(root, 1, length($1) + 1) = $1 || '/' "
                "ORDER BY created_at DESC LIMIT 1",
                path.rstrip("/") or "/",
            )
        return StoredReport(*row) if row else None

    async def count(self) -> int:
        async with self.database.connection() as conn:
            return int(await conn.fetchval("SELECT count(*) FROM reports"))

    async def recent(self, limit: int) -> list[StoredReport]:
        async with self.database.connection() as conn:
            rows = await conn.fetch(
                "SELECT id, format, root, origin, created_at FROM reports ORDER BY created_at DESC, id LIMIT $1", limit)
        return [StoredReport(*row) for row in rows]

    async def put_artifact(self, meta: Artifact, body: bytes) -> None:
        async with self.database.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO artifacts (id, kind, title, mime_type, created_at, body) VALUES ($1, $2, $3, $4, $5, $6) "
                "ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, title = excluded.title, "
                "mime_type = excluded.mime_type, created_at = excluded.created_at, body = excluded.body",
                meta.id, meta.kind, meta.title, meta.mime_type, meta.created_at, body,
            )
            await conn.execute(
                "DELETE FROM artifacts WHERE id NOT IN (SELECT id FROM artifacts ORDER BY created_at DESC LIMIT $1)",
                MAX_ARTIFACTS,
            )

    async def get_artifact(self, artifact_id: str) -> tuple[Artifact, bytes] | None:
        async with self.database.connection() as conn:
            row = await conn.fetchrow(
                "SELECT id, kind, title, mime_type, created_at, body FROM artifacts WHERE id = $1", artifact_id)
        return None if row is None else (Artifact(*row[:5]), bytes(row[5]))

    async def recent_artifacts(self, kind: str, limit: int) -> list[Artifact]:
        async with self.database.connection() as conn:
            rows = await conn.fetch(
                "SELECT id, kind, title, mime_type, created_at FROM artifacts WHERE kind = $1 "
                "ORDER BY created_at DESC, id LIMIT $2",
                kind, limit,
            )
        return [Artifact(*row) for row in rows]

    def close(self) -> None:
        """The pool belongs to PgStores, which closes it."""


class PgStores:
    """The four stores in the PostgreSQL database `config.url`; `await open()` before use."""

    def __init__(self, config: StoreConfig) -> None:
        self.database = PgDatabase(config)
        self.memory = PgMemoryStore(self.database)
        self.patterns = PgPatternStore(self.database)
        self.tasks = PgTaskStore(self.database)
        self.reports = PgReportStore(self.database)
        self.queue = PgTaskQueue(self.database)

    async def open(self) -> None:
        await self.database.open()
        await self.tasks.interrupt_orphans()

    def problem(self) -> str | None:
        problem = self.database.problem()
        return None if problem is None else f"not storing: {problem}"

    def close(self) -> None:
        self.queue.close()
        self.database.close()

