"""Compressed PostgreSQL files: gzip, lz4 and zstd, as pg_basebackup (-Z) and archive commands write them.

One place knows the three formats: their magic numbers, how to peek at the first decompressed bytes (for
sniffing, never raising) and how to decompress a whole stream in bounded chunks (PostgreSQL files are
mostly zeros, so a megabyte of compressed input can be a gigabyte of output). The base backup unpacker,
the tar scanner and the WAL fetcher all decompress through here.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterator
from enum import StrEnum
from typing import IO, Protocol, cast

GZIP_MAGIC = b"\x1f\x8b"
LZ4_MAGIC = b"\x04\x22\x4d\x18"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
CHUNK = 4 * 1024 * 1024


class Compression(StrEnum):
    NONE = "none"
    GZIP = "gzip"
    LZ4 = "lz4"
    ZSTD = "zstd"


# The file name suffixes `gzip`, `lz4` and `zstd` give what they compress (archive_command = 'gzip < %p >
# /archive/%f.gz'), so a WAL file named `<segment>.gz` is that segment.
SUFFIXES: dict[str, Compression] = {
    ".gz": Compression.GZIP,
    ".lz4": Compression.LZ4,
    ".zst": Compression.ZSTD,
}


def strip_suffix(name: str) -> str:
    """A file name without the compression suffix a tool added (`x.gz` -> `x`)."""
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


class Ranged(Protocol):
    """What `content_size` needs of a store object (a RangeReader)."""

    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes: ...


def content_size(obj: Ranged, kind: Compression) -> int | None:
    """The decompressed size where the format records it, or None: gzip's trailer (ISIZE, the size modulo
    2**32, enough for WAL segments of at most 1 GiB), a zstd or lz4 frame header's content size (the
    `zstd` tool writes it; the `lz4` tool does not). Reads a few bytes; never raises on odd data."""
    try:
        if kind is Compression.GZIP and obj.size >= 18:
            return int.from_bytes(obj.read(obj.size - 4, 4), "little")
        if kind is Compression.ZSTD:
            import zstandard

            size = zstandard.frame_content_size(obj.read(0, 18))
            return size if size >= 0 else None
        if kind is Compression.LZ4:
            import lz4.frame

            found = int(lz4.frame.get_frame_info(obj.read(0, 19)).get("content_size") or 0)
            return found or None
    except Exception:  # a size that cannot be read is unknown, checked when the file is decompressed
        return None
    return None


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class Sequential:
    """A store object read front to back, for the decompressors: `pos` is how far it has been read (the
    compressed offset that progress and error messages report).

    With `pieces` (the whole object as one stream, from the store), reads are served from that stream:
    a copy of a whole remote object is then one request rather than one per read, which from an object
    store is the difference between its bandwidth and its latency. Without, each read is a ranged read,
    right for callers that stop after the first bytes (the scan)."""

    def __init__(self, reader: Ranged, pieces: Iterator[bytes] | None = None) -> None:
        self.reader = reader
        self.pos = 0
        self._pieces = pieces
        self._rest = memoryview(b"")

    def read(self, n: int = -1, /) -> bytes:
        left = self.reader.size - self.pos
        want = left if n < 0 else min(n, left)
        if want <= 0:
            return b""
        data = self.reader.read(self.pos, want) if self._pieces is None else self._take(want)
        self.pos += len(data)
        return data

    def _take(self, want: int) -> bytes:
        assert self._pieces is not None
        parts: list[bytes] = []
        have = 0
        while have < want:
            if not self._rest:
                piece = next(self._pieces, b"")
                if not piece:
                    break  # the object ended early: the caller's size checks say so
                if len(piece) <= want - have:  # taken whole: no copy
                    parts.append(piece)
                    have += len(piece)
                    continue
                self._rest = memoryview(piece)
            part = self._rest[: want - have]
            self._rest = self._rest[len(part) :]
            parts.append(bytes(part))
            have += len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)


def compression_of(head: bytes) -> Compression:
    if head.startswith(GZIP_MAGIC):
        return Compression.GZIP
    if head.startswith(LZ4_MAGIC):
        return Compression.LZ4
    if head.startswith(ZSTD_MAGIC):
        return Compression.ZSTD
    return Compression.NONE


def decompressed_head(head: bytes, want: int = 512) -> bytes:
    """The first `want` decompressed bytes of a compressed stream's first bytes, or b"" if they do not
    decompress. Used by sniffing, so it never raises and never produces more than `want` bytes."""
    kind = compression_of(head)
    try:
        if kind is Compression.GZIP:
            # A gzip file may hold several members; pg_basebackup's pg_wal.tar.gz starts with an empty one.
            out, rest = b"", head
            while len(out) < want and rest.startswith(GZIP_MAGIC):
                d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                out += d.decompress(rest, want - len(out))
                if not d.eof:
                    break
                rest = d.unused_data
            return out
        if kind is Compression.LZ4:
            import lz4.frame

            return bytes(lz4.frame.LZ4FrameDecompressor().decompress(head, max_length=want))
        if kind is Compression.ZSTD:
            import zstandard

            reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(head), read_across_frames=True)
            return bytes(reader.read(want))
    except Exception:  # a sniffer answers yes or no: any failure to decode is a no
        return b""
    return b""


class _Capped:
    """At most `limit` bytes of `raw`."""

    def __init__(self, raw: Readable, limit: int) -> None:
        self.raw, self.left = raw, limit

    def read(self, n: int = -1, /) -> bytes:
        if self.left <= 0:
            return b""
        data = self.raw.read(self.left if n < 0 else min(n, self.left))
        self.left -= len(data)
        return data


def head_of(raw: Readable, kind: Compression, want: int, limit: int) -> bytes:
    """The first `want` decompressed bytes of `raw`, reading at most `limit` compressed bytes. lz4 and zstd
    decompress a block at a time, and a block of real WAL can be megabytes before its first byte comes
    out: more than a sniffer's head. Never raises: damage yields what decoded before it."""
    out = bytearray()
    try:
        for chunk in chunks(_Capped(raw, limit), kind, 64 * 1024):
            out += chunk
            if len(out) >= want:
                break
    except Exception:  # EOFError at the cap, or damage: what decoded so far is the answer
        pass
    return bytes(out[:want])


def chunks(raw: Readable, kind: Compression, size: int = CHUNK) -> Iterator[bytes]:
    """The decompressed content of `raw` (read front to back) in chunks of at most `size` bytes. A stream
    cut short raises EOFError; damaged data raises the codec's own error (zlib.error, RuntimeError from
    lz4, zstandard.ZstdError), which callers turn into a message naming the file."""
    if kind is Compression.GZIP:
        yield from _gunzip(raw, size)
    elif kind is Compression.LZ4:
        yield from _unlz4(raw, size)
    elif kind is Compression.ZSTD:
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], raw), read_size=size, read_across_frames=True
        )
        while chunk := reader.read(size):
            yield chunk
    else:
        while chunk := raw.read(size):
            yield chunk


def _gunzip(raw: Readable, size: int) -> Iterator[bytes]:
    # wbits 31: zlib parses the gzip wrapper and checks its CRC-32 and length in C. Members may follow
    # one another; zero bytes after the last one are padding.
    d, fed = zlib.decompressobj(wbits=31), False
    while data := raw.read(size):
        while data:
            fed = True
            out = d.decompress(data, size)
            data = d.unconsumed_tail
            if out:
                yield out
            while len(out) == size and not data and not d.eof:  # output still pending in zlib
                out = d.decompress(b"", size)
                if out:
                    yield out
            if d.eof:
                rest = d.unused_data
                d, fed = zlib.decompressobj(wbits=31), False
                data = rest if rest.strip(b"\0") else b""
    if fed and not d.eof:
        raise EOFError("the gzip stream is truncated")


def _unlz4(raw: Readable, size: int) -> Iterator[bytes]:
    import lz4.frame

    d, fed = lz4.frame.LZ4FrameDecompressor(), False
    while data := raw.read(size):
        while True:
            fed = fed or bool(data)
            out = d.decompress(data, max_length=size)
            data = b""
            if out:
                yield out
            if d.eof:
                rest = d.unused_data
                d, fed = lz4.frame.LZ4FrameDecompressor(), False
                if not rest:
                    break
                data = rest
            elif d.needs_input:
                break
    if fed and not d.eof:
        raise EOFError("the lz4 stream is truncated")
