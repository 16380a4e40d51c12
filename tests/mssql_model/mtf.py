"""The format document, section 2 ("MTF container"): a backup file is a chain of Microsoft Tape Format
descriptor blocks (DBLKs), each a 52-byte common header (2.1) and a chain of streams (2.2) that ends with
an SPAD stream; the next DBLK starts where the SPAD data ends. SFMB blocks have no streams and are
SoftFilemarkBlockSize x 512 bytes long (TAPE 0x40). The chain reaches the end of the file exactly.

The model keeps the fixed part and strings of every DBLK and the data of the few streams it names
(RAID, MQCI); bulk data (MQDA, MQTL) is skipped by its length, so a header read costs a few KiB.
Every header and stream checksum is checked: a file that breaks one is not a backup.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from tests.mssql_model.formaterrors import NotABackup, TruncatedBackup

DBLK_HEADER = 52
STREAM_HEADER = 22
KEPT_STREAMS = frozenset({"RAID", "MQCI"})
# 2.1: MTF's block types and SQL Server's own.
BLOCK_TYPES = frozenset({"TAPE", "SFMB", "SSET", "VOLB", "ESET", "EOTM", "MSCI", "MSDA", "MSTL", "MSLS"})


class Source(Protocol):
    """Bytes by offset: a device, or the decoded stream of a compressed one."""

    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes: ...


class Windowed:
    """Reads a source in aligned 64 KiB windows and keeps the last few: the header walk makes many
    small reads close together (a ranged HTTP GET each, otherwise)."""

    WINDOW = 65536

    def __init__(self, source: Source, keep: int = 8) -> None:
        self._source = source
        self._keep = keep
        self._windows: dict[int, bytes] = {}

    @property
    def size(self) -> int:
        return self._source.size

    def _window(self, index: int) -> bytes:
        data = self._windows.get(index)
        if data is None:
            data = self._source.read(index * self.WINDOW, self.WINDOW)
            if len(self._windows) >= self._keep:
                del self._windows[next(iter(self._windows))]
            self._windows[index] = data
        return data

    def read(self, offset: int, length: int) -> bytes:
        """Exactly `length` bytes at `offset`, or TruncatedBackup where the source ends first."""
        if offset < 0 or length < 0:
            raise NotABackup(f"a read at offset {offset} of {length} bytes")
        if offset + length > self.size:
            raise TruncatedBackup(f"the file ends at byte {self.size}, inside a structure at {offset}")
        if length > 4 * self.WINDOW:
            data = self._source.read(offset, length)
        else:
            parts = []
            first, last = offset // self.WINDOW, (offset + length - 1) // self.WINDOW
            for index in range(first, last + 1):
                parts.append(self._window(index))
            joined = b"".join(parts)
            start = offset - first * self.WINDOW
            data = joined[start : start + length]
        if len(data) != length:
            raise TruncatedBackup(f"the file ends inside a structure at {offset}")
        return data


def xor16(data: bytes) -> int:
    """2.1 / 2.2: a header checksum is the XOR of the u16 words before it."""
    value = 0
    for (word,) in struct.iter_unpack("<H", data):
        value ^= word
    return value


@dataclass(frozen=True)
class Stream:
    stream_id: str
    offset: int  # of the stream header
    length: int
    data: bytes | None  # kept streams only


@dataclass(frozen=True)
class Block:
    """One DBLK: its type, where it is, its bytes up to the first stream (fixed part and strings)."""

    block_type: str
    offset: int
    header: bytes
    streams: list[Stream] = field(default_factory=list)

    def stream(self, stream_id: str) -> Stream | None:
        return next((s for s in self.streams if s.stream_id == stream_id), None)

    def u16(self, at: int) -> int:
        return int(struct.unpack_from("<H", self.header, at)[0])

    def u32(self, at: int) -> int:
        return int(struct.unpack_from("<I", self.header, at)[0])

    def text(self, at: int) -> str | None:
        """The string a TAPE_ADDRESS at `at` points to (1.: u16 size, u16 offset from the DBLK; size 0
        is NULL), in the block's string type (0x30: 1 ANSI, 2 UTF-16LE)."""
        size, where = struct.unpack_from("<HH", self.header, at)
        if size == 0:
            return None
        raw = self.header[where : where + size]
        if len(raw) != size:
            raise NotABackup(f"{self.block_type} block at {self.offset}: a string outside the block")
        if self.header[0x30] == 1:
            return raw.decode("latin-1")
        return raw.decode("utf-16-le", "replace")

    def raw(self, at: int) -> bytes | None:
        size, where = struct.unpack_from("<HH", self.header, at)
        return bytes(self.header[where : where + size]) if size else None


def previous_filemarks(block: bytes, offset: int) -> list[int]:
    """2.7: an SFMB lists the byte offsets of the filemarks before it on the medium, the latest first:
    u32 entries at 0x34, u32 entries used at 0x38, then the u64 list. SQL Server 2008 and later put 0x48 in
    the u32 at 0x3C and start the list there (55 entries in 512 bytes, 503 in 4 KiB); the 2005 sample
    starts it at 0x3C, as MTF 1.00a does. Both hold on every filemark of the corpus."""
    count, used, first = struct.unpack_from("<III", block, 0x34)
    start = 0x48 if first == 0x48 else 0x3C
    if used > count or start + 8 * used > len(block):
        raise NotABackup(f"the filemark at byte {offset} lists {used} of {count} entries")
    return [int(v) for v in struct.unpack_from(f"<{used}Q", block, start)]


def check_filemark(block: bytes, offset: int, earlier: list[int]) -> None:
    """The filemark at `offset` lists the filemarks before it, the latest first, as many as it holds."""
    count = struct.unpack_from("<I", block, 0x34)[0]
    listed = previous_filemarks(block, offset)
    if listed != earlier[::-1][: min(count, len(earlier))]:
        raise NotABackup(f"the filemark at byte {offset} lists {listed}, not the filemarks before it")


def _block_type(raw: bytes, offset: int) -> str:
    name = raw.decode("latin-1")
    if name not in BLOCK_TYPES:
        raise NotABackup(f"no MTF descriptor block at byte {offset} (found {raw!r})")
    return name


def walk(source: Source, soft_filemark: int = 512) -> Iterator[Block]:
    """Every DBLK from offset 0 to the end of `source`, in order."""
    reader = source if isinstance(source, Windowed) else Windowed(source)
    offset = 0
    filemarks: list[int] = []
    while offset < reader.size:
        common = reader.read(offset, DBLK_HEADER)
        block_type = _block_type(common[:4], offset)
        if xor16(common[:0x32]) != struct.unpack_from("<H", common, 0x32)[0]:
            raise NotABackup(f"{block_type} block at byte {offset}: its header checksum does not match")
        if block_type == "SFMB":
            if offset + soft_filemark > reader.size:
                raise TruncatedBackup(f"the file ends inside the filemark at byte {offset}")
            check_filemark(reader.read(offset, soft_filemark), offset, filemarks)
            filemarks.append(offset)
            yield Block(block_type, offset, common)
            offset += soft_filemark
            continue
        first_event = struct.unpack_from("<H", common, 0x08)[0]
        if first_event < DBLK_HEADER:
            raise NotABackup(f"{block_type} block at byte {offset}: its first stream is inside its header")
        block = Block(block_type, offset, reader.read(offset, first_event))
        if block_type == "TAPE" and len(block.header) > 0x42:
            # 2.4: the soft filemark size is in 512-byte units.
            soft_filemark = max(1, block.u16(0x40)) * 512
        offset = _streams(reader, block, offset + first_event)
        yield block


def _streams(reader: Windowed, block: Block, at: int) -> int:
    """Reads the stream chain of `block` starting at `at`; returns where the next DBLK starts."""
    while True:
        head = reader.read(at, STREAM_HEADER)
        if xor16(head[:20]) != struct.unpack_from("<H", head, 20)[0]:
            where = f"{block.block_type} block at byte {block.offset}"
            raise NotABackup(f"{where}: a stream checksum does not match")
        stream_id = head[:4].decode("latin-1")
        length = int(struct.unpack_from("<Q", head, 8)[0])
        data = reader.read(at + STREAM_HEADER, length) if stream_id in KEPT_STREAMS else None
        block.streams.append(Stream(stream_id, at, length, data))
        end = at + STREAM_HEADER + length
        if stream_id == "SPAD":
            if end > reader.size:
                where = f"{block.block_type} block at byte {block.offset}"
                raise TruncatedBackup(f"the file ends inside the {where}")
            return end
        at = (end + 3) & ~3
