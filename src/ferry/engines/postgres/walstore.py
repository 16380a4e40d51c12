"""WAL in a store, wherever the source's archive_command put it: names, keys, compression, fetching.

PostgreSQL asks for WAL by name (restore_command's %f). Stores hold it wherever the archive_command wrote
it: Ferry's own `wal/<name>` (`ferry wal-push`), `cp %p /backups/db1/archive/wal/%f`, folders nested by
date, beside the base backups, or compressed by another tool (`gzip < %p > /archive/%f.gz`, lz4, zstd).
`WalIndex` maps each name to the key that holds it, from one listing of the source's whole location: a
file is a WAL file when its name, less a compression suffix, is a name PostgreSQL archives (the scan reads
content and reports a file whose name disagrees with it). Between listings, a name the index does not have
is probed in the folders that already hold WAL, so a segment archived a moment ago is found without
listing the whole store again.

Every path that fetches WAL goes through here: the prefetcher, `ferry wal-fetch` (restore_command), CLI and
service migrations. Only stdlib, Ferry's core and stores, and the small wal/compression modules are
imported: `wal-fetch` starts once per segment and must start fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from posixpath import basename, dirname

from ferry.core.errors import FerryError, ObjectNotFound
from ferry.engines.postgres import compression
from ferry.engines.postgres.compression import Compression
from ferry.stores.base import BackupStore, whole_stream

DEFAULT_FOLDER = "wal"  # where `ferry wal-push` writes, and the first place looked when nothing is known
COPY_CHUNK = 4 * 1024 * 1024
MIN_SEGMENT_SIZE = 1024 * 1024
MAX_SEGMENT_SIZE = 1024 * 1024 * 1024
PROBE_FOLDERS = 3  # folders probed for a name the index lacks, those holding most WAL first
INDEX_FORMAT = 1

_SEGMENT = re.compile(r"^[0-9A-F]{24}$")
WAL_FILE = re.compile(r"^(?:[0-9A-F]{24}(?:\.partial|\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history)$")


class WalArchiveError(FerryError):
    """A WAL file could not be archived or restored."""


def is_segment_size(size: int) -> bool:
    """PostgreSQL segments are a power of two between 1 MiB and 1 GiB (initdb --wal-segsize)."""
    return MIN_SEGMENT_SIZE <= size <= MAX_SEGMENT_SIZE and size & (size - 1) == 0


def has_segment_size(name: str) -> bool:
    """Whether a file of this name holds a whole segment (a segment or a .partial), not a text file."""
    return bool(_SEGMENT.match(name[:24])) and (len(name) == 24 or name.endswith(".partial"))


@dataclass(frozen=True)
class WalObject:
    """A WAL file in a store: the name PostgreSQL asks for, the key holding it, its stored size and how it
    is compressed."""

    name: str
    key: str
    size: int
    compression: Compression = Compression.NONE

    @property
    def folder(self) -> str:
        return dirname(self.key)


def wal_object(key: str, size: int) -> WalObject | None:
    """The WAL file a key holds, judged by its file name (a compression suffix taken off), or None."""
    name = basename(key)
    kind = Compression.NONE
    for suffix, codec in compression.SUFFIXES.items():
        if name.endswith(suffix):
            name, kind = name[: -len(suffix)], codec
            break
    if not WAL_FILE.match(name):
        return None
    return WalObject(name, key, size, kind)


def _rank(obj: WalObject, folders: Counter[str]) -> tuple[int, bool, str]:
    # The folder that holds most of the archive, then a copy nobody compressed (no decompression), then
    # by key: the same rule, whatever the listing order.
    return (-folders[obj.folder], obj.compression is not Compression.NONE, obj.key)


class WalIndex:
    """Which key holds each WAL file of one source's location in `store` (see the module's docstring)."""

    def __init__(self, store: BackupStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._by_name: dict[str, WalObject] = {}
        self._folders: list[tuple[str, tuple[Compression, ...]]] = []  # most WAL first, with their codecs
        self.listed = False

    def refresh(self) -> list[WalObject]:
        """List the store and rebuild the index. Returns one object per name (the copy fetches use), in
        key order."""
        found: list[WalObject] = []
        for info in self.store.iter_objects(""):
            obj = wal_object(info.key, info.size)
            if obj is not None:
                found.append(obj)
        self._build(found)
        return self.objects()

    def objects(self) -> list[WalObject]:
        """One object per name (the copy fetches use), in key order, as of the last listing."""
        with self._lock:
            return sorted(self._by_name.values(), key=lambda o: o.key)

    def _build(self, found: list[WalObject]) -> None:
        folders = Counter(o.folder for o in found)
        codecs: dict[str, Counter[Compression]] = defaultdict(Counter)
        copies: dict[str, list[WalObject]] = defaultdict(list)
        for o in found:
            copies[o.name].append(o)
            codecs[o.folder][o.compression] += 1
        by_name = {name: min(group, key=lambda o: _rank(o, folders)) for name, group in copies.items()}
        ordered = sorted(folders, key=lambda f: (-folders[f], f))
        with self._lock:
            self._by_name = by_name
            self._folders = [(f, tuple(c for c, _ in codecs[f].most_common())) for f in ordered]
            self.listed = True

    def get(self, name: str) -> WalObject | None:
        """From the last listing only."""
        with self._lock:
            return self._by_name.get(name)

    def forget(self, name: str) -> None:
        """Drop a name whose object turned out to be gone."""
        with self._lock:
            self._by_name.pop(name, None)

    def find(self, name: str) -> WalObject | None:
        """The object holding `name`: from the last listing, else probed where WAL is kept (it may have
        been archived since). None when the store does not have it there."""
        known = self.get(name)
        if known is not None:
            return known
        for key in self.probe_keys(name):
            try:
                info = self.store.stat(key)
            except ObjectNotFound:
                continue
            obj = wal_object(info.key, info.size)
            if obj is not None:
                with self._lock:
                    self._by_name.setdefault(name, obj)
                return obj
        return None

    def probe_keys(self, name: str) -> Iterator[str]:
        with self._lock:
            folders = list(self._folders[:PROBE_FOLDERS])
        if not folders:
            folders = [(DEFAULT_FOLDER, (Compression.NONE,))]
        for folder, codecs in folders:
            for codec in codecs:
                suffix = next((s for s, c in compression.SUFFIXES.items() if c is codec), "")
                yield f"{folder}/{name}{suffix}" if folder else f"{name}{suffix}"

    # -- the copy `ferry wal-fetch` reads (restore_command runs outside the migration's process) --------

    def save(self, path: Path) -> None:
        """Write the index for `ferry wal-fetch`: world-readable (the server's OS user reads it), whole."""
        with self._lock:
            doc = {
                "format": INDEX_FORMAT,
                "files": {n: [o.key, o.size, o.compression.value] for n, o in self._by_name.items()},
                "folders": [[f, [c.value for c in codecs]] for f, codecs in self._folders],
            }
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(json.dumps(doc, separators=(",", ":")))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)

    def load(self, path: Path) -> bool:
        """Take the index `save` wrote; False when there is none (or it cannot be read: list instead)."""
        try:
            doc = json.loads(path.read_text())
            if doc.get("format") != INDEX_FORMAT:
                return False
            by_name = {
                n: WalObject(n, str(k), int(s), Compression(c)) for n, (k, s, c) in doc["files"].items()
            }
            folders = [(str(f), tuple(Compression(c) for c in cs)) for f, cs in doc["folders"]]
        except (OSError, ValueError, TypeError, KeyError):
            return False
        with self._lock:
            self._by_name, self._folders, self.listed = by_name, folders, True
        return True


# -- reading one WAL file ---------------------------------------------------------------------------------


_DAMAGED = "the file is truncated or damaged; archive it again from the source's pg_wal if it is still there"


def copy_into(store: BackupStore, obj: WalObject, fd: int, *, limit: int = MAX_SEGMENT_SIZE) -> int:
    """Write the content of `obj` (decompressed) to `fd`; returns the bytes written. A segment must come out
    at a segment's size; a file cut short, damaged or too large raises WalArchiveError naming it."""
    where = f"'{obj.key}' in store '{store.url}'"
    segment = has_segment_size(obj.name)
    if segment and obj.compression is Compression.NONE and not is_segment_size(obj.size):
        raise WalArchiveError(
            f"{where} has {obj.size} bytes, not a WAL segment size",
            _DAMAGED,
        )
    reader = store.open(obj.key)
    try:
        done = 0
        whole = compression.Sequential(reader, whole_stream(reader))
        for chunk in _decompressed(whole, obj, where):
            done += len(chunk)
            if done > limit:
                raise WalArchiveError(f"{where} decompresses to more than {limit} bytes", _DAMAGED)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
    finally:
        reader.close()
    if obj.compression is Compression.NONE and done != obj.size:
        raise WalArchiveError(
            f"{where} ended at byte {done} of {obj.size}",
            "the file changed while it was read; it is read again",
        )
    if segment and not is_segment_size(done):
        raise WalArchiveError(f"{where} holds {done} bytes, not a WAL segment size", _DAMAGED)
    return done


def _decompressed(raw: compression.Sequential, obj: WalObject, where: str) -> Iterator[bytes]:
    """The chunks of `obj`, a codec's complaint turned into WalArchiveError naming the file. Store errors
    (FerryError) pass through: they are the store's, not the file's."""
    chunks = compression.chunks(raw, obj.compression, COPY_CHUNK)
    while True:
        try:
            chunk = next(chunks, None)
        except FerryError:
            raise
        except Exception as exc:  # EOFError, zlib.error, lz4's RuntimeError, zstandard.ZstdError
            reason = "it is cut short" if isinstance(exc, EOFError) else f"its data is damaged ({exc})"
            raise WalArchiveError(f"cannot decompress {where}: {reason}", _DAMAGED) from None
        if chunk is None:
            return
        yield chunk


def read_text(store: BackupStore, obj: WalObject, limit: int = 1024 * 1024) -> str:
    """A small WAL file (a timeline history), decompressed, as text."""
    where = f"'{obj.key}' in store '{store.url}'"
    reader = store.open(obj.key)
    try:
        data = bytearray()
        for chunk in _decompressed(compression.Sequential(reader), obj, where):
            data += chunk
            if len(data) > limit:
                raise WalArchiveError(f"{where} is larger than {limit} bytes: not a history file", _DAMAGED)
    finally:
        reader.close()
    return data.decode("utf-8", "replace")


def temp_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.ferry-tmp")


def fetch_to(store: BackupStore, obj: WalObject, dest: Path, *, owner: tuple[int, int] | None = None) -> int:
    """Put `obj`'s content at `dest` through a temp name (PostgreSQL never sees half a file); its size."""
    tmp = temp_beside(dest)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            size = copy_into(store, obj, fd)
            if owner is not None:
                os.fchown(fd, *owner)
        finally:
            os.close(fd)
        os.rename(tmp, dest)
        return size
    except OSError as exc:
        raise WalArchiveError(
            f"cannot write '{dest}' from '{obj.key}': {exc.strerror}", "check free space in the target folder"
        ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def locate(store: BackupStore, name: str, index_file: Path | None = None) -> WalObject | None:
    """Where `name` is in `store`, for a caller without a running index (`ferry wal-fetch`): from the index
    the prefetcher saved and the folders that hold WAL; without a saved index, from a listing of the whole
    store when the usual folders do not have it (slow on a large store: a prefetcher keeps its index)."""
    index = WalIndex(store)
    saved = index_file is not None and index.load(index_file)
    found = index.find(name)
    if found is None and not saved:
        index.refresh()
        found = index.get(name)
    return found
