"""PostgreSQL as the pipeline sees it: sniff, read, catalog and plan base backups and archived WAL.

A PostgreSQL source is a whole cluster (physical backups restore every database in it at once), so one
"database" of the catalog and the plan is one cluster:

- `name` is the cluster's system identifier, as `pg_controldata` prints it ("Database system
  identifier"): the one name that is stable, unique, carried by every base backup and WAL segment, and
  shared by a primary and its standbys. It is what `ferry plan --database` matches.
- `server` is "PostgreSQL <major>"; the backup label, BACKUP FROM and timelines are in `details`.

Steps: one "full" step per plan (the base backup: its tar, tablespace tars, WAL tar and manifest), then
one "log" step per contiguous run of WAL segments on one timeline, its `files` listing every segment in
order. A plan over 10,000 segments on one timeline is then two steps, not 10,001. A step's `timeline`
is its timeline (the base backup's START TIMELINE for the full step): with the first segment's LSN it
gives every segment's file name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from ferry.core.catalog import BackupSummary, DatabaseCatalog, RecoveryTarget
from ferry.core.errors import UsageError
from ferry.core.findings import Finding, Severity
from ferry.core.plan import DatabasePlan, PlanStep, StepKind
from ferry.engines.postgres import chain, grouping
from ferry.engines.postgres.reader import PgFile, read_file, sniff
from ferry.engines.postgres.wal import format_lsn, parse_lsn
from ferry.stores.base import RangeReader

ENGINE = "postgres"


class PostgresEngine:
    @property
    def name(self) -> str:
        return ENGINE

    def sniff(self, head: bytes) -> bool:
        return sniff(head)

    def read(self, reader: RangeReader) -> list[PgFile]:
        return read_file(reader)

    def catalog(self, sets: Sequence[object]) -> tuple[list[DatabaseCatalog], list[Finding]]:
        sources, findings = grouping.group_sources(sets)
        out = []
        for source in sources:
            selected = chain.select_chain(source)
            findings.extend(source.findings)
            out.append(
                DatabaseCatalog(
                    engine=ENGINE,
                    name=str(source.system_identifier),
                    server=_server(source),
                    family_guid=None,
                    backups=tuple(_summaries(source)),
                    restorable_from=_restorable_from(source),
                    restorable_to=None,  # WAL carries commit times, but Ferry does not decode records yet
                    restorable_to_lsn=_lsn(selected.restores_to_lsn),
                    details=_details(source, selected),
                )
            )
        return sorted(out, key=lambda d: d.name), findings

    def plan(
        self, sets: Sequence[object], target: RecoveryTarget | None
    ) -> tuple[list[DatabasePlan], list[Finding]]:
        sources, findings = grouping.group_sources(sets)
        # Parsed only when there is a PostgreSQL source: in a store of SQL Server backups the LSN is in
        # SQL Server's form and is none of this engine's business.
        goal_lsn = _goal_lsn(target) if sources else None
        plans = []
        for source in sources:
            selected = chain.select_chain(source, goal_lsn)
            extra = [_time_unsupported(source, target)] if target and target.time and not target.lsn else []
            plans.append(
                DatabasePlan(
                    engine=ENGINE,
                    name=str(source.system_identifier),
                    server=_server(source),
                    steps=tuple(_steps(selected)),
                    findings=selected.findings + tuple(extra),
                    family_guid=None,
                    restores_to=_restores_to(selected),
                    restores_to_lsn=_lsn(selected.restores_to_lsn),
                )
            )
        return sorted(plans, key=lambda d: d.name), findings


def _goal_lsn(target: RecoveryTarget | None) -> int | None:
    if target is None or target.lsn is None:
        return None
    try:
        return parse_lsn(target.lsn)
    except ValueError as exc:
        raise UsageError(
            str(exc), "give the LSN as PostgreSQL prints it (pg_current_wal_lsn()), e.g. 0/3000060"
        ) from None


def _time_unsupported(source: grouping.Source, target: RecoveryTarget) -> Finding:
    assert target.time is not None
    return Finding(
        "stop-at-unsupported",
        Severity.ERROR,
        f"cannot plan {source.label} to the time {target.time.isoformat()}: choosing WAL for a point in "
        "time needs the commit times inside the WAL records, which Ferry does not read yet; the steps "
        "shown restore to the latest point",
        "give the point as an LSN with --stop-at-lsn (pg_waldump shows the LSN of each commit, and "
        "pg_current_wal_lsn() tells it on the server)",
        (),
    )


def _lsn(value: int | None) -> str | None:
    return format_lsn(value) if value is not None else None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _latest(source: grouping.Source) -> grouping.BaseBackup | None:
    return source.bases[-1] if source.bases else None


def _server(source: grouping.Source) -> str:
    latest = _latest(source)
    if latest is not None:
        return f"PostgreSQL {latest.tar.pg_version}"
    versions = {s.header.pg_version for s in source.segments if s.header.pg_version}
    return f"PostgreSQL {max(versions)}" if versions else "PostgreSQL"


def _usable(base: grouping.BaseBackup, source: grouping.Source) -> bool:
    w = chain.walk(base, chain.best_target(base, source), source)
    return w.consistent and not base.missing_tablespaces


def _restorable_from(source: grouping.Source) -> datetime | None:
    """The earliest point: where the oldest restorable base backup becomes consistent (its STOP TIME when
    the backup history file is there, else its START TIME)."""
    for base in source.bases:  # oldest first
        if _usable(base, source):
            label = base.history.label if base.history else base.tar.label
            return label.stop_time or base.tar.label.start_time
    return None


def _restores_to(selected: chain.Chain) -> str | None:
    w = selected.walk
    if w is None or selected.stop_lsn is not None or w.runs:
        return None  # a time inside the WAL: unknown until the WAL records are read
    stop = w.base.history.label.stop_time if w.base.history else None
    return _iso(stop)


def _base_note(base: grouping.BaseBackup, source: grouping.Source) -> str | None:
    notes = []
    if base.tar.compression != "none":
        notes.append(f"{base.tar.compression} compressed")
    if base.embedded:
        notes.append("includes its WAL")
    if base.missing_tablespaces:
        notes.append(f"tablespace tar(s) {', '.join(map(str, base.missing_tablespaces))} missing")
    if not _usable(base, source):
        notes.append("not restorable: WAL to make it consistent is missing")
    if base.end_lsn is None:
        notes.append("end of backup unknown (no manifest)")
    return "; ".join(notes) or None


def _summaries(source: grouping.Source) -> list[BackupSummary]:
    out = []
    for base in source.bases:
        stop_time = base.history.label.stop_time if base.history else None
        out.append(
            BackupSummary(
                kind=StepKind.FULL.value,
                files=base.files,
                first_lsn=format_lsn(base.start_lsn),
                last_lsn=format_lsn(base.consistent_at),
                start=base.tar.label.start_time,
                finish=stop_time,
                size=base.size,
                note=_base_note(base, source),
            )
        )
    for run in chain.wal_runs(source):
        out.append(
            BackupSummary(
                kind=StepKind.LOG.value,
                files=tuple(s.key for s in run.segments),
                first_lsn=format_lsn(run.first_lsn),
                last_lsn=format_lsn(run.last_lsn),
                start=None,
                finish=None,
                size=sum(s.size for s in run.segments),
                note=f"timeline {run.timeline}, {len(run.segments)} segment(s)",
            )
        )
    return out


def _steps(selected: chain.Chain) -> list[PlanStep]:
    w = selected.walk
    if w is None:
        return []
    base = w.base
    stop_time = base.history.label.stop_time if base.history else None
    steps = [
        PlanStep(
            kind=StepKind.FULL,
            files=base.files,
            first_lsn=format_lsn(base.start_lsn),
            last_lsn=format_lsn(base.consistent_at),
            backup_start=_iso(base.tar.label.start_time),
            backup_finish=_iso(stop_time),
            size=base.size,
            timeline=base.timeline,
        )
    ]
    for run in w.runs:
        steps.append(
            PlanStep(
                kind=StepKind.LOG,
                files=tuple(s.key for s in run.segments),
                first_lsn=format_lsn(run.first_lsn),
                last_lsn=format_lsn(run.last_lsn),
                size=sum(s.size for s in run.segments),
                timeline=run.timeline,
            )
        )
    if selected.stop_lsn is not None:
        steps[-1] = replace(steps[-1], stop_at=format_lsn(selected.stop_lsn))
    return steps


def _details(source: grouping.Source, selected: chain.Chain) -> dict[str, Any]:
    latest = _latest(source)
    versions = sorted({s.header.pg_version for s in source.segments if s.header.pg_version})
    return {
        "system_identifier": str(source.system_identifier),
        "pg_version": latest.tar.pg_version if latest else (str(versions[-1]) if versions else None),
        "catalog_version": latest.tar.catalog_version if latest else None,
        "pg_control_version": latest.tar.control_version if latest else None,
        "segment_size": source.segment_size,
        "timelines": list(source.timelines),
        "timeline_path": chain.describe_path(selected.walk.path) if selected.walk else None,
        "wal_segments": len(source.segments),
        "partial_segments": len(source.partials),
        "backup_label": latest.tar.label.label if latest else None,
        "backup_from": latest.tar.label.backup_from if latest else None,
    }
