"""RESTORE statements: quoting, options, option conflicts, file moves, devices and target versions."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlglot.dialects.tsql import TSQL

from ferry.core.errors import UsageError
from ferry.core.plan import DatabasePlan, PlanStep, StepKind
from ferry.engines.sqlserver.chain import ChainStep
from ferry.engines.sqlserver.devices import PathMap, Platform, SourceAccess, TargetView, map_file
from ferry.engines.sqlserver.headers import BackupType
from ferry.engines.sqlserver.restore_script import (
    ScriptSettings,
    comment_text,
    database_script,
    relocate,
)
from ferry.engines.sqlserver.tsql import (
    Device,
    Recovery,
    RestoreOptions,
    ScriptError,
    check_batch,
    quote_ident,
    quote_literal,
    recover_statement,
    restore_statement,
    stop_clause,
    unquote_ident,
    unquote_literal,
)
from ferry.stores.location import parse_location
from tests.factories import backup_set, database_file, logical, striped

DATA = database_file(logical_name="db1", physical_name=r"D:\Data\db1.mdf")
LOG = database_file(logical_name="db1_log", physical_name=r"L:\Logs\db1_log.ldf", type="L", file_id=2)
MOVES = {"db1": "/data/db1.mdf", "db1_log": "/logs/db1_log.ldf"}


def step(kind: StepKind = StepKind.FULL, stop_at: str | None = None, **kw: Any) -> ChainStep:
    types = {
        StepKind.FULL: BackupType.DATABASE,
        StepKind.DIFF: BackupType.DIFFERENTIAL,
        StepKind.LOG: BackupType.LOG,
    }
    return ChainStep(kind, logical(backup_type=types[kind], files=(DATA, LOG), **kw), stop_at)


def tokens(sql: str) -> list[tuple[str, str]]:
    return [(t.token_type.name, t.text) for t in TSQL().tokenize(sql)]


# ----------------------------------------------------------------------------------------------------------
# Quoting


@given(st.text(min_size=1, max_size=128).filter(lambda s: "\x00" not in s))
def test_identifiers_round_trip(name: str) -> None:
    quoted = quote_ident(name)
    assert unquote_ident(quoted) == name
    assert quoted.count("]") % 2 == 1  # the closing bracket alone is unpaired
    assert tokens(f"RESTORE DATABASE {quoted} WITH RECOVERY")[2] == ("IDENTIFIER", name)


@given(st.text(max_size=300).filter(lambda s: "\x00" not in s))
def test_literals_round_trip(value: str) -> None:
    quoted = quote_literal(value)
    assert unquote_literal(quoted) == value
    assert tokens(f"SELECT {quoted}") == [("SELECT", "SELECT"), ("NATIONAL_STRING", value)]


@pytest.mark.parametrize("bad", ["", "x" * 129, "a\x00b"])
def test_identifiers_sql_server_refuses(bad: str) -> None:
    with pytest.raises(ScriptError):
        quote_ident(bad)


def test_unquote_refuses_broken_quoting() -> None:
    for bad in ["[a]b]", "a", "[a"]:
        with pytest.raises(ValueError):
            unquote_ident(bad)
    for bad in ["N'a'b'", "'a'", "N'"]:
        with pytest.raises(ValueError):
            unquote_literal(bad)


def test_examples() -> None:
    assert quote_ident("a]b") == "[a]]b]"
    assert quote_ident("Sales DB ü") == "[Sales DB ü]"
    assert quote_literal(r"C:\It's here\x.bak") == r"N'C:\It''s here\x.bak'"


def test_comments_stay_on_one_line() -> None:
    assert comment_text("a\nGO\nb\tc") == "a\\x0aGO\\x0ab\\x09c"


def test_a_name_that_would_split_the_batch_is_refused() -> None:
    with pytest.raises(ScriptError):
        restore_statement(step(), [Device("/b/x\ngo\n.bak")], RestoreOptions("db1"))
    assert check_batch("RESTORE DATABASE [x] WITH RECOVERY")


# ----------------------------------------------------------------------------------------------------------
# Statements


def test_full_restore_every_option() -> None:
    s = step(position=3, has_checksums=True)
    opts = RestoreOptions(
        "Sales]DB",
        moves=MOVES,
        media_password="pa'ss",
        buffer_count=50,
        max_transfer_size=4 * 1024 * 1024,
        replace=True,
        stats=5,
    )
    sql = restore_statement(s, [Device("/b/full_1.bak"), Device("/b/full_2.bak")], opts)
    assert sql == (
        "RESTORE DATABASE [Sales]]DB]\n"
        "FROM DISK = N'/b/full_1.bak',\n"
        "     DISK = N'/b/full_2.bak'\n"
        "WITH FILE = 3,\n"
        "     CHECKSUM,\n"
        "     MEDIAPASSWORD = N'pa''ss',\n"
        "     MOVE N'db1' TO N'/data/db1.mdf',\n"
        "     MOVE N'db1_log' TO N'/logs/db1_log.ldf',\n"
        "     REPLACE,\n"
        "     BUFFERCOUNT = 50,\n"
        "     MAXTRANSFERSIZE = 4194304,\n"
        "     NORECOVERY,\n"
        "     STATS = 5"
    )


def test_checksum_only_when_the_backup_has_checksums() -> None:
    assert "CHECKSUM" not in restore_statement(step(has_checksums=False), [Device("x")], RestoreOptions("d"))
    assert "CHECKSUM" not in restore_statement(step(has_checksums=None), [Device("x")], RestoreOptions("d"))
    off = RestoreOptions("d", checksum=False)
    assert "CHECKSUM" not in restore_statement(step(has_checksums=True), [Device("x")], off)


def test_log_moves_only_files_created_inside_it() -> None:
    added = database_file(logical_name="db1_2", physical_name=r"D:\db1_2.ndf", file_id=3, create_lsn=150)
    log = ChainStep(
        StepKind.LOG,
        logical(backup_type=BackupType.LOG, first_lsn=100, last_lsn=200, files=(DATA, LOG, added)),
    )
    sql = restore_statement(log, [Device("l.trn")], RestoreOptions("d", moves={**MOVES, "db1_2": "/d/x.ndf"}))
    assert sql.startswith("RESTORE LOG [d]\n") and "MOVE N'db1_2' TO N'/d/x.ndf'" in sql
    assert "MOVE N'db1'" not in sql


def test_stop_clauses() -> None:
    assert stop_clause("lsn:19000000020000001", StepKind.LOG) == "STOPATMARK = N'lsn:19000000020000001'"
    assert stop_clause("2020-05-12T13:31:00+01:00", StepKind.LOG) == "STOPAT = N'2020-05-12T13:31:00'"
    assert (
        stop_clause("2020-05-12T13:31:00.123456+01:00", StepKind.LOG) == "STOPAT = N'2020-05-12T13:31:00.123'"
    )
    for bad in ("lsn:12x", "yesterday"):
        with pytest.raises(ScriptError):
            stop_clause(bad, StepKind.LOG)
    with pytest.raises(ScriptError):
        stop_clause("2020-05-12T13:31:00", StepKind.FULL)
    last = step(StepKind.LOG, stop_at="lsn:42")
    assert "STOPATMARK = N'lsn:42',\n     NORECOVERY" in restore_statement(
        last, [Device("l")], RestoreOptions("d")
    )


def test_recovery_modes() -> None:
    standby = RestoreOptions("d", recovery=Recovery.STANDBY, standby_file=r"D:\undo's.bak", stats=None)
    assert restore_statement(step(StepKind.LOG), [Device("l")], standby).endswith(
        "STANDBY = N'D:\\undo''s.bak'"
    )
    assert restore_statement(step(), [Device("f")], RestoreOptions("d", recovery=Recovery.RECOVERY)).endswith(
        "RECOVERY,\n     STATS = 10"
    )
    assert recover_statement("a]b") == "RESTORE DATABASE [a]]b] WITH RECOVERY"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"recovery": Recovery.STANDBY},
        {"standby_file": "u.bak"},
        {"stats": 0},
        {"buffer_count": 0},
        {"max_transfer_size": 65537},
        {"max_transfer_size": 8 * 1024 * 1024},
    ],
)
def test_option_values_sql_server_refuses(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ScriptError):
        RestoreOptions("d", **kwargs)


def test_standby_refused_when_the_restore_upgrades_the_database() -> None:
    opts = RestoreOptions("d", recovery=Recovery.STANDBY, standby_file="/u", target_version=16)
    with pytest.raises(ScriptError, match="STANDBY"):
        restore_statement(step(database_version=852), [Device("x")], opts)
    assert "STANDBY" in restore_statement(step(database_version=957), [Device("x")], opts)


def test_url_devices() -> None:
    urls = [
        Device("https://acct.blob.core.windows.net/c/f_1.bak"),
        Device("https://acct.blob.core.windows.net/c/f_2.bak"),
    ]
    sql = restore_statement(step(), urls, RestoreOptions("d", target_version=16))
    assert "FROM URL = N'https://acct.blob.core.windows.net/c/f_1.bak',\n     URL = N'https" in sql
    assert "CREDENTIAL" not in sql
    one = restore_statement(step(), urls[:1], RestoreOptions("d", target_version=12, credential="key"))
    assert "CREDENTIAL = N'key'" in one
    refused: list[tuple[ChainStep, list[Device], RestoreOptions]] = [
        (step(position=2), urls, RestoreOptions("d")),  # FILE
        (step(), urls, RestoreOptions("d", buffer_count=4)),
        (step(), urls, RestoreOptions("d", max_transfer_size=65536)),
        (step(), urls, RestoreOptions("d", target_version=12, credential="key")),  # one URL per restore
        (step(), urls[:1], RestoreOptions("d", target_version=11)),  # needs a credential
        (step(), [urls[0], Device("/x.bak")], RestoreOptions("d")),  # mixed devices
        (step(), [Device("/x.bak")], RestoreOptions("d", credential="key")),  # credential without URL
        (step(), [], RestoreOptions("d")),
    ]
    for s, devices, opts in refused:
        with pytest.raises(ScriptError):
            restore_statement(s, devices, opts)


# ----------------------------------------------------------------------------------------------------------
# Moves, paths, versions


def test_relocate_keeps_names_and_makes_them_unique() -> None:
    other = database_file(logical_name="db1_b", physical_name="/var/opt/mssql/data/DB1.MDF", file_id=3)
    noname = database_file(logical_name="raw", physical_name="", file_id=4)
    moves, taken, clashes = relocate([DATA, LOG, other, noname], r"E:\SQL\Data\\", "/logs")
    assert moves == {
        "db1": r"E:\SQL\Data\db1.mdf",
        "db1_log": "/logs/db1_log.ldf",
        "db1_b": r"E:\SQL\Data\DB1_2.MDF",
        "raw": r"E:\SQL\Data\raw",
    }
    again, _, _ = relocate([DATA], r"E:\SQL\Data", None, taken)
    assert again == {"db1": r"E:\SQL\Data\db1_3.mdf"}  # db1_2 is DB1_2.MDF, case-insensitively
    assert clashes == []


def test_relocate_without_folders_keeps_original_paths_and_reports_clashes() -> None:
    moves, taken, clashes = relocate([DATA, LOG], None, None)
    assert moves == {"db1": DATA.physical_name, "db1_log": LOG.physical_name}
    _, _, clashes = relocate([DATA], None, None, taken)
    assert clashes == [DATA.physical_name]


def _at(folder: str) -> SourceAccess:
    return SourceAccess(parse_location(folder))


def test_backup_paths_as_the_target_sees_them() -> None:
    mapping = [
        PathMap.parse(r"/backups=\\fs\backups"),
        PathMap.parse("/backups/cloud=https://a.blob.core.windows.net/c"),
    ]

    def device(path: str, maps: list[PathMap] = mapping) -> Device:
        folder, _, name = path.rpartition("/")
        return map_file(_at(folder), name, TargetView(16), maps).device

    assert device("/backups/db1/full.bak") == Device(r"\\fs\backups\db1\full.bak")
    assert device("/backups/cloud/x y.bak") == Device("https://a.blob.core.windows.net/c/x%20y.bak")
    assert device("/backupsX/a.bak") == Device("/backupsX/a.bak")
    assert device("/data/a.bak", [PathMap.parse("/=/mnt/")]) == Device("/mnt/data/a.bak")
    assert device("/b/a.bak", [PathMap.parse("/b=D:")]) == Device(r"D:\a.bak")


def _plan(*steps: PlanStep) -> DatabasePlan:
    return DatabasePlan("sqlserver", "db1", "SRV", steps, ())


def _plan_step(s: Any, kind: StepKind = StepKind.FULL) -> PlanStep:
    return PlanStep(kind, (s.path,), str(s.first_lsn), str(s.last_lsn), position=s.position)


@pytest.mark.parametrize(
    ("version", "target", "code"),
    [
        (957, 15, "target-version-too-old"),
        (859, 13, "target-version-too-old"),
        (611, 14, "source-version-too-old"),
        (611, 13, None),
        (904, 15, None),
        (957, 17, None),  # newer than Ferry's table: the target decides
    ],
)
def test_target_versions(version: int, target: int, code: str | None) -> None:
    full = backup_set(database_version=version)
    made = database_script(_plan(_plan_step(full)), [full], _at("/b"), ScriptSettings(target_version=target))
    assert [f.code for f in made.findings] == ([code] if code else [])
    assert bool(made.batches) is (code is None)


def test_old_targets_are_refused() -> None:
    with pytest.raises(UsageError, match="2008"):
        ScriptSettings(target_version=10)


def test_database_script_names_every_stripe_in_one_statement() -> None:
    rows = striped(backup_set(path="f.bak"), 3)
    plan = _plan(PlanStep(StepKind.FULL, tuple(r.path for r in rows), "1", "2"))
    made = database_script(plan, list(reversed(rows)), _at("/store"), ScriptSettings(online=True))
    [batch] = made.batches
    assert batch.statement.count("DISK = N'/store/f_") == 3
    assert batch.comments[-1].startswith("full backup 'f_1of3.bak', 'f_2of3.bak', 'f_3of3.bak'; LSN 1 to 2")


def test_scripts_name_secrets_by_sqlcmd_variables() -> None:
    full = backup_set(path="db/it's #1.bak", has_media_password=True)
    plan = _plan(_plan_step(full))
    sas_url = "https://acct.blob.core.windows.net/bkp?sv=2022-11-02&sp=rl&sig=SECRETSIG"
    made = database_script(
        plan, [full], SourceAccess(parse_location(sas_url)), ScriptSettings(target_version=16)
    )
    first = made.batches[0]
    assert "MEDIAPASSWORD = N'$(FERRY_MEDIA_PASSWORD)'" in first.statement
    assert first.comments[1].startswith(':setvar FERRY_MEDIA_PASSWORD "<')
    assert "URL = N'https://acct.blob.core.windows.net/bkp/db/it%27s%20%231.bak'" in first.statement
    [cred] = made.credentials
    assert cred.name == "https://acct.blob.core.windows.net/bkp" and made.media_password
    from ferry.engines.sqlserver.restore_script import credential_batch

    text = credential_batch(cred).text()
    assert "SECRETSIG" not in text and "sig=" not in text and "$(FERRY_SAS)" in text
    assert "SECRETSIG" not in "".join(b.text() for b in made.batches)


def test_scripts_refuse_what_the_target_cannot_read() -> None:
    full = backup_set(path="x.bak")
    plan = _plan(_plan_step(full))
    smb = SourceAccess(parse_location("smb://fs/bk"))
    linux = ScriptSettings(target_version=16, platform=Platform.LINUX)
    assert [f.code for f in database_script(plan, [full], smb, linux).findings] == ["unc-on-linux"]
    windows = database_script(plan, [full], smb, ScriptSettings(target_version=16, platform=Platform.WINDOWS))
    assert "DISK = N'\\\\fs\\bk\\x.bak'" in windows.batches[0].statement
    s3 = SourceAccess(parse_location("s3://bucket/p"), endpoint="https://minio:9000")
    assert [
        f.code for f in database_script(plan, [full], s3, ScriptSettings(target_version=15)).findings
    ] == ["s3-needs-2022"]
    ok = database_script(plan, [full], s3, ScriptSettings(target_version=16))
    assert "URL = N's3://minio:9000/bucket/p/x.bak'" in ok.batches[0].statement
    assert [c.identity for c in ok.credentials] == ["S3 Access Key"]
    old = backup_set(path="x.bak", database_version=782)
    keyed = ScriptSettings(target_version=12, credential="blobkey")
    page = database_script(_plan(_plan_step(old)), [old], _at_az(), keyed)
    assert "CREDENTIAL = N'blobkey'" in page.batches[0].statement
    assert [c.name for c in page.credentials] == ["blobkey"]


def _at_az() -> SourceAccess:
    return SourceAccess(parse_location("az://acct/bkp"))
