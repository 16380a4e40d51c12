"""The conformance suite against each real server, through a proxy that drops connections mid-read."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ferry.stores.base import WritableStore
from ferry.stores.registry import open_store
from ferry.stores.testing import check_conformance
from tests.integration.stores.conftest import new_bucket, new_container, new_smb_folder
from tests.integration.stores.servers import Azurite, DropProxy, Moto, Samba


def _writable(url: str) -> WritableStore:
    store = open_store(url)
    assert isinstance(store, WritableStore)
    return store


def test_azure_blob_conformance(azurite: Azurite, proxy_for: Callable[[int], DropProxy]) -> None:
    proxy = proxy_for(azurite.port)
    url, _ = new_container(azurite, port=proxy.port)
    check_conformance(_writable(url), drop_connections=proxy.drop_after)
    assert proxy.drops == 2


def test_azure_blob_conformance_below_a_prefix_with_az_url(azure_env: Azurite) -> None:
    _, container = new_container(azure_env)
    check_conformance(_writable(f"az://devstoreaccount1/{container}/some/prefix"))


def test_smb_conformance(smb_env: Samba, proxy_for: Callable[[int], DropProxy]) -> None:
    proxy = proxy_for(smb_env.port)
    folder = new_smb_folder(smb_env)
    store = _writable(f"smb://ferrysmb@127.0.0.1:{proxy.port}/{smb_env.share}/{folder}")
    check_conformance(
        store,
        empty_folder=lambda p: (smb_env.share_path / folder / p).mkdir(parents=True),
        drop_connections=proxy.drop_after,
    )
    assert proxy.drops == 2


def test_s3_conformance(
    s3_env: Moto, proxy_for: Callable[[int], DropProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = proxy_for(s3_env.port)
    bucket = new_bucket(s3_env)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
    check_conformance(_writable(f"s3://{bucket}/backups"), drop_connections=proxy.drop_after)
    assert proxy.drops == 2
