"""The store matrix through `ferry serve`: for each SQL Server version and platform, one service with a
target per store (each the restore model playing that version), `ferry migrations create` from every
store, then `cutover --all-ready`. Each cell succeeds with the LSN proof, or is refused (at create, or
failed by its preflight) before anything touches its target, naming the finding; no secret shows in the
API's answers, the CLI's output or the service's log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.integration.stores.mssqlmatrix import (
    DB,
    FILES,
    LAST_LSN,
    SOURCES,
    VERSIONS,
    Source,
    Version,
    leaked,
    link_store,
    make_source,
    model_options,
    refusal,
)
from tests.integration.stores.test_mssql_matrix import Servers, corpus_files
from tests.mssql_model.client import ModelClient
from tests.mssql_model.server import ModelServer
from tests.mssql_model.testing import PASSWORDS, start_model

httpx = pytest.importorskip("httpx")
pytest.importorskip("temporalio")

from tests.integration.test_service_lifecycle import Served, start_serve, stop_serve, token_from  # noqa: E402


def _name(kind: str) -> str:
    return kind.replace("-", "")


def _union(sources: dict[str, Source]) -> dict[str, str]:
    """Every source's variables at once; a variable one source clears and another sets stays set."""
    env: dict[str, str] = {}
    for source in sources.values():
        for key, value in source.env.items():
            if value or key not in env:
                env[key] = value
    return env


@pytest.mark.parametrize("target", VERSIONS, ids=lambda v: v.name)
def test_every_store_through_the_service(
    target: Version, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    servers = Servers(request)
    files = corpus_files()
    stores = tmp_path / "store"
    stores.mkdir()
    sources = {kind: make_source(kind, files, stores, target, servers) for kind in SOURCES}
    models: dict[str, ModelServer] = {}
    try:
        for kind in SOURCES:
            state = tmp_path / f"model-{_name(kind)}"
            smb = servers.samba.port if kind == "smb" else None
            models[kind] = start_model(state, **model_options(kind, target, smb))
            link_store(state, stores, target)
        _run_cells(target, tmp_path, sources, models, monkeypatch)
    finally:
        for model in models.values():
            model.stop()


def _run_cells(
    target: Version,
    root: Path,
    sources: dict[str, Source],
    models: dict[str, ModelServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in _union(sources).items():
        if value:
            monkeypatch.setenv(key, value)
        else:
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("FERRY_MSSQL_PASSWORD", PASSWORDS["sa"])
    args = ["--blocked-after", "3", *(a for m in sources["local"].maps for a in ("--backup-path-as", m))]
    for kind, model in models.items():
        args += ["--target", f"{_name(kind)}=mssql://sa@127.0.0.1:{model.port}:2"]
    proc, port, tport, out = start_serve(root / "data", *args)
    token = token_from(out.read_text())
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"},
                       timeout=30)  # fmt: skip
    served = Served(root / "data", port, tport, token, proc, out, api)
    said: list[str] = []
    try:
        cli = _cli(served, said)
        ids: dict[str, str] = {}
        for kind, source in sources.items():
            done = cli("create", source.location, "--target", _name(kind), "--database", DB, "--json")
            code = refusal(kind, target)
            if done.returncode != 0:
                assert code is not None and f"{code}" in done.stderr, (kind, done.stdout, done.stderr)
                continue
            (made,) = json.loads(done.stdout)["migrations"]
            ids[kind] = made["id"]
        refused = {k for k in ids if refusal(k, target) is not None}
        migrating = [ids[k] for k in ids if k not in refused]
        for kind in refused:
            (record,) = served.wait([ids[kind]], {"Failed"})
            text = json.dumps(record)
            said.append(text)
            assert str(refusal(kind, target)) in text, (kind, record["error"])
        if migrating:
            served.wait(migrating, {"ReadyForCutover"}, timeout=180)
            assert cli("cutover", "--all-ready").returncode == 0, said[-1]
            for record in served.wait(migrating, {"Succeeded"}, timeout=180):
                said.append(json.dumps(record))
                result = record["status"]["result"]
                assert result["lsn_proof"] is True and result["restored_last_lsn"] == LAST_LSN, result
        for kind in models:
            counts = ModelClient(root / f"model-{_name(kind)}")
            if refusal(kind, target) is None:
                assert counts.db_state(DB) == "ONLINE", kind
                got = counts.restore_counts(DB)
                assert len(got) == len(FILES) and set(got.values()) == {1}, (kind, got)
            else:
                assert counts.database(DB) is None and not counts.restore_counts(DB), (
                    f"{kind}: refused, yet restored"
                )
        said.append(out.read_text())
        secrets = [s for source in sources.values() for s in source.secrets]
        assert not leaked("\n".join(said), secrets), "a secret shows in the service's output"
    finally:
        api.close()
        stop_serve(proc)


def _cli(served: Served, said: list[str]) -> Any:
    env = {**os.environ, "FERRY_API": f"http://127.0.0.1:{served.port}", "FERRY_TOKEN": served.token}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "ferry", "migrations", *args], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        said.append(done.stdout + done.stderr)
        return done

    return cli
