"""The one interface the tools use for each store, met by the SQLite stores (plain methods) and the
PostgreSQL ones (coroutines): a method returns its result or an awaitable of it, and callers go through
`database.retrying`, which awaits when it must.
"""

from __future__ import annotations

import pathlib
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from qe_appliance.config import LearningConfig
from qe_appliance.store.memory import MemoryEntry, MemoryHit, PutResult
from qe_appliance.store.patterns import LearningStatus, LearnResult, Pattern, PatternDraft
from qe_appliance.store.reports import Artifact, StoredReport

if TYPE_CHECKING:
    from qe_appliance.store.pgqueue import PgTaskQueue


class MemoryBackend(Protocol):
    @property
    def path(self) -> pathlib.Path | str: ...

    def put(
        self,
        namespace: str,
        key: str,
        value_json: bytes,
        ttl_seconds: float | None,
        *,
        tags: Sequence[str] = (),
        metadata_json: bytes | None = None,
    ) -> PutResult | Awaitable[PutResult]: ...

    def get(self, namespace: str, key: str) -> MemoryEntry | None | Awaitable[MemoryEntry | None]: ...

    def search(
        self,
        *,
        query: str | None = None,
        namespace: str | None = None,
        pattern: str | None = None,
        prefix: str | None = None,
        tags: Sequence[str] = (),
        limit: int = 20,
        offset: int = 0,
    ) -> tuple[list[MemoryHit], int] | Awaitable[tuple[list[MemoryHit], int]]: ...

    def namespaces(self, prefix: str, limit: int) -> list[str] | Awaitable[list[str]]: ...

    def purge_expired(self, batch: int = ...) -> int | Awaitable[int]: ...

    def integrity_check(self) -> bool | Awaitable[bool]: ...


class PatternBackend(Protocol):
    @property
    def path(self) -> pathlib.Path | str: ...

    def get(self, pattern_id: str) -> Pattern | None | Awaitable[Pattern | None]: ...

    def learn(
        self, draft: PatternDraft, rules: LearningConfig, outcome: tuple[str, bool] | None = None
    ) -> LearnResult | Awaitable[LearnResult]: ...

    def replace(self, pattern_id: str, draft: PatternDraft) -> LearnResult | Awaitable[LearnResult]: ...

    def best(
        self,
        language: str,
        *,
        framework: str | None = None,
        domain: str | None = None,
        pattern_type: str | None = None,
        limit: int = 5,
    ) -> list[Pattern] | Awaitable[list[Pattern]]: ...

    def status(
        self, *, domain: str | None = None, language: str | None = None, top: int = 10, recent: int = 10
    ) -> LearningStatus | Awaitable[LearningStatus]: ...


class TaskBackend(Protocol):
    def create(self, kind: str, strategy: str, priority: str, inputs: list[Any]) -> str | Awaitable[str]: ...

    def started(self, task_id: str, idx: int) -> None | Awaitable[None]: ...

    def finished(
        self, task_id: str, idx: int, result: bytes | None, error: str | None
    ) -> None | Awaitable[None]: ...

    def get(
        self, task_id: str, *, subtasks: bool = True
    ) -> dict[str, Any] | None | Awaitable[dict[str, Any] | None]: ...

    def recent(self, limit: int = 10) -> list[dict[str, Any]] | Awaitable[list[dict[str, Any]]]: ...

    def create_call(
        self, kind: str, arguments: Any, principal: str | None, ttl_ms: int | None
    ) -> dict[str, Any] | Awaitable[dict[str, Any]]: ...

    def finish_call(
        self, task_id: str, status: str, result: bytes | None, error: str | None
    ) -> bool | Awaitable[bool]: ...

    def get_call(self, task_id: str) -> dict[str, Any] | None | Awaitable[dict[str, Any] | None]: ...

    def list_calls(
        self, principal: str | None, after: tuple[float, str] | None, limit: int
    ) -> list[dict[str, Any]] | Awaitable[list[dict[str, Any]]]: ...

    def purge_expired_calls(self) -> int | Awaitable[int]: ...


class ReportBackend(Protocol):
    @property
    def path(self) -> pathlib.Path | str: ...

    @property
    def max_reports(self) -> int: ...

    def put(self, meta: StoredReport, body: bytes) -> None | Awaitable[None]: ...

    def get(
        self, report_id: str
    ) -> tuple[StoredReport, bytes] | None | Awaitable[tuple[StoredReport, bytes] | None]: ...

    def latest_for(self, path: str) -> StoredReport | None | Awaitable[StoredReport | None]: ...

    def count(self) -> int | Awaitable[int]: ...

    def recent(self, limit: int) -> list[StoredReport] | Awaitable[list[StoredReport]]: ...

    def put_artifact(self, meta: Artifact, body: bytes) -> None | Awaitable[None]: ...

    def get_artifact(
        self, artifact_id: str
    ) -> tuple[Artifact, bytes] | None | Awaitable[tuple[Artifact, bytes] | None]: ...

    def recent_artifacts(self, kind: str, limit: int) -> list[Artifact] | Awaitable[list[Artifact]]: ...


class StoresBackend(Protocol):
    """Every store of one backend, its readiness check, and the start-up step that needs the event loop."""

    @property
    def memory(self) -> MemoryBackend: ...

    @property
    def patterns(self) -> PatternBackend: ...

    @property
    def tasks(self) -> TaskBackend: ...

    @property
    def reports(self) -> ReportBackend: ...

    @property
    def queue(self) -> PgTaskQueue | None:
        """The work queue several instances share (PostgreSQL); None on one machine (SQLite)."""

    async def open(self) -> None: ...

    def problem(self) -> str | None: ...

    def close(self) -> None: ...
