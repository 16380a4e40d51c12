"""Local file operations the PostgreSQL engine shares: whole-file writes through a temp name, kernel copies,
and making renames and new files durable.

A file another process reads (a data directory's configuration, the target record, the spool's markers)
is written to a temp name beside it and renamed over, so a reader sees the old file or the new one, never
half of one. Durable writes add an fsync of the file; an fsync of the folder (`fsync_dir`) makes the
rename itself survive a crash. Many files written at once (a base backup) are made durable by one
`syncfs` of their file system instead of an fsync each.

Only stdlib: `ferry wal-push` and `wal-fetch` import this and must start fast.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

_FALLBACK_CHUNK = 4 * 1024 * 1024
_KERNEL_STEP = 1 << 30  # copy_file_range moves at most this much per call (Linux caps a call at ~2 GiB)
# copy_file_range refuses these combinations (other file systems, old kernels, special files): copy by
# reads and writes instead.
_NO_KERNEL_COPY = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(
    path: Path,
    data: bytes,
    *,
    mode: int = 0o600,
    owner: tuple[int, int] | None = None,
    durable: bool = True,
) -> None:
    """Put `data` at `path` whole: a temp name beside it, then a rename. `owner` is (uid, gid); `durable`
    fsyncs the file before the rename (the caller fsyncs the folder when the rename must last too)."""
    tmp = path.with_name(f".{path.name}.ferry-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fchmod(fd, mode)  # the umask may have taken bits away
        if owner is not None:
            os.fchown(fd, *owner)
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)


def copy_range(src: int, dst: int, size: int, src_offset: int = 0, dst_offset: int | None = None) -> int:
    """Copy `size` bytes from `src` at `src_offset` to `dst` (at `dst_offset`, or its file position) in the
    kernel where it can (copy_file_range: no user-space buffer, a reflink on file systems that have them),
    else by reads and writes. Returns the bytes copied: fewer only when `src` ends first."""
    done = 0
    kernel = hasattr(os, "copy_file_range")
    while done < size:
        at = None if dst_offset is None else dst_offset + done
        if kernel:
            try:
                n = os.copy_file_range(src, dst, min(size - done, _KERNEL_STEP), src_offset + done, at)
            except OSError as exc:
                if exc.errno not in _NO_KERNEL_COPY:
                    raise
                kernel = False
                continue
        else:
            data = os.pread(src, min(size - done, _FALLBACK_CHUNK), src_offset + done)
            n = len(data)
            view = memoryview(data)
            while view:
                wrote = (
                    os.write(dst, view) if at is None else os.pwrite(dst, view, at + len(data) - len(view))
                )
                view = view[wrote:]
        if n == 0:
            break
        done += n
    return done


def syncfs(path: Path) -> None:
    """Flush the file system holding `path` (syncfs(2)); os.sync where syncfs is unavailable."""
    import ctypes  # here, not at the top: the WAL commands never sync a file system
    import ctypes.util

    libc_name = ctypes.util.find_library("c")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if libc_name:
            libc = ctypes.CDLL(libc_name, use_errno=True)
            if hasattr(libc, "syncfs") and libc.syncfs(fd) == 0:
                return
        os.sync()
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """Remove a file, link or folder tree at `path`; nothing when there is none."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
