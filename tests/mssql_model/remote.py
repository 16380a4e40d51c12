"""Readers of remote backup devices, written from the services' own documents: Azure blobs through a SAS
or a storage account key (Shared Key authorization, signed here), S3 objects through SigV4 (botocore's
signer), files on an SMB share (smbprotocol). Each opens with one probe that fails the way SQL Server's
open fails (3201 and the OS error), then serves ranged reads.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import http.client
import ssl
import urllib.parse
from email.utils import formatdate
from typing import Any

from tests.mssql_model.catalog import CredentialRow
from tests.mssql_model.devices import (
    OS_ACCESS_DENIED,
    OS_BAD_NET_NAME,
    OS_BAD_NETPATH,
    OS_BAD_PASSWORD,
    OS_LOGON_FAILURE,
    OS_NO_CONNECTION,
    OS_NOT_FOUND,
    OS_NOT_SUPPORTED,
    OS_PATH_NOT_FOUND,
    OS_SECURE_FAILURE,
    BlobUrl,
    DeviceError,
    S3Url,
    cannot_open,
)
from tests.mssql_model.errors import message

AZURE_VERSION = "2020-10-02"
TIMEOUT = 30


def _request(
    name: str,
    host: str,
    port: int,
    method: str,
    target: str,
    headers: dict[str, str],
    *,
    tls: bool = False,
) -> tuple[int, dict[str, str], bytes]:
    """One request. Over https the certificate is validated against the system's trust store, as
    SQL Server's WinHTTP does: one it cannot validate is 12175."""
    conn: http.client.HTTPConnection
    if tls:
        conn = http.client.HTTPSConnection(host, port, timeout=TIMEOUT, context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        conn.request(method, target, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    except ssl.SSLError:
        raise cannot_open(name, OS_SECURE_FAILURE) from None
    except OSError:
        raise cannot_open(name, OS_NO_CONNECTION) from None
    finally:
        conn.close()


def _connect_host(host: str) -> str:
    """`*.localhost` names are this machine (RFC 6761) whether or not the resolver knows them."""
    return "127.0.0.1" if host.endswith(".localhost") else host


class _Ranged:
    """Size and counters shared by the readers; `_get(first, last)` is each service's ranged read."""

    _key: str
    _size: int
    _read: int

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
        body = self._get(offset, last)
        self._read += len(body)
        return body

    def _get(self, first: int, last: int) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        pass


# -- Azure Blob Storage ------------------------------------------------------------------------------------
def shared_key_signature(
    account: str, key: bytes, method: str, path: str, query: dict[str, str], headers: dict[str, str]
) -> str:
    """The Shared Key signature of a Blob service request (version 2009-09-19 and later), from
    https://learn.microsoft.com/rest/api/storageservices/authorize-with-shared-key: the standard headers
    in their fixed order, then the x-ms- headers (lower-cased, sorted, name:value), then the resource
    (/account + the URI path, then each query parameter lower-cased and sorted, name:value)."""
    lower = {k.lower(): v.strip() for k, v in headers.items()}
    length = lower.get("content-length", "")
    standard = [
        method,
        lower.get("content-encoding", ""),
        lower.get("content-language", ""),
        "" if length == "0" else length,
        lower.get("content-md5", ""),
        lower.get("content-type", ""),
        "" if "x-ms-date" in lower else lower.get("date", ""),
        lower.get("if-modified-since", ""),
        lower.get("if-match", ""),
        lower.get("if-none-match", ""),
        lower.get("if-unmodified-since", ""),
        lower.get("range", ""),
    ]
    ms_headers = "".join(f"{k}:{v}\n" for k, v in sorted(lower.items()) if k.startswith("x-ms-"))
    resource = f"/{account}{path}"
    for name in sorted(query, key=str.lower):
        resource += f"\n{name.lower()}:{query[name]}"
    text = "\n".join(standard) + "\n" + ms_headers + resource
    digest = hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


class BlobReader(_Ranged):
    """One blob over plain HTTP (emulators on loopback), authorized by a SAS or by Shared Key."""

    def __init__(self, name: str, url: BlobUrl, *, sas: str | None, key: CredentialRow | None) -> None:
        self._key, self._url, self._read = name, url, 0
        parts = urllib.parse.urlsplit(name)
        self._tls = parts.scheme.lower() == "https"
        self._host, self._port = parts.hostname or "", parts.port or (443 if self._tls else 80)
        self._path = urllib.parse.quote(urllib.parse.unquote(parts.path), safe="/")
        # Sent as stored: a secret with the leading "?" of a SAS URL is a wrong secret, as on SQL Server
        # ("The SHARED ACCESS SIGNATURE secret should not have the leading ?",
        # https://learn.microsoft.com/sql/t-sql/statements/create-credential-transact-sql, example D).
        self._sas = sas or ""
        self._account_key: bytes | None = None
        self._account = ""
        if key is not None:
            self._account = key.identity
            try:
                self._account_key = base64.b64decode(key.secret, validate=True)
            except (binascii.Error, ValueError):
                self._account_key = None
        self._size = 0

    @classmethod
    def with_sas(cls, name: str, url: BlobUrl, sas: str) -> BlobReader:
        reader = cls(name, url, sas=sas, key=None)
        reader._open(want="BlockBlob", refused=OS_ACCESS_DENIED)
        return reader

    @classmethod
    def with_key(
        cls, name: str, url: BlobUrl, credential: CredentialRow, *, page_blob_only: bool
    ) -> BlobReader:
        reader = cls(name, url, sas=None, key=credential)
        if reader._account_key is None:
            # A secret that is no base64 key signs nothing the service can accept.
            raise cannot_open(name, OS_BAD_PASSWORD)
        reader._open(want="PageBlob" if page_blob_only else None, refused=OS_BAD_PASSWORD)
        return reader

    def _call(self, method: str, extra: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        headers = {"x-ms-version": AZURE_VERSION, "x-ms-date": formatdate(usegmt=True), **extra}
        target = self._path
        if self._account_key is not None:
            signature = shared_key_signature(
                self._account, self._account_key, method, self._path, {}, headers
            )
            headers["Authorization"] = f"SharedKey {self._account}:{signature}"
        elif self._sas:
            target += "?" + self._sas
        return _request(self._key, self._host, self._port, method, target, headers, tls=self._tls)

    def _open(self, want: str | None, refused: str) -> None:
        status, headers, _ = self._call("HEAD", {})
        if status in (401, 403):
            raise cannot_open(self._key, refused)
        if status == 404:
            raise cannot_open(self._key, OS_NOT_FOUND)
        if status >= 300:
            raise cannot_open(self._key, OS_NOT_SUPPORTED)
        blob_type = headers.get("x-ms-blob-type", "")
        if want is not None and blob_type.lower() != want.lower():
            # Through a SAS SQL Server reads block blobs, through a key page blobs
            # (https://learn.microsoft.com/sql/relational-databases/backup-restore/sql-server-backup-to-url);
            # the other kind is a request it does not support.
            raise cannot_open(self._key, OS_NOT_SUPPORTED)
        self._size = int(headers.get("content-length", "0"))

    def _get(self, first: int, last: int) -> bytes:
        status, _, body = self._call("GET", {"Range": f"bytes={first}-{last}"})
        if status not in (200, 206):
            raise DeviceError(message(3203, self._key, OS_ACCESS_DENIED))
        return body[first : last + 1] if status == 200 else body


# -- S3-compatible object storage --------------------------------------------------------------------------
class S3Reader(_Ranged):
    """One object over plain HTTP (moto on loopback), each request signed with SigV4 for us-east-1, the
    region SQL Server assumes when RESTORE_OPTIONS names none."""

    def __init__(self, name: str, url: S3Url, access_key: str, secret_key: str) -> None:
        from botocore.credentials import Credentials

        self._key, self._url, self._read = name, url, 0
        self._credentials = Credentials(access_key, secret_key)
        self._netloc = url.netloc
        self._host = _connect_host(url.netloc.rsplit(":", 1)[0] if url.port else url.netloc)
        self._port = url.port or 80
        key = urllib.parse.quote(urllib.parse.unquote(url.key), safe="/~")
        self._target = f"/{key}" if url.virtual_host else f"/{url.bucket}/{key}"
        self._size = 0
        self._open()

    def _call(self, extra: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest

        request = AWSRequest(method="GET", url=f"http://{self._netloc}{self._target}", headers=dict(extra))
        S3SigV4Auth(self._credentials, "s3", "us-east-1").add_auth(request)
        headers: dict[str, Any] = {"Host": self._netloc, **dict(request.headers.items())}
        return _request(self._key, self._host, self._port, "GET", self._target, headers)

    def _open(self) -> None:
        status, headers, body = self._call({"Range": "bytes=0-0"})
        if status in (200, 206):
            total = headers.get("content-range", "").rpartition("/")[2]
            self._size = int(total) if total.isdigit() else int(headers.get("content-length", "0"))
            return
        code = _s3_code(body)
        if status == 416:  # an empty object: no byte 0 to read
            self._size = 0
        elif status in (401, 403) or code in ("AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId"):
            raise cannot_open(self._key, OS_ACCESS_DENIED)
        elif code == "NoSuchKey":
            raise cannot_open(self._key, OS_NOT_FOUND)
        else:
            # A missing bucket is OS error 50 (the S3 troubleshooting page cited in devices.py).
            raise cannot_open(self._key, OS_NOT_SUPPORTED)

    def _get(self, first: int, last: int) -> bytes:
        status, _, body = self._call({"Range": f"bytes={first}-{last}"})
        if status not in (200, 206):
            raise DeviceError(message(3203, self._key, OS_ACCESS_DENIED))
        return body[first : last + 1] if status == 200 else body


def _s3_code(body: bytes) -> str:
    text = body.decode("utf-8", "replace")
    start = text.find("<Code>")
    end = text.find("</Code>", start)
    return text[start + 6 : end] if start >= 0 and end > start else ""


# -- SMB shares --------------------------------------------------------------------------------------------
class SmbReader(_Ranged):
    """One file on a share, opened as the service account (`--smb-login`); its own connection cache, so
    it shares no session with any other SMB client in the process."""

    def __init__(
        self, name: str, server: str, port: int, share: str, rest: str, login: tuple[str, str] | None
    ) -> None:
        import smbclient

        self._key, self._read, self._size = name, 0, 0
        self._cache: dict[str, Any] = {}
        user, password = login if login else (None, None)
        kw: dict[str, Any] = {"port": port, "connection_cache": self._cache, "connection_timeout": 10}
        path = f"\\\\{server}\\{share}\\{rest}"
        try:
            smbclient.register_session(server, username=user, password=password, **kw)
            self._fh = smbclient.open_file(path, mode="rb", share_access="r", **kw)
            self._size = int(self._fh.seek(0, 2))
        except Exception as exc:
            self._drop()
            raise cannot_open(name, _smb_os_error(exc)) from None

    def _get(self, first: int, last: int) -> bytes:
        try:
            self._fh.seek(first)
            return bytes(self._fh.read(last - first + 1))
        except Exception:
            raise DeviceError(message(3203, self._key, OS_BAD_NETPATH)) from None

    def close(self) -> None:
        fh = getattr(self, "_fh", None)
        if fh is not None:
            with contextlib.suppress(Exception):  # a closed connection has nothing left to close
                fh.close()
        self._drop()

    def _drop(self) -> None:
        import smbclient

        try:
            smbclient.reset_connection_cache(fail_on_error=False, connection_cache=self._cache)
        except Exception:
            self._cache.clear()


# NTSTATUS of a failed SMB call -> the Windows error CreateFile returns for it on a UNC path.
_NTSTATUS_OS_ERRORS = {
    0xC0000034: OS_NOT_FOUND,  # STATUS_OBJECT_NAME_NOT_FOUND
    0xC000003A: OS_PATH_NOT_FOUND,  # STATUS_OBJECT_PATH_NOT_FOUND
    0xC00000CC: OS_BAD_NET_NAME,  # STATUS_BAD_NETWORK_NAME: no such share
    0xC0000225: OS_BAD_NET_NAME,  # STATUS_NOT_FOUND: what a share lookup answers when there is none
    0xC0000022: OS_ACCESS_DENIED,  # STATUS_ACCESS_DENIED
    0xC00000BA: OS_ACCESS_DENIED,  # STATUS_FILE_IS_A_DIRECTORY
    0xC000006D: OS_LOGON_FAILURE,  # STATUS_LOGON_FAILURE
}


def _smb_os_error(exc: BaseException) -> str:
    """Windows' error for an SMB failure: what SQL Server's CreateFile on the UNC path would return."""
    from smbprotocol import exceptions as e

    status = getattr(exc, "ntstatus", None)
    if isinstance(status, int) and status in _NTSTATUS_OS_ERRORS:
        return _NTSTATUS_OS_ERRORS[status]
    if isinstance(exc, e.SMBAuthenticationError | e.LogonFailure) or "STATUS_LOGON_FAILURE" in str(exc):
        return OS_LOGON_FAILURE
    return OS_BAD_NETPATH  # no connection: the server cannot be reached
