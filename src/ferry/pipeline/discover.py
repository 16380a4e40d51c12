"""Discover and read: list every object in a store, tell by its first bytes what it is, read its headers.

Nothing is taken from a file's name or folder. Each file costs one listing entry, a few small ranged
reads and a second look at its size: a file whose size changed while it was read is still being written,
so its headers are set aside for the next scan.

Reading headers is CPU-bound parsing, so threads do not speed up a local scan (they share one interpreter
lock). A large local scan is split over processes instead, one per core, the calling one included: the
listing is cut into runs of files, each process claims runs until none is left, and the results come back
in listing order, the same as a scan in one process would give (pipeline/parallel.py).
"""

from __future__ import annotations

import copyreg
import io
import os
import pickle
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID, SafeUUID

from ferry.core.errors import BackupFormatError, StoreError
from ferry.core.findings import Finding, Severity
from ferry.engines.base import Engine
from ferry.pipeline import parallel
from ferry.stores.base import BackupStore, ForkableStore, ObjectInfo, RangeReader
from ferry.stores.errors import ObjectChanged
from ferry.stores.local import LocalStore
from ferry.stores.prefetch import PrefetchedReader

HEAD_SIZE = 16384
# Names backup files have: SQL Server's usual extensions, PostgreSQL's WAL segment and history names, base
# backup tars and manifests. A file so named that holds no backup deserves a warning; any other foreign
# file (a README, a checksum list) is only noted. The name never decides what a file is.
_BACKUP_NAMES = re.compile(
    r"(\.(bak|trn|dif|diff)$)|(^[0-9A-F]{24}(\.partial)?$)|(^[0-9A-F]{8}\.history$)"
    r"|(\.tar(\.(gz|lz4|zst))?$)|(^backup_manifest$)",
    re.IGNORECASE,
)

Progress = Callable[[int, int | None], None]

# Below this many files a scan stays in one process: starting processes and sending results back costs
# more than it saves. Files are handed out in runs, claimed one at a time (pipeline/parallel.py): many
# small runs balance cores that other work slows unevenly, and let results stream back in order.
POOL_MIN_FILES = 512
_RUNS_PER_PROCESS = 16
_MIN_RUN = 16
_MAX_RUN = 256


@dataclass
class FileResult:
    info: ObjectInfo
    engine: str | None = None
    sets: Sequence[object] = ()
    finding: Finding | None = None
    bytes_read: int = 0


@dataclass
class ScanResult:
    files: list[FileResult] = field(default_factory=list)

    @property
    def findings(self) -> list[Finding]:
        return [f.finding for f in self.files if f.finding is not None]

    @property
    def bytes_read(self) -> int:
        return sum(f.bytes_read for f in self.files)

    def sets_for(self, engine: str) -> list[object]:
        return [s for f in self.files if f.engine == engine for s in f.sets]


def scan(
    store: BackupStore,
    engines: Sequence[Engine],
    prefix: str = "",
    *,
    workers: int | None = None,
    progress: Progress | None = None,
) -> ScanResult:
    """Read every object below `prefix`. Reads overlap on `workers` threads (by default as many as the
    store asks for): remote stores answer with latency, and readers release the GIL while they wait."""
    objects: Iterator[ObjectInfo] = store.iter_objects(prefix)
    result = ScanResult()
    count = workers if workers is not None else store.capabilities.parallel_reads
    processes = _processes(store)
    if processes > 1:
        listed = list(objects)
        if len(listed) >= POOL_MIN_FILES:
            for fr in _scan_in_processes(store, engines, listed, processes, count):
                result.files.append(fr)
                if progress:
                    progress(len(result.files), len(listed))
            return result
        objects = iter(listed)

    def one(info: ObjectInfo) -> FileResult:
        return read_object(store, engines, info)

    if count <= 1:
        for info in objects:
            result.files.append(one(info))
            if progress:
                progress(len(result.files), None)
        return result
    with ThreadPoolExecutor(max_workers=count, thread_name_prefix="ferry-scan") as pool:
        for fr in pool.map(one, objects):
            result.files.append(fr)
            if progress:
                progress(len(result.files), None)
    return result


def _processes(store: BackupStore) -> int:
    """How many processes a scan of `store` may use: one per core for a plain local folder, and for a
    store that gives a forked child connections of its own (ForkableStore: SMB, whose client library
    spends more CPU per file than the parsing); one for any other store (which keeps state, such as
    connections, that a process of its own would share unsafely)."""
    if not parallel.can_fork():
        return 1
    if type(store) is LocalStore or isinstance(store, ForkableStore):
        return parallel.cores()
    return 1


def _scan_in_processes(
    store: BackupStore, engines: Sequence[Engine], listed: list[ObjectInfo], processes: int, threads: int
) -> Iterator[FileResult]:
    size = max(_MIN_RUN, min(_MAX_RUN, len(listed) // (processes * _RUNS_PER_PROCESS)))
    runs = [listed[i : i + size] for i in range(0, len(listed), size)]

    def work(infos: list[ObjectInfo]) -> list[FileResult]:
        return _read_run(store, engines, infos, threads)

    after_fork = store.after_fork if isinstance(store, ForkableStore) else None
    for files in parallel.map_runs(runs, work, _dump, pickle.loads, processes - 1, after_fork):
        yield from files


def _read_run(
    store: BackupStore, engines: Sequence[Engine], infos: list[ObjectInfo], threads: int
) -> list[FileResult]:
    if threads <= 1:
        return [read_object(store, engines, info) for info in infos]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(lambda info: read_object(store, engines, info), infos))


def _dump(files: list[FileResult]) -> bytes:
    """One run's results pickled compactly for the way back (see `_Pickler`)."""
    out = io.BytesIO()
    _Pickler(out).dump(files)
    return out.getvalue()


class _Pickler(pickle.Pickler):
    """Results pickled for the way back, compactly: loading them is work for the parent process alone,
    while the children parse. A UUID goes as its int (a UUID unpickles through Python code and an Enum
    lookup), and equal values in dataclasses go once."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        # Backups of one database repeat names, GUIDs and dates. Equal values are sent as one object,
        # which the pickle memo then refers back to instead of building it again.
        self._seen: dict[tuple[type, Any], Any] = {}

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is UUID:
            return _uuid, (obj.int,)
        if hasattr(kind, "__dataclass_fields__") and hasattr(obj, "__dict__") and kind is not type:
            seen = self._seen
            state = {
                name: seen.setdefault((type(v), v), v) if type(v) in _SHARED else v
                for name, v in obj.__dict__.items()
            }
            # As default pickling does (object created, then its __dict__ filled, both in C), but with
            # the shared values.
            return copyreg.__newobj__, (kind,), state  # type: ignore[attr-defined]
        return NotImplemented


_SHARED = frozenset({str, UUID, datetime, int})
_new = object.__new__
_set = object.__setattr__
_UNKNOWN = SafeUUID.unknown


def _uuid(value: int) -> UUID:
    u: UUID = _new(UUID)
    _set(u, "int", value)
    _set(u, "is_safe", _UNKNOWN)
    return u


def read_object(store: BackupStore, engines: Sequence[Engine], info: ObjectInfo) -> FileResult:
    """One object's backup sets, or the finding that says why it has none. Never raises for bad data."""
    out = FileResult(info)
    special = _special_kind(store, info) if info.size == 0 else None
    if special is not None:
        # Never opened: opening a FIFO for reading waits for a writer that may never come.
        out.finding = _finding(
            "not-a-file",
            Severity.WARNING,
            f"'{info.key}' is {special}, not a file: Ferry does not read it",
            "Ferry reads regular files only; move it out of the backup folder",
            info.key,
        )
        return out
    if info.size == 0:
        out.finding = _finding(
            "empty-file",
            Severity.WARNING,
            f"'{info.key}' is empty",
            "a backup may still be being created; Ferry reads it again on the next scan",
            info.key,
        )
        return out
    try:
        raw = store.open(info.key)
    except StoreError as exc:
        out.finding = _finding("file-unreadable", Severity.ERROR, exc.message, exc.hint, info.key)
        return out
    try:
        reader = PrefetchedReader(raw, raw.read(0, HEAD_SIZE))
        engine = next((e for e in engines if e.sniff(reader.head)), None)
        if engine is None:
            out.finding = _not_a_backup(info)
        else:
            out.engine = engine.name
            out.sets = engine.read(reader)
            if not out.sets:  # the engine looked deeper than the sniff could: not one of its files
                out.engine = None
                out.finding = _not_a_backup(info)
            if _changed(store, info, raw.size, raw):
                out.sets = ()
                out.finding = _finding(
                    "file-changing",
                    Severity.WARNING,
                    f"'{info.key}' changed size while Ferry read it: it is still being written",
                    "Ferry reads it again on the next scan, once the backup has finished",
                    info.key,
                )
    except BackupFormatError as exc:
        out.finding = _format_finding(exc, store, info)
    except ObjectChanged:
        out.sets = ()
        out.finding = _finding(
            "file-changing",
            Severity.WARNING,
            f"'{info.key}' changed while Ferry read it: it is still being written",
            "Ferry reads it again on the next scan, once the backup has finished",
            info.key,
        )
    except StoreError as exc:
        out.finding = _finding("file-unreadable", Severity.ERROR, exc.message, exc.hint, info.key)
    finally:
        out.bytes_read = raw.bytes_read
        raw.close()
    return out


_SPECIAL = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _special_kind(store: BackupStore, info: ObjectInfo) -> str | None:
    """What a listed object of no size is, when it is no file at all (a FIFO, a socket, a device). Only a
    local folder holds such things; the store protocol has no file types, so its root is looked at."""
    root = getattr(store, "root", None)
    if not isinstance(root, Path):
        return None
    try:
        mode = os.stat(root.joinpath(*info.key.split("/"))).st_mode
    except (OSError, ValueError):
        return None
    return next((name for test, name in _SPECIAL if test(mode)), None)


def _changed(
    store: BackupStore, info: ObjectInfo, size_at_open: int, reader: RangeReader | None = None
) -> bool:
    if size_at_open != info.size:
        return True
    # A local file's size is looked at again through the descriptor that read it (`current_size`).
    current_size = getattr(reader, "current_size", None)
    if current_size is not None:
        return bool(current_size() != info.size)
    # A store whose reads are pinned to one version fails them if the object changes; a reader's etag
    # equal to the listing's then proves the object is the one listed, without another request.
    pinned = getattr(reader, "etag", None)
    if pinned and info.etag and store.capabilities.pinned_reads:
        return bool(pinned != info.etag)
    try:
        return store.stat(info.key).size != info.size
    except StoreError:
        return True  # gone since the listing: certainly not a finished backup


def _format_finding(exc: BackupFormatError, store: BackupStore, info: ObjectInfo) -> Finding:
    if _changed(store, info, info.size):
        return _finding(
            "file-changing",
            Severity.WARNING,
            f"'{info.key}' changed size while Ferry read it: it is still being written",
            "Ferry reads it again on the next scan, once the backup has finished",
            info.key,
        )
    if "unexpected end of data" in exc.reason:
        return _finding(
            "backup-truncated",
            Severity.WARNING,
            str(exc),
            "the file may still be uploading or was cut short by a failed copy; Ferry reads it again on "
            "the next scan, and if it stays short, copy it again from the source",
            info.key,
        )
    # The reader's own hint when it has a specific one; the class default speaks of truncation.
    hint = (
        exc.hint
        if exc.hint != BackupFormatError.hint
        else ("the file is damaged or not a backup Ferry can read: copy it again from the source")
    )
    return _finding("backup-unreadable", Severity.ERROR, str(exc), hint, info.key)


def _not_a_backup(info: ObjectInfo) -> Finding:
    named_like_backup = _BACKUP_NAMES.search(info.key.rsplit("/", 1)[-1]) is not None
    return _finding(
        "not-a-backup",
        Severity.WARNING if named_like_backup else Severity.INFO,
        f"'{info.key}' is not a backup file Ferry knows (no backup header at byte 0); skipped",
        "move files that are not backups out of the backup folder, or ignore this note",
        info.key,
    )


def _finding(code: str, severity: Severity, message: str, hint: str, key: str) -> Finding:
    return Finding(code=code, severity=severity, message=message, hint=hint, files=(key,))
