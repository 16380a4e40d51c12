"""The restore model's device naming rules, as pure functions: which container URL a blob belongs to,
which credential names an S3 URL tries, how a UNC path splits, what counts as this machine."""

from __future__ import annotations

from tests.mssql_model.catalog import CredentialRow
from tests.mssql_model.devices import by_name, loopback, parse_blob_url, parse_s3_url, split_unc


def test_a_blob_url_names_its_container() -> None:
    azure = parse_blob_url("https://acct.blob.core.windows.net/backups/sql/db.bak")
    assert azure is not None and azure.container_url == "https://acct.blob.core.windows.net/backups"
    assert azure.account == "acct" and azure.blob == "sql/db.bak"
    emulator = parse_blob_url("http://127.0.0.1:10000/devstoreaccount1/backups/db.bak")
    assert emulator is not None and emulator.path_style
    assert emulator.container_url == "http://127.0.0.1:10000/devstoreaccount1/backups"
    assert parse_blob_url("https://acct.blob.core.windows.net/backups") is None  # no blob


def test_s3_credential_names_go_from_the_url_down_to_the_bucket() -> None:
    path = parse_s3_url("s3://10.0.0.5:9000/bucket/sql/rtc/db.bak")
    assert path is not None and not path.virtual_host and path.bucket == "bucket"
    assert path.candidates() == [
        "s3://10.0.0.5:9000/bucket/sql/rtc/db.bak",
        "s3://10.0.0.5:9000/bucket/sql/rtc",
        "s3://10.0.0.5:9000/bucket/sql",
        "s3://10.0.0.5:9000/bucket",
    ]
    virtual = parse_s3_url("s3://bucket.minio.example:9000/sql/db.bak")
    assert virtual is not None and virtual.virtual_host and virtual.bucket == "bucket"
    assert virtual.host == "minio.example" and virtual.candidates()[-1] == "s3://bucket.minio.example:9000"
    aws = parse_s3_url("s3://s3.eu-west-1.amazonaws.com/bucket/db.bak")
    assert aws is not None and not aws.virtual_host and aws.bucket == "bucket"


def test_credential_names_compare_without_case_and_nothing_else() -> None:
    name = "https://Acct.blob.core.windows.net/Backups"
    row = CredentialRow(1, name, "SHARED ACCESS SIGNATURE", "sv=x", "2026-01-01T00:00:00")
    assert by_name((row,), "https://acct.blob.core.windows.net/backups") is row
    assert by_name((row,), "https://acct.blob.core.windows.net/backups/") is None


def test_unc_paths_and_this_machine() -> None:
    assert split_unc("\\\\FILES\\share\\dir\\db.bak") == ("FILES", "share", "dir\\db.bak")
    assert split_unc("\\\\FILES\\share") == ("FILES", "share", "")
    assert split_unc("\\\\FILES") is None
    assert loopback("127.0.0.1") and loopback("localhost") and loopback("bucket.localhost")
    assert loopback("[::1]") and not loopback("10.0.0.5") and not loopback("acct.blob.core.windows.net")
