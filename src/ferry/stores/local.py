"""A folder on a local disk (or any mounted file system)."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ferry.core.errors import ObjectNotFound, StoreError
from ferry.core.findings import Finding, Severity
from ferry.stores.base import ObjectInfo, PutResult, StoreCapabilities, check_key, check_prefix
from ferry.stores.errors import AccessDenied, ObjectConflict

COPY_CHUNK = 4 << 20


class LocalFileReader:
    """Positional reads on one open file descriptor: no seek state, safe to share between threads."""

    def __init__(self, key: str, path: str | Path) -> None:
        self._key = key
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(os.path.dirname(path), key) from None
        except OSError as exc:
            raise StoreError(
                f"cannot open '{key}': {exc.strerror}",
                "check that Ferry's user may read this file",
            ) from None
        st = os.fstat(self._fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(self._fd)
            raise ObjectNotFound(os.path.dirname(path), key)
        self._size = st.st_size
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

    def current_size(self) -> int:
        """The file's size now, from the open descriptor: the second look at its size that a scan takes
        after reading, without resolving the path again."""
        return os.fstat(self._fd).st_size

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
        self._root = str(self.root)
        self._url = self.root.resolve().as_uri()

    @property
    def url(self) -> str:
        return self._url

    @property
    def capabilities(self) -> StoreCapabilities:
        return StoreCapabilities(ranged_reads=True, etags=False, writable=True, poll_seconds=2.0)

    def _path(self, key: str) -> Path:
        # Keys come from listings or from users; refuse any that would climb out of the root.
        return self.root.joinpath(*check_key(key, self._url).split("/"))

    def iter_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        prefix = check_prefix(prefix, self._url)
        start = self.root.joinpath(*prefix.split("/")) if prefix else self.root
        if prefix and start.is_file():
            yield self._info(prefix, start)
            return
        yield from _walk(str(start), "" if start == self.root else prefix.rstrip("/") + "/")

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
        return self._info(check_key(key, self._url), path)

    def open(self, key: str) -> LocalFileReader:
        # A plain string join: a scan opens every file once, and building a Path costs more than the read.
        return LocalFileReader(key, os.path.join(self._root, *check_key(key, self._url).split("/")))

    def put_new(self, key: str, source: bytes | BinaryIO) -> PutResult:
        """A temp file beside the target, fsync, then a hard link to the final name: link fails when the
        name exists, so nothing is ever overwritten, even by a concurrent writer; then fsync the folder."""
        key = check_key(key, self._url)
        final = self._path(key)
        folder = final.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AccessDenied(
                self._url, f"create folder '{folder}'", exc.strerror or str(exc),
                "give Ferry's OS user write access to the store",
            ) from None  # fmt: skip
        tmp = folder / f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            size = _write_file(tmp, source)
            present = _publish(tmp, final)
            if not present:
                _fsync_dir(folder)
        except OSError as exc:
            raise StoreError(
                f"cannot write '{key}' in store '{self._url}': {exc.strerror}",
                "check free space and that Ferry's OS user may write to the store",
            ) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if present and not _same_file(final, source):
            raise ObjectConflict(self._url, key)
        return PutResult(key, size, present)

    def check_access(self, *, write: bool = False) -> list[Finding]:
        problems: list[Finding] = []
        if not self.root.exists():
            problems.append(
                Finding(
                    "store-missing",
                    Severity.ERROR,
                    f"'{self.root}' does not exist",
                    "create the folder, or mount the share that holds the backups",
                )
            )
        elif not os.access(self.root, os.R_OK | os.X_OK):
            problems.append(
                Finding(
                    "store-access-denied",
                    Severity.ERROR,
                    f"Ferry may not list '{self.root}'",
                    "give Ferry's OS user read and execute permission on the folder",
                )
            )
        elif write and not os.access(self.root, os.W_OK):
            problems.append(
                Finding(
                    "store-read-only",
                    Severity.ERROR,
                    f"Ferry may not write into '{self.root}'",
                    "give Ferry's OS user write permission on the folder",
                )
            )
        return problems


def _walk(folder: str, rel: str) -> Iterator[ObjectInfo]:
    """Objects below `folder` (whose key prefix is `rel`): a folder's files in name order, then its
    subfolders in name order, as os.walk goes. One scandir per folder and one stat per file through the
    folder's entries, with no Path objects: listing is the part of a scan the parallel readers wait for.
    Unreadable folders are skipped, as os.walk skips them; the scan cannot report what it cannot list.
    Symbolic links to files are followed; links to folders are listed by os.walk but not entered."""
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return
    dirs = []
    for entry in entries:
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            if not entry.is_symlink():
                dirs.append(entry)
            continue
        try:
            st = entry.stat()
        except OSError:
            continue  # removed between listing and stat, or a link to nothing
        yield ObjectInfo(key=rel + entry.name, size=st.st_size, etag=None, modified=st.st_mtime)
    for entry in dirs:
        yield from _walk(entry.path, f"{rel}{entry.name}/")


def _write_file(tmp: Path, source: bytes | BinaryIO) -> int:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
    size = 0
    try:
        if isinstance(source, bytes | bytearray | memoryview):
            chunks: Iterator[bytes] = iter([bytes(source)])
        else:
            source.seek(0)
            chunks = iter(lambda: source.read(COPY_CHUNK), b"")
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
            size += len(chunk)
        os.fsync(fd)
    finally:
        os.close(fd)
    return size


def _publish(tmp: Path, final: Path) -> bool:
    """Give `tmp` its final name without overwriting. True when a file was already there."""
    try:
        os.link(tmp, final)
        return False
    except FileExistsError:
        return True
    except OSError as exc:
        # Some mounted shares cannot hard-link: check-then-rename leaves a tiny race, acceptable there.
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
        if final.exists():
            return True
        os.rename(tmp, final)
        return False


def _same_file(path: Path, source: bytes | BinaryIO) -> bool:
    try:
        with open(path, "rb") as stored:
            if isinstance(source, bytes | bytearray | memoryview):
                return stored.read() == bytes(source)
            source.seek(0)
            while True:
                a, b = stored.read(COPY_CHUNK), source.read(COPY_CHUNK)
                if a != b:
                    return False
                if not a:
                    return True
    except OSError:
        return False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
