"""Microsoft Tape Format primitives: descriptor blocks (DBLKs), stream headers, and their encodings.

Only what the metadata needs is decoded. Every structure is checked (XOR checksums, bounds) so that a
truncated or damaged file fails with the byte offset of the first thing that is wrong, never later with
a value that silently makes no sense. See docs/engines.md and the format notes for the layout.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import NamedTuple
from uuid import UUID, SafeUUID

from ferry.core.lsn import sqlserver_lsn

DBLK_HEADER_SIZE = 52
STREAM_HEADER_SIZE = 22

# Block types whose headers Ferry recognises. Anything else at a block boundary means the walk is lost.
KNOWN_BLOCKS = frozenset(
    {b"TAPE", b"SFMB", b"SSET", b"VOLB", b"ESET", b"EOTM", b"MSCI", b"MSDA", b"MSTL", b"MSLS"}
)

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_LSN = struct.Struct("<IIH")
_DBLK = struct.Struct("<4sIH")
_STREAM = struct.Struct("<4sHHQ")


class FormatProblem(Exception):
    """Raised inside the parser with the absolute byte offset; the reader turns it into BackupFormatError."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason


def xor16(data: bytes | memoryview, words: int) -> int:
    """XOR of the first `words` little-endian u16 words: MTF's header checksum. Folding one big integer in
    halves (aligned to 16 bits) costs a handful of operations instead of a Python loop per word."""
    n = int.from_bytes(data[: words * 2], "little")
    for bits in _FOLDS[words] if words < len(_FOLDS) else _folds(words):
        n = (n >> bits) ^ (n & ((1 << bits) - 1))
    return n


def _folds(words: int) -> tuple[int, ...]:
    bits = 16 << max(0, words - 1).bit_length()
    steps = []
    while bits > 16:
        bits //= 2
        steps.append(bits)
    return tuple(steps)


_FOLDS = tuple(_folds(w) for w in range(64))  # the halvings for each header size, worked out once


class Dblk(NamedTuple):
    """A descriptor block header. `raw` holds the bytes from the block start up to its first stream.
    Tuples, not dataclasses: a scan makes a dozen of these per file, and a tuple is made in C."""

    offset: int
    type: bytes
    attributes: int
    first_event: int
    string_type: int
    raw: bytes


class StreamHeader(NamedTuple):
    offset: int
    id: bytes
    length: int

    @property
    def data_offset(self) -> int:
        return self.offset + STREAM_HEADER_SIZE

    @property
    def next_offset(self) -> int:
        """Streams are 4-byte aligned; the SPAD ending a block is not (the next DBLK follows directly)."""
        end = self.data_offset + self.length
        return end if self.id == b"SPAD" else (end + 3) & ~3


def parse_dblk(raw: bytes, offset: int) -> Dblk:
    """Check and decode a DBLK header. `raw` starts at the block and holds at least its fixed part."""
    btype, attributes, first_event = check_dblk(raw, offset)
    return Dblk(offset, btype, attributes, first_event, raw[0x30], raw)


def check_dblk(buf: bytes, offset: int, at: int = 0) -> tuple[bytes, int, int]:
    """The checks of `parse_dblk` on the header at `buf[at:]` (file offset `offset`), returning (type,
    attributes, first event) without building a Dblk."""
    if len(buf) - at < DBLK_HEADER_SIZE:
        raise FormatProblem(offset + max(0, len(buf) - at), "unexpected end of data inside a block header")
    btype, attributes, first_event = _DBLK.unpack_from(buf, at)
    if btype not in KNOWN_BLOCKS:
        raise FormatProblem(offset, f"expected a tape-format block, found {_show(btype)}")
    # The 25 words and their checksum XOR to zero: one fold over all 26 words.
    if xor16(buf[at : at + DBLK_HEADER_SIZE], 26):
        raise FormatProblem(offset, f"checksum of the {btype.decode()} block header does not match")
    if btype != b"SFMB" and not DBLK_HEADER_SIZE <= first_event <= 0x4000:
        raise FormatProblem(offset + 8, f"{btype.decode()} block points at its data out of range")
    return btype, attributes, first_event


def check_stream_header(buf: bytes, offset: int, at: int = 0) -> tuple[bytes, int]:
    """(id, length) of the stream header at `buf[at:]` (file offset `offset`), its checksum checked."""
    if len(buf) - at < STREAM_HEADER_SIZE:
        raise FormatProblem(offset + max(0, len(buf) - at), "unexpected end of data inside a stream header")
    sid, _fs_attr, _tf_attr, length = _STREAM.unpack_from(buf, at)
    if xor16(buf[at : at + STREAM_HEADER_SIZE], 11):
        raise FormatProblem(offset, f"checksum of stream header {_show(sid)} does not match")
    return sid, length


def parse_stream_header(raw: bytes, offset: int) -> StreamHeader:
    sid, length = check_stream_header(raw, offset)
    return StreamHeader(offset, sid, length)


def _show(tag: bytes) -> str:
    text = tag.decode("latin-1")
    return repr(text) if text.isprintable() else "0x" + tag.hex()


# --- field decoders over a record (`buf`) with offsets relative to its start --------------------------


def u8(buf: bytes, off: int) -> int:
    return buf[off]


def u16(buf: bytes, off: int) -> int:
    return int(_U16.unpack_from(buf, off)[0])


def u32(buf: bytes, off: int) -> int:
    return int(_U32.unpack_from(buf, off)[0])


def u64(buf: bytes, off: int) -> int:
    return int(_U64.unpack_from(buf, off)[0])


def lsn(buf: bytes, off: int) -> int:
    vlf, block, slot = _LSN.unpack_from(buf, off)
    return sqlserver_lsn(vlf, block, slot)


_NO_GUID = bytes(16)
_new_uuid = object.__new__
_set = object.__setattr__


def guid(buf: bytes, off: int) -> UUID | None:
    raw = bytes(buf[off : off + 16])
    if len(raw) < 16 or raw == _NO_GUID:
        return None
    # UUID(bytes_le=...) with its argument checks is a measurable share of a scan, which reads a dozen
    # GUIDs per file: reorder the Windows byte order by hand and set the value directly.
    value = int.from_bytes(raw[3::-1] + raw[5:3:-1] + raw[7:5:-1] + raw[8:], "big")
    u: UUID = _new_uuid(UUID)
    _set(u, "int", value)
    _set(u, "is_safe", SafeUUID.unknown)
    return u


def text(buf: bytes, ta_off: int, base: int = 0) -> str | None:
    """A string through a TAPE_ADDRESS (u16 size, u16 offset from `base`). Size 0 is NULL."""
    size, rel = _U16.unpack_from(buf, ta_off)[0], _U16.unpack_from(buf, ta_off + 2)[0]
    if size == 0:
        return None
    start = base + rel
    if start + size > len(buf):
        raise ValueError(f"string at +{ta_off:#x} points past its record")
    return bytes(buf[start : start + size]).decode("utf-16-le")


def ta_offset(buf: bytes, ta_off: int) -> int | None:
    """Where a TAPE_ADDRESS points, or None for NULL: used to find where a record's strings begin."""
    size, rel = _U16.unpack_from(buf, ta_off)[0], _U16.unpack_from(buf, ta_off + 2)[0]
    return rel if size else None


def mtf_date(buf: bytes, off: int, tz: timezone) -> datetime | None:
    """MTF_DATE_TIME: 40 bits, big-endian, year 14 / month 4 / day 5 / hour 5 / minute 6 / second 6.
    Values are the server's local time; `tz` is its UTC offset from the SSET block."""
    v = int.from_bytes(buf[off : off + 5], "big")
    if v == 0:
        return None
    second, minute = v & 0x3F, (v >> 6) & 0x3F
    hour, day = (v >> 12) & 0x1F, (v >> 17) & 0x1F
    month, year = (v >> 22) & 0xF, v >> 26
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=tz)
    except ValueError:
        raise ValueError(f"date at +{off:#x} is not a valid date") from None


_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)


def filetime(buf: bytes, off: int) -> datetime | None:
    """A Windows FILETIME: 100-ns ticks since 1601-01-01 UTC. Zero is NULL."""
    ticks = u64(buf, off)
    if ticks == 0:
        return None
    try:
        return _FILETIME_EPOCH + timedelta(microseconds=ticks // 10)
    except OverflowError:
        raise ValueError(f"FILETIME at +{off:#x} is out of range") from None


def quarter_hours_tz(value: int) -> timezone:
    """The SSET time-zone byte: signed quarter hours east of UTC. Real offsets lie within -12 h..+14 h;
    anything further is a damaged byte, not a place on Earth."""
    signed = value - 256 if value > 127 else value
    if abs(signed) > 14 * 4:
        raise ValueError(f"time zone of {signed * 15} minutes is out of range")
    return timezone(timedelta(minutes=15 * signed))


ReadFn = Callable[[int, int], bytes]
