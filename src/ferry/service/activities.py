"""The migration workflow's activities: the steps of engines/postgres/migration.py, run by Temporal workers.

Two classes, by where they run:

- `ControlActivities` (task queue `ferry-control`, served by `ferry serve`): record state changes and
  events in the state store for the workflow.
- `TargetActivities` (the target's queues, served by its agent, `ferry agent` or in `ferry serve`):
  validate, restore_base, replay, cutover, stop_target. They hold the state store too: each step appends
  a "step" event with what it did and its timings, and replay writes the live status.

Every target activity is idempotent, judged by the target itself, so a retry after a crash (of the agent,
of `ferry serve`, of the host) is always safe:

- validate reopens the migration's folder when it exists (same system identifier), else creates it;
- restore_base is skipped when the folder already holds the restored data directory (target phase
  RESTORED, RECOVERY or PROMOTED); an interrupted unpack (data.partial) starts over;
- replay configures recovery only once (phase RESTORED), starts the server only when it is not running,
  and PostgreSQL resumes from its own restartpoint; the prefetcher follows the server's replay position;
- cutover on a target that is already promoted returns the result recorded in its folder then.

Sync activities run in threads; each body runs shielded from the SDK's asynchronous CancelledError and
checks for cancellation where stopping is safe (between replay polls, between unpacked chunks).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError, CancelledError

from ferry.core.errors import FerryError, UsageError
from ferry.core.migration import InvalidTransition, MigrationStatus, State
from ferry.engines.postgres import migration as pgm
from ferry.engines.postgres.cluster import free_port, port_in_use
from ferry.engines.postgres.cutover import CutoverRequest
from ferry.engines.postgres.target import (
    TARGET_FILE,
    ArchiveEntryError,
    ExtractProgress,
    ManifestMismatch,
    Phase,
    PostgresTarget,
    TargetError,
    read_record,
)
from ferry.engines.postgres.wal import format_lsn, parse_segment_name
from ferry.service import workflow_io as io
from ferry.service.contracts import StateStore

log = logging.getLogger(__name__)

REPLAY_FILE = "ferry-replay.json"  # where replay was first seen: kept in the target folder for the result
CANCELED_FILE = "ferry-canceled"  # written by stop_target: no replay attempt may start the server again
STATUS_EVERY = 1.5  # seconds between status writes to the store while the status changes
STATUS_IDLE_EVERY = 60.0  # an unchanged status is written again this often (its updated_at shows life)
SIGNAL_EVERY = 30.0  # seconds between state flips told to the workflow (the store has every one at once)
# Seconds between heartbeats handed to the SDK, which sends at most one per 80% of the heartbeat timeout:
# hundreds of idle online migrations must not flood Temporal (the cutover does not wait for a heartbeat).
HEARTBEAT_EVERY = 2.0
SCANS_AT_ONCE = 2  # validate steps reading a store at once, per worker
REPLAY_STOP_WAIT = 120.0  # seconds the cutover waits for this worker's replay of the migration to stop
REPLAY_POLL = 1.0  # seconds between looks at a replaying target (PostgreSQL replays on its own)

PERMANENT: tuple[type[BaseException], ...] = (
    pgm.MigrationBlocked,
    pgm.WalMissing,
    UsageError,
    TargetError,
    ArchiveEntryError,
    ManifestMismatch,
    InvalidTransition,
)


class UnknownTarget(FerryError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(
            f"this worker does not serve target '{name}'",
            f"it serves {', '.join(known) or 'no target'}; start `ferry agent --target {name}` on its host",
        )


@dataclass(frozen=True)
class ReplaySettings:
    """How a target's replays judge waiting and keeping up (see MigrationSpec)."""

    blocked_after: float = pgm.BLOCKED_AFTER_SECONDS
    ready_lag_segments: int = pgm.READY_LAG_SEGMENTS


@dataclass(frozen=True)
class TargetConfig:
    """A target this worker serves: migrations go to ROOT/<migration id>, at most `concurrency` restores
    at once; servers run as `os_user` when Ferry runs as root."""

    name: str
    root: Path
    concurrency: int = 4
    os_user: str | None = None
    host: str | None = None
    replay: ReplaySettings = field(default_factory=ReplaySettings)

    def folder(self, migration_id: str) -> Path:
        return self.root / migration_id


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _as_application_error(exc: BaseException) -> BaseException:
    """Ferry's errors as ApplicationErrors the workflow reads: permanent ones are non-retryable."""
    if isinstance(exc, ApplicationError | CancelledError) or not isinstance(exc, FerryError):
        return exc
    permanent = isinstance(exc, PERMANENT)
    kind = type(exc).__name__
    if permanent and kind not in io.NON_RETRYABLE:
        kind = next((c.__name__ for c in type(exc).__mro__ if c.__name__ in io.NON_RETRYABLE), kind)
    return ApplicationError(exc.message, exc.hint, type=kind, non_retryable=permanent)


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


class ReplayStillRunning(FerryError):
    """The replay did not stop for the step that takes the target over: retried (not in PERMANENT)."""

    def __init__(self, migration_id: str, timeout: float) -> None:
        super().__init__(
            f"the replay of {migration_id} did not stop within {timeout:.0f} s",
            "the step is retried; if it keeps failing, look at the agent's log",
        )


class LocalReplays:
    """The replays this worker runs, by migration id.

    The cutover step stops its migration's replay here, in-process, instead of waiting for Temporal to
    carry a cancel to it through a heartbeat: the cutover does not wait on the heartbeat interval, and
    heartbeats can be rare (hundreds of migrations wait in ReadyForCutover, each with a replay running).
    One agent serves a target, so the replay and the cutover of a migration run in the same worker."""

    @dataclass
    class _Run:
        stop: threading.Event
        done: threading.Event
        handed: pgm.Replay | None = None  # the Replay the cutover takes over, its prefetcher running

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, LocalReplays._Run] = {}
        self._taken: set[str] = set()

    @contextlib.contextmanager
    def run(self, migration_id: str) -> Iterator[threading.Event | None]:
        """Register a replay; yields its stop event, or None when the migration's cutover is running (the
        replay must not start then: the cutover has its own)."""
        run = self._Run(threading.Event(), threading.Event())
        with self._lock:
            blocked = migration_id in self._taken
            if not blocked:
                earlier = self._runs.get(migration_id)
                if earlier is not None:
                    earlier.stop.set()  # a retry replaces an attempt Temporal gave up on
                self._runs[migration_id] = run
        if blocked:
            yield None
            return
        try:
            yield run.stop
        finally:
            with self._lock:
                if self._runs.get(migration_id) is run:
                    del self._runs[migration_id]
            run.done.set()

    def offer(self, migration_id: str, replay: pgm.Replay) -> bool:
        """A replay stopped for the cutover offers its Replay to it; True if the cutover waits for it (the
        caller then leaves the prefetcher running: Replay.hand_over)."""
        with self._lock:
            run = self._runs.get(migration_id)
            if run is None or migration_id not in self._taken or not run.stop.is_set():
                return False
            run.handed = replay
            return True

    @contextlib.contextmanager
    def taking_over(
        self, migration_id: str, timeout: float = REPLAY_STOP_WAIT
    ) -> Iterator[pgm.Replay | None]:
        """For a step that takes the target over (the cutover; stop_target on cancel): stop the
        migration's replay (if this worker runs one) and keep new ones from starting while the block runs.
        Yields the stopped replay's Replay when it handed it over, else None."""
        with self._lock:
            self._taken.add(migration_id)
            run = self._runs.get(migration_id)
        try:
            if run is not None:
                run.stop.set()
                if not run.done.wait(timeout):
                    raise ReplayStillRunning(migration_id, timeout)
            yield run.handed if run is not None else None
        finally:
            with self._lock:
                self._taken.discard(migration_id)


def _details(p: io.Prepared, restored: bool) -> dict[str, Any]:
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
            raise _as_application_error(exc) from None
        return record.state.value

    @activity.defn(name=io.A_RECORD_EVENT)
    def record_event(self, event: io.EventInput) -> int:
        return self.store.append_event(event.migration_id, event.kind, event.message, event.data).seq


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
        # Reading a source's backups is CPU work in Python: two at a time use the cores as well as twenty,
        # and twenty threads contending for the interpreter slow everything else in the process (the
        # workflows of `ferry serve`, the other steps' heartbeats) more than it speeds up the scans.
        self._scans = threading.BoundedSemaphore(SCANS_AT_ONCE)
        self._ports_lock = threading.Lock()
        self._reserved: set[int] = set()

    # -- helpers ----------------------------------------------------------------------------------

    def _config(self, name: str) -> TargetConfig:
        try:
            return self.targets[name]
        except KeyError:
            raise UnknownTarget(name, sorted(self.targets)) from None

    def _spec(self, m: io.MigrationInput, port: int | None = None) -> pgm.MigrationSpec:
        cfg = self._config(m.target)
        return pgm.MigrationSpec(
            m.source,
            cfg.folder(m.id),
            online=m.mode == "online",
            port=port,
            os_user=cfg.os_user,
            poll_interval=REPLAY_POLL,
            blocked_after=cfg.replay.blocked_after,
            ready_lag_segments=cfg.replay.ready_lag_segments,
        )

    def _allocate_port(self, cfg: TargetConfig) -> int:
        """A free port no other migration of this target has: ports are taken when the servers start,
        long after they are chosen, so two migrations set up at once must not pick the same."""
        with self._ports_lock:
            used = set(self._reserved)
            for record_file in cfg.root.glob(f"*/{TARGET_FILE}"):
                with contextlib.suppress(FerryError, OSError):
                    used.add(read_record(record_file.parent).port)
            for _ in range(200):
                port = free_port()
                if port not in used and not port_in_use(port):
                    self._reserved.add(port)
                    return port
        raise TargetError("no free TCP port for a target server", "free some ports on the target host")

    def _event(self, migration_id: str, kind: str, message: str, **data: Any) -> None:
        try:
            self.store.append_event(migration_id, kind, message, data)
        except Exception as exc:
            log.warning("cannot record an event of %s: %s", migration_id, exc)

    def _step_event(
        self, migration_id: str, step: str, message: str, command: str, started: str, t0: float, **data: Any
    ) -> None:
        """The "step" event of a finished step: what ran (`command`), when, how long, which attempt."""
        self._event(
            migration_id,
            "step",
            message,
            step=step,
            command=command,
            started_at=started,
            finished_at=_now(),
            seconds=round(time.monotonic() - t0, 3),
            attempt=activity.info().attempt,
            **data,
        )

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
                hint = f" (hint: {exc.hint})" if exc.hint else ""
                self._event(
                    migration_id,
                    "error",
                    f"{step} failed: {exc.message}{hint}",
                    step=step,
                    attempt=activity.info().attempt,
                    error=type(exc).__name__,
                )
                raise _as_application_error(exc) from None
            except Exception as exc:
                self._event(
                    migration_id,
                    "error",
                    f"{step} failed: {type(exc).__name__}: {exc}",
                    step=step,
                    attempt=activity.info().attempt,
                )
                raise

    def _enter(self, inp: io.StepInput) -> None:
        """Record the state the workflow left to this step (StepInput.enter). Staying put is allowed (a
        retry); a migration that moved on (canceled) refuses it with InvalidTransition, a permanent error."""
        if inp.enter is not None:
            state = State(inp.enter)
            status = {"state": state.value, "phase": io.ENTRY_PHASES.get(state.value, state.value)}
            self.store.set_state(inp.migration.id, state, status)

    def _open(self, inp: io.StepInput) -> tuple[PostgresTarget, io.Prepared]:
        assert inp.prepared is not None
        return PostgresTarget.open(Path(inp.prepared.target_root)), inp.prepared

    @staticmethod
    def _wal(m: io.MigrationInput, p: io.Prepared) -> pgm.WalSource:
        return pgm.WalSource(m.source, p.timeline, p.segment_size, p.archive_end_lsn)

    # -- validate -------------------------------------------------------------------------------

    @activity.defn(name=io.A_VALIDATE)
    def validate(self, inp: io.StepInput) -> io.Prepared:
        m = inp.migration
        with self._activity(m.id, "validate"):
            self._enter(inp)
            started, t0 = _now(), time.monotonic()
            cfg = self._config(m.target)
            spec = self._spec(m)
            with self._scans:
                plan = pgm.validate(spec)
            walk = plan.chain.walk
            assert walk is not None
            until = self._until_lsn(m, plan)
            folder = cfg.folder(m.id)
            if not (folder / TARGET_FILE).exists():
                spec = self._spec(m, port=self._allocate_port(cfg))
            target = pgm.prepare_target(spec, plan)
            base = pgm.BaseBackupRef.of(plan)
            phase = target.phase()
            warnings = [f.message for f in plan.findings if f.severity.value != "error"]
            self._step_event(
                m.id,
                "validate",
                f"validated '{m.source}': base backup {base.tar}, timeline {walk.target_timeline}, "
                f"WAL to {format_lsn(walk.end_lsn)}; target folder {folder} (port "
                f"{target.record.port}, {phase.value})",
                f"scan {m.source}; choose the restore chain",
                started,
                t0,
                bytes=base.size,
                target_folder=str(folder),
                port=target.record.port,
                phase=phase.value,
                warnings=warnings[:20],
            )
            return io.Prepared(
                target_root=str(target.root),
                port=target.record.port,
                system_identifier=str(plan.source.system_identifier),
                phase=phase.value,
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

    @staticmethod
    def _until_lsn(m: io.MigrationInput, plan: pgm.SourcePlan) -> int | None:
        """Offline with a last backup (a WAL file name): replay through that segment, then cut over."""
        if m.mode != "offline" or not m.last_backup:
            return None
        name = m.last_backup.rstrip("/").rsplit("/", 1)[-1]
        parsed = parse_segment_name(name, plan.source.segment_size)
        if parsed is None:
            raise UsageError(
                f"last backup '{m.last_backup}' is not a WAL segment name",
                "for PostgreSQL, name the last WAL file to restore (e.g. 000000010000000000000042)",
            )
        return parsed.end_lsn(plan.source.segment_size)

    # -- restore_base ----------------------------------------------------------------------------

    @activity.defn(name=io.A_RESTORE_BASE)
    def restore_base(self, inp: io.StepInput) -> io.RestoreDone:
        m = inp.migration
        with self._activity(m.id, "restore_base"):
            target, p = self._open(inp)
            phase = target.phase()
            if phase not in (Phase.NEW, Phase.INTERRUPTED):
                self._event(
                    m.id,
                    "step",
                    f"restore_base skipped: {target.root} already holds the restored "
                    f"data directory ({phase.value})",
                    step="restore_base",
                    skipped=True,
                    seconds=0.0,
                    bytes=0,
                    attempt=activity.info().attempt,
                )
                return io.RestoreDone(skipped=True)
            sink = _Progress(self.store, m.id, State.RESTORING_FULL)
            reporter = pgm.StatusReporter(
                sink, State.RESTORING_FULL, "unpacking the base backup", _details(p, False)
            )
            started, t0 = _now(), time.monotonic()
            points: list[tuple[float, int]] = []

            def progress(x: ExtractProgress) -> None:
                _check_cancel()  # stops the unpack between chunks; data.partial is redone next time
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

            ref = pgm.BaseBackupRef(
                m.source, p.base_tar, tuple(p.base_archives), p.base_manifest, p.base_size, p.base_start_lsn
            )
            if phase is Phase.INTERRUPTED:
                self._event(
                    m.id,
                    "info",
                    "an earlier unpack was interrupted: starting it over",
                    step="restore_base",
                    attempt=activity.info().attempt,
                )
            result = pgm.restore_base(target, ref, progress)
            reporter.emit(
                phase="base backup restored",
                bytes_done=result.archive_bytes,
                current_file=None,
                last_file=p.base_tar,
                details=_details(p, True),
            )
            sink.flush()
            seconds = time.monotonic() - t0
            self._step_event(
                m.id,
                "restore_base",
                f"restored base backup {p.base_tar}: {result.files} files, {result.data_bytes} bytes "
                f"in {seconds:.1f} s",
                f"unpack {', '.join(p.base_archives)} into {target.data}; check sizes against "
                "backup_manifest",
                started,
                t0,
                skipped=result.skipped,
                bytes=result.archive_bytes,
                data_bytes=result.data_bytes,
                files=result.files,
                verified=result.verified,
            )
            return io.RestoreDone(
                skipped=result.skipped,
                archive_bytes=result.archive_bytes,
                data_bytes=result.data_bytes,
                files=result.files,
                seconds=round(seconds, 3),
            )

    # -- replay ----------------------------------------------------------------------------------

    @activity.defn(name=io.A_REPLAY)
    def replay(self, inp: io.StepInput) -> io.ReplayDone:
        m = inp.migration
        with self._activity(m.id, "replay"), self.replays.run(m.id) as stop:
            target, p = self._open(inp)
            attempt = activity.info().attempt
            if stop is None or target.phase() is Phase.PROMOTED or (target.root / CANCELED_FILE).exists():
                # An attempt that comes during or after the cutover (which replays what is left) or the
                # cancel (which stopped the server for good).
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
            reporter = pgm.StatusReporter(
                sink, State.RESTORING_LOGS, "starting the target server", _details(p, True)
            )
            started, t0 = _now(), time.monotonic()
            spec = self._spec(m)
            wal = self._wal(m, p)
            first: int | None = None

            def should_stop() -> CutoverRequest | None:
                _check_cancel()
                return CutoverRequest(time.time()) if stop.is_set() else None

            def finished(how: str) -> None:
                sink.flush()
                last = sink.last.target_position if sink.last else None
                self._step_event(
                    m.id,
                    "replay",
                    f"replay {how}: from {format_lsn(first) if first is not None else '?'} to {last}",
                    f"standby replaying WAL from {m.source} (restore_command + prefetch spool)",
                    started,
                    t0,
                    from_lsn=format_lsn(first) if first is not None else None,
                    to_lsn=last,
                )

            with pgm.Replay.of(spec, target, wal, reporter) as rep:
                first = rep.start(wait=5).position
                try:
                    request = rep.follow(
                        should_stop,
                        until_settled=not spec.online and p.until_lsn is None,
                        until_lsn=p.until_lsn,
                        wake=stop,
                    )
                except CancelledError:
                    self._remember_start(target.root, rep.started)
                    if activity.is_worker_shutdown():
                        finished("paused: the worker shuts down (Temporal hands the replay to the next one)")
                    else:
                        finished("stopped for the cutover or a cancel")
                    raise
                self._remember_start(target.root, rep.started)
                begun = rep.started
                if stop.is_set() and self.replays.offer(m.id, rep):
                    rep.hand_over()  # the cutover goes on with this spool and its absent markers
            if stop.is_set():
                finished("stopped: the cutover or a cancel took the target over")
            else:
                finished("reached the end" if p.until_lsn is None else f"reached {format_lsn(p.until_lsn)}")
            return io.ReplayDone(
                begun[0] if begun else None,
                begun[1] if begun else None,
                request.requested_at,
                request.final_lsn,
            )

    @staticmethod
    def _remember_start(root: Path, started: tuple[float, int] | None) -> None:
        path = root / REPLAY_FILE
        if started is None or path.exists():
            return
        tmp = path.with_name(f".{REPLAY_FILE}.tmp")
        tmp.write_text(json.dumps({"started_at": started[0], "started_lsn": started[1]}))
        os.replace(tmp, path)

    @staticmethod
    def _recall_start(root: Path) -> tuple[float, int] | None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            raw = json.loads((root / REPLAY_FILE).read_text())
            return float(raw["started_at"]), int(raw["started_lsn"])
        return None

    # -- cutover ---------------------------------------------------------------------------------

    @activity.defn(name=io.A_CUTOVER)
    def cutover(self, inp: io.CutoverInput) -> dict[str, Any]:
        m = inp.step.migration
        with self._activity(m.id, "cutover"):
            started, t0 = _now(), time.monotonic()
            with self.replays.taking_over(m.id) as handed:
                stop_seconds = time.monotonic() - t0
                self._enter(inp.step)  # after the replay stopped: its last status write comes before
                try:
                    return self._cut_over(inp, started, t0, stop_seconds, handed)
                finally:
                    if handed is not None:
                        handed.prefetcher.stop()  # a no-op once the cutover's own `with` ended

    def _cut_over(
        self, inp: io.CutoverInput, started: str, t0: float, stop_seconds: float, handed: pgm.Replay | None
    ) -> dict[str, Any]:
        m = inp.step.migration
        target, p = self._open(inp.step)
        recorded = pgm.recorded_result(target.root)
        if target.phase() is Phase.PROMOTED and recorded is not None:
            self._event(
                m.id,
                "step",
                "cutover skipped: the target is already promoted; its recorded result stands",
                step="cutover",
                skipped=True,
                seconds=0.0,
                attempt=activity.info().attempt,
            )
            return recorded.to_json()
        sink = _Progress(self.store, m.id, State.CUTTING_OVER)
        reporter = pgm.StatusReporter(sink, State.CUTTING_OVER, "cutting over", _details(p, True))
        replay_started = (
            (inp.replay_started_at, inp.replay_started_lsn)
            if inp.replay_started_at is not None and inp.replay_started_lsn is not None
            else self._recall_start(target.root)
        )
        result = pgm.cut_over(
            target,
            self._spec(m),
            self._wal(m, p),
            CutoverRequest(inp.requested_at, inp.final_lsn),
            reporter,
            restored=(inp.restored_bytes, inp.restore_seconds),
            replay_started=replay_started,
            check=lambda: activity.heartbeat("cutover"),
            replay=handed,
        )
        sink.flush()
        what = f"replay to {inp.final_lsn}" if inp.final_lsn else "replay to the end of the archive"
        self._step_event(
            m.id,
            "cutover",
            f"cut over: promoted at {result.promoted_at_lsn}, writes verified; downtime "
            f"{result.downtime_seconds} s",
            f"{what}; pg_promote(); commit a test transaction",
            started,
            t0,
            bytes=result.replayed_bytes,
            downtime_seconds=result.downtime_seconds,
            promoted_at_lsn=result.promoted_at_lsn,
            replay_stop_seconds=round(stop_seconds, 3),
            final_lsn=result.final_lsn,
        )
        return result.to_json()

    # -- stop (cancel) ---------------------------------------------------------------------------

    @activity.defn(name=io.A_STOP_TARGET)
    def stop_target(self, inp: io.StepInput) -> str:
        """Cancel: stop the target server with a fast shutdown. The folder stays as it is (data directory
        in recovery, its log, the spool) for inspection; remove it when done. The source is never touched."""
        m = inp.migration
        with self._activity(m.id, "stop_target"):
            folder = self._config(m.target).folder(m.id)
            if not (folder / TARGET_FILE).exists():
                self._event(
                    m.id,
                    "step",
                    "canceled before a target folder was made: nothing to stop",
                    step="stop_target",
                    seconds=0.0,
                )
                return "none"
            t0 = time.monotonic()
            with self.replays.taking_over(m.id) as handed:  # a cancel does not wait for a heartbeat
                if handed is not None:
                    handed.prefetcher.stop()
                (folder / CANCELED_FILE).write_text(f"{_now()}\n")
                target = PostgresTarget.open(folder)
                running = target.phase() not in (Phase.NEW, Phase.INTERRUPTED) and target.cluster.is_running()
                if running:
                    target.stop("fast")
            self._event(
                m.id,
                "step",
                f"target server {'stopped' if running else 'was not running'}; folder {folder} kept "
                f"({target.phase().value}) for inspection",
                step="stop_target",
                command="pg_ctl stop -m fast" if running else "",
                seconds=round(time.monotonic() - t0, 3),
                target_folder=str(folder),
            )
            return "stopped" if running else "not running"
