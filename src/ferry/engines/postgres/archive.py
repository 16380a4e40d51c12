"""The WAL archive at run time: what `archive_command` and `restore_command` run, and the prefetch spool.

Store layout: `ferry wal-push` puts every WAL file PostgreSQL archives at `STORE/wal/<its file name>`, name
unchanged: segments (`000000010000000A000000FF`), timeline histories (`00000002.history`), backup labels
(`...00000028.backup`) and partial segments (`....partial`). Nothing depends on that layout: restores find
each file by name wherever another archive_command put it, compressed or not (walstore.WalIndex).

Restore path, fastest first (see `restore_command`):

1. the spool: `Prefetcher`, a thread of the foreground `ferry migrate`, keeps the next segments after the
   target's replay position in `ROOT/spool`, already fetched; the shell moves one into place with `mv`
   (a rename: same file system as PGDATA) without starting Python;
2. an "absent" marker: while a standby waits for WAL that is not archived yet, PostgreSQL asks for it every
   `wal_retrieve_retry_interval`; the prefetcher, which watches the store anyway, leaves a marker for the
   names it knows are missing so the shell answers "not found" without starting Python either;
3. `ferry wal-fetch`: everything else (a spool miss, no prefetcher running) copies from the store, at the
   key the prefetcher's index (`spool/.index/wal.json`) gives.

Only this module's imports are needed by `wal_push`/`wal_fetch`: stdlib and Ferry's core and stores, so the
commands start fast and run under any Python that can import Ferry.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shlex
import sys
import threading
import time
import uuid
from array import array
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from urllib.parse import unquote, urlparse

from ferry.core.errors import FerryError, ObjectNotFound, StoreError, UsageError
from ferry.engines.postgres.cluster import OsUser
from ferry.engines.postgres.wal import (
    DEFAULT_SEGMENT_SIZE,
    SegmentName,
    format_lsn,
    parse_lsn,
    parse_segment_name,
)
from ferry.engines.postgres.walstore import (
    COPY_CHUNK,
    DEFAULT_FOLDER,
    WAL_FILE,
    WalArchiveError,
    WalIndex,
    fetch_to,
    has_segment_size,
    is_segment_size,
    locate,
    read_text,
    temp_beside,
)
from ferry.stores.base import BackupStore
from ferry.stores.registry import open_store

WAL_PREFIX = DEFAULT_FOLDER + "/"  # where `ferry wal-push` archives; readers find WAL wherever it is
INDEX_FILE = ".index/wal.json"  # in the spool: the prefetcher's WalIndex, for `ferry wal-fetch`
ABSENT_DIR = ".absent"
IDLE_POLL_SECONDS = 2.0  # the longest a prefetcher waits between rounds while nothing moves
OWNER_FILE = ".owner"
# The per-file view of the WAL in the store (PrefetchStats.files) shows at most this many files of each
# status; PrefetchStats.counts counts them all.
SHOW_RESTORED = 10  # the newest ones
SHOW_ARRIVED = 50  # the next ones replay reads
SHOW_SKIPPED = 20  # the newest ones
_PARTIAL_REASON = (
    "a .partial segment (left when a timeline ended): PostgreSQL never restores it; the next timeline's "
    "copy of this segment holds its WAL"
)

_BACKUP_HISTORY = re.compile(r"^([0-9A-F]{24})\.([0-9A-F]{8})\.backup$")  # start segment, offset in it


class WalConflict(WalArchiveError):
    """The store already holds a different file under the name being archived."""

    def __init__(self, source: Path, stored: str) -> None:
        super().__init__(
            f"cannot archive '{source}': the store already holds a different '{stored}'",
            "two servers may be archiving into the same store (each source needs its own store), or the "
            "file in the store is damaged; compare both files, then move the wrong one aside. Ferry never "
            "overwrites archived WAL",
        )
        self.source = source
        self.stored = stored


@dataclass(frozen=True)
class PushResult:
    name: str
    key: str
    size: int
    already_present: bool
    seconds: float


# -- names and locations --------------------------------------------------------------------------


def check_wal_name(name: str) -> str:
    """`name` if it is a WAL file name PostgreSQL archives or asks for; UsageError otherwise. Names also
    become paths, so this is what keeps `..` or `/` out of the store and the spool."""
    if not WAL_FILE.match(name):
        raise UsageError(
            f"'{name}' is not a WAL file name (a 24-hex-digit segment, .partial, .backup or .history)",
            "archive_command must pass %p and restore_command %f; check the command in postgresql.conf",
        )
    return name


def local_store_root(store_location: str) -> Path:
    """The folder of a local store (a path or file:// URL). Other stores cannot be written by this Ferry."""
    parsed = urlparse(store_location)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and store_location[1:2] == ":"):
        return Path(store_location)
    raise UsageError(
        f"cannot archive WAL into '{store_location}': only local folders (a path or file:// URL) are "
        "writable by this Ferry",
        "archive to a local folder or a mounted share; object stores come in a later release",
    )


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_fd(src: int, dst: int, size: int) -> int:
    """Copy `size` bytes between two files in the kernel where it can (copy_file_range, no user-space
    buffer; a reflink on file systems that have them), else by reads and writes. Returns bytes copied."""
    done = 0
    use_kernel = hasattr(os, "copy_file_range")
    while done < size:
        if use_kernel:
            try:
                n = os.copy_file_range(src, dst, min(size - done, 1 << 30), done, done)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                use_kernel = False
                continue
        else:
            data = os.pread(src, min(size - done, COPY_CHUNK), done)
            n = os.pwrite(dst, data, done) if data else 0
        if n == 0:
            break  # the source shrank under us: the caller's size check reports it
        done += n
    return done


def _same_content(a: Path, b: Path) -> bool:
    try:
        with open(a, "rb") as fa, open(b, "rb") as fb:
            if os.fstat(fa.fileno()).st_size != os.fstat(fb.fileno()).st_size:
                return False
            while True:
                x, y = fa.read(COPY_CHUNK), fb.read(COPY_CHUNK)
                if x != y:
                    return False
                if not x:
                    return True
    except OSError as exc:
        raise WalArchiveError(
            f"cannot compare '{a}' with '{b}': {exc.strerror}", "check that both files are readable"
        ) from None


# -- archive_command ------------------------------------------------------------------------------


def wal_push(segment_path: Path, store_location: str) -> PushResult:
    """Archive one WAL file (`archive_command = 'ferry wal-push %p STORE'`) to `STORE/wal/<name>`.

    Atomic and durable before it returns: a temp file in the same folder, fsync, a hard link to the final
    name (which fails if the name exists, so a file is never overwritten even by a concurrent push), fsync
    of the folder. If the name exists with the same content, succeed: PostgreSQL re-runs archive_command
    for a file after a crash even when the previous run finished. Different content raises WalConflict.
    """
    started = time.monotonic()
    segment_path = Path(segment_path)
    name = check_wal_name(segment_path.name)
    root = local_store_root(store_location)
    if not root.is_dir():
        # Never create the store root itself: an unmounted share would silently fill the local disk.
        raise StoreError(
            f"WAL store '{store_location}' does not exist or is not a folder",
            "create it (or mount the share) and give PostgreSQL's OS user write access",
        )
    folder = root / WAL_PREFIX.rstrip("/")
    try:
        folder.mkdir(mode=0o750, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create '{folder}': {exc.strerror}",
            "give PostgreSQL's OS user write access to the store",
        ) from None
    final = folder / name
    try:
        src = os.open(segment_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise WalArchiveError(
            f"cannot read WAL file '{segment_path}': {exc.strerror}",
            "archive_command runs in the data directory and must be given %p",
        ) from None
    tmp = folder / f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        size = os.fstat(src).st_size
        if has_segment_size(name) and not is_segment_size(size):
            raise WalArchiveError(
                f"WAL segment '{segment_path}' has {size} bytes, not a segment size",
                "segments are a power of two between 1 MiB and 1 GiB; the file may be damaged",
            )
        dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        try:
            copied = _copy_fd(src, dst, size)
            os.fsync(dst)
            written = os.fstat(dst).st_size
        finally:
            os.close(dst)
        if copied != size or written != size:
            raise WalArchiveError(
                f"archiving '{segment_path}' wrote {written} of its {size} bytes",
                "the store's disk may be full; PostgreSQL retries the file",
            )
        present = _publish(tmp, final, segment_path)
        if not present:
            fsync_dir(folder)
    except OSError as exc:
        raise WalArchiveError(
            f"cannot archive '{segment_path}' into '{folder}': {exc.strerror}",
            "check free space and that PostgreSQL's OS user may write to the store",
        ) from None
    finally:
        os.close(src)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return PushResult(name, WAL_PREFIX + name, size, present, time.monotonic() - started)


def _publish(tmp: Path, final: Path, source: Path) -> bool:
    """Give `tmp` its final name without overwriting. True when the same content was already there."""
    try:
        os.link(tmp, final)
        return False
    except FileExistsError:
        pass
    except OSError as exc:
        # Some shares cannot hard-link: check-then-rename leaves a tiny race, acceptable there.
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
        if not final.exists():
            os.rename(tmp, final)
            return False
    if _same_content(tmp, final):
        return True
    raise WalConflict(source, f"{WAL_PREFIX}{final.name}")


# -- restore_command ------------------------------------------------------------------------------


def wal_fetch(name: str, dest: Path, store_location: str, spool: Path | None = None) -> bool:
    """Put WAL file `name` at `dest` (`restore_command`'s %f and %p). False when the store does not have
    it: PostgreSQL then retries (standby) or ends recovery. Raises on real errors (store unreachable,
    damaged file), which must not look like the end of the archive.

    From the spool when the prefetcher put it there: a rename, no copy, when spool and PGDATA share a file
    system. Else from the key the store holds it at (walstore.locate: the prefetcher's index, the folders
    that hold WAL, a listing), decompressed if another tool compressed it, through a temp name beside
    `dest`, so PostgreSQL never sees half a file. No fsync: a restored file is re-fetched after a crash.
    """
    check_wal_name(name)
    dest = Path(dest)
    if spool is not None and _take_from_spool(Path(spool) / name, dest):
        return True
    store = open_store(store_location)
    found = locate(store, name, Path(spool) / INDEX_FILE if spool is not None else None)
    return found is not None and fetch_to(store, found, dest) >= 0


def _take_from_spool(path: Path, dest: Path) -> bool:
    try:
        os.rename(path, dest)
        return True
    except FileNotFoundError:
        return False  # not prefetched (or taken by a concurrent call): use the store
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise WalArchiveError(
                f"cannot move '{path}' to '{dest}': {exc.strerror}", "check the spool folder's owner"
            ) from None
    tmp = temp_beside(dest)
    try:
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            size = os.fstat(src.fileno()).st_size
            if _copy_fd(src.fileno(), dst.fileno(), size) != size:
                raise WalArchiveError(f"spool file '{path}' shrank while copied", "retry")
        os.rename(tmp, dest)
    except FileNotFoundError:
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return True


def ferry_command() -> list[str]:
    """The absolute command line of the running Ferry, for server-side commands: the `ferry` script beside
    this Python if installed there, else this Python with `-m ferry`. sys.executable is kept as is, not
    resolved: a virtualenv's python is a symlink whose own path selects the virtualenv."""
    exe = Path(os.path.abspath(sys.executable))
    script = exe.parent / "ferry"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [str(exe), "-m", "ferry"]


def _guc_literal(text: str) -> str:
    """A literal inside restore_command: `%` is PostgreSQL's placeholder character, so it is doubled."""
    return shlex.quote(text).replace("%", "%%")


def restore_command(
    store_location: str,
    spool: Path | None,
    *,
    fetch_command: Sequence[str] | None = None,
) -> str:
    """The value of restore_command (as `SHOW restore_command` prints it; quote it for the conf file
    with `conf_quote`). Placeholders %f/%p are left for PostgreSQL; literal `%` are doubled.

    With a spool the common cases run no Python (which costs 100-300 ms per call, more than replaying a
    segment): `mv` from the spool, or "not found" from a fresh absent marker. A marker is trusted only
    while the prefetcher that wrote it is alive (its pid in `.absent/.owner`), and for a segment only in
    standby mode: in one-shot recovery (recovery.signal) "not found" ends recovery, so there only the store
    answers. History files are answered from markers in any mode (promotion asks for them).
    `fetch_command` is Ferry's command line (default: the running Ferry); `wal-fetch` is appended.
    """
    base = list(fetch_command) if fetch_command is not None else [*ferry_command(), "wal-fetch"]
    fetch = " ".join(_guc_literal(a) for a in base)
    fetch += f" '%f' '%p' --store {_guc_literal(store_location)}"
    if spool is None:
        return f"exec {fetch}"
    s = _guc_literal(str(spool))
    fetch += f" --spool {s}"
    absent = f"{s}/{ABSENT_DIR}"
    # A history file's absence is safe to take from a marker in any mode (at promotion PostgreSQL looks
    # for the parent's and the next timelines' histories after leaving standby mode); a segment's only in
    # standby mode.
    standby_or_history = "{ test -f standby.signal || case '%f' in *.history) true;; *) false;; esac; }"
    marker = (
        f"{standby_or_history} && test -f {absent}/'%f' && "
        f'{{ read p < {absent}/{OWNER_FILE}; }} 2>/dev/null && test -d "/proc/${{p:-none}}" && exit 1'
    )
    return f"test -f {s}/'%f' && mv -f {s}/'%f' '%p' || {{ {marker}; exec {fetch}; }}"


def conf_quote(value: str) -> str:
    """`value` as a quoted postgresql.conf string: quotes and backslashes doubled (as ALTER SYSTEM does)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


# -- timelines ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryEntry:
    """One line of a `.history` file: `timeline` ended (and its child began) at `end_lsn`."""

    timeline: int
    end_lsn: int


def parse_history(text: str) -> tuple[HistoryEntry, ...]:
    """The ancestry recorded in `<tli>.history`, oldest first: `parentTLI<TAB>switchpoint<TAB>reason`."""
    entries: list[HistoryEntry] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        try:
            entries.append(HistoryEntry(int(fields[0]), parse_lsn(fields[1])))
        except (ValueError, IndexError):
            raise WalArchiveError(
                f"timeline history line '{line}' is not 'timeline switchpoint reason'",
                "the .history file is damaged; restore it from the source's pg_wal",
            ) from None
    return tuple(entries)


@dataclass(frozen=True)
class TimelineChain:
    """The timelines recovery follows to reach `target`: (timeline, begin LSN), newest first."""

    target: int
    spans: tuple[tuple[int, int], ...]

    @staticmethod
    def of(target: int, history: Sequence[HistoryEntry]) -> TimelineChain:
        spans: list[tuple[int, int]] = []
        begin = 0
        for entry in history:
            spans.append((entry.timeline, begin))
            begin = entry.end_lsn
        spans.append((target, begin))
        return TimelineChain(target, tuple(reversed(spans)))

    def candidates(self, segno: int, segment_size: int) -> list[int]:
        """Timelines PostgreSQL tries for segment `segno`, in its order: newest first, skipping timelines
        that begin after the segment (XLogFileReadAnyTLI)."""
        return [tli for tli, begin in self.spans if begin // segment_size <= segno]

    def timelines(self) -> frozenset[int]:
        return frozenset(tli for tli, _ in self.spans)


# -- prefetch -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WalFileStatus:
    """One WAL segment in the store, as the migration's status shows it. `status`: `arrived` (not replayed
    yet), `restoring` (holds the replay position), `restored` (replay is past it) or `skipped` (replay
    never reads it, `reason` says why)."""

    name: str
    status: str
    reason: str | None
    size: int


def _in_wal_order(entry: tuple[int, int, WalFileStatus]) -> tuple[int, int, str]:
    """By segment number, then timeline, then name (a segment before its .partial)."""
    return entry[0], entry[1], entry[2].name


@dataclass(frozen=True, eq=False)
class _Listing:
    """The WAL segments of one listing of the store, indexed so that `stats()` classifies them against
    the latest replay position in O(log n): the segments replay reads (one per segment number, on the
    restore path), sorted by number, and the newest of those it never reads."""

    segnos: array[int]
    timelines: array[int]
    sizes: array[int]
    skipped: tuple[tuple[int, int, WalFileStatus], ...]  # (segno, timeline, file): newest SHOW_SKIPPED
    skipped_count: int
    backups: array[int]  # start LSNs of the base backups on the restore path (backup history files), sorted


@dataclass(frozen=True)
class PrefetchStats:
    running: bool
    timeline: int
    replay_lsn: int | None
    segments_fetched: int
    bytes_fetched: int
    fetch_seconds: float
    spool_files: int
    spool_bytes: int
    pending: int
    """Segments in the store beyond the replay position, on the restore path (the last listing's, against
    the position now)."""
    archive_end_lsn: int | None
    """End of the newest segment in the store on the followed timelines: lag = this - replay LSN."""
    missing_next: str | None
    """The next segment replay needs, when the store does not have it."""
    gap: bool
    """`missing_next` is missing while later segments exist: replay cannot pass it until it is archived."""
    errors: int
    last_error: str | None
    files: tuple[WalFileStatus, ...] = ()
    """WAL segments in the store and their status against the replay position, oldest first, bounded:
    the newest SHOW_SKIPPED skipped and SHOW_RESTORED restored, the restoring one, the next SHOW_ARRIVED
    arrived. From the last listing (`.history`, `.backup` and temp files are not segments: not shown)."""
    counts: dict[str, int] = field(default_factory=dict)
    """Segments of each status over the whole last listing (empty before the first listing)."""


class Prefetcher:
    """Keeps the spool filled with the next `depth` segments after the target's replay position.

    A daemon thread plans every `poll_interval` (or at once when `advance` moves the position); a small
    pool fetches in parallel so one object's latency does not bound replay. Timelines follow
    recovery_target_timeline = 'latest': newer `.history` files are probed as PostgreSQL does and a
    timeline is followed when it forks off at or after the replay position. The spool never holds more
    than `depth` segments (and `max_bytes`); a file is written to a temp name and renamed, owned by the
    server's OS user so that `mv` into pg_wal leaves a file the server may recycle.
    """

    def __init__(
        self,
        store_location: str,
        spool: Path,
        timeline: int,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        depth: int = 8,
        *,
        max_bytes: int | None = None,
        workers: int = 4,
        poll_interval: float = 0.25,
        list_interval: float = 5.0,
        owner: OsUser | None = None,
        absent_markers: bool = True,
        store: BackupStore | None = None,
    ) -> None:
        if not is_segment_size(segment_size):
            raise UsageError(f"WAL segment size {segment_size} is not a power of two from 1 MiB to 1 GiB")
        self.store = store if store is not None else open_store(store_location)
        self.wal_index = WalIndex(self.store)
        self.spool = Path(spool)
        self.segment_size = segment_size
        cap = depth if max_bytes is None else min(depth, max_bytes // segment_size)
        self.depth = max(1, cap)
        self.owner = owner
        self.poll_interval = poll_interval
        self.list_interval = list_interval
        self.absent_markers = absent_markers
        self._workers = max(1, workers)
        self._chain = TimelineChain(timeline, ((timeline, 0),))
        self._rejected: set[int] = set()
        self._ancestry_known = False
        self._rounds = 0  # rounds finished by the thread (prime waits for one)
        self._round_done = threading.Condition()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._inflight: dict[str, Future[None]] = {}
        self._delivered: set[str] = set()
        self._replay: int | None = None
        self._last_listing = -1e9
        self._fetched = self._bytes = self._errors = 0
        self._fetch_seconds = 0.0
        self._last_error: str | None = None
        self._archive_end: int | None = None
        self._missing: str | None = None
        self._start: int | None = None  # the lowest replay position seen: replay started there or before
        self._listing: _Listing | None = None
        self._view: tuple[_Listing, tuple[int, ...], tuple[WalFileStatus, ...], dict[str, int]] | None = None

    # -- control ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Clear the spool (files there may be from a crash: a cache is rebuilt, never trusted) and run."""
        if self._thread is not None:
            return
        self.spool.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.owner is not None:
            os.chown(self.spool, self.owner.uid, self.owner.gid)
        for entry in os.scandir(self.spool):
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
        absent = self.spool / ABSENT_DIR
        absent.mkdir(mode=0o755, exist_ok=True)
        for entry in os.scandir(absent):
            os.unlink(entry.path)
        if self.absent_markers:
            _write_small(absent / OWNER_FILE, f"{os.getpid()}\n")
        self._stop.clear()
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="ferry-wal-fetch")
        self._thread = threading.Thread(target=self._run, name="ferry-wal-prefetch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop fetching and drop the absent markers: without a prefetcher only the store may say "absent"."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._inflight.clear()
        absent = self.spool / ABSENT_DIR
        if absent.is_dir():
            for entry in os.scandir(absent):
                os.unlink(entry.path)

    def __enter__(self) -> Prefetcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def prime(self, replay_lsn: int, timeout: float = 3.0) -> None:
        """`advance`, then wait (up to `timeout`) for a round that saw the position and for the fetch of
        the segment that holds it (not the whole window): a server started next finds its first segment in
        the spool and the absent markers written."""
        with self._round_done:
            rounds = self._rounds
        self.advance(replay_lsn)
        first = replay_lsn // self.segment_size
        deadline = time.monotonic() + timeout
        while self._thread is not None and time.monotonic() < deadline:
            with self._round_done:
                self._round_done.wait(0.02)
                seen = self._rounds > rounds
            pending = [f for n, f in list(self._inflight.items()) if self._segno(n) == first]
            if seen and all(f.done() for f in pending):
                return

    def advance(self, replay_lsn: int) -> None:
        """The target's replay position (pg_last_wal_replay_lsn, or the backup's start before the server
        is consistent). Moving back (the server restarted from an earlier restartpoint) starts over."""
        with self._lock:
            if self._replay is not None and replay_lsn < self._replay:
                self._delivered.clear()
            self._replay = replay_lsn
            self._start = replay_lsn if self._start is None else min(self._start, replay_lsn)
        self._wake.set()

    def stats(self) -> PrefetchStats:
        files, size = self._spool_contents()
        wal_files, counts = self._file_view()
        with self._lock:
            return PrefetchStats(
                running=self._thread is not None and self._thread.is_alive(),
                timeline=self._chain.target,
                replay_lsn=self._replay,
                segments_fetched=self._fetched,
                bytes_fetched=self._bytes,
                fetch_seconds=self._fetch_seconds,
                spool_files=len(files),
                spool_bytes=size,
                # From the last listing, against the replay position now (not the one at the listing):
                # a target that just replayed the last segment is seen caught up at once.
                pending=counts.get("arrived", 0),
                archive_end_lsn=self._archive_end,
                missing_next=self._missing,
                gap=self._missing is not None
                and self._archive_end is not None
                and self._archive_end > (self._missing_segno() + 1) * self.segment_size,
                errors=self._errors,
                last_error=self._last_error,
                files=wal_files,
                counts=counts,
            )

    def _file_view(self) -> tuple[tuple[WalFileStatus, ...], dict[str, int]]:
        """The last listing's segments classified against the latest replay position: bisections and the
        shown files only, so it costs the same for 100 segments as for 100,000 (and is cached).

        Replay started at the base backup's start: segments before it are skipped. The first position
        seen can be well past it (the server replays from the store before the prefetcher runs, or this is
        a resumed replay), so the start is the newest base backup on the restore path that began at or
        before that position, from its backup history file (`<segment>.<offset>.backup`, archived by
        every base backup); the first position itself when the store holds none."""
        with self._lock:
            listing, replay, start, view = self._listing, self._replay, self._start, self._view
        if listing is None or replay is None:
            return (), {}
        segnos, seg = listing.segnos, self.segment_size
        start = start if start is not None else 0
        began = bisect_right(listing.backups, start)
        if began:
            start = listing.backups[began - 1]
        first = bisect_left(segnos, start // seg)
        current = max(first, bisect_left(segnos, replay // seg))
        after = max(current, bisect_right(segnos, replay // seg))
        key = (first, current, after)
        if view is not None and view[0] is listing and view[1] == key:
            return view[2], dict(view[3])

        def chosen(i: int, status: str, reason: str | None = None) -> tuple[int, int, WalFileStatus]:
            tli, segno = listing.timelines[i], segnos[i]
            name = SegmentName(tli, segno).name(seg)
            return segno, tli, WalFileStatus(name, status, reason, listing.sizes[i])

        before = "before the replay start (its changes are in the base backup)"
        shown = sorted(
            [
                *listing.skipped,
                *(chosen(i, "skipped", before) for i in range(max(0, first - SHOW_SKIPPED), first)),
            ],
            key=_in_wal_order,
        )[-SHOW_SKIPPED:]
        shown += [chosen(i, "restored") for i in range(max(first, current - SHOW_RESTORED), current)]
        shown += [chosen(i, "restoring") for i in range(current, after)]
        shown += [chosen(i, "arrived") for i in range(after, min(len(segnos), after + SHOW_ARRIVED))]
        shown.sort(key=_in_wal_order)
        files = tuple(entry[2] for entry in shown)
        counts = {
            "skipped": listing.skipped_count + first,
            "restored": current - first,
            "restoring": after - current,
            "arrived": len(segnos) - after,
        }
        with self._lock:
            self._view = (listing, key, files, counts)
        return files, dict(counts)

    def _missing_segno(self) -> int:
        parsed = parse_segment_name(self._missing or "", self.segment_size)
        return parsed.segno if parsed else 0

    # -- the loop ---------------------------------------------------------------------------------

    def _run(self) -> None:
        pause = self.poll_interval
        while not self._stop.is_set():
            before = (self._replay, self._fetched)
            try:
                self.poll()
            except (FerryError, OSError) as exc:
                # A store that is briefly unreachable must not end the migration: the error is in stats()
                # for the orchestrator to show or act on, and the next round tries again.
                with self._lock:
                    self._errors += 1
                    self._last_error = str(exc)
            # A round that moved nothing (replay waits for a segment the store does not have yet) makes
            # the next one wait twice as long, up to IDLE_POLL_SECONDS: each round asks the store about the
            # next segment, and hundreds of caught-up migrations must not hammer an S3 bucket. A new
            # replay position (advance) wakes the loop at once and starts over from poll_interval.
            with self._round_done:
                self._rounds += 1
                self._round_done.notify_all()
            idle = not self._inflight and before == (self._replay, self._fetched)
            pause = min(max(pause * 2, self.poll_interval), IDLE_POLL_SECONDS) if idle else self.poll_interval
            if self._wake.wait(pause):
                pause = self.poll_interval
            self._wake.clear()

    def poll(self) -> None:
        """One round: follow timelines, drop spool files replay is past, fetch what is missing, mark what
        the store does not have. Runs in the thread; tests call it directly."""
        self._harvest()
        # Before the plan: WAL may be anywhere in the store, so the index must be fresh.
        listed = not self.wal_index.listed or time.monotonic() - self._last_listing >= self.list_interval
        if listed:
            self._refresh()
        with self._lock:
            replay = self._replay
        if replay is None:
            return
        no_history = self._follow_timelines(replay)
        current = replay // self.segment_size
        chain = self._chain
        with self._lock:
            self._delivered = {n for n in self._delivered if self._segno(n) >= current}
            delivered = set(self._delivered)
        spool_files = self._drop_stale(current, chain)
        wanted: set[str] = set()
        absent: set[str] = {f"{no_history:08X}.history"}
        if 1 in chain.timelines():
            absent.add(f"{1:08X}.history")  # timeline 1 has no history: asked for at promotion
        missing: str | None = None
        for segno in range(current, current + self.depth):
            names = [
                SegmentName(t, segno).name(self.segment_size)
                for t in chain.candidates(segno, self.segment_size)
            ]
            held = next((n for n in names if n in spool_files or n in self._inflight), None)
            if held is not None:
                wanted.add(held)
                continue
            if any(n in delivered for n in names):
                continue  # placed in the spool and already taken by the server
            found = next((n for n in names if self._exists(n)), None)
            if found is None:
                absent.update(names)
                missing = names[0] if names else None
                break  # replay cannot pass a missing segment: fetching beyond it only takes room
            absent.update(names[: names.index(found)])  # newer timelines PostgreSQL tries first
            wanted.add(found)
            self._submit(found)
        # Files of a timeline no longer followed (or a plan that moved on) only take room.
        for name in spool_files - wanted:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.spool / name)
        with self._lock:
            new_missing = missing != self._missing
            self._missing = missing
        if self.absent_markers:
            self._mark_absent(absent)
        if new_missing:
            self._refresh()
        if listed or new_missing:
            self._list()

    def _drop_stale(self, current: int, chain: TimelineChain) -> set[str]:
        """Remove spool files replay is past or of timelines not followed; the names that remain."""
        names, _ = self._spool_contents()
        keep: set[str] = set()
        timelines = chain.timelines()
        for name in names:
            parsed = parse_segment_name(name, self.segment_size)
            if parsed is None or parsed.segno < current or parsed.timeline not in timelines:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.spool / name)
            else:
                keep.add(name)
        return keep

    def _segno(self, name: str) -> int:
        parsed = parse_segment_name(name, self.segment_size)
        return parsed.segno if parsed else -1

    def _exists(self, name: str) -> bool:
        return self.wal_index.find(name) is not None

    def _follow_timelines(self, replay: int) -> int:
        """Probe `<target+1>.history` upwards like PostgreSQL's findNewestTimeLine; switch to a newer
        timeline only if it forks off the followed one at or after the replay position (else PostgreSQL
        refuses it too and stays). Returns the first timeline without a history file."""
        self._load_ancestry()
        probe = self._chain.target + 1
        while True:
            if probe in self._rejected:
                probe += 1
                continue
            text = self._read_small(f"{probe:08X}.history")
            if text is None:
                return probe
            history = parse_history(text)
            fork = next((e for e in history if e.timeline == self._chain.target), None)
            if fork is not None and fork.end_lsn >= replay:
                with self._lock:
                    self._chain = TimelineChain.of(probe, history)
            else:
                self._rejected.add(probe)
            probe += 1

    def _load_ancestry(self) -> None:
        """The followed timeline's own history, once: when the source was promoted after its base backup,
        replay starts on an older timeline, and its segments are on the restore path too."""
        if self._ancestry_known:
            return
        target = self._chain.target
        if target > 1 and self._chain.spans == ((target, 0),):
            text = self._read_small(f"{target:08X}.history")
            if text is None:
                return  # not archived yet: asked again next round
            with self._lock:
                self._chain = TimelineChain.of(target, parse_history(text))
        self._ancestry_known = True

    def _read_small(self, name: str) -> str | None:
        obj = self.wal_index.find(name)
        if obj is None:
            return None
        try:
            return read_text(self.store, obj)
        except ObjectNotFound:
            return None  # removed since the listing

    def _submit(self, name: str) -> None:
        if self._pool is None:  # poll() called without start(): fetch inline (tests)
            self._fetch(name)
            return
        self._inflight[name] = self._pool.submit(self._fetch, name)

    def _harvest(self) -> None:
        for name, future in list(self._inflight.items()):
            if not future.done():
                continue
            del self._inflight[name]
            exc = future.exception()
            if exc is not None:
                with self._lock:
                    self._errors += 1
                    self._last_error = str(exc)

    def _fetch(self, name: str) -> None:
        started = time.monotonic()
        obj = self.wal_index.find(name)
        if obj is None:
            raise WalArchiveError(
                f"WAL file {name} is no longer in store '{self.store.url}'",
                "it was removed after it was listed; Ferry looks for it again",
            )
        with self._lock:
            self._delivered.add(name)  # before the rename: the server may take it at once
        try:
            owner = (self.owner.uid, self.owner.gid) if self.owner is not None else None
            size = fetch_to(self.store, obj, self.spool / name, owner=owner)
        except BaseException as exc:
            with self._lock:
                self._delivered.discard(name)
            if isinstance(exc, ObjectNotFound):
                self.wal_index.forget(name)  # removed since the listing: the next round looks again
            raise
        with self._lock:
            self._fetched += 1
            self._bytes += size
            self._fetch_seconds += time.monotonic() - started

    def _mark_absent(self, names: set[str]) -> None:
        folder = self.spool / ABSENT_DIR
        have = {e.name for e in os.scandir(folder) if e.name != OWNER_FILE}
        for name in have - names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(folder / name)
        for name in names - have:
            _write_small(folder / name, "")

    def _refresh(self) -> None:
        """List the store: the index of where each WAL file is (saved for `ferry wal-fetch` when this
        prefetcher answers for the store)."""
        self.wal_index.refresh()
        self._last_listing = time.monotonic()
        if self.absent_markers:
            (self.spool / INDEX_FILE).parent.mkdir(mode=0o755, exist_ok=True)
            self.wal_index.save(self.spool / INDEX_FILE)

    def _list(self) -> None:
        """The archive's end on the followed timelines, and every segment's place on the restore path (for
        `stats()`: its files, counts and pending segments), from one listing (less often than the planning
        rounds: a listing of a long archive is the expensive call on any store)."""
        chain = self._chain
        timelines = chain.timelines()
        end: int | None = None
        segments: list[tuple[int, int, int]] = []  # (segno, timeline, size), every timeline
        partials: list[tuple[int, int, WalFileStatus]] = []
        backups: list[int] = []
        for info in self.wal_index.objects():
            name = info.name
            parsed = parse_segment_name(name, self.segment_size)
            if parsed is None:
                label = _BACKUP_HISTORY.match(name)
                began = parse_segment_name(label.group(1), self.segment_size) if label else None
                if label and began and began.timeline in timelines:
                    backups.append(began.start_lsn(self.segment_size) + int(label.group(2), 16))
                base = name.removesuffix(".partial")
                partial = parse_segment_name(base, self.segment_size) if base != name else None
                if partial is not None:
                    file = WalFileStatus(name, "skipped", _PARTIAL_REASON, info.size)
                    partials.append((partial.segno, partial.timeline, file))
                continue
            segments.append((parsed.segno, parsed.timeline, info.size))
            if parsed.timeline not in timelines:
                continue
            seg_end = parsed.end_lsn(self.segment_size)
            end = seg_end if end is None else max(end, seg_end)
        listing = self._index(segments, partials, chain, backups)
        with self._lock:
            self._archive_end, self._listing = end, listing

    def _index(
        self,
        segments: list[tuple[int, int, int]],
        partials: list[tuple[int, int, WalFileStatus]],
        chain: TimelineChain,
        backups: list[int],
    ) -> _Listing:
        """Which copy of each segment number replay reads: the first of `chain.candidates` in the store,
        unless its timeline ended before the segment (PostgreSQL rejects such a copy as out of sequence).
        Every other copy is skipped, with the reason."""
        seg = self.segment_size
        begins = dict(chain.spans)
        ends: dict[int, tuple[int, int]] = {}  # timeline: (where it ends, the timeline that goes on)
        for (newer, begin), (older, _) in zip(chain.spans, chain.spans[1:], strict=False):
            ends[older] = (begin, newer)
        path = ", ".join(str(t) for t, _ in reversed(chain.spans))
        path = f"timelines {path}" if len(chain.spans) > 1 else f"timeline {path}"

        def ended(tli: int, segno: int) -> bool:
            return tli in ends and segno > ends[tli][0] // seg

        def reason(tli: int, segno: int, pick: int | None) -> str:
            if tli not in begins:
                return f"on timeline {tli}, which is not on the restore path ({path})"
            if segno < begins[tli] // seg:
                return f"before timeline {tli} begins (at {format_lsn(begins[tli])})"
            if ended(tli, segno):
                at, newer = ends[tli]
                return f"after timeline {tli} ends at {format_lsn(at)}; replay continues on timeline {newer}"
            assert pick is not None
            copy = SegmentName(pick, segno).name(seg)
            return f"superseded by {copy}, timeline {pick}'s copy of this segment"

        segnos, tlis, sizes = array("q"), array("q"), array("q")
        skipped: deque[tuple[int, int, WalFileStatus]] = deque(maxlen=SHOW_SKIPPED)
        count = len(partials)
        segments.sort()
        for segno, group in groupby(segments, key=itemgetter(0)):
            copies = list(group)
            present = {tli for _, tli, _ in copies}
            pick = next(
                (t for t in chain.candidates(segno, seg) if t in present and not ended(t, segno)), None
            )
            for _, tli, size in copies:
                if tli == pick:
                    segnos.append(segno)
                    tlis.append(tli)
                    sizes.append(size)
                    continue
                count += 1
                name = SegmentName(tli, segno).name(seg)
                skipped.append((segno, tli, WalFileStatus(name, "skipped", reason(tli, segno, pick), size)))
        newest = sorted([*skipped, *partials], key=_in_wal_order)[-SHOW_SKIPPED:]
        return _Listing(segnos, tlis, sizes, tuple(newest), count, array("q", sorted(backups)))

    def _spool_contents(self) -> tuple[set[str], int]:
        names: set[str] = set()
        size = 0
        try:
            with os.scandir(self.spool) as entries:
                for e in entries:
                    if e.name.startswith(".") or not e.is_file(follow_symlinks=False):
                        continue
                    names.add(e.name)
                    with contextlib.suppress(FileNotFoundError):
                        size += e.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            pass
        return names, size


def _write_small(path: Path, text: str) -> None:
    """Markers are read by the server's OS user: world-readable, written whole by a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.rename(tmp, path)
