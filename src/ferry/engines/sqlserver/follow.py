"""Following one database's log backups as they land in the store: which logs the target applies next,
planned from the target's own position, and every file's status in the words Azure DMS uses.

| status | meaning |
|---|---|
| `Arrived` | read from the store, but it cannot be applied yet: a log before it is missing |
| `Queued` | next in line: the chain from the target's position reaches it |
| `Restoring` | RESTORE LOG runs on it now |
| `Restored` | msdb's restore history has it, or the target's position is past it |
| `Skipped` | not applied, with the reason: empty, already applied, another database, another fork |
| `Held` | still being written (its size changes, or it reads as truncated): looked at again later |

Pure: the scan's backups, the target's position and its restore history in, a `LogView` out. The status
list is bounded (the base backups, the last restored logs, what is pending, a few skipped files) so a
migration that runs for months reports the same few kilobytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from ferry.core.findings import Finding
from ferry.core.plan import StepKind
from ferry.engines.sqlserver.chain import ChainStep, continue_chain, merge_stripes
from ferry.engines.sqlserver.headers import BackupSet, BackupType
from ferry.engines.sqlserver.recovery import Goal
from ferry.engines.sqlserver.stripes import LogicalBackup

ARRIVED, QUEUED, RESTORING, RESTORED, SKIPPED, HELD = (
    "Arrived",
    "Queued",
    "Restoring",
    "Restored",
    "Skipped",
    "Held",
)
HELD_CODES = ("file-changing", "backup-truncated", "empty-file")
SHOW_RESTORED = 20  # restored logs listed, newest last
SHOW_PENDING = 100
SHOW_SKIPPED = 20


@dataclass(frozen=True)
class Identity:
    """Which database of the store a migration follows: backups are this database's when server, name and
    FamilyGUID all match (stripes.DatabaseKey)."""

    server: str
    name: str
    family_guid: str | None

    def matches(self, b: LogicalBackup) -> bool:
        family = str(b.family_guid).upper() if b.family_guid else None
        return (
            b.server_name.casefold() == self.server.casefold()
            and b.database_name.casefold() == self.name.casefold()
            and (self.family_guid is None or family is None or family == self.family_guid)
        )


def split(sets: Iterable[object], who: Identity) -> tuple[list[LogicalBackup], list[LogicalBackup]]:
    """This database's backups and the log backups of every other database, both sorted."""
    backups, _ = merge_stripes([s for s in sets if isinstance(s, BackupSet)])
    mine = sorted((b for b in backups if who.matches(b)), key=lambda b: b.sort_key)
    others = sorted(
        (b for b in backups if not who.matches(b) and b.backup_type is BackupType.LOG),
        key=lambda b: b.sort_key,
    )
    return mine, others


def held_files(findings: Iterable[Finding]) -> dict[str, str]:
    """Files a scan set aside because they are still being written: key -> why."""
    return {f.files[0]: f.message for f in findings if f.code in HELD_CODES and f.files}


@dataclass(frozen=True)
class LogView:
    queue: tuple[ChainStep, ...]  # the logs to apply next, in order
    position: int  # the target's position now
    reached: bool  # the stop point lies in a log already applied or queued
    after_gap: LogicalBackup | None  # the next log on this fork, beyond LSNs the store lacks
    incomplete: LogicalBackup | None  # the next log misses stripe files
    source_lsn: int | None  # the newest LastLSN among this database's logs
    source_time: datetime | None
    target_time: datetime | None  # when the log the target stands at was finished, on the source
    pending_bytes: int
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def lag_seconds(self) -> float | None:
        if self.source_time is None or self.target_time is None:
            return None
        return max(0.0, (self.source_time - self.target_time).total_seconds())

    @property
    def caught_up(self) -> bool:
        return not self.queue


def view(
    mine: Sequence[LogicalBackup],
    others: Sequence[LogicalBackup],
    held: Mapping[str, str],
    position: int,
    forks: frozenset[UUID],
    applied: frozenset[str],
    goal: Goal | None = None,
    restoring: str | None = None,
    base: Sequence[LogicalBackup] = (),
    stop_reached: bool = False,
) -> LogView:
    """Where following stands. `position`/`forks`: the target's redo point; `applied`: BackupSetGUIDs in
    its restore history; `restoring`: the BackupSetGUID being applied now; `base`: the full and
    differential backups restored; `stop_reached`: the stop point was applied already."""
    logs = [b for b in mine if b.backup_type is BackupType.LOG]
    live = [b for b in logs if not b.is_empty_log and not any(f in held for f in b.files)]
    more = (
        continue_chain(live, position, forks, goal)
        if not stop_reached
        else continue_chain([], position, forks, None)
    )
    queue = more.steps
    queued = {s.backup.backup_set_guid for s in queue}
    gap_line = _beyond(live, more.after_gap)
    rows: list[dict[str, Any]] = []
    for b in base:
        rows.append(_row(b, RESTORED, None))
    restored: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    here: LogicalBackup | None = None
    for b in logs:
        key = _guid(b.backup_set_guid)
        if key == restoring:
            pending.append(_row(b, RESTORING, None))
        elif b.backup_set_guid in queued:
            pending.append(_row(b, QUEUED, None))
        elif any(f in held for f in b.files):
            pending.append(_row(b, HELD, held[next(f for f in b.files if f in held)]))
        elif b.is_empty_log:
            skipped.append(_row(b, SKIPPED, "empty log backup (FirstLSN = LastLSN)"))
        elif key in applied:
            restored.append(_row(b, RESTORED, None))
        elif b.last_lsn <= position:
            skipped.append(_row(b, SKIPPED, f"already applied: the target stands at LSN {position}"))
        elif b in gap_line:
            pending.append(_row(b, ARRIVED, f"waits for the log backups from LSN {more.position}"))
        else:
            skipped.append(_row(b, SKIPPED, "on another recovery fork than the target"))
        if b.last_lsn == position and not b.is_empty_log:
            here = b  # the log the target stands at the end of
    # Files added to the store since the migration began, of other databases: named, not applied.
    for b in others[-SHOW_SKIPPED:]:
        skipped.append(_row(b, SKIPPED, f"another database: '{b.database_name}' on '{b.server_name}'"))
    for key, why in sorted(held.items()):
        if not any(key in b.files for b in logs):
            pending.append({"name": _name(key), "kind": "log", "status": HELD,
                            "files": [{"name": key, "status": HELD, "reason": why}]})  # fmt: skip
    rows.extend(restored[-SHOW_RESTORED:])
    rows.extend(pending[:SHOW_PENDING])
    rows.extend(skipped[-SHOW_SKIPPED:])
    newest = max(live, key=lambda b: b.last_lsn, default=None)
    waiting = [s.backup for s in queue] + list(gap_line)
    target_time = here.backup_finish if here is not None else _at(base, position)
    return LogView(
        queue=queue,
        position=position,
        reached=more.reached or stop_reached,
        after_gap=more.after_gap,
        incomplete=more.incomplete,
        source_lsn=newest.last_lsn if newest else None,
        source_time=newest.backup_finish if newest else None,
        target_time=target_time,
        pending_bytes=sum(b.size for b in waiting),
        details={
            "backup_sets": rows,
            "counts": {
                "restored": len(restored) + len(base),
                "pending": len(pending),
                "skipped": len(skipped),
            },
            "queued": len(queue),
        },
    )


def _beyond(live: Sequence[LogicalBackup], first: LogicalBackup | None) -> list[LogicalBackup]:
    """The logs from `first` on that chain on from it: they arrived, and wait for the missing ones."""
    if first is None:
        return []
    more = continue_chain([b for b in live if b is not first], first.last_lsn, first.forks_at(first.last_lsn))
    return [first, *(s.backup for s in more.steps)]


def _at(backups: Sequence[LogicalBackup], position: int) -> datetime | None:
    for b in backups:
        if b.last_lsn == position:
            return b.backup_finish
    return None


def _guid(value: object) -> str:
    return str(value).upper()


def _name(key: str) -> str:
    return key.rsplit("/", 1)[-1]


def _row(b: LogicalBackup, status: str, reason: str | None) -> dict[str, Any]:
    kind = {BackupType.DATABASE: StepKind.FULL.value, BackupType.DIFFERENTIAL: StepKind.DIFF.value}.get(
        b.backup_type or BackupType.LOG, StepKind.LOG.value
    )
    row: dict[str, Any] = {
        "name": _name(b.files[0]),
        "kind": kind,
        "backup_set_id": _guid(b.backup_set_guid),
        "first_lsn": str(b.first_lsn),
        "last_lsn": str(b.last_lsn),
        "finished": b.backup_finish.isoformat() if b.backup_finish else None,
        "size": b.size,
        "status": status,
        "files": [{"name": f, "status": status, **({"reason": reason} if reason else {})} for f in b.files],
    }
    if reason:
        row["reason"] = reason
    return row
