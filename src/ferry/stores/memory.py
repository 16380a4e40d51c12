"""A RangeReader over bytes already in memory: a decoded region, a downloaded object, a test's data."""

from __future__ import annotations


class BytesReader:
    def __init__(self, key: str, data: bytes) -> None:
        self._key, self._data, self._read = key, data, 0

    @property
    def key(self) -> str:
        return self._key

    @property
    def size(self) -> int:
        return len(self._data)

    @property
    def bytes_read(self) -> int:
        return self._read

    def read(self, offset: int, length: int) -> bytes:
        chunk = self._data[offset : offset + length]
        self._read += len(chunk)
        return chunk

    def close(self) -> None:
        pass
