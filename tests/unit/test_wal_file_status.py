"""The per-file status of the WAL in the store (`Prefetcher.stats().files` and `.counts`) and the log backup
set `Replay._report` puts into a migration's status details. A local store folder with segment files of
the right size (sparse: nothing is written), the prefetcher's rounds run inline with `poll()`."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ferry.core.migration import MigrationStatus, State
from ferry.engines.postgres import archive
from ferry.engines.postgres.archive import (
    SHOW_ARRIVED,
    SHOW_RESTORED,
    SHOW_SKIPPED,
    Prefetcher,
    PrefetchStats,
    WalFileStatus,
)
from ferry.engines.postgres.migration import Replay, StatusReporter, _Rate
from ferry.engines.postgres.target import Phase, TargetStatus
from ferry.engines.postgres.wal import SegmentName

SEG = 1024 * 1024


def name(tli: int, segno: int) -> str:
    return SegmentName(tli, segno).name(SEG)


def segment(wal: Path, tli: int, segno: int) -> None:
    with open(wal / name(tli, segno), "wb") as f:
        f.truncate(SEG)  # a segment's size, without writing it


def prefetcher(tmp_path: Path) -> tuple[Path, Prefetcher]:
    store = tmp_path / "store"
    wal = store / "wal"
    wal.mkdir(parents=True, exist_ok=True)
    pre = Prefetcher(str(store), tmp_path / "spool", timeline=1, segment_size=SEG, depth=2, list_interval=0)
    pre.start()
    pre.stop()  # prepared the spool; poll() runs the rounds inline, deterministically
    return wal, pre


def statuses(stats: PrefetchStats) -> dict[str, str]:
    return {f.name: f.status for f in stats.files}


def test_prefetch_files_follow_the_replay_position(tmp_path: Path) -> None:
    wal, pre = prefetcher(tmp_path)
    for segno in range(1, 9):
        segment(wal, 1, segno)
    assert pre.stats().files == () and pre.stats().counts == {}  # nothing listed yet

    pre.advance(3 * SEG + 0x28)  # replay starts in segment 3 (the base backup's start)
    pre.poll()
    stats = pre.stats()
    assert statuses(stats) == {
        name(1, 1): "skipped",
        name(1, 2): "skipped",
        name(1, 3): "restoring",
        **{name(1, s): "arrived" for s in range(4, 9)},
    }
    assert [f.name for f in stats.files] == [name(1, s) for s in range(1, 9)]  # oldest first
    assert stats.counts == {"skipped": 2, "restored": 0, "restoring": 1, "arrived": 5}
    first = stats.files[0]
    assert first == WalFileStatus(
        name(1, 1), "skipped", "before the replay start (its changes are in the base backup)", SEG
    )
    assert all(f.reason is None and f.size == SEG for f in stats.files[2:])

    # Replay moves on: stats() classifies against the new position at once, before the next listing.
    pre.advance(5 * SEG + 0x100)
    stats = pre.stats()
    assert [statuses(stats)[name(1, s)] for s in range(1, 9)] == [
        "skipped",
        "skipped",
        "restored",
        "restored",
        "restoring",
        "arrived",
        "arrived",
        "arrived",
    ]
    assert stats.counts == {"skipped": 2, "restored": 2, "restoring": 1, "arrived": 3}

    # A new segment arrives: the next listing shows it.
    segment(wal, 1, 9)
    pre.poll()
    stats = pre.stats()
    assert statuses(stats)[name(1, 9)] == "arrived" and stats.counts["arrived"] == 4
    # At a segment boundary (after a WAL switch) the position is in the next segment: that one restores.
    pre.advance(6 * SEG)
    stats = pre.stats()
    assert statuses(stats)[name(1, 5)] == "restored" and statuses(stats)[name(1, 6)] == "restoring"
    # Replay waits for a segment the store does not have: none restores, the rest is restored.
    pre.advance(10 * SEG)
    pre.poll()
    stats = pre.stats()
    assert stats.counts == {"skipped": 2, "restored": 7, "restoring": 0, "arrived": 0}
    assert stats.missing_next == name(1, 10)


def test_prefetch_files_on_a_second_timeline(tmp_path: Path) -> None:
    wal, pre = prefetcher(tmp_path)
    for segno in range(1, 7):  # timeline 1 up to segment 6: the source kept writing after the fork
        segment(wal, 1, segno)
    for segno in range(5, 9):  # timeline 2 from segment 5 (the switch point 0/500100 is inside it)
        segment(wal, 2, segno)
    (wal / "00000002.history").write_text("1\t0/500100\tno recovery target specified\n")
    segment(wal, 3, 7)  # a timeline without a history file: not followed
    (wal / f"{name(1, 5)}.partial").write_bytes(b"")
    (wal / f"{name(1, 2)}.00000028.backup").write_text("START WAL LOCATION: 0/2000028\n")

    pre.advance(2 * SEG + 0x28)
    pre.poll()
    stats = pre.stats()
    assert stats.timeline == 2
    by_name = {f.name: f for f in stats.files}
    assert name(1, 2) + ".00000028.backup" not in by_name and "00000002.history" not in by_name
    assert by_name[name(1, 1)].reason == "before the replay start (its changes are in the base backup)"
    assert [by_name[name(1, s)].status for s in (2, 3, 4)] == ["restoring", "arrived", "arrived"]
    # The switch segment is read from timeline 2: timeline 1's copy is superseded.
    superseded = by_name[name(1, 5)]
    assert superseded.status == "skipped"
    assert superseded.reason == f"superseded by {name(2, 5)}, timeline 2's copy of this segment"
    assert [by_name[name(2, s)].status for s in range(5, 9)] == ["arrived"] * 4
    # Timeline 1 ended inside segment 5: its segment 6 is not on the restore path.
    assert by_name[name(1, 6)].status == "skipped"
    assert by_name[name(1, 6)].reason == ("after timeline 1 ends at 0/500100; replay continues on timeline 2")
    assert by_name[name(3, 7)].status == "skipped"
    assert by_name[name(3, 7)].reason == "on timeline 3, which is not on the restore path (timelines 1, 2)"
    partial = by_name[f"{name(1, 5)}.partial"]
    assert partial.status == "skipped" and "partial" in (partial.reason or "") and partial.size == 0
    assert stats.counts == {"skipped": 5, "restored": 0, "restoring": 1, "arrived": 6}

    # Replay crosses the switch point: timeline 2's copy restores.
    pre.advance(5 * SEG + 0x200)
    stats = pre.stats()
    assert statuses(stats)[name(2, 5)] == "restoring" and statuses(stats)[name(1, 4)] == "restored"
    assert statuses(stats)[name(1, 5)] == "skipped"
    assert stats.counts == {"skipped": 5, "restored": 3, "restoring": 1, "arrived": 3}


def test_prefetch_files_are_bounded_and_counts_complete(tmp_path: Path) -> None:
    wal, pre = prefetcher(tmp_path)
    total = 200
    for segno in range(1, total + 1):
        segment(wal, 1, segno)
    for segno in range(1, 41):  # copies on a timeline that is not followed
        segment(wal, 9, segno)

    pre.advance(31 * SEG)  # segments 1..30: before the start
    pre.advance(100 * SEG + 8)  # 31..99 restored, 100 restoring, 101..200 arrived
    pre.poll()
    stats = pre.stats()
    assert stats.counts == {"skipped": 30 + 40, "restored": 69, "restoring": 1, "arrived": 100}
    assert sum(stats.counts.values()) == total + 40
    shown = Counter(f.status for f in stats.files)
    assert shown == {
        "skipped": SHOW_SKIPPED,
        "restored": SHOW_RESTORED,
        "restoring": 1,
        "arrived": SHOW_ARRIVED,
    }
    restored = [f.name for f in stats.files if f.status == "restored"]
    assert restored == [name(1, s) for s in range(100 - SHOW_RESTORED, 100)]  # the newest ones
    arrived = [f.name for f in stats.files if f.status == "arrived"]
    assert arrived == [name(1, s) for s in range(101, 101 + SHOW_ARRIVED)]  # the next ones
    skipped = [f for f in stats.files if f.status == "skipped"]
    # The newest skipped: timeline 9's copies of segments 21..40 (and timeline 1's 21..30 before the start),
    # by segment number then timeline.
    newest = sorted([*((s, 1) for s in range(1, 31)), *((s, 9) for s in range(1, 41))])[-SHOW_SKIPPED:]
    assert [f.name for f in skipped] == [name(t, s) for s, t in newest]
    # The view follows the position and stays bounded.
    pre.advance(total * SEG + 16)
    stats = pre.stats()
    assert stats.counts == {"skipped": 70, "restored": 169, "restoring": 1, "arrived": 0}
    assert len(stats.files) == SHOW_SKIPPED + SHOW_RESTORED + 1


def test_prefetch_start_is_the_lowest_position_seen(tmp_path: Path) -> None:
    wal, pre = prefetcher(tmp_path)
    for segno in range(1, 6):
        segment(wal, 1, segno)
    pre.advance(4 * SEG)
    pre.poll()
    assert pre.stats().counts["skipped"] == 3
    pre.advance(2 * SEG + 8)  # the server restarted from an earlier restartpoint: it replays 2.. again
    stats = pre.stats()
    assert stats.counts == {"skipped": 1, "restored": 0, "restoring": 1, "arrived": 3}


def test_prefetch_start_is_the_base_backup_before_the_first_position(tmp_path: Path) -> None:
    wal, pre = prefetcher(tmp_path)
    for segno in range(1, 9):
        segment(wal, 1, segno)
    # Backup history files: the restored base backup began in segment 2, a later one in segment 6, and
    # one on a timeline that is not followed in segment 3.
    for tli, segno in ((1, 2), (1, 6), (5, 3)):
        (wal / f"{name(tli, segno)}.00000028.backup").write_text("START WAL LOCATION: ...\n")
    # The server replayed segments 2 and 3 from the store before the prefetcher saw it, in segment 4.
    pre.advance(4 * SEG + 0x100)
    pre.poll()
    stats = pre.stats()
    assert [statuses(stats)[name(1, s)] for s in range(1, 6)] == [
        "skipped",
        "restored",
        "restored",
        "restoring",
        "arrived",
    ]
    assert stats.counts == {"skipped": 1, "restored": 2, "restoring": 1, "arrived": 4}
    assert not any(f.name.endswith(".backup") for f in stats.files)


# -- the log backup set in the status details --------------------------------------------------------


def target_status(position: int) -> TargetStatus:
    return TargetStatus(
        phase=Phase.RECOVERY,
        running=True,
        accepting_connections=True,
        in_recovery=True,
        replay_lsn=position,
        last_replay_time=None,
        timeline=1,
        replay_paused=False,
        current_lsn=None,
        control_state="in archive recovery",
        min_recovery_lsn=None,
        checkpoint_redo_lsn=None,
        segment_size=SEG,
    )


def replay_with(reporter: StatusReporter) -> Replay:
    rep = Replay.__new__(Replay)  # _report needs only the reporter: no target, no prefetcher thread
    rep.reporter = reporter
    return rep


FULL = {"name": "base/base.tar", "kind": "full", "files": [{"name": "base/base.tar", "status": "restored"}]}


def test_report_puts_the_log_set_beside_the_full_one(tmp_path: Path) -> None:
    wal, pre = prefetcher(tmp_path)
    for segno in range(1, 6):
        segment(wal, 1, segno)
    (wal / f"{name(1, 1)}.partial").write_bytes(b"x")
    reported: list[MigrationStatus] = []
    reporter = StatusReporter(
        reported.append,
        State.RESTORING_LOGS,
        "starting",
        {"full_backup_restored": True, "backup_sets": [FULL, {"name": "old", "kind": "log", "files": []}]},
    )
    rep = replay_with(reporter)
    rep._report(target_status(2 * SEG + 8), pre.stats(), _Rate(), False)
    assert reporter.status.details["backup_sets"][1]["name"] == "old"  # no listing yet: left as it was

    pre.advance(2 * SEG + 8)
    pre.poll()
    pre.advance(3 * SEG + 8)
    rep._report(target_status(3 * SEG + 8), pre.stats(), _Rate(), False)
    status = reporter.status
    assert status.current_file == name(1, 3) and status.last_file == name(1, 2)
    assert status.details["full_backup_restored"] is True
    full, log = status.details["backup_sets"]
    assert full == FULL
    assert log == {
        "name": "WAL timeline 1",
        "kind": "log",
        "counts": {"skipped": 2, "restored": 1, "restoring": 1, "arrived": 2},
        "files": [
            {
                "name": name(1, 1),
                "status": "skipped",
                "reason": "before the replay start (its changes are in the base backup)",
                "size": SEG,
            },
            {
                "name": f"{name(1, 1)}.partial",
                "status": "skipped",
                "reason": archive._PARTIAL_REASON,
                "size": 1,
            },
            {"name": name(1, 2), "status": "restored", "size": SEG},
            {"name": name(1, 3), "status": "restoring", "size": SEG},
            {"name": name(1, 4), "status": "arrived", "size": SEG},
            {"name": name(1, 5), "status": "arrived", "size": SEG},
        ],
        "shown": 6,
    }
    assert json.loads(json.dumps(status.to_json()))["details"] == status.details
    # Reported again: one log set, replaced.
    pre.advance(5 * SEG + 8)
    rep._report(target_status(5 * SEG + 8), pre.stats(), _Rate(), False)
    sets = reporter.status.details["backup_sets"]
    assert [s["kind"] for s in sets] == ["full", "log"] and sets[1]["counts"]["restored"] == 3


def test_report_without_a_restoring_segment_shows_the_missing_one(tmp_path: Path) -> None:
    wal, pre = prefetcher(tmp_path)
    for segno in (1, 2, 4):  # segment 3 is missing while 4 exists
        segment(wal, 1, segno)
    reporter = StatusReporter(lambda status: None, State.RESTORING_LOGS, "starting")
    pre.advance(1 * SEG + 8)
    pre.advance(3 * SEG)
    pre.poll()
    stats = pre.stats()
    assert stats.gap and stats.missing_next == name(1, 3)
    replay_with(reporter)._report(target_status(3 * SEG), stats, _Rate(), False)
    status = reporter.status
    assert status.current_file == name(1, 3) and status.last_file == name(1, 2)
    assert status.blocked_reason is not None and name(1, 3) in status.blocked_reason
    assert reporter.status.details["backup_sets"][0]["counts"] == {
        "skipped": 0,
        "restored": 2,
        "restoring": 0,
        "arrived": 1,
    }


def test_replay_that_starts_on_an_older_timeline_follows_it(tmp_path: Path) -> None:
    """The source was promoted (timeline 2) after its base backup (on timeline 1): the migration follows
    timeline 2, and the prefetcher reads 00000002.history, so timeline 1's segments before the fork are on
    the restore path (fetched, shown as restoring/arrived), not skipped."""
    store = tmp_path / "store"
    wal = store / "wal"
    wal.mkdir(parents=True)
    for segno in (1, 2, 3):
        segment(wal, 1, segno)
    for segno in (3, 4):
        segment(wal, 2, segno)
    (wal / "00000002.history").write_text(f"1\t0/{3 * SEG + 0x100:X}\tno recovery target specified\n")
    pre = Prefetcher(str(store), tmp_path / "spool", timeline=2, segment_size=SEG, depth=4, list_interval=0)
    pre.start()
    pre.stop()
    pre.advance(1 * SEG + 0x28)
    pre.poll()
    got = statuses(pre.stats())
    assert got[name(1, 1)] == "restoring" and got[name(1, 2)] == "arrived"
    assert got[name(2, 3)] == "arrived" and got[name(2, 4)] == "arrived"
    assert got[name(1, 3)] == "skipped"  # timeline 2's copy of segment 3 supersedes it
    assert {p.name for p in (tmp_path / "spool").iterdir() if p.is_file()} == {
        name(1, 1),
        name(1, 2),
        name(2, 3),
        name(2, 4),
    }
