"""The SQL Server corpus uploaded to each store, scanned and planned by the CLI: the same catalog and the
same plan as from the local folder, all but the source location."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ferry.cli.main import app
from ferry.stores.base import WritableStore
from ferry.stores.registry import open_store
from tests.integration.stores.conftest import new_bucket, new_container, new_smb_folder, upload_tree
from tests.integration.stores.servers import AZURITE_KEY, Azurite, Moto, Samba

pytestmark = pytest.mark.corpus
runner = CliRunner()


def _json(*args: str) -> tuple[int, dict[str, Any]]:
    result = runner.invoke(app, list(args))
    assert result.exit_code in (0, 1), result.stderr
    doc = json.loads(result.stdout)
    return result.exit_code, doc


def _same_as_local(corpus: Path, url: str) -> None:
    for command in ("scan", "plan"):
        code_local, local = _json(command, str(corpus), "--json")
        code_remote, remote = _json(command, url, "--json")
        assert code_remote == code_local
        assert "***" not in json.dumps(local)
        local.pop("source"), remote.pop("source")
        assert remote == local, f"{command} differs between the local folder and {url}"


def _upload(url: str, corpus: Path) -> None:
    store = open_store(url)
    assert isinstance(store, WritableStore)
    assert upload_tree(store.put_new, corpus) > 50


def test_azure_blob_url_with_sas(azurite: Azurite, corpus: Path) -> None:
    url, container = new_container(azurite)
    _upload(url.replace(f"/{container}?", f"/{container}/corpus?"), corpus)
    read_only = url.split("?")[0] + "/corpus?" + _read_list_sas(container)
    _same_as_local(corpus, read_only)
    # The SAS never shows: not in the JSON's source, not on stderr.
    result = runner.invoke(app, ["scan", read_only, "--json"])
    source = json.loads(result.stdout)["source"]
    assert (
        "sig=***" in source
        and _read_list_sas(container).split("sig=")[1] not in result.stdout + result.stderr
    )


def _read_list_sas(container: str) -> str:
    from tests.integration.stores.conftest import container_sas

    return container_sas(container, "rl")


def test_az_url_with_account_key_from_the_environment(azure_env: Azurite, corpus: Path) -> None:
    _, container = new_container(azure_env)
    url = f"az://devstoreaccount1/{container}/backups/sql"
    _upload(url, corpus)
    _same_as_local(corpus, url)
    assert AZURITE_KEY not in runner.invoke(app, ["scan", url]).stderr


def test_smb_share(smb_env: Samba, corpus: Path) -> None:
    folder = new_smb_folder(smb_env)
    url = smb_env.url(folder)
    _upload(url, corpus)
    _same_as_local(corpus, url)


def test_s3_bucket(s3_env: Moto, corpus: Path) -> None:
    bucket = new_bucket(s3_env)
    url = f"s3://{bucket}/corpus"
    _upload(url, corpus)
    _same_as_local(corpus, url)


def test_inspect_one_blob(azure_env: Azurite, corpus: Path) -> None:
    _, container = new_container(azure_env)
    local = corpus / "sql2008-backups" / "db1" / "DIFF" / "SQL2008_db1_DIFF_20170518_041819.bak"
    url = f"az://devstoreaccount1/{container}/db1 diff.bak"
    store = open_store(f"az://devstoreaccount1/{container}")
    assert isinstance(store, WritableStore)
    store.put_new("db1 diff.bak", local.read_bytes())
    want = runner.invoke(app, ["inspect", str(local), "--json"])
    got = runner.invoke(app, ["inspect", url, "--json"])
    assert got.exit_code == 0, got.stderr
    [w], [g] = json.loads(want.stdout), json.loads(got.stdout)
    assert g.pop("path") == url.replace(" ", "%20") and w.pop("path") == str(local)
    assert g == w
