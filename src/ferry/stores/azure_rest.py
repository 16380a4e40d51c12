"""Listing and ranged reads of Azure blobs straight over HTTP, for the scan's hot path.

A scan lists thousands of blobs and makes a few small ranged GETs per file. The SDK's request pipeline
costs about 2 ms of CPU per request (policies, logging, proxy settings read from the environment each
time) and its listing about 0.8 ms per blob (a generic XML deserialiser): more than parsing the file.
So listing and reads go through the standard library's http.client, one keep-alive connection per
thread, with the same three ways to authorise a request as the SDK: a SAS appended to the URL, a Shared
Key signature (the documented string-to-sign), or an OAuth bearer token from an azure-identity
credential. Writes and checks stay with the SDK.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from email.utils import formatdate, parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from ferry.core.errors import ObjectNotFound, StoreError
from ferry.stores.base import BlobType, ObjectInfo, plain_etag
from ferry.stores.errors import AccessDenied, ObjectChanged, StoreNotFound, StoreUnavailable
from ferry.stores.remote import Fetched

API_VERSION = "2021-12-02"
PIECE = 256 * 1024
_BLOB_TYPES = {"BlockBlob": BlobType.BLOCK, "PageBlob": BlobType.PAGE, "AppendBlob": BlobType.APPEND}
_SIGNED = (
    "content-encoding", "content-language", "content-length", "content-md5", "content-type", "date",
    "if-modified-since", "if-match", "if-none-match", "if-unmodified-since", "range",
)  # fmt: skip


class Authoriser:
    """Adds a request's authorisation: SAS, Shared Key or bearer token (whichever the store resolved)."""

    def __init__(
        self,
        account: str,
        *,
        sas: str = "",
        account_key: str = "",
        token_credential: Any = None,
    ) -> None:
        self.account = account
        self.sas = sas.lstrip("?")
        self._key = base64.b64decode(account_key) if account_key else b""
        self._token_credential = token_credential
        self._token: tuple[str, float] | None = None
        self._lock = threading.Lock()

    def sign(
        self, method: str, path: str, headers: dict[str, str], query: dict[str, str] | None = None
    ) -> str:
        """The query string to send (the request's own parameters, plus a SAS); sets the Authorization
        header when the credential is a key or a token."""
        params = urlencode(query or {}, quote_via=quote)
        if self.sas:
            return f"{params}&{self.sas}" if params else self.sas
        if self._key:
            headers["x-ms-date"] = formatdate(usegmt=True)
            lower = {k.lower(): v for k, v in headers.items()}
            canon = "".join(f"{k}:{v}\n" for k, v in sorted(lower.items()) if k.startswith("x-ms-"))
            fields = "\n".join(lower.get(h, "") for h in _SIGNED)
            resource = f"/{self.account}{path}" + "".join(
                f"\n{k.lower()}:{v}" for k, v in sorted((query or {}).items())
            )
            to_sign = f"{method}\n{fields}\n{canon}{resource}"
            mac = hmac.new(self._key, to_sign.encode("utf-8"), hashlib.sha256).digest()
            headers["Authorization"] = f"SharedKey {self.account}:{base64.b64encode(mac).decode()}"
        elif self._token_credential is not None:
            headers["Authorization"] = f"Bearer {self._bearer()}"
        return params

    def _bearer(self) -> str:
        with self._lock:
            if self._token is None or self._token[1] - time.time() < 300:
                tok = self._token_credential.get_token("https://storage.azure.com/.default")
                self._token = (tok.token, float(tok.expires_on))
            return self._token[0]


class BlobReads:
    """List, GET and HEAD of blobs in one container, one keep-alive connection per thread."""

    def __init__(
        self,
        endpoint: str,
        container: str,
        auth: Authoriser,
        store: str,
        *,
        hint_auth: str,
        timeout: float = 30.0,
    ) -> None:
        parts = urlsplit(endpoint.rstrip("/"))
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._path0 = parts.path
        self._container = container
        self._auth = auth
        self._store = store
        self._hint_auth = hint_auth
        self._timeout = timeout
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._https:
                conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=ssl.create_default_context()
                )
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _request(
        self, method: str, path: str, headers: dict[str, str], what: str, query: dict[str, str] | None = None
    ) -> http.client.HTTPResponse:
        headers["x-ms-version"] = API_VERSION
        q = self._auth.sign(method, path, headers, query)
        target = path + (f"?{q}" if q else "")
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, target, headers=headers)
                return conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                # A kept-alive connection the server closed meanwhile fails at once: one fresh try.
                if attempt == 2 or not isinstance(exc, http.client.RemoteDisconnected | ConnectionResetError):
                    raise StoreUnavailable(self._store, what, f"{type(exc).__name__}: {exc}") from None
        raise AssertionError("unreachable")

    def _blob_path(self, blob: str) -> str:
        return f"{self._path0}/{self._container}/{quote(blob, safe='~/')}"

    def get(self, blob: str, offset: int, length: int, etag: str | None) -> Fetched:
        headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
        if etag:
            headers["If-Match"] = f'"{etag}"'
        resp = self._request("GET", self._blob_path(blob), headers, f"read '{blob}'")
        if resp.status == 416:  # a range past the end: only an empty blob answers so to bytes=0-...
            resp.read()
            size, tag, kind, _ = self.head(blob, etag)
            return Fetched(size, tag, iter(()), kind)
        if resp.status not in (200, 206):
            resp.read()
            raise self._error(resp, blob)
        total = _total_size(resp.getheader("Content-Range"), resp.getheader("Content-Length"))
        kind = _BLOB_TYPES.get(resp.getheader("x-ms-blob-type") or "")
        return Fetched(total, plain_etag(resp.getheader("ETag")), self._pieces(resp, blob), kind)

    def head(
        self, blob: str, etag: str | None = None
    ) -> tuple[int, str | None, BlobType | None, float | None]:
        headers = {"If-Match": f'"{etag}"'} if etag else {}
        resp = self._request("HEAD", self._blob_path(blob), headers, f"read '{blob}'")
        resp.read()
        if resp.status != 200:
            raise self._error(resp, blob)
        modified = resp.getheader("Last-Modified")
        return (
            int(resp.getheader("Content-Length") or 0),
            plain_etag(resp.getheader("ETag")),
            _BLOB_TYPES.get(resp.getheader("x-ms-blob-type") or ""),
            parsedate_to_datetime(modified).timestamp() if modified else None,
        )

    def list_page(
        self, prefix: str, marker: str | None, limit: int = 5000
    ) -> tuple[list[tuple[str, ObjectInfo]], str | None]:
        """One page of List Blobs: (blob name, info with the name as key), and the next marker."""
        query = {"restype": "container", "comp": "list", "maxresults": str(limit)}
        if prefix:
            query["prefix"] = prefix
        if marker:
            query["marker"] = marker
        resp = self._request("GET", f"{self._path0}/{self._container}", {}, "list blobs", query)
        body = resp.read()
        if resp.status != 200:
            raise self._error(resp, prefix or "/")
        root = ET.fromstring(body)
        out = []
        for b in root.iter("Blob"):
            name = b.findtext("Name") or ""
            props = b.find("Properties")
            get = props.findtext if props is not None else (lambda _k: None)
            modified = get("Last-Modified")
            info = ObjectInfo(
                name,
                int(get("Content-Length") or 0),
                plain_etag(get("Etag")),
                parsedate_to_datetime(modified).timestamp() if modified else None,
                _BLOB_TYPES.get(get("BlobType") or ""),
            )
            out.append((name, info))
        return out, root.findtext("NextMarker") or None

    def _pieces(self, resp: http.client.HTTPResponse, blob: str) -> Iterator[bytes]:
        expected = int(resp.getheader("Content-Length") or -1)
        got = 0
        try:
            while True:
                piece = resp.read(PIECE)
                if not piece:
                    break
                got += len(piece)
                yield piece
        except (OSError, http.client.HTTPException) as exc:
            self._drop()
            raise StoreUnavailable(self._store, f"read '{blob}'", f"{type(exc).__name__}: {exc}") from None
        finally:
            if not resp.isclosed() and got != expected:
                self._drop()  # abandoned mid-body: the connection cannot serve another request
        if expected >= 0 and got < expected:
            self._drop()
            raise StoreUnavailable(self._store, f"read '{blob}'", f"the connection closed after {got} bytes")

    def _error(self, resp: http.client.HTTPResponse, blob: str) -> StoreError:
        code = resp.getheader("x-ms-error-code") or ""
        status = resp.status
        detail = f"HTTP {status} {code}".strip()
        if status == 404 and code == "ContainerNotFound":
            return StoreNotFound(self._store, detail, "check the container's name, and the account's")
        if status == 404:
            return ObjectNotFound(self._store, blob)
        if status == 412:
            return ObjectChanged(self._store, blob)
        if status in (401, 403):
            return AccessDenied(self._store, f"read '{blob}'", detail, self._hint_auth)
        if status >= 500 or status in (408, 429):
            return StoreUnavailable(self._store, f"read '{blob}'", detail)
        return StoreError(f"cannot read '{blob}' in store '{self._store}': {detail}", "check the blob URL")

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()


def _total_size(content_range: str | None, content_length: str | None) -> int:
    """The blob's whole size: after the `/` of `bytes a-b/TOTAL`, else the body's length (a 200)."""
    if content_range and "/" in content_range:
        tail = content_range.rsplit("/", 1)[1]
        if tail.isdigit():
            return int(tail)
    return int(content_length or 0)
