"""One parser for every location, and secrets that never show."""

from __future__ import annotations

import sys

import pytest

from ferry.core.errors import UsageError
from ferry.stores.errors import MissingExtra
from ferry.stores.location import Location, StoreKind, parse_location, redact, redact_text
from ferry.stores.registry import open_store

SAS = "sv=2021-08-06&ss=b&srt=co&sp=rl&se=2030-01-01T00:00:00Z&sig=AbCd%2BSecret%3D"


def test_local_paths_and_file_urls() -> None:
    assert parse_location("/var/backups") == Location(StoreKind.LOCAL, path="/var/backups")
    assert parse_location("relative/dir").path == "relative/dir"
    assert parse_location("file:///mnt/b%20c").path == "/mnt/b c"
    assert parse_location(r"C:\backups").kind is StoreKind.LOCAL
    with pytest.raises(UsageError):
        parse_location("file://otherhost/share")


def test_az_urls() -> None:
    loc = parse_location("az://myaccount/sqlbackups/prod/sql01/")
    assert (loc.kind, loc.account, loc.container, loc.path, loc.endpoint) == (
        StoreKind.AZURE, "myaccount", "sqlbackups", "prod/sql01", "",
    )  # fmt: skip
    assert str(loc) == "az://myaccount/sqlbackups/prod/sql01"
    assert parse_location("az://myaccount/c-1").path == ""
    for bad in ("az://My_Account/c", "az://acct/Bad_Container", "az://acct", "az://acct/c/../x"):
        with pytest.raises(UsageError) as exc:
            parse_location(bad)
        assert exc.value.hint


def test_portal_blob_url_and_emulator_url() -> None:
    loc = parse_location(f"https://myaccount.blob.core.windows.net/sqlbackups/sql01?{SAS}")
    assert (loc.account, loc.container, loc.path) == ("myaccount", "sqlbackups", "sql01")
    assert loc.endpoint == "https://myaccount.blob.core.windows.net" and loc.sas == SAS
    assert "AbCd" not in str(loc) and "AbCd" not in repr(loc) and "sig=***" in str(loc)
    emu = parse_location(f"http://127.0.0.1:10000/devstoreaccount1/c01/a/b?{SAS}")
    assert (emu.account, emu.container, emu.path) == ("devstoreaccount1", "c01", "a/b")
    assert emu.endpoint == "http://127.0.0.1:10000/devstoreaccount1"
    with pytest.raises(UsageError) as exc:
        parse_location("https://example.com/some/page")
    assert "blob" in str(exc.value)


def test_smb_urls() -> None:
    loc = parse_location("smb://CORP;dba:pa%3Bss@fs01.corp:4450/Backups/SQL 01/full")
    assert (loc.domain, loc.user, loc.password, loc.host, loc.port, loc.share, loc.path) == (
        "CORP", "dba", "pa;ss", "fs01.corp", 4450, "Backups", "SQL 01/full",
    )  # fmt: skip
    assert "pa" not in str(loc).split("@")[0].split(";")[1] and "dba:***@" in str(loc)
    assert "pa;ss" not in repr(loc)
    assert parse_location("smb://fs01/share").user == ""
    with pytest.raises(UsageError):
        parse_location("smb://fs01/")


def test_s3_urls_and_unknown_schemes() -> None:
    loc = parse_location("s3://my-bucket/prod/sql")
    assert (loc.bucket, loc.path, str(loc)) == ("my-bucket", "prod/sql", "s3://my-bucket/prod/sql")
    with pytest.raises(UsageError) as exc:
        parse_location("ftp://user:hunter2@host/x")
    assert "ftp" in str(exc.value) and "hunter2" not in str(exc.value)


def test_child_and_parent() -> None:
    loc = parse_location("az://acct/cont/a")
    assert loc.child("b/c.bak").path == "a/b/c.bak" and loc.child("b/c.bak").parent().path == "a/b"
    assert loc.child("b/c.bak").name == "c.bak"
    with pytest.raises(UsageError):
        loc.child("../x")


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("smb://dba:hunter2@fs01/share", "hunter2"),
        ("https://user:p%40ss@example.com/x", "p%40ss"),
        (f"https://a.blob.core.windows.net/c?{SAS}", "AbCd%2BSecret%3D"),
        ("https://x/y?token=abc123&other=1", "abc123"),
        ("https://x/y?password=abc123", "abc123"),
        ("https://x/y?Secret=abc123", "abc123"),
        ("https://x/y?key=abc123", "abc123"),
        ("https://s3/b/k?X-Amz-Signature=abc123&X-Amz-Credential=AKIA", "abc123"),
        ("https://x/y?client_secret=abc123", "abc123"),
    ],
)
def test_redact_masks_every_secret(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out and "***" in out
    assert redact_text(f"cannot read '{text}': refused") == f"cannot read '{out}': refused"


def test_redact_keeps_what_is_not_secret() -> None:
    assert redact("az://acct/cont/prefix") == "az://acct/cont/prefix"
    assert redact(f"https://a.blob.core.windows.net/c?{SAS}").startswith(
        "https://a.blob.core.windows.net/c?sv=2021-08-06&ss=b&srt=co&sp=rl&se=2030-01-01T00:00:00Z&sig=***"
    )


def test_redact_text_masks_connection_strings_and_pairs() -> None:
    text = (
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0a2V5;EndpointSuffix=core.windows.net"
        " and SharedAccessSignature=sv=1&sig=zzz and password=hunter2"
    )
    out = redact_text(text)
    assert "c2VjcmV0a2V5" not in out and "zzz" not in out and "hunter2" not in out
    assert "AccountName=acct" in out


def test_missing_extra_names_the_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for module, url, extra in (
        ("azure.storage.blob", "az://acct/cont", "azure"),
        ("smbclient", "smb://u@h/share", "smb"),
        ("boto3", "s3://bucket", "s3"),
    ):
        monkeypatch.setitem(sys.modules, module, None)
        with pytest.raises(MissingExtra) as exc:
            open_store(url)
        assert f"pip install 'ferry-migrate[{extra}]'" in exc.value.hint
