"""Backup devices as the model's server reads them: DISK paths through the model's file system, URL
blobs through HTTP GET with Range and the SAS of a credential. Headers are parsed by the model's own
reader (`backupfile.read_device`); nothing of Ferry is used.

URL rules: SQL Server 2016+ finds the SAS credential whose name is a prefix of the URL (the model takes
the longest) and refuses a URL with none (3201, OS error 50). Real SQL Server reads https only; the model
also reads http, but only from loopback addresses (emulators such as Azurite), and never anything else.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import os
import threading
import urllib.parse
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tests.mssql_model.backupfile import read_device
from tests.mssql_model.backupsets import BackupSet, MediaHeader
from tests.mssql_model.catalog import CredentialRow, FileSystem, OutsideRoot
from tests.mssql_model.errors import Message, message
from tests.mssql_model.formaterrors import NotABackup, TruncatedBackup

OS_NOT_FOUND = "2(The system cannot find the file specified.)"
OS_PATH_NOT_FOUND = "3(The system cannot find the path specified.)"
OS_ACCESS_DENIED = "5(Access is denied.)"
OS_NOT_SUPPORTED = "50(The request is not supported.)"
OS_EOF = "38(Reached the end of the file.)"
OS_NO_CONNECTION = "12029(A connection with the server could not be established)"


class DeviceError(Exception):
    def __init__(self, *messages: Message) -> None:
        super().__init__(messages[0].text)
        self.messages = list(messages)


class _FileReader:
    def __init__(self, name: str, path: Path) -> None:
        self._key = name
        self._fh = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._size = os.fstat(self._fh.fileno()).st_size
        self._read = 0

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
        self._fh.seek(offset)
        data = self._fh.read(length)
        self._read += len(data)
        return data

    def close(self) -> None:
        self._fh.close()


class _HttpReader:
    """Ranged reads of one blob over plain HTTP (loopback emulators only)."""

    def __init__(self, name: str, url: str, sas: str) -> None:
        self._key = name
        parts = urllib.parse.urlsplit(url)
        self._host = parts.hostname or ""
        self._port = parts.port or 80
        query = parts.query + ("&" if parts.query and sas else "") + sas
        self._target = urllib.parse.quote(parts.path, safe="/%") + (f"?{query}" if query else "")
        self._read = 0
        status, headers, _ = self._request("HEAD", {})
        if status in (401, 403):
            raise DeviceError(message(3201, name, OS_ACCESS_DENIED, state=2))
        if status == 404:
            raise DeviceError(message(3201, name, OS_NOT_FOUND, state=2))
        if status >= 300:
            raise DeviceError(message(3201, name, OS_NOT_SUPPORTED, state=2))
        self._size = int(headers.get("content-length", "0"))

    def _request(self, method: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self._host, self._port, timeout=30)
        try:
            conn.request(method, self._target, headers={"x-ms-version": "2020-10-02", **headers})
            resp = conn.getresponse()
            body = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
        except OSError:
            raise DeviceError(message(3201, self._key, OS_NO_CONNECTION, state=2)) from None
        finally:
            conn.close()

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
        if length <= 0 or offset >= self._size:
            return b""
        last = min(offset + length, self._size) - 1
        status, _, body = self._request("GET", {"Range": f"bytes={offset}-{last}"})
        if status not in (200, 206):
            raise DeviceError(message(3203, self._key, OS_ACCESS_DENIED))
        if status == 200:
            body = body[offset : last + 1]
        self._read += len(body)
        return body

    def close(self) -> None:
        pass


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


def _credential_for(url: str, credentials: list[CredentialRow]) -> CredentialRow | None:
    matches = [c for c in credentials if url.lower().startswith(c.name.lower().rstrip("/") + "/")]
    return max(matches, key=lambda c: len(c.name), default=None)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MediaReader:
    """Opens devices and caches what was read per (path, size, mtime): headers never change in place."""

    def __init__(self, fs: FileSystem) -> None:
        self.fs = fs
        self._cache: dict[tuple[str, int, int], tuple[list[BackupSet], MediaLabel]] = {}
        self._lock = threading.Lock()

    def open(self, kind: str, name: str, credentials: list[CredentialRow]) -> Medium:
        if kind == "DISK":
            return self._open_disk(name)
        if kind == "URL":
            return self._open_url(name, credentials)
        raise DeviceError(message(3201, name, OS_NOT_SUPPORTED, state=2))

    def _open_disk(self, name: str) -> Medium:
        try:
            path = self.fs.host(name)
        except OutsideRoot:
            raise DeviceError(message(3201, name, OS_ACCESS_DENIED, state=2)) from None
        if path.is_dir():
            raise DeviceError(message(3201, name, OS_ACCESS_DENIED, state=2))
        if not path.exists():
            missing = OS_NOT_FOUND if path.parent.is_dir() else OS_PATH_NOT_FOUND
            raise DeviceError(message(3201, name, missing, state=2))
        try:
            reader = _FileReader(name, path)
        except PermissionError:
            raise DeviceError(message(3201, name, OS_ACCESS_DENIED, state=2)) from None
        try:
            stat = path.stat()
            key = (str(path), stat.st_size, stat.st_mtime_ns)
            return self._parse(name, "DISK", reader, key)
        finally:
            reader.close()

    def _open_url(self, name: str, credentials: list[CredentialRow]) -> Medium:
        parts = urllib.parse.urlsplit(name)
        credential = _credential_for(name, credentials)
        if credential is None or credential.identity.upper() != "SHARED ACCESS SIGNATURE":
            raise DeviceError(message(3201, name, OS_NOT_SUPPORTED, state=2))
        if parts.scheme not in ("http", "https") or not _loopback(parts.hostname or ""):
            # The model only ever talks to this machine; a real blob service cannot be reached from it.
            raise DeviceError(message(3201, name, OS_NO_CONNECTION, state=2))
        reader = _HttpReader(name, name, credential.secret.lstrip("?"))
        return self._parse(name, "URL", reader, None)

    def _parse(
        self, name: str, kind: str, reader: _FileReader | _HttpReader, key: tuple[str, int, int] | None
    ) -> Medium:
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
