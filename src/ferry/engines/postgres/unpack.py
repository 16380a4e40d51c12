"""Unpacking a `pg_basebackup -Ft` backup into a folder: `base.tar`, optional `pg_wal.tar` and `<oid>.tar`
tablespaces, each plain or gzip/lz4/zstd (told by content, not name), read by Ferry's one tar reader
(tarread.py).

What this adds to reading a tar:

- Hostile entries are refused before anything is written for them: absolute paths, `..`, NUL bytes, links
  that point out of the data directory (absolute, or climbing with `..`), hard links, devices, FIFOs, and
  any entry below a link (the two-step escape: a link, then a file "inside" it).
- Files are written with the archived mode (owner bits kept, group read at most, never executable) and
  owned by the server's OS user; there is no fsync per file: the caller syncs the file system once.
- A plain local archive is copied in the kernel (copy_file_range). A compressed one is decompressed by a
  thread of its own (zlib, lz4 and zstd release the GIL) while this thread writes files, as `tar -xz`
  overlaps gzip and tar: that overlap is why restores beat `gzip -dc | tar -x`.
- Progress in archive bytes (their total is known up front) and data bytes; every file's size is kept
  for the check against `backup_manifest`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ferry.core.errors import BackupFormatError, FerryError, UsageError
from ferry.engines.postgres import compression, tarread
from ferry.engines.postgres.cluster import OsUser
from ferry.engines.postgres.compression import Compression
from ferry.engines.postgres.manifest import parse_manifest
from ferry.engines.postgres.targetdir import TargetError
from ferry.engines.postgres.tarread import RangedSource, StreamSource, TarProblem
from ferry.stores.base import RangeReader, whole_stream
from ferry.stores.local import LocalFileReader

CHUNK = 4 * 1024 * 1024
PROGRESS_EVERY = 1024 * 1024
_FILE_STEP = 16 * CHUNK  # copied per step inside a file: progress (and an interruption) are seen in big files
_QUEUE = 8  # decompressed chunks kept ready ahead of the writer
_ARCHIVE_NAME = re.compile(r"^(base|pg_wal|\d+)\.tar(\.gz|\.lz4|\.zst)?$")

TarInput = Path | str | RangeReader


class ArchiveEntryError(FerryError):
    """A base backup archive holds an entry Ferry refuses to unpack, or is damaged."""

    retryable = False

    def __init__(self, archive: str, entry: str, reason: str, hint: str = "") -> None:
        super().__init__(
            f"refusing entry '{entry}' of '{archive}': {reason}",
            hint
            or "a PostgreSQL base backup holds only files, folders and tablespace links inside its "
            "data directory; take the backup again with pg_basebackup",
        )
        self.archive = archive
        self.entry = entry
        self.reason = reason


class ManifestMismatch(FerryError):
    """The unpacked files differ from the backup's manifest."""

    retryable = False

    hint = "the backup may be incomplete or damaged; take a new base backup (nothing was started)"


@dataclass(frozen=True)
class ExtractProgress:
    """Progress of restore_base. Archive bytes are the (compressed) input: their total is known up front."""

    archive_bytes_done: int
    archive_bytes_total: int
    data_bytes: int
    files: int
    current: str


ProgressCallback = Callable[[ExtractProgress], None]


# -- inputs ---------------------------------------------------------------------------------------


@dataclass
class Archive:
    """One archive of the base backup: where it goes (`kind`), how to read it, how it is compressed."""

    name: str
    kind: str  # "base", "pg_wal" or a tablespace OID
    reader: RangeReader
    compression: Compression
    fd: int | None = None  # a local file's own descriptor, for kernel copies

    @property
    def size(self) -> int:
        return self.reader.size

    @property
    def order(self) -> tuple[int, str]:
        return (0 if self.kind == "base" else 2 if self.kind == "pg_wal" else 1, self.kind)

    def close(self) -> None:
        self.reader.close()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def open_archives(items: Sequence[TarInput]) -> list[Archive]:
    """The archives in unpack order (base, tablespaces, pg_wal); UsageError for a name pg_basebackup does
    not write or a set without base.tar. The caller closes them."""
    opened: list[Archive] = []
    try:
        for item in items:
            opened.append(_open_path(Path(item)) if isinstance(item, str | Path) else _archive(item))
    except BaseException:
        for archive in opened:
            archive.close()
        raise
    opened.sort(key=lambda a: a.order)
    if not any(a.kind == "base" for a in opened):
        for archive in opened:
            archive.close()
        raise UsageError(
            "no base.tar among the base backup's archives", "give the folder pg_basebackup -Ft wrote"
        )
    return opened


def _open_path(path: Path) -> Archive:
    """An archive given by path: read through a store reader, with a descriptor of its own for the kernel
    copies of a plain tar's file data."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(
            f"cannot open base backup archive '{path}': {exc.strerror}", "check the path"
        ) from None
    try:
        return _archive(LocalFileReader(path.name, path), fd)
    except BaseException:
        os.close(fd)
        raise


def _archive(reader: RangeReader, fd: int | None = None) -> Archive:
    name = reader.key.rsplit("/", 1)[-1]
    m = _ARCHIVE_NAME.match(name)
    if not m:
        reader.close()
        raise UsageError(
            f"'{name}' is not an archive of pg_basebackup -Ft (base.tar, pg_wal.tar or <oid>.tar, optionally "
            ".gz/.lz4/.zst)",
            "give the files pg_basebackup wrote, under their names",
        )
    return Archive(name, m.group(1), reader, compression.compression_of(reader.read(0, 4)), fd)


# -- the decompressing thread ---------------------------------------------------------------------

_END = object()


class _Decompressing:
    """Decompressed chunks made by a thread of their own, a few chunks ahead of the reader. An error of
    the thread is raised where the chunk it failed to make is asked for."""

    def __init__(self, chunks: Iterator[bytes], name: str) -> None:
        self._chunks = chunks
        self._queue: queue.Queue[object] = queue.Queue(maxsize=_QUEUE)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name=f"ferry-untar-{name}", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            for chunk in self._chunks:
                if not self._put(chunk):
                    return
            self._put(_END)
        except BaseException as exc:  # raised again by the reader, which names the archive
            self._put(exc)

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        item = self._queue.get()
        if item is _END:
            self._queue.put(_END)  # later calls see the end too
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        assert isinstance(item, bytes)
        return item

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        self._thread.join()


def _source(archive: Archive) -> tuple[RangedSource | StreamSource, Callable[[], None]]:
    """How to read `archive`, and what stops its reading. A plain local file: ranged reads of a header at a
    time, file data copied in the kernel. Anything else streams through the decompressing thread (for a
    plain archive in a store too: its reads then overlap the writes)."""
    reader = archive.reader
    if archive.compression is Compression.NONE and archive.fd is not None:
        return RangedSource(reader, fd=archive.fd, window=tarread.BLOCK), lambda: None
    raw = compression.Sequential(reader, whole_stream(reader))
    chunks = _Decompressing(compression.chunks(raw, archive.compression, CHUNK), archive.name)
    return StreamSource(chunks, raw, archive.compression), chunks.close


# -- the unpacker ---------------------------------------------------------------------------------


class Unpacker:
    """Unpacks archives one after another, counting files, bytes and progress over all of them: one header
    parse and a few system calls per entry, data in chunks of up to 4 MiB (or in the kernel)."""

    def __init__(self, user: OsUser | None, archive_total: int, progress: ProgressCallback | None) -> None:
        self.user = user
        self.archive_total = archive_total
        self.progress = progress
        self.files: dict[str, int] = {}  # manifest path: size
        self.data_bytes = 0
        self.archive_done = 0
        self._archive_base = 0
        self._source: RangedSource | StreamSource | None = None
        self._last_report = 0
        self._current = ""
        self._dirs: set[str] = set()

    def report(self, force: bool = False) -> None:
        if self._source is not None:
            self.archive_done = self._archive_base + self._source.consumed
        if self.progress is None:
            return
        if force or self.data_bytes - self._last_report >= PROGRESS_EVERY:
            self._last_report = self.data_bytes
            self.progress(ExtractProgress(self.archive_done, self.archive_total, self.data_bytes,
                                          len(self.files), self._current))  # fmt: skip

    def unpack(self, archive: Archive, dest: Path, manifest_prefix: str) -> None:
        """Unpack `archive` into `dest` (made if missing); its files are known to the manifest check as
        `manifest_prefix` + their path."""
        source, stop = _source(archive)
        self._source = source
        self._dirs = {""}
        self._current = ""
        if not dest.exists():
            dest.mkdir(mode=0o700)
            self._chown(str(dest))
        try:
            self._entries(archive.name, source, str(dest), manifest_prefix)
        except TarProblem as exc:
            if exc.truncated:
                reason, hint = (
                    f"the archive is truncated: {exc.reason}",
                    "the archive is truncated: copy it again",
                )
            else:
                reason, hint = (
                    f"the archive is damaged: {exc.reason}",
                    "the archive is damaged or not a tar file",
                )
            raise ArchiveEntryError(archive.name, self._current or "(start)", reason, hint) from None
        except OSError as exc:
            raise TargetError(
                f"cannot unpack '{self._current}' of '{archive.name}' into '{dest}': {exc.strerror}",
                "check free space and that nothing else writes into the target folder",
            ) from None
        finally:
            self.report()
            stop()
            self._archive_base += archive.size
            self.archive_done = self._archive_base
            self._source = None

    def _chown(self, path: str, follow: bool = True) -> None:
        if self.user is not None:
            if follow:
                os.chown(path, self.user.uid, self.user.gid)
            else:
                os.lchown(path, self.user.uid, self.user.gid)

    def _entries(self, archive: str, src: RangedSource | StreamSource, root: str, prefix: str) -> None:
        for member in tarread.members(src):
            name = self._current = member.name
            rel = _safe_relpath(name, archive)
            full = os.path.join(root, rel) if rel else root
            kind = member.kind
            if kind == "file":
                if not rel:
                    raise ArchiveEntryError(archive, name, "a file entry without a name")
                self._ensure_dir(root, os.path.dirname(rel), archive, name)
                self._file(src, full, member.size, (member.mode & 0o640) | 0o600, archive, name)
                self.files[prefix + rel] = member.size
            elif kind == "dir":
                if rel:
                    self._ensure_dir(root, os.path.dirname(rel), archive, name)
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(full, (member.mode & 0o750) | 0o700)
                        self._chown(full)
                    if not os.path.isdir(full) or os.path.islink(full):
                        raise ArchiveEntryError(archive, name, "a folder entry over a file or link")
                    self._dirs.add(rel)
            elif kind == "symlink":
                _check_link(member.link, archive, name)
                if not rel:
                    raise ArchiveEntryError(archive, name, "a link in place of the data directory")
                self._ensure_dir(root, os.path.dirname(rel), archive, name)
                try:
                    os.symlink(member.link, full)
                except FileExistsError:
                    raise ArchiveEntryError(archive, name, "a link over an existing entry") from None
                self._chown(full, follow=False)
            elif kind == "hardlink":
                raise ArchiveEntryError(archive, name, f"a hard link (to '{member.link}')")
            elif kind in _SPECIAL:
                raise ArchiveEntryError(archive, name, _SPECIAL[kind])
            else:
                raise ArchiveEntryError(archive, name, f"an entry of unsupported tar type {member.flag!r}")
            self.report()

    def _ensure_dir(self, root: str, rel_dir: str, archive: str, entry: str) -> None:
        if rel_dir in self._dirs:
            return
        parts = rel_dir.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub in self._dirs:
                continue
            path = os.path.join(root, sub)
            try:
                os.mkdir(path, 0o700)
                self._chown(path)
            except FileExistsError:
                if os.path.islink(path) or not os.path.isdir(path):
                    # A link is allowed only where the backup puts one, never as a parent of other entries.
                    raise ArchiveEntryError(
                        archive, entry, f"its folder '{sub}' is a link or a file"
                    ) from None
            self._dirs.add(sub)

    def _file(
        self, src: RangedSource | StreamSource, path: str, size: int, mode: int, archive: str, entry: str
    ) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ArchiveEntryError(archive, entry, "a file over a link") from None
            raise
        try:
            if self.user is not None:
                os.fchown(fd, self.user.uid, self.user.gid)
            done = 0
            while done < size:
                step = src.copy(min(size - done, _FILE_STEP), fd)
                if step == 0:
                    raise ArchiveEntryError(
                        archive,
                        entry,
                        f"the archive is truncated: it ends inside this file (byte {done} of {size})",
                        "the archive is truncated: copy it again",
                    )
                done += step
                self.data_bytes += step
                self.report()
        finally:
            os.close(fd)


_SPECIAL = {"chardev": "a character device", "blockdev": "a block device", "fifo": "a FIFO"}


def _safe_relpath(name: str, archive: str) -> str:
    """The entry's path relative to the destination, or an error for one that could leave it."""
    if name.startswith("/"):
        raise ArchiveEntryError(archive, name, "an absolute path")
    if "\0" in name:
        raise ArchiveEntryError(archive, name, "a NUL byte in the path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveEntryError(archive, name, "a '..' in the path")
    return "/".join(parts)


def _check_link(target: str, archive: str, entry: str) -> None:
    """Links may only point down from where they are: relative and without '..'. Then no chain of links
    can climb out of the data directory, whatever the order of entries."""
    if not target or target.startswith("/"):
        raise ArchiveEntryError(archive, entry, f"a link to '{target}', outside the data directory")
    if ".." in target.split("/"):
        raise ArchiveEntryError(archive, entry, f"a link to '{target}', which climbs with '..'")


# -- the manifest check ---------------------------------------------------------------------------


def manifest_sizes(data: bytes) -> dict[str, int]:
    """Path -> size of every file in a `backup_manifest`, read as the scan reads it (manifest.py: its own
    SHA-256 checked)."""
    try:
        manifest = parse_manifest("backup_manifest", data)
    except BackupFormatError as exc:
        raise ManifestMismatch(f"cannot use backup_manifest: {exc.reason}") from None
    return {f.path: f.size for f in manifest.files}


def compare_manifest(expected: Mapping[str, int], found: Mapping[str, int]) -> None:
    """ManifestMismatch unless the unpacked files are the manifest's, with its sizes."""

    def relevant(p: str) -> bool:  # pg_wal is not covered by the manifest (pg_verifybackup skips it too)
        return not p.startswith("pg_wal/")

    missing = sorted(p for p in expected if relevant(p) and p not in found)
    extra = sorted(p for p in found if relevant(p) and p not in expected)
    wrong = sorted(p for p in expected if p in found and relevant(p) and found[p] != expected[p])
    if not (missing or extra or wrong):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (first: '{missing[0]}')")
    if wrong:
        parts.append(f"{len(wrong)} of another size (first: '{wrong[0]}', {found[wrong[0]]} bytes, manifest "
                     f"{expected[wrong[0]]})")  # fmt: skip
    if extra:
        parts.append(f"{len(extra)} not in the manifest (first: '{extra[0]}')")
    raise ManifestMismatch("the unpacked base backup differs from backup_manifest: " + "; ".join(parts))
