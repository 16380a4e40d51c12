"""A reader wrapper that serves the head of an object from memory.

Discovery reads each object's first bytes once to tell what it is; the engine reader then starts over at
byte 0. Wrapping the object keeps that second look free, on every store.
"""

from __future__ import annotations

from ferry.stores.base import RangeReader


class PrefetchedReader:
    def __init__(self, inner: RangeReader, head: bytes) -> None:
        self._inner = inner
        self.head = head

    @property
    def key(self) -> str:
        return self._inner.key

    @property
    def size(self) -> int:
        return self._inner.size

    @property
    def bytes_read(self) -> int:
        return self._inner.bytes_read

    def read(self, offset: int, length: int) -> bytes:
        end = offset + length
        if end <= len(self.head) or (len(self.head) == self.size and offset <= self.size):
            return self.head[offset:end]
        return self._inner.read(offset, length)

    def close(self) -> None:
        self._inner.close()


def open_with_head(reader: RangeReader, head_size: int) -> PrefetchedReader:
    return PrefetchedReader(reader, reader.read(0, head_size))
