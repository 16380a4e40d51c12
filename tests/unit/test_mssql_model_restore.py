"""RESTORE against the SQL Server restore model with real corpus backups: whole chains, point in time,
and each rule's SQL Server error number as pymssql reports it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.mssql_model.client import ModelClient
from tests.mssql_model.server import ModelServer
from tests.mssql_model.testing import RTC, STOPAT, connect, fails, model, moves, run, start_model

__all__ = ["model"]

RTC_MOVE = moves("RestoreTimeClean", "RestoreTimeClean_log", "rtc")
STOPAT_MOVE = moves("StopAt", "StopAt_log", "stopat")


def restore_rtc_full(cur: object, db: str = "RTC", extra: str = "NORECOVERY") -> None:
    run(cur, f"RESTORE DATABASE [{db}] FROM DISK = N'{RTC}/RestoreTimeClean.bak' WITH {RTC_MOVE}, {extra}")


def test_whole_chain_full_diff_logs_then_recovery(model: ModelServer, tmp_path: Path) -> None:
    with connect(model) as conn:
        cur = conn.cursor()
        restore_rtc_full(cur)
        run(cur, f"RESTORE DATABASE [RTC] FROM DISK = N'{RTC}/RestoreTimeClean2.bak' WITH NORECOVERY")
        for n in (1, 2, 3):
            run(cur, f"RESTORE LOG [RTC] FROM DISK = N'{RTC}/RestoreTimeClean2_{n}.trn' WITH NORECOVERY")
        assert run(cur, "SELECT state_desc FROM sys.databases WHERE name = N'RTC'") == [("RESTORING",)]
        (redo,) = run(
            cur, "SELECT DISTINCT redo_start_lsn FROM sys.master_files WHERE database_id = DB_ID(N'RTC')"
        )
        assert int(redo[0]) == 25000000022000001
        run(cur, "RESTORE DATABASE [RTC] WITH RECOVERY")
        assert run(cur, "SELECT state_desc, is_in_standby FROM sys.databases WHERE name = N'RTC'") == [
            ("ONLINE", False)
        ]
        rows = run(
            cur,
            "SELECT rh.restore_type, bs.backup_set_uuid FROM msdb.dbo.restorehistory rh "
            "JOIN msdb.dbo.backupset bs ON bs.backup_set_id = rh.backup_set_id ORDER BY rh.restore_history_id",
        )
        assert [r[0] for r in rows] == ["D", "I", "L", "L", "L"]
    counts = ModelClient(model.config.state_dir).restore_counts("RTC")
    assert len(counts) == 5 and set(counts.values()) == {1}
    assert (model.config.root / "var/opt/mssql/data/rtc.mdf").is_file()


def test_logs_only_chain_and_lsn_errors(model: ModelServer) -> None:
    with connect(model) as conn:
        cur = conn.cursor()
        restore_rtc_full(cur)
        assert (
            fails(cur, f"RESTORE LOG [RTC] FROM DISK = N'{RTC}/RestoreTimeClean_2.trn' WITH NORECOVERY")
            == 4305
        )
        run(cur, f"RESTORE LOG [RTC] FROM DISK = N'{RTC}/RestoreTimeClean_1.trn' WITH NORECOVERY")
        assert (
            fails(cur, f"RESTORE LOG [RTC] FROM DISK = N'{RTC}/RestoreTimeClean_1.trn' WITH NORECOVERY")
            == 4326
        )
        for name in ("RestoreTimeClean_2", "RestoreTimeClean_3", "RestoreTimeClean2_1"):
            run(cur, f"RESTORE LOG [RTC] FROM DISK = N'{RTC}/{name}.trn' WITH NORECOVERY")
        run(cur, f"RESTORE LOG [RTC] FROM DISK = N'{RTC}/RestoreTimeClean2_2.trn' WITH RECOVERY")
        assert fails(cur, f"RESTORE LOG [RTC] FROM DISK = N'{RTC}/RestoreTimeClean2_3.trn'") == 3117
        assert fails(cur, f"RESTORE DATABASE [RTC] FROM DISK = N'{RTC}/RestoreTimeClean.bak'") == 3159
        assert fails(cur, "RESTORE DATABASE [RTC] WITH RECOVERY") == 3153
        run(cur, f"RESTORE DATABASE [RTC] FROM DISK = N'{RTC}/RestoreTimeClean.bak' WITH REPLACE, NORECOVERY")


def test_forks_inherited_and_mismatched(model: ModelServer) -> None:
    """The 2016 logs come from a database restored from the 2008 chain at RestoreTimeClean_1's end: they
    are on another recovery path than a 2008 database rolled further."""
    with connect(model) as conn:
        cur = conn.cursor()
        restore_rtc_full(cur)
        for name in ("RestoreTimeClean_1", "RestoreTimeClean_2"):
            run(cur, f"RESTORE LOG [RTC] FROM DISK = N'{RTC}/{name}.trn' WITH NORECOVERY")
        error = fails(
            cur, "RESTORE LOG [RTC] FROM DISK = N'/backups/restoretimeclean2016/RestoreTimeClean_1.trn'"
        )
        assert error == 4305
    from ferry.engines.sqlserver.reader import read_backup_sets
    from tests.mssql_model.media import _FileReader
    from tests.mssql_model.rules import fork_at
    from tests.mssql_model.testing import corpus_root

    root = corpus_root()
    assert root is not None
    path = root / "restoretimeclean2016/RestoreTimeClean_1.trn"
    (log,) = read_backup_sets(_FileReader(str(path), path))
    assert log.fork_point_lsn is not None
    assert fork_at(log, log.fork_point_lsn - 1) == str(log.first_recovery_fork_id).upper()
    assert fork_at(log, log.first_lsn) == str(log.recovery_fork_id).upper()


def test_differential_on_the_wrong_base_and_other_database(model: ModelServer) -> None:
    with connect(model) as conn:
        cur = conn.cursor()
        run(cur, f"RESTORE DATABASE [X] FROM DISK = N'{STOPAT}/StopAt.bak' WITH {STOPAT_MOVE}, NORECOVERY")
        assert (
            fails(cur, f"RESTORE DATABASE [X] FROM DISK = N'{RTC}/RestoreTimeClean2.bak' WITH NORECOVERY")
            == 3136
        )
        assert (
            fails(cur, f"RESTORE DATABASE [X] FROM DISK = N'{RTC}/RestoreTimeClean.bak' WITH {RTC_MOVE}")
            == 3154
        )
        assert fails(cur, f"RESTORE DATABASE [X] FROM DISK = N'{RTC}/RestoreTimeClean_1.trn'") == 3135
        assert fails(cur, f"RESTORE LOG [Y] FROM DISK = N'{RTC}/RestoreTimeClean_1.trn'") == 3118


def test_point_in_time_with_stopat(model: ModelServer) -> None:
    target = "2020-05-12T13:31:00"
    with connect(model) as conn:
        cur = conn.cursor()
        seen: list[bytes] = []
        conn._conn.set_msghandler(lambda *args: seen.append(args[5]))
        run(cur, f"RESTORE DATABASE [S] FROM DISK = N'{STOPAT}/StopAt.bak' WITH {STOPAT_MOVE}, NORECOVERY, "
                 f"STOPAT = N'{target}'")  # fmt: skip
        for name in ("StopAt_1", "StopAt_2"):
            run(
                cur, f"RESTORE LOG [S] FROM DISK = N'{STOPAT}/{name}.trn' WITH RECOVERY, STOPAT = N'{target}'"
            )
            assert run(cur, "SELECT state_desc FROM sys.databases WHERE name = N'S'") == [("RESTORING",)]
        assert any(b"left in the restoring state" in m for m in seen)
        run(
            cur,
            f"RESTORE LOG [S] FROM DISK = N'{STOPAT}/StopAt_21.trn' WITH NORECOVERY, STOPAT = N'{target}'",
        )
        assert fails(cur, f"RESTORE LOG [S] FROM DISK = N'{STOPAT}/StopAt_23.trn' WITH RECOVERY") == 4305
        run(cur, "RESTORE DATABASE [S] WITH RECOVERY")
        assert run(cur, "SELECT state_desc FROM sys.databases WHERE name = N'S'") == [("ONLINE",)]
        stop_at = run(cur, "SELECT stop_at FROM msdb.dbo.restorehistory WHERE restore_type = 'L'")
        assert len(stop_at) == 3 and all(row[0] is not None for row in stop_at)
        assert fails(cur, f"RESTORE LOG [S] FROM DISK = N'{STOPAT}/StopAt_23.trn'") == 3117
        run(cur, f"RESTORE DATABASE [T] FROM DISK = N'{STOPAT}/StopAt.bak' WITH "
                 f"{moves('StopAt', 'StopAt_log', 't')}, NORECOVERY")  # fmt: skip
        assert fails(
            cur, f"RESTORE LOG [T] FROM DISK = N'{STOPAT}/StopAt_1.trn' WITH STOPAT = N'2020-05-12 10:00'"
        ) == (4335)
        simple = "/backups/sql2008-backups/SimpleRecovery/SimpleBacktest.bak"
        assert fails(cur, f"RESTORE DATABASE [U] FROM DISK = N'{simple}' WITH STOPAT = N'{target}'") == 3145


def test_device_media_and_option_errors(model: ModelServer) -> None:
    with connect(model) as conn:
        cur = conn.cursor()
        assert fails(cur, "RESTORE DATABASE [E] FROM DISK = N'/backups/missing.bak'") == 3201
        assert fails(cur, "RESTORE HEADERONLY FROM DISK = N'/backups/README.md'") == 3241
        stripe = "/backups/sql2008-backups/RestoreTimeStripe"
        assert (
            fails(cur, f"RESTORE DATABASE [E] FROM DISK = N'{stripe}/Stripe1/RestoreTimeStripe.bak'") == 3132
        )
        assert (
            fails(cur, f"RESTORE DATABASE [E] FROM DISK = N'{RTC}/RestoreTimeClean.bak' WITH FILE = 2")
            == 3246
        )
        assert fails(cur, f"RESTORE DATABASE [E] FROM DISK = N'{RTC}/RestoreTimeClean.bak' WITH MOVE N'nope' "
                          "TO N'/var/opt/mssql/data/x.mdf'") == 3234  # fmt: skip
        assert fails(cur, f"RESTORE DATABASE [E] FROM DISK = N'{RTC}/RestoreTimeClean.bak' WITH RECOVERY, "
                          "NORECOVERY") == 3031  # fmt: skip
        assert (
            fails(cur, f"RESTORE HEADERONLY FROM DISK = N'{RTC}/RestoreTimeClean.bak' WITH {RTC_MOVE}")
            == 3032
        )
        assert fails(cur, f"RESTORE DATABASE [E] FROM DISK = N'{RTC}/RestoreTimeClean.bak' WITH "
                          "MEDIAPASSWORD = N'secret'") == 3279  # fmt: skip
        # Without MOVE the files would go to the backup's C:\Program Files\... folders, which do not exist.
        assert fails(cur, f"RESTORE DATABASE [E] FROM DISK = N'{RTC}/RestoreTimeClean.bak'") == 5133
        both = f"DISK = N'{stripe}/Stripe1/RestoreTimeStripe.bak', DISK = N'{stripe}/Stripe2/RestoreTimeStripe1.bak'"
        run(cur, f"RESTORE DATABASE [Striped] FROM {both} WITH "
                 f"{moves('restoretimestripe', 'restoretimestripe_log', 'striped')}, NORECOVERY, STATS = 50")  # fmt: skip
        rows = run(cur, f"RESTORE HEADERONLY FROM DISK = N'{RTC}/RestoreTimeClean.bak'")
        assert len(rows) == 1 and "RestoreTimeClean" in rows[0]
        cur.execute(f"RESTORE FILELISTONLY FROM DISK = N'{RTC}/RestoreTimeClean.bak'")
        assert [r[0] for r in cur.fetchall()] == ["RestoreTimeClean", "RestoreTimeClean_log"]
        cur.execute(f"RESTORE VERIFYONLY FROM DISK = N'{RTC}/RestoreTimeClean.bak'")
        assert run(cur, f"RESTORE LABELONLY FROM DISK = N'{RTC}/RestoreTimeClean.bak'")[0][2] == 1


def test_file_placement_rules(model: ModelServer) -> None:
    with connect(model) as conn:
        cur = conn.cursor()
        restore_rtc_full(cur, "A")
        assert (
            fails(cur, f"RESTORE DATABASE [B] FROM DISK = N'{RTC}/RestoreTimeClean.bak' WITH {RTC_MOVE}")
            == 1834
        )
        orphan = model.config.root / "var/opt/mssql/data/orphan.mdf"
        orphan.write_text("left behind")
        move = ("MOVE N'RestoreTimeClean' TO N'/var/opt/mssql/data/orphan.mdf', "
                "MOVE N'RestoreTimeClean_log' TO N'/var/opt/mssql/data/b.ldf'")  # fmt: skip
        assert (
            fails(cur, f"RESTORE DATABASE [B] FROM DISK = N'{RTC}/RestoreTimeClean.bak' WITH {move}") == 3142
        )
        run(
            cur,
            f"RESTORE DATABASE [B] FROM DISK = N'{RTC}/RestoreTimeClean.bak' WITH {move}, REPLACE, NORECOVERY",
        )
        same = ("MOVE N'RestoreTimeClean' TO N'/var/opt/mssql/data/c.mdf', "
                "MOVE N'RestoreTimeClean_log' TO N'/var/opt/mssql/data/c.mdf'")  # fmt: skip
        assert (
            fails(cur, f"RESTORE DATABASE [C] FROM DISK = N'{RTC}/RestoreTimeClean.bak' WITH {same}") == 3176
        )


def test_free_space_permissions_version_and_access(tmp_path: Path) -> None:
    server = start_model(tmp_path / "s", free_bytes={"/var/opt/mssql": 100_000}, version="13.0.5081.1")
    try:
        with connect(server) as conn:
            cur = conn.cursor()
            assert (
                fails(cur, f"RESTORE DATABASE [F] FROM DISK = N'{RTC}/RestoreTimeClean.bak' WITH {RTC_MOVE}")
                == 3257
            )
            newer = "/backups/more/sql2019/full_backup.bak"
            assert fails(cur, f"RESTORE DATABASE [G] FROM DISK = N'{newer}'") == 3169
            (free,) = run(cur, "SELECT available_bytes FROM sys.dm_os_volume_stats(1, 1)") or [(None,)]
            del free
        with connect(server, "reader") as conn:
            # 262 has severity 14 and 3013 severity 16: pymssql keeps the most severe one's number, so the
            # permission error itself is seen through the message handler, as with SQL Server.
            seen: list[tuple[int, bytes]] = []
            conn._conn.set_msghandler(lambda *args: seen.append((args[1], args[5])))
            cur = conn.cursor()
            assert fails(cur, f"RESTORE DATABASE [H] FROM DISK = N'{RTC}/RestoreTimeClean.bak'") == 3013
            assert (14, b"CREATE DATABASE permission denied in database 'master'.") in seen
    finally:
        server.stop()


def test_exclusive_access_single_user_and_standby(tmp_path: Path) -> None:
    server = start_model(tmp_path / "s", version="10.50.4000.0")
    try:
        with connect(server) as conn, connect(server) as other:
            cur, cur2 = conn.cursor(), other.cursor()
            run(cur, f"RESTORE DATABASE [RTC] FROM DISK = N'{RTC}/RestoreTimeClean.bak' WITH {RTC_MOVE}, "
                     "STANDBY = N'/var/opt/mssql/data/rtc_undo.dat'")  # fmt: skip
            assert run(
                cur, "SELECT state_desc, is_in_standby, is_read_only FROM sys.databases WHERE name = N'RTC'"
            ) == [("ONLINE", True, True)]
            assert (server.config.root / "var/opt/mssql/data/rtc_undo.dat").is_file()
            run(cur2, "USE [RTC]")
            assert (
                fails(cur, f"RESTORE LOG [RTC] FROM DISK = N'{RTC}/RestoreTimeClean_1.trn' WITH NORECOVERY")
                == 3101
            )
            run(cur2, "USE [master]")
            run(cur, f"RESTORE LOG [RTC] FROM DISK = N'{RTC}/RestoreTimeClean_1.trn' WITH NORECOVERY")
            run(cur, "RESTORE DATABASE [RTC] WITH RECOVERY")
            run(cur, "ALTER DATABASE [RTC] SET SINGLE_USER WITH ROLLBACK IMMEDIATE")
            run(cur, "USE [RTC]")
            assert fails(cur2, "USE [RTC]") == 924
            assert (
                fails(cur, f"RESTORE DATABASE [RTC] FROM DISK = N'{RTC}/RestoreTimeClean.bak' WITH REPLACE")
                == 3102
            )
            run(cur, "USE [master]; ALTER DATABASE [RTC] SET MULTI_USER")
            run(cur, "DBCC CHECKDB ([RTC]) WITH NO_INFOMSGS")
            run(cur, "DROP DATABASE [RTC]")
            assert run(cur, "SELECT COUNT(*) FROM sys.databases WHERE name = N'RTC'") == [(0,)]
    finally:
        server.stop()


def test_standby_is_refused_when_an_upgrade_is_needed(model: ModelServer) -> None:
    with connect(model) as conn:
        cur = conn.cursor()
        error = fails(cur, f"RESTORE DATABASE [RTC] FROM DISK = N'{RTC}/RestoreTimeClean.bak' WITH {RTC_MOVE}, "
                           "STANDBY = N'/var/opt/mssql/data/u.dat'")  # fmt: skip
        assert error == 3180


@pytest.mark.parametrize("name", ["we]ird", "it's", "with space", "Ünïcødé"])
def test_database_names_are_quoted(model: ModelServer, name: str) -> None:
    quoted = "[" + name.replace("]", "]]") + "]"
    literal = name.replace("'", "''")
    with connect(model) as conn:
        cur = conn.cursor()
        stem = str(abs(hash(name)))
        run(cur, f"RESTORE DATABASE {quoted} FROM DISK = N'{RTC}/RestoreTimeClean.bak' WITH "
                 f"{moves('RestoreTimeClean', 'RestoreTimeClean_log', stem)}")  # fmt: skip
        assert run(cur, f"SELECT name, state_desc FROM sys.databases WHERE name = N'{literal}'") == [
            (name, "ONLINE")
        ]
        assert run(cur, f"SELECT DB_ID(N'{literal}')")[0][0] >= 5
