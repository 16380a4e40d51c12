"""The credentials' life on the target (access.py): how long a minted SAS lives, when it is renewed, what
is created or altered, and that a refusal says a rerun will not help and shows no secret."""

from __future__ import annotations

from typing import Any

import pytest

from ferry.engines.sqlserver import access as acc
from ferry.engines.sqlserver.connection import ServerMessage, SqlError
from ferry.engines.sqlserver.devices import Credential, Secret, SourceAccess
from ferry.engines.sqlserver.target import CredentialRefused, Target
from ferry.stores.location import parse_location

TOKEN = "sv=2022-11-02&sp=rl&sig=SECRETSIG"


class _Conn:
    url = "mssql://ferry@sql02"

    def __init__(self, fail: bool = False) -> None:
        self.sql: list[str] = []
        self.fail = fail

    def execute(self, sql: str, what: str = "") -> list[Any]:
        self.sql.append(sql)
        if self.fail:
            raise SqlError(self.url, what, 15247, [ServerMessage(16, f"permission denied: {sql}")])
        return []


def _source(**over: Any) -> acc.Source:
    access = SourceAccess(parse_location("az://acct/bkp"), sas=TOKEN, **over)
    return acc.Source(access, store=None, hours=24.0)  # type: ignore[arg-type]


SAS_CRED = Credential("https://acct.blob.core.windows.net/bkp", "SHARED ACCESS SIGNATURE", Secret.SAS)
KEY_CRED = Credential("ferry_acct", "acct", Secret.STORAGE_KEY, named=True)


def test_a_minted_sas_lives_a_day_or_four_times_the_restore() -> None:
    assert acc.sas_hours(0) == 24.0
    assert acc.sas_hours(10 * 1024**3) == 24.0  # 10 GiB: 3.4 minutes at 50 MB/s
    big = 50 * 1024 * 1024 * 3600 * 10  # ten hours of reading
    assert acc.sas_hours(big) == pytest.approx(40.0)


def test_renewal_is_due_in_the_last_quarter_of_a_minted_sas() -> None:
    now = 1_000_000.0
    fresh = acc.Credentials(_source(sas_minted=True, sas_expiry=now + 20 * 3600), [SAS_CRED])
    assert not fresh.renew_due(now)
    late = acc.Credentials(_source(sas_minted=True, sas_expiry=now + 5 * 3600), [SAS_CRED])
    assert late.renew_due(now)
    given = acc.Credentials(_source(sas_expiry=now + 60), [SAS_CRED])  # not Ferry's: never renewed
    assert not given.renew_due(now)


def test_ensure_creates_what_is_missing_and_alters_only_when_asked() -> None:
    conn = _Conn()
    target = Target(conn)  # type: ignore[arg-type]
    creds = acc.Credentials(_source(), [SAS_CRED, KEY_CRED])
    # No account key: the key credential is left for the preflight's finding.
    assert creds.ensure(target, []) == [SAS_CRED.name]
    assert conn.sql[0].startswith("CREATE CREDENTIAL [https://acct.blob.core.windows.net/bkp]")
    assert f"SECRET = N'{TOKEN}'" in conn.sql[0]
    assert creds.ensure(target, [SAS_CRED.name.upper()]) == []
    assert creds.ensure(target, [SAS_CRED.name], alter=True) == [SAS_CRED.name]
    assert conn.sql[-1].startswith("ALTER CREDENTIAL")


def test_a_refused_credential_is_not_worth_a_rerun_and_shows_no_secret() -> None:
    target = Target(_Conn(fail=True))  # type: ignore[arg-type]
    with pytest.raises(CredentialRefused) as info:
        acc.Credentials(_source(), [SAS_CRED]).ensure(target, [])
    e = info.value
    assert not e.retryable and "running again will not help" in e.message
    assert "SECRETSIG" not in e.message + e.hint and "$(FERRY_SAS)" in e.hint


def test_unreadable_hints() -> None:
    sas = acc.unreadable_finding("https://a/b/x.bak", "error 5", "sql02", SAS_CRED)
    assert "read and list" in sas.hint and "will not help" in sas.hint
    unc = acc.unreadable_finding("\\\\fs\\bk\\x.bak", "error 5", "sql02", None)
    assert "service account" in unc.hint and "share" in unc.hint


def test_a_minted_sas_is_renewed_with_alter_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    from ferry.engines.sqlserver.settings import Settings
    from tests.integration.stores.servers import AZURITE_ACCOUNT, AZURITE_KEY

    monkeypatch.setenv("FERRY_AZURE_BLOB_ENDPOINT", f"http://127.0.0.1:9/{AZURITE_ACCOUNT}")
    monkeypatch.setenv("AZURE_STORAGE_KEY", AZURITE_KEY)
    for var in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_ACCOUNT"):
        monkeypatch.delenv(var, raising=False)
    src = acc.open_source(f"az://{AZURITE_ACCOUNT}/bkp", Settings())
    a = src.access
    assert a.sas_minted and a.sas_expiry is not None and "sp=rl" in a.sas and not a.sas.startswith("?")
    assert a.account_key == AZURITE_KEY
    first_expiry = a.sas_expiry
    conn = _Conn()
    creds = acc.Credentials(src, [SAS_CRED, KEY_CRED])
    assert not creds.renew_due()
    assert creds.renew(Target(conn), [SAS_CRED.name, KEY_CRED.name])  # type: ignore[arg-type]
    assert len(conn.sql) == 1 and conn.sql[0].startswith(f"ALTER CREDENTIAL [{SAS_CRED.name}]")
    assert src.access.sas_expiry is not None and src.access.sas_expiry >= first_expiry
    hidden = acc.open_source(f"az://{AZURITE_ACCOUNT}/bkp", Settings(), secrets=False).access
    assert hidden.sas == "" and hidden.account_key == "" and hidden.endpoint.endswith(AZURITE_ACCOUNT)
