"""`--backup-path-as` with any store location as LOCAL (az://, a blob URL with a SAS, smb://), the media
password's variable, and the service's parsing of the same mappings: what the target reads, never a
secret kept or shown."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ferry.cli.main import app
from ferry.cli.mssql import SqlMigrateOptions, job_of
from ferry.core.errors import UsageError
from ferry.engines.sqlserver.devices import SourceAccess, TargetView, map_file
from ferry.engines.sqlserver.settings import Settings
from ferry.serve import backup_path_mappings
from ferry.stores.location import parse_location

SAS = "sv=2022-11-02&sp=rl&se=2030-01-01T00%3A00%3A00Z&sr=c&sig=SECRETSIGNATURE%3D"
TO = "mssql://sa@127.0.0.1:1433"


def _options(*maps: str, **over: object) -> SqlMigrateOptions:
    return SqlMigrateOptions("az://acct/bkp", TO, backup_path_as=list(maps), **over)  # type: ignore[arg-type]


def test_an_azure_location_maps_to_what_the_target_reads() -> None:
    job = job_of(_options("az://acct/bkp=https://mirror.blob.core.windows.net/bkp"))
    assert job.options["backup_path_as"] == ["az://acct/bkp=https://mirror.blob.core.windows.net/bkp"]
    s = Settings.of(job)
    src = SourceAccess(parse_location(f"https://acct.blob.core.windows.net/bkp?{SAS}"))
    m = map_file(src, "db/full 1.bak", TargetView(16), s.path_map, "BlockBlob")
    assert m.device.path == "https://mirror.blob.core.windows.net/bkp/db/full%201.bak"
    assert m.credential is not None and m.credential.name == "https://mirror.blob.core.windows.net/bkp"


def test_a_sas_url_as_local_keeps_no_secret(tmp_path: Path) -> None:
    job = job_of(_options(f"https://acct.blob.core.windows.net/bkp?{SAS}=D:\\bkp"))
    (kept,) = job.options["backup_path_as"]
    assert kept == "https://acct.blob.core.windows.net/bkp=D:\\bkp" and "SECRET" not in repr(job)
    m = map_file(
        SourceAccess(parse_location("az://acct/bkp")), "x.bak", TargetView(16), Settings.of(job).path_map
    )
    assert m.device.path == "D:\\bkp\\x.bak" and m.credential is None


def test_local_folders_are_made_absolute_and_smb_maps_to_a_mount(tmp_path: Path, monkeypatch: object) -> None:
    import os

    os.chdir(tmp_path)
    job = job_of(_options("backups=\\\\fs\\bk", "smb://files/share=/mnt/share"))
    assert job.options["backup_path_as"] == [
        f"{tmp_path.resolve()}/backups=\\\\fs\\bk",
        "smb://files/share=/mnt/share",
    ]
    assert backup_path_mappings(["backups=/x", "az://acct/bkp=/y"]) == [
        f"{tmp_path.resolve()}/backups=/x",
        "az://acct/bkp=/y",
    ]


def test_a_target_url_with_a_query_string_is_refused_without_showing_it() -> None:
    with pytest.raises(UsageError) as e:
        job_of(_options(f"az://acct/bkp=https://acct.blob.core.windows.net/bkp?{SAS}"))
    assert "query string" in e.value.message and "FERRY_MSSQL_SAS" in e.value.hint
    assert "SECRETSIGNATURE" not in e.value.message + e.value.hint
    with pytest.raises(UsageError) as bad:
        job_of(_options(f"https://acct.blob.core.windows.net/bkp?{SAS}"))
    assert "SECRETSIGNATURE" not in bad.value.message


def test_media_password_from_the_named_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_MSSQL_MEDIA_PASSWORD", "default-pw")
    monkeypatch.setenv("MY_PW", "mine")
    assert Settings.of(job_of(_options())).media_password == "default-pw"
    assert Settings.of(job_of(_options(media_password_env="MY_PW"))).media_password == "mine"
    with pytest.raises(UsageError) as e:
        job_of(_options(media_password_env="hunter2!"))
    assert "hunter2" not in e.value.message + e.value.hint


def test_credential_option_names_the_key_credential() -> None:
    s = Settings.of(job_of(_options(credential="blobkey")))
    assert s.credential == "blobkey"


def test_cli_refuses_a_password_as_the_variable_name() -> None:
    result = CliRunner().invoke(
        app, ["migrate", "az://acct/bkp", "--to", TO, "--media-password-env", "p@ss word"]
    )
    assert result.exit_code == 2 and "p@ss word" not in result.stdout + result.stderr
