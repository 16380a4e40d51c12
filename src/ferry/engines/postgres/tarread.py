"""Walk a tar archive held in a store without extracting it: plain, gzip, lz4 or zstd.

A plain tar is walked with ranged reads: one small read per member header, file data skipped by its
length. A compressed tar has no index, so it is decompressed as a stream (gzip and lz4 frames from the
standard library and `lz4.frame`, zstd from `zstandard`), with memory bounded by the read size.

Damage is reported as `TarProblem(offset, reason)`; the caller turns it into a BackupFormatError naming the
file. A reason starting with "unexpected end of data" means the archive is cut short.
"""

from __future__ import annotations

import gzip
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Protocol

from ferry.engines.postgres.compression import Compression, compression_of, decompressed_head
from ferry.stores.base import RangeReader

__all__ = [
    "BLOCK",
    "Compression",
    "Member",
    "TarProblem",
    "compression_of",
    "decompressed_head",
    "is_tar_header",
    "open_source",
    "walk",
]

BLOCK = 512
_WINDOW = 16 * 1024  # one ranged read covers a header and, for members up to 15.5 KiB, the next header
_STREAM_READ = 1024 * 1024  # compressed bytes asked of the store per read
_SKIP_PIECE = 1024 * 1024  # decompressed bytes produced per step while skipping member data
_TRAILER_LIMIT = 64 * 1024  # decompressed bytes after the end-of-archive marker worth reading to the end


class TarProblem(Exception):
    """Damage at a byte offset of the stored file (compressed offset for compressed archives)."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason


def is_tar_header(block: bytes) -> bool:
    """ustar magic at byte 257: "ustar\\0" (POSIX, pg_basebackup) or "ustar " (GNU tar)."""
    return len(block) >= 263 and block[257:262] == b"ustar"


@dataclass(frozen=True)
class Member:
    """One tar member. `offset` is where its data starts in the (decompressed) archive."""

    name: str
    size: int
    kind: str  # "file", "dir", "link" or "other"
    offset: int


# -- sources: a position in the archive and reads from there ------------------------------------------


class _Source(Protocol):
    position: int
    compressed: bool

    def read(self, n: int) -> bytes: ...

    def skip(self, n: int) -> None: ...

    def locate(self, archive_offset: int) -> int: ...


class _RangedSource:
    """A plain tar in a store. Skips cost nothing; reads go through a small window cache."""

    compressed = False

    def __init__(self, reader: RangeReader) -> None:
        self._reader = reader
        self.position = 0
        self._buf = b""
        self._buf_at = 0

    def read(self, n: int) -> bytes:
        at = self.position
        if self._buf_at <= at and at + n <= self._buf_at + len(self._buf):
            data = self._buf[at - self._buf_at : at - self._buf_at + n]
        elif n >= _WINDOW:
            data = self._reader.read(at, n)
        else:
            self._buf = self._reader.read(at, _WINDOW)
            self._buf_at = at
            data = self._buf[:n]
        self.position += len(data)
        return data

    def skip(self, n: int) -> None:
        self.position += n

    def locate(self, archive_offset: int) -> int:
        """The file offset to report for damage at `archive_offset`: the same, capped at the file's end."""
        return min(archive_offset, self._reader.size)


class _RawFile(io.RawIOBase):
    """A store object as a read-only file, for the decompressors' file interfaces."""

    def __init__(self, reader: RangeReader) -> None:
        self._reader = reader
        self.pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._reader.read(self.pos, min(len(buffer), _STREAM_READ))
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


class _StreamSource:
    """A compressed tar: decompressed as it is read; skipping decompresses through the skipped data."""

    compressed = True

    def __init__(self, reader: RangeReader, kind: Compression) -> None:
        self._raw = _RawFile(reader)
        self._kind = kind
        self._stream = self._open(io.BufferedReader(self._raw, _STREAM_READ))
        self.position = 0

    def _open(self, raw: io.BufferedReader) -> IO[bytes]:
        if self._kind is Compression.GZIP:
            return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
        if self._kind is Compression.LZ4:
            import lz4.frame

            return lz4.frame.LZ4FrameFile(raw, mode="rb")  # type: ignore[no-any-return]
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)

    def locate(self, archive_offset: int) -> int:
        """The file offset to report: how far the compressed file has been read (the decompressed offset
        means nothing in the file; the message names it)."""
        return self._raw.pos

    def _chunk(self, n: int) -> bytes:
        try:
            return self._stream.read(n)
        except EOFError:
            raise TarProblem(self._raw.pos, f"unexpected end of data in the {self._kind} stream") from None
        except Exception as exc:
            # gzip.BadGzipFile, zlib.error, lz4's RuntimeError and zstandard.ZstdError have no common base
            # but Exception; Ferry's own StoreError must pass through untouched.
            from ferry.core.errors import FerryError

            if isinstance(exc, FerryError):
                raise
            raise TarProblem(self._raw.pos, f"damaged {self._kind} data ({exc})") from None

    def read(self, n: int) -> bytes:
        parts: list[bytes] = []
        left = n
        while left > 0:
            data = self._chunk(left)
            if not data:
                break
            parts.append(data)
            left -= len(data)
        out = b"".join(parts)
        self.position += len(out)
        return out

    def skip(self, n: int) -> None:
        while n > 0:
            data = self.read(min(n, _SKIP_PIECE))
            if not data:
                return  # the next header read reports the end of data
            n -= len(data)

    def drain(self, limit: int) -> None:
        """Read on to the end of the compressed stream, so its checks (gzip's CRC) run; at most `limit`."""
        self.read(limit)


def open_source(reader: RangeReader, kind: Compression) -> _RangedSource | _StreamSource:
    return _RangedSource(reader) if kind is Compression.NONE else _StreamSource(reader, kind)


# -- headers ------------------------------------------------------------------------------------------


def _octal(field: bytes, offset: int, what: str) -> int:
    if field and field[0] & 0x80:  # base-256 (GNU and star) for values that do not fit in octal digits
        value = int.from_bytes(field[1:], "big") | ((field[0] & 0x7F) << (8 * (len(field) - 1)))
        return value
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    if not re.fullmatch(rb"[0-7]+", text):
        raise TarProblem(offset, f"tar header field {what} is not a number ({text[:12]!r})")
    return int(text, 8)


def _checksum_ok(block: bytes, offset: int) -> bool:
    """The header's checksum: the sum of its bytes with the checksum field read as spaces. Some old tars
    summed signed bytes; both are accepted."""
    stored = _octal(block[148:156], offset + 148, "chksum")
    blanked = block[:148] + b" " * 8 + block[156:]
    if sum(blanked) == stored:
        return True
    return sum(b - 256 if b > 127 else b for b in blanked) == stored


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pax_records(data: bytes, offset: int) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        m = re.match(rb"(\d+) ", data[pos:])
        if not m:
            if not data[pos:].strip(b"\0"):
                break
            raise TarProblem(offset + pos, "pax extended header record has no length")
        length = int(m.group(1))
        record = data[pos : pos + length]
        if length <= len(m.group(0)) or len(record) != length or not record.endswith(b"\n"):
            raise TarProblem(offset + pos, "pax extended header record length is wrong")
        key, sep, value = record[len(m.group(0)) : -1].partition(b"=")
        if not sep:
            raise TarProblem(offset + pos, "pax extended header record has no '='")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


_KINDS = {b"0": "file", b"\0": "file", b"7": "file", b"5": "dir", b"1": "link", b"2": "link"}
_LONG_META_LIMIT = 1024 * 1024  # a GNU long name or pax header longer than this is damage, not a name


def walk(
    source: _RangedSource | _StreamSource,
    capture: Callable[[Member], int],
    *,
    stop: Callable[[], bool] | None = None,
) -> Iterator[tuple[Member, bytes]]:
    """Every member in order, with the first `capture(member)` bytes of its data (b"" for 0).

    The walk ends at the end-of-archive marker (a zero block); a file that ends before it raises
    TarProblem("unexpected end of data ..."). `stop()` is asked after each member: when it says yes, the
    walk ends there without reading further.
    """
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        at = source.position
        block = source.read(BLOCK)
        if len(block) < BLOCK:
            raise TarProblem(
                source.locate(at + len(block)),
                f"unexpected end of data: the tar archive ends at byte {at + len(block)} without its "
                "end-of-archive marker",
            )
        if block == bytes(BLOCK):
            if isinstance(source, _StreamSource):
                source.drain(_TRAILER_LIMIT)
            return
        try:
            if not is_tar_header(block):
                raise TarProblem(at, f"no tar header at archive offset {at}")
            if not _checksum_ok(block, at):
                raise TarProblem(at, f"tar header checksum mismatch at archive offset {at}")
            size = _octal(block[124:136], at + 124, "size")
        except TarProblem as exc:
            raise TarProblem(source.locate(exc.offset), exc.reason) from None
        flag = block[156:157]
        data_at = at + BLOCK
        padded = (size + BLOCK - 1) // BLOCK * BLOCK
        if flag in (b"L", b"x", b"g", b"K"):
            if size > _LONG_META_LIMIT:
                raise TarProblem(source.locate(at), f"tar extended header of {size} bytes at offset {at}")
            data = source.read(size)
            if len(data) < size:
                raise TarProblem(
                    source.locate(data_at + len(data)), "unexpected end of data inside a tar extended header"
                )
            source.skip(padded - size)
            if flag == b"L":
                long_name = _text(data)
            elif flag == b"x":
                try:
                    pax = _pax_records(data, data_at)
                except TarProblem as exc:
                    raise TarProblem(source.locate(exc.offset), exc.reason) from None
            continue
        name = long_name or pax.get("path")
        if name is None:
            name = _text(block[0:100])
            prefix = _text(block[345:500]) if block[257:263] == b"ustar\x00" else ""
            if prefix:
                name = f"{prefix}/{name}"
        if "size" in pax:
            if not pax["size"].isdigit():
                raise TarProblem(source.locate(data_at), "pax size is not a number")
            size = int(pax["size"])
            padded = (size + BLOCK - 1) // BLOCK * BLOCK
        long_name, pax = None, {}
        while name.startswith("./"):
            name = name[2:]
        kind = _KINDS.get(flag, "other")
        if kind in ("dir", "link"):  # no data follows these headers, whatever their size field says
            size, padded = 0, 0
        member = Member(name.rstrip("/") if kind == "dir" else name, size, kind, data_at)
        want = min(capture(member), size) if kind == "file" else 0
        head = source.read(want) if want else b""
        if len(head) < want:
            raise TarProblem(
                source.locate(data_at + len(head)),
                f"unexpected end of data inside tar member '{name}' (archive offset {data_at})",
            )
        source.skip(padded - len(head))
        yield member, head
        if stop is not None and stop():
            return
