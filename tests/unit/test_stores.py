from __future__ import annotations

from pathlib import Path

import pytest

from ferry.core.errors import UsageError
from ferry.stores.local import LocalStore
from ferry.stores.registry import open_store
from ferry.stores.testing import check_store, write_sample


def _put(root: Path):  # type: ignore[no-untyped-def]
    def put(key: str, data: bytes) -> None:
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    return put


def test_local_store_conformance(tmp_path: Path) -> None:
    write_sample(_put(tmp_path))
    check_store(LocalStore(tmp_path))


def test_open_store_by_path_and_url(tmp_path: Path) -> None:
    write_sample(_put(tmp_path))
    check_store(open_store(str(tmp_path)))
    check_store(open_store(tmp_path.as_uri()))


def test_open_store_refuses_missing_paths_and_unknown_schemes(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as missing:
        open_store(str(tmp_path / "nowhere"))
    assert "nowhere" in str(missing.value) and missing.value.hint
    with pytest.raises(UsageError) as scheme:
        open_store("ftp://host/backups")
    assert "ftp" in str(scheme.value)
