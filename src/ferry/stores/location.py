"""Where a store is: one parser for every location a command is given, and the redaction of secrets.

Forms (docs/stores.md has the whole story):

- local: a path, or `file:///path`;
- Azure Blob: `az://ACCOUNT/CONTAINER/PREFIX`, or the blob URL the portal hands out,
  `https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX?SAS`, or any blob endpoint with a SAS, the
  emulator's path-style one included (`http://127.0.0.1:10000/devstoreaccount1/CONTAINER/PREFIX?SAS`);
- SMB: `smb://[DOMAIN;]USER@HOST[:PORT]/SHARE/PATH`;
- S3: `s3://BUCKET/PREFIX`.

A Location holds the secrets a URL may carry (a SAS, a password in the user info) in fields that its
repr leaves out, and its `str` is the redacted URL: printing, logging or recording a Location never
shows them. `redact` and `redact_text` do the same for any string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlsplit

from ferry.core.errors import UsageError
from ferry.core.redact import MASK, redact_location, redact_text

__all__ = ["MASK", "Location", "StoreKind", "parse_location", "redact", "redact_text"]


class StoreKind(StrEnum):
    LOCAL = "file"
    AZURE = "az"
    SMB = "smb"
    S3 = "s3"


@dataclass(frozen=True)
class Location:
    """A parsed store location. `path` is the `/`-separated path inside the container, share or bucket
    (no leading or trailing `/`); for a local store it is the folder or file as given."""

    kind: StoreKind
    path: str = ""
    # Azure: the account, its container, and the account's endpoint when the URL names one (a blob URL,
    # the emulator); `az://` leaves it empty and the store finds it (docs/stores.md).
    account: str = ""
    container: str = ""
    endpoint: str = ""
    # SMB
    host: str = ""
    port: int | None = None
    share: str = ""
    user: str = ""
    domain: str = ""
    # S3
    bucket: str = ""
    # Secrets carried by the URL itself: never in repr, never in str.
    sas: str = field(default="", repr=False)
    password: str = field(default="", repr=False)

    def __str__(self) -> str:
        return self.display

    @property
    def display(self) -> str:
        """The location as a URL with every secret masked: what Ferry prints, logs and records."""
        return redact(self.url(with_secrets=True))

    def url(self, *, with_secrets: bool = False) -> str:
        """The canonical URL. Secrets are left out unless asked for (to hand the location to a child
        process, say); never print the result of `with_secrets=True`."""
        p = quote(self.path, safe="/")
        if self.kind is StoreKind.LOCAL:
            return Path(self.path).resolve().as_uri() if self.path else "file:///"
        if self.kind is StoreKind.AZURE:
            tail = "/".join(x for x in (quote(self.container, safe=""), p) if x)
            base = f"{self.endpoint}/{tail}" if self.endpoint else f"az://{self.account}/{tail}"
            return f"{base}?{self.sas}" if with_secrets and self.sas else base
        if self.kind is StoreKind.SMB:
            who = ""
            if self.user:
                who = (quote(self.domain, safe="") + ";" if self.domain else "") + quote(self.user, safe="")
                if with_secrets and self.password:
                    who += ":" + quote(self.password, safe="")
                who += "@"
            port = f":{self.port}" if self.port else ""
            tail = "/".join(x for x in (quote(self.share, safe=""), p) if x)
            return f"smb://{who}{self.host}{port}/{tail}"
        return f"s3://{self.bucket}/{p}" if p else f"s3://{self.bucket}"

    @property
    def name(self) -> str:
        """The last path element: a file's name when the location names one object."""
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def parent(self) -> Location:
        """The location one level up (for a location that names a single object)."""
        if self.kind is StoreKind.LOCAL:
            return replace(self, path=str(Path(self.path).parent))
        return replace(self, path=self.path.rsplit("/", 1)[0] if "/" in self.path else "")

    def child(self, relative: str) -> Location:
        """The location of `relative`, a `/`-separated path below this one."""
        clean = _clean_path(relative, self.display)
        if self.kind is StoreKind.LOCAL:
            return replace(self, path=str(Path(self.path, *clean.split("/"))) if clean else self.path)
        return replace(self, path="/".join(x for x in (self.path, clean) if x))


def parse_location(text: str) -> Location:
    """A Location for `text`; UsageError naming what is wrong (with secrets masked) otherwise."""
    text = text.strip()
    if not text:
        raise UsageError("the backup location is empty", "give a folder, or a store URL such as az://...")
    if re.match(r"^[A-Za-z]:[\\/]", text) or "://" not in text:
        return Location(StoreKind.LOCAL, path=text)  # a plain path (Windows drive letters included)
    scheme = text.split("://", 1)[0].lower()
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        raise UsageError(f"cannot read the location '{redact(text)}': {exc}", _FORMS) from None
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise UsageError(
                f"'{redact(text)}' names another host", "file:// URLs name local folders: file:///path"
            )
        return Location(StoreKind.LOCAL, path=unquote(parts.path))
    if scheme == "az":
        return _azure(text, parts.netloc, parts.path, parts.query, endpoint="")
    if scheme in ("http", "https"):
        return _blob_url(text, parts)
    if scheme == "smb":
        return _smb(text, parts)
    if scheme == "s3":
        bucket = parts.netloc
        if not re.fullmatch(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", bucket):
            raise UsageError(
                f"'{redact(text)}' does not name an S3 bucket", "write s3://BUCKET/PREFIX (lowercase bucket)"
            )
        return Location(StoreKind.S3, bucket=bucket, path=_clean_path(unquote(parts.path), text))
    raise UsageError(
        f"backup location '{redact(text)}' uses the scheme '{scheme}', which Ferry cannot read", _FORMS
    )


_FORMS = (
    "give a local path, file:///path, az://ACCOUNT/CONTAINER/PREFIX, an Azure blob URL with a SAS, "
    "smb://USER@HOST/SHARE/PATH or s3://BUCKET/PREFIX"
)
_ACCOUNT = re.compile(r"[a-z0-9]{3,24}")
_CONTAINER = re.compile(r"\$root|\$logs|\$web|[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")


def _azure(text: str, account: str, path: str, query: str, *, endpoint: str) -> Location:
    if not _ACCOUNT.fullmatch(account):
        raise UsageError(
            f"'{redact(text)}' does not name a storage account",
            "an account name is 3 to 24 lowercase letters and digits: az://ACCOUNT/CONTAINER/PREFIX",
        )
    container, _, rest = unquote(path).lstrip("/").partition("/")
    if not _CONTAINER.fullmatch(container):
        raise UsageError(
            f"'{redact(text)}' does not name a blob container"
            + (f" ('{container}' is not a container name)" if container else ""),
            "container names are 3 to 63 lowercase letters, digits and single hyphens: "
            "az://ACCOUNT/CONTAINER/PREFIX",
        )
    return Location(
        StoreKind.AZURE,
        account=account,
        container=container,
        endpoint=endpoint,
        path=_clean_path(rest, text),
        sas=query,
    )


def _blob_url(text: str, parts: SplitResult) -> Location:
    """`https://ACCOUNT.blob.core.windows.net/...` (host style) or `http://HOST:PORT/ACCOUNT/...` (path
    style: the emulator, Azure Stack's IP endpoints). Any other web URL is not a store."""
    host = (parts.hostname or "").lower()
    labels = host.split(".")
    base = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"
    query = parts.query
    has_sas = "sig" in {k.lower() for k, _ in parse_qsl(query)}
    if len(labels) > 2 and labels[1] == "blob":
        return _azure(text, labels[0], parts.path, query, endpoint=base)
    if has_sas:
        account, _, rest = parts.path.lstrip("/").partition("/")
        return _azure(text, account, "/" + rest, query, endpoint=f"{base}/{account}")
    raise UsageError(
        f"'{redact(text)}' is neither an Azure blob endpoint nor a blob URL with a SAS",
        "copy the container's URL with its SAS from the portal, or write az://ACCOUNT/CONTAINER/PREFIX",
    )


def _smb(text: str, parts: SplitResult) -> Location:
    netloc = parts.netloc
    userinfo = netloc.rpartition("@")[0]
    user, _, password = userinfo.partition(":")
    domain = ""
    if ";" in user:
        domain, _, user = user.partition(";")
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        raise UsageError(
            f"'{redact(text)}' has a bad port", "write smb://USER@HOST:PORT/SHARE/PATH"
        ) from None
    share, _, rest = unquote(parts.path).lstrip("/").partition("/")
    if not host or not share:
        raise UsageError(
            f"'{redact(text)}' does not name a host and a share", "write smb://[DOMAIN;]USER@HOST/SHARE/PATH"
        )
    return Location(
        StoreKind.SMB,
        host=host,
        port=port,
        share=share,
        user=unquote(user),
        domain=unquote(domain),
        password=unquote(password),
        path=_clean_path(rest, text),
    )


def _clean_path(path: str, shown: str) -> str:
    """A `/`-separated path with no empty or `.` parts; `..` is refused, since it would leave the store."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UsageError(
            f"the location '{redact(shown)}' contains '..'", "write the path without '..' components"
        )
    return "/".join(parts)


# -- redaction ------------------------------------------------------------------------------------


# Query and key=value names whose values are secrets: SAS signatures, tokens, passwords, account keys.
def redact(location: str | Location) -> str:
    """`location` with its password, SAS signature, account key and any other secret masked (the one
    implementation is ferry.core.redact, which every layer uses)."""
    if isinstance(location, Location):
        return location.display
    return redact_location(location)
