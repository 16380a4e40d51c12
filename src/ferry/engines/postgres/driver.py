"""PostgreSQL behind the execution seam (engines/base.py: Migrator): the steps the service's workflow, the
agent and `ferry migrate` run, built from migration.py's steps.

Each migration owns one folder on the target host, `TARGET.location/<job id>` (target.py). Every step
reads where it stands from that folder and the server it holds, so a step run again after a crash
resumes or skips:

- prepare reopens the migration's folder when it exists (same system identifier), else creates it;
- restore_full is skipped when the folder holds the restored data directory; an interrupted unpack
  (data.partial) starts over;
- follow_logs configures recovery once, starts the server only when it is not running; PostgreSQL resumes
  from its own restartpoint and the prefetcher follows its replay position;
- cut_over on a promoted target returns the result recorded in the folder then.

`Prepared.state` holds what the steps need besides the folder: the base backup's keys, the WAL to follow.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ferry.core.errors import FerryError, UsageError
from ferry.core.migration import MigrationStatus, State, StatusReporter
from ferry.engines.base import (
    CutoverDone,
    CutoverRequest,
    FollowDone,
    MigrationJob,
    Prepared,
    SourceFiles,
    StepContext,
    StepReport,
    Until,
)
from ferry.engines.postgres import migration as pgm
from ferry.engines.postgres.engine import ENGINE
from ferry.engines.postgres.target import (
    TARGET_FILE,
    ExtractProgress,
    Phase,
    PostgresTarget,
    TargetError,
    read_record,
)
from ferry.engines.postgres.wal import format_lsn, parse_segment_name
from ferry.host import free_port, port_in_use

REPLAY_FILE = "ferry-replay.json"  # where replay was first seen: kept in the target folder for the result
RESTORE_FILE = "ferry-restore.json"  # bytes and seconds of the base restore, for the result
CANCELED_FILE = "ferry-canceled"  # written by stop: no later replay attempt may start the server again
# Phases of the target folder in the seam's words (Prepared.phase).
PHASES = {
    Phase.NEW: "new",
    Phase.INTERRUPTED: "interrupted",
    Phase.RESTORED: "restored",
    Phase.RECOVERY: "restored",
    Phase.PROMOTED: "recovered",
}


@dataclass(frozen=True)
class PgState:
    """Prepared.state of a PostgreSQL migration."""

    target_root: str
    port: int
    system_identifier: str
    base_tar: str
    base_archives: list[str]
    base_manifest: str | None
    base_size: int
    base_start_lsn: int
    timeline: int
    segment_size: int
    archive_end_lsn: int
    until_lsn: int | None = None  # offline with a last backup: replay to here, then cut over

    @staticmethod
    def of(prepared: Prepared) -> PgState:
        return PgState(**dict(prepared.state))

    def wal(self, source: str) -> pgm.WalSource:
        return pgm.WalSource(source, self.timeline, self.segment_size, self.archive_end_lsn)

    def base(self, source: str) -> pgm.BaseBackupRef:
        return pgm.BaseBackupRef(
            source, self.base_tar, tuple(self.base_archives), self.base_manifest, self.base_size,
            self.base_start_lsn,
        )  # fmt: skip


def until_lsn(last_backup: str | None, online: bool, segment_size: int) -> int | None:
    """Offline with a last backup (a WAL file name): replay through that segment, then cut over."""
    if online or not last_backup:
        return None
    name = last_backup.rstrip("/").rsplit("/", 1)[-1]
    parsed = parse_segment_name(name, segment_size)
    if parsed is None:
        raise UsageError(
            f"last backup '{last_backup}' is not a WAL segment name",
            "for PostgreSQL, name the last WAL file to restore (e.g. 000000010000000000000042)",
        )
    return parsed.end_lsn(segment_size)


def details(p: PgState, restored: bool) -> dict[str, Any]:
    """status.details: whether the base backup is restored, and its files (the active backup set)."""
    status = "restored" if restored else "restoring"
    return {
        "full_backup_restored": restored,
        "backup_sets": [
            {
                "name": p.base_tar,
                "kind": "full",
                "files": [{"name": k, "status": status} for k in p.base_archives],
            }
        ],
    }


def _write_json(path: Path, doc: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(dict(doc)))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, ValueError):
        doc = json.loads(path.read_text())
        return doc if isinstance(doc, dict) else None
    return None


class PostgresMigrator:
    """The PostgreSQL steps. One per agent process: it hands a running replay (its prefetcher, spool and
    absent markers) over to the cutover of the same migration, and keeps two migrations set up at once
    from choosing the same port."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reserved: set[int] = set()
        self._handed: dict[str, pgm.Replay] = {}

    @property
    def engine(self) -> str:
        return ENGINE

    # -- prepare ----------------------------------------------------------------------------------

    def prepare(self, job: MigrationJob, files: SourceFiles, ctx: StepContext) -> tuple[Prepared, StepReport]:
        plan = pgm.plan_files(files)
        walk = plan.chain.walk
        assert walk is not None
        until = until_lsn(job.last_backup, job.online, plan.source.segment_size)
        spec = pgm.MigrationSpec.of(job)
        if not (spec.target / TARGET_FILE).exists() and job.port is None:
            spec = pgm.MigrationSpec.of(replace(job, port=self._port(job)))
        target = pgm.prepare_target(spec, plan)
        base = pgm.BaseBackupRef.of(plan)
        phase = target.phase()
        state = PgState(
            target_root=str(target.root),
            port=target.record.port,
            system_identifier=str(plan.source.system_identifier),
            base_tar=base.tar,
            base_archives=list(base.archives),
            base_manifest=base.manifest,
            base_size=base.size,
            base_start_lsn=base.start_lsn,
            timeline=walk.target_timeline,
            segment_size=plan.source.segment_size,
            archive_end_lsn=walk.end_lsn,
            until_lsn=until,
        )
        warnings = [f.message for f in plan.findings if f.severity.value != "error"]
        report = StepReport(
            f"validated '{job.source}': base backup {base.tar}, timeline {walk.target_timeline}, "
            f"WAL to {format_lsn(walk.end_lsn)}; target folder {target.root} (port "
            f"{target.record.port}, {phase.value})",
            f"scan {job.source}; choose the restore chain",
            data={
                "bytes": base.size,
                "target_folder": str(target.root),
                "port": target.record.port,
                "phase": phase.value,
                "warnings": warnings[:20],
            },
        )
        return Prepared(ENGINE, str(target.root), PHASES[phase], base.size, asdict(state)), report

    def _port(self, job: MigrationJob) -> int:
        """A free port no other migration of this target has: ports are taken when the servers start,
        long after they are chosen, so two migrations set up at once must not pick the same."""
        root = Path(job.target.location)
        with self._lock:
            used = set(self._reserved)
            for record_file in root.glob(f"*/{TARGET_FILE}"):
                with contextlib.suppress(FerryError, OSError):
                    used.add(read_record(record_file.parent).port)
            for _ in range(200):
                port = free_port()
                if port not in used and not port_in_use(port):
                    self._reserved.add(port)
                    return port
        raise TargetError("no free TCP port for a target server", "free some ports on the target host")

    # -- restore_full -----------------------------------------------------------------------------

    def restore_full(self, job: MigrationJob, prepared: Prepared, ctx: StepContext) -> StepReport:
        p = PgState.of(prepared)
        target = PostgresTarget.open(Path(p.target_root))
        phase = target.phase()
        if phase not in (Phase.NEW, Phase.INTERRUPTED):
            return StepReport(
                f"restore_base skipped: {target.root} already holds the restored data directory "
                f"({phase.value})",
                skipped=True,
                data={"seconds": 0.0, "bytes": 0},
            )
        reporter = StatusReporter(
            ctx.report, State.RESTORING_FULL, "unpacking the base backup", details(p, False)
        )
        t0 = time.monotonic()
        points: list[tuple[float, int]] = []

        def progress(x: ExtractProgress) -> None:
            ctx.check()  # stops the unpack between chunks; data.partial is redone next time
            now = time.monotonic()
            points.append((now, x.archive_bytes_done))
            while len(points) > 2 and now - points[0][0] > 5:
                points.pop(0)
            (ta, a), (tb, b) = points[0], points[-1]
            reporter.emit(
                phase="unpacking the base backup",
                bytes_done=x.archive_bytes_done,
                bytes_total=x.archive_bytes_total,
                current_file=x.current,
                throughput=(b - a) / (tb - ta) if tb > ta else None,
            )

        if phase is Phase.INTERRUPTED:
            ctx.note("an earlier unpack was interrupted: starting it over")
        result = pgm.restore_base(target, p.base(job.source), progress)
        seconds = time.monotonic() - t0
        _write_json(target.root / RESTORE_FILE, {"bytes": result.archive_bytes, "seconds": round(seconds, 3)})
        reporter.emit(
            phase="base backup restored",
            bytes_done=result.archive_bytes,
            current_file=None,
            last_file=p.base_tar,
            details=details(p, True),
        )
        return StepReport(
            f"restored base backup {p.base_tar}: {result.files} files, {result.data_bytes} bytes in "
            f"{seconds:.1f} s",
            f"unpack {', '.join(p.base_archives)} into {target.data}; check sizes against backup_manifest",
            skipped=result.skipped,
            data={
                "bytes": result.archive_bytes,
                "data_bytes": result.data_bytes,
                "files": result.files,
                "verified": result.verified,
            },
        )

    # -- follow_logs ------------------------------------------------------------------------------

    def follow_logs(
        self, job: MigrationJob, prepared: Prepared, until: Until, ctx: StepContext
    ) -> FollowDone:
        p = PgState.of(prepared)
        target = PostgresTarget.open(Path(p.target_root))
        if target.phase() is Phase.PROMOTED or (target.root / CANCELED_FILE).exists():
            # An attempt that comes after the cutover (which replayed what was left) or a cancel (which
            # stopped the server for good).
            return FollowDone(
                CutoverRequest(time.time()),
                None,
                None,
                StepReport(
                    "replay not started: the cutover or a cancel has taken the target over", skipped=True
                ),
            )
        spec = pgm.MigrationSpec.of(job)
        reporter = StatusReporter(
            ctx.report, State.RESTORING_LOGS, "starting the target server", details(p, True)
        )
        first: int | None = None

        def should_stop() -> CutoverRequest | None:
            ctx.check()
            return until.request()

        with pgm.Replay.of(spec, target, p.wal(job.source), reporter) as rep:
            try:
                first = rep.start(wait=5).position
                request = rep.follow(
                    should_stop,
                    until_settled=not job.online and p.until_lsn is None,
                    until_lsn=p.until_lsn,
                    wake=until.wake,
                )
            finally:
                self._remember_start(target.root, rep.started)
            if job.online and until.taking_over():
                rep.hand_over()  # the cutover goes on with this spool and its absent markers
                with self._lock:
                    self._handed[job.id] = rep
        last = reporter.status.target_position
        how = "stopped for the cutover" if job.online else (
            "reached the end" if p.until_lsn is None else f"reached {format_lsn(p.until_lsn)}"
        )  # fmt: skip
        started = rep.started
        return FollowDone(
            request,
            started[0] if started else None,
            format_lsn(started[1]) if started else None,
            StepReport(
                f"replay {how}: from {format_lsn(first) if first is not None else '?'} to {last}",
                f"standby replaying WAL from {job.source} (restore_command + prefetch spool)",
                data={"from_lsn": format_lsn(first) if first is not None else None, "to_lsn": last},
            ),
        )

    @staticmethod
    def _remember_start(root: Path, started: tuple[float, int] | None) -> None:
        if started is not None and not (root / REPLAY_FILE).exists():
            _write_json(root / REPLAY_FILE, {"started_at": started[0], "started_lsn": started[1]})

    @staticmethod
    def _recall_start(root: Path) -> tuple[float, int] | None:
        raw = _read_json(root / REPLAY_FILE)
        with contextlib.suppress(KeyError, TypeError, ValueError):
            if raw is not None:
                return float(raw["started_at"]), int(raw["started_lsn"])
        return None

    def _take_handed(self, migration_id: str) -> pgm.Replay | None:
        with self._lock:
            return self._handed.pop(migration_id, None)

    # -- cut_over ---------------------------------------------------------------------------------

    def cut_over(
        self, job: MigrationJob, prepared: Prepared, request: CutoverRequest, ctx: StepContext
    ) -> CutoverDone:
        p = PgState.of(prepared)
        target = PostgresTarget.open(Path(p.target_root))
        handed = self._take_handed(job.id)
        try:
            recorded = pgm.recorded_result(target.root)
            if target.phase() is Phase.PROMOTED and recorded is not None:
                return CutoverDone(
                    recorded.to_json(),
                    recorded.downtime_seconds,
                    StepReport(
                        "cutover skipped: the target is already promoted; its recorded result stands",
                        skipped=True,
                        data={"seconds": 0.0},
                    ),
                )
            reporter = StatusReporter(ctx.report, State.CUTTING_OVER, "cutting over", details(p, True))
            restored = _read_json(target.root / RESTORE_FILE) or {}
            result = pgm.cut_over(
                target,
                pgm.MigrationSpec.of(job),
                p.wal(job.source),
                request,
                reporter,
                restored=(int(restored.get("bytes", 0)), float(restored.get("seconds", 0.0))),
                replay_started=self._recall_start(target.root),
                check=ctx.check,
                replay=handed,
            )
        finally:
            if handed is not None:
                handed.prefetcher.stop()  # a no-op once the cutover's own `with` ended
        what = f"replay to {request.final_lsn}" if request.final_lsn else "replay to the end of the archive"
        return CutoverDone(
            result.to_json(),
            result.downtime_seconds,
            StepReport(
                f"cut over: promoted at {result.promoted_at_lsn}, writes verified; downtime "
                f"{result.downtime_seconds} s",
                f"{what}; pg_promote(); commit a test transaction",
                data={
                    "bytes": result.replayed_bytes,
                    "downtime_seconds": result.downtime_seconds,
                    "promoted_at_lsn": result.promoted_at_lsn,
                    "final_lsn": result.final_lsn,
                },
            ),
        )

    # -- stop (cancel) ----------------------------------------------------------------------------

    def stop(self, job: MigrationJob, prepared: Prepared | None) -> StepReport:
        """Stop the target server with a fast shutdown. The folder stays as it is (data directory in
        recovery, its log, the spool) for inspection; remove it when done. The source is never touched."""
        folder = Path(job.target.location) / job.id
        if not (folder / TARGET_FILE).exists():
            return StepReport(
                "canceled before a target folder was made: nothing to stop", data={"seconds": 0.0}
            )
        handed = self._take_handed(job.id)
        if handed is not None:
            handed.prefetcher.stop()
        (folder / CANCELED_FILE).write_text(f"{datetime.now(UTC).isoformat()}\n")
        target = PostgresTarget.open(folder)
        running = target.phase() not in (Phase.NEW, Phase.INTERRUPTED) and target.cluster.is_running()
        if running:
            target.stop("fast")
        return StepReport(
            f"target server {'stopped' if running else 'was not running'}; folder {folder} kept "
            f"({target.phase().value}) for inspection",
            "pg_ctl stop -m fast" if running else "",
            data={"target_folder": str(folder)},
        )

    # -- status -----------------------------------------------------------------------------------

    def status(self, job: MigrationJob, prepared: Prepared) -> MigrationStatus:
        p = PgState.of(prepared)
        target = PostgresTarget.open(Path(p.target_root))
        phase = target.phase()
        if phase is Phase.PROMOTED:
            return MigrationStatus(State.SUCCEEDED, "done", details=details(p, True))
        if phase in (Phase.NEW, Phase.INTERRUPTED):
            return MigrationStatus(
                State.RESTORING_FULL, "unpacking the base backup", details=details(p, False)
            )
        st = target.status()
        return MigrationStatus(
            State.RESTORING_LOGS,
            "replaying WAL" if st.running else "target server stopped",
            target_position=format_lsn(st.position) if st.position is not None else None,
            details=details(p, True),
        )
