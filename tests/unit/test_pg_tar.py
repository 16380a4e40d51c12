"""The one tar reader: the scan (reader.read_file over tarread.walk) and the unpacker (unpack.Unpacker over
tarread.members) judge every archive alike: long names and link names, pax records, both checksum sums,
base-256 sizes, damage and truncation. Archives written by Python's tarfile or patched by hand; no server."""

from __future__ import annotations

import gzip
import io
import os
import random
import tarfile
from pathlib import Path

import pytest

from ferry.core.errors import BackupFormatError
from ferry.engines.postgres import fileops, tarread
from ferry.engines.postgres.reader import read_file
from ferry.engines.postgres.tarread import Compression, Member
from ferry.engines.postgres.unpack import ArchiveEntryError, Unpacker, open_archives
from ferry.stores.memory import BytesReader

LONG = "base/" + "/".join(["d" * 60] * 3) + "/f"  # > 100 bytes: GNU L or pax path records
LONG_LINK = "/".join(["t" * 60] * 3)  # > 100 bytes: GNU K or pax linkpath records


def make_tar(fmt: int = tarfile.GNU_FORMAT, link: str = LONG_LINK) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in (("PG_VERSION", b"15\n"), (LONG, random.Random(5).randbytes(5000)), ("empty", b"")):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o640
            tar.addfile(info, io.BytesIO(data))
        folder = tarfile.TarInfo("pg_wal")
        folder.type, folder.mode = tarfile.DIRTYPE, 0o700
        tar.addfile(folder)
        entry = tarfile.TarInfo("pg_tblspc_link")
        entry.type, entry.linkname = tarfile.SYMTYPE, link
        tar.addfile(entry)
    return buf.getvalue()


def scan(data: bytes) -> list[Member]:
    source = tarread.open_source(BytesReader("base.tar", data), tarread.compression_of(data[:4]))
    return [m for m, _ in tarread.walk(source, lambda m: 0)]


def unpack(data: bytes, folder: Path, name: str = "base.tar") -> Unpacker:
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    [archive] = open_archives([path])
    unpacker = Unpacker(None, archive.size, None)
    try:
        unpacker.unpack(archive, folder / "out", "")
    finally:
        archive.close()
    return unpacker


def header_at(data: bytearray, index: int) -> int:
    """The offset of the `index`-th header that describes a member (extended headers skipped)."""
    pos, seen = 0, -1
    while True:
        block = data[pos : pos + 512]
        size = int(block[124:136].split(b"\0")[0].strip() or b"0", 8)
        if block[156:157] not in (b"L", b"K", b"x", b"g"):
            seen += 1
            if seen == index:
                return pos
        pos += 512 + (size + 511) // 512 * 512


def rechecksum(data: bytearray, at: int, signed: bool = False) -> None:
    block = data[at : at + 512]
    block[148:156] = b" " * 8
    total = sum(b - 256 if signed and b > 127 else b for b in block)
    data[at + 148 : at + 156] = f"{total:06o}\0 ".encode()


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=["gnu", "pax"])
def test_scan_and_unpack_read_the_same_members(tmp_path: Path, fmt: int) -> None:
    data = make_tar(fmt)
    members = scan(data)
    assert [(m.name, m.kind) for m in members] == [
        ("PG_VERSION", "file"),
        (LONG, "file"),
        ("empty", "file"),
        ("pg_wal", "dir"),
        ("pg_tblspc_link", "symlink"),
    ]
    assert members[1].size == 5000 and members[1].mode == 0o640 and members[4].link == LONG_LINK
    unpacker = unpack(data, tmp_path)
    assert unpacker.files == {"PG_VERSION": 3, LONG: 5000, "empty": 0}
    assert os.readlink(tmp_path / "out" / "pg_tblspc_link") == LONG_LINK
    assert ((tmp_path / "out" / LONG).stat().st_mode & 0o777) == 0o640


def test_signed_checksums_and_base256_sizes_are_read_by_both(tmp_path: Path) -> None:
    data = bytearray(make_tar(tarfile.GNU_FORMAT))
    at = header_at(data, 0)  # PG_VERSION: 3 bytes
    data[at + 124 : at + 136] = b"\x80" + (3).to_bytes(11, "big")  # base-256, as GNU tar writes >= 8 GiB
    data[at + 90 : at + 92] = b"\xe9\xe9"  # bytes over 127 in the (NUL-padded) name field ...
    data[at : at + 10] = b"PG_VERSION"
    rechecksum(data, at, signed=True)  # ... summed as signed bytes, as some old tars did
    assert scan(bytes(data))[0] == Member("PG_VERSION", 3, "file", 512, 0o640, "", b"0")
    assert unpack(bytes(data), tmp_path).files["PG_VERSION"] == 3


def test_damage_is_refused_by_both(tmp_path: Path) -> None:
    data = bytearray(make_tar())
    at = header_at(data, 2)
    data[at + 100 : at + 108] = b"0000x40\0"  # mode: not octal
    rechecksum(data, at)
    with pytest.raises(BackupFormatError, match="not a number"):
        read_file(BytesReader("base.tar", bytes(data)))
    with pytest.raises(ArchiveEntryError, match="damaged: tar header field mode is not a number"):
        unpack(bytes(data), tmp_path)
    data = bytearray(make_tar())
    data[header_at(data, 2) + 1] ^= 1  # a flipped bit: the checksum no longer matches
    with pytest.raises(BackupFormatError, match="checksum mismatch"):
        read_file(BytesReader("base.tar", bytes(data)))
    with pytest.raises(ArchiveEntryError, match="checksum mismatch") as refused:
        unpack(bytes(data), tmp_path / "again")
    assert refused.value.entry == LONG  # the entry before the damage


@pytest.mark.parametrize("compress", [False, True], ids=["tar", "tar.gz"])
def test_truncation_is_refused_by_both(tmp_path: Path, compress: bool) -> None:
    raw = make_tar()
    data = gzip.compress(raw)[:-200] if compress else raw[:2000]
    name = "base.tar.gz" if compress else "base.tar"
    with pytest.raises(BackupFormatError, match="unexpected end of data"):
        read_file(BytesReader(name, data))
    with pytest.raises(ArchiveEntryError, match="truncated"):
        unpack(data, tmp_path, name)


def test_links_and_folders_carry_no_data_whatever_their_size_field(tmp_path: Path) -> None:
    data = bytearray(make_tar(tarfile.GNU_FORMAT, link="pg_wal"))
    at = header_at(data, 3)  # pg_wal, a folder
    data[at + 124 : at + 136] = b"00000001000\0"  # says 512 bytes follow; none do
    rechecksum(data, at)
    assert [m.name for m in scan(bytes(data))][-2:] == ["pg_wal", "pg_tblspc_link"]
    unpack(bytes(data), tmp_path)
    assert (tmp_path / "out" / "pg_wal").is_dir() and (tmp_path / "out" / "pg_tblspc_link").is_symlink()


def test_the_stream_source_reports_compressed_offsets_and_codec_damage() -> None:
    data = bytearray(gzip.compress(make_tar()))
    data[len(data) // 2] ^= 0xFF
    source = tarread.open_source(BytesReader("base.tar.gz", bytes(data)), Compression.GZIP)
    with pytest.raises(tarread.TarProblem) as damaged:
        list(tarread.members(source))
    assert 0 < damaged.value.offset <= len(data) and not damaged.value.truncated


def test_kernel_copies_fall_back_to_reads_and_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    payload = os.urandom(300_000)
    src.write_bytes(payload)

    def refuse(*args: object) -> int:
        raise OSError(18, "Invalid cross-device link")  # EXDEV: another file system

    for patched in (False, True):
        if patched:
            monkeypatch.setattr(os, "copy_file_range", refuse)
        with open(src, "rb") as a, open(dst, "wb") as b:
            assert fileops.copy_range(a.fileno(), b.fileno(), 200_000, 1000) == 200_000
            assert fileops.copy_range(a.fileno(), b.fileno(), 500_000, 250_000, 200_000) == 50_000
        assert dst.read_bytes() == payload[1000:201_000] + payload[250_000:]
