"""Crashes of the service with SQL Server migrations, on the restore model: `ferry serve` killed with -9, and
its agent killed with -9, each while one migration runs RESTORE DATABASE and another RESTORE LOG. The
model holds those statements (Config.hold) until the kill has landed; the model aborts them when their
connection drops, as SQL Server does. Afterwards every migration finishes and every backup set is restored
exactly once, as the model's restore history counts.

Each test has its own model and `ferry serve`, so the two run side by side on two workers.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.mssqlservice import STOPAT, MssqlServed, once_each, serve_with_model, sql2008_files
from tests.mssql_model.server import ModelServer

HOLD = 120.0  # seconds a held RESTORE would take: longer than any test waits for the kill


@pytest.fixture
def ms(tmp_path: Path) -> Iterator[MssqlServed]:
    yield from serve_with_model(tmp_path)


def _running(model: ModelServer) -> dict[str, str]:
    """database (lower) -> the RESTORE statement running on it now."""
    inst = model.instance
    with inst.lock:
        return {db: inst.sessions[spid].command for db, spid in inst.busy.items() if spid in inst.sessions}


def _wait(what: object, why: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not what():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not reached in {timeout} s: {why}"
        time.sleep(0.05)


def _restores_in_flight(ms: MssqlServed) -> tuple[str, str]:
    """Migrations of two databases, one held in RESTORE DATABASE and one in RESTORE LOG; their ids."""
    logs = ms.store("logs")
    ms.add(logs, "StopAt.bak", "StopAt_1.trn", folder=STOPAT)
    (restoring_log,) = ms.api.post("/api/v1/migrations", json={"source": str(logs), "target": "ms"}).json()[
        "migrations"
    ]
    ms.wait([restoring_log["id"]], {"ReadyForCutover"})

    ms.model.config.hold.update({"FULL": HOLD, "LOG": HOLD})
    full = ms.store("full")
    ms.add(full, *sql2008_files("dbareports"))
    (restoring_full,) = ms.api.post("/api/v1/migrations", json={"source": str(full), "target": "ms"}).json()[
        "migrations"
    ]
    ms.add(logs, "StopAt_2.trn", folder=STOPAT)
    _wait(
        lambda: _running(ms.model) == {"dbareports": "RESTORE DATABASE", "stopat": "RESTORE LOG"},
        "RESTORE DATABASE of dbareports and RESTORE LOG of StopAt running at once",
    )
    return restoring_full["id"], restoring_log["id"]


def _aborted_then_released(ms: MssqlServed) -> None:
    """The model noticed the dropped connections and aborted both statements; restores run at full speed
    from now on."""
    _wait(lambda: not _running(ms.model), "the model aborted the restores of the killed process")
    assert ms.counts.db_state("dbareports") == "RESTORING" and ms.counts.history("dbareports") == []
    assert len(ms.counts.history("StopAt")) == 2, "the full backup and the first log only"
    ms.model.config.hold.clear()


def _all_finish_once_each(ms: MssqlServed, ids: tuple[str, str]) -> None:
    ms.wait(list(ids), {"ReadyForCutover"}, timeout=180)
    ms.until(ids[1], lambda r: r["status"].get("last_file") == "StopAt_2.trn", "StopAt_2 restored")
    ms.cli("cutover", "--all-ready")
    ms.wait(list(ids), {"Succeeded"})
    assert {ms.counts.db_state(db) for db in ("dbareports", "StopAt")} == {"ONLINE"}
    once_each(ms.counts, "dbareports", 2)  # full and the newer differential
    once_each(ms.counts, "StopAt", 3)  # full and two logs
    for mid in ids:
        steps = [e["data"]["step"] for e in ms.served.steps(mid)]
        assert steps.count("restore_base") == 1 and steps.count("cutover") == 1, steps


def test_serve_killed_during_restore_database_and_restore_log(ms: MssqlServed) -> None:
    ids = _restores_in_flight(ms)
    ms.served.proc.send_signal(signal.SIGKILL)
    ms.served.proc.wait()
    _aborted_then_released(ms)
    ms.restart()
    _all_finish_once_each(ms, ids)


def test_agent_killed_during_restore_database_and_restore_log(ms: MssqlServed) -> None:
    ids = _restores_in_flight(ms)
    agent = _agent_pid(ms.served.proc.pid, "ms")
    subprocess.run(["kill", "-KILL", str(agent)], check=True)
    _aborted_then_released(ms)
    # `ferry serve` starts the agent again; the steps it ran are retried there after their heartbeat timeout
    _wait(lambda: _agent_pid(ms.served.proc.pid, "ms") not in {None, agent}, "a new agent started")
    _all_finish_once_each(ms, ids)


def _agent_pid(parent: int, target: str) -> int | None:
    """The `ferry agent --target TARGET` process `ferry serve` (pid `parent`) started."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"agent" in cmdline and target.encode() in cmdline:
            return int(proc.name)
    return None
