"""`ferry serve` with a SQL Server target (the restore model, in this process) beside a PostgreSQL one, for
the service's SQL Server tests: stores built from corpus files, the CLI against the running API, and the
model's own count of restores.

The model sees the test's store folder at `/store` (a link inside its file system), so the service runs with
`--backup-path-as STORE=/store`, the way a real instance sees a share under another name.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, corpus_root
from tests.integration.test_service_lifecycle import Served, start_serve, stop_serve, token_from
from tests.mssql_model.client import ModelClient
from tests.mssql_model.server import ModelServer
from tests.mssql_model.testing import PASSWORDS, start_model

httpx = pytest.importorskip("httpx")
pytest.importorskip("temporalio")

RTC = "RestoreTimeClean"
RTC_BASE = ["RestoreTimeClean.bak", "RestoreTimeClean2.bak"]
RTC_LOGS = ["RestoreTimeClean2_1.trn", "RestoreTimeClean2_2.trn", "RestoreTimeClean2_3.trn"]
RTC_LAST_LSN = "25000000022000001"  # LastLSN of RestoreTimeClean2_3.trn
SQL2008 = "sql2008-backups"  # databases of one server: full and differentials (their logs add nothing)
STOPAT = "sql2008-backups/StopAt"  # a full backup and four logs that each follow the one before
FINAL = {"Succeeded", "Failed", "Canceled"}


def corpus() -> Path:
    root = corpus_root()
    if root is None:
        pytest.skip("SQL Server backup corpus not found: set FERRY_SQLSERVER_CORPUS")
    return root


def sql2008_files(database: str, kinds: tuple[str, ...] = ("FULL", "DIFF", "LOG")) -> list[Path]:
    """A database's files in the sql2008 folder of the corpus, oldest first."""
    folder = corpus() / SQL2008 / database
    files = (p for p in folder.rglob("*") if p.is_file() and any(f"_{k}_" in p.name for k in kinds))
    return sorted(files, key=lambda p: p.name)


@dataclass
class MssqlServed:
    """A running `ferry serve` with targets `ms` (SQL Server: the model) and `pg` (PostgreSQL)."""

    served: Served
    model: ModelServer
    state: Path  # the model's state folder
    stores: Path  # stores are folders under it, seen by the model at /store/...
    serve_args: list[str]

    @property
    def api(self) -> Any:
        return self.served.api

    @property
    def counts(self) -> ModelClient:
        return ModelClient(self.state)

    def store(self, name: str) -> Path:
        path = self.stores / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def add(self, store: Path, *files: Path | str, folder: str = RTC) -> None:
        """Copy corpus files into a store (by path, or by name from the corpus folder `folder`)."""
        for f in files:
            src = f if isinstance(f, Path) else corpus() / folder / f
            shutil.copy2(src, store / src.name)

    def cli(self, *args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
        """`ferry migrations ARGS` against this service."""
        env = {
            **os.environ,
            "FERRY_API": f"http://127.0.0.1:{self.served.port}",
            "FERRY_TOKEN": self.served.token,
        }
        done = subprocess.run([sys.executable, "-m", "ferry", "migrations", *args], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        if check is not None:
            assert done.returncode == check, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done

    def ids(self) -> set[str]:
        return {m["id"] for m in self.api.get("/api/v1/migrations").json()["migrations"]}

    def wait(self, ids: list[str], states: set[str], timeout: float = 120) -> list[dict[str, Any]]:
        return self.served.wait(ids, states, timeout)

    def until(
        self, mid: str, what: Callable[[dict[str, Any]], bool], why: str, timeout: float = 60
    ) -> dict[str, Any]:
        """Polls the migration until `what(record)`; fails naming `why` with the last record."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.served.get(mid)
            if what(record):
                return record
            if record["state"] in FINAL or time.monotonic() > deadline:
                pytest.fail(f"{why}: not reached; {record['state']} {record['error']}\n{record['status']}")
            time.sleep(0.2)

    def restart(self) -> None:
        """Start `ferry serve` again on the same data folder and ports (after a kill)."""
        s = self.served
        with pytest.MonkeyPatch.context() as env:
            env.setenv("FERRY_MSSQL_PASSWORD", PASSWORDS["sa"])
            proc, _, _, out = start_serve(
                s.data, *self.serve_args, port=s.port, temporal_port=s.temporal_port
            )
        s.proc, s.out = proc, out


def files_by_status(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every file the migration's status lists, by name."""
    sets = record["status"].get("details", {}).get("backup_sets", [])
    return {f["name"]: {**f, "set": s} for s in sets for f in s["files"]}


def file_status(record: dict[str, Any], name: str) -> str | None:
    row = files_by_status(record).get(name)
    return None if row is None else str(row["status"])


def once_each(counts: ModelClient, database: str, expected: int) -> None:
    """Every backup set of `database` restored exactly once, as the model's restore history counts."""
    got = counts.restore_counts(database)
    assert len(got) == expected and set(got.values()) == {1}, got


def serve_with_model(root: Path, pg_root: Path | None = None, concurrency: int = 4) -> Iterator[MssqlServed]:
    """Starts the model and `ferry serve` (targets `ms` and, with `pg_root`, `pg`); stops both after."""
    corpus()
    state = root / "model"
    model = start_model(state, restore_mbps=50.0)
    stores = root / "stores"
    stores.mkdir()
    os.symlink(stores, state / "fs" / "store")
    args = ["--target", f"ms=mssql://sa@127.0.0.1:{model.port}:{concurrency}",
            "--backup-path-as", f"{stores}=/store", "--blocked-after", "3"]  # fmt: skip
    if pg_root is not None:
        args += ["--target", f"pg={pg_root}:2"]
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("FERRY_MSSQL_PASSWORD", PASSWORDS["sa"])
            proc, port, tport, out = start_serve(root / "data", *args)
        token = token_from(out.read_text())
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"},
                           timeout=30)  # fmt: skip
        served = Served(root / "data", port, tport, token, proc, out, api)
        try:
            yield MssqlServed(served, model, state, stores, args)
        finally:
            api.close()
            stop_serve(served.proc)
    finally:
        model.stop()


def postgres_usable() -> bool:
    """Whether a PostgreSQL target can run here (its binaries, its OS user)."""
    from tests.integration.pgsource import require_postgres

    try:
        require_postgres()
    except pytest.skip.Exception:
        return False
    return True
