"""Applying log backups to a database left RESTORING: what `follow_logs` and `cut_over` share.

Each turn reads the store again (`ctx.rescan()`: the caller scans, engines never do) and the target's
own position (`redo_start_lsn`, msdb's restore history), plans the continuation from that position
(follow.py), and applies the next log with `RESTORE LOG ... WITH NORECOVERY` (or STANDBY). A log is
never sent twice: what the target has is read from the target, and a log it still calls "too early"
(4326, it already holds it) counts as applied. A turn also makes the status the caller shows: per-file
states, pending count, current and last file, the lag in bytes of log and in time, the blocking reason.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any
from uuid import UUID

from ferry.core.errors import FerryError
from ferry.core.migration import MigrationStatus, State, StatusReporter
from ferry.engines.base import MigrationJob, StepContext
from ferry.engines.sqlserver import access as acc
from ferry.engines.sqlserver import follow
from ferry.engines.sqlserver.chain import ChainStep
from ferry.engines.sqlserver.connection import SqlError
from ferry.engines.sqlserver.devices import Mapped, credentials_of
from ferry.engines.sqlserver.facts import Position
from ferry.engines.sqlserver.follow import LogView
from ferry.engines.sqlserver.prepare import restore_options, stop_point
from ferry.engines.sqlserver.recovery import Goal, resolve_stop_point
from ferry.engines.sqlserver.settings import Settings, SqlState
from ferry.engines.sqlserver.stripes import LogicalBackup
from ferry.engines.sqlserver.target import CredentialRefused, Target, Throttle
from ferry.engines.sqlserver.tsql import restore_statement as render

TOO_EARLY, TOO_RECENT = 4326, 4305
SETTLE_SECONDS = 1.0  # a file modified this recently may still be being written: held for a turn
RECHECK_SECONDS = 10.0  # a caught-up migration asks the target where it stands at least this often


class LogsMissing(FerryError):
    """An offline migration (or a cutover) waited in vain for log backups the store does not have."""

    retryable = False


class Applier:
    def __init__(
        self,
        job: MigrationJob,
        state: SqlState,
        settings: Settings,
        target: Target,
        ctx: StepContext,
        reporter: StatusReporter,
    ) -> None:
        self.job, self.st, self.s, self.t, self.ctx, self.rep = job, state, settings, target, ctx, reporter
        self.who = follow.Identity(state.source_server, state.source_database, state.family_guid)
        self.source = acc.open_source(job.source, settings, state.full.size)
        self.store = self.source.store
        self.view = acc.view_of_state(state.target_major, state.target_platform)
        self.credentials: acc.Credentials | None = None
        self.too_early: set[str] = set()
        self.mine: list[LogicalBackup] = []
        self.goal: Goal | None = None
        self.since = time.monotonic()  # the last time the target moved on
        self.caught_up_once = False
        self.throttle = Throttle(0.5)
        self.poll = float(settings.options.get("poll_seconds", max(job.replay.poll_interval, 1.0)))
        self._asked: tuple[object, Position, float] | None = None  # what the target said, about what, when

    # -- one look -----------------------------------------------------------------------------------------
    def look(self, restoring: str | None = None) -> tuple[LogView, Position]:
        files = self.ctx.rescan()
        mine, others = follow.split(files.sets, self.who)
        self.mine = mine
        held = follow.held_files(files.findings)
        held.update(self._settling(mine))
        pos = self._position((tuple(k for b in mine for k in b.files), tuple(sorted(held)), restoring))
        self.goal = resolve_stop_point(stop_point(self.st.stop_at), mine)
        applied = pos.applied | self.too_early
        view = follow.view(
            mine,
            others,
            held,
            pos.redo_lsn or 0,
            self._forks(pos),
            frozenset(applied),
            self.goal,
            restoring,
            [b for b in mine if str(b.backup_set_guid).upper() in {x.backup_set_guid for x in self.st.base}],
            self._stop_reached(pos),
        )
        return view, pos

    def _position(self, backups: object) -> Position:
        """The target's position (its redo point and restore history), asked again when this database's
        backups in the store changed, after a restore, and at least every RECHECK_SECONDS (someone may
        restore by hand): a caught-up migration looks at the store every poll, but hundreds of them
        asking one instance every second for an answer that has not changed would load it for nothing."""
        now = time.monotonic()
        if self._asked is not None and self._asked[0] == backups and now - self._asked[2] < RECHECK_SECONDS:
            return self._asked[1]
        pos = self.t.position(self.st.database)
        self._asked = (backups, pos, now)
        return pos

    def forget_position(self) -> None:
        self._asked = None

    @staticmethod
    def _forks(pos: Position) -> frozenset[UUID]:
        return frozenset({UUID(pos.redo_fork)}) if pos.redo_fork else frozenset()

    def by_guid(self, guid: str | None) -> LogicalBackup | None:
        return next((b for b in self.mine if str(b.backup_set_guid).upper() == guid), None)

    def _stop_reached(self, pos: Position) -> bool:
        """The last log restored carried the stop point: nothing more may follow it."""
        last = pos.last_restored
        if self.goal is None or last is None or last.restore_type != "L":
            return False
        log = self.by_guid(last.backup_set_guid)
        return log is not None and self.goal.stop_in(log) is not None

    def _settling(self, mine: list[LogicalBackup]) -> dict[str, str]:
        """Files modified in the last second: a copy may still be going on."""
        out = {}
        now = time.time()
        for b in mine[-50:]:
            for key in b.files:
                try:
                    modified = self.store.stat(key).modified
                except FerryError:
                    continue
                if modified is not None and now - modified < SETTLE_SECONDS:
                    out[key] = f"'{key}' changed in the last second: it may still be being written"
        return out

    # -- applying -----------------------------------------------------------------------------------------
    def apply(self, step: ChainStep, view: LogView, pos: Position, state: State) -> None:
        self.forget_position()  # the target moves on: ask it again next time
        b = step.backup
        guid = str(b.backup_set_guid).upper()
        mapped = acc.step_devices(self.source, list(b.files), self.view, self.s.path_map)
        self.renew(mapped)
        devices = acc.devices(mapped)
        credential = acc.credential_name(mapped)
        options = restore_options(self.st.database, self.s, self.st.moves, self.st.target_major, credential)
        if self.s.media_password:
            options = replace(options, media_password=self.s.media_password)
        statement = render(step, devices, options)
        started = time.monotonic()

        def progress(pct: int) -> None:
            if self.throttle.ready() or pct >= 100:
                elapsed = time.monotonic() - started
                self.rep.emit(
                    bytes_done=b.size * pct // 100,
                    bytes_total=b.size,
                    throughput=(b.size * pct / 100 / elapsed) if elapsed > 0 else None,
                )

        restoring = replace(view, details=_mark(view.details, guid))
        self.report(restoring, pos, state, current=b.files[0])
        try:
            self.t.restore(statement, f"RESTORE LOG [{self.st.database}] from '{b.files[0]}'", progress)
        except SqlError as exc:
            if TOO_EARLY in exc.numbers:
                self.too_early.add(guid)  # the target holds it already: applied, never sent again
                self.ctx.note(f"'{b.files[0]}' was already applied to [{self.st.database}] (4326): skipped")
                return
            if TOO_RECENT in exc.numbers:
                return  # the position moved under us (another client): read it again next turn
            raise
        self.since = time.monotonic()

    def renew(self, mapped: list[Mapped]) -> None:
        """A SAS Ferry minted is put on the target again when this step starts (a resumed migration's
        credential may hold an older one) and whenever less than a quarter of its life is left."""
        if not self.source.access.sas_minted:
            return
        if self.credentials is None or self.credentials.renew_due():
            first = self.credentials is None
            self.credentials = acc.Credentials(self.source, credentials_of(mapped))
            names = [c.name for c in self.credentials.needed]
            try:
                if first:
                    self.credentials.ensure(self.t, names, alter=True)
                else:
                    self.credentials.renew(self.t, names)
                    self.ctx.note("renewed the SAS credential on the target (ALTER CREDENTIAL)")
            except CredentialRefused as exc:
                # The credential the preflight found may still hold a valid SAS: the restore says when
                # it does not, with the hint to renew it by hand.
                self.ctx.note(f"the SAS credential on the target was not renewed: {exc.message}")

    # -- what the caller shows ----------------------------------------------------------------------------
    def report(
        self,
        view: LogView,
        pos: Position,
        state: State,
        current: str | None = None,
        blocked: str | None = None,
        phase: str | None = None,
    ) -> MigrationStatus:
        last = pos.last_restored
        found = self.by_guid(last.backup_set_guid) if last is not None else None
        last_file = found.files[0] if found else None
        arrived = sum(1 for r in view.details["backup_sets"] if r["status"] == follow.ARRIVED)
        details = {
            **view.details,
            "database": self.st.database,
            "full_backup_restored": True,
            "last_restored_lsn": str(last.last_lsn) if last else None,
        }
        return self.rep.emit(
            state,
            phase=phase or ("restoring " + current if current else _phase(state, view)),
            source_position=str(view.source_lsn) if view.source_lsn is not None else None,
            target_position=str(view.position) if view.position else None,
            lag_bytes=view.pending_bytes,
            lag_seconds=view.lag_seconds,
            pending_files=len(view.queue) + arrived,
            pending_bytes=view.pending_bytes,
            current_file=current,
            last_file=last_file,
            **({} if current else {"bytes_done": 0, "bytes_total": None, "throughput": None}),
            blocked_reason=blocked,
            details=details,
        )

    def blocked_reason(self, view: LogView, waiting_for: str | None = None) -> str | None:
        """What is missing, once the target has not moved on for `job.replay.blocked_after` seconds."""
        if time.monotonic() - self.since < self.job.replay.blocked_after:
            return None
        if view.incomplete is not None:
            b = view.incomplete
            return (
                f"log backup '{b.files[0]}' misses stripe file(s) {', '.join(map(str, b.missing_stripes))}: "
                "add them to the store"
            )
        if view.after_gap is not None:
            b = view.after_gap
            return (
                f"log backups from LSN {view.position} are missing: the next one in the store, "
                f"'{b.files[0]}', starts at LSN {b.first_lsn}"
            )
        held = [r for r in view.details["backup_sets"] if r["status"] == follow.HELD]
        if held:
            return f"'{held[0]['files'][0]['name']}' is still being written"
        return waiting_for

    def wait(self, wake: threading.Event | None) -> None:
        self.ctx.check()
        if wake is not None:
            wake.wait(self.poll)
        else:
            time.sleep(self.poll)

    def find_log(self, name: str) -> LogicalBackup | None:
        """The log backup a user names: by store key, or by file name."""
        wanted = name.replace("\\", "/").strip("/")
        for b in reversed(self.mine):
            for key in b.files:
                if key == wanted or key.endswith("/" + wanted) or key.rsplit("/", 1)[-1] == wanted:
                    return b
        return None


def _mark(details: dict[str, Any], guid: str) -> dict[str, Any]:
    rows = []
    for row in details.get("backup_sets", []):
        if row.get("backup_set_id") == guid:
            row = {**row, "status": follow.RESTORING,
                   "files": [{**f, "status": follow.RESTORING} for f in row["files"]]}  # fmt: skip
        rows.append(row)
    return {**details, "backup_sets": rows}


def _phase(state: State, view: LogView) -> str:
    if state is State.READY_FOR_CUTOVER:
        return "caught up: ready for cutover"
    if view.queue:
        return f"{len(view.queue)} log backup(s) to restore"
    return "waiting for the next log backup"
