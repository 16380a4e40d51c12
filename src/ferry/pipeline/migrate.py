"""Running one migration in the foreground (`ferry migrate`): the execution seam's steps in order, for any
engine, in this process. The service runs the same steps as a durable workflow (service/workflows.py).

    files = read_source(job.source, engine)       scan the source's store (engines never scan)
    prepared = migrator.prepare(job, files)       validate, preflight, make or reopen the target's place
    migrator.restore_full(job, prepared)          unless the target holds it already
    done = migrator.follow_logs(job, prepared)    until the cutover is asked for (online) or the logs end
    migrator.cut_over(job, prepared, request)     apply the rest, bring the target online, prove it

Killed at any point, running it again resumes: every step asks the target where it stands.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ferry.core.migration import AFTER_CUTOVER, MigrationStatus, State, StatusReporter
from ferry.engines.base import CutoverRequest, MigrationJob, SourceFiles
from ferry.engines.registry import engine, migrator
from ferry.pipeline.discover import scan
from ferry.stores.registry import open_location


def read_source(location: str, engine_name: str) -> SourceFiles:
    """Scan `location` with one engine's reader: what its migrator's `prepare` needs."""
    store, prefix = open_location(location)
    result = scan(store, [engine(engine_name)], prefix)
    return SourceFiles(location, tuple(result.sets_for(engine_name)), tuple(result.findings))


@dataclass(frozen=True)
class Outcome:
    """A finished migration: its state and the engine's result (figures, the proof of the cutover)."""

    state: str
    downtime_seconds: float | None
    result: Mapping[str, Any] = field(default_factory=dict)


class HasJob(Protocol):
    """An engine's own spec of a foreground migration (PostgreSQL's MigrationSpec) that names its job."""

    def job(self) -> MigrationJob: ...


class _Foreground:
    """The steps' context in the foreground: reports go to the view, nothing cancels a step (Ctrl-C
    interrupts the process, and running again resumes), notes become phases."""

    def __init__(self, reporter: StatusReporter, job: MigrationJob, engine_name: str) -> None:
        self.reporter = reporter
        self.job = job
        self.engine_name = engine_name

    def rescan(self) -> SourceFiles:
        return read_source(self.job.source, self.engine_name)

    def report(self, status: MigrationStatus) -> None:
        self.reporter.status = status
        self.reporter.sink(status)

    def check(self) -> None:
        pass

    def note(self, message: str) -> None:
        self.reporter.emit(phase=message)


class _Ask:
    """Until: the cutover request comes from `ask` (a key, a request file); the cutover always follows
    in this process, so a running replay is handed over to it."""

    def __init__(self, ask: Callable[[], CutoverRequest | None]) -> None:
        self.ask = ask

    @property
    def wake(self) -> threading.Event | None:
        return None

    def request(self) -> CutoverRequest | None:
        return self.ask()

    def taking_over(self) -> bool:
        return True


class Migration:
    """One source onto one target in the foreground. `report` receives every status change; `cutover` is
    polled for a request (online) and returns one once it was made."""

    def __init__(
        self,
        spec: MigrationJob | HasJob,
        report: Callable[[MigrationStatus], None],
        cutover: Callable[[], CutoverRequest | None],
    ) -> None:
        self.job = spec if isinstance(spec, MigrationJob) else spec.job()
        self.reporter = StatusReporter(report)
        self.cutover = cutover

    @property
    def state(self) -> State:
        return self.reporter.state

    @property
    def status(self) -> MigrationStatus:
        return self.reporter.status

    def run(self) -> Outcome:
        job, rep = self.job, self.reporter
        steps = migrator(job.target.engine)
        ctx = _Foreground(rep, job, steps.engine)
        rep.emit(State.VALIDATING, phase="reading the source's backups")
        files = read_source(job.source, steps.engine)
        prepared, _ = steps.prepare(job, files, ctx)
        if prepared.phase == "recovered":  # finished before: the result recorded then
            done = steps.cut_over(job, prepared, CutoverRequest(0.0), ctx)
            return Outcome(State.SUCCEEDED.value, done.downtime_seconds, done.result)
        if prepared.needs_full:
            rep.emit(State.RESTORING_FULL, phase="restoring the full backup", bytes_total=prepared.size)
            steps.restore_full(job, prepared, ctx)
        rep.emit(State.RESTORING_LOGS, phase="starting the target server", current_file=None)
        ask = self.cutover if job.online else (lambda: None)
        request = steps.follow_logs(job, prepared, _Ask(ask), ctx).request
        done = steps.cut_over(job, prepared, request, ctx)
        rep.emit(State.SUCCEEDED, phase="done", **AFTER_CUTOVER)
        return Outcome(State.SUCCEEDED.value, done.downtime_seconds, done.result)
