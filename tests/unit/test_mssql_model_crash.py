"""Live STATS progress, clients killed in the middle of a RESTORE, and a model restarted on its state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.conftest import REPO
from tests.mssql_model.client import ModelClient
from tests.mssql_model.testing import PASSWORDS, RTC, connect, fails, model_root, moves, run, start_model

RTC_MOVE = moves("RestoreTimeClean", "RestoreTimeClean_log", "rtc")


def _client(port: int, sql: str) -> subprocess.Popen[bytes]:
    """A separate client process running one statement, so that the test can kill it mid-way."""
    code = textwrap.dedent(f"""
        import pymssql
        conn = pymssql.connect(server="127.0.0.1", port={port}, user="sa", password={PASSWORDS["sa"]!r},
                               autocommit=True)
        conn.cursor().execute({sql!r})
    """)
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO)


def _wait(predicate: object, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_stats_messages_arrive_while_the_restore_runs(tmp_path: Path) -> None:
    server = start_model(tmp_path / "s", restore_mbps=2.0)  # RestoreTimeClean.bak: about 0.7 s
    try:
        with connect(server) as conn:
            arrivals: list[tuple[float, bytes]] = []
            conn._conn.set_msghandler(lambda *args: arrivals.append((time.monotonic(), args[5])))
            started = time.monotonic()
            run(conn.cursor(), f"RESTORE DATABASE [RTC] FROM DISK = N'{RTC}/RestoreTimeClean.bak' WITH {RTC_MOVE}, "
                               "STATS = 20")  # fmt: skip
            ended = time.monotonic()
        texts = [t for _, t in arrivals]
        assert texts[:5] == [f"{n} percent processed.".encode() for n in (20, 40, 60, 80, 100)]
        assert b"Processed 168 pages for database 'RTC', file 'RestoreTimeClean' on file 1." in texts
        assert texts[-1].startswith(b"RESTORE DATABASE successfully processed")
        first = arrivals[0][0]
        assert first - started < (ended - started) * 0.6  # the first one came long before the end
    finally:
        server.stop()


def test_client_killed_mid_restore_database_leaves_it_restoring(tmp_path: Path) -> None:
    state = tmp_path / "s"
    server = start_model(state, restore_mbps=0.2)  # about 7 s
    try:
        client = _client(server.port, f"RESTORE DATABASE [RTC] FROM DISK = N'{RTC}/RestoreTimeClean.bak' "
                                      f"WITH {RTC_MOVE}, NORECOVERY, STATS = 1")  # fmt: skip
        watcher = ModelClient(state)
        _wait(lambda: watcher.db_state("RTC") == "RESTORING")
        time.sleep(0.5)
        client.send_signal(signal.SIGKILL)
        client.wait()
        _wait(lambda: not server.instance.busy)
        db = watcher.database("RTC")
        assert db is not None and db.state == "RESTORING" and db.interrupted is not None
        assert watcher.history("RTC") == []
        server.config.restore_mbps = 10_000.0
        with connect(server) as conn:
            cur = conn.cursor()
            assert fails(cur, f"RESTORE LOG [RTC] FROM DISK = N'{RTC}/RestoreTimeClean_1.trn'") == 4319
            assert fails(cur, "RESTORE DATABASE [RTC] WITH RECOVERY") == 4319
            run(cur, f"RESTORE DATABASE [RTC] FROM DISK = N'{RTC}/RestoreTimeClean.bak' WITH NORECOVERY")
            run(cur, f"RESTORE LOG [RTC] FROM DISK = N'{RTC}/RestoreTimeClean_1.trn' WITH RECOVERY")
        assert watcher.db_state("RTC") == "ONLINE"
    finally:
        server.stop()


def test_client_killed_mid_restore_log_leaves_the_database_before_that_log(tmp_path: Path) -> None:
    state = tmp_path / "s"
    server = start_model(state)
    try:
        with connect(server) as conn:
            run(conn.cursor(), f"RESTORE DATABASE [RTC] FROM DISK = N'{RTC}/RestoreTimeClean.bak' WITH "
                               f"{RTC_MOVE}, NORECOVERY")  # fmt: skip
        server.config.restore_mbps = 0.01  # the log: about 7 s
        client = _client(
            server.port, f"RESTORE LOG [RTC] FROM DISK = N'{RTC}/RestoreTimeClean_1.trn' WITH NORECOVERY"
        )
        _wait(lambda: bool(server.instance.busy))
        time.sleep(0.3)
        client.send_signal(signal.SIGKILL)
        client.wait()
        _wait(lambda: not server.instance.busy)
        db = ModelClient(state).database("RTC")
        assert db is not None and db.redo_lsn == 25000000013200001 and db.interrupted is None
        server.config.restore_mbps = 10_000.0
        with connect(server) as conn:
            run(
                conn.cursor(),
                f"RESTORE LOG [RTC] FROM DISK = N'{RTC}/RestoreTimeClean_1.trn' WITH NORECOVERY",
            )
        assert len(ModelClient(state).history("RTC")) == 2
    finally:
        server.stop()


def test_model_process_restarted_on_its_state_folder_continues(tmp_path: Path) -> None:
    state = tmp_path / "s"
    model_root(state)

    def launch() -> tuple[subprocess.Popen[str], int]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.mssql_model", "--state", str(state), "--login",
             f"sa:{PASSWORDS['sa']}:sysadmin", "--restore-mbps", "10000"],
            cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[0] == "ready"
        return proc, int(line[1])

    proc, port = launch()
    try:
        with connect(port) as conn:
            cur = conn.cursor()
            run(
                cur,
                f"RESTORE DATABASE [RTC] FROM DISK = N'{RTC}/RestoreTimeClean.bak' WITH {RTC_MOVE}, NORECOVERY",
            )
            run(cur, "CREATE CREDENTIAL [https://acct.blob.core.windows.net/c] WITH IDENTITY = "
                     "'SHARED ACCESS SIGNATURE', SECRET = 'sv=x'")  # fmt: skip
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc, port = launch()
    try:
        with connect(port) as conn:
            cur = conn.cursor()
            assert run(cur, "SELECT state_desc FROM sys.databases WHERE name = N'RTC'") == [("RESTORING",)]
            assert run(cur, "SELECT name FROM sys.credentials") == [("https://acct.blob.core.windows.net/c",)]
            run(cur, f"RESTORE LOG [RTC] FROM DISK = N'{RTC}/RestoreTimeClean_1.trn' WITH RECOVERY")
            assert run(cur, "SELECT COUNT(*) FROM msdb.dbo.restorehistory") == [(2,)]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
