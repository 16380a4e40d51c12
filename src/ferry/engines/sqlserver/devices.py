"""How a SQL Server instance reads a store's file: the one mapping from a store location, a file key and the
target's facts to the device of a RESTORE (`DISK = N'...'` or `URL = N'...'`), the credential it needs, and
the findings when the target cannot read it. `ferry migrate`, `ferry script` and the service
all go through `map_file`. Pure: no connection, no store; `access.py` gathers the secrets and blob types.

The rules, per store (docs/engines.md, "How the target reads the backups"):

- Azure Blob: `URL = N'<endpoint>/<container>/<blob name, percent-encoded>'`, never with a query string.
  SQL Server 2016 and later read block blobs through a SAS credential named exactly `<endpoint>/<container>`
  (IDENTITY = 'SHARED ACCESS SIGNATURE', SECRET = the token without its `?`), found by the URL;
  page blobs through a storage-key credential (IDENTITY = the account, SECRET = its key) named in
  `WITH CREDENTIAL`. SQL Server 2012 and 2014 read page blobs only, through that key credential.
  https://learn.microsoft.com/sql/relational-databases/backup-restore/sql-server-backup-to-url
  https://learn.microsoft.com/sql/t-sql/statements/create-credential-transact-sql (examples D and E)
- S3-compatible storage: SQL Server 2022 and later, path style `URL = N's3://<host:port>/<bucket>/<key>'`,
  credential `[s3://<host:port>/<bucket>]` WITH IDENTITY = 'S3 Access Key', SECRET = '<key id>:<secret>'.
  https://learn.microsoft.com/sql/relational-databases/backup-restore/sql-server-backup-to-url-s3-compatible-object-storage
  https://learn.microsoft.com/sql/t-sql/statements/create-credential-transact-sql (example F)
- SMB: Windows instances read `\\\\HOST\\SHARE\\PATH\\file` as their service account; Linux instances read
  no UNC path (only what is mounted), so a share needs `--backup-path-as` there.
- A local folder: the same path, or what `--backup-path-as LOCAL=TARGET` maps it to. LOCAL may be any store
  location; mappings compare parsed locations, never strings.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from urllib.parse import quote, urlsplit

from ferry.core.errors import UsageError
from ferry.core.findings import Finding, Severity
from ferry.core.redact import redact_text
from ferry.engines.sqlserver.tsql import Device, quote_ident, quote_literal
from ferry.stores.location import Location, StoreKind, parse_location

SAS_IDENTITY = "SHARED ACCESS SIGNATURE"
S3_IDENTITY = "S3 Access Key"
_WINDOWS_PATH = re.compile(r"^([A-Za-z]:|\\\\)|\\")
_YEARS = {11: "2012", 12: "2014", 13: "2016", 14: "2017", 15: "2019", 16: "2022", 17: "2025"}


class Platform(StrEnum):
    WINDOWS = "Windows"
    LINUX = "Linux"


class Secret(StrEnum):
    """Where a credential's secret comes from; each has the sqlcmd variable a script names it by."""

    SAS = "FERRY_SAS"  # a SAS token: the source URL's, one Ferry minted, or FERRY_MSSQL_SAS
    STORAGE_KEY = "FERRY_STORAGE_KEY"  # the storage account's key
    S3_KEYS = "FERRY_S3_KEYS"  # `<access key id>:<secret key>`

    @property
    def variable(self) -> str:
        return self.value


@dataclass(frozen=True)
class TargetView:
    """The target's facts the mapping needs. `major` 0: not known (a script without --target-version), so
    no version rule refuses anything. `platform` None: not known (SQL Server 2016 and older run on Windows
    only; later ones say in sys.dm_os_host_info)."""

    major: int
    platform: Platform | None = None
    credentials: tuple[str, ...] = ()  # names in sys.credentials
    can_alter_credentials: bool = False  # sysadmin, or ALTER ANY CREDENTIAL
    sees_credentials: bool = True  # False: sys.credentials may hide rows (no VIEW ANY DEFINITION)

    def has_credential(self, name: str) -> bool:
        return name.casefold() in {c.casefold() for c in self.credentials}

    @property
    def on_windows(self) -> bool:
        return self.platform is Platform.WINDOWS or (self.platform is None and 0 < self.major < 14)


@dataclass(frozen=True)
class SourceAccess:
    """What the store can hand the target, beside its location: the secrets (never in repr) and, for a
    mapped URL, the SAS given for it. `endpoint` is the Azure blob endpoint or the S3 endpoint URL."""

    location: Location
    endpoint: str = ""
    sas: str = field(default="", repr=False)
    sas_minted: bool = False  # Ferry minted the SAS from the account key: it renews it before it expires
    sas_expiry: float | None = None  # epoch seconds, when known
    account_key: str = field(default="", repr=False)
    s3_keys: str = field(default="", repr=False)  # `<access key id>:<secret key>`
    key_credential: str | None = None  # the name given for the storage-key credential (--credential)

    def secret(self, kind: Secret) -> str:
        return {Secret.SAS: self.sas, Secret.STORAGE_KEY: self.account_key, Secret.S3_KEYS: self.s3_keys}[
            kind
        ]


@dataclass(frozen=True)
class Credential:
    """A credential a device needs on the target: its name, identity and where its secret comes from.
    `named`: the RESTORE names it (WITH CREDENTIAL); otherwise SQL Server finds it by the URL."""

    name: str
    identity: str
    secret: Secret
    named: bool = False

    def statement(self, secret: str, *, alter: bool = False) -> str:
        """CREATE (or ALTER) CREDENTIAL with `secret` in it: a real secret for the target only, or a
        sqlcmd variable / mask for anything shown."""
        verb = "ALTER" if alter else "CREATE"
        return (
            f"{verb} CREDENTIAL {quote_ident(self.name)} WITH IDENTITY = {quote_literal(self.identity)}, "
            f"SECRET = {quote_literal(secret)}"
        )

    @property
    def shown(self) -> str:
        """The statement as Ferry prints it: the secret as its sqlcmd variable."""
        return self.statement(f"$({self.secret.variable})")


@dataclass(frozen=True)
class Mapped:
    """One file as the target reads it."""

    device: Device
    credential: Credential | None = None
    findings: tuple[Finding, ...] = ()

    @property
    def with_credential(self) -> str | None:
        return self.credential.name if self.credential is not None and self.credential.named else None


@dataclass(frozen=True)
class PathMap:
    """`--backup-path-as LOCAL=TARGET`, parsed: files under `local` are read at `target`."""

    local: Location
    target: str

    @staticmethod
    def parse(text: str | Sequence[str]) -> PathMap:
        if isinstance(text, str):
            local, sep, target = _split_mapping(text)
        elif len(text) == 2:
            local, sep, target = str(text[0]), "=", str(text[1])
        else:
            local, sep, target = "", "", ""
        if not sep or not local or not target:
            shown = redact_text(text if isinstance(text, str) else "=".join(map(str, text)))
            raise UsageError(
                f"backup path mapping {shown!r} is not LOCAL=TARGET",
                r"e.g. --backup-path-as /backups=\\fileserver\backups or az://acct/bk=D:\bk",
            )
        if re.match(r"(?i)^(https?|s3)://", target) and ("?" in target or "#" in target):
            # A device URL never carries a query string: SQL Server would read `?sv=...` as part of the
            # blob's name, and the statement (shown, logged) would hold the signature.
            raise UsageError(
                f"backup path mapping target '{redact_text(target)}' has a query string",
                "give the URL without '?...'; the target reads it through a credential: put the SAS in "
                "FERRY_MSSQL_SAS (Ferry creates the credential) or create it on the target yourself",
            )
        loc = parse_location(local)
        if loc.kind is StoreKind.LOCAL:
            loc = Location(StoreKind.LOCAL, path=_resolved(loc.path))
        return PathMap(loc, target)

    @property
    def local_text(self) -> str:
        """LOCAL as a location without its secrets (a SAS only names the container here)."""
        return self.local.path if self.local.kind is StoreKind.LOCAL else self.local.url()

    @property
    def text(self) -> str:
        """LOCAL=TARGET again, with LOCAL's secrets left out (what is kept and handed on)."""
        return f"{self.local_text}={self.target}"


def _split_mapping(text: str) -> tuple[str, str, str]:
    """LOCAL=TARGET where LOCAL may be a URL whose query holds `=` (a SAS): split at the first `=` that is
    not inside LOCAL's query, i.e. the first `=` before any `?`, else the first `=` after the query's end
    (a SAS is followed by `=` only inside its own `name=value` pairs, which hold no `://`)."""
    if "?" in text.split("=", 1)[0]:
        # LOCAL has a query: the mapping's `=` is the one that starts TARGET, which begins with a path, a
        # drive, a share or a scheme; take the last `=` followed by one of those.
        for m in reversed(list(re.finditer("=", text))):
            rest = text[m.end() :]
            if re.match(r"^([A-Za-z]:|\\\\|/|[a-z][a-z0-9+.\-]*://)", rest):
                return text[: m.start()], "=", rest
        return text, "", ""  # every `=` is the query's own: there is no TARGET
    return text.partition("=")


def _resolved(path: str) -> str:
    from pathlib import Path

    return Path(path).resolve().as_posix()


# -- the mapping -----------------------------------------------------------------------------------------


def file_location(source: Location, key: str) -> Location:
    """The store location of `key`, a `/`-separated key below the source's root."""
    if source.kind is StoreKind.LOCAL:
        return Location(StoreKind.LOCAL, path=_resolved(source.path).rstrip("/") + "/" + key)
    return source.child(key)


def map_file(
    access: SourceAccess,
    key: str,
    target: TargetView,
    path_map: Sequence[PathMap] = (),
    blob_type: str | None = None,
) -> Mapped:
    """How `target` reads the store's file `key`: its device, the credential it needs, and findings when it
    cannot. `blob_type` is Azure's `x-ms-blob-type` (BlockBlob, PageBlob, AppendBlob; or block, page...)."""
    loc = file_location(access.location, key)
    mapped = _apply_map(loc, path_map)
    if mapped is not None:
        return _mapped(mapped, access, target, blob_type)
    if loc.kind is StoreKind.AZURE:
        return _azure(loc, access, target, blob_type)
    if loc.kind is StoreKind.S3:
        return _s3(loc, access, target)
    if loc.kind is StoreKind.SMB:
        return _smb(loc, target)
    return Mapped(Device(loc.path))


def _same_root(a: Location, b: Location) -> bool:
    if a.kind is not b.kind:
        return False
    if a.kind is StoreKind.AZURE:
        return a.account == b.account and a.container == b.container
    if a.kind is StoreKind.SMB:
        return a.host.casefold() == b.host.casefold() and a.share.casefold() == b.share.casefold()
    if a.kind is StoreKind.S3:
        return a.bucket == b.bucket
    return True


def _rest(prefix: str, path: str) -> str | None:
    """`path` below `prefix` (component-wise), or None when it is not below it."""
    pre = [p for p in prefix.split("/") if p]
    parts = [p for p in path.split("/") if p]
    if parts[: len(pre)] != pre:
        return None
    return "/".join(parts[len(pre) :])


def _apply_map(loc: Location, path_map: Sequence[PathMap]) -> str | None:
    """What the longest matching mapping makes of `loc`, or None."""
    best: tuple[int, str] | None = None
    for m in path_map:
        if not _same_root(m.local, loc):
            continue
        rest = _rest(m.local.path, loc.path)
        if rest is None:
            continue
        depth = len([p for p in m.local.path.split("/") if p])
        if best is None or depth > best[0]:
            best = (depth, _join_target(m.target, rest))
    return None if best is None else best[1]


def _join_target(target: str, rest: str) -> str:
    if not rest:
        return target
    if re.match(r"(?i)^(https?|s3)://", target):
        return target.rstrip("/") + "/" + quote(rest, safe="/")
    sep = "\\" if _WINDOWS_PATH.search(target) else "/"
    return target.rstrip("/\\") + sep + rest.replace("/", sep)


def _mapped(device: str, access: SourceAccess, target: TargetView, blob_type: str | None) -> Mapped:
    """A mapped device: a path as it is; a URL with the credential its form asks for."""
    lower = device.lower()
    if lower.startswith("s3://"):
        bucket_url = "/".join(device.split("/", 4)[:4])
        return _s3_device(device, bucket_url, target)
    if not lower.startswith(("http://", "https://")):
        if device.startswith("\\\\") and target.platform is Platform.LINUX:
            return Mapped(Device(device), findings=(_unc_on_linux(device),))
        return Mapped(Device(device))
    return _blob_device(device, container_url(device), _account_of(device), access, target, blob_type)


def container_url(url: str) -> str:
    """The container's URL of a blob URL: `scheme://host/container`, or `scheme://host/account/container` on a
    path-style endpoint (the emulator, an IP address), whose first path part is the account."""
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    host = parts.hostname or ""
    path_style = ".blob." not in host and len(segments) > 2
    keep = 2 if path_style else 1
    return f"{parts.scheme}://{parts.netloc}/" + "/".join(segments[:keep])


def _account_of(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ".blob." in host:
        return host.split(".", 1)[0]
    segments = [s for s in parts.path.split("/") if s]
    return segments[0] if segments else ""


def blob_url(endpoint: str, container: str, blob: str) -> str:
    """The blob's URL as SQL Server reads it: no query string, the name percent-encoded (UTF-8) so that a
    space, `#`, `?`, `%` or a quote in it stays part of the name."""
    return f"{endpoint.rstrip('/')}/{quote(container, safe='')}/{quote(blob, safe='/')}"


def _azure(loc: Location, access: SourceAccess, target: TargetView, blob_type: str | None) -> Mapped:
    endpoint = access.endpoint or loc.endpoint or f"https://{loc.account}.blob.core.windows.net"
    url = blob_url(endpoint, loc.container, loc.path)
    return _blob_device(url, container_url(url), loc.account, access, target, blob_type)


def _kind(blob_type: str | None) -> str | None:
    text = (blob_type or "").lower().replace("blob", "")
    return text or None


def _blob_device(
    url: str, container: str, account: str, access: SourceAccess, target: TargetView, blob_type: str | None
) -> Mapped:
    kind = _kind(blob_type)
    year = _YEARS.get(target.major, str(target.major))
    device = Device(url)
    if kind == "append":
        return Mapped(
            device,
            findings=(
                _f(
                    "append-blob",
                    f"'{url}' is an append blob, which SQL Server cannot restore from",
                    "copy it as a block blob (azcopy copy --blob-type BlockBlob) or to a disk the "
                    "target reads",
                    url,
                ),
            ),
        )
    old = target.major in (11, 12)
    if old and kind == "block":
        return Mapped(
            device,
            findings=(
                _f(
                    "block-blobs",
                    f"SQL Server {year} restores from page blobs only, and '{url}' is a block blob",
                    "restore onto SQL Server 2016 or later, copy the file to a disk the target reads, or "
                    "copy it as a page blob (azcopy copy --blob-type PageBlob)",
                    url,
                ),
            ),
        )
    if kind == "page" and target.platform is Platform.LINUX:
        # SQL Server on Linux reads block blobs through a SAS credential only (restore rules, [URL]).
        return Mapped(
            device,
            findings=(
                _f(
                    "page-blob-on-linux",
                    f"'{url}' is a page blob, and SQL Server on Linux restores from block blobs only",
                    "copy it as a block blob (azcopy copy --blob-type BlockBlob), or restore onto SQL "
                    "Server on Windows",
                    url,
                ),
            ),
        )
    if old or kind == "page":
        name = access.key_credential or f"ferry_{account}"
        cred = Credential(name, account, Secret.STORAGE_KEY, named=True)
        found: list[Finding] = []
        if old and kind is None:
            found.append(
                Finding(
                    "blob-types-unknown",
                    Severity.WARNING,
                    f"SQL Server {year} reads only page blobs, and the blob type of '{url}' is not known",
                    "make sure the backups are page blobs (BACKUP TO URL with a storage key credential "
                    "writes them)",
                    (url,),
                )
            )
        found += _credential_findings(cred, access, target, url)
        return Mapped(device, cred, tuple(found))
    cred = Credential(container, SAS_IDENTITY, Secret.SAS)
    return Mapped(device, cred, tuple(_credential_findings(cred, access, target, url)))


def _credential_findings(
    cred: Credential, access: SourceAccess, target: TargetView, url: str
) -> list[Finding]:
    """Nothing when the credential exists or Ferry can create it; else what the DBA must run."""
    if target.has_credential(cred.name):
        return []
    have = bool(access.secret(cred.secret))
    if have and target.can_alter_credentials:
        return []
    why = (
        "the login may not create it (it needs ALTER ANY CREDENTIAL, or sysadmin)"
        if have
        else f"Ferry has no {secret_words(cred.secret)} to create it with"
    )
    if not target.sees_credentials:
        # The login sees no rows of sys.credentials (no VIEW ANY DEFINITION): the credential may well be
        # there. The read probe decides; its finding carries the same statement.
        return [
            _f(
                "url-credential-unseen",
                f"the login cannot see whether the target has the credential [{cred.name}] to read "
                f"'{url}' (sys.credentials needs VIEW ANY DEFINITION), and {why}",
                f"if the read check fails, run on the target: {cred.shown} (set {cred.secret.variable} to "
                f"the {secret_words(cred.secret)})",
                url,
                severity=Severity.WARNING,
            )
        ]
    return [
        _f(
            "url-credential-missing",
            f"the target has no credential [{cred.name}] to read '{url}', and {why}",
            f"run on the target: {cred.shown} (set {cred.secret.variable} to the "
            f"{secret_words(cred.secret)}), or connect as a login with ALTER ANY CREDENTIAL",
            url,
        )
    ]


def replace_key_credential(access: SourceAccess, name: str | None) -> SourceAccess:
    """`access` with the storage-key credential's name given (--credential), when one is."""
    return access if not name else replace(access, key_credential=name)


def secret_words(kind: Secret) -> str:
    """What a secret is, in a DBA's words (for hints and a script's :setvar lines)."""
    return {
        Secret.SAS: "SAS token (read and list on the container, without the leading ?)",
        Secret.STORAGE_KEY: "storage account key",
        Secret.S3_KEYS: "S3 access key id and secret key, as ID:SECRET",
    }[kind]


def s3_host(endpoint: str, region: str = "us-east-1") -> str:
    """`host[:port]` of the S3 endpoint SQL Server is to reach; AWS's regional endpoint without one."""
    if not endpoint:
        return f"s3.{region}.amazonaws.com"
    parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    return parts.netloc.rsplit("@", 1)[-1]


def _s3(loc: Location, access: SourceAccess, target: TargetView) -> Mapped:
    host = s3_host(access.endpoint)
    url = f"s3://{host}/{loc.bucket}/{quote(loc.path, safe='/')}"
    found = _s3_device(url, f"s3://{host}/{loc.bucket}", target, access)
    if access.endpoint.lower().startswith("http://"):
        found = Mapped(
            found.device,
            found.credential,
            (
                *found.findings,
                _f(
                    "s3-endpoint-http",
                    f"SQL Server reaches S3-compatible storage over HTTPS only, and the store's "
                    f"endpoint is '{access.endpoint}'",
                    "serve the endpoint over TLS with a certificate the target's host trusts",
                    url,
                    severity=Severity.WARNING,
                ),
            ),
        )
    return found


def _s3_device(url: str, bucket_url: str, target: TargetView, access: SourceAccess | None = None) -> Mapped:
    if 0 < target.major < 16:
        year = _YEARS.get(target.major, str(target.major))
        return Mapped(
            Device(url),
            findings=(
                _f(
                    "s3-needs-2022",
                    f"SQL Server {year} cannot read S3 storage ('{url}'): RESTORE FROM URL = "
                    "'s3://...' needs SQL Server 2022 or later",
                    "restore onto SQL Server 2022 or later, or copy the backups to a share or disk the "
                    "target reads and map them with --backup-path-as",
                    url,
                ),
            ),
        )
    cred = Credential(bucket_url, S3_IDENTITY, Secret.S3_KEYS)
    return Mapped(
        Device(url),
        cred,
        tuple(_credential_findings(cred, access or SourceAccess(Location(StoreKind.S3)), target, url)),
    )


def unc_path(loc: Location) -> str:
    parts = [loc.host, loc.share, *[p for p in loc.path.split("/") if p]]
    return "\\\\" + "\\".join(parts)


def _smb(loc: Location, target: TargetView) -> Mapped:
    path = unc_path(loc)
    if target.platform is Platform.LINUX:
        return Mapped(Device(path), findings=(_unc_on_linux(path),))
    found: list[Finding] = []
    if loc.port not in (None, 445):
        found.append(
            _f(
                "unc-port",
                f"the share is reached on port {loc.port}, but a UNC path '{path}' reaches port 445 only",
                "map the share to what the target reads with --backup-path-as",
                path,
                severity=Severity.WARNING,
            )
        )
    return Mapped(Device(path), findings=tuple(found))


def _unc_on_linux(path: str) -> Finding:
    return _f(
        "unc-on-linux",
        f"the target runs SQL Server on Linux, which cannot read the UNC path '{path}'",
        "mount the share on the target's host (mount -t cifs) and map it: --backup-path-as "
        "smb://HOST/SHARE=/mnt/share",
        path,
    )


def _f(code: str, message: str, hint: str, file: str, *, severity: Severity = Severity.ERROR) -> Finding:
    return Finding(code, severity, message, hint, (file,))


# -- many files -----------------------------------------------------------------------------------------


def credentials_of(mapped: Sequence[Mapped]) -> list[Credential]:
    """The distinct credentials the devices need, first seen first."""
    out: dict[str, Credential] = {}
    for m in mapped:
        if m.credential is not None:
            out.setdefault(m.credential.name.casefold(), m.credential)
    return list(out.values())


def findings_of(mapped: Sequence[Mapped]) -> list[Finding]:
    """The devices' findings, one per code and message (the same refusal for many files is said once, with
    every file)."""
    merged: dict[tuple[str, str], Finding] = {}
    for m in mapped:
        for f in m.findings:
            key = (f.code, re.sub(r"'[^']*'", "'...'", f.message))
            known = merged.get(key)
            merged[key] = (
                f
                if known is None
                else Finding(known.code, known.severity, known.message, known.hint, (*known.files, *f.files))
            )
    return [
        f
        if len(f.files) < 2
        else Finding(
            f.code, f.severity, f"{f.message} (and {len(f.files) - 1} more file(s) like it)", f.hint, f.files
        )
        for f in merged.values()
    ]
