"""The system views a restore driver reads, and RESTORE FROM URL through a SAS credential."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import corpus_root
from tests.mssql_model.server import ModelServer
from tests.mssql_model.testing import RTC, connect, fails, model, moves, run

__all__ = ["model"]

RTC_MOVE = moves("RestoreTimeClean", "RestoreTimeClean_log", "rtc")


def test_views_a_restore_driver_reads(model: ModelServer) -> None:
    with connect(model) as conn, connect(model, "creator") as other:
        cur = conn.cursor()
        run(
            cur,
            f"RESTORE DATABASE [RTC] FROM DISK = N'{RTC}/RestoreTimeClean.bak' WITH {RTC_MOVE}, NORECOVERY",
        )
        run(other.cursor(), "USE [msdb]")
        row = run(cur, "SELECT name, database_id, state, state_desc, user_access, user_access_desc, is_in_standby, "
                       "recovery_model_desc, compatibility_level, owner_sid, is_read_only FROM sys.databases "
                       "WHERE name = N'RTC'")[0]  # fmt: skip
        assert row == ("RTC", 5, 1, "RESTORING", 0, "MULTI_USER", False, "FULL", 100, b"\x01", False)
        files = run(cur, "SELECT mf.file_id, mf.type, mf.type_desc, mf.name, mf.physical_name, mf.state_desc, "
                         "mf.size, mf.redo_start_lsn, mf.redo_target_lsn, mf.differential_base_lsn, "
                         "mf.differential_base_guid, vs.volume_mount_point, vs.total_bytes, vs.available_bytes "
                         "FROM sys.master_files AS mf CROSS APPLY sys.dm_os_volume_stats(mf.database_id, mf.file_id) "
                         "AS vs WHERE mf.database_id = DB_ID(N'RTC') ORDER BY mf.file_id")  # fmt: skip
        assert [f[3] for f in files] == ["RestoreTimeClean", "RestoreTimeClean_log"]
        assert files[0][1:3] == (0, "ROWS") and files[1][1:3] == (1, "LOG")
        assert files[0][4] == "/var/opt/mssql/data/rtc.mdf" and files[0][5] == "RESTORING"
        assert int(files[0][7]) == 25000000013200001 and files[0][8] is None
        assert int(files[0][9]) == 25000000006200170 and files[0][10] is not None
        assert files[0][11] == "/" and files[0][13] < files[0][12]
        sessions = run(cur, "SELECT s.session_id, s.login_name, DB_NAME(s.database_id) FROM sys.dm_exec_sessions s "
                            "WHERE s.database_id = DB_ID(N'msdb')")  # fmt: skip
        assert [(r[1], r[2]) for r in sessions] == [("creator", "msdb")]
        assert run(cur, "SELECT COUNT(*) FROM sys.sysprocesses WHERE dbid = DB_ID(N'msdb')") == [(1,)]
        assert run(cur, "SELECT DATABASEPROPERTYEX(N'RTC', 'Status'), SUSER_SNAME(), @@SERVERNAME") == [
            ("RESTORING", "sa", "MSSQLMODEL")
        ]
        assert run(cur, "EXEC master.dbo.xp_fileexist N'/var/opt/mssql/data/rtc.mdf'") == [(1, 0, 1)]
        assert run(cur, "EXEC master..xp_fileexist N'/var/opt/mssql/data'") == [(0, 1, 1)]
        history = run(cur, "SELECT TOP (1) bs.first_lsn, bs.last_lsn, bs.database_backup_lsn, bs.type, bs.position, "
                           "bs.family_guid, rh.destination_database_name FROM msdb.dbo.restorehistory AS rh "
                           "INNER JOIN msdb.dbo.backupset AS bs ON bs.backup_set_id = rh.backup_set_id "
                           "ORDER BY rh.restore_date DESC")  # fmt: skip
        assert history[0][3:5] == ("D", 1) and history[0][6] == "RTC"
        assert fails(cur, "SELECT * FROM sys.dm_os_volume_stats(1)") == 174


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """A blob endpoint: answers HEAD and ranged GET for one file, only with the right SAS."""

    blob: Path
    sas = "sv=2020-10-02&sig=model"

    def _allowed(self) -> bool:
        return self.path.endswith("?" + self.sas)

    def do_HEAD(self) -> None:
        if not self._allowed():
            self.send_response(403)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(self.blob.stat().st_size))
        self.send_header("x-ms-blob-type", "BlockBlob")
        self.end_headers()

    def do_GET(self) -> None:
        if not self._allowed():
            self.send_response(403)
            self.end_headers()
            return
        data = self.blob.read_bytes()
        first, last = self.headers["Range"].removeprefix("bytes=").split("-")
        chunk = data[int(first) : int(last) + 1]
        self.send_response(206)
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        self.wfile.write(chunk)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def blob_server() -> Iterator[str]:
    corpus = corpus_root()
    if corpus is None:
        pytest.skip("SQL Server backup corpus not found")
    _RangeHandler.blob = corpus / "RestoreTimeClean/RestoreTimeClean.bak"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/devstoreaccount1/backups"
    finally:
        server.shutdown()


def test_restore_from_url_with_a_sas_credential(model: ModelServer, blob_server: str) -> None:
    url = f"{blob_server}/RestoreTimeClean.bak"
    with connect(model) as conn:
        cur = conn.cursor()
        assert fails(cur, f"RESTORE HEADERONLY FROM URL = N'{url}'") == 3201
        run(cur, f"CREATE CREDENTIAL [{blob_server}] WITH IDENTITY = 'SHARED ACCESS SIGNATURE', "
                 "SECRET = 'sv=2020-10-02&sig=wrong'")  # fmt: skip
        assert fails(cur, f"RESTORE HEADERONLY FROM URL = N'{url}'") == 3201
        run(cur, f"ALTER CREDENTIAL [{blob_server}] WITH IDENTITY = 'SHARED ACCESS SIGNATURE', "
                 f"SECRET = '{_RangeHandler.sas}'")  # fmt: skip
        assert run(cur, f"RESTORE HEADERONLY FROM URL = N'{url}'")[0][9] == "RestoreTimeClean"
        run(cur, f"RESTORE DATABASE [FromUrl] FROM URL = N'{url}' WITH {RTC_MOVE}")
        assert run(cur, "SELECT physical_device_name, device_type FROM msdb.dbo.backupmediafamily") == [
            (url, 9)
        ]
        run(cur, f"DROP CREDENTIAL [{blob_server}]")
        assert run(cur, "SELECT COUNT(*) FROM sys.credentials") == [(0,)]


def test_rows_dropped_before_loading_change_no_answer(
    model: ModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model loads only the view rows a query's top-level equalities and inner joins can match
    (tests/mssql_model/pushdown.py): every query Ferry sends about one database answers the same as with
    every row loaded, names compared without regard to case as SQL Server does."""
    from ferry.engines.sqlserver import facts
    from tests.mssql_model import query

    with connect(model) as conn:
        cur = conn.cursor()
        for name, stem in (("RTC", "rtc"), ("Other", "other")):
            move = moves("RestoreTimeClean", "RestoreTimeClean_log", stem)
            run(
                cur,
                f"RESTORE DATABASE [{name}] FROM DISK = N'{RTC}/RestoreTimeClean.bak' WITH {move}, NORECOVERY",
            )
        questions = [
            *facts.position_batch("rtc").split(";\n"),
            "SELECT d.name FROM sys.databases AS d WHERE d.database_id = 5 AND (d.state = 1)",
            "SELECT mf.name FROM sys.master_files AS mf WHERE mf.database_id = DB_ID(N'Other') OR mf.file_id = 1",
        ]
        reduced = [run(cur, q) for q in questions]
        monkeypatch.setattr(query, "reduce_rows", lambda *args: None)
        assert [run(cur, q) for q in questions] == reduced
        assert reduced[0] and reduced[1] and reduced[2] and reduced[4]
