"""The SQL Server target's pure parts: target URLs, passwords, error recognition, facts parsing, the work
folder's names, the log view."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from ferry.core.errors import UsageError
from ferry.engines.sqlserver.connection import (
    ResultSet,
    ServerMessage,
    SqlError,
    TargetUrl,
    known_number,
    password_for,
    redact,
)
from ferry.engines.sqlserver.facts import parse_facts, parse_position
from ferry.engines.sqlserver.workdir import WorkFolder, folder_name


def test_target_urls() -> None:
    url = TargetUrl.parse("mssql://ferry@sql01:1533/SALES")
    assert url == TargetUrl("ferry", "sql01", 1533, "SALES")
    assert str(url) == "mssql://ferry@sql01:1533/SALES"
    assert url.server == "sql01"  # with a port, no Browser lookup
    assert url.key == "SQL01_1533_SALES"
    named = TargetUrl.parse("mssql://sa@sql01/HR")
    assert named.server == "sql01\\HR" and named.port is None
    assert TargetUrl.parse("mssql://sa@sql01").key == "SQL01_1433"
    assert TargetUrl.parse("mssql://dom%5Cuser@h").user == "dom\\user"


@pytest.mark.parametrize(
    "text",
    [
        "postgres://sa@h",
        "mssql://h",
        "mssql://sa@h:99999",
        "mssql://sa@h/bad name",
        "mssql://sa@h/x?encrypt=1",
        "mssql://sa@",
    ],
)
def test_bad_target_urls_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError) as info:
        TargetUrl.parse(text)
    assert info.value.hint


def test_a_password_in_the_url_is_refused_and_never_echoed() -> None:
    with pytest.raises(UsageError) as info:
        TargetUrl.parse("mssql://sa:S3cret!@h:1433")
    assert "S3cret" not in info.value.message + info.value.hint
    assert redact("mssql://sa:S3cret!@h/x") == "mssql://sa:***@h/x"


def test_password_sources(tmp_path: Path) -> None:
    url = TargetUrl.parse("mssql://sa@db1:1433")
    assert password_for(url, {}, {"FERRY_MSSQL_PASSWORD": "a"}) == "a"
    assert password_for(url, {}, {"FERRY_MSSQL_PASSWORD": "a", "FERRY_MSSQL_PASSWORD_DB1_1433": "b"}) == "b"
    assert password_for(url, {"password_env": "MINE"}, {"MINE": "c", "FERRY_MSSQL_PASSWORD": "a"}) == "c"
    creds = tmp_path / "creds"
    creds.write_text("# targets\nmssql://sa@other:1433 x\nmssql://sa@db1:1433 from file\n")
    assert password_for(url, {"credentials_file": str(creds)}, {}) == "from file"
    with pytest.raises(UsageError) as info:
        password_for(url, {"credentials_file": str(tmp_path / "none")}, {})
    assert "FERRY_MSSQL_PASSWORD" in info.value.hint


def test_error_numbers_are_recognised_from_the_handlers_texts() -> None:
    text = "The log in this backup set terminates at LSN 9, which is too early to apply to the database."
    assert known_number(text) == 4326
    assert known_number("Exclusive access could not be obtained because the database is in use.") == 3101
    messages = [
        ServerMessage(16, "Cannot open backup device 'x'. Operating system error 2(...)."),
        ServerMessage(16, "RESTORE DATABASE is terminating abnormally."),
    ]
    err = SqlError("mssql://sa@h", "RESTORE DATABASE", 3201, messages)
    assert err.numbers == {3201} and not err.retryable
    assert "Cannot open backup device" in err.message and "--backup-path-as" in err.hint
    busy = SqlError("h", "RESTORE", 3101, [ServerMessage(16, "Exclusive access could not be obtained")])
    assert busy.retryable


def _server_row(**over: object) -> ResultSet:
    row = {
        "product_version": "16.0.1000.6", "edition": "Developer", "engine_edition": 3, "instance_name": None,
        "is_single_user": 0, "data_path": "D:\\Data\\", "log_path": "L:\\Logs\\", "server_name": "S",
        "login_name": "ferry", "is_sysadmin": 0, "is_dbcreator": 1, "can_create_database": 1,
    }  # fmt: skip
    row.update(over)
    return ResultSet(list(row), [tuple(row.values())])


def test_facts_are_parsed_from_the_batchs_result_sets() -> None:
    results = [
        _server_row(),
        ResultSet(["name", "database_id", "state", "user_access", "is_in_standby", "is_read_only"],
                  [("master", 1, 0, 0, False, False), ("Sales", 7, 1, 0, False, False)]),
        ResultSet(["database_id", "file_id", "type", "name", "physical_name", "size"],
                  [(7, 1, 0, "Sales", "D:\\Data\\Sales.mdf", 128)]),
        ResultSet(["volume_mount_point", "total_bytes", "available_bytes"], [("D:\\", 10**12, 5 * 10**9)]),
        ResultSet(["name"], [("https://acct.blob.core.windows.net/backups",)]),
        ResultSet(["database_id", "sessions"], [(7, 2)]),
        ResultSet(["File Exists", "File is a Directory", "Parent Directory Exists"], [(1, 0, 1)]),
    ]  # fmt: skip
    facts = parse_facts(results, ["D:\\Data\\x.mdf"])
    assert facts.major == 16 and facts.is_dbcreator and not facts.is_sysadmin
    sales = facts.database("SALES")
    assert sales is not None and sales.restoring and sales.sessions == 2
    assert facts.files[0].size == 128 * 8192
    assert facts.volume_of("d:\\data\\new.mdf") == facts.volumes[0]
    assert facts.volume_of("E:\\x.mdf") is None
    assert facts.probes["D:\\Data\\x.mdf"].exists
    assert facts.default_data_dir == "D:\\Data\\" and facts.default_log_dir == "L:\\Logs\\"


def test_a_position_from_an_absent_and_a_restoring_database() -> None:
    empty = [ResultSet(["database_id"]), ResultSet(["file_id"]), ResultSet(["x"]), ResultSet(["x"])]
    assert not parse_position(empty).exists
    hist = ["restore_history_id", "restore_type", "recovery", "backup_set_uuid", "first_lsn", "last_lsn",
            "family_guid", "last_recovery_fork_guid"]  # fmt: skip
    full = (3, "D", 0, "a1", Decimal(10), Decimal(20), "f", None)
    log = (4, "L", 0, "b2", Decimal(20), Decimal(30), "f", None)
    pos = parse_position(
        [
            ResultSet(["database_id", "state", "user_access", "is_in_standby", "compatibility_level",
                       "owner_name"], [(9, 1, 0, 0, 150, "sa")]),
            ResultSet(["file_id", "type", "name", "physical_name", "redo_start_lsn", "redo_start_fork_guid"],
                      [(1, 0, "d", "/d.mdf", Decimal(30), "abc"), (2, 1, "l", "/l.ldf", Decimal(30), "abc")]),
            ResultSet(hist, [full]),
            ResultSet(hist, [log, full, (1, "D", 1, "old", 1, 2, "other", None)]),
        ]
    )  # fmt: skip
    assert pos.restoring and pos.redo_lsn == 30 and pos.redo_fork == "ABC"
    assert [r.history_id for r in pos.since_full] == [3, 4]
    assert pos.last_restored is not None and pos.last_restored.backup_set_guid == "B2"
    assert pos.applied == {"A1", "B2"}


@pytest.mark.parametrize("name", ["Sales", "a]b", "it's", "two words", "Ünïcødé データ", "../../etc", "CON"])
def test_work_folders_are_safe_and_distinct_for_any_database_name(tmp_path: Path, name: str) -> None:
    url = TargetUrl.parse("mssql://sa@h:1433")
    folder = WorkFolder(tmp_path, url, name)
    assert folder.path.parent.parent == tmp_path and ".." not in folder.path.name
    folder.write_claim({"x": 1})
    assert folder.claim() is not None and folder.claim()["database"] == name  # type: ignore[index]
    req = folder.request_cutover("tail.trn")
    assert folder.pending_cutover() == req
    folder.forget()
    assert folder.claim() is None and folder.pending_cutover() is None
    assert folder_name(name) != folder_name(name + "_")


def test_a_caught_up_migration_asks_the_target_only_when_something_may_have_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Hundreds of migrations polling one instance: the position is asked again when the database's backups
    in the store change, after a restore (forget_position), and every RECHECK_SECONDS, not every poll."""
    from types import SimpleNamespace

    from ferry.engines.sqlserver import apply

    asked: list[str] = []
    a = apply.Applier.__new__(apply.Applier)
    a.t = SimpleNamespace(position=lambda db: asked.append(db) or f"position {len(asked)}")  # type: ignore[assignment]
    a.st = SimpleNamespace(database="Sales")  # type: ignore[assignment]
    a._asked = None
    now = [1000.0]
    monkeypatch.setattr(apply.time, "monotonic", lambda: now[0])
    assert a._position(("full", "log1")) == "position 1"
    assert a._position(("full", "log1")) == "position 1"  # nothing new: the answer stands
    assert a._position(("full", "log1", "log2")) == "position 2"  # a new log backup in the store
    a.forget_position()  # a restore ran
    assert a._position(("full", "log1", "log2")) == "position 3"
    now[0] += apply.RECHECK_SECONDS
    assert a._position(("full", "log1", "log2")) == "position 4"  # someone may restore by hand
    assert asked == ["Sales"] * 4


def test_only_engines_whose_stores_hold_many_databases_share_one_view_of_a_store() -> None:
    """SQL Server migrations of one store share an incremental listing; a PostgreSQL store (one cluster) is
    read whole by its migration, special files and all, as `ferry migrate` reads it."""
    from ferry.pipeline.sources import shares_stores

    assert shares_stores("sqlserver") and not shares_stores("postgres")


def test_credential_rights_facts() -> None:
    from ferry.engines.sqlserver import facts as f
    from ferry.engines.sqlserver.connection import ResultSet

    def rs(*row: object) -> list[ResultSet]:
        return [ResultSet(["a", "b"][: len(row)], [tuple(row)])]

    assert f.parse_credential_rights(rs(1, 0)) == (True, True)
    assert f.parse_credential_rights(rs(0, 1)) == (False, True)
    assert f.parse_credential_rights(rs(0, 0)) == (False, False)
    assert f.parse_credential_rights([]) == (False, False)
    assert f.parse_platform([ResultSet(["host_platform"], [("Linux",)])], 16) == "Linux"
    assert f.parse_platform([ResultSet(["host_platform"], [("Windows",)])], 16) == "Windows"
    assert f.parse_platform([], 12) == "Windows" and f.parse_platform([], 16) is None
