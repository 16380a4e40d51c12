"""Continuous discovery on the real servers: a new backup reaches the next poll, once, on every store,
and listings and second looks agree on what an unchanged object is."""

from __future__ import annotations

from ferry.pipeline.watch import Watcher
from ferry.stores.base import WritableStore
from ferry.stores.registry import open_store
from tests.integration.stores.conftest import new_bucket, new_container, new_smb_folder
from tests.integration.stores.servers import Azurite, Moto, Samba


def _exercise(store: WritableStore) -> None:
    watcher = Watcher(store, sleep=lambda s: None)
    assert watcher.interval == 10.0, "shares and object stores are polled every 10 s by default"
    assert not watcher.poll()
    store.put_new("db/log 1.trn", b"x" * 1000)
    assert [o.key for o in watcher.poll().new] == ["db/log 1.trn"]
    for i in range(20):  # more than a second look stats one by one: it lists again instead
        store.put_new(f"db/many/{i}.trn", b"y" * i)
    got = watcher.poll()
    assert len(got.new) == 20 and not got.held
    assert not watcher.poll(), "nothing new, nothing handed over twice"


def _writable(url: str) -> WritableStore:
    store = open_store(url)
    assert isinstance(store, WritableStore)
    return store


def test_watch_azure(azurite: Azurite) -> None:
    _exercise(_writable(new_container(azurite)[0]))


def test_watch_smb(smb_env: Samba) -> None:
    _exercise(_writable(smb_env.url(new_smb_folder(smb_env))))


def test_watch_s3(s3_env: Moto) -> None:
    _exercise(_writable(f"s3://{new_bucket(s3_env)}"))
