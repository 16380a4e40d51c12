"""Every store by every SQL Server version and platform, through `ferry migrate` and `ferry cutover` (and
`ferry script`): each cell migrates online and cuts over with the LSN proof, or is refused before anything
touches the target, with the finding that says why and a hint. No secret shows in any output. The targets
are the restore model playing each version and platform (tests/mssql_model/README.md); the stores are real
(Azurite, Samba, moto). The service's cells are in test_mssql_matrix_service.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, corpus_root
from tests.integration.stores.mssqlmatrix import (
    DB,
    FILES,
    LAST_BACKUP,
    LAST_LSN,
    SOURCES,
    VERSIONS,
    Source,
    Version,
    environment,
    leaked,
    link_store,
    make_source,
    model_options,
    refusal,
)
from tests.mssql_model.client import ModelClient
from tests.mssql_model.testing import PASSWORDS, start_model


class Servers:
    """The store servers a cell needs, started (session-wide) only when it asks for them."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self.request = request

    def __getattr__(self, name: str) -> Any:
        if name in ("azurite", "samba", "moto"):
            return self.request.getfixturevalue(name)
        raise AttributeError(name)


def corpus_files() -> list[Path]:
    root = corpus_root()
    if root is None:
        pytest.skip("SQL Server backup corpus not found: set FERRY_SQLSERVER_CORPUS")
    return [root / "RestoreTimeClean" / name for name in FILES]


def _ferry(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    out = log.open("w")
    return subprocess.Popen([sys.executable, "-m", "ferry", *args], stdout=out, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=REPO)  # fmt: skip


def _wait(what: Callable[[], bool], proc: subprocess.Popen[str], log: Path, why: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if what():
            return
        if proc.poll() is not None:
            raise AssertionError(f"ferry exited {proc.returncode} before {why}:\n{log.read_text()}")
        time.sleep(0.05)
    raise AssertionError(f"not reached in 120 s: {why}\n{log.read_text()}")


@pytest.mark.parametrize("target", VERSIONS, ids=lambda v: v.name)
@pytest.mark.parametrize("kind", SOURCES)
def test_migrate_and_cutover(
    kind: str, target: Version, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    servers = Servers(request)
    store = tmp_path / "store"
    store.mkdir()
    source = make_source(kind, corpus_files(), store, target, servers)
    state = tmp_path / "state"
    model = start_model(state, **model_options(kind, target, servers.samba.port if kind == "smb" else None))
    link_store(state, store, target)
    env = environment(
        {**os.environ, "FERRY_MSSQL_PASSWORD": PASSWORDS["sa"], "FERRY_HOME": str(tmp_path)}, source
    )
    url = f"mssql://sa@127.0.0.1:{model.port}"
    maps = [a for m in source.maps for a in ("--backup-path-as", m)]
    log = tmp_path / "migrate.log"
    proc = _ferry("migrate", source.location, "--database", DB, "--to", url, *maps, env=env, log=log)
    said: list[str] = []
    counts = ModelClient(state)
    try:
        code = refusal(kind, target)
        if code is not None:
            assert proc.wait(timeout=120) != 0, log.read_text()
            out = log.read_text()
            assert f"[{code}]" in out and "hint" in out.lower(), out
            assert counts.database(DB) is None and not counts.restore_counts(DB), "refused, yet restored"
        else:
            _wait(lambda: "ReadyForCutover" in log.read_text(), proc, log, "ready for cutover")
            asked = ["cutover", url, "--database", DB, "--last-backup", LAST_BACKUP]
            cut = subprocess.run(
                [sys.executable, "-m", "ferry", *asked],
                capture_output=True, text=True, timeout=60, cwd=REPO, env=env,
            )  # fmt: skip
            said.append(cut.stdout + cut.stderr)
            assert cut.returncode == 0, said[-1]
            assert proc.wait(timeout=120) == 0, log.read_text()
            out = log.read_text()
            assert "LSN proof" in out and "holds" in out and LAST_LSN in out, out
            assert counts.db_state(DB) == "ONLINE"
            got = counts.restore_counts(DB)
            assert len(got) == len(FILES) and set(got.values()) == {1}, got
        said.append(log.read_text())
        said.append(_script(source, env))
        assert not leaked("\n".join(said), source.secrets), "a secret shows in Ferry's output"
    finally:
        if proc.poll() is None:
            proc.kill()
        model.stop()


def _script(source: Source, env: dict[str, str]) -> str:
    """`ferry script` for the cell's store: URL devices carry no query string, and no secret shows."""
    maps = [a for m in source.maps for a in ("--backup-path-as", m)]
    done = subprocess.run([sys.executable, "-m", "ferry", "script", source.location, "--database", DB, *maps],
                          capture_output=True, text=True, timeout=60, cwd=REPO, env=env)  # fmt: skip
    text = done.stdout + done.stderr
    assert done.returncode == 0, text
    for device in re.findall(r"URL = N'([^']*)'", text):
        assert "?" not in device and "sig=" not in device, device
    return text
