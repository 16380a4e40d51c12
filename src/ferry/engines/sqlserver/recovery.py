"""Recovery points: the point in time or LSN a restore stops at, resolved against one database's backups.

Named stop points, not targets: in the SQL Server engine a target is the server a database is restored onto.

SQL Server dates in backup headers are the source's local time with its UTC offset of the moment (format doc
§5), so a stop time typed without an offset is read in the source's clock, and a STOPAT value is written back
in the offset of the log it stops in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

from ferry.core.errors import UsageError
from ferry.engines.sqlserver.stripes import LogicalBackup


@dataclass(frozen=True)
class StopPoint:
    """Where a restore stops: a point in time or an LSN. A naive `time` is the source server's wall-clock
    time. (`ferry.core.catalog.RecoveryTarget` is the same request before the engine parsed its LSN.)"""

    time: datetime | None = None
    lsn: int | None = None

    def __post_init__(self) -> None:
        if self.time is not None and self.lsn is not None:
            raise UsageError(
                "a stop point is a point in time or an LSN, not both",
                "give either the time or the LSN to stop at",
            )


def as_utc(value: datetime) -> datetime:
    """The reader gives aware dates; a naive one would make comparisons raise, so read it as UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Goal:
    """A stop point resolved for comparison: `time` is always aware."""

    time: datetime | None
    lsn: int | None

    def allows_base(self, b: LogicalBackup) -> bool:
        """A full or differential may start the restore only if it ends at or before the stop point."""
        if self.lsn is not None:
            return b.last_lsn <= self.lsn
        return self.time is not None and b.backup_finish is not None and as_utc(b.backup_finish) <= self.time

    def done_at(self, b: LogicalBackup) -> bool:
        """Restoring `b` whole ends exactly at the stop point, so no STOPAT is needed."""
        if self.lsn is not None:
            return b.last_lsn >= self.lsn
        return self.time is not None and b.backup_finish is not None and as_utc(b.backup_finish) >= self.time

    def stop_in(self, log: LogicalBackup) -> str | None:
        """The STOPAT value if the stop point lies inside `log`, else None (apply the log whole)."""
        if self.lsn is not None:
            # LastLSN is the first LSN after the backup and STOPATMARK includes the record at the LSN, so
            # that record is in this log only below LastLSN; at LastLSN exactly the log is applied whole.
            return f"lsn:{self.lsn}" if self.lsn < log.last_lsn else None
        if self.time is None or log.backup_finish is None or as_utc(log.backup_finish) < self.time:
            return None
        return self.time.astimezone(log.backup_finish.tzinfo).isoformat()

    def describe(self) -> str:
        return f"LSN {self.lsn}" if self.lsn is not None else (self.time.isoformat() if self.time else "?")


def _source_zone(local: datetime, backups: Sequence[LogicalBackup]) -> tzinfo:
    """The UTC offset a naive stop time is meant in. Backups carry the source's offset of the moment, which
    moves with daylight saving: take the one in force at the last backup finished (wall clock) by `local`."""
    stamped = [
        (b.backup_finish, b)
        for b in backups
        if b.backup_finish is not None and b.backup_finish.tzinfo is not None
    ]
    if not stamped:
        return UTC
    stamped.sort(key=lambda p: (p[0].replace(tzinfo=None), p[1].sort_key))
    before = [p for p in stamped if p[0].replace(tzinfo=None) <= local]
    return (before[-1] if before else stamped[0])[0].tzinfo or UTC


def resolve_stop_point(stop: StopPoint | None, backups: Sequence[LogicalBackup]) -> Goal | None:
    """The stop point ready to compare, or None when there is none (restore as far as the backups go)."""
    if stop is None or (stop.time is None and stop.lsn is None):
        return None
    if stop.time is None:
        return Goal(None, stop.lsn)
    when = stop.time
    if when.utcoffset() is None:
        when = when.replace(tzinfo=_source_zone(when, backups))
    return Goal(when, None)
