"""Restore plans: for each database, the ordered steps that restore it, and the findings about it.

A plan is plain data. Its JSON form (`Plan.to_json`) is a documented contract (docs/engines.md): scripts
read it, so keys are only ever added, never renamed or removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ferry.core.findings import Finding, has_errors

PLAN_FORMAT_VERSION = 1


class StepKind(StrEnum):
    FULL = "full"
    DIFF = "diff"
    LOG = "log"


@dataclass(frozen=True)
class PlanStep:
    """One restore step. `files` holds every stripe of the backup set, relative to the scanned location.
    LSNs are already in the engine's printed form (SQL Server numeric(25,0), PostgreSQL X/Y)."""

    kind: StepKind
    files: tuple[str, ...]
    first_lsn: str
    last_lsn: str
    stop_at: str | None = None
    backup_start: str | None = None
    backup_finish: str | None = None
    size: int = 0
    position: int = 1  # SQL Server: the backup set's Position in its media file
    timeline: int | None = None  # PostgreSQL: the WAL timeline of the step

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "files": list(self.files),
            "first_lsn": self.first_lsn,
            "last_lsn": self.last_lsn,
            "stop_at": self.stop_at,
            "position": self.position,
            "backup_start": self.backup_start,
            "backup_finish": self.backup_finish,
            "size": self.size,
            "timeline": self.timeline,
        }


@dataclass(frozen=True)
class DatabasePlan:
    engine: str
    name: str
    server: str
    steps: tuple[PlanStep, ...]
    findings: tuple[Finding, ...]
    family_guid: str | None = None
    restores_to: str | None = None
    restores_to_lsn: str | None = None

    @property
    def executable(self) -> bool:
        return bool(self.steps) and not has_errors(self.findings)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "server": self.server,
            "engine": self.engine,
            "family_guid": self.family_guid,
            "restores_to": self.restores_to,
            "restores_to_lsn": self.restores_to_lsn,
            "executable": self.executable,
            "steps": [s.to_json() for s in self.steps],
            "findings": [f.to_json() for f in self.findings],
        }


@dataclass(frozen=True)
class Plan:
    source: str
    databases: tuple[DatabasePlan, ...]
    findings: tuple[Finding, ...] = field(default=())

    def all_findings(self) -> list[Finding]:
        out = list(self.findings)
        for db in self.databases:
            out.extend(db.findings)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "version": PLAN_FORMAT_VERSION,
            "source": self.source,
            "databases": [d.to_json() for d in self.databases],
            "findings": [f.to_json() for f in self.findings],
        }
