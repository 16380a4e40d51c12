"""The restore model reads backup devices the way SQL Server does, and refuses what SQL Server refuses:
Azure blobs (Azurite) through a SAS credential named after the container or a storage-account-key
credential, S3 objects (moto) on SQL Server 2022, UNC paths (Samba) on Windows; each failure is the error
SQL Server gives. The real pymssql client talks to the model (tests/mssql_model/README.md, rules list)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymssql
import pytest

from tests.conftest import corpus_root
from tests.integration.stores.conftest import container_sas, new_bucket, new_container
from tests.integration.stores.servers import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    SMB_PASSWORD,
    SMB_USER,
    Azurite,
    Moto,
    Samba,
)
from tests.mssql_model.server import ModelServer
from tests.mssql_model.testing import LOGINS, PASSWORDS, error_number, moves, run, start_model

RTC_FILE = "RestoreTimeClean/RestoreTimeClean.bak"
RTC_MOVE = moves("RestoreTimeClean", "RestoreTimeClean_log", "rtc")
WINDOWS_DATA = "C:\\Program Files\\Microsoft SQL Server\\MSSQL15.MSSQLSERVER\\MSSQL\\DATA"
WINDOWS_MOVE = (
    f"MOVE N'RestoreTimeClean' TO N'{WINDOWS_DATA}\\rtc.mdf', "
    f"MOVE N'RestoreTimeClean_log' TO N'{WINDOWS_DATA}\\rtc_log.ldf'"
)
EXTRA = {"keeper": "Keep3r-pw", "viewer": "View3r-pw"}
ALL_LOGINS = [*LOGINS, "keeper:Keep3r-pw:alter-any-credential", "viewer:View3r-pw:view-any-definition"]


@pytest.fixture
def corpus_file() -> Path:
    root = corpus_root()
    if root is None:
        pytest.skip("SQL Server backup corpus not found: set FERRY_SQLSERVER_CORPUS")
    return root / RTC_FILE


class Models:
    """Model instances made on demand, each with its own state folder; all stopped at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.made: list[ModelServer] = []

    def __call__(self, **options: Any) -> ModelServer:
        options.setdefault("logins", ALL_LOGINS)
        server = start_model(self.tmp / f"state{len(self.made)}", **options)
        self.made.append(server)
        return server


@pytest.fixture
def models(tmp_path: Path) -> Iterator[Models]:
    made = Models(tmp_path)
    yield made
    for server in made.made:
        server.stop()


def cursor(server: ModelServer, user: str = "sa") -> Any:
    password = PASSWORDS.get(user) or EXTRA[user]
    conn = pymssql.connect(server="127.0.0.1", port=server.port, user=user, password=password,
                           autocommit=True, login_timeout=10, timeout=60)  # fmt: skip
    return conn.cursor()


def failure(cur: Any, sql: str) -> tuple[int, str]:
    """The error number a statement fails with, and the text of everything the server said."""
    with pytest.raises(pymssql.DatabaseError) as info:
        cur.execute(sql)
    return error_number(info.value), str(info.value)


def os_error(cur: Any, sql: str) -> int:
    """The operating system error of a 3201 failure."""
    number, text = failure(cur, sql)
    assert number == 3201, text
    return int(text.split("Operating system error ")[1].split("(")[0])


# -- Azure Blob Storage ------------------------------------------------------------------------------------
def upload(azurite: Azurite, container: str, name: str, data: bytes, *, page: bool = False) -> str:
    from azure.storage.blob import BlobServiceClient, BlobType

    svc = BlobServiceClient.from_connection_string(azurite.connection_string)
    blob = svc.get_blob_client(container, name)
    if page:
        data += b"\0" * (-len(data) % 512)  # page blobs are whole 512-byte pages
        blob.upload_blob(data, blob_type=BlobType.PAGEBLOB, overwrite=True)
    else:
        blob.upload_blob(data, blob_type=BlobType.BLOCKBLOB, overwrite=True)
    svc.close()
    return f"{azurite.endpoint}/{container}/{name}"


def sas_credential(cur: Any, name: str, token: str) -> None:
    run(cur, f"CREATE CREDENTIAL [{name}] WITH IDENTITY = 'SHARED ACCESS SIGNATURE', SECRET = '{token}'")


def key_credential(cur: Any, name: str, key: str = AZURITE_KEY) -> None:
    run(cur, f"CREATE CREDENTIAL [{name}] WITH IDENTITY = '{AZURITE_ACCOUNT}', SECRET = '{key}'")


def test_block_blobs_through_the_sas_credential_named_after_the_container(
    models: Models, azurite: Azurite, corpus_file: Path
) -> None:
    _, container = new_container(azurite)
    url = upload(azurite, container, "rtc/RestoreTimeClean.bak", corpus_file.read_bytes())
    base = f"{azurite.endpoint}/{container}"
    cur = cursor(models())
    assert os_error(cur, f"RESTORE LABELONLY FROM URL = N'{url}'") == 50  # no credential
    sas_credential(cur, f"{base}/", container_sas(container, "rl"))  # a trailing slash is another name
    sas_credential(cur, f"{base}/rtc", container_sas(container, "rl"))  # below the container: not matched
    sas_credential(cur, azurite.endpoint, container_sas(container, "rl"))  # the account: not matched
    assert os_error(cur, f"RESTORE HEADERONLY FROM URL = N'{url}'") == 50
    sas_credential(cur, base.upper().replace("HTTP://", "http://"), container_sas(container, "w"))
    assert os_error(cur, f"RESTORE HEADERONLY FROM URL = N'{url}'") == 5  # the service refuses the SAS
    run(cur, f"DROP CREDENTIAL [{base.upper().replace('HTTP://', 'http://')}]")
    sas_credential(cur, base, "?" + container_sas(container, "rl"))  # the leading ? of a SAS URL: wrong
    assert os_error(cur, f"RESTORE HEADERONLY FROM URL = N'{url}'") == 5
    run(cur, f"DROP CREDENTIAL [{base}]")
    sas_credential(cur, base, container_sas(container, "rl"))
    assert run(cur, f"RESTORE HEADERONLY FROM URL = N'{url}'")[0][9] == "RestoreTimeClean"
    assert [r[0] for r in run(cur, f"RESTORE FILELISTONLY FROM URL = N'{url}'")] == [
        "RestoreTimeClean", "RestoreTimeClean_log",
    ]  # fmt: skip
    assert run(cur, f"RESTORE LABELONLY FROM URL = N'{url}'")[0][2] == 1
    cur.execute(f"RESTORE VERIFYONLY FROM URL = N'{url}'")
    number, text = failure(cur, f"RESTORE HEADERONLY FROM URL = N'{url}' WITH MEDIAPASSWORD = 'x'")
    assert number == 3279, text  # the media password rule holds for URLs too
    run(cur, f"RESTORE DATABASE [FromBlob] FROM URL = N'{url}' WITH {RTC_MOVE}")
    assert run(cur, "SELECT state_desc FROM sys.databases WHERE name = N'FromBlob'") == [("ONLINE",)]
    missing = f"{base}/rtc/missing.bak"
    assert os_error(cur, f"RESTORE HEADERONLY FROM URL = N'{missing}'") == 2
    tls = base.replace("http://", "https://")  # Azurite speaks no TLS: the handshake fails
    sas_credential(cur, tls, container_sas(container, "rl"))
    assert os_error(cur, f"RESTORE HEADERONLY FROM URL = N'{tls}/rtc/RestoreTimeClean.bak'") == 12175
    number, text = failure(cur, "RESTORE HEADERONLY FROM DISK = N'/x.bak' WITH CREDENTIAL = 'k'")
    assert number == 3032, text


def test_a_page_blob_needs_the_account_key_and_with_credential(
    models: Models, azurite: Azurite, corpus_file: Path
) -> None:
    _, container = new_container(azurite)
    data = corpus_file.read_bytes()
    page = upload(azurite, container, "page.bak", data, page=True)
    block = upload(azurite, container, "block.bak", data)
    cur = cursor(models(platform="windows"))
    sas_credential(cur, f"{azurite.endpoint}/{container}", container_sas(container, "rl"))
    assert os_error(cur, f"RESTORE HEADERONLY FROM URL = N'{page}'") == 50  # SAS reads block blobs only
    number, text = failure(
        cur, f"RESTORE HEADERONLY FROM URL = N'{block}' WITH CREDENTIAL = '{azurite.endpoint}/{container}'"
    )
    assert number == 3225, text  # WITH CREDENTIAL never names a SAS credential
    assert os_error(cur, f"RESTORE HEADERONLY FROM URL = N'{page}' WITH CREDENTIAL = 'nothing'") == 50
    key_credential(cur, "wrongkey", "d3Jvbmcga2V5IHdyb25nIGtleSB3cm9uZyBrZXk=")
    assert os_error(cur, f"RESTORE HEADERONLY FROM URL = N'{page}' WITH CREDENTIAL = 'wrongkey'") == 86
    key_credential(cur, "azkey")
    assert os_error(cur, f"RESTORE HEADERONLY FROM URL = N'{block}' WITH CREDENTIAL = 'azkey'") == 50
    for form in ("HEADERONLY", "FILELISTONLY", "LABELONLY", "VERIFYONLY"):
        cur.execute(f"RESTORE {form} FROM URL = N'{page}' WITH CREDENTIAL = 'azkey'")
        if form != "VERIFYONLY":
            assert cur.fetchall()
    run(cur, f"RESTORE DATABASE [FromPage] FROM URL = N'{page}' WITH CREDENTIAL = 'azkey', {WINDOWS_MOVE}")
    assert run(cur, "SELECT state_desc FROM sys.databases WHERE name = N'FromPage'") == [("ONLINE",)]
    linux = cursor(models())  # SQL Server on Linux: block blobs through SAS only
    key_credential(linux, "azkey")
    assert os_error(linux, f"RESTORE HEADERONLY FROM URL = N'{page}' WITH CREDENTIAL = 'azkey'") == 50


def test_sql_server_2014_reads_one_page_blob_through_a_key_credential(
    models: Models, azurite: Azurite, corpus_file: Path
) -> None:
    _, container = new_container(azurite)
    data = corpus_file.read_bytes()
    page = upload(azurite, container, "page.bak", data, page=True)
    block = upload(azurite, container, "block.bak", data)
    cur = cursor(models(version="12.0.2000.8", platform="windows"))
    sas_credential(cur, f"{azurite.endpoint}/{container}", container_sas(container, "rl"))
    assert os_error(cur, f"RESTORE HEADERONLY FROM URL = N'{block}'") == 50  # no SAS before 2016
    key_credential(cur, "azkey")
    assert os_error(cur, f"RESTORE HEADERONLY FROM URL = N'{block}' WITH CREDENTIAL = 'azkey'") == 50
    assert run(cur, f"RESTORE HEADERONLY FROM URL = N'{page}' WITH CREDENTIAL = 'azkey'")[0][9]
    number, text = failure(
        cur, f"RESTORE HEADERONLY FROM URL = N'{page}', URL = N'{page}' WITH CREDENTIAL = 'azkey'"
    )
    assert number == 3205 and "only 1 are allowed" in text


def test_no_url_devices_before_sql_server_2012_sp1_cu2(models: Models) -> None:
    for version in ("10.50.6000.34", "11.0.3000.0"):
        cur = cursor(models(version=version, platform="windows"))
        number, text = failure(
            cur, "RESTORE HEADERONLY FROM URL = N'https://a.blob.core.windows.net/c/x.bak'"
        )
        assert number == 102 and "'URL'" in text
    cur = cursor(models(version="11.0.3339.0", platform="windows"))  # SP1 CU2: a URL device, no credential
    assert os_error(cur, "RESTORE HEADERONLY FROM URL = N'https://a.blob.core.windows.net/c/x.bak'") == 50


# -- S3-compatible object storage --------------------------------------------------------------------------
def put_object(moto: Moto, bucket: str, key: str, data: bytes) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    client.put_object(Bucket=bucket, Key=key, Body=data)
    client.close()


def s3_credential(cur: Any, name: str, identity: str = "S3 Access Key") -> None:
    run(cur, f"CREATE CREDENTIAL [{name}] WITH IDENTITY = '{identity}', SECRET = 'testing:testing'")


def test_s3_urls_on_sql_server_2022(models: Models, moto: Moto, corpus_file: Path) -> None:
    bucket = new_bucket(moto)
    put_object(moto, bucket, "sql/rtc/RestoreTimeClean.bak", corpus_file.read_bytes())
    base = f"s3://127.0.0.1:{moto.port}/{bucket}"
    url = f"{base}/sql/rtc/RestoreTimeClean.bak"
    old = cursor(models(version="15.0.2000.5"))
    s3_credential(old, base)
    assert os_error(old, f"RESTORE HEADERONLY FROM URL = N'{url}'") == 50  # no S3 connector before 2022
    cur = cursor(models(version="16.0.1000.6"))
    assert os_error(cur, f"RESTORE HEADERONLY FROM URL = N'{url}'") == 50  # no credential
    s3_credential(cur, base)
    assert run(cur, f"RESTORE HEADERONLY FROM URL = N'{url}'")[0][9] == "RestoreTimeClean"
    s3_credential(cur, f"{base}/sql/rtc", identity="SHARED ACCESS SIGNATURE")
    assert os_error(cur, f"RESTORE HEADERONLY FROM URL = N'{url}'") == 50  # the most specific one is used
    run(cur, f"DROP CREDENTIAL [{base}/sql/rtc]")
    s3_credential(cur, f"{base}/sql")
    run(cur, f"RESTORE DATABASE [FromS3] FROM URL = N'{url}' WITH {RTC_MOVE}")
    assert run(cur, "SELECT state_desc FROM sys.databases WHERE name = N'FromS3'") == [("ONLINE",)]
    assert os_error(cur, f"RESTORE HEADERONLY FROM URL = N'{base}/sql/rtc/missing.bak'") == 2
    virtual = f"s3://{bucket}.localhost:{moto.port}"  # virtual host style: the bucket in the host name
    s3_credential(cur, virtual)
    assert run(cur, f"RESTORE LABELONLY FROM URL = N'{virtual}/sql/rtc/RestoreTimeClean.bak'")[0][2] == 1
    other = f"s3://127.0.0.1:{moto.port}/nobucket{uuid.uuid4().hex[:8]}"
    s3_credential(cur, other)
    assert os_error(cur, f"RESTORE HEADERONLY FROM URL = N'{other}/x.bak'") == 50  # no such bucket
    remote = f"s3://s3.eu-west-1.amazonaws.com/{bucket}"
    s3_credential(cur, remote)
    assert os_error(cur, f"RESTORE HEADERONLY FROM URL = N'{remote}/x.bak'") == 12029  # https only


# -- UNC paths ---------------------------------------------------------------------------------------------
def test_unc_paths_are_read_from_the_share_on_windows(
    models: Models, samba: Samba, corpus_file: Path
) -> None:
    folder = f"t{uuid.uuid4().hex[:12]}"
    (samba.share_path / folder).mkdir()
    (samba.share_path / folder / "rtc.bak").write_bytes(corpus_file.read_bytes())
    servers = {"FILESERVER": f"127.0.0.1:{samba.port}"}
    unc = f"\\\\FILESERVER\\{samba.share}\\{folder}\\rtc.bak"
    cur = cursor(models(platform="windows", smb_login=f"{SMB_USER}:{SMB_PASSWORD}", smb_servers=servers))
    assert run(cur, f"RESTORE HEADERONLY FROM DISK = N'{unc}'")[0][9] == "RestoreTimeClean"
    run(cur, f"RESTORE DATABASE [FromShare] FROM DISK = N'{unc}' WITH {WINDOWS_MOVE}")
    assert run(cur, "SELECT state_desc FROM sys.databases WHERE name = N'FromShare'") == [("ONLINE",)]
    assert (
        os_error(cur, f"RESTORE HEADERONLY FROM DISK = N'\\\\FILESERVER\\{samba.share}\\{folder}\\no.bak'")
        == 2
    )
    assert (
        os_error(cur, f"RESTORE HEADERONLY FROM DISK = N'\\\\FILESERVER\\{samba.share}\\nodir\\no.bak'") == 3
    )
    assert (
        os_error(cur, f"RESTORE HEADERONLY FROM DISK = N'\\\\FILESERVER\\noshare\\{folder}\\rtc.bak'") == 67
    )
    assert os_error(cur, f"RESTORE HEADERONLY FROM DISK = N'\\\\OTHERHOST\\{samba.share}\\rtc.bak'") == 53
    wrong = cursor(models(platform="windows", smb_login=f"{SMB_USER}:wrong", smb_servers=servers))
    assert os_error(wrong, f"RESTORE HEADERONLY FROM DISK = N'{unc}'") == 1326
    linux = cursor(models(smb_login=f"{SMB_USER}:{SMB_PASSWORD}", smb_servers=servers))
    assert os_error(linux, f"RESTORE HEADERONLY FROM DISK = N'{unc}'") == 53  # no UNC on Linux


# -- Platform and permissions ------------------------------------------------------------------------------
def test_the_platform_shows_in_version_and_host_info(models: Models) -> None:
    windows = cursor(models(platform="windows"))
    assert " on Windows Server " in run(windows, "SELECT @@VERSION")[0][0]
    assert run(windows, "SELECT host_platform FROM sys.dm_os_host_info") == [("Windows",)]
    assert run(windows, "SELECT SERVERPROPERTY('InstanceDefaultDataPath')")[0][0].startswith(
        "C:\\Program Files"
    )
    assert run(windows, "SELECT SERVERPROPERTY('PathSeparator')") == [("\\",)]
    linux = cursor(models())
    assert " on Linux " in run(linux, "SELECT @@VERSION")[0][0]
    assert run(linux, "SELECT SERVERPROPERTY('PathSeparator')") == [("/",)]
    assert run(linux, "SELECT host_platform, host_release, host_sku FROM sys.dm_os_host_info") == [
        ("Linux", "", None)
    ]
    old = cursor(models(version="13.0.1601.5", platform="windows"))
    assert failure(old, "SELECT host_platform FROM sys.dm_os_host_info")[0] == 208  # new in 2017


def test_credentials_need_alter_any_credential(models: Models) -> None:
    server = models()
    keeper, viewer, reader = cursor(server, "keeper"), cursor(server, "viewer"), cursor(server, "reader")
    run(keeper, "CREATE CREDENTIAL [https://a.blob.core.windows.net/c] WITH IDENTITY = "
                "'SHARED ACCESS SIGNATURE', SECRET = 'sv=x&sig=y'")  # fmt: skip
    assert run(keeper, "SELECT HAS_PERMS_BY_NAME(NULL, NULL, 'ALTER ANY CREDENTIAL')") == [(1,)]
    for who in (viewer, reader):
        number, _ = failure(who, "CREATE CREDENTIAL [x] WITH IDENTITY = 'y', SECRET = 'z'")
        assert number == 15247
        assert failure(who, "DROP CREDENTIAL [https://a.blob.core.windows.net/c]")[0] == 15247
        assert run(who, "SELECT HAS_PERMS_BY_NAME(NULL, NULL, 'ALTER ANY CREDENTIAL')") == [(0,)]
    assert run(keeper, "SELECT COUNT(*) FROM sys.credentials") == [(1,)]
    assert run(viewer, "SELECT COUNT(*) FROM sys.credentials") == [(1,)]  # VIEW ANY DEFINITION
    assert run(reader, "SELECT COUNT(*) FROM sys.credentials") == [(0,)]  # rows it may not see
    run(keeper, "ALTER CREDENTIAL [https://a.blob.core.windows.net/c] WITH IDENTITY = "
                "'SHARED ACCESS SIGNATURE', SECRET = 'sv=x&sig=z'")  # fmt: skip
    run(keeper, "DROP CREDENTIAL [https://a.blob.core.windows.net/c]")
