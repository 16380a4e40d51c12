"""The cells of the SQL Server store matrix: where the backups are (a local folder, Azure Blob through the
account key, page blobs, a SAS URL, an SMB share, S3) by which SQL Server reads them (2014 and 2016 on
Windows, 2019 and 2022 on Linux, as the restore model plays them), and what SQL Server's rules say each
cell must do: migrate, or be refused before anything touches the target, with the finding that says why.

The rules behind `refusal`, from Microsoft's documentation:
- SQL Server 2012 and 2014 read page blobs only, through a storage-key credential
  (https://learn.microsoft.com/previous-versions/sql/2014/relational-databases/backup-restore/sql-server-backup-to-url).
- SQL Server on Linux reads block blobs through a SAS credential only (docs/engines.md; the restore rules'
  [URL] source), and no UNC path: a share must be mounted there.
- S3-compatible storage needs SQL Server 2022
  (https://learn.microsoft.com/sql/relational-databases/backup-restore/sql-server-backup-to-url-s3-compatible-object-storage).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.integration.stores.conftest import new_bucket, new_container
from tests.integration.stores.servers import AZURITE_ACCOUNT, AZURITE_KEY, SMB_PASSWORD, SMB_USER

DB = "RestoreTimeClean"
FILES = ["RestoreTimeClean.bak", "RestoreTimeClean2.bak",
         "RestoreTimeClean2_1.trn", "RestoreTimeClean2_2.trn", "RestoreTimeClean2_3.trn"]  # fmt: skip
LAST_BACKUP = FILES[-1]
LAST_LSN = "25000000022000001"  # LastLSN of RestoreTimeClean2_3.trn
S3_KEY_ID = "FERRYMATRIXKEYID"
S3_SECRET = f"ferry-matrix-secret-{uuid.uuid4().hex}"  # moto takes any keys: this one is looked for in output
SOURCES = ("local", "az", "az-page", "sas", "smb", "s3")


@dataclass(frozen=True)
class Version:
    """A SQL Server the restore model plays."""

    name: str
    version: str
    platform: str

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def windows(self) -> bool:
        return self.platform == "windows"

    @property
    def store_path(self) -> str:
        """Where this target reads the local store: a folder of its own file system."""
        return "C:\\ferry-store" if self.windows else "/ferry-store"


VERSIONS = (
    Version("2014-windows", "12.0.2000.8", "windows"),
    Version("2016-windows", "13.0.1601.5", "windows"),
    Version("2019-linux", "15.0.2000.5", "linux"),
    Version("2022-linux", "16.0.1000.6", "linux"),
)


def refusal(source: str, target: Version) -> str | None:
    """The finding a cell is refused with, or None when it migrates."""
    if source in ("az", "sas") and target.major < 13:
        return "block-blobs"
    if source == "az-page" and not target.windows:
        return "page-blob-on-linux"
    if source == "smb" and not target.windows:
        return "unc-on-linux"
    if source == "s3" and target.major < 16:
        return "s3-needs-2022"
    return None


@dataclass
class Source:
    """One cell's store: the location given to Ferry, the environment Ferry needs to read it, the
    `--backup-path-as` mappings, and every secret that must never show in any output."""

    location: str
    env: dict[str, str]
    maps: list[str]
    secrets: list[str]


def model_options(source: str, target: Version, smb_port: int | None) -> dict[str, Any]:
    options: dict[str, Any] = {"version": target.version, "platform": target.platform}
    if source == "smb" and smb_port is not None:
        options["smb_login"] = f"{SMB_USER}:{SMB_PASSWORD}"
        options["smb_servers"] = {"127.0.0.1": f"127.0.0.1:{smb_port}"}
    return options


def link_store(state: Path, store: Path, target: Version) -> None:
    """Makes the local store visible in the model's file system where `target.store_path` says."""
    fs = state / "fs"
    link = fs / "C" / "ferry-store" if target.windows else fs / "ferry-store"
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(store, link)


def make_source(kind: str, files: list[Path], store: Path, target: Version, servers: Any) -> Source:
    """Puts `files` into a fresh store of `kind`; `servers` has `azurite`, `samba`, `moto` as needed."""
    if kind == "local":
        for f in files:
            (store / f.name).write_bytes(f.read_bytes())
        return Source(str(store), {}, [f"{store}={target.store_path}"], [])
    if kind in ("az", "az-page", "sas"):
        return _azure(kind, files, servers.azurite)
    if kind == "smb":
        folder = f"t{uuid.uuid4().hex[:12]}"
        (servers.samba.share_path / folder).mkdir()
        for f in files:
            (servers.samba.share_path / folder / f.name).write_bytes(f.read_bytes())
        return Source(servers.samba.url(folder), {"FERRY_SMB_PASSWORD": SMB_PASSWORD}, [], [SMB_PASSWORD])
    if kind == "s3":
        return _s3(files, servers.moto)
    raise ValueError(kind)


def _azure(kind: str, files: list[Path], azurite: Any) -> Source:
    from azure.storage.blob import BlobServiceClient, BlobType

    sas_url, container = new_container(azurite)
    svc = BlobServiceClient(
        azurite.endpoint, credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY}
    )
    blob_type = BlobType.PAGEBLOB if kind == "az-page" else BlobType.BLOCKBLOB
    for f in files:  # corpus backups are whole 512-byte sectors, as page blobs must be
        svc.get_blob_client(container, f"rtc/{f.name}").upload_blob(f.read_bytes(), blob_type=blob_type)
    svc.close()
    query = urlsplit(sas_url).query
    signature = parse_qs(query)["sig"][0]
    secrets = [AZURITE_KEY, signature, unquote(signature), query]
    if kind == "sas":
        base, _, _ = sas_url.partition("?")
        return Source(f"{base}/rtc?{query}", _no_azure_env(), [], secrets)
    env = {**_no_azure_env(), "FERRY_AZURE_BLOB_ENDPOINT": azurite.endpoint, "AZURE_STORAGE_KEY": AZURITE_KEY}
    return Source(f"az://{AZURITE_ACCOUNT}/{container}/rtc", env, [], secrets)


def _no_azure_env() -> dict[str, str]:
    return {var: "" for var in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_SAS_TOKEN",
                                "AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_KEY")}  # fmt: skip


def _s3(files: list[Path], moto: Any) -> Source:
    import boto3

    bucket = new_bucket(moto)
    client = boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1",
                          aws_access_key_id=S3_KEY_ID, aws_secret_access_key=S3_SECRET)  # fmt: skip
    for f in files:
        client.put_object(Bucket=bucket, Key=f"rtc/{f.name}", Body=f.read_bytes())
    client.close()
    env = {"AWS_ENDPOINT_URL": moto.endpoint, "AWS_ACCESS_KEY_ID": S3_KEY_ID,
           "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_PROFILE": "", "AWS_SESSION_TOKEN": ""}  # fmt: skip
    return Source(f"s3://{bucket}/rtc", env, [], [S3_SECRET])


def leaked(text: str, secrets: list[str]) -> list[str]:
    """The secrets that show in `text` (a short marker of each, never the secret itself)."""
    return [f"{s[:4]}…({len(s)} chars)" for s in secrets if s and s in text]


def environment(base: dict[str, str], source: Source) -> dict[str, str]:
    """`base` with the source's variables; an empty value removes a variable."""
    env = {**base, **source.env}
    return {k: v for k, v in env.items() if v != ""}
