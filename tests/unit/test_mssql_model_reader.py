"""The restore model's own header reader, piece by piece, on bytes built here from the format document
(sqlserver-backup-format.md); tests/corpus/test_model_reader.py compares it with Ferry's on real files."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID

import pytest

from tests.mssql_model import encodings as enc
from tests.mssql_model.backupfile import read_device, records
from tests.mssql_model.formaterrors import NotABackup, TruncatedBackup
from tests.mssql_model.mssqlbak import MAGIC
from tests.mssql_model.mtf import previous_filemarks, walk, xor16
from tests.mssql_model.xpress import decompress


class Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data

    @property
    def size(self) -> int:
        return len(self.data)

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]


def test_lsn_prints_as_numeric_25() -> None:
    # Section 1: 34:167:4 is 34000000016700004.
    assert enc.lsn(struct.pack("<IIH", 34, 167, 4), 0) == 34000000016700004
    assert enc.lsn(bytes(10), 0) == 0


def test_mtf_date_and_zone() -> None:
    year, month, day, hour, minute, second = 2017, 5, 18, 4, 18, 19
    value = year << 26 | month << 22 | day << 17 | hour << 12 | minute << 6 | second
    zone = enc.quarter_hours(-20)  # signed: UTC-5
    assert enc.mtf_date(value.to_bytes(5, "big"), 0, zone) == datetime(2017, 5, 18, 4, 18, 19, tzinfo=zone)
    assert zone.utcoffset(None) == timedelta(hours=-5)
    assert enc.mtf_date(bytes(5), 0, None) is None
    with pytest.raises(NotABackup, match="no date"):
        enc.mtf_date((2017 << 26 | 13 << 22 | 1 << 17).to_bytes(5, "big"), 0, None)


def test_guid_and_filetime() -> None:
    value = UUID("7169ad87-36d4-41ef-b04f-c064dd39ff25")
    assert enc.guid(value.bytes_le, 0) == value
    assert enc.guid(bytes(16), 0) is None
    ticks = (
        (datetime(2020, 1, 2, tzinfo=UTC) - datetime(1601, 1, 1, tzinfo=UTC))
        // timedelta(microseconds=1)
        * 10
    )
    assert enc.filetime(struct.pack("<Q", ticks), 0) == datetime(2020, 1, 2, tzinfo=UTC)


def _dblk(kind: bytes, size: int = 512, body: bytes = b"") -> bytes:
    """A DBLK of `size` bytes: common header (checksummed), `body` from 0x34, one SPAD stream to the end."""
    first_event = 0x34 + len(body)
    first_event += -first_event % 4
    head = bytearray(kind + bytes(4) + struct.pack("<H", first_event) + bytes(0x32 - 10))
    head[0x30] = 2
    head += struct.pack("<H", xor16(bytes(head[:0x32])))
    block = bytearray(head + body)
    block += bytes(first_event - len(block))
    spad = bytearray(b"SPAD" + bytes(4) + struct.pack("<Q", size - first_event - 22) + bytes(4))
    spad += struct.pack("<H", xor16(bytes(spad)))
    return bytes(block + spad + bytes(size - first_event - 22))


def test_walk_checks_every_header_checksum() -> None:
    data = _dblk(b"SSET") + _dblk(b"VOLB")
    assert [b.block_type for b in walk(Bytes(data))] == ["SSET", "VOLB"]
    damaged = bytearray(data)
    damaged[512 + 0x0C] ^= 1
    with pytest.raises(NotABackup, match="checksum"):
        list(walk(Bytes(bytes(damaged))))


def test_walk_ends_exactly_at_the_end() -> None:
    data = _dblk(b"SSET")
    with pytest.raises(TruncatedBackup):
        list(walk(Bytes(data[:-1])))
    with pytest.raises(NotABackup, match="no MTF descriptor block"):
        list(walk(Bytes(data + b"JUNK" + bytes(508))))


def test_filemark_list_layouts() -> None:
    # 2008 and later: 0x48 at 0x3C, the list from 0x48; 2005 (and MTF 1.00a): the list at 0x3C.
    new = bytearray(512)
    struct.pack_into("<III", new, 0x34, 55, 2, 0x48)
    struct.pack_into("<QQ", new, 0x48, 0x164200, 0x400)
    assert previous_filemarks(bytes(new), 0x165000) == [0x164200, 0x400]
    old = bytearray(512)
    struct.pack_into("<IIQQ", old, 0x34, 56, 2, 0x356600, 0x400)
    assert previous_filemarks(bytes(old), 0x357400) == [0x356600, 0x400]
    struct.pack_into("<I", new, 0x38, 56)
    with pytest.raises(NotABackup, match="lists 56 of 55"):
        previous_filemarks(bytes(new), 0)


def test_records_need_a_scin_first() -> None:
    with pytest.raises(NotABackup, match="SCIN"):
        records(b"SFIN" + struct.pack("<I", 8))
    with pytest.raises(NotABackup, match="length"):
        records(b"SCIN" + struct.pack("<I", 4096) + bytes(100))


def test_foreign_and_empty_devices() -> None:
    with pytest.raises(TruncatedBackup):
        read_device(Bytes(b""))
    with pytest.raises(NotABackup):
        read_device(Bytes(b"%PDF-1.7" + bytes(1024)))
    with pytest.raises(TruncatedBackup):
        read_device(Bytes(MAGIC + bytes(64)))


def _literal_block(text: bytes) -> bytes:
    """[MS-XCA] LZ77+Huffman with the 256 literals at 8 bits and no matches: each symbol's canonical code
    is the byte itself; the bit stream is 16-bit little-endian words read from their top bit."""
    table = bytes([0x88] * 128) + bytes(128)
    padded = text + bytes(-len(text) % 2 + 4)
    words = b"".join(struct.pack("<H", padded[i] << 8 | padded[i + 1]) for i in range(0, len(padded), 2))
    return table + words


def test_xpress_literals() -> None:
    assert decompress(_literal_block(b"MTF in a box"), 12) == b"MTF in a box"


def test_xpress_refuses_a_table_that_is_no_code() -> None:
    with pytest.raises(NotABackup, match="prefix code"):
        decompress(bytes([0x11] * 256) + bytes(8), 4)  # 512 codes of 1 bit
    with pytest.raises(NotABackup, match="Huffman table"):
        decompress(bytes(100), 4)


def test_zone_is_signed() -> None:
    assert enc.quarter_hours(8) == timezone(timedelta(hours=2))
