"""The values and interfaces the service's parts share: the API and the CLI, the state store, the
orchestrator that drives Temporal, and the activities that report progress.

Nothing here does I/O. The state store (store.py) and the Temporal orchestrator (orchestrator.py) implement
these protocols; the API depends on the protocols only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from ferry.core.errors import FerryError
from ferry.core.migration import State


class WorkflowEnded(FerryError):
    """A migration's workflow has ended, so a signal can no longer reach it (the state store says so a
    moment later, or never if the run ended without recording it): the caller answers from the state."""


Mode = Literal["online", "offline"]
# A migration's name, and what names one in a URL or a request: its id (`mig-` and 10 letters) or its name.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


@dataclass(frozen=True)
class MigrationRequest:
    """What a user asks for: one source (a store folder of one database or cluster) onto one target."""

    source: str  # store URL or path of the source's backups (one PostgreSQL cluster's folder)
    target: str  # name of a target known to the service (its agent's task queue is derived from it)
    mode: Mode = "online"
    name: str | None = None  # unique; default derived from the source
    last_backup: str | None = None  # offline only: stop after this file is restored (LRS "autocomplete")
    # Which database of the store (SQL Server: its name; PostgreSQL: a cluster's system identifier); None:
    # the store holds one.
    database: str | None = None


@dataclass(frozen=True)
class MigrationRecord:
    id: str  # stable, URL-safe; also the Temporal workflow id
    name: str
    source: str
    target: str
    mode: Mode
    state: State
    last_backup: str | None
    status: dict[str, Any]  # the latest MigrationStatus.to_json() reported by the activities
    created_at: datetime
    updated_at: datetime
    error: str | None = None  # why it failed, when it did
    attempt: int = 1
    database: str | None = None  # which database of the source's store (None: its only one)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "source": self.source,
            "database": self.database,
            "target": self.target,
            "mode": self.mode,
            "state": self.state.value,
            "last_backup": self.last_backup,
            "status": self.status,
            "error": self.error,
            "attempt": self.attempt,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True)
class Event:
    """One line of a migration's append-only log: a state change, or a step with its command and timing."""

    migration_id: str
    seq: int
    at: datetime
    kind: str  # "state", "step", "info", "error"
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "migration_id": self.migration_id,
            "seq": self.seq,
            "at": self.at.isoformat(),
            "kind": self.kind,
            "message": self.message,
            "data": self.data,
        }


class StateStore(Protocol):
    def create(self, requests: list[MigrationRequest]) -> list[MigrationRecord]:
        """All or nothing: a duplicate name or an unknown target rejects the whole batch (ValueError)."""
        ...

    def get(self, migration_id: str) -> MigrationRecord | None: ...

    def find(self, state: State | None = None, target: str | None = None) -> list[MigrationRecord]: ...

    def set_state(
        self,
        migration_id: str,
        state: State,
        status: dict[str, Any] | None = None,
        error: str | None = None,
        *,
        expected: State | None = None,
    ) -> MigrationRecord:
        """Moves along core.migration.TRANSITIONS only; records a "state" event for every change.
        `expected`: move only from that state (a compare-and-set; an InvalidTransition otherwise)."""
        ...

    def set_status(self, migration_id: str, status: dict[str, Any]) -> None:
        """The latest progress snapshot (no event: progress is frequent)."""
        ...

    def append_event(
        self, migration_id: str, kind: str, message: str, data: dict[str, Any] | None = None
    ) -> Event: ...

    def events(self, migration_id: str, after_seq: int = 0) -> list[Event]: ...


class Orchestrator(Protocol):
    """Drives the durable workflows. Every call returns once Temporal has accepted it."""

    async def start(self, records: list[MigrationRecord]) -> None: ...

    async def cutover(
        self,
        migration_id: str,
        final_lsn: str | None = None,
        attempt: int | None = None,
        last_backup: str | None = None,
    ) -> None:
        """`attempt`: the run the request is for (the record's attempt); looked up when not given.
        `last_backup`: a log backup (a tail-log backup) to wait for and restore last."""
        ...

    async def cancel(self, migration_id: str, attempt: int | None = None, drop: bool = False) -> None:
        """`drop`: remove what the migration restored on the target (SQL Server: DROP DATABASE) instead of
        leaving it for inspection."""
        ...

    async def retry(self, migration_id: str) -> None: ...
