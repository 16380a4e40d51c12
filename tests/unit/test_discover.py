"""Discovery on real files in temporary folders: what each kind of bad file becomes."""

from __future__ import annotations

import os
from pathlib import Path
from uuid import UUID

import pytest

from ferry.core.findings import Severity
from ferry.engines.registry import all_engines
from ferry.pipeline import discover
from ferry.pipeline.discover import scan
from ferry.stores.local import LocalFileReader, LocalStore


def _by_key(root: Path) -> dict[str, tuple[str, Severity] | None]:
    result = scan(LocalStore(root), all_engines())
    return {f.info.key: (f.finding.code, f.finding.severity) if f.finding else None for f in result.files}


def test_foreign_and_empty_files(tmp_path: Path) -> None:
    (tmp_path / "README.txt").write_text("notes")
    (tmp_path / "nightly.bak").write_bytes(b"PK\x03\x04" + bytes(100))
    (tmp_path / "empty.trn").write_bytes(b"")
    (tmp_path / "fake.bak").write_bytes(b"TAPE" + bytes(1000))
    got = _by_key(tmp_path)
    assert got["README.txt"] == ("not-a-backup", Severity.INFO)
    assert got["nightly.bak"] == ("not-a-backup", Severity.WARNING)
    assert got["empty.trn"] == ("empty-file", Severity.WARNING)
    assert got["fake.bak"] == ("backup-unreadable", Severity.ERROR)


def _sample(corpus: Path) -> bytes:
    return (corpus / "sql2008-backups" / "StopAt" / "StopAt_1.trn").read_bytes()


def test_truncated_backup_is_a_warning_with_the_offset(tmp_path: Path, corpus: Path) -> None:
    data = _sample(corpus)
    (tmp_path / "cut.trn").write_bytes(data[: len(data) // 2])
    result = scan(LocalStore(tmp_path), all_engines())
    [f] = result.files
    assert f.finding is not None and f.finding.code == "backup-truncated"
    assert f.finding.severity is Severity.WARNING
    assert "'cut.trn'" in f.finding.message and f"at byte {len(data) // 2}" in f.finding.message
    assert "next scan" in f.finding.hint


class GrowingStore(LocalStore):
    """A real local folder whose files grow while they are read, as a backup being written does."""

    def open(self, key: str) -> LocalFileReader:
        reader = super().open(key)
        with open(self._path(key), "ab") as f:
            f.write(bytes(4096))
        return reader


def test_file_still_being_written_is_set_aside(tmp_path: Path, corpus: Path) -> None:
    data = _sample(corpus)
    (tmp_path / "growing.trn").write_bytes(data)
    result = scan(GrowingStore(tmp_path), all_engines())
    [f] = result.files
    assert f.finding is not None and f.finding.code == "file-changing"
    assert f.sets == ()
    # Once the writer is done, the next scan reads it.
    os.truncate(tmp_path / "growing.trn", len(data))
    [again] = scan(LocalStore(tmp_path), all_engines()).files
    assert again.finding is None and again.sets


def test_bytes_read_stay_small(corpus: Path) -> None:
    result = scan(LocalStore(corpus / "sql2008-backups"), all_engines())
    assert result.files and all(f.bytes_read <= 64 * 1024 for f in result.files)


def test_a_scan_over_processes_gives_the_same_result(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large local scans run in one process per core; the results must not depend on it."""
    for i, name in enumerate(("README.txt", "empty.trn")):
        (tmp_path / name).write_bytes(b"notes" * i)
    (tmp_path / "cut.trn").write_bytes(_sample(corpus)[:5000])
    stores = [LocalStore(corpus), LocalStore(tmp_path)]
    serial = [scan(s, all_engines(), workers=1) for s in stores]
    # A store other than a plain local folder is never split over processes (it may hold connections).
    assert discover._processes(GrowingStore(tmp_path)) == 1
    monkeypatch.setattr(discover, "POOL_MIN_FILES", 2)
    monkeypatch.setattr(discover, "_processes", lambda store: 2)
    ticks: list[tuple[int, int | None]] = []
    pooled = [
        scan(s, all_engines(), progress=lambda done, total: ticks.append((done, total))) for s in stores
    ]
    assert pooled == serial
    assert ticks[-1] == (len(serial[1].files), len(serial[1].files))
    sets = [s for f in pooled[0].files for s in f.sets]
    assert sets and all(type(s.backup_set_guid) is UUID for s in sets if hasattr(s, "backup_set_guid"))


class ForkedStore(LocalStore):
    """A store that is not a plain folder but gives forked children their own state (as SMB does)."""

    def __init__(self, root: Path, marks: Path) -> None:
        super().__init__(root)
        self.marks = marks

    def after_fork(self) -> None:
        (self.marks / str(os.getpid())).touch()


def test_a_forkable_store_is_scanned_over_processes_each_set_up_after_the_fork(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ForkedStore(corpus, tmp_path)
    serial = scan(LocalStore(corpus), all_engines(), workers=1)
    assert discover._processes(store) == discover.parallel.cores()
    monkeypatch.setattr(discover, "POOL_MIN_FILES", 2)
    monkeypatch.setattr(discover, "_processes", lambda store: 2)
    monkeypatch.setattr(discover, "_MIN_RUN", 1)
    assert scan(store, all_engines(), workers=2) == serial
    # Only children are set up again; the calling process keeps its own state.
    assert str(os.getpid()) not in {p.name for p in tmp_path.iterdir()}
