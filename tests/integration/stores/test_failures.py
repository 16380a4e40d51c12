"""What goes wrong with real servers: a server that stops in the middle of a read and comes back, wrong
credentials, a missing container or share, a SAS without list permission, keys that try to leave."""

from __future__ import annotations

import threading

import pytest
from typer.testing import CliRunner

from ferry.cli.main import app
from ferry.core.errors import ObjectNotFound
from ferry.stores.base import WritableStore, iter_range
from ferry.stores.errors import AccessDenied, InvalidKey, StoreNotFound
from ferry.stores.registry import open_store
from ferry.stores.testing import big_object
from tests.integration.stores.conftest import container_sas, new_container, new_smb_folder
from tests.integration.stores.servers import Azurite, Samba, Server

runner = CliRunner()
BIG = big_object(48 << 20)  # more than the sockets hold in flight: the server dies mid-body


def _writable(url: str) -> WritableStore:
    store = open_store(url)
    assert isinstance(store, WritableStore)
    return store


def _read_across_a_restart(store: WritableStore, server: Server) -> None:
    """Read the first piece, stop the server, start it again a moment later while the reader retries."""
    store.put_new("big.bin", BIG)
    reader = store.open("big.bin")
    pieces = iter_range(reader, 0, len(BIG))
    first = next(pieces)
    server.stop()
    restart = threading.Timer(1.0, server.start)
    restart.start()
    try:
        rest = b"".join(pieces)
    finally:
        restart.join()
        reader.close()
    assert first + rest == BIG


def test_azure_read_resumes_after_the_server_restarts(azurite: Azurite) -> None:
    url, _ = new_container(azurite)
    _read_across_a_restart(_writable(url), azurite)


def test_smb_read_resumes_after_the_server_restarts(smb_env: Samba) -> None:
    _read_across_a_restart(_writable(smb_env.url(new_smb_folder(smb_env))), smb_env)


def _cli(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.usefixtures("fast_retries")
def test_wrong_account_key_is_a_clear_error_and_nothing_starts(
    azure_env: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, container = new_container(azure_env)
    monkeypatch.setenv("AZURE_STORAGE_KEY", "d3JvbmcgYWNjb3VudCBrZXkgZm9yIHRoZSB0ZXN0cw==")
    code, out, err = _cli("scan", f"az://devstoreaccount1/{container}", "--json")
    assert code == 2 and out == ""
    assert "refused" in err and "AZURE_STORAGE_KEY" in err and "hint:" in err
    assert "d3Jvbmcg" not in err
    with pytest.raises(AccessDenied):
        list(open_store(f"az://devstoreaccount1/{container}").iter_objects())


@pytest.mark.usefixtures("fast_retries")
def test_wrong_smb_password(samba: Samba, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_SMB_PASSWORD", "not-the-password")
    code, out, err = _cli("scan", samba.url(), "--json")
    assert code == 2 and out == ""
    assert "rejected the user name or password" in err and "FERRY_SMB_PASSWORD" in err
    assert "not-the-password" not in err
    with pytest.raises(AccessDenied):
        open_store(samba.url()).stat("x")


@pytest.mark.usefixtures("fast_retries")
def test_password_in_the_smb_url_is_never_shown(samba: Samba) -> None:
    url = samba.url().replace("ferrysmb@", "ferrysmb:wrong-secret@")
    code, _, err = _cli("scan", url)
    assert code == 2 and "wrong-secret" not in err and "ferrysmb:***@" in err


@pytest.mark.usefixtures("fast_retries")
def test_missing_container_and_share(azure_env: Azurite, smb_env: Samba) -> None:
    code, _, err = _cli("scan", "az://devstoreaccount1/no-such-container")
    assert code == 2 and "does not exist" in err and "no-such-container" in err
    with pytest.raises(StoreNotFound):
        list(open_store("az://devstoreaccount1/no-such-container").iter_objects())
    url = smb_env.url().replace(f"/{smb_env.share}", "/noshare")
    code, _, err = _cli("scan", url)
    assert code == 2 and "noshare" in err and "does not exist" in err


def test_sas_without_list_permission_or_expired(azurite: Azurite) -> None:
    url, container = new_container(azurite)
    base = url.split("?")[0]
    code, _, err = _cli("scan", f"{base}?{container_sas(container, 'r')}")
    assert code == 2 and "lacks list permission" in err and "hint:" in err
    code, _, err = _cli("scan", f"{base}?{container_sas(container, 'rl', hours=-1)}")
    assert code == 2 and "expired" in err
    assert "sig=***" in err


def test_keys_with_dot_dot_never_leave_the_store(azure_env: Azurite, smb_env: Samba) -> None:
    _, container = new_container(azure_env)
    for url in (f"az://devstoreaccount1/{container}", smb_env.url(new_smb_folder(smb_env))):
        store = _writable(url)
        for key in ("../escape.bak", "a/../../escape.bak", "/etc/passwd"):
            with pytest.raises(InvalidKey):
                store.put_new(key, b"x")
            with pytest.raises(ObjectNotFound):
                store.open(key)
    assert not (smb_env.share_path / "escape.bak").exists()
    code, _, err = _cli("scan", f"az://devstoreaccount1/{container}/../other")
    assert code == 2 and "'..'" in err
