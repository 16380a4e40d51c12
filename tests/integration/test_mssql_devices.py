"""How a SQL Server target reads each store, end to end: `ferry migrate` and `ferry script` from Azurite
(`az://` with the account key, and a container URL with a SAS) onto the restore model, which reads the
blobs itself through the credential Ferry puts on it. No output holds a SAS signature or a key.

Page blobs through a key credential, S3 on 2022 and UNC shares on Windows are cells of the store matrix
(tests/integration/stores/test_mssql_matrix.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from typer.testing import CliRunner

from ferry.cli.main import app
from ferry.engines.sqlserver.prepare import MigrationBlocked
from tests.integration.mssqlrig import DB, RTC_FULL, RTC_LOGS, Rig, corpus, make_rig
from tests.integration.stores import conftest as stores
from tests.integration.stores.conftest import container_sas
from tests.integration.stores.servers import AZURITE_ACCOUNT, AZURITE_KEY, Azurite

# The store servers' fixtures, shared with tests/integration/stores.
azurite = stores.azurite
azure_env = stores.azure_env


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    yield from make_rig(tmp_path, monkeypatch, files=())


def _container(server: Azurite, files: list[str], *, prefix: str = "", blob_type: str = "BlockBlob") -> str:
    """A fresh container holding the corpus files under `prefix`; its name."""
    import uuid

    from azure.storage.blob import BlobServiceClient

    name = f"t{uuid.uuid4().hex[:20]}"
    svc = BlobServiceClient(
        server.endpoint, credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY}
    )
    box = svc.create_container(name)
    for f in files:
        data = (corpus() / "RestoreTimeClean" / f).read_bytes()
        box.upload_blob(prefix + f, data, blob_type=blob_type)
    svc.close()
    return name


def _no_secret(*texts: str) -> None:
    for text in texts:
        assert AZURITE_KEY not in text and "sig=" not in text.replace("sig=***", "")


def _job(rig: Rig, source: str, **options: object) -> object:
    job = rig.job(backup_path_as=[], **options)  # the model reads the blobs by their URL
    from dataclasses import replace

    return replace(job, source=source)


def test_migrate_from_az_mints_a_sas_and_creates_the_credential(rig: Rig, azure_env: Azurite) -> None:
    name = _container(azure_env, [*RTC_FULL, *RTC_LOGS], prefix="db 1/")
    outcome, rec = rig.run(_job(rig, f"az://{AZURITE_ACCOUNT}/{name}/db 1"))  # type: ignore[arg-type]
    assert outcome.state == "Succeeded" and outcome.result["lsn_proof"]
    assert rig.model.db_state(DB) == "ONLINE"
    container = f"{azure_env.endpoint}/{name}"
    (cred,) = rig.model.state().credentials
    # Exactly the container's URL; the secret a read and list SAS without its '?'.
    assert cred.name == container and cred.identity == "SHARED ACCESS SIGNATURE"
    assert not cred.secret.startswith("?") and "sp=rl" in cred.secret
    devices = {r["physical_device_name"] for r in rig.model.state().backupmediafamily}
    assert f"{container}/db%201/RestoreTimeClean.bak" in devices
    assert all("?" not in d for d in devices)
    _no_secret(*(repr(s) for s in rec.statuses))


def test_migrate_from_a_sas_url_uses_its_sas(
    rig: Rig, azure_env: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AZURE_STORAGE_KEY")
    name = _container(azure_env, RTC_FULL)
    sas = container_sas(name, "rl")
    url = f"{azure_env.endpoint}/{name}?{sas}"
    outcome, rec = rig.run(_job(rig, url))  # type: ignore[arg-type]
    assert outcome.state == "Succeeded"
    (cred,) = rig.model.state().credentials
    assert cred.name == f"{azure_env.endpoint}/{name}" and cred.secret == sas
    devices = {r["physical_device_name"] for r in rig.model.state().backupmediafamily}
    assert devices == {f"{azure_env.endpoint}/{name}/{f}" for f in RTC_FULL}
    _no_secret(*(repr(s) for s in rec.statuses))


def test_a_refused_sas_is_blocked_and_not_worth_a_rerun(
    rig: Rig, azure_env: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = _container(azure_env, RTC_FULL)
    with rig.connect() as conn:  # a credential whose SAS the blob service refuses
        conn.cursor().execute(
            f"CREATE CREDENTIAL [{azure_env.endpoint}/{name}] WITH IDENTITY = N'SHARED ACCESS SIGNATURE', "
            "SECRET = N'sv=2022-11-02&sp=rl&sig=wrong'"
        )
    # A login that may not alter it (dbcreator only): Ferry cannot put its own SAS there.
    from tests.mssql_model.testing import PASSWORDS

    monkeypatch.setenv("FERRY_MSSQL_PASSWORD", PASSWORDS["creator"])
    url = f"{azure_env.endpoint}/{name}?{container_sas(name, 'rl')}"
    job = _job(rig, url, url=f"mssql://creator@127.0.0.1:{rig.server.port}")
    with pytest.raises(MigrationBlocked) as info:
        rig.run(job)  # type: ignore[arg-type]
    assert not info.value.retryable
    unreadable = [f for f in info.value.findings if f.code == "backup-unreadable"]
    assert len(unreadable) == 2  # the full and the differential backup
    f = unreadable[0]
    assert "running again will not help" in f.hint and "read and list" in f.hint
    _no_secret(f.message, f.hint)
    assert rig.model.history() == []


def test_block_blobs_are_refused_on_sql_server_2014(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, azure_env: Azurite
) -> None:
    for r in make_rig(tmp_path, monkeypatch, files=(), version="12.0.2000.8"):
        name = _container(azure_env, RTC_FULL)
        with pytest.raises(MigrationBlocked) as info:
            r.run(_job(r, f"az://{AZURITE_ACCOUNT}/{name}"))  # type: ignore[arg-type]
        found = {f.code: f for f in info.value.findings}
        assert "block-blobs" in found and "2016 or later" in found["block-blobs"].hint
        assert r.model.history() == [] and r.model.state().credentials == []


def test_script_from_a_sas_url_holds_no_secret(azure_env: Azurite) -> None:
    name = _container(azure_env, [*RTC_FULL, *RTC_LOGS])
    sas = container_sas(name, "rl")
    result = CliRunner().invoke(
        app, ["script", f"{azure_env.endpoint}/{name}?{sas}", "--target-version", "16"]
    )
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    _no_secret(out, result.stderr)
    assert sas not in out and urlsplit(sas).path not in out
    assert f"CREATE CREDENTIAL [{azure_env.endpoint}/{name}]" in out and "$(FERRY_SAS)" in out
    assert "-- :setvar FERRY_SAS" in out
    assert f"FROM URL = N'{azure_env.endpoint}/{name}/RestoreTimeClean.bak'" in out


def test_script_from_az_on_2014_refuses_block_blobs(azure_env: Azurite) -> None:
    name = _container(azure_env, RTC_FULL)
    result = CliRunner().invoke(app, ["script", f"az://{AZURITE_ACCOUNT}/{name}", "--target-version", "12"])
    assert result.exit_code == 1 and result.stdout == ""
    assert "block-blobs" in result.stderr
    _no_secret(result.stderr)


def test_migrate_cli_maps_an_az_location(rig: Rig, azure_env: Azurite) -> None:
    """`--backup-path-as az://...=/store`: the model reads the same files from its own disk."""
    name = _container(azure_env, RTC_FULL)
    rig.add(*RTC_FULL)
    result = CliRunner().invoke(
        app,
        ["migrate", f"az://{AZURITE_ACCOUNT}/{name}", "--to", rig.url, "--offline",
         "--backup-path-as", f"az://{AZURITE_ACCOUNT}/{name}=/store", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stdout + result.stderr
    _no_secret(result.stdout, result.stderr)
    devices = {r["physical_device_name"] for r in rig.model.state().backupmediafamily}
    assert devices == {f"/store/{f}" for f in RTC_FULL}
    assert rig.model.state().credentials == []


def test_migrate_cli_from_a_sas_url_shows_no_signature(rig: Rig, azure_env: Azurite) -> None:
    name = _container(azure_env, RTC_FULL)
    sas = container_sas(name, "rl")
    result = CliRunner().invoke(
        app, ["migrate", f"{azure_env.endpoint}/{name}?{sas}", "--to", rig.url, "--offline", "--json"]
    )
    assert result.exit_code == 0, result.stdout + result.stderr
    _no_secret(result.stdout, result.stderr)
    assert sas not in result.stdout + result.stderr
    (cred,) = rig.model.state().credentials
    assert cred.secret == sas


def _read_check(rig: Rig, job: object) -> list[object]:
    from ferry.engines.sqlserver.driver import SqlServerMigrator
    from ferry.pipeline.migrate import read_source

    files = read_source(job.source, "sqlserver")  # type: ignore[attr-defined]
    return SqlServerMigrator().read_check(job, files)  # type: ignore[arg-type,return-value]


def test_read_check_before_start(rig: Rig, azure_env: Azurite) -> None:
    rig.add(*RTC_FULL)
    assert _read_check(rig, rig.job()) == []  # the model reads /store
    found = _read_check(rig, rig.job(backup_path_as=[]))  # it does not see this machine's folder
    assert [f.code for f in found] == ["backup-unreadable"]  # type: ignore[attr-defined]
    name = _container(azure_env, RTC_FULL)
    first = _read_check(rig, _job(rig, f"az://{AZURITE_ACCOUNT}/{name}"))
    assert [f.code for f in first] == ["credential-at-start"]  # type: ignore[attr-defined]
    assert rig.model.state().credentials == [] and rig.model.history() == []  # nothing changed


def test_read_check_refuses_block_blobs_on_2014(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, azure_env: Azurite
) -> None:
    for r in make_rig(tmp_path, monkeypatch, files=(), version="12.0.2000.8"):
        name = _container(azure_env, RTC_FULL)
        found = _read_check(r, _job(r, f"az://{AZURITE_ACCOUNT}/{name}"))
        assert "block-blobs" in [f.code for f in found]  # type: ignore[attr-defined]
