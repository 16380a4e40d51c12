"""The format document, section 1 ("Primitive encodings"): LSNs, MTF dates, GUIDs and FILETIMEs as the
backup headers store them. Every value that is all zero is NULL (None)."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID

from tests.mssql_model.formaterrors import NotABackup


def lsn(data: bytes, at: int) -> int:
    """u32 VLF sequence, u32 block offset, u16 slot: printed as numeric(25,0), seq*10^15 + block*10^5 +
    slot (34:167:4 is 34000000016700004). NULL reads as 0, as HEADERONLY's LSN columns compare."""
    seq, block, slot = struct.unpack_from("<IIH", data, at)
    return int(seq) * 10**15 + int(block) * 10**5 + int(slot)


def guid(data: bytes, at: int) -> UUID | None:
    """Windows byte order (Data1..Data3 little-endian): uuid's bytes_le."""
    raw = bytes(data[at : at + 16])
    if len(raw) != 16:
        raise NotABackup("a GUID outside its record")
    return None if raw == bytes(16) else UUID(bytes_le=raw)


def mtf_date(data: bytes, at: int, zone: timezone | None) -> datetime | None:
    """MTF_DATE_TIME: 5 bytes big-endian, year 14 bits, month 4, day 5, hour 5, minute 6, second 6;
    local server time (section 5: the SSET byte gives its offset from UTC)."""
    raw = bytes(data[at : at + 5])
    if len(raw) != 5:
        raise NotABackup("a date outside its record")
    value = int.from_bytes(raw, "big")
    if value == 0:
        return None
    second = value & 0x3F
    minute = (value >> 6) & 0x3F
    hour = (value >> 12) & 0x1F
    day = (value >> 17) & 0x1F
    month = (value >> 22) & 0x0F
    year = value >> 26
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=zone)
    except ValueError:
        raise NotABackup(f"a date that is no date: {year}-{month}-{day} {hour}:{minute}:{second}") from None


def filetime(data: bytes, at: int) -> datetime | None:
    """u64 ticks of 100 ns since 1601-01-01 UTC."""
    (ticks,) = struct.unpack_from("<Q", data, at)
    if ticks == 0:
        return None
    return datetime(1601, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(ticks) // 10)


def quarter_hours(value: int) -> timezone:
    """The SSET time-zone byte: local = UTC + value x 15 minutes (signed)."""
    return timezone(timedelta(minutes=15 * value))
