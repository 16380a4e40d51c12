"""The catalog: what backups a store holds, per database, and how far each database can be restored."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ferry.core.findings import Finding


@dataclass(frozen=True)
class RecoveryTarget:
    """A point to restore to. `time` may be naive: it then means the source server's local time.
    `lsn` is in the engine's printed form and parsed by the engine."""

    time: datetime | None = None
    lsn: str | None = None

    def describe(self) -> str:
        if self.lsn is not None:
            return f"LSN {self.lsn}"
        return self.time.isoformat() if self.time else "the latest point"


@dataclass(frozen=True)
class BackupSummary:
    """One logical backup (all its stripes) as the catalog lists it."""

    kind: str  # full, diff, log, or the engine's word for another type
    files: tuple[str, ...]
    first_lsn: str
    last_lsn: str
    start: datetime | None
    finish: datetime | None
    size: int
    note: str | None = None  # e.g. "empty log", "stripe 2 of 3 missing"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "files": list(self.files),
            "first_lsn": self.first_lsn,
            "last_lsn": self.last_lsn,
            "start": self.start.isoformat() if self.start else None,
            "finish": self.finish.isoformat() if self.finish else None,
            "size": self.size,
            "note": self.note,
        }


@dataclass(frozen=True)
class DatabaseCatalog:
    engine: str
    name: str
    server: str
    family_guid: str | None
    backups: tuple[BackupSummary, ...]
    restorable_from: datetime | None
    restorable_to: datetime | None
    restorable_to_lsn: str | None
    details: dict[str, Any] = field(default_factory=dict)  # engine facts: version, recovery model...

    def to_json(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for b in self.backups:
            counts[b.kind] = counts.get(b.kind, 0) + 1
        return {
            "name": self.name,
            "server": self.server,
            "engine": self.engine,
            "family_guid": self.family_guid,
            "counts": counts,
            "restorable_from": self.restorable_from.isoformat() if self.restorable_from else None,
            "restorable_to": self.restorable_to.isoformat() if self.restorable_to else None,
            "restorable_to_lsn": self.restorable_to_lsn,
            "details": self.details,
            "backups": [b.to_json() for b in self.backups],
        }


@dataclass(frozen=True)
class Catalog:
    source: str
    databases: tuple[DatabaseCatalog, ...]
    findings: tuple[Finding, ...]
    files_scanned: int = 0
    bytes_read: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "files_scanned": self.files_scanned,
            "databases": [d.to_json() for d in self.databases],
            "findings": [f.to_json() for f in self.findings],
        }
