"""Ranged reads of Azure blobs straight over HTTP, for the scan's hot path.

A scan makes a few small ranged GETs per file, thousands per second. The SDK's request pipeline costs
about 2 ms of CPU per request (policies, logging, proxy settings read from the environment each time),
more than parsing the file, so reads go through urllib3 (already required by the SDK's transport) with
the same three ways to authorise a request as the SDK: a SAS appended to the URL, a Shared Key signature
(the documented string-to-sign), or an OAuth bearer token from an azure-identity credential. Listing,
writes and checks stay with the SDK.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from typing import Any
from urllib.parse import quote

from ferry.core.errors import ObjectNotFound, StoreError
from ferry.stores.base import BlobType, plain_etag
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

    def sign(self, method: str, path: str, headers: dict[str, str]) -> str:
        """The query string to append (a SAS, or nothing); sets the Authorization header if needed."""
        if self.sas:
            return self.sas
        if self._key:
            headers["x-ms-date"] = formatdate(usegmt=True)
            canon = "".join(
                f"{k}:{v}\n"
                for k, v in sorted((k.lower(), v) for k, v in headers.items() if k.startswith("x-ms-"))
            )
            lower = {k.lower(): v for k, v in headers.items()}
            fields = "\n".join(lower.get(h, "") for h in _SIGNED)
            to_sign = f"{method}\n{fields}\n{canon}/{self.account}{path}"
            mac = hmac.new(self._key, to_sign.encode("utf-8"), hashlib.sha256).digest()
            headers["Authorization"] = f"SharedKey {self.account}:{base64.b64encode(mac).decode()}"
        elif self._token_credential is not None:
            headers["Authorization"] = f"Bearer {self._bearer()}"
        return ""

    def _bearer(self) -> str:
        with self._lock:
            if self._token is None or self._token[1] - time.time() < 300:
                tok = self._token_credential.get_token("https://storage.azure.com/.default")
                self._token = (tok.token, float(tok.expires_on))
            return self._token[0]


class BlobReads:
    """GET and HEAD of blobs in one container, over a urllib3 pool sized for the scan's threads."""

    def __init__(
        self,
        endpoint: str,
        container: str,
        auth: Authoriser,
        store: str,
        *,
        pool_size: int,
        hint_auth: str,
        timeout: float = 30.0,
    ) -> None:
        import urllib3

        self._urllib3 = urllib3
        self._base = endpoint.rstrip("/")
        self._path0 = urllib3.util.parse_url(self._base).path or ""
        self._container = container
        self._auth = auth
        self._store = store
        self._hint_auth = hint_auth
        self._pool = urllib3.PoolManager(
            num_pools=4,
            maxsize=pool_size,
            block=False,
            retries=False,
            timeout=urllib3.Timeout(connect=10.0, read=timeout),
        )

    def _request(self, method: str, blob: str, headers: dict[str, str], *, stream: bool) -> Any:
        path = f"{self._path0}/{self._container}/{quote(blob, safe='~/')}"
        headers["x-ms-version"] = API_VERSION
        query = self._auth.sign(method, path, headers)
        url = self._base.removesuffix(self._path0) + path + (f"?{query}" if query else "")
        try:
            return self._pool.request(
                method, url, headers=headers, preload_content=not stream, redirect=False
            )
        except self._urllib3.exceptions.HTTPError as exc:
            raise StoreUnavailable(self._store, f"read '{blob}'", _reason(exc)) from None

    def get(self, blob: str, offset: int, length: int, etag: str | None) -> Fetched:
        headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
        if etag:
            headers["If-Match"] = f'"{etag}"'
        resp = self._request("GET", blob, headers, stream=True)
        if resp.status == 416:  # a range past the end: only an empty blob answers so to bytes=0-...
            resp.drain_conn()
            head = self.head(blob, etag)
            return Fetched(head[0], head[1], iter(()), head[2])
        if resp.status not in (200, 206):
            body = resp.data
            resp.release_conn()
            raise self._error(resp, blob, body)
        total = _total_size(resp.headers.get("Content-Range"), resp.headers.get("Content-Length"))
        return Fetched(
            total,
            plain_etag(resp.headers.get("ETag")),
            self._pieces(resp, blob),
            _BLOB_TYPES.get(resp.headers.get("x-ms-blob-type", "")),
        )

    def head(
        self, blob: str, etag: str | None = None
    ) -> tuple[int, str | None, BlobType | None, float | None]:
        headers = {"If-Match": f'"{etag}"'} if etag else {}
        resp = self._request("HEAD", blob, headers, stream=False)
        if resp.status != 200:
            raise self._error(resp, blob, b"")
        modified = resp.headers.get("Last-Modified")
        from email.utils import parsedate_to_datetime

        stamp = parsedate_to_datetime(modified).timestamp() if modified else None
        return (
            int(resp.headers.get("Content-Length", "0")),
            plain_etag(resp.headers.get("ETag")),
            _BLOB_TYPES.get(resp.headers.get("x-ms-blob-type", "")),
            stamp,
        )

    def _pieces(self, resp: Any, blob: str) -> Iterator[bytes]:
        try:
            yield from resp.stream(PIECE, decode_content=False)
        except (self._urllib3.exceptions.HTTPError, OSError) as exc:
            raise StoreUnavailable(self._store, f"read '{blob}'", _reason(exc)) from None
        finally:
            resp.release_conn()

    def _error(self, resp: Any, blob: str, body: bytes) -> StoreError:
        code = resp.headers.get("x-ms-error-code", "")
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
        self._pool.clear()


def _total_size(content_range: str | None, content_length: str | None) -> int:
    """The blob's whole size: after the `/` of `bytes a-b/TOTAL`, else the body's length (a 200)."""
    if content_range and "/" in content_range:
        tail = content_range.rsplit("/", 1)[1]
        if tail.isdigit():
            return int(tail)
    return int(content_length or 0)


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return f"{type(exc).__name__}: {reason or exc}"


ReadFn = Callable[[int, int, str | None], Fetched]
