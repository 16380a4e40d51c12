"""The one mapping from a store's file to what a SQL Server instance reads (devices.py): every store kind on
every supported version and platform, hostile blob names, --backup-path-as with any store location as
LOCAL, and the credentials' statements as Ferry shows them (never a secret)."""

from __future__ import annotations

from urllib.parse import unquote

import pytest

from ferry.core.errors import UsageError
from ferry.engines.sqlserver import devices as dv
from ferry.engines.sqlserver.devices import Mapped, PathMap, Platform, SourceAccess, TargetView, map_file
from ferry.stores.location import parse_location

SIG = "sig=SECRETSIGNATURE%3D"
SAS = f"sv=2022-11-02&sp=rl&se=2030-01-01T00%3A00%3A00Z&sr=c&{SIG}"
KEY = "QUNDT1VOVEtFWQ=="
S3_KEYS = "AKIDEXAMPLE:s3cr3tKey"
MAJORS = (11, 12, 13, 15, 16)
PLATFORMS = (Platform.WINDOWS, Platform.LINUX)


def _access(location: str, **over: object) -> SourceAccess:
    base: dict[str, object] = dict(sas=SAS, account_key=KEY, s3_keys=S3_KEYS)
    base.update(over)
    return SourceAccess(parse_location(location), **base)  # type: ignore[arg-type]


def _view(major: int, platform: Platform | None = Platform.WINDOWS, **over: object) -> TargetView:
    return TargetView(major, platform, can_alter_credentials=True, **over)  # type: ignore[arg-type]


def _codes(m: Mapped) -> list[str]:
    return [f.code for f in m.findings]


def _no_secret(text: str) -> None:
    for secret in ("SECRETSIGNATURE", KEY, "s3cr3tKey", "sig="):
        assert secret not in text


@pytest.mark.parametrize("major", MAJORS)
@pytest.mark.parametrize("platform", PLATFORMS)
def test_local_folder_is_read_at_its_own_path(major: int, platform: Platform, tmp_path: object) -> None:
    m = map_file(_access(str(tmp_path)), "db/full.bak", _view(major, platform))
    assert m.device.path == f"{tmp_path}/db/full.bak" and not m.device.is_url
    assert m.credential is None and m.findings == ()


@pytest.mark.parametrize("major", MAJORS)
@pytest.mark.parametrize("platform", PLATFORMS)
def test_azure_block_blobs(major: int, platform: Platform) -> None:
    m = map_file(_access("az://acct/bkp/pre"), "db/full.bak", _view(major, platform), blob_type="BlockBlob")
    url = "https://acct.blob.core.windows.net/bkp/pre/db/full.bak"
    assert m.device.path == url and m.device.is_url and "?" not in m.device.path
    if major in (11, 12):
        assert _codes(m) == ["block-blobs"] and m.credential is None
        assert "2016 or later" in m.findings[0].hint
        return
    assert m.findings == () and m.credential is not None
    assert m.credential.name == "https://acct.blob.core.windows.net/bkp"  # exactly the container's URL
    assert m.credential.identity == "SHARED ACCESS SIGNATURE" and m.with_credential is None


@pytest.mark.parametrize("major", MAJORS)
@pytest.mark.parametrize("platform", PLATFORMS)
def test_azure_page_blobs_use_a_key_credential_named_in_the_restore(major: int, platform: Platform) -> None:
    m = map_file(_access("az://acct/bkp"), "x.bak", _view(major, platform), blob_type="PageBlob")
    assert m.device.path == "https://acct.blob.core.windows.net/bkp/x.bak"
    if platform is Platform.LINUX:  # SQL Server on Linux reads block blobs through SAS only
        assert _codes(m) == ["page-blob-on-linux"] and m.credential is None
        return
    assert m.findings == () and m.credential is not None
    assert m.credential.identity == "acct" and m.with_credential == m.credential.name
    given = map_file(
        _access("az://acct/bkp", key_credential="mykey"), "x.bak", _view(major), blob_type="page"
    )
    assert given.with_credential == "mykey"


@pytest.mark.parametrize("major", (11, 12))
def test_old_targets_warn_when_the_blob_type_is_unknown(major: int) -> None:
    m = map_file(_access("az://acct/bkp"), "x.bak", _view(major))
    assert _codes(m) == ["blob-types-unknown"] and m.with_credential is not None


def test_append_blobs_are_refused() -> None:
    m = map_file(_access("az://acct/bkp"), "x.bak", _view(16), blob_type="AppendBlob")
    assert _codes(m) == ["append-blob"]


@pytest.mark.parametrize("major", MAJORS)
@pytest.mark.parametrize("platform", PLATFORMS)
def test_s3_needs_2022(major: int, platform: Platform) -> None:
    access = _access("s3://bucket/pre", endpoint="https://minio.example:9000")
    m = map_file(access, "db/full.bak", _view(major, platform))
    assert m.device.path == "s3://minio.example:9000/bucket/pre/db/full.bak" and m.device.is_url
    if major < 16:
        assert _codes(m) == ["s3-needs-2022"] and m.credential is None
        return
    assert m.findings == () and m.credential is not None
    # https://learn.microsoft.com/sql/t-sql/statements/create-credential-transact-sql (example F)
    assert m.credential.name == "s3://minio.example:9000/bucket"
    assert m.credential.identity == "S3 Access Key" and m.with_credential is None


def test_s3_on_aws_and_over_http() -> None:
    aws = map_file(_access("s3://bucket"), "a.bak", _view(16))
    assert aws.device.path == "s3://s3.us-east-1.amazonaws.com/bucket/a.bak"
    http = map_file(_access("s3://bucket", endpoint="http://127.0.0.1:5000"), "a.bak", _view(16))
    assert http.device.path == "s3://127.0.0.1:5000/bucket/a.bak" and _codes(http) == ["s3-endpoint-http"]


@pytest.mark.parametrize("major", MAJORS)
@pytest.mark.parametrize("platform", PLATFORMS)
def test_smb_shares(major: int, platform: Platform) -> None:
    m = map_file(_access("smb://ferry@files/backups/sql"), "db/full.bak", _view(major, platform))
    assert m.device.path == r"\\files\backups\sql\db\full.bak" and not m.device.is_url
    if platform is Platform.LINUX:
        assert _codes(m) == ["unc-on-linux"] and "--backup-path-as" in m.findings[0].hint
    else:
        assert m.findings == ()
    mount = PathMap.parse("smb://files/backups=/mnt/backups")
    mapped = map_file(_access("smb://files/backups/sql"), "db/full.bak", _view(major, platform), [mount])
    assert mapped.device.path == "/mnt/backups/sql/db/full.bak" and mapped.findings == ()


def test_platform_unknown_means_windows_only_before_2017() -> None:
    assert TargetView(12).on_windows and TargetView(13).on_windows and not TargetView(15).on_windows


HOSTILE = ["it's a #1?.bak", "50% off/x.bak", "données/année 2024.bak", "a+b&c=d;e.bak", "tab\tname.bak"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_blob_names_stay_part_of_the_name(name: str) -> None:
    m = map_file(_access("az://acct/bkp"), name, _view(16), blob_type="BlockBlob")
    url = m.device.path
    assert url.startswith("https://acct.blob.core.windows.net/bkp/")
    assert not any(c in url for c in " '#?%\t" if c != "%") and "?" not in url
    assert unquote(url.split("/bkp/", 1)[1]) == name
    assert m.device.clause() == f"URL = N'{url}'"  # nothing to double inside N'...'


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_on_disk_and_shares(name: str) -> None:
    m = map_file(_access("/srv/bk"), name, _view(16))
    assert m.device.path == "/srv/bk/" + name
    assert m.device.clause() == "DISK = N'" + m.device.path.replace("'", "''") + "'"
    unc = map_file(_access("smb://h/s"), name, _view(16))
    assert unc.device.path == "\\\\h\\s\\" + name.replace("/", "\\")


def test_emulator_and_sas_url_sources() -> None:
    emu = _access(
        "http://127.0.0.1:10000/devstoreaccount1/bkp?" + SAS,
        endpoint="http://127.0.0.1:10000/devstoreaccount1",
    )
    m = map_file(emu, "db/x y.bak", _view(16), blob_type="BlockBlob")
    assert m.device.path == "http://127.0.0.1:10000/devstoreaccount1/bkp/db/x%20y.bak"
    assert m.credential is not None and m.credential.name == "http://127.0.0.1:10000/devstoreaccount1/bkp"
    url = _access(f"https://acct.blob.core.windows.net/bkp/prefix?{SAS}")
    d = map_file(url, "db/x.bak", _view(16), blob_type="BlockBlob")
    assert d.device.path == "https://acct.blob.core.windows.net/bkp/prefix/db/x.bak"
    _no_secret(d.device.clause())


def test_credential_missing_when_ferry_may_not_create_it() -> None:
    view = TargetView(16, Platform.WINDOWS, can_alter_credentials=False)
    m = map_file(_access("az://acct/bkp"), "x.bak", view, blob_type="BlockBlob")
    assert _codes(m) == ["url-credential-missing"]
    f = m.findings[0]
    assert "ALTER ANY CREDENTIAL" in f.message and "$(FERRY_SAS)" in f.hint
    _no_secret(f.message + f.hint)
    have = TargetView(
        16, can_alter_credentials=False, credentials=("HTTPS://ACCT.blob.core.windows.net/bkp",)
    )
    assert map_file(_access("az://acct/bkp"), "x.bak", have, blob_type="BlockBlob").findings == ()
    none = map_file(_access("az://acct/bkp", sas=""), "x.bak", _view(16), blob_type="BlockBlob")
    assert _codes(none) == ["url-credential-missing"] and "no SAS token" in none.findings[0].message


def test_credential_statements_shown_and_real() -> None:
    m = map_file(_access("az://acct/bkp"), "x.bak", _view(16), blob_type="BlockBlob")
    assert m.credential is not None
    shown = m.credential.shown
    assert shown == (
        "CREATE CREDENTIAL [https://acct.blob.core.windows.net/bkp] WITH IDENTITY = N'SHARED ACCESS "
        "SIGNATURE', SECRET = N'$(FERRY_SAS)'"
    )
    real = m.credential.statement("a'b", alter=True)
    assert real.startswith("ALTER CREDENTIAL") and "N'a''b'" in real


@pytest.mark.parametrize(
    ("mapping", "local", "target"),
    [
        (
            "az://acct/bkp=https://o.blob.core.windows.net/bkp",
            "az://acct/bkp",
            "https://o.blob.core.windows.net/bkp",
        ),
        (
            f"https://acct.blob.core.windows.net/bkp?{SAS}=D:\\bk",
            "https://acct.blob.core.windows.net/bkp",
            "D:\\bk",
        ),
        ("smb://files/share/sql=/mnt/sql", "smb://files/share/sql", "/mnt/sql"),
        ("s3://bucket/p=\\\\fs\\p", "s3://bucket/p", "\\\\fs\\p"),
    ],
)
def test_path_maps_parse_store_locations(mapping: str, local: str, target: str) -> None:
    m = PathMap.parse(mapping)
    assert m.local_text == local and m.target == target
    _no_secret(m.text)


def test_path_maps_compare_parsed_locations() -> None:
    maps = [PathMap.parse("az://acct/bkp=D:\\bk"), PathMap.parse("az://acct/bkp/deep=E:\\deep")]
    # The same container by its blob URL, with a SAS: the longest matching mapping wins.
    src = _access(f"https://acct.blob.core.windows.net/bkp?{SAS}")
    assert map_file(src, "deep/a b.bak", _view(16), maps).device.path == "E:\\deep\\a b.bak"
    assert map_file(src, "db/x.bak", _view(16), maps).device.path == "D:\\bk\\db\\x.bak"
    assert map_file(_access("az://acct/other"), "x.bak", _view(16), maps).device.is_url  # not that container
    to_url = [PathMap.parse("/srv/bk=https://acct.blob.core.windows.net/bkp")]
    m = map_file(_access("/srv/bk"), "db/x y.bak", _view(16), to_url)
    assert m.device.path == "https://acct.blob.core.windows.net/bkp/db/x%20y.bak"
    assert m.credential is not None and m.credential.name == "https://acct.blob.core.windows.net/bkp"
    assert map_file(_access("/srv/bkX"), "a.bak", _view(16), to_url).device.path == "/srv/bkX/a.bak"


def test_bad_path_maps() -> None:
    for bad in ("nothing", "=x", "/a="):
        with pytest.raises(UsageError):
            PathMap.parse(bad)


def test_many_files_one_finding_and_distinct_credentials() -> None:
    access = _access("az://acct/bkp")
    mapped = [map_file(access, f"s{i}.bak", _view(12), blob_type="BlockBlob") for i in range(3)]
    found = dv.findings_of(mapped)
    assert [f.code for f in found] == ["block-blobs"] and len(found[0].files) == 3
    ok = [map_file(access, f"s{i}.bak", _view(16), blob_type="BlockBlob") for i in range(3)]
    assert [c.name for c in dv.credentials_of(ok)] == ["https://acct.blob.core.windows.net/bkp"]


def test_a_login_that_cannot_see_credentials_leaves_it_to_the_read_check() -> None:
    blind = TargetView(16, Platform.LINUX, can_alter_credentials=False, sees_credentials=False)
    m = map_file(_access("az://acct/bkp"), "x.bak", blind, blob_type="BlockBlob")
    assert _codes(m) == ["url-credential-unseen"] and m.findings[0].severity.value == "warning"
    assert "$(FERRY_SAS)" in m.findings[0].hint
    _no_secret(m.findings[0].message + m.findings[0].hint)
