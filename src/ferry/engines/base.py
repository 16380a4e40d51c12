"""What the pipeline needs from an engine (`Engine`: read and plan), and what the service, the agent and
`ferry migrate` need to run a migration (`Migrator`: the execution seam). Engines see stores only through
RangeReader and the store protocol."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ferry.core.catalog import DatabaseCatalog, RecoveryTarget
from ferry.core.findings import Finding
from ferry.core.migration import MigrationStatus
from ferry.core.plan import DatabasePlan
from ferry.stores.base import RangeReader


class Engine(Protocol):
    @property
    def name(self) -> str: ...

    def sniff(self, head: bytes) -> bool:
        """Whether a file whose first bytes are `head` belongs to this engine."""
        ...

    def read(self, reader: RangeReader) -> Sequence[object]:
        """The backup sets in one file. Raises BackupFormatError for a file it cannot read."""
        ...

    def catalog(self, sets: Sequence[object]) -> tuple[list[DatabaseCatalog], list[Finding]]:
        """Per database, what is there and how far it can be restored."""
        ...

    def plan(
        self, sets: Sequence[object], target: RecoveryTarget | None
    ) -> tuple[list[DatabasePlan], list[Finding]]:
        """Per database, the chosen restore chain and the findings about it."""
        ...


# -- the execution seam ------------------------------------------------------------------------------
#
# Reading and planning go through `Engine`; running a migration goes through `Migrator`. The service, the
# agent and `ferry migrate` drive every engine through these steps and never import an engine package:
# they look the migrator up by engine name (engines/registry.py). Each step is idempotent and asks the
# target where it stands, so running a step again after a crash resumes it or skips it.


@dataclass(frozen=True)
class TargetSpec:
    """Where migrations restore to, as the agent that owns it knows it. `location` is the engine's word for
    it: PostgreSQL, a folder under which each migration gets its own; SQL Server, an instance URL."""

    name: str
    engine: str
    location: str
    os_user: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)  # engine settings (data/log folders...)


@dataclass(frozen=True)
class ReplaySettings:
    """How a migration judges waiting and keeping up while it follows new log backups."""

    blocked_after: float = 60.0  # seconds waiting for a log backup the store lacks before it says so
    ready_lag: int = 2  # once caught up, stay ReadyForCutover while this many log backups (segments) behind
    poll_interval: float = 0.25  # seconds between looks at a target that is replaying


@dataclass(frozen=True)
class MigrationJob:
    """One migration as the steps see it: which source, onto which target, how."""

    id: str  # also names the migration's place on the target (a folder, a database)
    source: str  # the store location of the source's backups
    target: TargetSpec
    online: bool = True
    database: str | None = None  # which database of the store (SQL Server); None: the only one
    last_backup: str | None = None  # offline: stop after this backup file is restored
    replay: ReplaySettings = field(default_factory=ReplaySettings)
    port: int | None = None  # PostgreSQL: the target server's port (None: one is chosen)
    target_database: str | None = None  # SQL Server: the name on the target (None: the source's name)
    stop_at: str | None = None  # restore to this point: an ISO 8601 time or "lsn:<n>" (None: the end)
    options: Mapping[str, Any] = field(default_factory=dict)  # engine settings of this migration only


@dataclass(frozen=True)
class SourceFiles:
    """What a scan of the source's location read, handed to `prepare` (engines never scan: the pipeline
    does, and hands them the backup sets it read)."""

    location: str
    sets: tuple[object, ...]  # this engine's backup sets
    findings: tuple[Finding, ...] = ()  # about files of the location: unreadable, truncated...


@dataclass(frozen=True)
class Prepared:
    """What `prepare` found and set up. `phase`, in every engine's words: "new" or "interrupted" (the full
    backup must be restored), "restored" (logs are being or can be applied), "recovered" (cut over).
    `state` is the engine's own, opaque to everyone else and JSON-friendly (the service keeps it in
    Temporal's history)."""

    engine: str
    target: str  # where the migration restores, in words: a folder, a server and database
    phase: str
    size: int  # bytes of the full backup to restore
    state: Mapping[str, Any] = field(default_factory=dict)

    @property
    def needs_full(self) -> bool:
        return self.phase in ("new", "interrupted")


@dataclass(frozen=True)
class StepReport:
    """What a step did, for its "step" event: a sentence, the command or statements it ran, figures."""

    message: str
    command: str = ""
    skipped: bool = False
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CutoverRequest:
    """Asked for at `requested_at` (time.time(): the downtime is measured from it)."""

    requested_at: float
    final_lsn: str | None = None  # apply logs at least to here (the engine's printed LSN form)
    source_dsn: str | None = None  # PostgreSQL: Ferry closes the source's current WAL segment itself
    last_backup: str | None = None  # wait for this log backup (a tail-log backup) and apply it last


class StepContext(Protocol):
    """How a step reports while it runs: the service heartbeats and records, `ferry migrate` draws."""

    def report(self, status: MigrationStatus) -> None:
        """The step's latest status (RestoringLogs / ReadyForCutover decided by the step)."""
        ...

    def check(self) -> None:
        """Called where stopping is safe: raises when the step must stop (cancelled, worker shut down)."""
        ...

    def note(self, message: str) -> None:
        """Something worth an "info" event (an earlier attempt was interrupted, a step resumed)."""
        ...

    def rescan(self) -> SourceFiles:
        """The source's backups as they are now, read again by the caller (engines never scan): how an
        engine whose logs arrive as backup files finds those that came after `prepare`."""
        ...


class Until(Protocol):
    """When `follow_logs` ends, besides the end of an offline migration's logs."""

    @property
    def wake(self) -> threading.Event | None:
        """Set to end a wait at once (a cutover or a cancel asked for)."""
        ...

    def request(self) -> CutoverRequest | None:
        """A cutover request, once there is one: follow_logs returns it."""
        ...

    def taking_over(self) -> bool:
        """The next step (the cutover) waits to take over what follow_logs runs: leave it running."""
        ...


@dataclass(frozen=True)
class FollowDone:
    """How follow_logs ended: the request that ended it (online: the cutover's; offline: made at the end
    of the logs) and where applying logs started."""

    request: CutoverRequest
    started_at: float | None
    started_position: str | None
    report: StepReport


@dataclass(frozen=True)
class CutoverDone:
    """The cutover's result: `result` is what the API returns (engine-specific figures and the proof)."""

    result: Mapping[str, Any]
    downtime_seconds: float | None
    report: StepReport


class Migrator(Protocol):
    """The steps of one engine's migrations (see the comment above TargetSpec)."""

    @property
    def engine(self) -> str: ...

    def prepare(self, job: MigrationJob, files: SourceFiles, ctx: StepContext) -> tuple[Prepared, StepReport]:
        """Validate the source (its findings; blocked sources raise a non-retryable error) and preflight
        the target; make or reopen the migration's place there. Touches no data on the target."""
        ...

    def restore_full(self, job: MigrationJob, prepared: Prepared, ctx: StepContext) -> StepReport:
        """Restore the full (and differential) backup; skipped when the target already holds it."""
        ...

    def follow_logs(
        self, job: MigrationJob, prepared: Prepared, until: Until, ctx: StepContext
    ) -> FollowDone:
        """Apply log backups as they arrive until `until` has a request (online), or to the end of the
        logs (offline: the end of the store, or job.last_backup)."""
        ...

    def cut_over(
        self, job: MigrationJob, prepared: Prepared, request: CutoverRequest, ctx: StepContext
    ) -> CutoverDone:
        """Apply what is left, bring the target online, prove it. On a target already cut over, the
        result recorded then."""
        ...

    def stop(self, job: MigrationJob, prepared: Prepared | None) -> StepReport:
        """Cancel: stop applying logs and leave the target as it is, for inspection."""
        ...

    def status(self, job: MigrationJob, prepared: Prepared) -> MigrationStatus:
        """Where the target stands now, read from the target itself."""
        ...


# Optional, beside the protocols (looked up with getattr, so an engine without them still fits):
#
# - `Engine.database_of(backup_set) -> str | None`: the database a set belongs to, for engines whose stores
#   hold many databases (SQL Server); the service then hands each migration its own database's sets.
# - `Migrator.describe(target: TargetSpec) -> Mapping[str, Any]`: facts read from the target itself
#   (version, edition, default folders, free space), which agents refresh once a minute for the API.
# - `Migrator.read_check(job, files: SourceFiles) -> list[Finding]`: before a migration starts, whether the
#   target reads the job's first backup file itself (SQL Server: the preflight's RESTORE LABELONLY, through
#   the same device mapping), and why not; changes nothing on the target.
