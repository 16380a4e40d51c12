"""The BackupStore protocol that engines see, and the values it returns.

Readers never need a whole file: they ask for byte ranges. A store that can serve ranges cheaply (local
disk, SMB, object stores with HTTP Range) lets a scan read kilobytes per file whatever the file's size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ObjectInfo:
    """One object in a store. `key` is relative to the store's root, `/`-separated."""

    key: str
    size: int
    etag: str | None = None
    modified: float | None = None


@dataclass(frozen=True)
class StoreCapabilities:
    ranged_reads: bool = True
    etags: bool = False
    writable: bool = False
    # How many reads a scan should keep in flight. A local disk answers in microseconds and parsing is
    # CPU-bound, so threads only add GIL contention; a share or an object store answers in milliseconds.
    parallel_reads: int = 1


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


class BackupStore(Protocol):
    @property
    def url(self) -> str: ...

    @property
    def capabilities(self) -> StoreCapabilities: ...

    def iter_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object below `prefix`, recursively. A missing prefix yields nothing."""
        ...

    def stat(self, key: str) -> ObjectInfo:
        """Raises ObjectNotFound for a missing key."""
        ...

    def open(self, key: str) -> RangeReader:
        """Raises ObjectNotFound for a missing key."""
        ...
