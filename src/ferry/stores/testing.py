"""The conformance suite every BackupStore passes. A store's tests call `check_store` with a store whose
root holds exactly the objects in `SAMPLE_OBJECTS` (see `write_sample`)."""

from __future__ import annotations

from collections.abc import Callable

from ferry.core.errors import ObjectNotFound
from ferry.stores.base import BackupStore

SAMPLE_OBJECTS: dict[str, bytes] = {
    "a.bak": bytes(range(256)) * 64,
    "folder/b.trn": b"log backup" * 10,
    "folder/deeper/c": b"",
    "odd name ü/d e.bak": b"x" * 3000,
}


def write_sample(put: Callable[[str, bytes], None]) -> None:
    for key, data in SAMPLE_OBJECTS.items():
        put(key, data)


def check_store(store: BackupStore) -> None:
    """Listing, stat and ranged reads behave as the protocol says. Raises AssertionError naming the rule."""
    listed = {o.key: o.size for o in store.iter_objects()}
    assert listed == {k: len(v) for k, v in SAMPLE_OBJECTS.items()}, f"listing: {listed}"
    assert {o.key for o in store.iter_objects("folder")} == {"folder/b.trn", "folder/deeper/c"}
    assert list(store.iter_objects("no/such/prefix")) == [], "a missing prefix yields nothing"
    for key, data in SAMPLE_OBJECTS.items():
        assert store.stat(key).size == len(data)
        reader = store.open(key)
        try:
            assert reader.size == len(data)
            assert reader.read(0, len(data) + 100) == data, "a read past the end is short, not an error"
            if len(data) > 10:
                assert reader.read(5, 5) == data[5:10]
                assert reader.read(len(data) - 3, 10) == data[-3:]
            assert reader.read(len(data) + 10, 5) == b""
            assert reader.bytes_read > 0 or not data
        finally:
            reader.close()
    for missing in ("nope.bak", "folder/nope", "../outside"):
        try:
            store.stat(missing)
        except ObjectNotFound as exc:
            assert missing in str(exc) and exc.hint
        else:
            raise AssertionError(f"stat of missing key {missing!r} must raise ObjectNotFound")
        try:
            store.open(missing).close()
        except ObjectNotFound:
            pass
        else:
            raise AssertionError(f"open of missing key {missing!r} must raise ObjectNotFound")
