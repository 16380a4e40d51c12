"""The migration workflow's activities: the execution seam's steps (engines/base.py: Migrator), run by
Temporal workers. The mechanics are here (heartbeats, events, status writes, signals, cancellation); what
each step does is the engine's, looked up by the engine name of the target (engines/registry.py).

Two classes, by where they run:

- `ControlActivities` (task queue `ferry-control`, served by `ferry serve`): record state changes and
  events in the state store for the workflow.
- `TargetActivities` (the target's queues, served by its agent, `ferry agent` or in `ferry serve`):
  validate (prepare), restore_base (restore_full), replay (follow_logs), cutover (cut_over) and
  stop_target (stop). They hold the state store too: each step appends a "step" event with what it did
  and its timings, and replay writes the live status.

Every step is idempotent, judged by the target itself (see each engine's driver), so a retry after a crash
(of the agent, of `ferry serve`, of the host) is always safe.

Sync activities run in threads; each body runs shielded from the SDK's asynchronous CancelledError and
checks for cancellation where stopping is safe (StepContext.check: between replay polls, between unpacked
chunks).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.exceptions import CancelledError

from ferry.core.errors import FerryError
from ferry.core.migration import InvalidTransition, MigrationStatus, State
from ferry.engines.base import (
    CutoverRequest,
    MigrationJob,
    Migrator,
    Prepared,
    ReplaySettings,
    SourceFiles,
    StepReport,
    TargetSpec,
)
from ferry.engines.registry import migrator
from ferry.pipeline.migrate import read_source
from ferry.pipeline.sources import SourceCache, shares_stores
from ferry.service import workflow_io as io
from ferry.service.contracts import StateStore
from ferry.service.failures import as_application_error, os_failure
from ferry.service.replays import LocalReplays

log = logging.getLogger(__name__)

STATUS_EVERY = 1.5  # seconds between status writes to the store while the status changes
STATUS_IDLE_EVERY = 60.0  # an unchanged status is written again this often (its updated_at shows life)
SIGNAL_EVERY = 30.0  # seconds between state flips told to the workflow (the store has every one at once)
# Seconds between heartbeats handed to the SDK, which sends at most one per 80% of the heartbeat timeout:
# hundreds of idle online migrations must not flood Temporal (the cutover does not wait for a heartbeat).
HEARTBEAT_EVERY = 2.0
SCANS_AT_ONCE = 2  # validate steps reading a store at once, per worker
REPLAY_POLL = 1.0  # seconds between looks at a replaying target (PostgreSQL replays on its own)
# How old a look at a source's store may be: validate and each turn of following logs ask for one this
# fresh, and every migration of a store shares it (pipeline/sources.py), so a new log backup reaches all
# of them within one poll.
SOURCE_FRESH = 1.0
SETTLE_WAIT = 10.0  # seconds validate waits for files of a shared store view to stop changing


def _held_back(files: SourceFiles) -> bool:
    return any(f.code == "file-changing" for f in files.findings)


class UnknownTarget(FerryError):
    retryable = False

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(
            f"this worker does not serve target '{name}'",
            f"it serves {', '.join(known) or 'no target'}; start `ferry agent --target {name}` on its host",
        )


@dataclass(frozen=True)
class TargetConfig:
    """A target this worker serves, at most `concurrency` restores at once. PostgreSQL: migrations go to
    ROOT/<migration id>, servers run as `os_user` when Ferry runs as root. SQL Server: `location` is the
    instance (`mssql://USER@HOST[:PORT][/INSTANCE]`) and ROOT the local work folder of its migrations;
    `options` are the engine's target settings (`backup_path_as`: how the instance sees the stores)."""

    name: str
    root: Path
    concurrency: int = 4
    os_user: str | None = None
    host: str | None = None
    replay: ReplaySettings = field(default_factory=ReplaySettings)
    engine: str = "postgres"
    location: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def folder(self, migration_id: str) -> Path:
        return self.root / migration_id

    @property
    def where(self) -> str:
        """Where it restores, in words: the instance's URL, or the folder."""
        return self.location or str(self.root)

    def spec(self) -> TargetSpec:
        options: dict[str, Any] = {"concurrency": self.concurrency, **self.options}
        if self.location is not None:
            options.setdefault("work_dir", str(self.root))
        return TargetSpec(self.name, self.engine, self.where, self.os_user, options)


def _now() -> str:
    return datetime.now(UTC).isoformat()


class _Progress:
    """A StatusReporter sink: heartbeats, status writes to the store (throttled) and, while replaying, the
    RestoringLogs / ReadyForCutover flips (the replay decides them: it stays ready while it keeps up)."""

    def __init__(
        self,
        store: StateStore,
        migration_id: str,
        state: State,
        *,
        flips: bool = False,
        notify: Callable[[str, io.ProgressSignal], None] | None = None,
    ) -> None:
        self.store = store
        self.migration_id = migration_id
        self.recorded = state
        self.flips = flips
        self.notify = notify
        self.last_write = self.last_beat = 0.0
        self.last_signal = -1e9
        self.unsent: io.ProgressSignal | None = None
        self.last: MigrationStatus | None = None
        self.written: dict[str, Any] | None = None

    def __call__(self, status: MigrationStatus) -> None:
        self.last = status
        now = time.monotonic()
        if now - self.last_beat >= HEARTBEAT_EVERY:  # each heartbeat is a round trip to the worker's loop
            activity.heartbeat(status.target_position or status.bytes_done)
            self.last_beat = now
        flip: State | None = None
        replaying = (State.RESTORING_LOGS, State.READY_FOR_CUTOVER)
        if (
            self.flips
            and status.state is not self.recorded
            and {status.state, self.recorded} <= set(replaying)
        ):
            flip = status.state
        data = status.to_json()
        data["state"] = (flip or self.recorded).value
        try:
            if flip is not None:
                try:
                    self.store.set_state(self.migration_id, flip, status=data)
                except InvalidTransition:
                    return  # the workflow moved the migration on (cutover, cancel): its word stands
                self.recorded, self.last_write = flip, now
                self.written = data
                # The workflow keeps what it is told in its history: the status without the file lists.
                self.unsent = io.ProgressSignal(flip.value, {k: v for k, v in data.items() if k != "details"})
            elif self._due(data, now):
                self.store.set_status(self.migration_id, data)
                self.last_write, self.written = now, data
        except Exception as exc:  # a status write must not end a restore: the next one tries again
            log.warning("cannot record the status of %s: %s", self.migration_id, exc)
        if self.unsent is not None and self.notify is not None and now - self.last_signal >= SIGNAL_EVERY:
            # Each signal adds to the workflow's history, which must stay bounded over weeks of replay.
            self.notify(self.migration_id, self.unsent)
            self.unsent, self.last_signal = None, now

    def _due(self, data: dict[str, Any], now: float) -> bool:
        """Write a changed status at most every STATUS_EVERY s, an unchanged one every STATUS_IDLE_EVERY s."""
        wait = STATUS_EVERY if data != self.written else STATUS_IDLE_EVERY
        return now - self.last_write >= wait

    def flush(self) -> None:
        if self.last is not None:
            data = self.last.to_json()
            data["state"] = self.recorded.value
            with contextlib.suppress(Exception):
                self.store.set_status(self.migration_id, data)


@contextlib.contextmanager
def _keepalive(every: float = 2.0) -> Iterator[None]:
    """Heartbeat from a helper thread while the block runs: blocking calls without progress callbacks
    (scanning a store, starting a server, promoting) keep their activity alive, and a dead worker still
    stops heartbeating at once."""
    done = threading.Event()
    context = contextvars.copy_context()

    def beat() -> None:
        while not done.wait(every):
            with contextlib.suppress(Exception):
                context.run(activity.heartbeat, "alive")

    thread = threading.Thread(target=beat, name="ferry-keepalive", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _check_cancel() -> None:
    if activity.is_cancelled():
        raise CancelledError("canceled")


class ControlActivities:
    """State changes and events, recorded in the state store (task queue `ferry-control`)."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    @activity.defn(name=io.A_RECORD_STATE)
    def record_state(self, change: io.StateChange) -> str:
        state = State(change.state)
        try:
            record = self.store.set_state(change.migration_id, state, change.status, change.error)
        except FerryError as exc:
            raise as_application_error(exc) from None
        return record.state.value

    @activity.defn(name=io.A_RECORD_EVENT)
    def record_event(self, event: io.EventInput) -> int:
        try:
            return self.store.append_event(event.migration_id, event.kind, event.message, event.data).seq
        except FerryError as exc:  # no such migration (a forged workflow): retrying changes nothing
            raise as_application_error(exc) from None


class _Context:
    """The StepContext an activity gives its engine: reports go to the store and Temporal through a
    _Progress sink, `check` stops the step when Temporal cancelled it, notes become "info" events."""

    def __init__(
        self, sink: _Progress, note: Callable[[str], None], rescan: Callable[[], SourceFiles]
    ) -> None:
        self.sink = sink
        self._note = note
        self._rescan = rescan

    def rescan(self) -> SourceFiles:
        return self._rescan()

    def report(self, status: MigrationStatus) -> None:
        self.sink(status)

    def check(self) -> None:
        _check_cancel()

    def note(self, message: str) -> None:
        self._note(message)


class _Until:
    """follow_logs ends when this worker's LocalReplays asks it to stop: the cutover or a cancel has come
    for its migration (the workflow starts the cutover step, which stops the replay in-process)."""

    def __init__(self, stop: threading.Event, replays: LocalReplays, migration_id: str) -> None:
        self.stop = stop
        self.replays = replays
        self.migration_id = migration_id

    @property
    def wake(self) -> threading.Event:
        return self.stop

    def request(self) -> CutoverRequest | None:
        return CutoverRequest(time.time()) if self.stop.is_set() else None

    def taking_over(self) -> bool:
        return self.stop.is_set() and self.replays.offer(self.migration_id, True)


def prepared_out(p: Prepared) -> io.Prepared:
    """The seam's Prepared as the workflow keeps it in its history."""
    return io.Prepared(phase=p.phase, engine=p.engine, target=p.target, size=p.size, state=dict(p.state))


def prepared_in(p: io.Prepared) -> Prepared:
    """The seam's Prepared from the workflow's copy. A workflow started before the seam existed carries a
    PostgreSQL migration's fields at the top level: they are that engine's state."""
    if p.engine:
        return Prepared(p.engine, p.target, p.phase, p.size, dict(p.state))
    legacy = {k: v for k, v in asdict(p).items() if k in io.LEGACY_STATE}
    return Prepared("postgres", p.target_root, p.phase, p.base_size, legacy)


class TargetActivities:
    """The steps on a target host. `targets`: the targets this worker serves, by name. `notify` tells a
    workflow of a state flip (a Temporal signal; None: the store alone knows)."""

    Notify = Callable[[str, io.ProgressSignal], None]

    def __init__(
        self,
        store: StateStore,
        targets: Mapping[str, TargetConfig],
        notify: Notify | None = None,
    ) -> None:
        self.store = store
        self.targets = dict(targets)
        self.notify = notify
        self.replays = LocalReplays()
        self.sources = SourceCache()
        # Reading a source's backups is CPU work in Python: two at a time use the cores as well as twenty,
        # and twenty threads contending for the interpreter slow everything else in the process (the
        # workflows of `ferry serve`, the other steps' heartbeats) more than it speeds up the scans.
        self._scans = threading.BoundedSemaphore(SCANS_AT_ONCE)

    # -- helpers ----------------------------------------------------------------------------------

    def _config(self, name: str) -> TargetConfig:
        try:
            return self.targets[name]
        except KeyError:
            raise UnknownTarget(name, sorted(self.targets)) from None

    def _source(self, m: io.MigrationInput) -> str:
        """The source as given, credentials included, from the state store: the workflow's input carries
        it without them (orchestrator.workflow_input). Older workflows carry it whole."""
        record = self.store.get(m.id)
        return record.source if record is not None else m.source

    def _job(self, m: io.MigrationInput, **options: Any) -> MigrationJob:
        cfg = self._config(m.target)
        return MigrationJob(
            id=m.id,
            source=self._source(m),
            target=cfg.spec(),
            online=m.mode == "online",
            database=m.database,
            last_backup=m.last_backup,
            # PostgreSQL replays on its own: the service looks at a replaying target once a second.
            replay=replace(cfg.replay, poll_interval=REPLAY_POLL),
            options=options,
        )

    def _migrator(self, m: io.MigrationInput) -> Migrator:
        return migrator(self._config(m.target).engine)

    def _files(self, job: MigrationJob, settled: bool = False) -> SourceFiles:
        """The source's backups (of the job's database) as they are now.

        A store of one database (PostgreSQL's cluster) is read whole each time, as `ferry migrate` reads
        it: its findings about every file (a FIFO where a segment should be) included. A store of many
        (SQL Server) is read through this worker's shared, incremental view, polled at most once per
        SOURCE_FRESH seconds, so that its hundreds of migrations do not each scan it. That view holds a
        file back until it stops changing: `settled` (validate, which would call a chain blocked for want
        of it) waits up to SETTLE_WAIT seconds for the files held back to be read."""
        if not shares_stores(job.target.engine):
            with self._scans:
                return read_source(job.source, job.target.engine)
        files = self.sources.files(job.source, job.target.engine, job.database, fresh=SOURCE_FRESH)
        deadline = time.monotonic() + SETTLE_WAIT
        while settled and _held_back(files) and time.monotonic() < deadline:
            time.sleep(SOURCE_FRESH)
            files = self.sources.files(job.source, job.target.engine, job.database, fresh=SOURCE_FRESH)
        return files

    def _context(self, m: io.MigrationInput, job: MigrationJob, sink: _Progress, step: str) -> _Context:
        def note(message: str) -> None:
            self._event(m.id, "info", message, step=step, attempt=activity.info().attempt)

        return _Context(sink, note, lambda: self._files(job))

    def _event(self, migration_id: str, kind: str, message: str, **data: Any) -> None:
        try:
            self.store.append_event(migration_id, kind, message, data)
        except Exception as exc:
            log.warning("cannot record an event of %s: %s", migration_id, exc)

    def _step_event(self, migration_id: str, step: str, report: StepReport, started: str, t0: float,
                    **data: Any) -> None:  # fmt: skip
        """The "step" event of a finished step: what ran (its command), when, how long, which attempt."""
        figures: dict[str, Any] = {
            "step": step,
            "command": report.command,
            "started_at": started,
            "finished_at": _now(),
            "seconds": round(time.monotonic() - t0, 3),
            "attempt": activity.info().attempt,
            "skipped": report.skipped,
        }
        self._event(migration_id, "step", report.message, **{**figures, **report.data, **data})

    @contextlib.contextmanager
    def _activity(self, migration_id: str, step: str) -> Iterator[None]:
        """Shield the body from asynchronous cancellation; turn Ferry's errors into ApplicationErrors and
        record them as events."""
        with activity.shield_thread_cancel_exception(), _keepalive():
            try:
                yield
            except CancelledError:
                raise
            except FerryError as exc:
                self._failed(migration_id, step, exc)
                raise as_application_error(exc) from None
            except OSError as exc:
                failure = os_failure(exc, migration_id)
                if failure is None:
                    self._unexpected(migration_id, step, exc)
                    raise
                self._failed(migration_id, step, failure)
                raise as_application_error(failure) from None
            except Exception as exc:
                self._unexpected(migration_id, step, exc)
                raise

    def _failed(self, migration_id: str, step: str, exc: FerryError) -> None:
        """An expected error: one line in the log, an event with its hint."""
        hint = f" (hint: {exc.hint})" if exc.hint else ""
        attempt = activity.info().attempt
        retry = "retried" if exc.retryable else "not retried"
        log.warning(
            "%s of %s failed (attempt %d, %s): %s%s", step, migration_id, attempt, retry, exc.message, hint
        )
        self._event(
            migration_id,
            "error",
            f"{step} failed: {exc.message}{hint}",
            step=step,
            attempt=attempt,
            error=type(exc).__name__,
        )

    def _unexpected(self, migration_id: str, step: str, exc: BaseException) -> None:
        # A bug, or something Ferry does not know yet: the SDK logs it with its traceback.
        self._event(
            migration_id,
            "error",
            f"{step} failed: {type(exc).__name__}: {exc}",
            step=step,
            attempt=activity.info().attempt,
        )

    def _enter(self, inp: io.StepInput) -> None:
        """Record the state the workflow left to this step (StepInput.enter). Staying put is allowed (a
        retry); a migration that moved on (canceled) refuses it with InvalidTransition, a permanent error."""
        if inp.enter is not None:
            state = State(inp.enter)
            status = {"state": state.value, "phase": io.ENTRY_PHASES.get(state.value, state.value)}
            self.store.set_state(inp.migration.id, state, status)

    @staticmethod
    def _prepared(inp: io.StepInput) -> Prepared:
        assert inp.prepared is not None
        return prepared_in(inp.prepared)

    # -- validate (prepare) -----------------------------------------------------------------------

    @activity.defn(name=io.A_VALIDATE)
    def validate(self, inp: io.StepInput) -> io.Prepared:
        m = inp.migration
        with self._activity(m.id, "validate"):
            self._enter(inp)
            started, t0 = _now(), time.monotonic()
            steps = self._migrator(m)
            job = self._job(m)
            files = self._files(job, settled=True)
            sink = _Progress(self.store, m.id, State.VALIDATING)
            prepared, report = steps.prepare(job, files, self._context(m, job, sink, "validate"))
            self._step_event(m.id, "validate", report, started, t0)
            return prepared_out(prepared)

    # -- restore_base (restore_full) --------------------------------------------------------------

    @activity.defn(name=io.A_RESTORE_BASE)
    def restore_base(self, inp: io.StepInput) -> io.RestoreDone:
        m = inp.migration
        with self._activity(m.id, "restore_base"):
            started, t0 = _now(), time.monotonic()
            sink = _Progress(self.store, m.id, State.RESTORING_FULL)
            job = self._job(m)
            report = self._migrator(m).restore_full(
                job, self._prepared(inp), self._context(m, job, sink, "restore_base")
            )
            if report.skipped:
                self._step_event(m.id, "restore_base", report, started, t0)
                return io.RestoreDone(skipped=True)
            sink.flush()
            self._step_event(m.id, "restore_base", report, started, t0)
            return io.RestoreDone(
                skipped=False,
                archive_bytes=int(report.data.get("bytes", 0)),
                data_bytes=int(report.data.get("data_bytes", 0)),
                files=int(report.data.get("files", 0)),
                seconds=round(time.monotonic() - t0, 3),
            )

    # -- replay (follow_logs) ---------------------------------------------------------------------

    @activity.defn(name=io.A_REPLAY)
    def replay(self, inp: io.StepInput) -> io.ReplayDone:
        m = inp.migration
        with self._activity(m.id, "replay"), self.replays.run(m.id) as stop:
            attempt = activity.info().attempt
            if stop is None:  # the cutover of this migration runs: it replays what is left itself
                self._event(
                    m.id,
                    "info",
                    "replay not started: the cutover or a cancel has taken the target over",
                    step="replay",
                    attempt=attempt,
                )
                return io.ReplayDone(None, None, time.time())
            if attempt > 1:
                self._event(
                    m.id,
                    "info",
                    f"replay resumed (attempt {attempt}) from the target's own position",
                    step="replay",
                    attempt=attempt,
                )
            sink = _Progress(
                self.store, m.id, State.RESTORING_LOGS, flips=m.mode == "online", notify=self.notify
            )
            started, t0 = _now(), time.monotonic()
            job = self._job(m)
            try:
                done = self._migrator(m).follow_logs(
                    job,
                    self._prepared(inp),
                    _Until(stop, self.replays, m.id),
                    self._context(m, job, sink, "replay"),
                )
            except CancelledError:
                sink.flush()
                how = (
                    "paused: the worker shuts down (Temporal hands the replay to the next one)"
                    if activity.is_worker_shutdown()
                    else "stopped for the cutover or a cancel"
                )
                self._step_event(m.id, "replay", StepReport(f"replay {how}"), started, t0)
                raise
            sink.flush()
            if done.report.skipped:
                self._event(m.id, "info", done.report.message, step="replay", attempt=attempt)
            else:
                self._step_event(m.id, "replay", done.report, started, t0)
            return io.ReplayDone(done.started_at, None, done.request.requested_at, done.request.final_lsn)

    # -- cutover (cut_over) -----------------------------------------------------------------------

    @activity.defn(name=io.A_CUTOVER)
    def cutover(self, inp: io.CutoverInput) -> dict[str, Any]:
        m = inp.step.migration
        with self._activity(m.id, "cutover"):
            started, t0 = _now(), time.monotonic()
            with self.replays.taking_over(m.id):
                stop_seconds = time.monotonic() - t0
                self._enter(inp.step)  # after the replay stopped: its last status write comes before
                sink = _Progress(self.store, m.id, State.CUTTING_OVER)
                job = self._job(m)
                done = self._migrator(m).cut_over(
                    job,
                    self._prepared(inp.step),
                    CutoverRequest(inp.requested_at, inp.final_lsn, last_backup=inp.last_backup),
                    self._context(m, job, sink, "cutover"),
                )
                sink.flush()
            self._step_event(
                m.id, "cutover", done.report, started, t0, replay_stop_seconds=round(stop_seconds, 3)
            )
            return dict(done.result)

    # -- stop (cancel) ---------------------------------------------------------------------------

    @activity.defn(name=io.A_STOP_TARGET)
    def stop_target(self, inp: io.StepInput) -> str:
        """Cancel: the engine stops applying logs and leaves the target as it is, for inspection; or
        removes what it restored when the cancel asked to drop it (SQL Server: DROP DATABASE)."""
        m = inp.migration
        with self._activity(m.id, "stop_target"):
            started, t0 = _now(), time.monotonic()
            with self.replays.taking_over(m.id):  # a cancel does not wait for a heartbeat
                prepared = prepared_in(inp.prepared) if inp.prepared is not None else None
                job = self._job(m, drop_on_cancel=True) if inp.drop else self._job(m)
                report = self._migrator(m).stop(job, prepared)
            self._step_event(m.id, "stop_target", report, started, t0)
            return report.command or "none"
