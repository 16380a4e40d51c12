"""The `MSSQLBAK` container of compressed SQL Server backups: its metadata, read from the head and the tail.

Layout, as observed on SQL Server 2016 files (see sqlserver-backup-format.md §8 for the first part):

- 0x000: `MSSQLBAK`, u32 2, u32 3, then uninitialised bytes up to the first record at 0x1E0.
- Records. The first byte of a record's u32 tag says what it is; bits 16-31 are a byte count C.
  - 0x21, chunk: byte 1 = decoded size / 512 (at most 64 KiB); 28-byte header, then C bytes of one
    [MS-XCA] LZ77+Huffman stream. Header bytes 4-19 are uninitialised memory (they differ between
    identical chunks, and hold user-mode pointers), 20-23 are zero, 24-27 are a 32-bit check value of
    the chunk's contents (not a plain CRC-32 or CRC-32C; not used here).
  - 0x24, padding: 24-byte header then C filler bytes, up to the next 4 KiB boundary.
  - 0x2C, chunk index: the last record of a backup set's region (layout below).
- Between regions, uncompressed MTF soft filemarks (`SFMB` DBLKs, 4 KiB, valid header checksum). Their
  u32 at 0x38 counts the earlier filemarks and the u32 at 0x3C is the offset of a u64 array holding those
  filemarks' physical byte offsets, newest first. The file ends with one, so the last 4 KiB of a
  complete file name every region boundary.
- Regions: [TAPE chunk, padding] SFMB [SSET ... MSLS chunks, index] SFMB [ESET chunk, padding] SFMB EOF.
- The index record: tag 0x2C with 20 zero bytes, then a 16-byte header (u16 1, u16 1, u32 count,
  u32 distance from the region's end back to this header, u32 unknown), then `count` pairs of u64
  (offset in the set's decoded MTF stream, physical offset of a chunk record), then zeros, and a copy of
  the 16-byte header as the last 16 bytes of the region. The indexed chunks are those that begin where a
  bulk stream (MQDA database pages, MQTL log) ends; so the MSLS DBLK, written after the last bulk stream,
  starts in the last indexed chunk or after it.

So the tail is found from the end: last SFMB -> end of the set's region -> footer -> index -> last indexed
chunk -> walk the few chunk records from there to the index, then the chunk(s) of the ESET region. The
cost is a handful of small reads whatever the file size. Only when a region has no index footer (a writer
we have not seen) does the reader fall back to walking that region's record headers, 4 bytes a read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NoReturn

from ferry.core.errors import BackupFormatError
from ferry.engines.sqlserver.xpress import XpressError, decompress_lz77_huffman
from ferry.stores.base import RangeReader

__all__ = [
    "MSSQLBAK_MAGIC",
    "CompressedRegions",
    "is_compressed_backup",
    "read_compressed_regions",
]

MSSQLBAK_MAGIC = b"MSSQLBAK"

_FIRST_RECORD = 0x1E0
_SFMB = b"SFMB"
_SFMB_SIZE = 4096
_TAG_CHUNK = 0x21
_TAG_PAD = 0x24
_TAG_INDEX = 0x2C
_CHUNK_HEADER = 28
_PAD_HEADER = 24
_INDEX_HEADER = 24
_FOOTER = 16
_FOOTER_MAGIC = b"\x01\x00\x01\x00"
_MIN_CHUNK_DATA = 260  # a 256-byte code length table and the first 4 bytes of bits
_DBLK_HEADER = 52
_STREAM_HEADER = 22
_HEAD_CAP = 256 * 1024  # decoded bytes; MSCI ends within the first 16 KiB on every sample
_TAIL_BUDGET = 16 * 1024 * 1024  # compressed bytes the tail may walk before giving up
_MAX_INDEX = 65536  # chunk index entries; one per bulk stream, so a few in practice
_CACHE_BLOCK = 16 * 1024
_HEAD_STOP = (b"MSDA", b"MSTL", b"MSLS")


def is_compressed_backup(head: bytes) -> bool:
    """True for the start of a compressed (`MSSQLBAK`) backup."""
    return head[:8] == MSSQLBAK_MAGIC


@dataclass(frozen=True)
class CompressedRegions:
    """Decoded MTF bytes: `head` from logical offset 0, `tail` ending at the stream's end."""

    head: bytes
    tail: bytes
    compressed_bytes_read: int


class _Cache:
    """Aligned 16 KiB blocks of the file, each fetched at most once; runs of missing blocks are fetched in one
    read. Head and tail often share blocks on small files, and this keeps them from being read twice."""

    def __init__(self, reader: RangeReader) -> None:
        self.reader = reader
        self.key = reader.key
        self.size = reader.size
        self._blocks: dict[int, bytes] = {}

    def get(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes at `offset`; fewer only at the end of the file."""
        end = min(offset + length, self.size)
        if offset < 0 or offset >= end:
            return b""
        first, last = offset // _CACHE_BLOCK, (end - 1) // _CACHE_BLOCK
        i = first
        while i <= last:
            if i in self._blocks:
                i += 1
                continue
            j = i
            while j + 1 <= last and j + 1 not in self._blocks:
                j += 1
            data = self.reader.read(i * _CACHE_BLOCK, (j - i + 1) * _CACHE_BLOCK)
            for k in range(i, j + 1):
                self._blocks[k] = data[(k - i) * _CACHE_BLOCK : (k - i + 1) * _CACHE_BLOCK]
            i = j + 1
        joined = b"".join(self._blocks[k] for k in range(first, last + 1))
        start = offset - first * _CACHE_BLOCK
        return joined[start : start + (end - offset)]

    def need(self, offset: int, length: int, what: str, *, direct: bool = False) -> bytes:
        """Exactly `length` bytes at `offset`, or BackupFormatError saying the file ends inside `what`.
        `direct` reads just those bytes past the cache: for walking record headers, 4 bytes each."""
        data = self.reader.read(offset, length) if direct else self.get(offset, length)
        if len(data) < length:
            end = min(offset + len(data), self.size)
            self.fail(end, f"file ends inside {what} (needs {length} bytes from {offset})")
        return data

    def fail(self, offset: int, reason: str) -> NoReturn:
        raise BackupFormatError(self.key, offset, reason)


def _dblk_ok(buf: bytes, at: int) -> bool:
    """The MTF DBLK header at `at` is complete and its XOR checksum (26 u16 words XOR to 0) holds."""
    if at < 0 or at + _DBLK_HEADER > len(buf):
        return False
    x = 0
    for word in struct.unpack_from("<26H", buf, at):
        x ^= word
    return x == 0


def _find_dblk(buf: bytes, tags: tuple[bytes, ...], start: int = 0) -> int:
    """Offset of the first DBLK at or after `start` whose type is in `tags` and whose checksum holds, or -1.
    Any 4-byte match inside page or log data is rejected by the 16-bit checksum."""
    best = -1
    for tag in tags:
        at = buf.find(tag, start)
        while at >= 0 and (best < 0 or at < best):
            if _dblk_ok(buf, at):
                best = at
                break
            at = buf.find(tag, at + 1)
    return best


def _msls_complete(buf: bytes) -> bool:
    """`buf` holds an MSLS DBLK and the whole of its first stream (the MQCI copy of the backup header)."""
    at = _find_dblk(buf, (b"MSLS",))
    while at >= 0:
        stream = at + struct.unpack_from("<H", buf, at + 8)[0]
        if stream + _STREAM_HEADER <= len(buf):
            x = 0
            for word in struct.unpack_from("<11H", buf, stream):
                x ^= word
            length = struct.unpack_from("<Q", buf, stream + 8)[0]
            if x == 0 and stream + _STREAM_HEADER + length <= len(buf):
                return True
        at = _find_dblk(buf, (b"MSLS",), at + 1)
    return False


def _read_sfmb(cache: _Cache, at: int) -> list[int]:
    """The physical offsets of the earlier filemarks listed by the SFMB at `at`, newest first."""
    block = cache.need(at, _SFMB_SIZE, "a soft filemark (SFMB)")
    if block[:4] != _SFMB or not _dblk_ok(block, 0):
        cache.fail(at, "no valid soft filemark (SFMB) block here; the file may be truncated")
    used, array = struct.unpack_from("<II", block, 0x38)
    if used > (_SFMB_SIZE - array) // 8 or array < 0x40:
        cache.fail(at, f"soft filemark lists {used} entries from offset {array}, more than it can hold")
    marks = list(struct.unpack_from(f"<{used}Q", block, array))
    previous = at
    for mark in marks:
        if mark >= previous or mark < _FIRST_RECORD:
            cache.fail(at, f"soft filemark lists offset {mark}, not before the filemark at {previous}")
        previous = mark
    return marks


def _chunk_header(cache: _Cache, pos: int, direct: bool = False) -> tuple[int, int, int]:
    """(tag byte, decoded size, byte count C) of the record at `pos`, validating chunk records."""
    head = cache.need(pos, 4, "a chunk record header", direct=direct)
    kind, units, count = head[0], head[1], head[2] | head[3] << 8
    if kind == _TAG_CHUNK and not (1 <= units <= 128 and count >= _MIN_CHUNK_DATA):
        cache.fail(pos, f"bad chunk record: decoded size {units * 512}, compressed size {count}")
    return kind, units * 512, count


def _decode_chunk(cache: _Cache, pos: int, size: int, count: int) -> bytes:
    data = cache.need(pos + _CHUNK_HEADER, count, "a compressed chunk")
    try:
        return decompress_lz77_huffman(data, size)
    except XpressError as exc:
        cache.fail(pos + _CHUNK_HEADER + exc.offset, f"chunk record at {pos} does not decode: {exc}")


def _walk_chunks(
    cache: _Cache, pos: int, stop: int, budget: int, direct: bool = False
) -> tuple[list[tuple[int, int, int]], int]:
    """The chunk records (offset, decoded size, C) from `pos` up to the first index record or `stop`,
    skipping padding records; and where the walk ended (the index record, or `stop`). Walks at most
    `budget` bytes, so a hostile index cannot make it read the whole file."""
    chunks: list[tuple[int, int, int]] = []
    start = pos
    while pos < stop:
        if pos - start > budget:
            cache.fail(pos, f"more than {budget} bytes of records without reaching byte {stop}")
        kind, size, count = _chunk_header(cache, pos, direct)
        if kind == _TAG_CHUNK:
            chunks.append((pos, size, count))
            pos += _CHUNK_HEADER + count
        elif kind == _TAG_PAD:
            pos += _PAD_HEADER + count
        elif kind == _TAG_INDEX:
            return chunks, pos
        else:
            cache.fail(pos, f"unknown record type 0x{kind:02x}")
    if pos != stop:
        cache.fail(stop, f"a record runs past byte {stop}, where its region ends, to byte {pos}")
    return chunks, pos


def _decode_all(cache: _Cache, chunks: list[tuple[int, int, int]]) -> bytes:
    return b"".join(_decode_chunk(cache, pos, size, count) for pos, size, count in chunks)


def _read_head(cache: _Cache, head_min: int) -> bytes:
    """Decode from the first chunk until the MSCI DBLK is complete: a later DBLK (MSDA, MSTL or MSLS) has
    begun and at least `head_min` bytes are decoded; or the cap is reached; or the set's chunks end.
    Chunks are decoded one at a time, so the head costs the first few KiB of the file."""
    cap = max(_HEAD_CAP, head_min)
    head = bytearray()
    pos = _FIRST_RECORD
    stop_seen = False
    while len(head) < cap:
        if pos - _FIRST_RECORD > _TAIL_BUDGET:  # only padding records and filemarks so far: not a backup
            cache.fail(pos, f"no MSCI block in the first {_TAIL_BUDGET} bytes of records")
        if pos % _SFMB_SIZE == 0 and cache.get(pos, 4) == _SFMB:
            _read_sfmb(cache, pos)
            pos += _SFMB_SIZE
            continue
        kind, size, count = _chunk_header(cache, pos)
        if kind == _TAG_PAD:
            pos += _PAD_HEADER + count
            continue
        if kind != _TAG_CHUNK:
            if kind == _TAG_INDEX and head:
                break  # the backup set's chunks end here
            cache.fail(pos, f"unknown record type 0x{kind:02x}")
        scan_from = max(0, len(head) - _DBLK_HEADER)  # a header may straddle two chunks
        head += _decode_chunk(cache, pos, size, count)
        pos += _CHUNK_HEADER + count
        stop_seen = stop_seen or _find_dblk(bytes(head), _HEAD_STOP, scan_from) >= 0
        if stop_seen and len(head) >= head_min:
            break
    if not head.startswith(b"TAPE") or not _dblk_ok(bytes(head), 0):
        cache.fail(_FIRST_RECORD, "the first chunk does not decode to a valid MTF TAPE block")
    return bytes(head)


def _set_tail_from_index(cache: _Cache, start: int, end: int, footer: bytes) -> bytes:
    """The decoded end of the backup set in region [start, end), from its last indexed chunk on."""
    count, back = struct.unpack_from("<II", footer, 4)
    body = end - back
    index_at = body - _INDEX_HEADER
    if not 1 <= count <= _MAX_INDEX or index_at < start or body + _FOOTER * (count + 1) > end - _FOOTER:
        cache.fail(end - _FOOTER, f"chunk index footer ({count} entries, {back} bytes back) does not fit")
    record = cache.need(index_at, _INDEX_HEADER + _FOOTER * (count + 1), "the chunk index")
    if record[0] != _TAG_INDEX or record[_INDEX_HEADER : _INDEX_HEADER + _FOOTER] != footer:
        cache.fail(index_at, "the chunk index record does not match the footer at the end of its region")
    entries = [struct.unpack_from("<QQ", record, _INDEX_HEADER + _FOOTER * (i + 1)) for i in range(count)]
    for i, (logical, physical) in enumerate(entries):
        if not start <= physical < index_at or (
            i and (physical <= entries[i - 1][1] or logical <= entries[i - 1][0])
        ):
            cache.fail(index_at, f"chunk index entry {i} ({logical}, {physical}) is out of order or range")
    # The MSLS begins in the last indexed chunk or after it, so one walk from there is enough. Should it
    # not be there, one more walk starts from the earliest entry within the budget; walking from an entry
    # also checks every later entry's offsets against the decoded sizes before it.
    within = [i for i, (_logical, physical) in enumerate(entries) if index_at - physical <= _TAIL_BUDGET]
    if not within:
        cache.fail(
            entries[-1][1], f"the last chunk index entry is more than {_TAIL_BUDGET} bytes from the end"
        )
    for i in dict.fromkeys((within[-1], within[0])):
        logical, physical = entries[i]
        chunks, stopped = _walk_chunks(cache, physical, index_at, _TAIL_BUDGET)
        if stopped != index_at:
            cache.fail(stopped, f"the chunk records from byte {physical} end before the index at {index_at}")
        decoded_before: dict[int, int] = {}
        total = 0
        for pos, size, _count in chunks:
            decoded_before[pos] = total
            total += size
        for later_logical, later_physical in entries[i + 1 :]:
            if decoded_before.get(later_physical) != later_logical - logical:
                cache.fail(later_physical, "chunk index entry disagrees with the chunk records before it")
        tail = _decode_all(cache, chunks)
        if _msls_complete(tail):
            return tail
    cache.fail(
        entries[within[0]][1], "no complete MSLS block in the chunks from the chunk index's entries on"
    )


def _set_tail_by_walking(cache: _Cache, start: int, end: int) -> bytes:
    """Fallback for a region without an index footer (a writer not seen yet): walk every record header of the
    region with 4-byte reads that bypass the block cache, then decode chunks backwards from the last one
    until an MSLS is whole. One small read per chunk: slow on a large file on an object store, but right."""
    chunks, _stopped = _walk_chunks(cache, start, end, end - start, direct=True)
    tail = b""
    used = 0
    for pos, size, count in reversed(chunks):
        used += count
        if used > _TAIL_BUDGET:
            break
        tail = _decode_chunk(cache, pos, size, count) + tail
        if _msls_complete(tail):
            return tail
    cache.fail(start, "no complete MSLS block found at the end of the backup set")


def _read_tail(cache: _Cache) -> bytes:
    """The decoded end of the MTF stream: the last backup set's final chunks (with MSLS) and the ESETs."""
    last = cache.size - _SFMB_SIZE
    if last < _FIRST_RECORD:
        cache.fail(cache.size, "file is too short to end with a soft filemark")
    marks = _read_sfmb(cache, last)
    if len(marks) < 2:
        cache.fail(
            last, f"the last soft filemark lists {len(marks)} earlier ones; a whole file has 2 or more"
        )
    set_end, set_start = marks[0], marks[1] + _SFMB_SIZE
    if set_start + _FOOTER > set_end:
        cache.fail(marks[1], f"soft filemarks at {marks[1]} and {set_end} leave no room for a backup set")
    _read_sfmb(cache, marks[1])
    _read_sfmb(cache, set_end)
    footer = cache.need(set_end - _FOOTER, _FOOTER, "the chunk index footer")
    if footer[:4] == _FOOTER_MAGIC:
        set_tail = _set_tail_from_index(cache, set_start, set_end, footer)
    else:
        set_tail = _set_tail_by_walking(cache, set_start, set_end)
    eset_start = set_end + _SFMB_SIZE
    chunks, stopped = _walk_chunks(cache, eset_start, last, _TAIL_BUDGET)
    if stopped != last:
        cache.fail(stopped, "unexpected chunk index record after the last backup set")
    esets = _decode_all(cache, chunks)
    if not (esets.startswith(b"ESET") and _dblk_ok(esets, 0)):
        cache.fail(eset_start, "the region after the last backup set does not start with an ESET block")
    return set_tail + esets


def read_compressed_regions(reader: RangeReader, *, head_min: int = 16384) -> CompressedRegions:
    """Decode the metadata ends of a compressed backup: `head` is the MTF stream from offset 0 through its
    MSCI block (at least `head_min` bytes where the set has them), `tail` is a suffix of the stream that
    holds the MSLS block with its MQCI stream and the ESET blocks after it.

    Reads a few blocks at each end of the file, whatever its size. Raises BackupFormatError for a file that
    is truncated or corrupt where it is read; the store's own errors (StoreError) pass through.
    """
    before = reader.bytes_read
    cache = _Cache(reader)
    magic = cache.get(0, len(MSSQLBAK_MAGIC))
    if magic != MSSQLBAK_MAGIC:
        cache.fail(0, "not a compressed backup (no MSSQLBAK magic)")
    head = _read_head(cache, head_min)
    tail = _read_tail(cache)
    return CompressedRegions(head=head, tail=tail, compressed_bytes_read=reader.bytes_read - before)
