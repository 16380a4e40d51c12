"""A folder on a local disk (or any mounted file system)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from ferry.core.errors import ObjectNotFound, StoreError
from ferry.stores.base import ObjectInfo, StoreCapabilities


class LocalFileReader:
    """Positional reads on one open file descriptor: no seek state, safe to share between threads."""

    def __init__(self, key: str, path: Path) -> None:
        self._key = key
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise ObjectNotFound(str(path.parent), key) from None
        except OSError as exc:
            raise StoreError(
                f"cannot open '{key}': {exc.strerror}",
                "check that Ferry's user may read this file",
            ) from None
        self._size = os.fstat(self._fd).st_size
        self._bytes_read = 0

    @property
    def key(self) -> str:
        return self._key

    @property
    def size(self) -> int:
        return self._size

    @property
    def bytes_read(self) -> int:
        return self._bytes_read

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError(f"bad range {offset}+{length} for '{self._key}'")
        try:
            data = os.pread(self._fd, length, offset)
        except OSError as exc:
            raise StoreError(
                f"cannot read '{self._key}' at byte {offset}: {exc.strerror}",
                "check the disk or share that holds the file",
            ) from None
        self._bytes_read += len(data)
        return data

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> LocalFileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalStore:
    """Keys are paths relative to `root`, with `/` separators whatever the OS."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._url = self.root.resolve().as_uri()

    @property
    def url(self) -> str:
        return self._url

    @property
    def capabilities(self) -> StoreCapabilities:
        return StoreCapabilities(ranged_reads=True, etags=False, writable=True)

    def _path(self, key: str) -> Path:
        # Keys come from listings or from users; refuse any that would climb out of the root.
        parts = [p for p in key.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise ObjectNotFound(self._url, key)
        return self.root.joinpath(*parts)

    def iter_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        start = self._path(prefix) if prefix else self.root
        if prefix and start.is_file():
            yield self._info(prefix, start)
            return
        # os.walk with scandir: one stat per file, sorted for stable output. Unreadable folders are skipped
        # by os.walk's default onerror=None; the scan cannot report what it cannot list.
        for folder, dirs, files in os.walk(start):
            dirs.sort()
            rel_folder = os.path.relpath(folder, self.root)
            for name in sorted(files):
                rel = name if rel_folder == "." else f"{rel_folder}/{name}"
                rel = rel.replace(os.sep, "/")
                try:
                    yield self._info(rel, Path(folder, name))
                except ObjectNotFound:
                    continue  # removed between listing and stat
                except StoreError:
                    continue

    def _info(self, key: str, path: Path) -> ObjectInfo:
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ObjectNotFound(self._url, key) from None
        except OSError as exc:
            raise StoreError(f"cannot stat '{key}': {exc.strerror}", "check permissions") from None
        return ObjectInfo(key=key, size=st.st_size, etag=None, modified=st.st_mtime)

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(self._url, key)
        return self._info(key, path)

    def open(self, key: str) -> LocalFileReader:
        return LocalFileReader(key, self._path(key))
