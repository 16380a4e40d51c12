"""The WAL archive at run time: what `archive_command` and `restore_command` run.

Store layout: `ferry wal-push` puts every WAL file PostgreSQL archives at `STORE/wal/<its file name>`, name
unchanged: segments (`000000010000000A000000FF`), timeline histories (`00000002.history`), backup labels
(`...00000028.backup`) and partial segments (`....partial`). Nothing depends on that layout: restores find
each file by name wherever another archive_command put it, compressed or not (walstore.WalIndex).

Restore path, fastest first (see `restore_command`):

1. the spool: `Prefetcher` (prefetch.py), a thread of the process driving the migration, keeps the next
   segments after the target's replay position in `ROOT/spool`, already fetched; the shell moves one into
   place with `mv` (a rename: same file system as PGDATA) without starting Python;
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
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ferry.core.errors import StoreError, UsageError
from ferry.engines.postgres.fileops import copy_range, fsync_dir
from ferry.engines.postgres.prefetch import (
    _PARTIAL_REASON,
    ABSENT_DIR,
    IDLE_POLL_SECONDS,
    INDEX_FILE,
    OWNER_FILE,
    SHOW_ARRIVED,
    SHOW_RESTORED,
    SHOW_SKIPPED,
    Prefetcher,
    PrefetchStats,
    WalFileStatus,
)
from ferry.engines.postgres.walstore import (
    DEFAULT_FOLDER,
    WAL_FILE,
    WalArchiveError,
    fetch_to,
    has_segment_size,
    is_segment_size,
    locate,
    temp_beside,
)
from ferry.stores.base import WritableStore
from ferry.stores.errors import ObjectConflict
from ferry.stores.location import StoreKind, parse_location
from ferry.stores.registry import open_store

# The prefetcher and the spool's layout live in prefetch.py; these names stay importable from here.
__all__ = [
    "ABSENT_DIR",
    "IDLE_POLL_SECONDS",
    "INDEX_FILE",
    "OWNER_FILE",
    "SHOW_ARRIVED",
    "SHOW_RESTORED",
    "SHOW_SKIPPED",
    "WAL_PREFIX",
    "_PARTIAL_REASON",
    "PrefetchStats",
    "Prefetcher",
    "PushResult",
    "WalArchiveError",
    "WalConflict",
    "WalFileStatus",
    "check_wal_name",
    "conf_quote",
    "ferry_command",
    "fsync_dir",
    "is_segment_size",
    "restore_command",
    "wal_fetch",
    "wal_push",
]

WAL_PREFIX = DEFAULT_FOLDER + "/"  # where `ferry wal-push` archives; readers find WAL wherever it is


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


# -- archive_command ------------------------------------------------------------------------------


def wal_push(segment_path: Path, store_location: str) -> PushResult:
    """Archive one WAL file (`archive_command = 'ferry wal-push %p STORE'`) to `STORE/wal/<name>`, in any
    store Ferry can write: a local folder or share, Azure Blob, SMB, S3.

    Through the store's `put_new`: atomic (readers see the whole file or nothing) and never over another
    file, even against a concurrent push; durable before it returns. If the name exists with the same
    content, succeed: PostgreSQL re-runs archive_command for a file after a crash even when the previous
    run finished. Different content raises WalConflict.
    """
    started = time.monotonic()
    segment_path = Path(segment_path)
    name = check_wal_name(segment_path.name)
    location = parse_location(store_location)
    if location.kind is StoreKind.LOCAL and not Path(location.path).is_dir():
        # Never create a local store's root: an unmounted share would silently fill the local disk.
        raise StoreError(
            f"WAL store '{location.display}' does not exist or is not a folder",
            "create it (or mount the share) and give PostgreSQL's OS user write access",
        )
    store = open_store(location)
    if not isinstance(store, WritableStore):
        raise UsageError(f"store '{store.url}' cannot be written", "archive into a store Ferry can write")
    try:
        source = open(segment_path, "rb")  # noqa: SIM115 (closed by the `with` below)
    except OSError as exc:
        raise WalArchiveError(
            f"cannot read WAL file '{segment_path}': {exc.strerror}",
            "archive_command runs in the data directory and must be given %p",
        ) from None
    with source:
        size = os.fstat(source.fileno()).st_size
        if has_segment_size(name) and not is_segment_size(size):
            raise WalArchiveError(
                f"WAL segment '{segment_path}' has {size} bytes, not a segment size",
                "segments are a power of two between 1 MiB and 1 GiB; the file may be damaged",
            )
        try:
            result = store.put_new(WAL_PREFIX + name, source)
        except ObjectConflict:
            raise WalConflict(segment_path, WAL_PREFIX + name) from None
    if result.size != size:
        raise WalArchiveError(
            f"archiving '{segment_path}' wrote {result.size} of its {size} bytes",
            "the file changed while it was archived, or the store is full; PostgreSQL retries the file",
        )
    return PushResult(name, result.key, size, result.already_present, time.monotonic() - started)


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
            if copy_range(src.fileno(), dst.fileno(), size, 0, 0) != size:
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
