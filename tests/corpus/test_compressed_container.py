"""Compressed (`MSSQLBAK`) backups: the head and tail regions against a decode of the whole file.

The sample files stay outside the repository: FERRY_SQLSERVER_CORPUS, else ../shared/sqlserver-backups
beside the checkout. Without them these tests skip.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from ferry.core.errors import BackupFormatError
from ferry.engines.sqlserver.container import (
    MSSQLBAK_MAGIC,
    is_compressed_backup,
    read_compressed_regions,
)
from ferry.engines.sqlserver.xpress import decompress_lz77_huffman
from ferry.stores.local import LocalFileReader
from ferry.stores.memory import BytesReader as _MemoryReader

pytestmark = pytest.mark.corpus


def _corpus_root() -> Path | None:
    env = os.environ.get("FERRY_SQLSERVER_CORPUS")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / ".." / "shared" / "sqlserver-backups")
    return next((p for p in candidates if p.is_dir()), None)


_ROOT = _corpus_root()
_FOLDER = _ROOT / "more" / "compressed-striped-2016" if _ROOT else None
_FILES = sorted(p.name for p in _FOLDER.glob("*.bak")) if _FOLDER and _FOLDER.is_dir() else []

if not _FILES:
    pytest.skip(
        "compressed SQL Server samples not found: set FERRY_SQLSERVER_CORPUS or put the corpus at "
        "../shared/sqlserver-backups (more/compressed-striped-2016)",
        allow_module_level=True,
    )
assert _FOLDER is not None


# --- test-only helpers: a whole-file walk, independent of the module under test ---------------------------


def _dblk_ok(buf: bytes, at: int) -> bool:
    if at + 52 > len(buf):
        return False
    x = 0
    for word in struct.unpack_from("<26H", buf, at):
        x ^= word
    return x == 0


def _dblks(buf: bytes, tag: bytes) -> list[int]:
    found = []
    at = buf.find(tag)
    while at >= 0:
        if _dblk_ok(buf, at):
            found.append(at)
        at = buf.find(tag, at + 1)
    return found


def _decode_whole_file(raw: bytes) -> bytes:
    """Every chunk from the first record to EOF, in order: chunk records decode, padding records and
    filemarks are skipped, and an index record jumps to its region's end (its footer says how far)."""
    out = []
    pos = 0x1E0
    while pos < len(raw):
        if pos % 4096 == 0 and raw[pos : pos + 4] == b"SFMB":
            pos += 4096
            continue
        kind, units, count = raw[pos], raw[pos + 1], int.from_bytes(raw[pos + 2 : pos + 4], "little")
        if kind == 0x21:
            out.append(decompress_lz77_huffman(raw[pos + 28 : pos + 28 + count], units * 512))
            pos += 28 + count
        elif kind == 0x24:
            pos += 24 + count
        elif kind == 0x2C:
            body = pos + 24
            pos = body + struct.unpack_from("<I", raw, body + 8)[0]
        else:
            raise AssertionError(f"unexpected record type 0x{kind:02x} at {pos}")
    assert pos == len(raw)
    return b"".join(out)


def _raw(name: str) -> bytes:
    assert _FOLDER is not None
    return (_FOLDER / name).read_bytes()


# --- the regions ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", _FILES)
def test_head_and_tail_are_prefix_and_suffix_of_the_whole_decode(name: str) -> None:
    assert _FOLDER is not None
    path = _FOLDER / name
    with LocalFileReader(name, path) as reader:
        assert is_compressed_backup(reader.read(0, 8))
        before = reader.bytes_read
        regions = read_compressed_regions(reader)
        assert regions.compressed_bytes_read == reader.bytes_read - before
    head, tail = regions.head, regions.tail

    assert head.startswith(b"TAPE") and _dblk_ok(head, 0)
    for tag in (b"SSET", b"VOLB", b"MSCI"):
        assert _dblks(head, tag), f"no {tag!r} block in the head"
    assert len(head) >= 16384

    (msls,) = _dblks(tail, b"MSLS")
    stream = msls + struct.unpack_from("<H", tail, msls + 8)[0]
    assert tail[stream : stream + 4] == b"MQCI"
    length = struct.unpack_from("<Q", tail, stream + 8)[0]
    assert tail[stream + 22 : stream + 26] == b"SCIN"
    assert stream + 22 + length <= len(tail)
    assert [e for e in _dblks(tail, b"ESET") if e > msls], "no ESET after the MSLS"

    whole = _decode_whole_file(path.read_bytes())
    assert whole.startswith(head)
    assert whole.endswith(tail)
    # Head and tail come from the two ends: a fraction of the file, small reads whatever its size.
    assert regions.compressed_bytes_read <= 64 * 1024 < path.stat().st_size


@pytest.mark.parametrize("name", _FILES)
def test_head_min_is_honoured(name: str) -> None:
    reader = _MemoryReader(name, _raw(name))
    small = read_compressed_regions(reader, head_min=0)
    assert _dblks(small.head, b"MSCI") and len(small.head) < 16384
    big = read_compressed_regions(_MemoryReader(name, _raw(name)), head_min=100_000)
    assert len(big.head) >= 100_000 and big.head.startswith(small.head)


@pytest.mark.parametrize("name", _FILES)
def test_region_without_index_footer_falls_back_to_walking(name: str) -> None:
    raw = bytearray(_raw(name))
    expected = read_compressed_regions(_MemoryReader(name, bytes(raw)))
    last_sfmb = len(raw) - 4096
    _used, array = struct.unpack_from("<II", raw, last_sfmb + 0x38)
    set_end = struct.unpack_from("<Q", raw, last_sfmb + array)[0]
    assert raw[set_end - 16 : set_end - 12] == b"\x01\x00\x01\x00"
    raw[set_end - 16 : set_end] = bytes(16)
    got = read_compressed_regions(_MemoryReader(name, bytes(raw)))
    assert got.head == expected.head
    assert got.tail.endswith(expected.tail)


def test_not_a_compressed_backup() -> None:
    assert not is_compressed_backup(b"TAPE\x00\x00\x00\x00")
    assert is_compressed_backup(MSSQLBAK_MAGIC + b"\x02\x00")
    with pytest.raises(BackupFormatError) as info:
        read_compressed_regions(_MemoryReader("plain.bak", b"TAPE" + bytes(8000)))
    assert info.value.key == "plain.bak" and info.value.offset == 0


# --- damaged copies ---------------------------------------------------------------------------------------


def _cuts(raw: bytes) -> list[int]:
    size = len(raw)
    last = size - 4096
    _used, array = struct.unpack_from("<II", raw, last + 0x38)
    set_end = struct.unpack_from("<Q", raw, last + array)[0]
    return sorted(
        {
            0,
            5,
            0x1E0 + 2,
            0x1E0 + 100,
            0x1000,
            0x2000 + 10,
            size // 2,
            set_end - 8,
            set_end,
            set_end + 4096,  # ends with the set's own filemark: a whole-looking file without its ESETs
            last,
            last + 100,
            size - 1,
        }
    )


@pytest.mark.parametrize("name", _FILES)
def test_truncated_copies_raise_backup_format_error(name: str, tmp_path: Path) -> None:
    raw = _raw(name)
    for cut in _cuts(raw):
        copy = tmp_path / f"cut-{cut}.bak"
        copy.write_bytes(raw[:cut])
        with LocalFileReader(name, copy) as reader, pytest.raises(BackupFormatError) as info:
            read_compressed_regions(reader)
        assert info.value.key == name
        assert 0 <= info.value.offset <= cut, (cut, str(info.value))
        assert name in str(info.value)


def _targets(raw: bytes) -> dict[str, int]:
    """Bit positions whose flip must be reported: record framing, filemarks, the index and its footer."""
    size = len(raw)
    last = size - 4096
    _used, array = struct.unpack_from("<II", raw, last + 0x38)
    set_end = struct.unpack_from("<Q", raw, last + array)[0]
    count, back = struct.unpack_from("<II", raw, set_end - 12)
    body = set_end - back
    last_entry = body + 16 * count
    last_chunk = struct.unpack_from("<Q", raw, last_entry + 8)[0]
    bits = {
        "first chunk's record type": 0x1E0 * 8 + 0,
        "first chunk's decoded size": (0x1E0 + 1) * 8 + 3,
        "first chunk's compressed size": (0x1E0 + 2) * 8,
        "first chunk's Huffman table": (0x1E0 + 28 + 7) * 8 + 2,
        "first filemark's header": (0x1000 + 0x10) * 8,
        "last filemark's header": (last + 4) * 8 + 1,
        "last filemark's list": (last + array) * 8 + 12,
        "set filemark's header": set_end * 8 + 3,
        "index footer's count": (set_end - 12) * 8 + 1,
        "index footer's distance": (set_end - 8) * 8 + 2,
        "index entry's chunk offset": (last_entry + 8) * 8,
        "last chunk's record type": last_chunk * 8 + 5,
        "last chunk's compressed size": (last_chunk + 2) * 8,
        "ESET chunk's record type": (set_end + 4096) * 8 + 1,
    }
    return bits


@pytest.mark.parametrize("name", _FILES)
def test_bit_flipped_copies_raise_backup_format_error(name: str, tmp_path: Path) -> None:
    raw = _raw(name)
    for what, bit in _targets(raw).items():
        damaged = bytearray(raw)
        damaged[bit // 8] ^= 1 << (bit % 8)
        copy = tmp_path / "flipped.bak"
        copy.write_bytes(damaged)
        with LocalFileReader(name, copy) as reader, pytest.raises(BackupFormatError) as info:
            read_compressed_regions(reader)
        assert info.value.key == name, what
        assert name in str(info.value), what


@pytest.mark.parametrize("name", _FILES)
def test_any_flip_in_the_bytes_read_gives_a_result_or_backup_format_error(name: str) -> None:
    # Without a known chunk checksum some flips in compressed data decode to other bytes; the reader must
    # then return, or raise BackupFormatError: never another exception, never a hang.
    raw = _raw(name)
    spots: list[int] = []

    class _Spy(_MemoryReader):
        def read(self, offset: int, length: int) -> bytes:
            spots.extend(range(offset, min(offset + length, len(raw))))
            return super().read(offset, length)

    read_compressed_regions(_Spy(name, raw))
    detected = 0
    for i in range(0, len(spots), max(1, len(spots) // 150)):
        byte = spots[i]
        damaged = bytearray(raw)
        damaged[byte] ^= 1 << (i % 8)
        try:
            read_compressed_regions(_MemoryReader(name, bytes(damaged)))
        except BackupFormatError as exc:
            assert exc.key == name
            detected += 1
    assert detected > 0
