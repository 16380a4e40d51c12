"""The SQL Server restore model speaks enough TDS for the real pymssql client: login, result sets and
their types, messages, errors, quoting."""

from __future__ import annotations

import datetime
import time

import pymssql
import pytest

from tests.mssql_model.server import ModelServer
from tests.mssql_model.testing import connect, error_number, fails, model, run

__all__ = ["model"]


def test_login_good_and_bad_password(model: ModelServer) -> None:
    with connect(model) as conn:
        cur = conn.cursor()
        assert run(cur, "SELECT SUSER_SNAME(), DB_NAME()") == [("sa", "master")]
    with pytest.raises(pymssql.OperationalError) as info:
        pymssql.connect(server="127.0.0.1", port=model.port, user="sa", password="wrong", login_timeout=5)
    assert error_number(info.value) == 18456
    assert b"Login failed for user 'sa'." in info.value.args[0][1]


def test_login_to_a_missing_database_fails(model: ModelServer) -> None:
    with pytest.raises(pymssql.OperationalError) as info:
        connect(model, database="nowhere")
    assert error_number(info.value) in (4060, 18456)


def test_several_statements_give_several_result_sets_and_typed_values(model: ModelServer) -> None:
    with connect(model) as conn:
        cur = conn.cursor()
        cur.execute(
            "SELECT 1 AS one; SELECT name, database_id, create_date FROM sys.databases WHERE name = N'master' "
            "SELECT CAST(NULL AS int) AS nothing, @@SPID AS spid"
        )
        assert cur.fetchall() == [(1,)]
        assert cur.nextset()
        name, dbid, created = cur.fetchone()
        assert (name, dbid) == ("master", 1) and isinstance(created, datetime.datetime)
        assert cur.nextset()
        nothing, spid = cur.fetchone()
        assert nothing is None and spid >= 51
        assert not cur.nextset()


def test_version_and_server_properties(model: ModelServer) -> None:
    with connect(model) as conn:
        cur = conn.cursor()
        (banner, server, major, engine, data, sysadmin, creator, perms, msdb) = run(
            cur,
            "SELECT @@VERSION, @@SERVERNAME, SERVERPROPERTY('ProductMajorVersion'), "
            "SERVERPROPERTY('EngineEdition'), SERVERPROPERTY('InstanceDefaultDataPath'), "
            "IS_SRVROLEMEMBER('sysadmin'), IS_SRVROLEMEMBER('dbcreator'), "
            "HAS_PERMS_BY_NAME(NULL, NULL, 'CREATE ANY DATABASE'), DB_ID(N'msdb')",
        )[0]
        assert "15.0.2000.5" in banner and "model" in banner
        assert server == "MSSQLMODEL" and major == "15" and engine == 3
        assert data == "/var/opt/mssql/data/"
        assert (sysadmin, creator, perms, msdb) == (1, 0, 1, 4)
    with connect(model, "reader") as conn:
        cur = conn.cursor()
        assert run(cur, "SELECT IS_SRVROLEMEMBER('sysadmin'), HAS_PERMS_BY_NAME(NULL, NULL, "
                   "'CREATE ANY DATABASE')") == [(0, 0)]  # fmt: skip


def test_go_unknown_syntax_and_unknown_views_fail_like_sql_server(model: ModelServer) -> None:
    with connect(model) as conn:
        cur = conn.cursor()
        assert fails(cur, "SELECT 1\nGO\nSELECT 2") == 102
        assert fails(cur, "RESTORE DATABSE [x] FROM DISK = N'/a.bak'") == 102
        assert fails(cur, "SELECT name FROM sys.no_such_view") == 208
        assert fails(cur, "SELECT no_such_column FROM sys.databases") == 207
        assert fails(cur, "SELECT 'unterminated") == 105
        assert run(cur, "SELECT 1 /* a comment; SELECT 2 */ -- another\n") == [(1,)]


def test_quoting_of_names_and_strings(model: ModelServer) -> None:
    with connect(model) as conn:
        cur = conn.cursor()
        rows = run(cur, "SELECT N'it''s' AS [a]]b], N'Ünïcødé 数据' AS \"spaced name\"")
        assert rows == [("it's", "Ünïcødé 数据")]
        assert [d[0] for d in cur.description] == ["a]b", "spaced name"]


def test_print_messages_arrive_through_the_message_handler(model: ModelServer) -> None:
    with connect(model) as conn:
        seen: list[bytes] = []
        conn._conn.set_msghandler(lambda *args: seen.append(args[5]))
        cur = conn.cursor()
        cur.execute("PRINT 'hello'; USE [msdb]")
        assert b"hello" in seen
        assert any(b"Changed database context to 'msdb'." in m for m in seen)
        assert run(cur, "SELECT DB_NAME()") == [("msdb",)]


def test_restore_inside_a_transaction_is_refused(model: ModelServer) -> None:
    with connect(model, autocommit=False) as conn:
        cur = conn.cursor()
        assert (
            fails(cur, "RESTORE DATABASE [x] FROM DISK = N'/backups/RestoreTimeClean/RestoreTimeClean.bak'")
            == 3021
        )


def test_waitfor_can_be_cancelled_by_closing_the_connection(model: ModelServer) -> None:
    conn = connect(model)
    started = time.monotonic()
    conn.close()
    assert time.monotonic() - started < 5
    with connect(model) as again:
        assert run(again.cursor(), "SELECT COUNT(*) FROM sys.dm_exec_sessions") == [(1,)]


def test_values_of_every_type_decode(model: ModelServer) -> None:
    with connect(model) as conn:
        cur = conn.cursor()
        cur.execute(
            "SELECT CAST(1 AS bit) AS b, CAST(5 AS bigint) AS big, owner_sid, credential_id "
            "FROM sys.databases d LEFT JOIN sys.credentials c ON 1 = 0 WHERE d.name = N'master'"
        )
        assert cur.fetchall() == [(True, 5, b"\x01", None)]
