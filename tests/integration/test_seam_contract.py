"""The execution seam's contract, for every engine: each step run twice is safe (the second resumes or
skips, asking the target where it stands), and `status` reads the target. PostgreSQL runs on real servers
(tests/integration/pgsource.py); SQL Server on the restore model (tests/mssql_model)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ferry.core.migration import MigrationStatus, State
from ferry.engines.base import CutoverRequest, MigrationJob, SourceFiles
from ferry.engines.registry import migrator
from ferry.pipeline.migrate import read_source
from tests.integration.mssqlrig import make_rig


@dataclass
class Ctx:
    job: MigrationJob
    reports: list[MigrationStatus]
    notes: list[str]

    def report(self, status: MigrationStatus) -> None:
        self.reports.append(status)

    def check(self) -> None:
        pass

    def note(self, message: str) -> None:
        self.notes.append(message)

    def rescan(self) -> SourceFiles:
        return read_source(self.job.source, self.job.target.engine)


class Offline:
    wake: threading.Event | None = None

    def request(self) -> CutoverRequest | None:
        return None

    def taking_over(self) -> bool:
        return False


@pytest.fixture(params=["postgres", "sqlserver"])
def job(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[MigrationJob]:
    if request.param == "sqlserver":
        for rig in make_rig(tmp_path, monkeypatch):
            yield rig.job(online=False)
        return
    from ferry.engines.postgres.archive import ferry_command
    from ferry.engines.postgres.migration import MigrationSpec
    from tests.integration.pgsource import make_root, require_postgres, start_source

    require_postgres()
    with make_root("ferry-seam-") as root:
        store = root / "store"
        push = " ".join([*ferry_command(), "wal-push", "%p", str(store)])
        src = start_source(root / "src", store, archive_command=push)
        try:
            src.write(2000)
            src.base_backup("base", compress="lz4", wal_method="none")
            src.write(2000)
            src.switch()
            src.stop()
            yield MigrationSpec(str(store), root / "target", online=False).job()
        finally:
            src.stop()
            _stop_pg(root / "target")


def _stop_pg(folder: Path) -> None:
    from ferry.engines.postgres.target import PostgresTarget

    if (folder / "ferry-target.json").exists():
        target = PostgresTarget.open(folder)
        if target.cluster.is_running():
            target.stop("fast")


def test_every_step_twice(job: MigrationJob) -> None:
    steps = migrator(job.target.engine)
    ctx = Ctx(job, [], [])
    files = read_source(job.source, steps.engine)

    first, report = steps.prepare(job, files, ctx)
    again, _ = steps.prepare(job, files, ctx)
    assert first.engine == again.engine == job.target.engine and report.message
    assert first.phase == again.phase == "new" and first.size > 0
    assert dict(first.state) == dict(again.state)  # reopened, not made anew

    done = steps.restore_full(job, first, ctx)
    assert not done.skipped
    assert steps.restore_full(job, first, ctx).skipped
    assert steps.status(job, first).state is State.RESTORING_LOGS
    prepared, _ = steps.prepare(job, files, ctx)
    assert prepared.phase == "restored"

    followed = steps.follow_logs(job, prepared, Offline(), ctx)
    assert followed.request.requested_at > 0
    steps.follow_logs(job, prepared, Offline(), ctx)  # at the end already: returns, applies nothing new

    request = CutoverRequest(time.time())
    cut = steps.cut_over(job, prepared, request, ctx)
    assert not cut.report.skipped and cut.downtime_seconds is not None
    again_cut = steps.cut_over(job, prepared, request, ctx)
    assert again_cut.report.skipped and again_cut.result == cut.result
    assert steps.status(job, prepared).state is State.SUCCEEDED
    recovered, _ = steps.prepare(job, files, ctx)
    assert recovered.phase == "recovered"
    if job.target.engine == "sqlserver":
        assert cut.result["lsn_proof"]
