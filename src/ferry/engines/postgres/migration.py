"""A PostgreSQL migration: plan the source, restore the base backup onto a target, replay archived WAL while
the source stays in use, and cut over when asked.

The steps are functions the foreground `ferry migrate` (`Migration.run`) and the service's activities
(ferry.service.activities) share:

    plan = validate(spec)                          read the source's store, choose the chain (or raise)
    target = prepare_target(spec, plan)            the target folder: new, or the same migration's to resume
    restore_base(target, BaseBackupRef.of(plan))   unpack the base backup (skipped when already done)
    with Replay(target, WalSource.of(plan), reporter) as rep:
        rep.start()                                prefetch from where recovery begins; configure recovery
                                                   from the archive; start the server
        request = rep.follow(stop)                 replay WAL until `stop()` asks for the cutover
        outcome = rep.cut_over(request)            replay the rest, promote, check writes
    finish(target, ...)                            the MigrationResult, kept in the target folder

Everything that decides what to do next is read from the target itself (its folder, pg_control, its
replay position), so running a step again after Ferry was killed, at any point, resumes it or skips it.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from ferry.core.errors import FerryError, UsageError
from ferry.core.findings import Finding, MigrationBlocked, Severity
from ferry.core.migration import State, StatusReporter
from ferry.engines.base import MigrationJob, ReplaySettings, SourceFiles, TargetSpec
from ferry.engines.postgres import archive, chain, grouping
from ferry.engines.postgres.cluster import free_port
from ferry.engines.postgres.cutover import CutoverRequest, clear_cutover
from ferry.engines.postgres.engine import ENGINE
from ferry.engines.postgres.reader import parse_label
from ferry.engines.postgres.target import (
    Phase,
    PostgresTarget,
    ProgressCallback,
    RestoreResult,
    TargetStatus,
    Verify,
)
from ferry.engines.postgres.wal import DEFAULT_SEGMENT_SIZE, format_lsn, parse_lsn
from ferry.stores.base import BackupStore
from ferry.stores.registry import open_location

RESULT_FILE = "ferry-result.json"
# How long the replay position must stand still at the end of the archive before Ferry calls the target
# caught up (an offline migration then promotes; a cutover without a final LSN does too).
SETTLE_SECONDS = 1.0
# A standby with nothing new to replay changes only when a segment arrives (archive_timeout, a minute on
# many sources): after IDLE_AFTER_SECONDS still, it is looked at every IDLE_POLL_SECONDS.
IDLE_AFTER_SECONDS = 10.0
IDLE_POLL_SECONDS = 5.0
# A replay that has waited this long for a WAL file the store does not have says so (blocked_reason); an
# offline migration that has not reached the end of its plan by then fails, naming the file.
BLOCKED_AFTER_SECONDS = 60.0
# Once caught up, a migration stays ReadyForCutover while its lag stays within this many segments: new WAL
# arrives a segment at a time, and `cutover --all-ready` must not skip a migration that keeps up.
READY_LAG_SEGMENTS = 2


class WalMissing(FerryError):
    """An offline migration stopped short of the end of its plan: the store lacks the next WAL file."""

    retryable = False

    def __init__(self, location: str, name: str, position: int, plan_end: int, waited: float) -> None:
        super().__init__(
            f"the offline migration from '{location}' stopped at LSN {format_lsn(position)}: WAL file {name} "
            f"is not in the store (looked for {waited:.0f} s), and the plan needs WAL up to "
            f"{format_lsn(plan_end)}",
            "archive the missing file into the store (from the source's pg_wal, if it is still there), then "
            "retry the migration; `ferry plan` on the store shows what it holds",
        )


@dataclass(frozen=True)
class MigrationSpec:
    source: str  # store location of one PostgreSQL source: its base backups and WAL archive
    target: Path  # the folder Ferry owns on the target host
    online: bool = True
    port: int | None = None
    os_user: str | None = None
    prefetch_depth: int = 32  # 512 MiB of 16 MiB segments: replay can take several per status turn
    poll_interval: float = 0.25
    blocked_after: float = BLOCKED_AFTER_SECONDS
    ready_lag_segments: int = READY_LAG_SEGMENTS

    def job(self) -> MigrationJob:
        """The migration as the execution seam runs it: the target folder is `location/id`."""
        folder = Path(os.path.abspath(self.target))
        return MigrationJob(
            id=folder.name,
            source=self.source,
            target=TargetSpec("local", ENGINE, str(folder.parent), self.os_user),
            online=self.online,
            replay=ReplaySettings(self.blocked_after, self.ready_lag_segments, self.poll_interval),
            port=self.port,
        )

    @staticmethod
    def of(job: MigrationJob, prefetch_depth: int = 32) -> MigrationSpec:
        return MigrationSpec(
            job.source,
            Path(job.target.location) / job.id,
            online=job.online,
            port=job.port,
            os_user=job.target.os_user,
            prefetch_depth=prefetch_depth,
            poll_interval=job.replay.poll_interval,
            blocked_after=job.replay.blocked_after,
            ready_lag_segments=job.replay.ready_lag,
        )


@dataclass(frozen=True)
class MigrationResult:
    state: str
    target: str
    port: int
    system_identifier: str
    restored_bytes: int
    restore_seconds: float
    replayed_bytes: int
    replay_seconds: float
    final_lsn: str | None
    downtime_seconds: float | None
    promoted_at_lsn: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SourcePlan:
    store: BackupStore
    prefix: str
    source: grouping.Source
    chain: chain.Chain
    findings: tuple[Finding, ...]
    location: str = ""


def plan_files(files: SourceFiles) -> SourcePlan:
    """Choose the chain of the one source whose files a scan of `files.location` read. Raises
    MigrationBlocked on error findings, UsageError when the location holds no source or several."""
    location = files.location
    store, prefix = open_location(location)
    sources, grouped = grouping.group_sources(files.sets)
    if not sources:
        raise UsageError(
            f"no PostgreSQL base backup or WAL found in '{location}'",
            "give the folder that holds the source's pg_basebackup output and its WAL archive",
        )
    if len(sources) > 1:
        ids = ", ".join(str(s.system_identifier) for s in sources)
        raise UsageError(
            f"'{location}' holds backups of {len(sources)} PostgreSQL clusters ({ids})",
            "give the folder of one source: Ferry never mixes clusters in one migration",
        )
    src = sources[0]
    selected = chain.select_chain(src)
    findings = (
        *files.findings,
        *grouping.not_segments(files.findings),
        *grouped,
        *src.findings,
        *selected.findings,
    )
    if (
        selected.walk is None
        or not selected.walk.consistent
        or any(f.severity is Severity.ERROR for f in findings)
    ):
        raise MigrationBlocked(f"'{location}'", list(findings))
    return SourcePlan(store, prefix, src, selected, tuple(findings), location)


# -- what the steps pass each other ----------------------------------------------------------------


@dataclass(frozen=True)
class BaseBackupRef:
    """The base backup to restore, by store keys: all `restore_base` needs, without scanning again."""

    location: str
    tar: str  # key of base.tar (names the backup)
    archives: tuple[str, ...]  # base.tar, tablespace tars, pg_wal.tar
    manifest: str | None
    size: int
    start_lsn: int

    @staticmethod
    def of(plan: SourcePlan) -> BaseBackupRef:
        walk = plan.chain.walk
        assert walk is not None
        base = walk.base
        manifest = base.manifest.key if base.manifest is not None else None
        return BaseBackupRef(
            location=plan.location,
            tar=base.tar.key,
            archives=tuple(k for k in base.files if k != manifest),
            manifest=manifest,
            size=base.size,
            start_lsn=base.start_lsn,
        )


@dataclass(frozen=True)
class WalSource:
    """Where replay fetches WAL from: the store, the timeline recovery follows, the segment size."""

    location: str
    timeline: int
    segment_size: int
    plan_end_lsn: int | None = None  # end of the WAL the plan found: an offline migration must reach it

    @staticmethod
    def of(plan: SourcePlan) -> WalSource:
        walk = plan.chain.walk
        assert walk is not None
        return WalSource(plan.location, walk.target_timeline, plan.source.segment_size, walk.end_lsn)


@dataclass(frozen=True)
class CutoverOutcome:
    final_lsn: int | None
    downtime_seconds: float
    promoted_at: int | None


class _Rate:
    """Bytes per second over a sliding window, for throughput and the cutover estimate."""

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self.points: list[tuple[float, int]] = []

    def add(self, value: int) -> None:
        now = time.monotonic()
        self.points.append((now, value))
        while len(self.points) > 2 and now - self.points[0][0] > self.window:
            self.points.pop(0)

    @property
    def per_second(self) -> float | None:
        if len(self.points) < 2:
            return None
        (t0, v0), (t1, v1) = self.points[0], self.points[-1]
        return (v1 - v0) / (t1 - t0) if t1 > t0 and v1 >= v0 else None


# -- the steps -------------------------------------------------------------------------------------


def prepare_target(spec: MigrationSpec, plan: SourcePlan) -> PostgresTarget:
    """The target folder for this migration: created, or reopened when it already holds this migration
    (same system identifier). A folder of another migration or a non-empty foreign folder is refused."""
    walk = plan.chain.walk
    assert walk is not None
    base = walk.base
    sysid = plan.source.system_identifier
    if (spec.target / "ferry-target.json").exists():
        target = PostgresTarget.open(spec.target)
        if target.record.system_identifier != sysid:
            raise UsageError(
                f"target '{spec.target}' holds a migration of system {target.record.system_identifier}, "
                f"not of {sysid} from '{spec.source}'",
                "give a new target folder; Ferry never overwrites a target",
            )
        return target
    return PostgresTarget.create(
        spec.target,
        spec.port or free_port(),
        source=spec.source,
        system_identifier=sysid,
        base_backup=base.tar.key,
        os_user=spec.os_user,
    )


def restore_base(
    target: PostgresTarget, base: BaseBackupRef, progress: ProgressCallback | None = None
) -> RestoreResult:
    """Unpack the base backup into the target. Judged by the target: a folder that already holds the
    restored data directory (phase RESTORED, RECOVERY or PROMOTED) is skipped (`skipped=True`); an
    interrupted unpack starts over."""
    if target.phase() not in (Phase.NEW, Phase.INTERRUPTED):
        return RestoreResult(0, 0, 0, 0.0, "none", skipped=True)
    store, _ = open_location(base.location)
    readers = [store.open(key) for key in base.archives]
    manifest = None
    if base.manifest is not None:
        reader = store.open(base.manifest)
        try:
            manifest = reader.read(0, reader.size)
        finally:
            reader.close()
    # A backup without its manifest can still be restored; only the size check against it is skipped.
    verify: Verify = "sizes" if manifest is not None else "none"
    return target.restore_base(readers, manifest, verify=verify, progress=progress)


def start_recovery(target: PostgresTarget, location: str, wait: float = 60) -> TargetStatus:
    """Configure the restored data directory as a standby fed from the archive (once), and start the
    server (a no-op when it runs), waiting up to `wait` s for it to accept connections (a standby that
    needs longer to become consistent keeps recovering). PostgreSQL resumes from its own restartpoint."""
    if target.phase() is Phase.RESTORED:
        target.configure(online=True, restore_command=archive.restore_command(location, target.spool))
    return target.start(wait)


def recovery_start(target: PostgresTarget) -> int | None:
    """Where the stopped server's recovery will begin reading WAL: the restored backup_label's start, or
    (a standby started before) pg_control's latest restartpoint."""
    # Best effort: a label that cannot be read only costs the priming (the server reads it, not this).
    with contextlib.suppress(Exception):
        return parse_label((target.data / "backup_label").read_text()).start_lsn
    with contextlib.suppress(FerryError):
        return target.status().checkpoint_redo_lsn
    return None


class Replay:
    """A target in recovery and the prefetcher that feeds it: `follow` the archive, then `cut_over`.

    Use as a context manager: the prefetcher runs inside it. `started` is (time.time(), LSN) where
    replay was first seen, for the result's replay figures."""

    # What __init__ sets, as class defaults: the status report needs nothing else of a Replay.
    blocked_after = BLOCKED_AFTER_SECONDS
    ready_lag = READY_LAG_SEGMENTS * DEFAULT_SEGMENT_SIZE
    _ready = False  # caught up once, and keeping up since (within ready_lag)
    _waiting: tuple[str, int | None, float] | None = None  # (missing file, position, since)

    def __init__(
        self,
        target: PostgresTarget,
        wal: WalSource,
        reporter: StatusReporter,
        *,
        prefetch_depth: int = 32,
        poll_interval: float = 0.25,
        blocked_after: float = BLOCKED_AFTER_SECONDS,
        ready_lag_segments: int = READY_LAG_SEGMENTS,
    ) -> None:
        self.target = target
        self.wal = wal
        self.reporter = reporter
        self.poll_interval = poll_interval
        self.blocked_after = blocked_after
        self.ready_lag = ready_lag_segments * wal.segment_size
        self._ready = False
        self._waiting = None
        self.prefetcher = archive.Prefetcher(
            wal.location, target.spool, wal.timeline, wal.segment_size, prefetch_depth, owner=target.user
        )
        self.started: tuple[float, int] | None = None
        self.last: TargetStatus | None = None
        self._owned = True
        self._fetched_seen = 0
        self._position_seen: int | None = None

    @classmethod
    def of(
        cls, spec: MigrationSpec, target: PostgresTarget, wal: WalSource, reporter: StatusReporter
    ) -> Replay:
        """A Replay with the migration's settings."""
        return cls(
            target,
            wal,
            reporter,
            prefetch_depth=spec.prefetch_depth,
            poll_interval=spec.poll_interval,
            blocked_after=spec.blocked_after,
            ready_lag_segments=spec.ready_lag_segments,
        )

    def __enter__(self) -> Replay:
        self._owned = True
        self.prefetcher.start()  # a no-op when it runs: a Replay handed over keeps its spool and markers
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        if self._owned:
            self.prefetcher.stop()

    def hand_over(self) -> None:
        """Leave the prefetcher running when the `with` block ends: whoever takes this Replay over (the
        cutover) enters it again, keeping the spool and the absent markers the server relies on, and stops
        it when done."""
        self._owned = False

    def start(self, wait: float = 60) -> TargetStatus:
        """start_recovery, with the prefetcher told first where recovery will begin reading WAL: the
        server's first restore_command calls then find their segments in the spool (a `mv`) instead of
        starting `ferry wal-fetch`, a Python process each."""
        if not self.target.cluster.is_running():
            begin = recovery_start(self.target)
            if begin is not None:
                self.prefetcher.prime(begin)
        return start_recovery(self.target, self.wal.location, wait)

    def follow(
        self,
        stop: Callable[[], CutoverRequest | None],
        *,
        until_settled: bool = False,
        until_lsn: int | None = None,
        wake: threading.Event | None = None,
    ) -> CutoverRequest:
        """Replay archived WAL, reporting RestoringLogs / ReadyForCutover, until `stop()` returns a
        cutover request. `until_settled` (offline): also end once the end of the archive is replayed and
        the position stood still for SETTLE_SECONDS. `until_lsn`: also end once replay reaches it.

        A target that has been caught up and still for IDLE_AFTER_SECONDS is looked at only every
        IDLE_POLL_SECONDS (each look runs pg_controldata; hundreds of idle targets must not cost a core).
        Setting `wake` ends a wait at once, so a `stop()` that became true is seen without delay."""
        rate = _Rate()
        settled_since: float | None = None
        last_position: int | None = None
        while True:
            st = self.target.status(pg_control=False)
            self.last = st
            position = st.position
            if position is not None:
                self.prefetcher.advance(position)
                rate.add(position)
                if self.started is None:
                    self.started = (time.time(), position)
            stats = self.prefetcher.stats()
            self._nudge(st, stats)
            caught_up = self._caught_up(st, stats)
            if caught_up and position == last_position:
                settled_since = settled_since or time.monotonic()
            else:
                settled_since = None
            last_position = position
            waited = self._waited(position, stats)
            self._report(st, stats, rate, caught_up)
            request = stop()
            settled = settled_since is not None and time.monotonic() - settled_since >= SETTLE_SECONDS
            offline = until_settled or until_lsn is not None
            if request is None and offline and waited >= self.blocked_after:
                # Offline, the store will not grow: a wait this long ends the replay, done or short.
                settled = until_settled = self._offline_stalled(position, stats, waited, until_lsn)
            if request is None and until_settled and settled and self._plan_reached(position):
                request = CutoverRequest(time.time())  # offline: the end of the archive is the end
            reached = until_lsn is not None and st.replay_lsn is not None and st.replay_lsn >= until_lsn
            if request is None and reached and until_lsn is not None:
                request = CutoverRequest(time.time(), format_lsn(until_lsn))
            if request is not None:
                return request
            idle = settled_since is not None and time.monotonic() - settled_since >= IDLE_AFTER_SECONDS
            pause = max(self.poll_interval, IDLE_POLL_SECONDS) if idle else self.poll_interval
            if wake is not None:
                wake.wait(pause)
            else:
                time.sleep(pause)

    def cut_over(self, request: CutoverRequest, check: Callable[[], None] | None = None) -> CutoverOutcome:
        """Replay to the request's final LSN (or to the end of the archive, settled), promote, and prove
        the server takes writes. `check` is called in the wait loop (a heartbeat)."""
        self.reporter.emit(State.CUTTING_OVER, phase="cutting over: replaying the last WAL")
        final = parse_lsn(request.final_lsn) if request.final_lsn else None
        if final is None and request.source_dsn:
            final = _close_source_segment(request.source_dsn)
        settled_since: float | None = None
        last: int | None = None
        while self.target.phase() is not Phase.PROMOTED:
            st = self.target.status(pg_control=False)
            if st.position is not None:
                self.prefetcher.advance(st.position)
                if self.started is None:
                    self.started = (time.time(), st.position)
            stats = self.prefetcher.stats()
            self._nudge(st, stats)
            if final is not None:
                if st.replay_lsn is not None and st.replay_lsn >= final:
                    break
            elif self._caught_up(st, stats) and st.position == last:
                settled_since = settled_since or time.monotonic()
                if time.monotonic() - settled_since >= SETTLE_SECONDS:
                    break
            else:
                settled_since = None
            last = st.position
            self._report(st, stats, _Rate(), False)
            if check is not None:
                check()
            time.sleep(0.05)
        self.reporter.emit(phase="cutting over: promoting the target")
        promoted = self.target.promote()
        written = self.target.verify_writable()
        downtime = time.time() - request.requested_at
        return CutoverOutcome(final, downtime, promoted.current_lsn or written.lsn)

    def _waited(self, position: int | None, stats: archive.PrefetchStats) -> float:
        """Seconds replay has waited for a WAL file the store lacks (0 when it is not waiting): the same
        file missing, the position still, and nothing fetched left in the spool for the server to take.
        Before the server is consistent its position (pg_control's) can stand still while it replays;
        the spool's draining is what shows it is done with what it had."""
        missing = stats.missing_next
        if missing is None or stats.spool_files:
            self._waiting = None
            return 0.0
        now = time.monotonic()
        if self._waiting is None or self._waiting[:2] != (missing, position):
            self._waiting = (missing, position, now)
        return now - self._waiting[2]

    def _offline_stalled(
        self, position: int | None, stats: archive.PrefetchStats, waited: float, until_lsn: int | None
    ) -> bool:
        """An offline replay that has waited `blocked_after` for a file the store lacks: True (finished)
        when it stands inside the last segment its plan needs, else WalMissing naming the file."""
        end = until_lsn if until_lsn is not None else self.wal.plan_end_lsn
        if self._plan_reached(position, end):
            return True
        raise WalMissing(self.wal.location, stats.missing_next or "?", position or 0, end or 0, waited)

    def _plan_reached(self, position: int | None, end: int | None = None) -> bool:
        """Replay stands inside (or past) the last segment the plan found: an offline migration may end
        there. A store that shrank since the plan ends it short, which is not the end."""
        end = self.wal.plan_end_lsn if end is None else end
        return end is None or (position is not None and position > end - self.wal.segment_size)

    def _nudge(self, st: TargetStatus, stats: archive.PrefetchStats) -> None:
        """The prefetcher delivered segments while replay stood still: the standby waits out
        wal_retrieve_retry_interval before it looks again, so wake it now."""
        fetched, self._fetched_seen = self._fetched_seen, stats.segments_fetched
        stalled, self._position_seen = st.position == self._position_seen, st.position
        if stats.segments_fetched > fetched and stalled and st.in_recovery:
            self.target.wake_recovery()

    @staticmethod
    def _caught_up(st: TargetStatus, stats: archive.PrefetchStats) -> bool:
        """Replay is inside (or at the end of) the last segment the store holds, and waits for the next.

        Strictly inside: after a segment that ends with a WAL switch, the replay position is the first byte
        of the next segment, which is not replayed at all yet; calling that "caught up" would promote
        without the last segment's transactions when its fetch takes longer than SETTLE_SECONDS."""
        if st.position is None or stats.archive_end_lsn is None or not st.segment_size:
            return False
        return stats.pending == 0 and st.position > stats.archive_end_lsn - st.segment_size

    def _report(self, st: TargetStatus, stats: archive.PrefetchStats, rate: _Rate, caught_up: bool) -> None:
        # Lag: archived WAL not replayed yet. Caught up, replay waits inside the newest segment, whose rest
        # it has replayed (or is padding after a segment switch): nothing is left, so 0.
        lag_bytes = 0 if caught_up else st.lag_bytes(stats.archive_end_lsn)
        speed = rate.per_second
        estimate = None
        if lag_bytes is not None:
            estimate = 1.0 + (lag_bytes / speed if speed and speed > 0 else 0.0)
        blocked = None
        waited = time.monotonic() - self._waiting[2] if self._waiting is not None else 0.0
        if stats.gap and stats.missing_next:
            blocked = f"WAL segment {stats.missing_next} is missing from the store while later ones exist"
        elif stats.last_error:
            blocked = stats.last_error
        elif self._waiting is not None and waited >= self.blocked_after:
            blocked = (
                f"replay has waited {waited:.0f} s for WAL file {self._waiting[0]}, which is not in "
                f"'{self.wal.location}' (every folder below it is searched); check the source's "
                "archive_command, or that the source is writing at all"
            )
        # Ready once caught up, and for as long as replay keeps up: the lag stays within ready_lag.
        self._ready = caught_up or (self._ready and lag_bytes is not None and lag_bytes <= self.ready_lag)
        state = State.READY_FOR_CUTOVER if self._ready else State.RESTORING_LOGS
        if self.reporter.state is State.CUTTING_OVER:
            state = State.CUTTING_OVER
        restoring = next((f.name for f in stats.files if f.status == "restoring"), None)
        restored = [f.name for f in stats.files if f.status == "restored"]  # oldest first
        known: dict[str, Any] = {}
        if restored:
            known["last_file"] = restored[-1]
        if stats.counts:  # after the prefetcher's first listing of the store
            known["details"] = self._details_with_wal(stats)
        self.reporter.emit(
            state,
            phase="replaying WAL" if not self._ready else "caught up; replaying new WAL as it arrives",
            source_position=format_lsn(stats.archive_end_lsn) if stats.archive_end_lsn else None,
            target_position=format_lsn(st.position) if st.position is not None else None,
            lag_bytes=lag_bytes,
            lag_seconds=0.0 if caught_up else st.lag_seconds(),
            pending_files=stats.pending,
            pending_bytes=stats.pending * (st.segment_size or 0),
            throughput=speed,
            current_file=restoring or stats.missing_next,
            blocked_reason=blocked,
            cutover_estimate_seconds=estimate,
            bytes_done=0,
            bytes_total=None,
            **known,
        )

    def _details_with_wal(self, stats: archive.PrefetchStats) -> dict[str, Any]:
        """The reporter's details with the log backup set (the WAL segments in the store and their status)
        in place of any earlier one; the other sets (the base backup) are kept as they are."""
        details = dict(self.reporter.status.details)
        sets = [
            s
            for s in details.get("backup_sets") or []
            if not (isinstance(s, dict) and s.get("kind") == "log")
        ]
        files: list[dict[str, Any]] = []
        for f in stats.files:
            entry: dict[str, Any] = {"name": f.name, "status": f.status}
            if f.reason is not None:
                entry["reason"] = f.reason
            entry["size"] = f.size
            files.append(entry)
        sets.append(
            {
                "name": f"WAL timeline {stats.timeline}",
                "kind": "log",
                "counts": dict(stats.counts),
                "files": files,
                "shown": len(files),
            }
        )
        details["backup_sets"] = sets
        return details


def replay(
    target: PostgresTarget,
    spec: MigrationSpec,
    wal: WalSource,
    reporter: StatusReporter,
    should_stop: Callable[[], CutoverRequest | None],
    *,
    until_lsn: int | None = None,
) -> tuple[CutoverRequest, tuple[float, int] | None]:
    """Start the target's recovery and replay until `should_stop()` returns a request (online), or the end
    of the archive is replayed (offline), or `until_lsn` is reached. Returns the request and where replay
    started (time.time(), LSN)."""
    with Replay.of(spec, target, wal, reporter) as rep:
        rep.start()
        request = rep.follow(should_stop, until_settled=not spec.online and until_lsn is None,
                             until_lsn=until_lsn)  # fmt: skip
        return request, rep.started


def cut_over(
    target: PostgresTarget,
    spec: MigrationSpec,
    wal: WalSource,
    request: CutoverRequest,
    reporter: StatusReporter,
    *,
    restored: tuple[int, float] = (0, 0.0),
    replay_started: tuple[float, int] | None = None,
    check: Callable[[], None] | None = None,
    replay: Replay | None = None,
) -> MigrationResult:
    """Replay the rest, promote, verify writes and record the result in the target folder. On a target
    that is already promoted, the result recorded then is returned (nothing is done again). `replay`: the
    Replay that followed the archive until now, handed over (its prefetcher still running)."""
    recorded = recorded_result(target.root)
    if target.phase() is Phase.PROMOTED and recorded is not None:
        if replay is not None:
            replay.prefetcher.stop()
        return recorded
    if replay is not None:
        replay.reporter = reporter
    with replay or Replay.of(spec, target, wal, reporter) as rep:
        if target.phase() is not Phase.PROMOTED:
            rep.start()
        outcome = rep.cut_over(request, check)
        started = replay_started or rep.started
    return finish(target, restored=restored, replay_started=started, outcome=outcome)


def recorded_result(root: Path) -> MigrationResult | None:
    """The result a finished migration wrote into its target folder, if any."""
    try:
        return MigrationResult(**json.loads((root / RESULT_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def finish(
    target: PostgresTarget,
    *,
    restored: tuple[int, float] = (0, 0.0),
    replay_started: tuple[float, int] | None = None,
    outcome: CutoverOutcome | None = None,
) -> MigrationResult:
    """The MigrationResult, written to ROOT/ferry-result.json. Without an outcome (a rerun after the
    migration finished), the result recorded then."""
    path = target.root / RESULT_FILE
    if outcome is None:
        recorded = recorded_result(target.root)
        if recorded is not None:
            return recorded
    promoted_at = outcome.promoted_at if outcome else None
    replayed, replay_seconds = 0, 0.0
    if replay_started and promoted_at is not None:
        replayed = max(0, promoted_at - replay_started[1])
        replay_seconds = max(0.0, time.time() - replay_started[0])
    result = MigrationResult(
        state=State.SUCCEEDED.value,
        target=str(target.root),
        port=target.record.port,
        system_identifier=str(target.record.system_identifier),
        restored_bytes=restored[0],
        restore_seconds=round(restored[1], 3),
        replayed_bytes=replayed,
        replay_seconds=round(replay_seconds, 3),
        final_lsn=format_lsn(outcome.final_lsn) if outcome and outcome.final_lsn is not None else None,
        downtime_seconds=round(outcome.downtime_seconds, 3) if outcome else None,
        promoted_at_lsn=format_lsn(promoted_at) if promoted_at is not None else None,
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    os.replace(tmp, path)
    clear_cutover(target.root)
    return result


def _close_source_segment(dsn: str) -> int:
    """Switch the source to a new WAL segment so the last one is archived now; its LSN is the final one."""
    import psycopg

    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            row = conn.execute("SELECT pg_switch_wal()::text").fetchone()
    except psycopg.Error as exc:
        raise UsageError(
            f"cannot reach the source to close its WAL segment: {str(exc).strip()}",
            "check --source-dsn, or give --final-lsn (SELECT pg_switch_wal() on the source prints it)",
        ) from None
    assert row is not None
    return parse_lsn(str(row[0]))
