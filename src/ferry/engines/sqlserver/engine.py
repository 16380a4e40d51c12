"""SQL Server as the pipeline sees it: sniff, read, catalog and plan native backups."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from posixpath import dirname

from ferry.core.catalog import BackupSummary, DatabaseCatalog, RecoveryTarget
from ferry.core.errors import UsageError
from ferry.core.findings import Finding, Severity
from ferry.core.lsn import parse_sqlserver_lsn
from ferry.core.plan import DatabasePlan, PlanStep, StepKind
from ferry.engines.sqlserver import chain
from ferry.engines.sqlserver.headers import BackupSet, BackupType
from ferry.engines.sqlserver.reader import read_backup_sets, sniff
from ferry.stores.base import RangeReader

ENGINE = "sqlserver"
_KIND = {
    BackupType.DATABASE: StepKind.FULL.value,
    BackupType.DIFFERENTIAL: StepKind.DIFF.value,
    BackupType.LOG: StepKind.LOG.value,
}


class SqlServerEngine:
    @property
    def name(self) -> str:
        return ENGINE

    def sniff(self, head: bytes) -> bool:
        return sniff(head)

    def read(self, reader: RangeReader) -> list[BackupSet]:
        return read_backup_sets(reader)

    def database_of(self, backup_set: object) -> str | None:
        """The database a backup set is of: a store holds any number of them, and the service hands each
        migration its own database's sets only (pipeline/sources.py)."""
        return backup_set.database_name if isinstance(backup_set, BackupSet) else None

    def catalog(self, sets: Sequence[object]) -> tuple[list[DatabaseCatalog], list[Finding]]:
        groups, findings = _grouped(sets)
        out = []
        for key, backups in groups.items():
            span = chain.restorable_range(backups)
            out.append(
                DatabaseCatalog(
                    engine=ENGINE,
                    name=key.name,
                    server=key.server,
                    family_guid=_guid(key),
                    backups=tuple(_summary(b) for b in _by_lsn(backups)),
                    restorable_from=span.earliest,
                    restorable_to=span.latest,
                    restorable_to_lsn=str(span.latest_lsn) if span.latest_lsn is not None else None,
                    details=_details(backups),
                )
            )
        return sorted(out, key=lambda d: (d.name.casefold(), d.server.casefold())), findings

    def plan(
        self, sets: Sequence[object], target: RecoveryTarget | None
    ) -> tuple[list[DatabasePlan], list[Finding]]:
        groups, findings = _grouped(sets)
        # The target is read in SQL Server's LSN form only when there are SQL Server backups to plan: a
        # PostgreSQL store's X/Y LSN is not this engine's to refuse.
        stop = _stop_point(target) if groups else None
        plans = []
        for key, backups in groups.items():
            selected = chain.select_chain(backups, stop)
            plans.append(
                DatabasePlan(
                    engine=ENGINE,
                    name=key.name,
                    server=key.server,
                    family_guid=_guid(key),
                    steps=tuple(_step(s) for s in selected.steps),
                    findings=selected.findings,
                    restores_to=selected.restores_to.isoformat() if selected.restores_to else None,
                    restores_to_lsn=(
                        str(selected.restores_to_lsn) if selected.restores_to_lsn is not None else None
                    ),
                )
            )
        return sorted(plans, key=lambda d: (d.name.casefold(), d.server.casefold())), findings


def _backup_sets(sets: Sequence[object]) -> list[BackupSet]:
    return [s for s in sets if isinstance(s, BackupSet)]


def _grouped(
    sets: Sequence[object],
) -> tuple[dict[chain.DatabaseKey, list[chain.LogicalBackup]], list[Finding]]:
    backups, findings = chain.merge_stripes(_backup_sets(sets))
    groups = chain.group_by_database(backups)
    findings.extend(_shared_folders(groups))
    return groups, findings


def _shared_folders(groups: dict[chain.DatabaseKey, list[chain.LogicalBackup]]) -> list[Finding]:
    """Folders that hold backups of several databases: fine for Ferry, worth knowing for other tools."""
    by_folder: dict[str, set[str]] = defaultdict(set)
    for key, backups in groups.items():
        for b in backups:
            for path in b.files:
                by_folder[dirname(path) or "."].add(f"{key.name} on {key.server}")
    notes = []
    for folder, names in sorted(by_folder.items()):
        if len(names) > 1:
            listed = ", ".join(sorted(names))
            notes.append(
                Finding(
                    code="several-databases",
                    severity=Severity.INFO,
                    message=f"folder '{folder}' holds backups of {len(names)} databases: {listed}",
                    hint="nothing to do: Ferry tells databases apart by their headers, not by folder",
                    files=(folder,),
                )
            )
    return notes


def _stop_point(target: RecoveryTarget | None) -> chain.StopPoint | None:
    if target is None:
        return None
    if target.lsn is not None:
        try:
            return chain.StopPoint(lsn=parse_sqlserver_lsn(target.lsn))
        except ValueError as exc:
            raise UsageError(
                str(exc), "give the LSN as RESTORE HEADERONLY prints it, e.g. 34000000016700004"
            ) from None
    return chain.StopPoint(time=target.time)


def _by_lsn(backups: list[chain.LogicalBackup]) -> list[chain.LogicalBackup]:
    return sorted(backups, key=lambda b: (b.first_lsn, b.last_lsn, b.head.path))


def _kind(b: chain.LogicalBackup) -> str:
    t = b.head.backup_type
    if t is None:
        return f"unknown type {b.head.type_letter!r}"
    return _KIND.get(t, t.description.lower())


def _summary(b: chain.LogicalBackup) -> BackupSummary:
    note = None
    if b.head.is_empty_log:
        note = "empty log (FirstLSN = LastLSN): skipped"
    elif not b.complete:
        note = f"stripes {', '.join(map(str, b.missing_stripes))} of {b.head.family_count} missing"
    return BackupSummary(
        kind=_kind(b),
        files=tuple(b.files),
        first_lsn=str(b.first_lsn),
        last_lsn=str(b.last_lsn),
        start=b.head.backup_start,
        finish=b.head.backup_finish,
        size=b.head.backup_size,
        note=note,
    )


def _step(s: chain.ChainStep) -> PlanStep:
    head = s.backup.head
    return PlanStep(
        kind=s.kind,
        files=tuple(s.backup.files),
        first_lsn=str(head.first_lsn),
        last_lsn=str(head.last_lsn),
        stop_at=s.stop_at,
        backup_start=_iso(head.backup_start),
        backup_finish=_iso(head.backup_finish),
        size=head.backup_size,
        position=head.position,
    )


def _details(backups: list[chain.LogicalBackup]) -> dict[str, object]:
    latest = max(backups, key=lambda b: b.last_lsn).head
    return {
        "recovery_model": latest.recovery_model,
        "database_version": latest.database_version,
        "software_version": f"{latest.software_major}.{latest.software_minor}.{latest.software_build}",
        "compatibility_level": latest.compatibility_level,
        "database_guid": str(latest.database_guid).upper() if latest.database_guid else None,
    }


def _guid(key: chain.DatabaseKey) -> str | None:
    return str(key.family_guid).upper() if key.family_guid else None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
