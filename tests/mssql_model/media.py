"""Backup devices as the model's server reads them: devices.py opens them (DISK paths through the
model's file system or an SMB share, URLs of Azure blobs and S3 objects with SQL Server's credential
rules); this module reads their media headers, with the model's own reader (`backupfile.read_device`);
nothing of Ferry is used.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from datetime import datetime

from tests.mssql_model.backupfile import read_device
from tests.mssql_model.backupsets import BackupSet, MediaHeader
from tests.mssql_model.catalog import FileSystem
from tests.mssql_model.devices import OS_EOF, DeviceError, DeviceRequest, Reader, open_device
from tests.mssql_model.devices import FileReader as _FileReader  # the name tests read files with
from tests.mssql_model.errors import message
from tests.mssql_model.formaterrors import NotABackup, TruncatedBackup

__all__ = [
    "DeviceError",
    "DeviceRequest",
    "MediaLabel",
    "MediaReader",
    "Medium",
    "_FileReader",
    "password_matches",
]


@dataclass(frozen=True)
class MediaLabel:
    """The media header: LABELONLY's row and the media password hash."""

    media_name: str | None
    media_description: str | None
    media_date: datetime | None
    password_hash: bytes | None


@dataclass(frozen=True)
class Medium:
    """One opened device: its name as given, its size and the backup sets it holds."""

    device: str
    kind: str
    size: int
    sets: list[BackupSet]
    label: MediaLabel

    def set_at(self, position: int) -> BackupSet | None:
        return next((s for s in self.sets if s.position == position), None)


def _read_label(header: MediaHeader) -> MediaLabel:
    """LABELONLY's fields of the TAPE block (format document, 2.4)."""
    return MediaLabel(header.media_name, header.media_description, header.media_date, header.password_hash)


def password_matches(label: MediaLabel, password: str | None) -> bool:
    """A protected medium stores MD5 of the UTF-16LE password; an unprotected one wants none."""
    if label.password_hash is None:
        return password is None
    return password is not None and hashlib.md5(password.encode("utf-16-le")).digest() == label.password_hash


class MediaReader:
    """Opens devices and caches what was read per (path, size, mtime): headers never change in place."""

    def __init__(self, fs: FileSystem) -> None:
        self.fs = fs
        self._cache: dict[object, tuple[list[BackupSet], MediaLabel]] = {}
        self._lock = threading.Lock()

    def open(self, kind: str, name: str, request: DeviceRequest) -> Medium:
        reader, key = open_device(kind, name, self.fs, request)
        try:
            return self._parse(name, kind, reader, key)
        finally:
            reader.close()

    def _parse(self, name: str, kind: str, reader: Reader, key: object) -> Medium:
        if reader.size == 0:
            raise DeviceError(message(3254, name))
        with self._lock:
            cached = self._cache.get(key) if key else None
        if cached is None:
            try:
                header, sets = read_device(reader)
            except TruncatedBackup:
                raise DeviceError(message(3203, name, OS_EOF)) from None
            except NotABackup:
                raise DeviceError(message(3241, name)) from None
            cached = (sets, _read_label(header))
            if key:
                with self._lock:
                    self._cache[key] = cached
        return Medium(name, kind, reader.size, cached[0], cached[1])
