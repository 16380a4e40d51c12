from __future__ import annotations

from pathlib import Path

import pytest

from ferry.core.errors import UsageError
from ferry.stores.local import LocalStore
from ferry.stores.registry import open_location, open_store
from ferry.stores.testing import check_conformance, check_store, write_sample


def _put(root: Path):  # type: ignore[no-untyped-def]
    def put(key: str, data: bytes) -> None:
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    return put


def test_local_store_conformance(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    check_conformance(store, empty_folder=lambda p: (tmp_path / p).mkdir(parents=True))


def test_local_store_read_only_checks_on_files_written_by_hand(tmp_path: Path) -> None:
    write_sample(_put(tmp_path))
    check_store(LocalStore(tmp_path))


def test_open_store_by_path_and_url(tmp_path: Path) -> None:
    write_sample(_put(tmp_path))
    check_store(open_store(str(tmp_path)))
    check_store(open_store(tmp_path.as_uri()))


def test_open_location_of_one_file_is_its_folder_with_a_prefix(tmp_path: Path) -> None:
    write_sample(_put(tmp_path))
    store, prefix = open_location(str(tmp_path / "folder" / "b.trn"))
    assert prefix == "b.trn" and [o.key for o in store.iter_objects(prefix)] == ["b.trn"]


def test_open_store_refuses_missing_paths_and_unknown_schemes(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as missing:
        open_store(str(tmp_path / "nowhere"))
    assert "nowhere" in str(missing.value) and missing.value.hint
    with pytest.raises(UsageError) as scheme:
        open_store("ftp://host/backups")
    assert "ftp" in str(scheme.value)


def test_local_put_new_never_leaves_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_new("wal/000000010000000000000001", b"x" * 100)
    store.put_new("wal/000000010000000000000001", b"x" * 100)
    assert sorted(p.name for p in (tmp_path / "wal").iterdir()) == ["000000010000000000000001"]


def test_local_check_access(tmp_path: Path) -> None:
    assert LocalStore(tmp_path).check_access(write=True) == []
    [missing] = LocalStore(tmp_path / "gone").check_access()
    assert missing.code == "store-missing" and "gone" in missing.message and missing.hint


def test_only_transient_store_errors_are_retried() -> None:
    """A missing object fails at once: retrying it would cost the whole budget (a minute) on every probe
    for a file that is not there yet, such as PostgreSQL's next timeline history file."""
    from ferry.core.errors import ObjectNotFound
    from ferry.stores.errors import StoreUnavailable
    from ferry.stores.retry import RetryPolicy, with_retries

    calls: list[int] = []
    slept: list[float] = []

    def missing() -> None:
        calls.append(1)
        raise ObjectNotFound("az://acct/c", "00000002.history")

    with pytest.raises(ObjectNotFound):
        with_retries(missing, RetryPolicy(), sleep=slept.append)
    assert calls == [1] and slept == []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise StoreUnavailable("az://acct/c", "list", "connection reset")
        return "ok"

    assert with_retries(flaky, RetryPolicy(), sleep=slept.append) == "ok" and len(slept) == 2
