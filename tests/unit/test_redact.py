"""Secrets are masked wherever a location is shown, and control characters cannot reach a terminal."""

from __future__ import annotations

import pytest

from ferry.core.redact import escape_controls, redact_location, redact_text, redact_value, safe

SECRETS = [
    ("smb://user:S3cretPass@host/share/x", "smb://user:***@host/share/x", "S3cretPass"),
    ("postgresql://u:pw0rd@db:5432/x", "postgresql://u:***@db:5432/x", "pw0rd"),
    ("s3://AKIAKEY:SECRETKEY@bucket/pg", "s3://AKIAKEY:***@bucket/pg", "SECRETKEY"),
    (
        "https://acct.blob.core.windows.net/c/pg?sv=2022-11-02&sig=abc%2Bdef&se=2030",
        "https://acct.blob.core.windows.net/c/pg?sv=2022-11-02&sig=***&se=2030",
        "abc%2Bdef",
    ),
    ("http://h/x?token=t0k3n", "http://h/x?token=***", "t0k3n"),
    ("http://h/x?X-Amz-Signature=deadbeef&a=1", "http://h/x?X-Amz-Signature=***&a=1", "deadbeef"),
    ("http://h/x?AccountKey=zzz;Password=yyy", "http://h/x?AccountKey=***;Password=***", "zzz"),
    ("smb://user:pa/ss@host/share", "smb://user:***@host/share", "pa/ss"),
    ("smb://dom;user:p%40ss@host/share", "smb://dom;user:***@host/share", "p%40ss"),
]


@pytest.mark.parametrize(("given", "shown", "secret"), SECRETS)
def test_a_location_keeps_what_it_names_and_loses_its_secret(given: str, shown: str, secret: str) -> None:
    assert redact_location(given) == shown
    assert secret not in redact_text(f"cannot read '{given}': connection refused")


@pytest.mark.parametrize(
    "plain", ["/backups/pg/sales", "file:///srv/b", "smb://user@host/share", "s3://b/x@y"]
)
def test_locations_without_secrets_are_unchanged(plain: str) -> None:
    assert redact_location(plain) == plain
    assert redact_text(f"in {plain}: nothing") == f"in {plain}: nothing"


def test_free_text_pairs_and_nested_values() -> None:
    text = "connect failed: host=db user=ferry password=hunter2 sslmode=require"
    assert redact_text(text) == "connect failed: host=db user=ferry password=*** sslmode=require"
    value = {"a": ["smb://u:p@h/s", {"b": "token=x"}], "n": 3}
    assert redact_value(value) == {"a": ["smb://u:***@h/s", {"b": "token=***"}], "n": 3}


def test_control_characters_are_shown_not_obeyed() -> None:
    assert escape_controls("\x1b[2Jx.bak") == "\\x1b[2Jx.bak"
    assert escape_controls("a\nb\rc\x07\x9b") == "a\\nb\\rc\\x07\\x9b"
    assert escape_controls("a\nb\x1b", keep_newlines=True) == "a\nb\\x1b"
    assert safe("smb://u:p@h/s\n[fake] line") == "smb://u:***@h/s\\n[fake] line"
