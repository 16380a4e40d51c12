"""The tar format as pg_basebackup -Ft writes it, and as GNU tar and pax writers write it: Ferry's one tar
reader, used by the scan (reader.py walks a tar in a store without extracting it) and by the base backup
unpacker (unpack.py).

An archive is a sequence of 512-byte blocks: a header per member, then its data padded to a whole block,
and two zero blocks at the end (POSIX.1-2001 ustar; `tar(5)`). A header carries the name (100 bytes, and
a 155-byte prefix in POSIX ustar), the mode, size and checksum as octal text, the type flag and the link
target. The checksum is the sum of the header's bytes with its own field read as spaces; some old tars
summed signed bytes, so both sums are accepted. Sizes of 8 GiB and more are base-256 (the first byte's
high bit set, GNU and star). Longer names come in an extra member before the one they describe: GNU `L`
(name) and `K` (link target), or a pax `x` header of `<length> key=value\\n` records (`path`,
`linkpath`, `size`); pax global headers (`g`) are read and ignored. Directories, links, devices and FIFOs
carry no data, whatever their size field says (as Python's tarfile reads them too).

Bytes come from a source: a plain tar in a store is read with ranged reads (headers read, data skipped by
its length, or copied in the kernel by the unpacker); a compressed tar has no index, so it is decompressed
as a stream, through compression.py, with memory bounded by the chunk size.

Damage is reported as `TarProblem(offset, reason)`; the caller turns it into an error naming the file. A
reason starting with "unexpected end of data" means the archive is cut short.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from ferry.core.errors import FerryError
from ferry.engines.postgres import compression, fileops
from ferry.engines.postgres.compression import Compression, compression_of, decompressed_head
from ferry.engines.postgres.damage import Damage
from ferry.stores.base import RangeReader

__all__ = [
    "BLOCK",
    "Compression",
    "Member",
    "RangedSource",
    "StreamSource",
    "TarProblem",
    "compression_of",
    "decompressed_head",
    "is_tar_header",
    "members",
    "open_source",
    "walk",
]

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
_WINDOW = 16 * 1024  # one ranged read covers a header and, for members up to 15.5 KiB, the next header
_STREAM_CHUNK = 1024 * 1024  # compressed bytes read, and decompressed bytes produced, per step of the scan
_COPY_CHUNK = 4 * 1024 * 1024  # bytes per read and write when the kernel cannot copy
_TRAILER_LIMIT = 64 * 1024  # decompressed bytes after the end-of-archive marker worth reading to the end
_LONG_META_LIMIT = 1024 * 1024  # a GNU long name or pax header longer than this is damage, not a name
_OCTAL = re.compile(rb"[0-7]+")
_PAX_LENGTH = re.compile(rb"(\d+) ")


class TarProblem(Damage):
    """Damage in a tar archive, at an offset of the stored file (compressed offset for compressed
    archives)."""


def is_tar_header(block: bytes) -> bool:
    """ustar magic at byte 257: "ustar\\0" (POSIX, pg_basebackup) or "ustar " (GNU tar)."""
    return len(block) >= 263 and block[257:262] == b"ustar"


_KINDS = {
    b"0": "file", b"\0": "file", b"7": "file", b"5": "dir", b"2": "symlink", b"1": "hardlink",
    b"3": "chardev", b"4": "blockdev", b"6": "fifo",
}  # fmt: skip
_LINKS = ("symlink", "hardlink")


@dataclass(frozen=True)
class Member:
    """One tar member. `offset` is where its data starts in the (decompressed) archive; `flag` is the raw
    type flag (kind "other" covers every type Ferry does not know)."""

    name: str
    size: int
    kind: str  # "file", "dir", "symlink", "hardlink", "chardev", "blockdev", "fifo" or "other"
    offset: int
    mode: int = 0o644
    link: str = ""
    flag: bytes = b"0"


# -- sources: a position in the archive and reads from there ------------------------------------------


class Source(Protocol):
    position: int  # offset in the (decompressed) archive

    def read(self, n: int) -> bytes: ...

    def skip(self, n: int) -> None: ...

    def locate(self, archive_offset: int) -> int: ...


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


class RangedSource:
    """A plain tar in a store or a local file. Skips cost nothing; reads of less than `window` bytes go
    through a window cache (one ranged read covers several small members). With `fd`, the file's
    descriptor, `copy` runs in the kernel (copy_file_range: no copy through user space)."""

    compressed = False

    def __init__(self, reader: RangeReader, *, fd: int | None = None, window: int = _WINDOW) -> None:
        self._reader = reader
        self._fd = fd
        self._window = window
        self.position = 0
        self._buf = b""
        self._buf_at = 0

    @property
    def consumed(self) -> int:
        """Bytes of the stored file read so far (for progress)."""
        return self.position

    def read(self, n: int) -> bytes:
        at = self.position
        if self._buf_at <= at and at + n <= self._buf_at + len(self._buf):
            data = self._buf[at - self._buf_at : at - self._buf_at + n]
        elif n >= self._window:
            data = self._reader.read(at, n)
        else:
            self._buf = self._reader.read(at, self._window)
            self._buf_at = at
            data = self._buf[:n]
        self.position += len(data)
        return data

    def skip(self, n: int) -> None:
        self.position += n

    def copy(self, n: int, fd: int) -> int:
        """Write the next `n` bytes to `fd`; returns how many there were (fewer at the file's end)."""
        done = 0
        at = self.position
        if self._buf_at <= at < self._buf_at + len(self._buf):
            cached = memoryview(self._buf)[at - self._buf_at : at - self._buf_at + n]
            _write_all(fd, cached)
            done = len(cached)
        if done < n and self._fd is not None:
            done += fileops.copy_range(self._fd, fd, n - done, at + done)
        while done < n:
            data = self._reader.read(at + done, min(n - done, _COPY_CHUNK))
            if not data:
                break
            _write_all(fd, memoryview(data))
            done += len(data)
        self.position += done
        return done

    def locate(self, archive_offset: int) -> int:
        """The file offset to report for damage at `archive_offset`: the same, capped at the file's end."""
        return min(archive_offset, self._reader.size)


class StreamSource:
    """A compressed tar, from an iterator of decompressed chunks (compression.chunks over `raw`, a file
    read front to back): skipping decompresses through the skipped data. A codec's complaint becomes a
    TarProblem at the compressed offset reached; store errors pass through untouched."""

    compressed = True

    def __init__(self, chunks: Iterator[bytes], raw: compression.Sequential, kind: Compression) -> None:
        self._chunks = chunks
        self._raw = raw
        self._kind = kind
        self._buf = memoryview(b"")
        self.position = 0

    @property
    def consumed(self) -> int:
        """Bytes of the stored (compressed) file read so far (for progress)."""
        return self._raw.pos

    def locate(self, archive_offset: int) -> int:
        """The file offset to report: how far the compressed file has been read (the decompressed offset
        means nothing in the file; the message names it)."""
        return self._raw.pos

    def _more(self) -> bool:
        try:
            chunk = next(self._chunks, None)
        except (FerryError, OSError):
            raise
        except EOFError:
            raise TarProblem(self._raw.pos, f"unexpected end of data in the {self._kind} stream") from None
        except Exception as exc:  # zlib.error, lz4's RuntimeError, zstandard.ZstdError: no common base
            raise TarProblem(self._raw.pos, f"damaged {self._kind} data ({exc})") from None
        if chunk is None:
            return False
        self._buf = memoryview(chunk)
        return True

    def read(self, n: int) -> bytes:
        parts: list[bytes] = []
        left = n
        while left > 0:
            if not self._buf and not self._more():
                break
            take = self._buf[:left]
            parts.append(bytes(take))
            self._buf = self._buf[len(take) :]
            left -= len(take)
        out = b"".join(parts)
        self.position += len(out)
        return out

    def copy(self, n: int, fd: int) -> int:
        """Write the next `n` bytes to `fd`; returns how many there were (fewer at the stream's end)."""
        done = 0
        while done < n:
            if not self._buf and not self._more():
                break
            take = self._buf[: n - done]
            _write_all(fd, take)
            self._buf = self._buf[len(take) :]
            done += len(take)
        self.position += done
        return done

    def skip(self, n: int) -> None:
        while n > 0:
            if not self._buf and not self._more():
                return  # the next header read reports the end of data
            take = min(n, len(self._buf))
            self._buf = self._buf[take:]
            self.position += take
            n -= take

    def drain(self, limit: int) -> None:
        """Read on to the end of the compressed stream, so its checks (gzip's CRC) run; at most `limit`."""
        self.skip(limit)


def stream(reader: RangeReader, kind: Compression, chunk: int = _STREAM_CHUNK) -> StreamSource:
    raw = compression.Sequential(reader)
    return StreamSource(compression.chunks(raw, kind, chunk), raw, kind)


def open_source(reader: RangeReader, kind: Compression) -> RangedSource | StreamSource:
    """The scan's source for a tar in a store: ranged reads when plain, a stream when compressed."""
    return RangedSource(reader) if kind is Compression.NONE else stream(reader, kind)


# -- headers ------------------------------------------------------------------------------------------


def _number(field: bytes, offset: int, what: str) -> int:
    """An octal header field, or base-256 (GNU and star) for values that do not fit in its digits."""
    if field and field[0] & 0x80:
        if field[0] == 0xFF:
            raise TarProblem(offset, f"tar header field {what} is negative")
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    if not _OCTAL.fullmatch(text):
        raise TarProblem(offset, f"tar header field {what} is not a number ({text[:12]!r})")
    return int(text, 8)


def _checksum_ok(block: bytes, offset: int) -> bool:
    stored = _number(block[148:156], offset + 148, "chksum")
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
        m = _PAX_LENGTH.match(data, pos)
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


def _padded(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK


def members(source: Source) -> Iterator[Member]:
    """Every member in order. The caller may read (or copy) any part of a member's data from `source`
    before asking for the next member; what it leaves is skipped.

    The walk ends at the end-of-archive marker (a zero block); a file that ends before it raises
    TarProblem("unexpected end of data ..."). A compressed stream is read on a little past the marker, so
    that its own checks run.
    """
    long_name: str | None = None
    long_link: str | None = None
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
        if block == ZERO_BLOCK:
            if isinstance(source, StreamSource):
                source.drain(_TRAILER_LIMIT)
            return
        try:
            if not is_tar_header(block):
                raise TarProblem(at, f"no tar header at archive offset {at}")
            if not _checksum_ok(block, at):
                raise TarProblem(at, f"tar header checksum mismatch at archive offset {at}")
            size = _number(block[124:136], at + 124, "size")
            mode = _number(block[100:108], at + 100, "mode")
        except TarProblem as exc:
            raise TarProblem(source.locate(exc.offset), exc.reason) from None
        flag = block[156:157]
        data_at = at + BLOCK
        if flag in (b"L", b"K", b"x", b"g"):
            if size > _LONG_META_LIMIT:
                raise TarProblem(source.locate(at), f"tar extended header of {size} bytes at offset {at}")
            data = source.read(size)
            if len(data) < size:
                raise TarProblem(
                    source.locate(data_at + len(data)), "unexpected end of data inside a tar extended header"
                )
            source.skip(_padded(size) - size)
            if flag == b"L":
                long_name = _text(data)
            elif flag == b"K":
                long_link = _text(data)
            elif flag == b"x":
                try:
                    pax = _pax_records(data, data_at)
                except TarProblem as exc:
                    raise TarProblem(source.locate(exc.offset), exc.reason) from None
            continue
        name = pax.get("path") or long_name
        if name is None:
            name = _text(block[0:100])
            prefix = _text(block[345:500]) if block[257:263] == b"ustar\x00" else ""
            if prefix:  # POSIX ustar only: GNU tar uses these bytes for other fields
                name = f"{prefix}/{name}"
        if "size" in pax:
            if not pax["size"].isdigit():
                raise TarProblem(source.locate(data_at), "pax size is not a number")
            size = int(pax["size"])
        kind = _KINDS.get(flag, "other")
        link = (pax.get("linkpath") or long_link or _text(block[157:257])) if kind in _LINKS else ""
        long_name = long_link = None
        pax = {}
        while name.startswith("./"):
            name = name[2:]
        if kind not in ("file", "other"):
            size = 0  # no data follows these headers, whatever their size field says
        if kind == "dir":
            name = name.rstrip("/")
        yield Member(name, size, kind, data_at, mode, link, flag)
        end = data_at + _padded(size)
        if source.position < end:
            source.skip(end - source.position)


def walk(
    source: Source,
    capture: Callable[[Member], int],
    *,
    stop: Callable[[], bool] | None = None,
) -> Iterator[tuple[Member, bytes]]:
    """Every member in order, with the first `capture(member)` bytes of a file's data (b"" for 0): the
    scan's view. `stop()` is asked after each member: when it says yes, the walk ends there without
    reading further."""
    for member in members(source):
        want = min(capture(member), member.size) if member.kind == "file" else 0
        head = source.read(want) if want else b""
        if len(head) < want:
            raise TarProblem(
                source.locate(member.offset + len(head)),
                f"unexpected end of data inside tar member '{member.name}' (archive offset {member.offset})",
            )
        yield member, head
        if stop is not None and stop():
            return
