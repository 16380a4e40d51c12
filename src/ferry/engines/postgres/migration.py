"""A PostgreSQL migration, run in the foreground: plan the source, restore the base backup onto a target,
replay archived WAL while the source stays in use, and cut over when asked.

Everything that decides what to do next is read from the target itself (its folder, pg_control, its
replay position), so running the same migration again after Ferry was killed, at any point, resumes it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ferry.core.errors import FerryError, UsageError
from ferry.core.findings import Finding, Severity
from ferry.core.migration import MigrationStatus, State, transition
from ferry.engines.postgres import archive, chain
from ferry.engines.postgres.cluster import free_port
from ferry.engines.postgres.cutover import CutoverRequest, clear_cutover
from ferry.engines.postgres.engine import PostgresEngine
from ferry.engines.postgres.target import ExtractProgress, Phase, PostgresTarget, TargetStatus
from ferry.engines.postgres.wal import format_lsn, parse_lsn
from ferry.pipeline.discover import scan
from ferry.stores.base import BackupStore
from ferry.stores.registry import open_location

RESULT_FILE = "ferry-result.json"
# How long the replay position must stand still at the end of the archive before Ferry calls the target
# caught up (an offline migration then promotes; a cutover without a final LSN does too).
SETTLE_SECONDS = 1.0


class MigrationBlocked(FerryError):
    """The source's backups cannot be restored as they are: the findings say why."""

    def __init__(self, source: str, findings: list[Finding]) -> None:
        errors = [f for f in findings if f.severity is Severity.ERROR]
        super().__init__(
            f"migration of '{source}' is blocked: {errors[0].message if errors else 'no restorable chain'}",
            errors[0].hint if errors else "run `ferry plan` on the source for details",
        )
        self.findings = findings


@dataclass(frozen=True)
class MigrationSpec:
    source: str  # store location of one PostgreSQL source: its base backups and WAL archive
    target: Path  # the folder Ferry owns on the target host
    online: bool = True
    port: int | None = None
    os_user: str | None = None
    prefetch_depth: int = 8
    poll_interval: float = 0.25


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
    source: chain.Source
    chain: chain.Chain
    findings: tuple[Finding, ...]


def plan_source(location: str) -> SourcePlan:
    """Read the source's store and choose its chain. Raises MigrationBlocked on error findings."""
    store, prefix = open_location(location)
    result = scan(store, [PostgresEngine()], prefix)
    sources, grouping = chain.group_sources(result.sets_for("postgres"))
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
    findings = (*result.findings, *grouping, *src.findings, *selected.findings)
    if (
        selected.walk is None
        or not selected.walk.consistent
        or any(f.severity is Severity.ERROR for f in findings)
    ):
        raise MigrationBlocked(location, list(findings))
    return SourcePlan(store, prefix, src, selected, tuple(findings))


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


class Migration:
    """One source to one target. `report` receives every status change; `cutover` is polled and returns a
    request once one was made (see cutover.py)."""

    def __init__(
        self,
        spec: MigrationSpec,
        report: Callable[[MigrationStatus], None],
        cutover: Callable[[], CutoverRequest | None],
    ) -> None:
        self.spec = spec
        self.report = report
        self.cutover = cutover
        self.state = State.QUEUED
        self.status = MigrationStatus(State.QUEUED, "queued")
        self._restored = (0, 0.0)
        self._replay_started: tuple[float, int] | None = None

    def _emit(self, state: State | None = None, **changes: Any) -> None:
        if state is not None:
            self.state = transition(self.state, state)
        self.status = replace(self.status, state=self.state, **changes)
        self.report(self.status)

    # -- the run ----------------------------------------------------------------------------------

    def run(self) -> MigrationResult:
        spec = self.spec
        self._emit(State.VALIDATING, phase="reading the source's backups")
        plan = plan_source(spec.source)
        walk = plan.chain.walk
        assert walk is not None
        target = self._target(plan)
        if target.phase() is Phase.PROMOTED:
            return self._finished(target)
        if target.phase() in (Phase.NEW, Phase.INTERRUPTED):
            self._restore_base(target, plan)
        if target.phase() is Phase.RESTORED:
            command = archive.restore_command(spec.source, target.spool)
            target.configure(online=True, restore_command=command)
        self._emit(State.RESTORING_LOGS, phase="starting the target server", current_file=None)
        target.start()
        prefetcher = archive.Prefetcher(
            spec.source,
            target.spool,
            walk.target_timeline,
            plan.source.segment_size,
            spec.prefetch_depth,
            owner=target.user,
        )
        prefetcher.start()
        try:
            return self._replay(target, prefetcher)
        finally:
            prefetcher.stop()

    def _target(self, plan: SourcePlan) -> PostgresTarget:
        spec, base = self.spec, plan.chain.walk.base if plan.chain.walk else None
        assert base is not None
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

    def _restore_base(self, target: PostgresTarget, plan: SourcePlan) -> None:
        walk = plan.chain.walk
        assert walk is not None
        base = walk.base
        readers = [plan.store.open(key) for key in base.files if key != getattr(base.manifest, "key", None)]
        manifest = None
        if base.manifest is not None:
            reader = plan.store.open(base.manifest.key)
            try:
                manifest = reader.read(0, reader.size)
            finally:
                reader.close()
        rate = _Rate(5.0)
        self._emit(State.RESTORING_FULL, phase="unpacking the base backup", bytes_total=base.size)

        def progress(p: ExtractProgress) -> None:
            rate.add(p.archive_bytes_done)
            self._emit(
                bytes_done=p.archive_bytes_done,
                bytes_total=p.archive_bytes_total,
                throughput=rate.per_second,
                current_file=p.current,
            )

        started = time.monotonic()
        result = target.restore_base(readers, manifest, progress=progress)
        self._restored = (result.archive_bytes, time.monotonic() - started)
        self._emit(last_file=base.tar.key, current_file=None, bytes_done=result.archive_bytes)

    def _replay(self, target: PostgresTarget, prefetcher: archive.Prefetcher) -> MigrationResult:
        rate = _Rate()
        settled_since: float | None = None
        last_position: int | None = None
        while True:
            st = target.status()
            position = st.position
            if position is not None:
                prefetcher.advance(position)
                rate.add(position)
                if self._replay_started is None:
                    self._replay_started = (time.monotonic(), position)
            stats = prefetcher.stats()
            caught_up = self._caught_up(st, stats)
            if caught_up and position == last_position:
                settled_since = settled_since or time.monotonic()
            else:
                settled_since = None
            last_position = position
            self._report_replay(st, stats, rate, caught_up)
            request = self.cutover()
            if not self.spec.online and settled_since and time.monotonic() - settled_since >= SETTLE_SECONDS:
                request = CutoverRequest(time.time())  # offline: the end of the archive is the end
            if request is not None:
                return self._cut_over(target, prefetcher, request)
            time.sleep(self.spec.poll_interval)

    @staticmethod
    def _caught_up(st: TargetStatus, stats: archive.PrefetchStats) -> bool:
        """Replay has reached the last segment the store holds (and waits for the next)."""
        if st.position is None or stats.archive_end_lsn is None or not st.segment_size:
            return False
        return stats.pending == 0 and st.position >= stats.archive_end_lsn - st.segment_size

    def _report_replay(
        self, st: TargetStatus, stats: archive.PrefetchStats, rate: _Rate, caught_up: bool
    ) -> None:
        lag_bytes = st.lag_bytes(stats.archive_end_lsn)
        speed = rate.per_second
        estimate = None
        if lag_bytes is not None:
            estimate = 1.0 + (lag_bytes / speed if speed and speed > 0 else 0.0)
        blocked = None
        if stats.gap and stats.missing_next:
            blocked = f"WAL segment {stats.missing_next} is missing from the store while later ones exist"
        elif stats.last_error:
            blocked = stats.last_error
        state = State.READY_FOR_CUTOVER if caught_up else State.RESTORING_LOGS
        if self.state is State.CUTTING_OVER:
            state = State.CUTTING_OVER
        self._emit(
            state,
            phase="replaying WAL" if not caught_up else "caught up; replaying new WAL as it arrives",
            source_position=format_lsn(stats.archive_end_lsn) if stats.archive_end_lsn else None,
            target_position=format_lsn(st.position) if st.position is not None else None,
            lag_bytes=lag_bytes,
            lag_seconds=0.0 if caught_up else st.lag_seconds(),
            pending_files=stats.pending,
            pending_bytes=stats.pending * (st.segment_size or 0),
            throughput=speed,
            current_file=stats.missing_next,
            blocked_reason=blocked,
            cutover_estimate_seconds=estimate,
            bytes_done=0,
            bytes_total=None,
        )

    def _cut_over(
        self, target: PostgresTarget, prefetcher: archive.Prefetcher, request: CutoverRequest
    ) -> MigrationResult:
        self._emit(State.CUTTING_OVER, phase="cutting over: replaying the last WAL")
        final = parse_lsn(request.final_lsn) if request.final_lsn else None
        if final is None and request.source_dsn:
            final = _close_source_segment(request.source_dsn)
        settled_since: float | None = None
        last: int | None = None
        while True:
            st = target.status()
            if st.position is not None:
                prefetcher.advance(st.position)
            stats = prefetcher.stats()
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
            self._report_replay(st, stats, _Rate(), False)
            time.sleep(0.02)
        self._emit(phase="cutting over: promoting the target")
        promoted = target.promote()
        check = target.verify_writable()
        downtime = time.time() - request.requested_at
        clear_cutover(self.spec.target)
        return self._finished(
            target,
            final_lsn=format_lsn(final) if final is not None else None,
            downtime=downtime,
            promoted_at=promoted.current_lsn or check.lsn,
        )

    def _finished(
        self,
        target: PostgresTarget,
        final_lsn: str | None = None,
        downtime: float | None = None,
        promoted_at: int | None = None,
    ) -> MigrationResult:
        path = self.spec.target / RESULT_FILE
        if downtime is None and path.exists():
            # A rerun after the migration finished: report what it measured then.
            return MigrationResult(**json.loads(path.read_text()))
        replayed, replay_seconds = 0, 0.0
        if self._replay_started and promoted_at is not None:
            replayed = max(0, promoted_at - self._replay_started[1])
            replay_seconds = time.monotonic() - self._replay_started[0]
        result = MigrationResult(
            state=State.SUCCEEDED.value,
            target=str(self.spec.target),
            port=target.record.port,
            system_identifier=str(target.record.system_identifier),
            restored_bytes=self._restored[0],
            restore_seconds=round(self._restored[1], 3),
            replayed_bytes=replayed,
            replay_seconds=round(replay_seconds, 3),
            final_lsn=final_lsn,
            downtime_seconds=round(downtime, 3) if downtime is not None else None,
            promoted_at_lsn=format_lsn(promoted_at) if promoted_at is not None else None,
        )
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result.to_json(), indent=2) + "\n")
        os.replace(tmp, path)
        self._emit(State.SUCCEEDED if self.state is State.CUTTING_OVER else None, phase="done")
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
