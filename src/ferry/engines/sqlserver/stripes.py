"""Logical backups: the stripe files of one backup set merged into one value, grouped by database.

The media reader returns one `BackupSet` per media file. A striped backup (BACKUP ... TO DISK = 'a',
DISK = 'b') writes one file per stripe and repeats the whole header in each, so N files give N rows that
describe the same backup. Restoring needs all of them at once, so planning works on `LogicalBackup`, one per
backup set.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from ferry.core.findings import Finding, Severity
from ferry.engines.sqlserver.headers import BackupSet, BackupType

SortKey = tuple[int, int, int, str, int, tuple[str, ...]]


@dataclass(frozen=True)
class LogicalBackup:
    """One backup set over its stripe files: `sets` holds one row per stripe present, in stripe order."""

    sets: tuple[BackupSet, ...]

    def __post_init__(self) -> None:
        if not self.sets:
            raise ValueError("a logical backup needs at least one stripe")

    @property
    def head(self) -> BackupSet:
        """The lowest stripe present. Every stripe repeats the same header, so any one stands for all."""
        return self.sets[0]

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(s.path for s in self.sets)

    @property
    def missing_stripes(self) -> tuple[int, ...]:
        present = {s.family_sequence_number for s in self.sets}
        return tuple(n for n in range(1, self.head.family_count + 1) if n not in present)

    @property
    def complete(self) -> bool:
        """RESTORE needs every stripe of a media set: one missing file makes the whole set unusable."""
        return not self.missing_stripes

    @property
    def backup_type(self) -> BackupType | None:
        return self.head.backup_type

    @property
    def position(self) -> int:
        return self.head.position

    @property
    def database_name(self) -> str:
        return self.head.database_name

    @property
    def server_name(self) -> str:
        return self.head.server_name

    @property
    def family_guid(self) -> UUID | None:
        return self.head.family_guid

    @property
    def recovery_model(self) -> str:
        return self.head.recovery_model

    @property
    def first_lsn(self) -> int:
        return self.head.first_lsn

    @property
    def last_lsn(self) -> int:
        return self.head.last_lsn

    @property
    def checkpoint_lsn(self) -> int:
        return self.head.checkpoint_lsn

    @property
    def database_backup_lsn(self) -> int:
        return self.head.database_backup_lsn

    @property
    def backup_set_guid(self) -> UUID:
        return self.head.backup_set_guid

    @property
    def differential_base_guid(self) -> UUID | None:
        return self.head.differential_base_guid

    @property
    def recovery_fork_id(self) -> UUID | None:
        return self.head.recovery_fork_id

    @property
    def first_recovery_fork_id(self) -> UUID | None:
        # HEADERONLY prints RecoveryForkID when no first fork is stored: the set does not cross a fork.
        return self.head.first_recovery_fork_id or self.head.recovery_fork_id

    @property
    def fork_point_lsn(self) -> int | None:
        return self.head.fork_point_lsn

    def forks_at(self, position: int) -> frozenset[UUID]:
        """The recovery forks a restore standing at `position` inside this backup's log is on.

        The three fork columns are copied from the database's boot page into every backup taken after the
        restore that created the fork, however far beyond the fork point (docs/engines.md): LSNs below
        ForkPointLSN belong to FirstRecoveryForkID and LSNs from it on to RecoveryForkID. A position is
        the next LSN to replay, so exactly at the fork point nothing of the new fork is replayed yet: the
        database is the same on both forks there. Empty when the header names no fork (never blocks)."""
        current, old, point = self.recovery_fork_id, self.head.first_recovery_fork_id, self.fork_point_lsn
        if point is None or old is None or old == current or current is None:
            return frozenset((current,)) if current is not None else frozenset()
        if position < point:
            return frozenset((old,))
        return frozenset((old, current)) if position == point else frozenset((current,))

    @property
    def forks_covered(self) -> frozenset[UUID]:
        """Every fork this backup's LSN range touches: one, or two for a log that crosses a fork point."""
        return self.forks_at(self.first_lsn) | self.forks_at(self.last_lsn)

    @property
    def backup_start(self) -> datetime | None:
        return self.head.backup_start

    @property
    def backup_finish(self) -> datetime | None:
        return self.head.backup_finish

    @property
    def size(self) -> int:
        # BackupSize covers the whole media set, not one stripe (format doc §9): do not add the stripes up.
        return self.head.backup_size

    @property
    def is_copy_only(self) -> bool:
        # None (unknown, the reader cannot see the flag yet) counts as an ordinary backup.
        return any(s.is_copy_only is True for s in self.sets)

    @property
    def has_media_password(self) -> bool:
        return any(s.has_media_password for s in self.sets)

    @property
    def is_empty_log(self) -> bool:
        return self.head.is_empty_log

    @property
    def sort_key(self) -> SortKey:
        """A total order used wherever a choice must not depend on the order files were listed in."""
        kind = int(self.backup_type) if self.backup_type is not None else 0
        return (self.first_lsn, self.last_lsn, kind, str(self.backup_set_guid), self.position, self.files)


@dataclass(frozen=True)
class DatabaseKey:
    """What makes two backups belong to the same database. FamilyGUID survives renames and restores
    (the RESTORE HEADERONLY docs); the server keeps two copies of one database on two servers apart."""

    server: str
    name: str
    family_guid: UUID | None


def describe_database(backup: LogicalBackup | BackupSet) -> str:
    return f"'{backup.database_name}' on '{backup.server_name}'"


def quote_files(files: Sequence[str], limit: int = 3) -> str:
    """`'a', 'b' and 4 more`: messages stay readable when a finding covers hundreds of log backups."""
    shown = ", ".join(f"'{f}'" for f in files[:limit])
    rest = len(files) - limit
    return f"{shown} and {rest} more" if rest > 0 else shown


def _signature(s: BackupSet) -> dict[str, object]:
    # What every stripe of a set repeats, under HEADERONLY's column names so messages use the DBA's words.
    return {
        "BackupType": s.backup_type,
        "DatabaseName": s.database_name,
        "ServerName": s.server_name,
        "FirstLSN": s.first_lsn,
        "LastLSN": s.last_lsn,
        "CheckpointLSN": s.checkpoint_lsn,
        "DatabaseBackupLSN": s.database_backup_lsn,
        "FamilyCount": s.family_count,
    }


def merge_stripes(sets: Iterable[BackupSet]) -> tuple[list[LogicalBackup], list[Finding]]:
    """Merge per-file rows into logical backups, one per (BackupSetGUID, Position).

    MediaSetId is not a key: SQL Server reuses it for every set written to the same media (format doc §9).
    A stripe found twice (a copy of the file in another folder) is kept once, from the first path in sort
    order. A stripe that disagrees with the others is left out, which leaves its set incomplete: planning
    then falls back to another backup rather than restoring from files that contradict each other.
    """
    groups: dict[tuple[UUID, int], list[BackupSet]] = defaultdict(list)
    for s in sets:
        groups[(s.backup_set_guid, s.position)].append(s)
    backups: list[LogicalBackup] = []
    findings: list[Finding] = []
    for key in sorted(groups, key=lambda k: (str(k[0]), k[1])):
        members = sorted(groups[key], key=lambda s: (s.family_sequence_number, s.path))
        reference = members[0]
        expected = _signature(reference)
        kept: dict[int, BackupSet] = {}
        copies: list[tuple[BackupSet, BackupSet]] = []
        for s in members:
            differ = [name for name, value in _signature(s).items() if expected[name] != value]
            if not 1 <= s.family_sequence_number <= reference.family_count:
                differ.append("FamilySequenceNumber")
            if differ:
                findings.append(_mismatch(reference, s, differ))
                continue
            first = kept.setdefault(s.family_sequence_number, s)
            if first.path != s.path:  # the same path listed twice is one file, not a copy
                copies.append((first, s))
        if not kept:
            continue
        backup = LogicalBackup(tuple(kept[n] for n in sorted(kept)))
        backups.append(backup)
        if copies:
            findings.append(_duplicates(backup, copies))
    backups.sort(key=lambda b: (b.server_name, b.database_name, b.sort_key))
    return backups, findings


def _mismatch(reference: BackupSet, odd: BackupSet, columns: list[str]) -> Finding:
    return Finding(
        code="stripe-mismatch",
        severity=Severity.ERROR,
        message=(
            f"'{odd.path}' claims to be stripe {odd.family_sequence_number} of backup set "
            f"{str(odd.backup_set_guid).upper()} of database {describe_database(reference)}, but its "
            f"{', '.join(columns)} disagree with '{reference.path}'; Ferry leaves '{odd.path}' out"
        ),
        hint=(
            "one of the files was overwritten or is damaged: compare both with RESTORE HEADERONLY "
            "and remove the wrong one from the backup folder"
        ),
        files=(reference.path, odd.path),
    )


def _duplicates(backup: LogicalBackup, copies: list[tuple[BackupSet, BackupSet]]) -> Finding:
    pairs = "; ".join(
        f"'{copy.path}' is a copy of '{kept.path}' "
        f"(stripe {kept.family_sequence_number} of {kept.family_count})"
        for kept, copy in copies
    )
    files = sorted({p for kept, copy in copies for p in (kept.path, copy.path)})
    return Finding(
        code="duplicate-backup",
        severity=Severity.INFO,
        message=(
            f"backup set of database {describe_database(backup)} is stored twice: {pairs}; "
            "Ferry uses the first"
        ),
        hint="nothing to do; delete the extra copy if it is not needed elsewhere",
        files=tuple(files),
    )


def group_by_database(backups: Iterable[LogicalBackup]) -> dict[DatabaseKey, list[LogicalBackup]]:
    """Backups per database, databases sorted by server, name and FamilyGUID, backups by LSN."""
    groups: dict[DatabaseKey, list[LogicalBackup]] = defaultdict(list)
    for b in backups:
        groups[DatabaseKey(b.server_name, b.database_name, b.family_guid)].append(b)

    def order(k: DatabaseKey) -> tuple[str, str, str, str, str]:
        # Case-folded first so 'db1' and 'DB2' sort as a DBA reads them; exact text breaks ties stably.
        return (k.server.casefold(), k.name.casefold(), k.server, k.name, str(k.family_guid or ""))

    return {k: sorted(groups[k], key=lambda b: b.sort_key) for k in sorted(groups, key=order)}
