"""`ferry migrate` onto SQL Server, against the restore model: offline and online with log backups landing
in the store during the run, `ferry cutover` with the LSN proof, kill -9 and resume (every backup restored
exactly once, as the model's restore history counts), and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ferry.core.migration import State
from ferry.engines.base import CutoverRequest
from ferry.engines.sqlserver import apply
from tests.conftest import REPO
from tests.integration.mssqlrig import DB, RTC_FULL, RTC_LOGS, Recorder, Rig, make_rig
from tests.mssql_model.testing import PASSWORDS

LAST_LSN = "25000000022000001"  # LastLSN of RestoreTimeClean2_3.trn


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    yield from make_rig(tmp_path, monkeypatch)


@pytest.fixture
def fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    """Only the full and differential backups in the store: the logs arrive during the test."""
    yield from make_rig(tmp_path, monkeypatch, files=RTC_FULL)


def _ferry(r: Rig, *args: str, log: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "FERRY_MSSQL_PASSWORD": PASSWORDS["sa"], "FERRY_HOME": str(r.home)}
    out = log.open("w")
    return subprocess.Popen([sys.executable, "-m", "ferry", *args], stdout=out, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=REPO)  # fmt: skip


def _migrate_args(r: Rig, *more: str) -> list[str]:
    return ["migrate", str(r.store), "--to", r.url, "--backup-path-as", f"{r.store}=/store", *more]


def _wait(what: Callable[[], bool], seconds: float = 60, why: str = "") -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if what():
            return
        time.sleep(0.005)
    raise AssertionError(f"not reached in {seconds} s: {why}")


def _once_each(r: Rig, expected: int) -> None:
    counts = r.model.restore_counts(DB)
    assert len(counts) == expected and set(counts.values()) == {1}, counts


def test_offline_from_the_command_line(rig: Rig, tmp_path: Path) -> None:
    log = tmp_path / "out.json"
    proc = _ferry(rig, *_migrate_args(rig, "--offline", "--json", "--checkdb"), log=log)
    assert proc.wait(timeout=120) == 0, log.read_text()
    text = log.read_text()
    result = json.loads(text[text.index("{\n") :])
    assert result["lsn_proof"] and result["restored_last_lsn"] == LAST_LSN
    assert result["last_backup"] == "RestoreTimeClean2_3.trn" and result["checkdb"] == "clean"
    assert rig.model.db_state(DB) == "ONLINE"
    _once_each(rig, 5)


def test_online_applies_logs_as_they_land_then_cuts_over(fresh: Rig) -> None:
    r = fresh
    rec = Recorder()
    asked = threading.Event()

    def cutover() -> CutoverRequest | None:
        return CutoverRequest(time.time(), last_backup=RTC_LOGS[-1]) if asked.is_set() else None

    from ferry.pipeline.migrate import Migration

    done: list[object] = []
    runner = threading.Thread(target=lambda: done.append(Migration(r.job(online=True), rec, cutover).run()))
    runner.start()
    try:
        _wait(lambda: rec.states[-1:] == [State.READY_FOR_CUTOVER], why="caught up after the base backups")
        r.add(RTC_LOGS[2])  # the last log first: it waits for the two before it
        _wait(lambda: _status(rec, RTC_LOGS[2]) == "Arrived", why="the third log arrived")
        assert rec.last.state is State.READY_FOR_CUTOVER and rec.last.pending_files == 1
        r.add(*RTC_LOGS[:2])
        _wait(lambda: rec.last.last_file == RTC_LOGS[2], why="all logs restored")
        assert _status(rec, RTC_LOGS[2]) == "Restored" and _status(rec, "RestoreTimeClean.bak") == "Restored"
        seen = {s["status"] for st in rec.statuses for s in st.details.get("backup_sets", [])}
        assert {"Arrived", "Queued", "Restoring", "Restored"} <= seen
        assert rec.last.target_position == LAST_LSN and rec.last.lag_bytes == 0
        # The first run of logs (RestoreTimeClean_1..3) predates the differential: covered by it.
        r.add("RestoreTimeClean_1.trn")
        _wait(lambda: any(s["name"] == "RestoreTimeClean_1.trn" for s in rec.last.details["backup_sets"]))
        row = next(s for s in rec.last.details["backup_sets"] if s["name"] == "RestoreTimeClean_1.trn")
        assert row["status"] == "Skipped" and "already applied" in row["reason"]
        asked.set()
        runner.join(timeout=60)
    finally:
        asked.set()
        runner.join(timeout=60)
    outcome = done[0]
    assert outcome.state == "Succeeded"  # type: ignore[attr-defined]
    result = outcome.result  # type: ignore[attr-defined]
    assert result["lsn_proof"] and result["expected_last_lsn"] == LAST_LSN
    assert State.CUTTING_OVER in rec.states and result["downtime_seconds"] < 30
    _once_each(r, 5)


def _status(rec: Recorder, name: str) -> str | None:
    rows = rec.last.details.get("backup_sets", [])
    return next((row["status"] for row in rows if row["name"] == name), None)


def test_ferry_cutover_waits_for_the_named_tail_log_backup(fresh: Rig, tmp_path: Path) -> None:
    r = fresh
    r.add(*RTC_LOGS[:2])
    log = tmp_path / "migrate.log"
    proc = _ferry(r, *_migrate_args(r), log=log)
    try:
        _wait(lambda: "ReadyForCutover" in log.read_text(), why="ready for cutover")
        asked = subprocess.run(
            [sys.executable, "-m", "ferry", "cutover", r.url, "--database", DB, "--last-backup", RTC_LOGS[2]],
            capture_output=True, text=True, timeout=60, cwd=REPO,
            env={**os.environ, "FERRY_HOME": str(r.home)},
        )  # fmt: skip
        assert asked.returncode == 0, asked.stdout + asked.stderr
        time.sleep(1.5)
        assert proc.poll() is None and r.model.db_state(DB) == "RESTORING"  # it waits for the tail backup
        r.add(RTC_LOGS[2])
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert "LSN proof" in out and "holds" in out and LAST_LSN in out
    assert r.model.db_state(DB) == "ONLINE"
    _once_each(r, 5)


def test_kill_during_restore_database_then_resume(rig: Rig, tmp_path: Path) -> None:
    rig.server.config.restore_mbps = 0.3  # the full backup takes about 5 s
    first = _ferry(rig, *_migrate_args(rig, "--offline"), log=tmp_path / "1.log")
    _wait(lambda: bool(rig.server.instance.busy), why="RESTORE DATABASE running")
    time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.wait()
    _wait(lambda: not rig.server.instance.busy, why="the model aborted the restore")
    assert rig.model.db_state(DB) == "RESTORING" and rig.model.history(DB) == []
    rig.server.config.restore_mbps = 10_000.0
    second = _ferry(rig, *_migrate_args(rig, "--offline"), log=tmp_path / "2.log")
    assert second.wait(timeout=120) == 0, (tmp_path / "2.log").read_text()
    assert rig.model.db_state(DB) == "ONLINE"
    _once_each(rig, 5)


def test_kill_during_restore_log_then_resume(rig: Rig, tmp_path: Path) -> None:
    first = _ferry(rig, *_migrate_args(rig, "--offline"), log=tmp_path / "1.log")
    state = rig.server.instance.state
    _wait(lambda: len(state.restorehistory) >= 2, why="full and differential restored")
    rig.server.config.restore_mbps = 0.02  # each log takes seconds from now on
    _wait(
        lambda: bool(rig.server.instance.busy) and len(state.restorehistory) >= 2, why="RESTORE LOG running"
    )
    time.sleep(0.3)
    first.send_signal(signal.SIGKILL)
    first.wait()
    _wait(lambda: not rig.server.instance.busy, why="the model aborted the restore")
    assert rig.model.db_state(DB) == "RESTORING"
    applied = len(rig.model.history(DB))
    assert 2 <= applied < 5
    rig.server.config.restore_mbps = 10_000.0
    second = _ferry(rig, *_migrate_args(rig, "--offline"), log=tmp_path / "2.log")
    assert second.wait(timeout=120) == 0, (tmp_path / "2.log").read_text()
    _once_each(rig, 5)


def test_a_log_the_target_calls_too_early_counts_as_applied(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resumed run whose view of the target is behind (another client applied a log meanwhile): the log
    fails with 4326 and is counted as done, never sent again."""
    real = apply.Applier.look
    stale: dict[str, object] = {}

    def look(self: apply.Applier, restoring: str | None = None) -> object:
        view, pos = real(self, restoring)
        if view.queue and "done" not in stale:
            # Apply the next log behind Ferry's back, then let Ferry try it from its stale view.
            step = view.queue[0]
            with rig.connect() as conn:
                conn.cursor().execute(
                    f"RESTORE LOG [{DB}] FROM DISK = N'/store/{step.backup.files[0]}' WITH NORECOVERY"
                )
            stale["done"] = step.backup.files[0]
        return view, pos

    monkeypatch.setattr(apply.Applier, "look", look)
    outcome, _ = rig.run(rig.job())
    assert outcome.state == "Succeeded" and outcome.result["lsn_proof"]
    _once_each(rig, 5)


# -- bad input ---------------------------------------------------------------------------------------------


def _cli(r: Rig, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {**os.environ, "FERRY_MSSQL_PASSWORD": PASSWORDS["sa"], "FERRY_HOME": str(r.home)}
    return subprocess.run([sys.executable, "-m", "ferry", *args], capture_output=True, text=True, timeout=120,
                          env={**base, **(env or {})}, cwd=REPO)  # fmt: skip


def test_a_wrong_password_is_a_clear_error_and_never_echoed(rig: Rig) -> None:
    done = _cli(rig, *_migrate_args(rig, "--offline"), env={"FERRY_MSSQL_PASSWORD": "Wr0ng-s3cret"})
    assert done.returncode == 2, done.stderr
    assert "refused the login of 'sa'" in done.stderr and "hint:" in done.stderr
    assert "Wr0ng-s3cret" not in done.stdout + done.stderr and "Traceback" not in done.stderr
    assert rig.model.database(DB) is None


def test_an_unreachable_server_fails_fast_and_clearly(rig: Rig) -> None:
    started = time.monotonic()
    done = _cli(rig, "migrate", str(rig.store), "--to", "mssql://sa@127.0.0.1:9", "--offline")
    assert done.returncode in (1, 2) and "cannot reach mssql://sa@127.0.0.1:9" in done.stderr
    assert "Traceback" not in done.stderr and time.monotonic() - started < 60


def test_no_password_and_no_such_database_are_usage_errors(rig: Rig) -> None:
    env = {"FERRY_MSSQL_PASSWORD": ""}
    done = _cli(rig, *_migrate_args(rig, "--offline"), env=env)
    assert done.returncode == 2 and "no password for" in done.stderr
    done = _cli(rig, *_migrate_args(rig, "--offline", "--database", "nope"))
    assert done.returncode == 2 and "[RestoreTimeClean]" in done.stderr


@pytest.mark.parametrize("name", ["a]b", "it's", "two words", "Ünïcødé データ", "x]]; DROP DATABASE [y"])
def test_hostile_database_names_restore_safely(rig: Rig, name: str) -> None:
    outcome, _ = rig.run(rig.job(target_database=name))
    assert outcome.state == "Succeeded" and outcome.result["database"] == name
    assert rig.model.db_state(name) == "ONLINE" and set(rig.model.databases()) == {name}


def test_a_name_that_would_split_a_script_is_refused_before_anything_runs(rig: Rig) -> None:
    from ferry.core.findings import MigrationBlocked

    with pytest.raises(MigrationBlocked) as info:
        rig.run(rig.job(target_database="x\nGO\ny"))
    assert "not-scriptable" in {f.code for f in info.value.findings}
    assert rig.model.databases() == {}
