"""A SQL Server restore model with a backup store beside it, for migration tests.

The store is a folder of corpus backup files copied into the test's folder; the model sees it at
`/store` (a link inside its file system), so migrations run with `--backup-path-as STORE=/store`, the
way a real target sees a share under another name. `FERRY_MSSQL_PASSWORD` and `FERRY_HOME` point at the
model's `sa` login and the test's folder.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from ferry.core.migration import MigrationStatus, State
from ferry.engines.base import CutoverRequest, MigrationJob, ReplaySettings, TargetSpec
from ferry.pipeline.migrate import Migration, Outcome
from tests.conftest import corpus_root
from tests.mssql_model.client import ModelClient
from tests.mssql_model.server import ModelServer
from tests.mssql_model.testing import PASSWORDS, connect, start_model

RTC_FULL = ["RestoreTimeClean.bak", "RestoreTimeClean2.bak"]
RTC_LOGS = ["RestoreTimeClean2_1.trn", "RestoreTimeClean2_2.trn", "RestoreTimeClean2_3.trn"]
DB = "RestoreTimeClean"


def corpus() -> Path:
    root = corpus_root()
    if root is None:
        pytest.skip("SQL Server backup corpus not found: set FERRY_SQLSERVER_CORPUS")
    return root


@dataclass
class Recorder:
    """Every status a migration reported, and the states it went through."""

    statuses: list[MigrationStatus] = field(default_factory=list)
    states: list[State] = field(default_factory=list)

    def __call__(self, status: MigrationStatus) -> None:
        self.statuses.append(status)
        if not self.states or self.states[-1] is not status.state:
            self.states.append(status.state)

    @property
    def last(self) -> MigrationStatus:
        return self.statuses[-1]


@dataclass
class Rig:
    server: ModelServer
    state: Path
    store: Path
    home: Path

    @property
    def url(self) -> str:
        return f"mssql://sa@127.0.0.1:{self.server.port}"

    @property
    def model(self) -> ModelClient:
        return ModelClient(self.state)

    def add(self, *names: str, folder: str = "RestoreTimeClean") -> None:
        for name in names:
            shutil.copy2(corpus() / folder / name, self.store / name)

    def job(self, online: bool = False, url: str | None = None, **options: Any) -> MigrationJob:
        maps = options.pop("backup_path_as", [f"{self.store}=/store"])
        job_fields = {k: options.pop(k) for k in ("database", "target_database", "last_backup", "stop_at")
                      if k in options}  # fmt: skip
        return MigrationJob(
            id="t",
            source=str(self.store),
            target=TargetSpec("model", "sqlserver", url or self.url, options={"poll_seconds": 0.2}),
            online=online,
            replay=ReplaySettings(blocked_after=options.pop("blocked_after", 5.0), ready_lag=1),
            options={"backup_path_as": maps, **options},
            **job_fields,
        )

    def run(
        self, job: MigrationJob, cutover: Callable[[], CutoverRequest | None] | None = None
    ) -> tuple[Outcome, Recorder]:
        rec = Recorder()
        return Migration(job, rec, cutover or (lambda: None)).run(), rec

    def connect(self, user: str = "sa", **options: Any) -> Any:
        return connect(self.server, user, **options)

    def restore_online(self, name: str = DB) -> None:
        """A database of that name, ONLINE, restored straight from the corpus (not by Ferry)."""
        with self.connect() as conn:
            conn.cursor().execute(
                f"RESTORE DATABASE [{name}] FROM DISK = N'/store/RestoreTimeClean.bak' WITH "
                f"MOVE N'RestoreTimeClean' TO N'/var/opt/mssql/data/{name}_other.mdf', "
                f"MOVE N'RestoreTimeClean_log' TO N'/var/opt/mssql/data/{name}_other.ldf'"
            )


def make_rig(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: Sequence[str] = (*RTC_FULL, *RTC_LOGS),
    **model: Any,
) -> Iterator[Rig]:  # fmt: skip
    corpus()
    state = tmp_path / "state"
    store = tmp_path / "store"
    store.mkdir()
    server = start_model(state, **model)
    os.symlink(store, state / "fs" / "store")
    monkeypatch.setenv("FERRY_MSSQL_PASSWORD", PASSWORDS["sa"])
    monkeypatch.setenv("FERRY_HOME", str(tmp_path / "home"))
    rig = Rig(server, state, store, tmp_path / "home")
    rig.add(*files)
    try:
        yield rig
    finally:
        server.stop()


def later(seconds: float, action: Callable[[], None]) -> threading.Timer:
    timer = threading.Timer(seconds, action)
    timer.daemon = True
    timer.start()
    return timer


def with_options(job: MigrationJob, **options: Any) -> MigrationJob:
    return replace(job, options={**dict(job.options), **options})
