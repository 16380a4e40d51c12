"""Schemathesis against the live OpenAPI document of a running `ferry serve`: every operation (migrations,
events, cutover, targets, scans), with ids of real migrations (schemathesis_hooks.py) as well as generated
ones, every phase and every check schemathesis runs by default (schemathesis.toml says where and why a few
are left out). No answer may be a 5xx or a status the document does not list, and a body the schema allows
must not be refused for its form. The service has a SQL Server target (the restore model) beside a
PostgreSQL one, and a SQL Server migration that restores and waits for its cutover, so that its per-file
status is checked against the schema too. About two minutes on two busy cores."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import corpus_root
from tests.integration.test_service_lifecycle import start_serve, stop_serve, token_from
from tests.mssql_model.testing import PASSWORDS, start_model

httpx = pytest.importorskip("httpx")
pytest.importorskip("schemathesis")

REPO = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).with_name("schemathesis.toml")
EXAMPLES = 30  # per operation and phase


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("schemathesis")
    model = start_model(root / "model")
    store = make_mssql_store(root, root / "model")
    # A target no agent serves: migrations created by the run start their workflows and wait (cheap),
    # and those named below stay there for the run to poke at. Scans of what the run generates (`/`, a
    # URL) are stopped after a few seconds.
    ms = f"ms=mssql://sa@127.0.0.1:{model.port}:2"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FERRY_MSSQL_PASSWORD", PASSWORDS["sa"])
        args = ["--target", "remote", "--target", ms, "--backup-path-as", f"{store}=/store"]
        proc, port, _, out = start_serve(root / "data", *args, "--scan-timeout", "5")
    token = token_from(out.read_text())
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}
        ) as api:
            pg = [{"source": f"/backups/pg/db{i}", "target": "remote", "name": f"db{i}"} for i in range(3)]
            mssql = {"source": str(store), "target": "ms", "database": "RestoreTimeClean", "name": "rtc"}
            made = api.post("/api/v1/migrations", json=[*pg, mssql])
            assert made.status_code == 201, made.text
            ids = [m["id"] for m in made.json()["migrations"]]
        refs = [*ids, "db0", "db1", "rtc"]
        yield {"root": root, "port": port, "token": token, "refs": refs, "out": out, "store": store}
    finally:
        stop_serve(proc)
        model.stop()


def make_mssql_store(root: Path, model_state: Path) -> Path:
    """A store of one SQL Server database (full, differential, a log), seen by the model at /store."""
    corpus = corpus_root()
    if corpus is None:
        pytest.skip("SQL Server backup corpus not found: set FERRY_SQLSERVER_CORPUS")
    store = root / "store"
    store.mkdir()
    for name in ("RestoreTimeClean.bak", "RestoreTimeClean2.bak", "RestoreTimeClean2_1.trn"):
        shutil.copy2(corpus / "RestoreTimeClean" / name, store / name)
    os.symlink(store, model_state / "fs" / "store")
    return store


def test_no_5xx_and_no_undocumented_answer(served: dict[str, Any]) -> None:
    st = Path(sys.executable).with_name("st")
    env = {**os.environ, "FERRY_ST_IDS": ",".join(served["refs"]), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [str(st), "--config-file", str(CONFIG), "run", f"http://127.0.0.1:{served['port']}/openapi.json",
         "-H", f"Authorization: Bearer {served['token']}",
         "--max-examples", str(EXAMPLES), "--workers", "2",
         "--request-timeout", "30", "--generation-database", "none", "--no-color"],
        cwd=served["root"], env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    print(done.stdout[-3000:])
    assert done.returncode == 0, done.stdout[-6000:]
    assert "Selected: 11/11" in done.stdout and "Tested: 11" in done.stdout
    log = served["out"].read_text(errors="replace")
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]
