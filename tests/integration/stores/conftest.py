"""Session-wide store servers (Azurite, smbd, moto), each skipped with its reason when it cannot start
here; `.ci/run` installs all three, so none skips in CI. Each test gets its own container, folder or
bucket, named after a fresh uuid."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.integration.stores.servers import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    SMB_PASSWORD,
    Azurite,
    DropProxy,
    Moto,
    Samba,
    Unavailable,
)


def _start(server: Azurite | Samba | Moto, what: str) -> None:
    try:
        if isinstance(server, Samba):
            server.prepare()
        server.start()
    except (Unavailable, OSError) as exc:
        if os.environ.get("CI"):
            raise  # CI installs every server: a missing one is a failure there, not a skip
        pytest.skip(f"{what} cannot be started here: {exc}")


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    server = Azurite("azurite", tmp_path_factory.mktemp("azurite"))
    _start(server, "Azurite")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def samba(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Samba]:
    server = Samba("smbd", tmp_path_factory.mktemp("samba"))
    _start(server, "Samba (smbd)")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    server = Moto("moto", tmp_path_factory.mktemp("moto"))
    _start(server, "moto's S3 server")
    yield server
    server.stop()


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests of permanent errors need no long retry budget; tests that restart servers keep the default."""
    monkeypatch.setenv("FERRY_STORE_RETRY_SECONDS", "2")


def container_sas(container: str, permission: str, *, hours: float = 2.0) -> str:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    return generate_container_sas(
        AZURITE_ACCOUNT,
        container,
        account_key=AZURITE_KEY,
        permission=ContainerSasPermissions.from_string(permission),
        expiry=datetime.now(UTC) + timedelta(hours=hours),
    )


def new_container(azurite: Azurite, *, port: int | None = None) -> tuple[str, str]:
    """A fresh container; its blob URL with a read/list/write/create SAS, and its name."""
    from azure.storage.blob import BlobServiceClient

    name = f"t{uuid.uuid4().hex[:20]}"
    svc = BlobServiceClient(
        azurite.endpoint, credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY}
    )
    svc.create_container(name)
    svc.close()
    sas = container_sas(name, "racwdl")
    return f"http://127.0.0.1:{port or azurite.port}/{AZURITE_ACCOUNT}/{name}?{sas}", name


@pytest.fixture
def azure_env(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> Azurite:
    """`az://devstoreaccount1/...` reaches the emulator, with the account key from the environment."""
    monkeypatch.setenv("FERRY_AZURE_BLOB_ENDPOINT", azurite.endpoint)
    monkeypatch.setenv("AZURE_STORAGE_KEY", AZURITE_KEY)
    for var in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_ACCOUNT"):
        monkeypatch.delenv(var, raising=False)
    return azurite


@pytest.fixture
def smb_env(samba: Samba, monkeypatch: pytest.MonkeyPatch) -> Samba:
    monkeypatch.setenv("FERRY_SMB_PASSWORD", SMB_PASSWORD)
    return samba


def new_smb_folder(samba: Samba) -> str:
    name = f"t{uuid.uuid4().hex[:12]}"
    (samba.share_path / name).mkdir()
    return name


@pytest.fixture
def s3_env(moto: Moto, monkeypatch: pytest.MonkeyPatch) -> Moto:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    return moto


def new_bucket(moto: Moto, *, endpoint: str | None = None) -> str:
    import boto3

    name = f"t{uuid.uuid4().hex[:20]}"
    client = boto3.client(
        "s3", endpoint_url=endpoint or moto.endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    client.create_bucket(Bucket=name)
    client.close()
    return name


@pytest.fixture
def proxy_for() -> Iterator[Callable[[int], DropProxy]]:
    made: list[DropProxy] = []

    def make(port: int) -> DropProxy:
        p = DropProxy(port)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def upload_tree(put: Callable[[str, bytes], object], root: Path) -> int:
    """Every file below `root` through `put(key, data)`; the count."""
    n = 0
    for path in sorted(root.rglob("*")):
        if path.is_file():
            put(path.relative_to(root).as_posix(), path.read_bytes())
            n += 1
    return n
