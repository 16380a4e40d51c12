"""The conformance suite every BackupStore passes.

`check_conformance(store)` takes an empty, writable store, writes its own sample with `put_new` and checks
the whole contract: listings of nested, empty and missing prefixes; missing keys; ranged reads at the
edges; long reads streamed (and resumed after a dropped connection, when the caller can drop one);
`put_new` races between two writers; unicode and space-laden names; keys with `..` or a leading `/`.
Each rule fails with an AssertionError that names it.

`check_store(store)` is the read-only part, for a store whose root holds exactly `SAMPLE_OBJECTS`.
"""

from __future__ import annotations

import io
import random
import threading
from collections.abc import Callable

from ferry.core.errors import FerryError, ObjectNotFound
from ferry.stores.base import BackupStore, PutResult, StoreCapabilities, WritableStore, iter_range
from ferry.stores.errors import InvalidKey, ObjectConflict

SAMPLE_OBJECTS: dict[str, bytes] = {
    "a.bak": bytes(range(256)) * 64,
    "folder/b.trn": b"log backup" * 10,
    "folder/deeper/c": b"",
    "odd name ü/d e.bak": b"x" * 3000,
    "ünïcode/日本語 file.trn": b"\x00\x01" * 700,
}
BIG_KEY = "big/long read.bin"
HOSTILE_KEYS = ("../outside", "/etc/passwd", "folder/../../outside", "a/../../b", "..")


def big_object(size: int = 3 << 20) -> bytes:
    return random.Random(7).randbytes(size)


def write_sample(put: Callable[[str, bytes], None]) -> None:
    for key, data in SAMPLE_OBJECTS.items():
        put(key, data)


def check_store(store: BackupStore) -> None:
    """Listing, stat and ranged reads behave as the protocol says. Raises AssertionError naming the rule."""
    check_listing(store, SAMPLE_OBJECTS)
    check_reads(store, SAMPLE_OBJECTS)
    check_missing_and_hostile(store)


def check_conformance(
    store: WritableStore,
    *,
    empty_folder: Callable[[str], None] | None = None,
    drop_connections: Callable[[int], None] | None = None,
) -> None:
    """The whole contract on an empty writable store. `empty_folder(path)` makes an empty folder where the
    store has folders (local disks, shares); `drop_connections(n)` makes the server's connections break
    after `n` more bytes (a proxy in the tests)."""
    assert list(store.iter_objects()) == [], "check_conformance needs an empty store"
    objects = dict(SAMPLE_OBJECTS)
    objects[BIG_KEY] = big_object()
    for key, data in objects.items():
        result = store.put_new(key, io.BytesIO(data) if key == BIG_KEY else data)
        got = (result.key, result.size, result.already_present)
        assert got == (key, len(data), False), f"put_new: {result}"
    check_put_new(store)
    if empty_folder is not None:
        empty_folder("empty folder")
        assert list(store.iter_objects("empty folder")) == [], "an empty folder lists nothing"
    check_listing(store, objects)
    check_reads(store, objects)
    check_missing_and_hostile(store)
    check_capabilities(store, store.capabilities)
    check_long_reads(store, objects[BIG_KEY], drop_connections)
    check_races(store)


def check_listing(store: BackupStore, objects: dict[str, bytes]) -> None:
    listed = {o.key: o.size for o in store.iter_objects()}
    assert listed == {k: len(v) for k, v in objects.items()}, f"listing of the root: {listed}"
    assert {o.key for o in store.iter_objects("folder")} == {"folder/b.trn", "folder/deeper/c"}, "nested"
    assert {o.key for o in store.iter_objects("folder/")} == {"folder/b.trn", "folder/deeper/c"}, "trailing /"
    assert [o.key for o in store.iter_objects("folder/deeper")] == ["folder/deeper/c"], "deeper prefix"
    assert list(store.iter_objects("fold")) == [], "a prefix is a path: 'fold' is not 'folder'"
    assert list(store.iter_objects("no/such/prefix")) == [], "a missing prefix yields nothing"
    assert [o.key for o in store.iter_objects("a.bak")] == ["a.bak"], "a prefix that names an object"
    assert [o.key for o in store.iter_objects("odd name ü")] == ["odd name ü/d e.bak"], "unicode prefix"


def check_reads(store: BackupStore, objects: dict[str, bytes]) -> None:
    for key, data in objects.items():
        info = store.stat(key)
        assert (info.key, info.size) == (key, len(data)), f"stat of {key!r}: {info}"
        reader = store.open(key)
        try:
            n = len(data)
            assert reader.key == key and reader.size == n, f"open of {key!r}: size {reader.size}"
            assert reader.read(0, n + 100) == data, "a read past the end is short, not an error"
            assert reader.read(0, 0) == b"", "an empty read"
            assert reader.read(n, 1) == b"" and reader.read(n + 10, 5) == b"", "reads at and after the end"
            if n > 10:
                assert reader.read(5, 5) == data[5:10], "a ranged read inside"
                assert reader.read(n - 3, 10) == data[-3:], "a ranged read across the end"
                assert reader.read(n - 1, 1) == data[-1:], "the last byte"
                assert reader.read(0, 1) == data[:1], "the first byte"
            assert reader.bytes_read > 0 or not data, "bytes_read counts what was read"
        finally:
            reader.close()


def check_missing_and_hostile(store: BackupStore) -> None:
    for missing in ("nope.bak", "folder/nope", "folder"):
        try:
            store.stat(missing)
        except ObjectNotFound as exc:
            assert missing in str(exc) and exc.hint, f"the error names {missing!r} and has a hint: {exc}"
        else:
            raise AssertionError(f"stat of missing key {missing!r} must raise ObjectNotFound")
        try:
            store.open(missing).close()
        except ObjectNotFound:
            pass
        else:
            raise AssertionError(f"open of missing key {missing!r} must raise ObjectNotFound")
    for hostile in HOSTILE_KEYS:
        for what, call in (
            ("stat", lambda k=hostile: store.stat(k)),
            ("open", lambda k=hostile: store.open(k).close()),
            ("list", lambda k=hostile: list(store.iter_objects(k))),
        ):
            try:
                call()
            except InvalidKey as exc:
                assert exc.hint and repr(hostile) in str(exc), f"{what} {hostile!r}: {exc}"
            else:
                raise AssertionError(f"{what} of {hostile!r} must raise InvalidKey, never leave the root")
        put = getattr(store, "put_new", None)
        if put is not None:
            try:
                put(hostile, b"x")
            except InvalidKey:
                pass
            else:
                raise AssertionError(f"put_new of {hostile!r} must raise InvalidKey")


def check_capabilities(store: BackupStore, caps: StoreCapabilities) -> None:
    infos = list(store.iter_objects())
    if caps.etags:
        assert all(o.etag for o in infos), "a store with etags lists them"
    if caps.blob_types:
        assert all(o.blob_type is not None for o in infos), "a store with blob types lists them"
    assert caps.parallel_reads >= 1 and caps.poll_seconds > 0


def check_put_new(store: WritableStore) -> None:
    again = store.put_new("a.bak", SAMPLE_OBJECTS["a.bak"])
    assert again.already_present, "the same content again is success, nothing written"
    from_file = store.put_new("a.bak", io.BytesIO(SAMPLE_OBJECTS["a.bak"]))
    assert from_file.already_present and from_file.size == len(SAMPLE_OBJECTS["a.bak"]), "a file source"
    try:
        store.put_new("a.bak", io.BytesIO(SAMPLE_OBJECTS["a.bak"][:-1] + b"!"))
    except ObjectConflict:
        pass
    else:
        raise AssertionError("a file source that differs in its last byte is a conflict")
    try:
        store.put_new("a.bak", b"other content")
    except ObjectConflict as exc:
        assert "'a.bak'" in str(exc) and exc.hint, f"a conflict names the key and has a hint: {exc}"
    else:
        raise AssertionError("put_new of different content over an object must raise ObjectConflict")
    reader = store.open("a.bak")
    try:
        kept = reader.read(0, reader.size)
        assert kept == SAMPLE_OBJECTS["a.bak"], "a conflict leaves the object as it was"
    finally:
        reader.close()


def check_long_reads(store: BackupStore, data: bytes, drop: Callable[[int], None] | None) -> None:
    reader = store.open(BIG_KEY)
    try:
        assert b"".join(iter_range(reader, 0, len(data))) == data, "a long read streamed in pieces"
        assert b"".join(iter_range(reader, 1000, 5000)) == data[1000:6000], "a streamed range"
        if drop is not None:
            drop(len(data) // 3)
            assert reader.read(0, len(data)) == data, "a long read resumes after the connection drops"
            drop(100_000)
            assert b"".join(iter_range(reader, 7, len(data))) == data[7:], "a stream resumes after a drop"
    finally:
        reader.close()


def check_races(store: WritableStore) -> None:
    """Two writers at once: with different content exactly one wins and the other gets a conflict; with
    the same content both succeed."""
    for round_, contents in enumerate(((b"first writer" * 100, b"second writer" * 100), (b"same" * 50,) * 2)):
        key = f"race/{round_}.bin"
        outcomes = _race(store, key, contents)
        reader = store.open(key)
        try:
            stored = reader.read(0, reader.size)
        finally:
            reader.close()
        assert stored in contents, "the stored object is one writer's whole content"
        wrote = [o for o in outcomes if isinstance(o, PutResult) and not o.already_present]
        assert len(wrote) == 1, f"exactly one writer wrote: {outcomes}"
        failed = [o for o in outcomes if isinstance(o, FerryError)]
        if contents[0] != contents[1]:
            assert [type(o) for o in failed] == [ObjectConflict], (
                f"the other writer gets a conflict: {outcomes}"
            )
        else:
            assert not failed, f"same content: both succeed: {outcomes}"


def _race(store: WritableStore, key: str, contents: tuple[bytes, bytes]) -> list[PutResult | FerryError]:
    barrier = threading.Barrier(2)
    outcomes: list[PutResult | FerryError] = []
    lock = threading.Lock()

    def write(data: bytes) -> None:
        barrier.wait()
        try:
            got: PutResult | FerryError = store.put_new(key, data)
        except FerryError as exc:
            got = exc
        with lock:
            outcomes.append(got)

    threads = [threading.Thread(target=write, args=(d,)) for d in contents]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes
