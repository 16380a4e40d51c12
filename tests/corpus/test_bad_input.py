"""Damaged copies of real backup files: each gives a typed error naming the file and the byte offset,
never another exception, a hang, or a silently different result."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferry.core.errors import BackupFormatError
from ferry.engines.sqlserver.headers import BackupSet
from ferry.engines.sqlserver.media import PagedSource, walk_blocks
from ferry.engines.sqlserver.mtf import STREAM_HEADER_SIZE
from ferry.engines.sqlserver.reader import read_backup_sets
from ferry.stores.local import LocalFileReader
from tests.conftest import corpus_root

pytestmark = pytest.mark.corpus

SAMPLES = [
    "singlerestore/singlerestore.bak",  # full, 2008 R2
    "RestoreTimeClean/RestoreTimeClean_2.trn",  # log
    "sql2008-backups/db1/DIFF/SQL2008_db1_DIFF_20170518_041819.bak",  # differential, two data files
    "more/sql2019/full_backup.bak",  # two MSDA blocks
    "more/sql2005/Northwind.bak",
]
COMPRESSED = "more/compressed-striped-2016/multiFilesBackup1.bak"
_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _original(rel: str) -> bytes:
    root = corpus_root()
    if root is None:
        pytest.skip("SQL Server backup corpus not found (set FERRY_SQLSERVER_CORPUS)")
    return (root / rel).read_bytes()


def _read(tmp_path: Path, data: bytes, name: str = "copy.bak") -> list[BackupSet]:
    path = tmp_path / name
    path.write_bytes(data)
    with LocalFileReader(name, path) as reader:
        return read_backup_sets(reader)


def _regions(tmp_path: Path, data: bytes) -> tuple[list[range], list[range]]:
    """(checksummed header ranges, bulk data ranges) of an uncompressed file. Tape-format checksums cover
    the 52-byte common part of each block header and each 22-byte stream header; the rest of a block's
    fields have none (see docs/engines.md, "What Ferry can and cannot detect")."""
    path = tmp_path / "regions.bak"
    path.write_bytes(data)
    checked: list[range] = []
    bulk: list[range] = []
    with LocalFileReader("regions.bak", path) as reader:
        for block in walk_blocks(PagedSource(reader)):
            checked.append(range(block.header.offset, block.header.offset + 52))
            for sh, _ in block.streams:
                checked.append(range(sh.offset, sh.offset + STREAM_HEADER_SIZE))
                if sh.id in (b"MQDA", b"MQTL") and sh.length:
                    bulk.append(range(sh.data_offset, sh.data_offset + sh.length))
    return checked, bulk


def _flip(data: bytes, regions: list[range], pick: int, bit: int) -> bytes:
    """`data` with one bit flipped inside one of `regions`, both chosen by `pick`."""
    region = regions[pick % len(regions)]
    damaged = bytearray(data)
    damaged[region.start + pick // len(regions) % len(region)] ^= 1 << bit
    return bytes(damaged)


@pytest.mark.parametrize("rel", [*SAMPLES, COMPRESSED])
def test_truncated_copies_fail_with_the_offset(tmp_path: Path, rel: str) -> None:
    data = _original(rel)
    size = len(data)
    cuts = sorted({0, 1, 7, 51, 52, 100, 511, 512, 1024, 0xE10, 0x1A10, size // 3, size // 2,
                   size - 4096, size - 1024, size - 512, size - 1})  # fmt: skip
    for cut in cuts:
        with pytest.raises(BackupFormatError) as info:
            _read(tmp_path, data[:cut])
        assert "'copy.bak'" in str(info.value)
        assert 0 <= info.value.offset <= max(cut, 0) or rel == COMPRESSED
        assert info.value.hint


@pytest.mark.parametrize("rel", SAMPLES)
def test_any_truncation_is_an_error(tmp_path: Path, rel: str) -> None:
    data = _original(rel)

    @_SETTINGS
    @given(cut=st.integers(min_value=0, max_value=len(data) - 1))
    def check(cut: int) -> None:
        with pytest.raises(BackupFormatError) as info:
            _read(tmp_path, data[:cut])
        assert info.value.offset <= cut

    check()


@pytest.mark.parametrize("rel", SAMPLES)
def test_flipped_bits_in_headers_are_caught(tmp_path: Path, rel: str) -> None:
    """Block and stream headers carry checksums: a flip there is an error naming the file."""
    data = _original(rel)
    guarded, _ = _regions(tmp_path, data)

    @_SETTINGS
    @given(pick=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
    def check(pick: int, bit: int) -> None:
        with pytest.raises(BackupFormatError) as info:
            _read(tmp_path, _flip(data, guarded, pick, bit))
        assert "'copy.bak'" in str(info.value)

    check()


@pytest.mark.parametrize("rel", SAMPLES)
def test_flipped_bits_in_names_and_guids_are_caught(tmp_path: Path, rel: str) -> None:
    """The backup header is written twice, at the start and at the end of the set: the copies must agree."""
    data = _original(rel)
    name = _read(tmp_path, data)[0].database_name.encode("utf-16-le")
    (tmp_path / "regions.bak").write_bytes(data)
    with LocalFileReader("regions.bak", tmp_path / "regions.bak") as reader:
        copies = [
            sh.data_offset + payload.index(name)
            for block in walk_blocks(PagedSource(reader))
            for sh, payload in block.streams
            if sh.id == b"MQCI" and payload is not None
        ]
    assert len(copies) == 2
    for pos in copies:
        damaged = bytearray(data)
        damaged[pos] ^= 0x01
        with pytest.raises(BackupFormatError) as info:
            _read(tmp_path, bytes(damaged))
        assert "disagree" in str(info.value)


@pytest.mark.parametrize("rel", SAMPLES[:3])
def test_flipped_bits_in_page_data_change_nothing(tmp_path: Path, rel: str) -> None:
    """Headers are read; pages are not. Damage inside database pages is RESTORE's to find (with
    CHECKSUM), and it must not change what Ferry reports about the backup."""
    data = _original(rel)
    _, bulk = _regions(tmp_path, data)
    expected = _read(tmp_path, data, "orig.bak")

    @_SETTINGS
    @given(pick=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
    def check(pick: int, bit: int) -> None:
        got = _read(tmp_path, _flip(data, bulk, pick, bit), "orig.bak")
        assert got == expected

    check()


@pytest.mark.parametrize("rel", [*SAMPLES, COMPRESSED])
def test_random_damage_never_escapes_as_another_exception(tmp_path: Path, rel: str) -> None:
    data = _original(rel)

    @_SETTINGS
    @given(
        pos=st.integers(min_value=0, max_value=len(data) - 1),
        junk=st.binary(min_size=1, max_size=64),
    )
    def check(pos: int, junk: bytes) -> None:
        damaged = data[:pos] + junk + data[pos + len(junk) :]
        try:
            _read(tmp_path, damaged[: len(data)])
        except BackupFormatError as exc:
            assert "'copy.bak'" in str(exc)

    check()


def test_foreign_files(tmp_path: Path) -> None:
    for name, content in {
        "notes.bak": b"hello, this is text\n" * 100,
        "zip.trn": b"PK\x03\x04" + bytes(2000),
        "fake.bak": b"TAPE" + bytes(4000),
        "tiny.bak": b"TA",
    }.items():
        with pytest.raises(BackupFormatError) as info:
            _read(tmp_path, content, name)
        assert f"'{name}'" in str(info.value)
