"""The format document, section 8 ("Compressed backups: the `MSSQLBAK` container"): a compressed backup
starts with the magic `MSSQLBAK`; from 0x1E0 it holds chunk records, each a u32 tag (byte 0 0x21, byte 1
the decoded size / 512, bits 16-31 the compressed size C), 24 bytes the model does not need, then C bytes
of one [MS-XCA] LZ77+Huffman block. The decoded chunks, in order, are an ordinary MTF stream.

Between runs of records the corpus also shows bytes that are no chunk: a closing record whose byte 0 is
not 0x21, then a soft filemark (SFMB) stored as it is on the next 4 KiB boundary (see `chunks`). They are
not part of the decoded stream, which has no SFMB.

Only the chunks the header walk touches are decoded (the first few and the last few).
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass

from tests.mssql_model.formaterrors import NotABackup, TruncatedBackup
from tests.mssql_model.mtf import DBLK_HEADER, Source, Windowed, check_filemark, xor16
from tests.mssql_model.xpress import decompress

MAGIC = b"MSSQLBAK"
FIRST_RECORD = 0x1E0
RECORD_HEADER = 28
CHUNK_TAG = 0x21
FILLER_ALIGN = 4096


@dataclass(frozen=True)
class Chunk:
    start: int  # in the decoded stream
    size: int
    where: int  # of the compressed bytes in the file
    compressed: int


def is_compressed(head: bytes) -> bool:
    return head.startswith(MAGIC)


def chunks(device: Windowed) -> list[Chunk]:
    """Every chunk record of the container, by walking record headers without decoding.

    The container shows one pattern on every corpus file: a run of chunks, a closing record, and at the
    next 4 KiB boundary a soft filemark (SFMB, stored as it is); the next run starts at the boundary after
    it. The file ends with a filemark, as a disk medium does (section 2.3): without it, it was cut short.
    Anything else is not this container."""
    if device.size < FIRST_RECORD + RECORD_HEADER:
        raise TruncatedBackup(
            f"compressed backup: the file ends at byte {device.size}, before its first chunk"
        )
    found: list[Chunk] = []
    start = 0
    pos = FIRST_RECORD
    state = "start"  # then "chunk", "closed" (after a closing record), "filemark"
    filemarks: list[int] = []
    while pos + 4 <= device.size:
        tag = struct.unpack("<I", device.read(pos, 4))[0]
        if state == "closed":
            if not _filemark(device, pos, filemarks):
                raise NotABackup(f"compressed backup: no filemark at byte {pos} after a closing record")
            filemarks.append(pos)
            state, pos = "filemark", pos + FILLER_ALIGN
        elif tag & 0xFF == CHUNK_TAG:
            size = ((tag >> 8) & 0xFF) * 512
            compressed = tag >> 16
            if size == 0 or compressed == 0:
                raise NotABackup(f"compressed backup: a chunk record at byte {pos} with no size")
            if pos + RECORD_HEADER + compressed > device.size:
                raise TruncatedBackup(f"compressed backup: the file ends inside the chunk at byte {pos}")
            found.append(Chunk(start, size, pos + RECORD_HEADER, compressed))
            start += size
            state, pos = "chunk", pos + RECORD_HEADER + compressed
        elif state == "chunk":
            state, pos = "closed", (pos // FILLER_ALIGN + 1) * FILLER_ALIGN
        else:
            raise NotABackup(f"compressed backup: no chunk record at byte {pos}")
    if not found:
        raise NotABackup("compressed backup: no chunk records after the MSSQLBAK header")
    if state != "filemark" or pos != device.size:
        raise TruncatedBackup(
            f"compressed backup: the file ends at byte {device.size} without its closing filemark"
        )
    return found


def _filemark(device: Windowed, pos: int, earlier: list[int]) -> bool:
    """An SFMB block stored as it is at `pos`: its 52-byte header checksums (2.1) and it fills its 4 KiB."""
    if device.read(pos, 4) != b"SFMB":
        return False
    header = device.read(pos, DBLK_HEADER)
    if xor16(header[:0x32]) != struct.unpack_from("<H", header, 0x32)[0]:
        raise NotABackup(f"compressed backup: the filemark at byte {pos} has a bad header checksum")
    if pos + FILLER_ALIGN > device.size:
        raise TruncatedBackup(f"compressed backup: the file ends inside the filemark at byte {pos}")
    check_filemark(device.read(pos, FILLER_ALIGN), pos, earlier)
    return True


class Decoded:
    """The MTF stream inside a compressed backup, decoded chunk by chunk on demand."""

    def __init__(self, device: Windowed) -> None:
        self._device = device
        self._chunks = chunks(device)
        self._starts = [c.start for c in self._chunks]
        self._size = self._chunks[-1].start + self._chunks[-1].size
        self._decoded: dict[int, bytes] = {}

    @property
    def size(self) -> int:
        return self._size

    def _chunk(self, index: int) -> bytes:
        data = self._decoded.get(index)
        if data is None:
            chunk = self._chunks[index]
            data = decompress(self._device.read(chunk.where, chunk.compressed), chunk.size)
            if len(self._decoded) >= 16:
                del self._decoded[next(iter(self._decoded))]
            self._decoded[index] = data
        return data

    def read(self, offset: int, length: int) -> bytes:
        out = bytearray()
        index = bisect.bisect_right(self._starts, offset) - 1
        while length > 0 and 0 <= index < len(self._chunks):
            chunk = self._chunks[index]
            data = self._chunk(index)
            part = data[offset - chunk.start : offset - chunk.start + length]
            out += part
            offset += len(part)
            length -= len(part)
            index += 1
        return bytes(out)


def open_source(device: Source) -> Source:
    """The MTF stream of a device: the device itself, or the decoded stream of a compressed one."""
    windowed = Windowed(device)
    if device.size >= len(MAGIC) and is_compressed(windowed.read(0, len(MAGIC))):
        return Windowed(Decoded(windowed))
    return windowed
