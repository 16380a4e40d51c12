"""Walk the blocks of an uncompressed backup file, reading only their headers.

Bulk data (database pages, log blocks) is skipped by its length, so a scan reads a few kilobytes per file
whatever its size: the first 16 KiB, then one small page wherever a block header lies beyond it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ferry.engines.sqlserver.mtf import (
    DBLK_HEADER_SIZE,
    STREAM_HEADER_SIZE,
    Dblk,
    FormatProblem,
    StreamHeader,
    check_dblk,
    check_stream_header,
    parse_dblk,
    parse_stream_header,
    u16,
)
from ferry.stores.base import RangeReader

HEAD_BYTES = 16384
PAGE = 4096
# Streams whose data the metadata needs. MQCI (the SQL Server header) is a few KiB; RAID is 32 bytes.
WANTED_STREAMS = frozenset({b"RAID", b"MQCI"})
MAX_WANTED_STREAM = 1 << 20


class PagedSource:
    """Ranged reads through a page cache: neighbouring headers cost one read, not one each."""

    def __init__(self, reader: RangeReader, head: int = HEAD_BYTES, page: int = PAGE) -> None:
        self.reader = reader
        self.size = reader.size
        self._page = page
        self._pages: dict[int, bytes] = {}
        # The last contiguous bytes handed out, which `view` serves without copying: the head at first.
        self._window = self._fetch(0, min(head, self.size))
        self._window_start = 0

    def _fetch(self, offset: int, length: int) -> bytes:
        first, last = offset // self._page, (offset + max(length, 1) - 1) // self._page
        missing = [p for p in range(first, last + 1) if p not in self._pages]
        if not missing:
            return b""
        start = missing[0] * self._page
        data = self.reader.read(start, (missing[-1] + 1) * self._page - start)
        for i, p in enumerate(range(missing[0], missing[-1] + 1)):
            self._pages[p] = data[i * self._page : (i + 1) * self._page]
        return data

    def view(self, offset: int, length: int) -> tuple[bytes, int]:
        """A buffer holding the `length` bytes at `offset` (fewer where the file ends), and where they start
        in it. The walk parses headers in place with `unpack_from`, so most headers, which lie in the bytes
        of the last read, cost neither a copy nor a page lookup."""
        at = offset - self._window_start
        if at >= 0 and at + length <= len(self._window):
            return self._window, at
        data = self.get(offset, max(length, self._page - offset % self._page))
        self._window, self._window_start = data, offset
        return data, 0

    def get(self, offset: int, length: int) -> bytes:
        """`length` bytes at `offset`, or fewer where the file ends."""
        # Most requests are a header inside one page already read: serve those without the general path.
        page, skip = divmod(offset, self._page)
        if offset >= 0 and length >= 0 and skip + length <= self._page and offset + length <= self.size:
            data = self._pages.get(page)
            if data is not None and len(data) >= skip + length:
                return data[skip : skip + length]
        length = max(0, min(length, self.size - offset))
        if length == 0:
            return b""
        self._fetch(offset, length)
        first = offset // self._page
        last = (offset + length - 1) // self._page
        joined = b"".join(self._pages[p] for p in range(first, last + 1))
        skip = offset - first * self._page
        return joined[skip : skip + length]

    def exact(self, offset: int, length: int, what: str) -> bytes:
        data = self.get(offset, length)
        if len(data) < length:
            raise FormatProblem(self.size, f"unexpected end of data inside {what}")
        return data


@dataclass(frozen=True)
class Block:
    """A DBLK with the data of the streams the metadata needs (others are only located, never read)."""

    header: Dblk
    streams: tuple[tuple[StreamHeader, bytes | None], ...]

    def stream(self, sid: bytes) -> bytes | None:
        for head, data in self.streams:
            if head.id == sid and data is not None:
                return data
        return None


def walk_blocks(src: PagedSource) -> Iterator[Block]:
    """Every block from byte 0 to the end of the file. A file that does not end on a block boundary is
    truncated (or was appended to mid-write): that raises FormatProblem at the offset where it breaks."""
    offset = 0
    soft_filemark = 512
    size = src.size
    while offset < size:
        # Headers are checked in place in the buffer `view` gives, which usually holds the block header,
        # the bytes up to its first stream and its stream headers: the walk is a scan's main cost.
        buf, at = src.view(offset, DBLK_HEADER_SIZE)
        if len(buf) - at < DBLK_HEADER_SIZE:  # the file ends first: say where it ends
            raise FormatProblem(size, "unexpected end of data inside a block header")
        btype, attributes, first = check_dblk(buf, offset, at)
        if btype == b"SFMB":
            if offset + soft_filemark > size:
                raise FormatProblem(size, "unexpected end of data inside a filemark")
            yield Block(Dblk(offset, btype, attributes, first, buf[at + 0x30], buf[at : at + 52]), ())
            offset += soft_filemark
            continue
        if btype == b"TAPE":
            tape = src.exact(offset, 0x42, "the media header")
            soft_filemark = max(1, u16(tape, 0x40)) * 512
        raw = buf[at : at + first] if at + first <= len(buf) else src.exact(offset, first, "a block")
        dblk = Dblk(offset, btype, attributes, first, buf[at + 0x30], raw)
        streams: list[tuple[StreamHeader, bytes | None]] = []
        pos = offset + first
        while True:
            head, i = src.view(pos, STREAM_HEADER_SIZE)
            if len(head) - i < STREAM_HEADER_SIZE:  # the file ends first (perhaps before `pos`)
                raise FormatProblem(size, "unexpected end of data inside a stream header")
            sid, length = check_stream_header(head, pos, i)
            end = pos + STREAM_HEADER_SIZE + length
            if end > size:
                raise FormatProblem(size, f"unexpected end of data inside stream {sid.decode('latin-1')}")
            data = None
            if sid in WANTED_STREAMS:
                if length > MAX_WANTED_STREAM:
                    raise FormatProblem(pos, f"{sid.decode()} stream is implausibly long")
                data = src.exact(pos + STREAM_HEADER_SIZE, length, f"stream {sid.decode()}")
            streams.append((StreamHeader(pos, sid, length), data))
            if sid == b"SPAD":  # the block ends with it, and the next one follows unaligned
                pos = end
                break
            pos = (end + 3) & ~3  # StreamHeader.next_offset, without the property calls
            if len(streams) > 4096:
                raise FormatProblem(pos, "block has too many streams")
        yield Block(dblk, tuple(streams))
        offset = pos


def blocks_in_buffer(buf: bytes, *, stop_at_bulk: bool) -> Iterator[Block]:
    """Blocks of a decoded buffer whose logical offset is 0 (a compressed backup's head). It stops quietly
    where the buffer ends, and, with `stop_at_bulk`, at the first block of database or log data."""
    offset = 0
    while offset + DBLK_HEADER_SIZE <= len(buf):
        dblk = parse_dblk(buf[offset : offset + DBLK_HEADER_SIZE], offset)
        if stop_at_bulk and dblk.type in (b"MSDA", b"MSTL", b"MSLS"):
            return
        if dblk.type == b"SFMB":
            return  # compressed media carries none; nothing after one is needed from a head
        block, end = _block_at(buf, offset)
        if block is None:
            return
        yield block
        offset = end


def find_block(buf: bytes, btype: bytes) -> Block | None:
    """The last complete block of `btype` in a buffer whose logical offset is unknown (a compressed
    backup's tail): each candidate must pass the header checksum and hold its streams in the buffer."""
    found = None
    start = 0
    while (hit := buf.find(btype, start)) >= 0:
        start = hit + 1
        try:
            block, _ = _block_at(buf, hit)
        except FormatProblem:
            continue
        if block is not None:
            found = block
    return found


def _block_at(buf: bytes, offset: int) -> tuple[Block | None, int]:
    dblk = parse_dblk(buf[offset : offset + DBLK_HEADER_SIZE], offset)
    if offset + dblk.first_event > len(buf):
        return None, offset
    dblk = parse_dblk(buf[offset : offset + dblk.first_event], offset)
    streams: list[tuple[StreamHeader, bytes | None]] = []
    pos = offset + dblk.first_event
    while True:
        if pos + STREAM_HEADER_SIZE > len(buf):
            return None, offset
        sh = parse_stream_header(buf[pos : pos + STREAM_HEADER_SIZE], pos)
        if sh.data_offset + sh.length > len(buf):
            return None, offset
        data = buf[sh.data_offset : sh.data_offset + sh.length] if sh.id in WANTED_STREAMS else None
        streams.append((sh, data))
        pos = sh.next_offset
        if sh.id == b"SPAD":
            return Block(dblk, tuple(streams)), pos
