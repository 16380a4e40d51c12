"""Opening a backup device the way SQL Server does, and refusing what it refuses: which credential a URL
uses, which blob type it may read, which platform reads UNC paths. Returns a reader (`key`, `size`,
`bytes_read`, `read(offset, length)`, `close()`); the media header is parsed elsewhere (media.py).

The rules, with the pages they come from (also in the README's rules list):

- Azure Blob, SQL Server 2016 and later: without WITH CREDENTIAL, the credential whose NAME is the
  blob's container URL, IDENTITY 'SHARED ACCESS SIGNATURE', and only block blobs; WITH CREDENTIAL
  names a storage-account-key credential, and then only page blobs (a SAS credential there is 3225).
  https://learn.microsoft.com/sql/relational-databases/backup-restore/sql-server-backup-to-url
  https://learn.microsoft.com/sql/t-sql/statements/create-credential-transact-sql (the name "must match
  the container path"). The model matches the container URL exactly, ignoring case as credential names
  are compared: the rules doc marks prefix matching below the container unconfirmed, and the page above
  says the name is the container path, so the strict reading is the one modelled.
- SQL Server 2012 SP1 CU2 and 2014: only page blobs through a key credential named in WITH CREDENTIAL,
  one URL per statement (https://learn.microsoft.com/previous-versions/sql/2014/relational-databases/
  backup-restore/sql-server-backup-to-url). SQL Server on Linux: block blobs through SAS only (the
  rules doc, [URL]).
- S3-compatible storage, SQL Server 2022 and later: the credential named after the URL or one of its
  parent paths down to the bucket, the most specific one, IDENTITY 'S3 Access Key', SECRET
  'AccessKeyID:SecretKeyID'; none is 3201 with OS error 50, a refused signature OS error 5.
  https://learn.microsoft.com/sql/relational-databases/backup-restore/sql-server-backup-to-url-s3-compatible-object-storage-best-practices-and-troubleshooting
- UNC paths: read from the SMB server as the service account, on Windows only (SMB storage is a
  Windows-only feature: https://learn.microsoft.com/sql/database-engine/install-windows/install-sql-server-with-smb-fileshare-as-a-storage-option).

The model only ever talks to this machine: http, https and SMB to loopback addresses (emulators: Azurite,
moto, Samba); `s3://` over plain http, where SQL Server always uses https.
"""

from __future__ import annotations

import ipaddress
import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tests.mssql_model.catalog import CredentialRow, FileSystem, OutsideRoot
from tests.mssql_model.errors import Message, message

# Windows system error texts, as SQL Server puts them into 3201 ("Operating system error %ls.").
OS_NOT_FOUND = "2(The system cannot find the file specified.)"
OS_PATH_NOT_FOUND = "3(The system cannot find the path specified.)"
OS_ACCESS_DENIED = "5(Access is denied.)"
OS_EOF = "38(Reached the end of the file.)"
OS_NOT_SUPPORTED = "50(The request is not supported.)"
OS_BAD_NETPATH = "53(The network path was not found.)"
OS_BAD_NET_NAME = "67(The network name cannot be found.)"
OS_BAD_PASSWORD = "86(The specified network password is not correct.)"
OS_LOGON_FAILURE = "1326(The user name or password is incorrect.)"
OS_NO_CONNECTION = "12029(A connection with the server could not be established)"
# WinHTTP's ERROR_WINHTTP_SECURE_FAILURE, as SQL Server reports a certificate it cannot validate
# (https://learn.microsoft.com/sql/relational-databases/backup-restore/sql-server-backup-to-url-s3-compatible-object-storage-best-practices-and-troubleshooting).
OS_SECURE_FAILURE = "12175(failed to retrieve text for this error. Reason: 15105)"

SAS_IDENTITY = "SHARED ACCESS SIGNATURE"
# FROM URL came with SQL Server 2012 SP1 CU2, build 11.0.3339 ("SQL Server 2012 Service Pack 1 CU2 and
# SQL Server 2014 introduced backup to URL",
# https://learn.microsoft.com/sql/relational-databases/backup-restore/sql-server-backup-to-url): before
# it URL is no device type, and the statement does not parse (102).
URL_DEVICES_SINCE = (11, 0, 3339)
S3_IDENTITY = "S3 ACCESS KEY"


class DeviceError(Exception):
    def __init__(self, *messages: Message) -> None:
        super().__init__(messages[0].text)
        self.messages = list(messages)


def cannot_open(name: str, os_error: str) -> DeviceError:
    return DeviceError(message(3201, name, os_error, state=2))


class Reader(Protocol):
    @property
    def key(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def bytes_read(self) -> int: ...
    def read(self, offset: int, length: int) -> bytes: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class DeviceRequest:
    """What a statement brings to the opening of its devices: the instance's version and platform, the
    credentials it holds, the statement's WITH CREDENTIAL and how many URL devices it names."""

    version: tuple[int, int, int]
    platform: str = "linux"
    credentials: tuple[CredentialRow, ...] = ()
    with_credential: str | None = None
    url_devices: int = 1
    smb_login: tuple[str, str] | None = None
    smb_servers: dict[str, str] = field(default_factory=dict)  # UNC host name -> "address:port"


class FileReader:
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


def loopback(host: str) -> bool:
    """This machine: loopback addresses, `localhost` and its subdomains (RFC 6761)."""
    host = host.lower().strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_device(kind: str, name: str, fs: FileSystem, request: DeviceRequest) -> tuple[Reader, object]:
    """The reader for one device, and a cache key for what it holds (None when it may change unseen)."""
    if kind == "DISK":
        if name.startswith("\\\\"):
            return _open_unc(name, request), None
        return _open_disk(name, fs)
    if kind == "URL":
        if name.lower().startswith("s3://"):
            return _open_s3(name, request), None
        return _open_blob(name, request), None
    raise cannot_open(name, OS_NOT_SUPPORTED)


def _open_disk(name: str, fs: FileSystem) -> tuple[Reader, object]:
    try:
        path = fs.host(name)
    except OutsideRoot:
        raise cannot_open(name, OS_ACCESS_DENIED) from None
    if path.is_dir():
        raise cannot_open(name, OS_ACCESS_DENIED)
    if not path.exists():
        raise cannot_open(name, OS_NOT_FOUND if path.parent.is_dir() else OS_PATH_NOT_FOUND)
    try:
        reader = FileReader(name, path)
    except PermissionError:
        raise cannot_open(name, OS_ACCESS_DENIED) from None
    stat = path.stat()
    return reader, (str(path), stat.st_size, stat.st_mtime_ns)


# -- Azure Blob Storage ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlobUrl:
    """https://ACCOUNT.blob.core.windows.net/CONTAINER/BLOB, or path style for emulators on an address:
    http://127.0.0.1:PORT/ACCOUNT/CONTAINER/BLOB."""

    scheme: str
    netloc: str
    host: str
    account: str
    container: str
    blob: str
    path_style: bool

    @property
    def container_url(self) -> str:
        base = f"{self.scheme}://{self.netloc}"
        return f"{base}/{self.account}/{self.container}" if self.path_style else f"{base}/{self.container}"


def parse_blob_url(url: str) -> BlobUrl | None:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    segments = [s for s in parts.path.split("/") if s]
    path_style = _is_address(host)
    if path_style:
        if len(segments) < 3:
            return None
        account, container, blob = segments[0], segments[1], "/".join(segments[2:])
    else:
        if len(segments) < 2:
            return None
        account, container, blob = host.split(".")[0], segments[0], "/".join(segments[1:])
    return BlobUrl(parts.scheme.lower(), parts.netloc, host, account, container, blob, path_style)


def _is_address(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def by_name(credentials: tuple[CredentialRow, ...], name: str) -> CredentialRow | None:
    """Credential names compare without regard to case, as sysname does under the default collation."""
    return next((c for c in credentials if c.name.lower() == name.lower()), None)


def _open_blob(name: str, request: DeviceRequest) -> Reader:
    from tests.mssql_model.remote import BlobReader

    major = request.version[0]
    url = parse_blob_url(name)
    if url is None or url.scheme not in ("http", "https"):
        raise cannot_open(name, OS_NOT_SUPPORTED)
    if major < 13:
        # 2012 SP1 CU2 and 2014: one URL device, a key credential named in WITH CREDENTIAL, page blobs.
        if request.url_devices > 1:
            raise DeviceError(message(3205, 1))
        credential = by_name(request.credentials, request.with_credential or "")
        if credential is None:
            raise cannot_open(name, OS_NOT_SUPPORTED)
        _reachable(name, url.scheme, url.host)
        return BlobReader.with_key(name, url, credential, page_blob_only=True)
    if request.with_credential is not None:
        credential = by_name(request.credentials, request.with_credential)
        if credential is None:
            raise cannot_open(name, OS_NOT_SUPPORTED)
        if credential.identity.upper() == SAS_IDENTITY:
            raise DeviceError(message(3225))
        if request.platform == "linux":
            # SQL Server on Linux writes and reads block blobs through SAS only (rules doc, [URL]).
            raise cannot_open(name, OS_NOT_SUPPORTED)
        _reachable(name, url.scheme, url.host)
        return BlobReader.with_key(name, url, credential, page_blob_only=True)
    credential = by_name(request.credentials, url.container_url)
    if credential is None or credential.identity.upper() != SAS_IDENTITY:
        raise cannot_open(name, OS_NOT_SUPPORTED)
    _reachable(name, url.scheme, url.host)
    return BlobReader.with_sas(name, url, credential.secret)


def _reachable(name: str, scheme: str, host: str) -> None:
    if scheme not in ("http", "https") or not loopback(host):
        # The model only ever talks to this machine; a real service cannot be reached from it.
        raise cannot_open(name, OS_NO_CONNECTION)


# -- S3-compatible object storage --------------------------------------------------------------------------
@dataclass(frozen=True)
class S3Url:
    """s3://HOST[:PORT]/BUCKET/KEY (path style) or s3://BUCKET.HOST[:PORT]/KEY (virtual host style)."""

    netloc: str  # as written, the bucket included for virtual host style
    host: str  # the endpoint's host name, without the bucket
    port: int | None
    bucket: str
    key: str
    virtual_host: bool

    def candidates(self) -> list[str]:
        """Credential names tried for this URL, most specific first: the URL, then each parent path down
        to the bucket."""
        base = f"s3://{self.netloc}" + ("" if self.virtual_host else f"/{self.bucket}")
        segments = self.key.split("/")
        names = [base + "/" + "/".join(segments[:n]) for n in range(len(segments), 0, -1)]
        return [*names, base]


def parse_s3_url(url: str) -> S3Url | None:
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower()
    segments = [s for s in parts.path.split("/") if s]
    if not host:
        return None
    if _path_style_s3(host):
        if len(segments) < 2:
            return None
        return S3Url(parts.netloc, host, parts.port, segments[0], "/".join(segments[1:]), False)
    bucket, _, endpoint = host.partition(".")
    if not endpoint or not segments:
        return None
    return S3Url(parts.netloc, endpoint, parts.port, bucket, "/".join(segments), True)


def _path_style_s3(host: str) -> bool:
    """An address, `localhost`, or an endpoint name that is itself the service (s3.REGION.amazonaws.com)
    carries the bucket in the path; any other name starts with the bucket."""
    return _is_address(host) or host.startswith(("s3.", "s3-"))


def _open_s3(name: str, request: DeviceRequest) -> Reader:
    from tests.mssql_model.remote import S3Reader

    if request.version[0] < 16:
        # Before SQL Server 2022 there is no S3 connector: the URL is a request it does not support.
        raise cannot_open(name, OS_NOT_SUPPORTED)
    url = parse_s3_url(name)
    if url is None:
        raise cannot_open(name, OS_NOT_SUPPORTED)
    if request.with_credential is not None:
        credential = by_name(request.credentials, request.with_credential)
    else:
        credential = next(
            (c for n in url.candidates() if (c := by_name(request.credentials, n)) is not None), None
        )
    if credential is None or credential.identity.upper() != S3_IDENTITY or ":" not in credential.secret:
        raise cannot_open(name, OS_NOT_SUPPORTED)
    if not loopback(url.host):
        raise cannot_open(name, OS_NO_CONNECTION)
    access, _, secret = credential.secret.partition(":")
    return S3Reader(name, url, access, secret)


# -- UNC paths ---------------------------------------------------------------------------------------------
def split_unc(path: str) -> tuple[str, str, str] | None:
    """\\\\HOST\\SHARE\\rest -> (HOST, SHARE, rest); None without a share."""
    parts = path[2:].replace("/", "\\").split("\\")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        return None
    return parts[0], parts[1], "\\".join(p for p in parts[2:] if p)


def _open_unc(name: str, request: DeviceRequest) -> Reader:
    from tests.mssql_model.remote import SmbReader

    if request.platform != "windows":
        # SQL Server on Linux has no SMB client of its own: a share must be mounted and given as a path.
        raise cannot_open(name, OS_BAD_NETPATH)
    parts = split_unc(name)
    if parts is None:
        raise cannot_open(name, OS_BAD_NETPATH)
    host, share, rest = parts
    address = request.smb_servers.get(host.lower(), f"{host}:445")
    server, _, port = address.rpartition(":")
    if not loopback(server) or not port.isdigit():
        raise cannot_open(name, OS_BAD_NETPATH)
    if not rest:
        raise cannot_open(name, OS_ACCESS_DENIED)
    return SmbReader(name, server, int(port), share, rest, request.smb_login)
