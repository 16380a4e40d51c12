"""Azure Blob Storage: a container (and a path inside it) read in place, with azure-storage-blob.

Credentials, first found wins (docs/stores.md):

1. the SAS of the URL (`https://ACCOUNT.blob.core.windows.net/CONTAINER?sv=...&sig=...`);
2. AZURE_STORAGE_SAS_TOKEN;
3. AZURE_STORAGE_CONNECTION_STRING, when it is for this account (or holds a SAS);
4. AZURE_STORAGE_KEY, the account key (ignored when AZURE_STORAGE_ACCOUNT names another account);
5. the credentials file's `[az://ACCOUNT]` section: sas_token, account_key or connection_string;
6. DefaultAzureCredential, when the `azure-identity` extra is installed (managed identity, az login...);
7. none: anonymous access, for public containers.

The endpoint of `az://ACCOUNT/...` is `https://ACCOUNT.blob.core.windows.net`, unless
FERRY_AZURE_BLOB_ENDPOINT names another (the emulator: `http://127.0.0.1:10000/devstoreaccount1`) or the
connection string has a BlobEndpoint. Blob URLs carry their own endpoint.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO
from urllib.parse import parse_qsl

from ferry.core.errors import ObjectNotFound, StoreError
from ferry.core.findings import Finding, Severity
from ferry.stores import credentials
from ferry.stores.azure_rest import Authoriser, BlobReads
from ferry.stores.base import (
    ObjectInfo,
    PutResult,
    StoreCapabilities,
    check_key,
    check_prefix,
    plain_etag,
    same_content,
    source_size,
)
from ferry.stores.errors import (
    AccessDenied,
    MissingExtra,
    ObjectConflict,
    StoreNotFound,
    StoreUnavailable,
)
from ferry.stores.location import Location
from ferry.stores.remote import Fetched, RemoteReader
from ferry.stores.retry import RetryPolicy, with_retries

# The emulator's well-known development account (public, documented by Microsoft).
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
PARALLEL_READS = 32


class AzureCredential:
    """The credential resolved for one account, and where it came from (for messages, never the value)."""

    def __init__(self, source: str, *, sas: str = "", key: str = "", token: Any = None, endpoint: str = ""):
        self.source = source
        self.sas = sas.lstrip("?")
        self.key = key
        self.token = token
        self.endpoint = endpoint

    def for_sdk(self, account: str) -> Any:
        if self.sas:
            from azure.core.credentials import AzureSasCredential

            return AzureSasCredential(self.sas)
        if self.key:
            return {"account_name": account, "account_key": self.key}
        return self.token


def parse_connection_string(text: str) -> dict[str, str]:
    fields = dict(
        (k.strip().lower(), v.strip()) for k, _, v in (p.partition("=") for p in text.split(";") if "=" in p)
    )
    if fields.get("usedevelopmentstorage", "").lower() == "true":
        return {
            "accountname": DEV_ACCOUNT,
            "accountkey": DEV_KEY,
            "blobendpoint": f"http://127.0.0.1:10000/{DEV_ACCOUNT}",
        }
    return fields


def _from_connection_string(text: str, account: str, source: str) -> AzureCredential | None:
    cs = parse_connection_string(text)
    if cs.get("accountname") not in (None, account):
        return None
    endpoint = cs.get("blobendpoint", "")
    if not endpoint and cs.get("accountname"):
        proto, suffix = cs.get("defaultendpointsprotocol", "https"), cs.get("endpointsuffix")
        endpoint = f"{proto}://{account}.blob.{suffix}" if suffix else ""
    if cs.get("sharedaccesssignature"):
        return AzureCredential(source, sas=cs["sharedaccesssignature"], endpoint=endpoint)
    if cs.get("accountkey"):
        return AzureCredential(source, key=cs["accountkey"], endpoint=endpoint)
    return None


def resolve_credential(loc: Location) -> AzureCredential:
    account = loc.account
    if loc.sas:
        return AzureCredential("the SAS in the URL", sas=loc.sas)
    env = os.environ
    if env.get("AZURE_STORAGE_SAS_TOKEN"):
        return AzureCredential("AZURE_STORAGE_SAS_TOKEN", sas=env["AZURE_STORAGE_SAS_TOKEN"])
    if env.get("AZURE_STORAGE_CONNECTION_STRING"):
        found = _from_connection_string(
            env["AZURE_STORAGE_CONNECTION_STRING"], account, "AZURE_STORAGE_CONNECTION_STRING"
        )
        if found:
            return found
    if env.get("AZURE_STORAGE_KEY") and env.get("AZURE_STORAGE_ACCOUNT", account) == account:
        return AzureCredential("AZURE_STORAGE_KEY", key=env["AZURE_STORAGE_KEY"])
    file = credentials.section(f"az://{account}")
    where = f"the [az://{account}] section of {credentials.credentials_path()}"
    if file.get("sas_token"):
        return AzureCredential(where, sas=file["sas_token"])
    if file.get("account_key"):
        return AzureCredential(where, key=file["account_key"])
    if file.get("connection_string"):
        found = _from_connection_string(file["connection_string"], account, where)
        if found:
            return found
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        return AzureCredential("no credential (anonymous access)")
    return AzureCredential("DefaultAzureCredential (azure-identity)", token=DefaultAzureCredential())


def _endpoint(loc: Location, cred: AzureCredential) -> str:
    if loc.endpoint:
        return loc.endpoint
    override = os.environ.get("FERRY_AZURE_BLOB_ENDPOINT", "").rstrip("/")
    if override:
        return override.replace("{account}", loc.account)
    return cred.endpoint.rstrip("/") or f"https://{loc.account}.blob.core.windows.net"


def sas_findings(sas: str, store: str, *, write: bool, now: datetime | None = None) -> list[Finding]:
    """An expired SAS, or one without the permissions Ferry needs (read and list; write and create for a
    push), found from the token itself before any request."""
    fields = {k: v for k, v in parse_qsl(sas.lstrip("?"))}
    out: list[Finding] = []
    now = now or datetime.now(UTC)
    expiry = fields.get("se")
    if expiry:
        try:
            when = datetime.fromisoformat(expiry.replace("Z", "+00:00"))
        except ValueError:
            when = None
        if when is not None and when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        if when is not None and when <= now:
            out.append(
                Finding(
                    "sas-expired",
                    Severity.ERROR,
                    f"the SAS for '{store}' expired at {when.isoformat()}",
                    "generate a new SAS (read and list; write and create to archive) and give Ferry the "
                    "new URL",
                )
            )
    perms = fields.get("sp")
    if perms is not None:
        need = {"r": "read", "l": "list"} | ({"w": "write", "c": "create"} if write else {})
        missing = [name for letter, name in need.items() if letter not in perms]
        if missing:
            out.append(
                Finding(
                    "sas-permissions",
                    Severity.ERROR,
                    f"the SAS for '{store}' lacks {' and '.join(missing)} permission (it grants sp={perms})",
                    f"generate a SAS with {''.join(need)} permissions on the container",
                )
            )
    return out


class AzureBlobStore:
    def __init__(self, loc: Location, *, policy: RetryPolicy | None = None) -> None:
        try:
            from azure.storage.blob import ContainerClient
        except ImportError:
            raise MissingExtra("Azure Blob Storage", "azure", "azure-storage-blob") from None
        self.location = loc
        self._url = loc.display
        self._policy = policy or RetryPolicy.from_env()
        self._cred = resolve_credential(loc)
        self.endpoint = _endpoint(loc, self._cred)
        self._root = loc.path
        self._auth_hint = (
            f"Ferry used {self._cred.source}: check that it is valid for account '{loc.account}', not "
            "expired, and allows read and list on the container"
        )
        self._client = ContainerClient(
            self.endpoint,
            loc.container,
            credential=self._cred.for_sdk(loc.account),
            retry_total=0,  # one retry policy for every store: ferry.stores.retry
            connection_timeout=10,
            read_timeout=60,
        )
        self._reads = BlobReads(
            self.endpoint,
            loc.container,
            Authoriser(
                loc.account, sas=self._cred.sas, account_key=self._cred.key, token_credential=self._cred.token
            ),
            self._url,
            hint_auth=self._auth_hint,
        )

    @property
    def url(self) -> str:
        return self._url

    @property
    def credential_source(self) -> str:
        return self._cred.source

    @property
    def account_key(self) -> str:
        """The account key Ferry authenticates with, when it has one (never printed): a SQL Server target
        reads page blobs through a credential that holds it."""
        return self._cred.key

    def container_sas(self, hours: float) -> tuple[str, bool, float | None]:
        """A SAS a SQL Server target can read this container with: the one Ferry was given (the URL's, the
        environment's, the credentials file's), else a read and list SAS minted from the account key,
        valid for `hours`. Returns (token without `?`, minted, expiry in epoch seconds); an empty token
        when Ferry has neither (a token credential from azure-identity cannot be turned into a SAS)."""
        if self._cred.sas:
            expiry = dict(parse_qsl(self._cred.sas)).get("se")
            return self._cred.sas, False, _epoch(expiry) if expiry else None
        if not self._cred.key:
            return "", False, None
        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        start = datetime.now(UTC) - timedelta(minutes=5)  # clock skew between Ferry and the service
        until = datetime.now(UTC) + timedelta(hours=hours)
        token = generate_container_sas(
            self.location.account,
            self.location.container,
            account_key=self._cred.key,
            permission=ContainerSasPermissions(read=True, list=True),
            start=start,
            expiry=until,
        )
        return token, True, until.timestamp()

    @property
    def capabilities(self) -> StoreCapabilities:
        perms = dict(parse_qsl(self._cred.sas)).get("sp") if self._cred.sas else None
        return StoreCapabilities(
            ranged_reads=True,
            etags=True,
            blob_types=True,
            writable=perms is None or "w" in perms,
            resumable_reads=True,
            pinned_reads=True,
            parallel_reads=PARALLEL_READS,
            poll_seconds=10.0,
        )

    def _blob(self, key: str) -> str:
        key = check_key(key, self._url)
        return f"{self._root}/{key}" if self._root else key

    def _key_of(self, name: str) -> str:
        return name[len(self._root) + 1 :] if self._root else name

    # -- reads --------------------------------------------------------------------------------------

    def iter_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        prefix = check_prefix(prefix, self._url)
        base = "/".join(x for x in (self._root, prefix) if x)
        if prefix:
            with contextlib.suppress(ObjectNotFound):
                yield self.stat(prefix)  # an object named exactly like the prefix
        starts = f"{base}/" if base else ""
        token: str | None = None
        while True:
            page, token = with_retries(lambda t=token: self._list_page(starts, t), self._policy)  # type: ignore[misc]
            yield from page
            if not token:
                return

    def _list_page(
        self, starts: str, token: str | None, limit: int = 5000
    ) -> tuple[list[ObjectInfo], str | None]:
        page, marker = self._reads.list_page(starts, token, limit)
        return [replace(info, key=self._key_of(name)) for name, info in page], marker

    def stat(self, key: str) -> ObjectInfo:
        blob = self._blob(key)
        size, etag, kind, modified = with_retries(lambda: self._reads.head(blob), self._policy)
        return ObjectInfo(self._key_of(blob), size, etag, modified, kind)

    def open(self, key: str) -> RemoteReader:
        blob = self._blob(key)

        def fetch(offset: int, length: int, etag: str | None) -> Fetched:
            return self._reads.get(blob, offset, length, etag)

        return RemoteReader(self._key_of(blob), fetch, self._policy)

    # -- writes -------------------------------------------------------------------------------------

    def put_new(self, key: str, source: bytes | BinaryIO) -> PutResult:
        """One Put Blob (or staged blocks and a Put Block List, for large sources, streamed) with
        If-None-Match: *, so a name that exists is never overwritten; a conflict compares the contents."""
        from azure.core.exceptions import ResourceExistsError

        blob = self._blob(key)
        name = self._key_of(blob)
        size = source_size(source)
        client = self._client.get_blob_client(blob)

        def upload() -> PutResult:
            body = source if isinstance(source, bytes) else _rewound(source)
            try:
                r = client.upload_blob(body, length=size, overwrite=False, max_concurrency=1)
                return PutResult(name, size, False, plain_etag(r.get("etag")))
            except ResourceExistsError:
                return PutResult(name, size, True, None)
            except Exception as exc:
                raise self._translate(exc, f"write '{name}'", blob) from None

        result = with_retries(upload, self._policy)
        if result.already_present:
            with self.open(name) as reader:
                if not same_content(reader, source):
                    raise ObjectConflict(self._url, name)
                return PutResult(name, size, True, reader.etag)
        return result

    # -- checks -------------------------------------------------------------------------------------

    def check_access(self, *, write: bool = False) -> list[Finding]:
        problems = sas_findings(self._cred.sas, self._url, write=write) if self._cred.sas else []
        if problems:
            return problems  # the server would refuse too; say why without asking it
        try:
            with_retries(
                lambda: self._list_page(f"{self._root}/" if self._root else "", None, 1), self._policy
            )
        except AccessDenied as exc:
            problems.append(Finding("store-access-denied", Severity.ERROR, exc.message, exc.hint))
        except StoreNotFound as exc:
            problems.append(Finding("store-missing", Severity.ERROR, exc.message, exc.hint))
        except StoreError as exc:
            problems.append(Finding("store-unreachable", Severity.ERROR, exc.message, exc.hint))
        return problems

    def close(self) -> None:
        self._reads.close()
        self._client.close()

    def _translate(self, exc: BaseException, what: str, name: str) -> StoreError:
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ResourceNotFoundError,
            ServiceRequestError,
            ServiceResponseError,
        )

        code = str(getattr(exc, "error_code", "") or "")
        status = getattr(exc, "status_code", None) or 0
        detail = f"HTTP {status} {code}".strip() if status else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, ServiceRequestError | ServiceResponseError):
            return StoreUnavailable(self._url, what, detail)
        if isinstance(exc, ResourceNotFoundError) or status == 404:
            if code == "BlobNotFound":
                return ObjectNotFound(self._url, self._key_of(name))
            return StoreNotFound(
                self._url, detail, f"check that container '{self.location.container}' exists in account "
                f"'{self.location.account}' ({self.endpoint})"
            )  # fmt: skip
        if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
            return AccessDenied(self._url, what, detail, self._auth_hint)
        if isinstance(exc, HttpResponseError) and (status >= 500 or status in (408, 429)):
            return StoreUnavailable(self._url, what, detail)
        if isinstance(exc, StoreError):
            return exc
        return StoreError(f"cannot {what} in store '{self._url}': {detail}", "check the store's URL")


def _epoch(text: str) -> float | None:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _rewound(source: BinaryIO) -> BinaryIO:
    """The source from its start (a retried upload reads it again)."""
    source.seek(0)
    return source
