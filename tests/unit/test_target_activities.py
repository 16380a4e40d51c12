"""The target activities' pieces that need no server: LocalReplays (how the cutover, or a cancel's
stop_target, takes a target over from the replay running on the same agent, without waiting for Temporal
to carry a cancel through a heartbeat) and the offline last backup's check."""

from __future__ import annotations

import threading
import time
from typing import Any, cast

import pytest

from ferry.engines.postgres import migration as pgm
from ferry.service.failures import as_application_error
from ferry.service.replays import LocalReplays, ReplayStillRunning


def _replay_thread(replays: LocalReplays, mid: str, hand: object | None, ran: list[str]) -> threading.Thread:
    """A replay as the activity runs it: registered, waiting until stopped, offering its Replay."""

    def body() -> None:
        with replays.run(mid) as stop:
            if stop is None:
                ran.append("blocked")
                return
            ran.append("started")
            stop.wait(10)
            if hand is not None and replays.offer(mid, cast(pgm.Replay, hand)):
                ran.append("handed")

    thread = threading.Thread(target=body)
    thread.start()
    return thread


def _wait_for(ran: list[str], what: str) -> None:
    deadline = time.monotonic() + 5
    while what not in ran:
        assert time.monotonic() < deadline, ran
        time.sleep(0.01)


def test_taking_over_stops_the_replay_and_receives_its_replay() -> None:
    replays, ran, hand = LocalReplays(), [], object()
    thread = _replay_thread(replays, "mig-a", hand, ran)
    _wait_for(ran, "started")
    with replays.taking_over("mig-a") as handed:
        assert handed is hand and ran == ["started", "handed"]
        late: list[str] = []
        _replay_thread(replays, "mig-a", None, late).join(5)  # an attempt that comes meanwhile
        assert late == ["blocked"]
    thread.join(5)
    again: list[str] = []
    t = _replay_thread(replays, "mig-a", None, again)  # once the step is over, replay may run again
    _wait_for(again, "started")
    with replays.taking_over("mig-a") as handed:
        assert handed is None  # stopped, but it offered nothing
    t.join(5)


def test_taking_over_with_no_replay_running_yields_none() -> None:
    with LocalReplays().taking_over("mig-b") as handed:
        assert handed is None


def test_a_replay_that_does_not_stop_is_a_retryable_error() -> None:
    replays = LocalReplays()
    release = threading.Event()

    def stubborn() -> None:
        with replays.run("mig-c"):
            release.wait(10)  # ignores its stop event

    thread = threading.Thread(target=stubborn)
    thread.start()
    time.sleep(0.05)
    with pytest.raises(ReplayStillRunning) as caught, replays.taking_over("mig-c", timeout=0.1):
        pass
    release.set()
    thread.join(5)
    assert "mig-c" in caught.value.message and caught.value.hint
    err: Any = as_application_error(caught.value)
    assert err.non_retryable is False


def test_an_offline_last_backup_must_name_a_wal_segment() -> None:
    """`last_backup` of a PostgreSQL migration: a WAL file name, replayed through its end; anything else
    (a SQL Server log backup's name, say) is refused at validate, naming it, with a hint."""
    from types import SimpleNamespace

    from ferry.core.errors import UsageError
    from ferry.engines.postgres.driver import until_lsn
    from ferry.service import workflow_io as io

    plan = cast(pgm.SourcePlan, SimpleNamespace(source=SimpleNamespace(segment_size=16 << 20)))

    def until(m: io.MigrationInput, plan: pgm.SourcePlan) -> int | None:  # the driver's, as prepare calls it
        return until_lsn(m.last_backup, m.mode == "online", plan.source.segment_size)

    last = io.MigrationInput("mig-d", "/b/pg", "t", "offline", "wal/000000010000000000000042")
    assert until(last, plan) == 0x43 << 24  # the end of segment 0x42
    assert until(io.MigrationInput("mig-d", "/b/pg", "t", "online", "x.trn"), plan) is None
    with pytest.raises(UsageError) as caught:
        until(io.MigrationInput("mig-d", "/b/pg", "t", "offline", "db1_LOG_0042.trn"), plan)
    assert "'db1_LOG_0042.trn'" in caught.value.message and "WAL" in caught.value.hint
