"""WAL wherever an archive_command put it: the name index, compressed files, `wal-fetch` without Ferry's
layout, the prefetcher over nested folders, and the reader and planner on such stores. Synthetic segments
with a real long page header; no server."""

from __future__ import annotations

import gzip
import random
import struct
from pathlib import Path

import lz4.frame
import pytest
import zstandard

from ferry.engines.postgres import archive
from ferry.engines.postgres.archive import INDEX_FILE, Prefetcher, wal_fetch
from ferry.engines.postgres.grouping import group_sources
from ferry.engines.postgres.reader import WalSegment, read_file
from ferry.engines.postgres.wal import SegmentName
from ferry.engines.postgres.walstore import (
    Compression,
    WalArchiveError,
    WalIndex,
    fetch_to,
    locate,
    wal_object,
)
from ferry.stores.local import LocalFileReader, LocalStore

SEG = 1024 * 1024
SYSID = 7300000000000000001
COMPRESSORS = {
    ".gz": gzip.compress,
    ".lz4": lz4.frame.compress,
    ".zst": lambda data: zstandard.ZstdCompressor().compress(data),
}


def name(tli: int, segno: int) -> str:
    return SegmentName(tli, segno).name(SEG)


def segment_bytes(tli: int, segno: int, fill: bytes = b"\0") -> bytes:
    """A segment whose first page starts with PostgreSQL 15's long page header, then records that compress
    about as real WAL does (lz4 and zstd then emit nothing within a scan's first kilobytes)."""
    header = struct.pack("<HHIQI4x", 0xD110, 0x0002, tli, segno * SEG, 0)  # 24 bytes, as C aligns it
    header += struct.pack("<QII", SYSID, SEG, 8192)
    body = random.Random(tli * 1000 + segno).randbytes(SEG // 2)
    return header + body + fill * (SEG // 2 - len(header))


def put(folder: Path, filename: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    path.write_bytes(data)
    return path


def put_segment(folder: Path, tli: int, segno: int, suffix: str = "") -> Path:
    data = segment_bytes(tli, segno, bytes([segno % 250 + 1]))
    return put(folder, name(tli, segno) + suffix, COMPRESSORS[suffix](data) if suffix else data)


def test_names_by_file_name_less_a_compression_suffix() -> None:
    seg = name(1, 5)
    assert wal_object(f"a/b/{seg}", SEG) == wal_object(f"a/b/{seg}", SEG)
    found = wal_object(f"archive/2026/12/01/{seg}.gz", 1000)
    assert found is not None and (found.name, found.compression) == (seg, Compression.GZIP)
    assert wal_object("x/00000002.history.zst", 50).compression is Compression.ZSTD  # type: ignore[union-attr]
    assert wal_object(f"x/{seg}.partial", SEG).name == f"{seg}.partial"  # type: ignore[union-attr]
    for other in (f"{seg}.bak", "base.tar.gz", name(1, 0xA).lower(), "backup_manifest", f"x{seg}"):
        assert wal_object(f"d/{other}", 1) is None, other


def test_index_prefers_the_main_folder_then_plain_copies(tmp_path: Path) -> None:
    store = tmp_path / "store"
    for segno in (1, 2, 3):
        put_segment(store / "archive" / "wal", 1, segno)
    put_segment(store / "copies", 1, 2)  # a stray copy elsewhere
    put_segment(store / "archive" / "wal", 1, 3, ".gz")  # the same segment, also compressed
    index = WalIndex(LocalStore(store))
    objects = {o.name: o for o in index.refresh()}
    assert objects[name(1, 2)].key == f"archive/wal/{name(1, 2)}"
    assert objects[name(1, 3)].compression is Compression.NONE
    # A segment archived after the listing is found where WAL is kept, without listing again.
    put_segment(store / "archive" / "wal", 1, 4)
    assert index.get(name(1, 4)) is None
    found = index.find(name(1, 4))
    assert found is not None and found.key == f"archive/wal/{name(1, 4)}"
    assert index.find(name(1, 9)) is None


@pytest.mark.parametrize("suffix", ["", ".gz", ".lz4", ".zst"])
def test_wal_fetch_reads_any_layout_and_compression(tmp_path: Path, suffix: str) -> None:
    store = tmp_path / "store"
    nested = store / "archive" / "2026" / "12" / "01"
    for segno in (1, 2):
        put_segment(nested, 1, segno, suffix)
    put(nested, "00000002.history" + suffix, (COMPRESSORS[suffix] if suffix else bytes)(b"1\t0/2000000\tx\n"))
    dest = tmp_path / "pg_wal"
    dest.mkdir()
    assert wal_fetch(name(1, 2), dest / "RECOVERYXLOG", str(store))
    assert (dest / "RECOVERYXLOG").read_bytes() == segment_bytes(1, 2, bytes([3]))
    assert wal_fetch("00000002.history", dest / "RECOVERYHISTORY", str(store))
    assert (dest / "RECOVERYHISTORY").read_text() == "1\t0/2000000\tx\n"
    assert not wal_fetch(name(1, 3), dest / "RECOVERYXLOG", str(store))
    assert not [p for p in dest.iterdir() if p.name.startswith(".")], "no temp file left behind"


def test_damaged_compressed_segments_are_errors_naming_the_file(tmp_path: Path) -> None:
    store = tmp_path / "store"
    path = put_segment(store / "wal", 1, 1, ".gz")
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # cut short
    put(store / "wal", name(1, 2) + ".zst", zstandard.ZstdCompressor().compress(b"tiny"))  # not a segment
    put(store / "wal", name(1, 3), b"x" * 1000)  # plain, not a segment's size
    dest = tmp_path / "out"
    dest.mkdir()
    for segno, words in ((1, "cut short"), (2, "not a WAL segment size"), (3, "not a WAL segment size")):
        with pytest.raises(WalArchiveError) as info:
            wal_fetch(name(1, segno), dest / "x", str(store))
        assert name(1, segno) in str(info.value) and words in str(info.value) and info.value.hint
    assert list(dest.iterdir()) == []


def test_wal_fetch_uses_the_prefetchers_index(tmp_path: Path) -> None:
    """restore_command runs outside the migration: the prefetcher leaves its index in the spool, so a
    fetch finds WAL in a folder no probe would look in, without listing the store."""
    store, spool = tmp_path / "store", tmp_path / "spool"
    put_segment(store / "odd" / "place", 1, 1, ".lz4")
    pre = Prefetcher(str(store), spool, timeline=1, segment_size=SEG, depth=1, list_interval=0)
    pre.start()
    pre.advance(SEG + 40)
    pre.stop()
    pre.wal_index.refresh()
    (spool / INDEX_FILE).parent.mkdir(exist_ok=True)
    pre.wal_index.save(spool / INDEX_FILE)
    saved = locate(LocalStore(store), name(1, 1), spool / INDEX_FILE)
    assert saved is not None and saved.key == f"odd/place/{name(1, 1)}.lz4"
    dest = tmp_path / "seg"
    assert fetch_to(LocalStore(store), saved, dest) == SEG


def test_prefetcher_follows_wal_into_new_folders(tmp_path: Path) -> None:
    """Nested by date: a new day's folder appears while the migration runs; the next listing finds it."""
    store, spool = tmp_path / "store", tmp_path / "spool"
    for segno in (1, 2, 3):
        put_segment(store / "wal" / "2026-12-01", 1, segno, ".gz")
    pre = Prefetcher(str(store), spool, timeline=1, segment_size=SEG, depth=4, list_interval=0)
    pre.start()
    pre.stop()  # poll() below runs the rounds inline
    pre.advance(SEG + 40)
    pre.poll()
    assert sorted(p.name for p in spool.iterdir() if p.is_file()) == [name(1, 1), name(1, 2), name(1, 3)]
    assert (spool / name(1, 2)).read_bytes() == segment_bytes(1, 2, bytes([3]))
    assert pre.stats().missing_next == name(1, 4)
    put_segment(store / "wal" / "2026-12-02", 1, 4, ".zst")
    pre.poll()
    pre.poll()
    stats = pre.stats()
    assert (spool / name(1, 4)).exists() and stats.missing_next is None  # the window is full
    assert stats.archive_end_lsn == 5 * SEG and stats.counts.get("arrived", 0) >= 3


def test_reader_reads_compressed_wal_and_history(tmp_path: Path) -> None:
    folder = tmp_path / "wal"
    for suffix in COMPRESSORS:
        path = put_segment(folder, 1, 7, suffix)
        with LocalFileReader(path.name, path) as reader:
            (found,) = read_file(reader)
        assert isinstance(found, WalSegment)
        assert found.header.segment == SegmentName(1, 7) and found.named_as == SegmentName(1, 7)
        assert found.compression == Compression(archive_codec(suffix)).value and not found.name_mismatch
    hist = put(folder, "00000003.history.gz", gzip.compress(b"1\t0/3000000\tx\n2\t0/5000000\ty\n"))
    with LocalFileReader(hist.name, hist) as reader:
        (history,) = read_file(reader)
    assert history.timeline == 3 and [e.parent for e in history.entries] == [1, 2]  # type: ignore[union-attr]
    # A gzip segment whose trailer says it is not a segment's size: damaged, named.
    bad = put(folder, name(1, 8) + ".gz", gzip.compress(segment_bytes(1, 8)[: SEG // 2]))
    with LocalFileReader(bad.name, bad) as reader, pytest.raises(Exception) as info:
        read_file(reader)
    assert bad.name in str(info.value) and "not the" in str(info.value)


def archive_codec(suffix: str) -> str:
    return {".gz": "gzip", ".lz4": "lz4", ".zst": "zstd"}[suffix]


def test_a_segment_not_named_as_one_is_an_error_finding(tmp_path: Path) -> None:
    """PostgreSQL asks for WAL by name: a segment stored under another name would never be restored, so
    the plan says so instead of a migration waiting for it."""
    path = put(tmp_path, "seg-0001.wal", segment_bytes(1, 1))
    with LocalFileReader(path.name, path) as reader:
        items = read_file(reader)
    (source,), _ = group_sources(items)
    (finding,) = [f for f in source.findings if f.code == "wal-unnamed"]
    assert finding.severity.value == "error" and "seg-0001.wal" in finding.message
    assert name(1, 1) in finding.hint


def test_archive_module_keeps_its_public_names() -> None:
    assert archive.WAL_PREFIX == "wal/" and archive.is_segment_size(SEG)


def test_compressed_files_that_are_not_postgresql_are_noted_not_read(tmp_path: Path) -> None:
    """An lz4 or zstd head decodes to nothing until a whole block is read, so the sniff cannot refuse it;
    the deeper read does, and the scan notes the file instead of failing on it."""
    from ferry.engines.postgres.engine import PostgresEngine
    from ferry.pipeline.discover import scan

    noise = random.Random(1).randbytes(300_000)
    put(tmp_path, "photos.tar.lz4", lz4.frame.compress(noise))
    put(tmp_path, "notes.zst", zstandard.ZstdCompressor().compress(noise))
    result = scan(LocalStore(tmp_path), [PostgresEngine()])
    assert result.sets_for("postgres") == []
    assert sorted((f.code, f.files[0]) for f in result.findings) == [
        ("not-a-backup", "notes.zst"),
        ("not-a-backup", "photos.tar.lz4"),
    ]
