"""SQL Server behind the execution seam (engines/base.py: Migrator): the steps the service's workflow, the
agent and `ferry migrate` run against a SQL Server target named `mssql://USER@HOST[:PORT][/INSTANCE]`.

Every step opens its own connection (pymssql, autocommit) and asks the target where the database stands
before it does anything, so a step run again after a crash, at any point, resumes or skips:

- prepare plans the source's database, reads the target's facts and runs the preflight (prepare.py);
  a database this migration already owns (its claim in the work folder, workdir.py) is reopened;
- restore_full is skipped when the restore history holds the full backup restored by this migration and
  the redo point is past the differential; an interrupted full restore is simply run again;
- follow_logs plans each next log from the target's own redo point (apply.py): no log is applied twice;
- cut_over on a database already online returns the result recorded then.

Prepared.state (settings.py: SqlState) holds the database name, the full and differential steps with
their devices, file moves and exact statements, where the chain planned at prepare ends, and the
restore history rows that predate the migration; never a list of logs, and never a secret.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from ferry.core.errors import FerryError
from ferry.core.findings import Finding
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
    TargetSpec,
    Until,
)
from ferry.engines.sqlserver import access as acc
from ferry.engines.sqlserver import prepare as prep
from ferry.engines.sqlserver.apply import Applier, LogsMissing
from ferry.engines.sqlserver.connection import Connection, TargetUrl, password_for
from ferry.engines.sqlserver.engine import ENGINE
from ferry.engines.sqlserver.facts import Position
from ferry.engines.sqlserver.settings import Settings, SqlState
from ferry.engines.sqlserver.target import Target, Throttle
from ferry.engines.sqlserver.tsql import Recovery, quote_ident, restore_statement
from ferry.engines.sqlserver.workdir import WorkFolder


class LsnProofFailed(FerryError):
    retryable = False


class SqlServerMigrator:
    """The SQL Server steps. Holds nothing between steps: the target and the work folder do."""

    @property
    def engine(self) -> str:
        return ENGINE

    @staticmethod
    def _open(job: MigrationJob) -> Target:
        url = TargetUrl.parse(job.target.location)
        s = Settings.of(job)
        return Target(Connection.open(url, password_for(url, s.options), s.login_timeout))

    @staticmethod
    def _work(job: MigrationJob, st: SqlState) -> WorkFolder:
        return WorkFolder.of(Settings.of(job).options, TargetUrl.parse(st.url), st.database)

    # -- prepare ----------------------------------------------------------------------------------------

    def prepare(self, job: MigrationJob, files: SourceFiles, ctx: StepContext) -> tuple[Prepared, StepReport]:
        with self._open(job) as target:
            return prep.prepare(job, files, ctx, target, WorkFolder)

    # -- restore_full -----------------------------------------------------------------------------------

    def restore_full(self, job: MigrationJob, prepared: Prepared, ctx: StepContext) -> StepReport:
        st, s = SqlState.of(prepared), Settings.of(job)
        with self._open(job) as t:
            pos = t.position(st.database)
            full_done, diff_done = prep.base_done(st, pos)
            if full_done and diff_done:
                return StepReport(
                    f"restore_full skipped: [{st.database}] on {t.name} holds the full"
                    + (" and differential backups" if st.diff else " backup")
                    + f" (redo point {pos.redo_lsn})",
                    skipped=True,
                    data={"seconds": 0.0, "bytes": 0},
                )
            if pos.online and not st.replace and not prep.ours(self._work(job, st), pos, _plan_of(st)):
                raise FerryError(
                    f"[{st.database}] on {t.name} appeared ONLINE since the migration was prepared",
                    "someone created it meanwhile: restore under another name, or run again with --replace",
                )
            if pos.online and st.close_sessions:
                t.close_sessions(st.database)
            steps = ([] if full_done else [st.full]) + ([st.diff] if st.diff and not diff_done else [])
            if full_done:
                ctx.note(f"the full backup is on {t.name} already: restoring the differential backup")
            elif pos.exists and pos.restoring:
                ctx.note(f"an earlier restore of [{st.database}] was interrupted: restoring the full again")
            total = sum(b.size for b in steps)
            rep = StatusReporter(ctx.report, State.RESTORING_FULL, "restoring the full backup",
                                 {"full_backup_restored": False, "database": st.database})  # fmt: skip
            throttle, done, t0 = Throttle(0.5), 0, time.monotonic()
            statements = []
            for b in steps:
                ctx.check()
                statement = self._statement(job, st, s, b.backup_set_guid, b.statement, ctx)
                statements.append(statement.split("\n", 1)[0])
                began = time.monotonic()

                def progress(
                    pct: int, b_size: int = b.size, before: int = done, began: float = began
                ) -> None:
                    if throttle.ready() or pct >= 100:
                        now = before + b_size * pct // 100
                        rep.emit(bytes_done=now, bytes_total=total,
                                 throughput=(now - before) / max(1e-3, time.monotonic() - began))  # fmt: skip

                rep.emit(phase=f"restoring the {b.kind} backup", current_file=b.files[0], bytes_total=total)
                t.restore(statement, f"RESTORE DATABASE [{st.database}] ({b.kind} backup)", progress)
                done += b.size
            seconds = time.monotonic() - t0
            rep.emit(phase="full backup restored", bytes_done=total, current_file=None,
                     last_file=steps[-1].files[0], details={"full_backup_restored": True})  # fmt: skip
        return StepReport(
            f"restored {' and '.join(b.kind for b in steps)} backup(s) of [{st.database}] on {t.name}: "
            f"{total} bytes in {seconds:.1f} s, NORECOVERY",
            "; ".join(statements),
            data={"bytes": total, "seconds": round(seconds, 3), "files": len(steps)},
        )

    @staticmethod
    def _statement(
        job: MigrationJob, st: SqlState, s: Settings, guid: str, statement: str, ctx: StepContext
    ) -> str:
        """The prepared statement; with a media password, rendered again (the password is never kept)."""
        if not s.media_password:
            return statement
        src = prep.plan_source(job, ctx.rescan())
        step = next((x for x in src.steps if prep.guid(x) == guid), None)
        if step is None:
            raise FerryError(f"backup set {guid} is no longer in '{job.source}'", "put its files back")
        source = acc.open_source(job.source, s, step.backup.size)
        view = acc.view_of_state(st.target_major, st.target_platform)
        mapped = acc.step_devices(source, list(step.backup.files), view, s.path_map)
        devices = acc.devices(mapped)
        options = prep.restore_options(st.database, s, st.moves, st.target_major, acc.credential_name(mapped))
        opts = replace(
            options,
            media_password=s.media_password,
            replace=st.replace,
            standby_file=None,
            recovery=Recovery.NORECOVERY,
        )
        return restore_statement(step, devices, opts)

    # -- follow_logs ------------------------------------------------------------------------------------

    def follow_logs(
        self, job: MigrationJob, prepared: Prepared, until: Until, ctx: StepContext
    ) -> FollowDone:
        st, s = SqlState.of(prepared), Settings.of(job)
        work = self._work(job, st)
        with self._open(job) as t:
            pos = t.position(st.database)
            if work.canceled or pos.online:
                why = "a cancel" if work.canceled else "the cutover"
                skip = StepReport(f"log restores not started: {why} has taken over", skipped=True)
                return FollowDone(CutoverRequest(time.time()), None, None, skip)
            rep = StatusReporter(ctx.report, State.RESTORING_LOGS, "restoring log backups")
            a = Applier(job, st, s, t, ctx, rep)
            started_at, started_lsn = time.time(), pos.redo_lsn
            request = self._follow(job, st, a, until)
            view, pos = a.look()
            a.report(view, pos, State.READY_FOR_CUTOVER if job.online else State.RESTORING_LOGS)
        return FollowDone(
            request,
            started_at,
            str(started_lsn) if started_lsn is not None else None,
            StepReport(
                f"log restores {'stopped for the cutover' if job.online else 'reached the end'}: "
                f"[{st.database}] from LSN {started_lsn} to {pos.redo_lsn}",
                f"RESTORE LOG [{st.database}] ... WITH NORECOVERY, per log backup",
                data={"from_lsn": str(started_lsn), "to_lsn": str(pos.redo_lsn)},
            ),
        )

    def _follow(self, job: MigrationJob, st: SqlState, a: Applier, until: Until) -> CutoverRequest:
        ready = False
        while True:
            a.ctx.check()
            request = until.request() if job.online else None
            if request is not None:
                return request
            view, pos = a.look()
            if view.queue and not (not job.online and self._offline_done(job, st, a, view, pos)):
                a.apply(view.queue[0], view, pos, State.READY_FOR_CUTOVER if ready else State.RESTORING_LOGS)
                ready = ready and len(view.queue) - 1 <= job.replay.ready_lag
                continue
            if not job.online:
                if self._offline_done(job, st, a, view, pos):
                    return CutoverRequest(time.time())
                missing = self._offline_missing(job, st, view)
                reason = a.blocked_reason(view, missing)
                a.report(view, pos, State.RESTORING_LOGS, blocked=reason)
                if reason is not None:
                    raise LogsMissing(
                        f"the offline migration of [{st.database}] stopped at LSN {view.position}: {reason}",
                        "put the missing log backups into the store and run again; Ferry resumes there",
                    )
            else:
                ready = True
                a.report(view, pos, State.READY_FOR_CUTOVER, blocked=a.blocked_reason(view))
            a.wait(until.wake)

    @staticmethod
    def _offline_done(job: MigrationJob, st: SqlState, a: Applier, view: Any, pos: Position) -> bool:
        if view.reached:
            return True
        if job.last_backup:
            last = a.find_log(job.last_backup)
            return last is not None and (pos.redo_lsn or 0) >= last.last_lsn
        return not view.queue and (pos.redo_lsn or 0) >= st.plan_end_lsn

    @staticmethod
    def _offline_missing(job: MigrationJob, st: SqlState, view: Any) -> str:
        if job.last_backup:
            return f"waiting for log backup '{job.last_backup}', which the store does not have"
        return f"logs up to LSN {st.plan_end_lsn} were planned; the store has them only to {view.position}"

    # -- cut_over ---------------------------------------------------------------------------------------

    def cut_over(
        self, job: MigrationJob, prepared: Prepared, request: CutoverRequest, ctx: StepContext
    ) -> CutoverDone:
        st, s = SqlState.of(prepared), Settings.of(job)
        work = self._work(job, st)
        with self._open(job) as t:
            pos = t.position(st.database)
            if pos.online:
                recorded = work.result() or self._proof(st, pos, None, None)
                skip = StepReport(
                    "cutover skipped: the database is online; its recorded result stands",
                    skipped=True,
                    data={"seconds": 0.0},
                )
                return CutoverDone(recorded, recorded.get("downtime_seconds"), skip)
            rep = StatusReporter(ctx.report, State.CUTTING_OVER, "cutting over", {"database": st.database})
            a = Applier(job, st, s, t, ctx, rep)
            last = self._apply_rest(job, st, a, request)
            a.forget_position()  # the proof reads the target's restore history now, never a cached one
            view, pos = a.look()
            result = self._proof(st, pos, last, request)
            if not result["lsn_proof"]:
                raise LsnProofFailed(
                    f"[{st.database}] on {t.name} was not recovered: its restore history ends at LSN "
                    f"{result['restored_last_lsn']}, the last backup '{result['last_backup']}' at "
                    f"{result['expected_last_lsn']}",
                    "run the cutover again once the last log backup is in the store",
                )
            a.report(view, pos, State.CUTTING_OVER, phase=f"RESTORE DATABASE [{st.database}] WITH RECOVERY")
            t.recover(st.database)
            online_at = time.time()
            after = t.position(st.database)
            result.update(self._after(t, st, s, after))
            result["recovered_at"] = datetime.fromtimestamp(online_at, UTC).isoformat()
            result["downtime_seconds"] = (
                round(online_at - request.requested_at, 3) if request.requested_at > 0 else None
            )
            work.write_result(result)
            work.clear_cutover()
        return CutoverDone(
            result,
            result["downtime_seconds"],
            StepReport(
                f"cut over [{st.database}] on {t.name}: restored to LSN {result['restored_last_lsn']} "
                f"(= LastLSN of '{result['last_backup']}'), online; downtime {result['downtime_seconds']} s",
                f"RESTORE LOG ... NORECOVERY for what was left; RESTORE DATABASE {quote_ident(st.database)} "
                "WITH RECOVERY",
                data={
                    "downtime_seconds": result["downtime_seconds"],
                    "final_lsn": result["restored_last_lsn"],
                },
            ),
        )

    def _apply_rest(self, job: MigrationJob, st: SqlState, a: Applier, request: CutoverRequest) -> Any:
        """Wait for the named last backup (if any), then apply every log that follows; returns the last
        log backup the cutover must have reached (None: whatever the store had)."""
        wanted = request.last_backup or (job.last_backup if not job.online else None)
        a.since = time.monotonic()
        while True:
            view, pos = a.look()
            last = a.find_log(wanted) if wanted else None
            if wanted and last is None:
                reason = a.blocked_reason(view, f"waiting for the last log backup '{wanted}'")
                a.report(view, pos, State.CUTTING_OVER, blocked=reason, phase=f"waiting for '{wanted}'")
                a.wait(None)
                continue
            if last is not None and (pos.redo_lsn or 0) >= last.last_lsn:
                return last
            if view.queue:
                a.apply(view.queue[0], view, pos, State.CUTTING_OVER)
                continue
            if last is not None and not view.reached:
                reason = a.blocked_reason(view, f"'{wanted}' does not follow the restored chain")
                if reason is not None:
                    raise LogsMissing(
                        f"cannot reach '{wanted}' from LSN {view.position} on [{st.database}]: {reason}",
                        "put the log backups between them into the store and ask for the cutover again",
                    )
                a.wait(None)
                continue
            return a.by_guid(pos.last_restored.backup_set_guid) if pos.last_restored else None

    @staticmethod
    def _proof(st: SqlState, pos: Position, last: Any, request: CutoverRequest | None) -> dict[str, Any]:
        """The LSN proof: the target's own restore history ends where the last backup ends."""
        restored = pos.last_restored
        expected = last.last_lsn if last is not None else (restored.last_lsn if restored else None)
        got = restored.last_lsn if restored else None
        return {
            "state": State.SUCCEEDED.value,
            "target": st.url,
            "database": st.database,
            "last_backup": last.files[0] if last is not None else None,
            "expected_last_lsn": str(expected) if expected is not None else None,
            "restored_last_lsn": str(got) if got is not None else None,
            "lsn_proof": expected is not None and got == expected,
            "stop_at": st.stop_at,
            "downtime_seconds": None,
            "moves": st.moves,
        }

    @staticmethod
    def _after(t: Target, st: SqlState, s: Settings, pos: Position) -> dict[str, Any]:
        out: dict[str, Any] = {
            "compatibility_level": pos.compatibility_level,
            "owner": pos.owner,
            "orphaned_users": t.orphaned_users(st.database),
            "checkdb": None,
        }
        if s.checkdb:
            errors = t.checkdb(st.database)
            out["checkdb"] = errors or "clean"
        return out

    # -- stop (cancel) ----------------------------------------------------------------------------------

    def stop(self, job: MigrationJob, prepared: Prepared | None) -> StepReport:
        """Cancel: no more logs are applied; the database stays RESTORING for inspection or a later
        `RESTORE DATABASE ... WITH RECOVERY`. Dropping it is a separate, explicit choice
        (the `drop_on_cancel` option)."""
        if prepared is None:
            return StepReport(
                "canceled before the migration was prepared: nothing to stop", data={"seconds": 0.0}
            )
        st = SqlState.of(prepared)
        work = self._work(job, st)
        work.cancel()
        if Settings.of(job).options.get("drop_on_cancel"):
            with self._open(job) as t:
                pos = t.position(st.database)
                # Only a RESTORING database this migration restored (its claim): never someone else's.
                if pos.restoring and prep.ours(work, pos, _plan_of(st)):
                    t.conn.execute(f"DROP DATABASE {quote_ident(st.database)}", "DROP DATABASE")
                    return StepReport(f"canceled; [{st.database}] dropped as asked", "DROP DATABASE")
        return StepReport(
            f"canceled; [{st.database}] is left RESTORING on {st.url} for inspection (DROP DATABASE it, or "
            "RESTORE DATABASE ... WITH RECOVERY to look at it)",
            data={"database": st.database},
        )

    # -- read_check (before a migration starts: can the target read its backups) ----------------------

    def read_check(self, job: MigrationJob, files: SourceFiles) -> list[Finding]:
        """Whether the target reads the first file of the job's full backup (readcheck.py): findings, none
        when it does. Changes nothing on the target."""
        from ferry.engines.sqlserver.readcheck import read_check

        with self._open(job) as target:
            return read_check(job, files, target)

    # -- describe (the target's facts, for the service's list of targets) ------------------------------

    def describe(self, target: TargetSpec) -> dict[str, Any]:
        """Version, edition, default folders and free space of the instance: one batch of the facts
        prepare reads (facts.py). Free space is known for volumes that hold database files."""
        url = TargetUrl.parse(target.location)
        options = dict(target.options)
        login = int(options.get("login_timeout", 10))
        with Target(Connection.open(url, password_for(url, options), login)) as t:
            facts = t.facts()
        data_dir = facts.default_data_dir
        volume = facts.volume_of(data_dir) if data_dir else None
        return {
            "version": facts.product_version,
            "edition": facts.edition,
            "instance": facts.instance_name,
            "server_name": facts.server_name,
            "data_path": data_dir,
            "log_path": facts.default_log_dir,
            "volumes": [
                {
                    "mount_point": v.mount_point,
                    "total_bytes": v.total_bytes,
                    "available_bytes": v.available_bytes,
                }
                for v in facts.volumes
            ],
            "free_bytes": volume.available_bytes if volume is not None else None,
            "databases": len(facts.databases),
        }

    # -- status -----------------------------------------------------------------------------------------

    def status(self, job: MigrationJob, prepared: Prepared) -> MigrationStatus:
        st = SqlState.of(prepared)
        with self._open(job) as t:
            pos = t.position(st.database)
        details = {"database": st.database, "last_restored_lsn": None}
        if pos.last_restored is not None:
            details["last_restored_lsn"] = str(pos.last_restored.last_lsn)
        if pos.online:
            return MigrationStatus(State.SUCCEEDED, "done", details={**details, "full_backup_restored": True})
        full_done, diff_done = prep.base_done(st, pos)
        if not (full_done and diff_done):
            return MigrationStatus(State.RESTORING_FULL, "restoring the full backup",
                                   details={**details, "full_backup_restored": False})  # fmt: skip
        return MigrationStatus(
            State.RESTORING_LOGS,
            "restoring log backups",
            target_position=str(pos.redo_lsn) if pos.redo_lsn is not None else None,
            details={**details, "full_backup_restored": True},
        )


def _plan_of(st: SqlState) -> Any:
    from ferry.core.plan import DatabasePlan

    return DatabasePlan(ENGINE, st.source_database, st.source_server, (), (), st.family_guid)
