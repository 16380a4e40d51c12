"""The reader every remote store shares: one request per cluster of nearby reads, pinned to one version.

A remote read costs a round trip whatever its size, so the reader

- fetches the object's head when it is opened: that one request proves the object exists, gives its
  size and etag, and serves the first reads (a scan sniffs the first 16 KiB);
- reads to the end of the object when a read lands within `tail_window` of it: backup formats end with
  a run of small trailer blocks, read one page at a time by the engines;
- pins every later request to the etag of the first (If-Match), so an object that changes while it is
  read fails with ObjectChanged instead of mixing two versions;
- streams long reads in pieces and resumes them after a dropped connection (retry.resumable).

The store supplies `fetch(offset, length, etag) -> Fetched`; it raises Ferry's store errors only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ferry.stores.base import BlobType
from ferry.stores.retry import RetryPolicy, resumable, with_retries

HEAD_BYTES = 16384
TAIL_WINDOW = 16384
STREAM_ABOVE = 1 << 20  # reads longer than this are streamed and not cached
MAX_SEGMENTS = 8


@dataclass
class Fetched:
    """One ranged request's answer: the object's whole size and etag, and the body in pieces."""

    size: int
    etag: str | None
    pieces: Iterator[bytes]
    blob_type: BlobType | None = None


Fetch = Callable[[int, int, str | None], Fetched]


class RemoteReader:
    def __init__(
        self,
        key: str,
        fetch: Fetch,
        policy: RetryPolicy,
        *,
        head: int = HEAD_BYTES,
        tail_window: int = TAIL_WINDOW,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._key = key
        self._fetch = fetch
        self._policy = policy
        self._tail = tail_window
        self._on_close = on_close
        self._read = 0
        self._segments: list[tuple[int, bytes]] = []

        def first() -> tuple[Fetched, bytes]:
            got = fetch(0, head, None)
            return got, b"".join(got.pieces)

        fetched, data = with_retries(first, policy)
        self._size = fetched.size
        self.etag = fetched.etag
        self.blob_type = fetched.blob_type
        self._read += len(data)
        self._segments.append((0, data))

    @property
    def key(self) -> str:
        return self._key

    @property
    def size(self) -> int:
        return self._size

    @property
    def bytes_read(self) -> int:
        return self._read

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError(f"bad range {offset}+{length} for '{self._key}'")
        end = min(offset + length, self._size)
        if offset >= end:
            return b""
        for start, data in self._segments:
            if start <= offset and end <= start + len(data):
                return data[offset - start : end - start]
        if end - offset > STREAM_ABOVE:
            return b"".join(self.stream(offset, end - offset))
        stop = self._size if self._size - end <= self._tail else end
        data = b"".join(self.stream(offset, stop - offset))
        self._segments.append((offset, data))
        if len(self._segments) > MAX_SEGMENTS:
            del self._segments[1]  # keep the head: engines come back to it
        return data[: end - offset]

    def stream(self, offset: int, length: int) -> Iterator[bytes]:
        """Up to `length` bytes from `offset`, piece by piece, resumed after a dropped connection."""
        length = max(0, min(length, self._size - offset))
        if length == 0:
            return iter(())

        def open_at(start: int, count: int) -> Iterator[bytes]:
            for piece in self._fetch(start, count, self.etag).pieces:
                self._read += len(piece)
                yield piece

        return resumable(open_at, offset, length, self._policy)

    def close(self) -> None:
        self._segments.clear()
        if self._on_close is not None:
            self._on_close()
            self._on_close = None

    def __enter__(self) -> RemoteReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
