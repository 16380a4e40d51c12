"""The store contract engines and the pipeline see, and the values it returns.

Readers never need a whole file: they ask for byte ranges. A store that can serve ranges cheaply (local
disk, SMB, object stores with HTTP Range) lets a scan read kilobytes per file whatever the file's size.

Like pgBackRest's split between read and write storage, reading (`BackupStore`) and writing
(`WritableStore.put_new`) are two protocols; every store Ferry ships implements both, and
`capabilities.writable` says whether this one may be written with the credentials it was given.

Keys are `/`-separated paths relative to the store's root. `..`, a leading `/` and NUL never name an
object: every store refuses them with InvalidKey before touching the server or the disk.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import BinaryIO, Protocol, runtime_checkable

from ferry.core.findings import Finding
from ferry.stores.errors import InvalidKey


class BlobType(StrEnum):
    """Azure's blob types. SQL Server 2012 and 2014 restore FROM URL only from page blobs."""

    BLOCK = "block"
    PAGE = "page"
    APPEND = "append"


@dataclass(frozen=True)
class ObjectInfo:
    """One object in a store. `key` is relative to the store's root, `/`-separated."""

    key: str
    size: int
    etag: str | None = None
    modified: float | None = None
    blob_type: BlobType | None = None


@dataclass(frozen=True)
class StoreCapabilities:
    ranged_reads: bool = True
    etags: bool = False
    # Objects carry a type (Azure's block, page or append blobs): ObjectInfo.blob_type is set.
    blob_types: bool = False
    writable: bool = False
    # A long read that loses its connection picks up where it stopped instead of failing.
    resumable_reads: bool = False
    # Every read of an open object is pinned to the version it opened (HTTP If-Match on its etag): a
    # change while reading fails with ObjectChanged, so a reader's etag equal to the listing's proves the
    # object did not change, with no second look.
    pinned_reads: bool = False
    # How many reads a scan should keep in flight. A local disk answers in microseconds and parsing is
    # CPU-bound, so threads only add GIL contention; a share or an object store answers in milliseconds.
    parallel_reads: int = 1
    # How often continuous discovery lists the store by default (pipeline/watch.py): a listing of a local
    # folder is cheap, one of a share or an object store costs requests.
    poll_seconds: float = 2.0


@dataclass(frozen=True)
class PutResult:
    key: str
    size: int
    # The same content was already there (a retried push): success, nothing written.
    already_present: bool
    etag: str | None = None


class RangeReader(Protocol):
    """An open object. `read(offset, length)` returns fewer bytes only at the end of the object."""

    @property
    def key(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def bytes_read(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes: ...

    def close(self) -> None: ...


@runtime_checkable
class StreamingReader(Protocol):
    """A reader that can stream a long range in pieces as they arrive, resuming after a dropped
    connection (remote stores). `iter_range` in this module falls back to chunked reads for others."""

    def stream(self, offset: int, length: int) -> Iterator[bytes]: ...


class BackupStore(Protocol):
    @property
    def url(self) -> str:
        """The store's location with secrets masked: safe to print, log and record."""
        ...

    @property
    def capabilities(self) -> StoreCapabilities: ...

    def iter_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object below `prefix` (a folder-like path: `a` lists `a/...` and an object named `a`,
        never `ab`), recursively. A missing prefix yields nothing."""
        ...

    def stat(self, key: str) -> ObjectInfo:
        """Raises ObjectNotFound for a missing key."""
        ...

    def open(self, key: str) -> RangeReader:
        """Raises ObjectNotFound for a missing key."""
        ...


@runtime_checkable
class ForkableStore(BackupStore, Protocol):
    """A store whose reads a scan may spread over forked processes, to use every core where parsing and
    the client library's own work (SMB's message packing) cost more CPU than the server's answers."""

    def after_fork(self) -> None:
        """Called in a forked child before its first read: forget the connections inherited from the
        parent, without closing them (they are still the parent's), so the child opens its own."""
        ...


@runtime_checkable
class WritableStore(BackupStore, Protocol):
    def put_new(self, key: str, source: bytes | BinaryIO) -> PutResult:
        """Write `source` under `key`, atomically (readers see all of it or nothing) and never over
        another object: the same content already there is success (`already_present`), different
        content raises ObjectConflict. A file `source` must be seekable (it is re-read to compare)."""
        ...


@runtime_checkable
class CheckedStore(Protocol):
    def check_access(self, *, write: bool = False) -> list[Finding]:
        """What stops Ferry from using this store, as findings, before anything starts: credentials
        rejected, a missing container, an expired SAS or one without the permissions needed."""
        ...


def check_key(key: str, store: str) -> str:
    """`key` normalised (empty and `.` parts dropped), or InvalidKey when it would leave the root."""
    if not key:
        raise InvalidKey(store, key, "it is empty")
    if key.startswith("/"):
        raise InvalidKey(store, key, "it starts with '/'")
    if "\x00" in key:
        raise InvalidKey(store, key, "it contains a NUL character")
    parts = [p for p in key.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidKey(store, key, "it contains '..'")
    if not parts:
        raise InvalidKey(store, key, "it names the store's root, not an object")
    return "/".join(parts)


def check_prefix(prefix: str, store: str) -> str:
    """A listing prefix normalised like a key; the empty prefix is the whole store."""
    if prefix.strip("/") == "" and not prefix.startswith("/"):
        return ""
    return check_key(prefix, store)


def whole_stream(reader: RangeReader) -> Iterator[bytes] | None:
    """The whole object as one stream (one request) from a reader that streams (remote stores); None from
    one that reads ranges as cheaply (a local file), whose reads need no buffering in between."""
    return reader.stream(0, reader.size) if isinstance(reader, StreamingReader) else None


def iter_range(reader: RangeReader, offset: int, length: int, chunk: int = 4 << 20) -> Iterator[bytes]:
    """`length` bytes from `offset` in pieces, ending early where the object ends: streamed (and resumed
    after a dropped connection) by readers that can, in `chunk`-sized reads otherwise."""
    if isinstance(reader, StreamingReader):
        yield from reader.stream(offset, length)
        return
    end = offset + length
    while offset < end:
        data = reader.read(offset, min(chunk, end - offset))
        if not data:
            return
        offset += len(data)
        yield data


def plain_etag(etag: str | None) -> str | None:
    """An etag without the quotes HTTP puts around it (listings and headers do not agree on them)."""
    return etag.strip('"') if etag else None


def read_all(source: bytes | BinaryIO) -> bytes:
    """The whole of a put's source (for small objects)."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    source.seek(0)
    return source.read()


def source_size(source: bytes | BinaryIO) -> int:
    if isinstance(source, bytes | bytearray | memoryview):
        return len(source)
    size = source.seek(0, 2)
    source.seek(0)
    return size


def source_chunks(source: bytes | BinaryIO, chunk: int = 4 << 20) -> Iterator[bytes]:
    """A put's source in pieces, from its start: large files are never held whole in memory."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = memoryview(source)
        for i in range(0, len(data), chunk):
            yield bytes(data[i : i + chunk])
        return
    source.seek(0)
    while piece := source.read(chunk):
        yield piece


def same_content(reader: RangeReader, source: bytes | BinaryIO) -> bool:
    """Whether an object holds exactly a put's source, compared piece by piece."""
    if reader.size != source_size(source):
        return False
    offset = 0
    for piece in source_chunks(source):
        if reader.read(offset, len(piece)) != piece:
            return False
        offset += len(piece)
    return True
