"""Amazon S3 and S3-compatible servers, with boto3.

Credentials and region come from boto3's standard chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
AWS_PROFILE and ~/.aws, instance and container roles). AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) points
it at an S3-compatible server; Ferry then uses path-style addressing, which they all accept.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any, BinaryIO

from ferry.core.errors import ObjectNotFound, StoreError
from ferry.core.findings import Finding, Severity
from ferry.stores.base import (
    ObjectInfo,
    PutResult,
    StoreCapabilities,
    check_key,
    check_prefix,
    plain_etag,
    read_all,
    same_content,
    source_chunks,
    source_size,
)
from ferry.stores.errors import (
    AccessDenied,
    MissingExtra,
    ObjectChanged,
    ObjectConflict,
    StoreNotFound,
    StoreUnavailable,
)
from ferry.stores.location import Location
from ferry.stores.remote import Fetched, RemoteReader
from ferry.stores.retry import RetryPolicy, with_retries

PARALLEL_READS = 32
PIECE = 256 * 1024
PART = 64 << 20  # larger sources go up in parts of this size
_AUTH_CODES = {
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
    "AllAccessDisabled", "AccountProblem", "TokenRefreshRequired",
}  # fmt: skip
_TRANSIENT_CODES = {
    "SlowDown",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeTooSkewed",
}


class S3Store:
    def __init__(self, loc: Location, *, policy: RetryPolicy | None = None) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise MissingExtra("Amazon S3", "s3", "boto3") from None
        self.location = loc
        self._url = loc.display
        self._bucket = loc.bucket
        self._root = loc.path
        self._policy = policy or RetryPolicy.from_env()
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        session = boto3.session.Session()
        self._session = session
        self._endpoint = endpoint
        config = Config(
            retries={"max_attempts": 1, "mode": "standard"},  # one retry policy: ferry.stores.retry
            connect_timeout=10,
            read_timeout=60,
            max_pool_connections=PARALLEL_READS * 2,
            s3={"addressing_style": "path"} if endpoint else {},
        )
        self._client: Any = session.client(
            "s3", region_name=session.region_name or "us-east-1", endpoint_url=endpoint or None, config=config
        )
        self._auth_hint = (
            "check the AWS credentials Ferry found (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
            f"~/.aws/credentials or the instance role) and that they allow s3:ListBucket and s3:GetObject on "
            f"'{self._bucket}'"
        )

    @property
    def url(self) -> str:
        return self._url

    @property
    def endpoint(self) -> str:
        """The endpoint URL Ferry reaches (AWS_ENDPOINT_URL[_S3]), empty for AWS's own."""
        return str(self._client.meta.endpoint_url or "") if self._endpoint else ""

    @property
    def region(self) -> str:
        return str(self._client.meta.region_name or "us-east-1")

    def access_keys(self) -> str:
        """`<access key id>:<secret key>` of the credentials Ferry found, as a SQL Server 2022 S3 credential
        holds them; empty when there are none or they are temporary (a session token, which such a
        credential cannot carry). Never printed."""
        creds = self._session.get_credentials()
        if creds is None:
            return ""
        frozen = creds.get_frozen_credentials()
        if frozen.token or not frozen.access_key or not frozen.secret_key:
            return ""
        return f"{frozen.access_key}:{frozen.secret_key}"

    @property
    def capabilities(self) -> StoreCapabilities:
        return StoreCapabilities(
            ranged_reads=True,
            etags=True,
            writable=True,
            resumable_reads=True,
            pinned_reads=True,
            parallel_reads=PARALLEL_READS,
            poll_seconds=10.0,
        )

    def _name(self, key: str) -> str:
        key = check_key(key, self._url)
        return f"{self._root}/{key}" if self._root else key

    def _key_of(self, name: str) -> str:
        return name[len(self._root) + 1 :] if self._root else name

    def iter_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        prefix = check_prefix(prefix, self._url)
        base = "/".join(x for x in (self._root, prefix) if x)
        if prefix:
            with contextlib.suppress(ObjectNotFound):
                yield self.stat(prefix)
        starts = f"{base}/" if base else ""
        token: str | None = None
        while True:
            page, token = with_retries(lambda t=token: self._list_page(starts, t), self._policy)  # type: ignore[misc]
            yield from page
            if not token:
                return

    def _list_page(
        self, starts: str, token: str | None, limit: int = 1000
    ) -> tuple[list[ObjectInfo], str | None]:
        args: dict[str, Any] = {"Bucket": self._bucket, "Prefix": starts, "MaxKeys": limit}
        if token:
            args["ContinuationToken"] = token
        try:
            resp = self._client.list_objects_v2(**args)
        except Exception as exc:
            raise self._translate(exc, "list objects", starts) from None
        items = [
            ObjectInfo(
                self._key_of(o["Key"]),
                int(o["Size"]),
                plain_etag(o.get("ETag")),
                o["LastModified"].timestamp(),
            )
            for o in resp.get("Contents", [])
            if not o["Key"].endswith("/")  # folder markers some tools leave
        ]
        return items, resp.get("NextContinuationToken") if resp.get("IsTruncated") else None

    def stat(self, key: str) -> ObjectInfo:
        name = self._name(key)

        def head() -> ObjectInfo:
            try:
                r = self._client.head_object(Bucket=self._bucket, Key=name)
            except Exception as exc:
                raise self._translate(exc, f"read '{key}'", name) from None
            return ObjectInfo(
                self._key_of(name),
                int(r["ContentLength"]),
                plain_etag(r.get("ETag")),
                r["LastModified"].timestamp(),
            )

        return with_retries(head, self._policy)

    def open(self, key: str) -> RemoteReader:
        name = self._name(key)

        def fetch(offset: int, length: int, etag: str | None) -> Fetched:
            args: dict[str, Any] = {
                "Bucket": self._bucket,
                "Key": name,
                "Range": f"bytes={offset}-{offset + length - 1}",
            }
            if etag:
                args["IfMatch"] = f'"{etag}"'
            try:
                r = self._client.get_object(**args)
            except Exception as exc:
                err = self._translate(exc, f"read '{key}'", name)
                if _code(exc) == "InvalidRange":  # bytes=0-... of an empty object
                    info = self.stat(key)
                    return Fetched(info.size, info.etag, iter(()))
                raise err from None
            total = int(str(r.get("ContentRange", "")).rsplit("/", 1)[-1] or r["ContentLength"])
            return Fetched(total, plain_etag(r.get("ETag")), self._pieces(r["Body"], key))

        return RemoteReader(self._key_of(name), fetch, self._policy)

    def _pieces(self, body: Any, key: str) -> Iterator[bytes]:
        try:
            yield from body.iter_chunks(PIECE)
        except Exception as exc:
            raise StoreUnavailable(self._url, f"read '{key}'", f"{type(exc).__name__}: {exc}") from None
        finally:
            body.close()

    def put_new(self, key: str, source: bytes | BinaryIO) -> PutResult:
        """PutObject with If-None-Match: * (S3 since 2024, and compatible servers, refuse to replace);
        large sources go up in parts, streamed, and the completion carries the same condition."""
        name = self._name(key)
        size = source_size(source)

        def put() -> PutResult:
            try:
                if size <= PART:
                    r = self._client.put_object(
                        Bucket=self._bucket, Key=name, Body=read_all(source), IfNoneMatch="*"
                    )
                else:
                    r = self._multipart(name, source)
                return PutResult(self._key_of(name), size, False, plain_etag(r.get("ETag")))
            except Exception as exc:
                if _status(exc) in (412, 409):
                    return PutResult(self._key_of(name), size, True)
                raise self._translate(exc, f"write '{key}'", name) from None

        result = with_retries(put, self._policy)
        if result.already_present:
            with self.open(key) as reader:
                if not same_content(reader, source):
                    raise ObjectConflict(self._url, self._key_of(name))
                return PutResult(result.key, result.size, True, reader.etag)
        return result

    def _multipart(self, name: str, source: bytes | BinaryIO) -> Any:
        upload = self._client.create_multipart_upload(Bucket=self._bucket, Key=name)["UploadId"]
        try:
            parts = []
            for number, piece in enumerate(source_chunks(source, PART), start=1):
                r = self._client.upload_part(
                    Bucket=self._bucket, Key=name, UploadId=upload, PartNumber=number, Body=piece
                )
                parts.append({"PartNumber": number, "ETag": r["ETag"]})
            return self._client.complete_multipart_upload(
                Bucket=self._bucket,
                Key=name,
                UploadId=upload,
                MultipartUpload={"Parts": parts},
                IfNoneMatch="*",
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self._client.abort_multipart_upload(Bucket=self._bucket, Key=name, UploadId=upload)
            raise

    def check_access(self, *, write: bool = False) -> list[Finding]:
        try:
            with_retries(
                lambda: self._list_page(f"{self._root}/" if self._root else "", None, 1), self._policy
            )
        except AccessDenied as exc:
            return [Finding("store-access-denied", Severity.ERROR, exc.message, exc.hint)]
        except StoreNotFound as exc:
            return [Finding("store-missing", Severity.ERROR, exc.message, exc.hint)]
        except StoreError as exc:
            return [Finding("store-unreachable", Severity.ERROR, exc.message, exc.hint)]
        return []

    def close(self) -> None:
        self._client.close()

    def _translate(self, exc: BaseException, what: str, name: str) -> StoreError:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        if isinstance(exc, NoCredentialsError):
            return AccessDenied(self._url, what, "no AWS credentials found", self._auth_hint)
        if isinstance(exc, ClientError):
            code, status = _code(exc), _status(exc)
            detail = f"HTTP {status} {code}"
            if code == "NoSuchBucket":
                return StoreNotFound(
                    self._url, detail, f"check the bucket name '{self._bucket}' and the endpoint"
                )
            if code in ("NoSuchKey", "NotFound") or status == 404:
                return ObjectNotFound(self._url, self._key_of(name))
            if code == "PreconditionFailed" or status == 412:
                return ObjectChanged(self._url, self._key_of(name))
            if code in _AUTH_CODES or status in (401, 403):
                return AccessDenied(self._url, what, detail, self._auth_hint)
            if code in _TRANSIENT_CODES or status >= 500 or status in (408, 429):
                return StoreUnavailable(self._url, what, detail)
            return StoreError(
                f"cannot {what} in store '{self._url}': {detail}", "check the bucket and the key"
            )
        if isinstance(exc, BotoCoreError):
            return StoreUnavailable(self._url, what, f"{type(exc).__name__}: {exc}")
        if isinstance(exc, StoreError):
            return exc
        return StoreUnavailable(self._url, what, f"{type(exc).__name__}: {exc}")


def _code(exc: BaseException) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _status(exc: BaseException) -> int:
    return int(getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
