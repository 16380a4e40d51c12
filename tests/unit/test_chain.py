"""Restore chain selection: stripes merged into logical backups, then full, differential and logs chosen."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid5

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferry.core.errors import UsageError
from ferry.core.findings import Finding, Severity
from ferry.core.plan import StepKind
from ferry.engines.sqlserver.chain import (
    Chain,
    DatabaseKey,
    LogicalBackup,
    StopPoint,
    group_by_database,
    merge_stripes,
    restorable_range,
    select_chain,
)
from ferry.engines.sqlserver.headers import BackupSet, BackupType
from tests.factories import FAMILY_GUID, NAMESPACE, RECOVERY_FORK, backup_set, logical, striped

BASE = 34 * 10**15
T0 = datetime(2024, 5, 1, 0, 0, tzinfo=UTC)
OTHER_FORK = UUID("11111111-2222-4333-8444-555555555555")


def lsn(tick: int) -> int:
    return BASE + tick * 100_000


def at(value: int, tz: timezone = UTC) -> datetime:
    """The wall-clock time of an LSN in these tests: one tick (100,000) is one minute, monotonic."""
    return (T0 + timedelta(seconds=(value - BASE) * 60 // 100_000)).astimezone(tz)


def _times(last: int, tz: timezone) -> dict[str, Any]:
    return {"backup_start": at(last, tz) - timedelta(seconds=5), "backup_finish": at(last, tz)}


def full(tick: int, tz: timezone = UTC, **kw: Any) -> BackupSet:
    values = {
        "path": f"db1/FULL/full_{tick}.bak",
        "backup_type": BackupType.DATABASE,
        "first_lsn": lsn(tick) - 50_000,
        "checkpoint_lsn": lsn(tick) - 50_000,
        "last_lsn": lsn(tick),
        **_times(lsn(tick), tz),
    }
    return backup_set(**{**values, **kw})


def diff(tick: int, base: BackupSet, tz: timezone = UTC, **kw: Any) -> BackupSet:
    values = {
        "path": f"db1/DIFF/diff_{tick}.bak",
        "backup_type": BackupType.DIFFERENTIAL,
        "first_lsn": lsn(tick) - 50_000,
        "checkpoint_lsn": lsn(tick) - 50_000,
        "last_lsn": lsn(tick),
        "database_backup_lsn": base.checkpoint_lsn,
        "differential_base_guid": base.backup_set_guid,
        **_times(lsn(tick), tz),
    }
    return backup_set(**{**values, **kw})


def log(first: int, last: int, tz: timezone = UTC, **kw: Any) -> BackupSet:
    values = {
        "path": f"db1/LOG/log_{first}_{last}.trn",
        "backup_type": BackupType.LOG,
        "first_lsn": lsn(first),
        "last_lsn": lsn(last),
        "checkpoint_lsn": lsn(first),
        **_times(lsn(last), tz),
    }
    return backup_set(**{**values, **kw})


def plan(*sets: BackupSet, stop: StopPoint | None = None) -> Chain:
    backups, findings = merge_stripes(sets)
    assert not [f for f in findings if f.severity is Severity.ERROR], findings
    groups = group_by_database(backups)
    assert len(groups) == 1
    return select_chain(next(iter(groups.values())), stop)


def codes(chain: Chain) -> list[tuple[str, Severity]]:
    return [(f.code, f.severity) for f in chain.findings]


def kinds(chain: Chain) -> list[str]:
    return [s.kind.value for s in chain.steps]


def files(chain: Chain) -> list[str]:
    return [s.backup.files[0] for s in chain.steps]


def only(chain: Chain, code: str) -> Finding:
    found = [f for f in chain.findings if f.code == code]
    assert len(found) == 1, chain.findings
    return found[0]


# ----------------------------------------------------------------------------------------------------------
# Examples


def test_full_diff_and_logs() -> None:
    f = full(5)
    d = diff(12, f)
    chain = plan(f, log(0, 8), log(8, 11), d, log(11, 14), log(14, 20), log(20, 23))
    assert kinds(chain) == ["full", "diff", "log", "log", "log"]
    assert files(chain)[2:] == ["db1/LOG/log_11_14.trn", "db1/LOG/log_14_20.trn", "db1/LOG/log_20_23.trn"]
    assert chain.findings == ()
    assert chain.restores_to == at(lsn(23))
    assert chain.restores_to_lsn == lsn(23)
    assert all(s.stop_at is None for s in chain.steps)


def test_latest_full_and_latest_diff_based_on_it() -> None:
    f1, f2 = full(5), full(30)
    chain = plan(f1, diff(10, f1), f2, diff(35, f2), diff(40, f2), log(28, 42))
    assert files(chain) == ["db1/FULL/full_30.bak", "db1/DIFF/diff_40.bak", "db1/LOG/log_28_42.trn"]


def test_empty_logs_are_skipped() -> None:
    chain = plan(full(5), log(0, 8), log(8, 8), log(8, 12), log(12, 12), log(12, 15))
    assert files(chain)[1:] == ["db1/LOG/log_0_8.trn", "db1/LOG/log_8_12.trn", "db1/LOG/log_12_15.trn"]
    assert chain.findings == ()


def test_gap_names_both_files_and_the_missing_range() -> None:
    f = backup_set(
        path="a/full.bak",
        first_lsn=34000000010000001,
        checkpoint_lsn=34000000010000001,
        last_lsn=34000000012000001,
    )
    b = backup_set(
        path="a/b.trn", backup_type=BackupType.LOG, first_lsn=34000000011000001, last_lsn=34000000016700004
    )
    c = backup_set(
        path="a/c.trn", backup_type=BackupType.LOG, first_lsn=34000000020000001, last_lsn=34000000021000001
    )
    chain = plan(f, b, c)
    assert files(chain) == ["a/full.bak", "a/b.trn"]
    gap = only(chain, "chain-gap")
    assert gap.severity is Severity.ERROR
    assert gap.message == (
        "log chain of database 'db1' on 'SRV' breaks after 'a/b.trn' (LastLSN 34000000016700004): "
        "the next log backup 'a/c.trn' starts at 34000000020000001; "
        "LSNs 34000000016700004 to 34000000020000001 are missing"
    )
    assert gap.files == ("a/b.trn", "a/c.trn")
    assert "msdb.dbo.backupset" in gap.hint
    assert chain.restores_to_lsn == 34000000016700004


def test_gap_right_after_the_full() -> None:
    chain = plan(full(5), log(7, 10))
    assert kinds(chain) == ["full"]
    gap = only(chain, "chain-gap")
    assert gap.files == ("db1/FULL/full_5.bak", "db1/LOG/log_7_10.trn")


def test_logs_that_end_before_the_full_are_not_a_gap() -> None:
    chain = plan(log(0, 3), full(5))
    assert kinds(chain) == ["full"]
    assert chain.findings == ()


def test_no_full_backup_db1_style() -> None:
    f = full(5)  # not scanned: only its differentials and logs are
    chain = plan(diff(10, f), diff(20, f), log(18, 22), log(22, 25))
    assert chain.steps == ()
    assert chain.restores_to is None and chain.restores_to_lsn is None
    finding = only(chain, "no-full-backup")
    assert finding.severity is Severity.ERROR
    assert "'db1' on 'SRV'" in finding.message
    assert set(finding.files) == {
        "db1/DIFF/diff_10.bak",
        "db1/DIFF/diff_20.bak",
        "db1/LOG/log_18_22.trn",
        "db1/LOG/log_22_25.trn",
    }
    assert "full backup" in finding.hint


def test_diff_whose_base_is_missing_while_another_full_exists() -> None:
    old, gone = full(5), full(30)
    chain = plan(old, diff(35, gone), log(0, 40))
    assert files(chain) == ["db1/FULL/full_5.bak", "db1/LOG/log_0_40.trn"]
    finding = only(chain, "diff-base-missing")
    assert finding.severity is Severity.WARNING
    assert finding.files == ("db1/DIFF/diff_35.bak",)


def test_incomplete_newer_full_falls_back_to_the_older_one() -> None:
    older, newer = full(5), full(30)
    stripes = striped(newer, 3)
    chain = plan(older, stripes[0], stripes[2], log(0, 40))
    assert files(chain) == ["db1/FULL/full_5.bak", "db1/LOG/log_0_40.trn"]
    finding = only(chain, "stripes-incomplete")
    assert finding.severity is Severity.WARNING
    assert finding.files == (stripes[0].path, stripes[2].path)
    assert "stripe(s) 2 of 3" in finding.message and "'db1/FULL/full_5.bak'" in finding.message


def test_incomplete_full_without_fallback_is_an_error() -> None:
    stripes = striped(full(5), 2)
    chain = plan(stripes[1], log(0, 10))
    assert chain.steps == ()
    finding = only(chain, "stripes-incomplete")
    assert finding.severity is Severity.ERROR
    assert finding.files == (stripes[1].path,)
    assert "stripe(s) 1 of 2" in finding.message


def test_striped_sets_are_merged_and_complete() -> None:
    f = striped(full(5), 3)
    logs = striped(log(0, 10), 2)
    chain = plan(*reversed(f), *logs)
    assert [s.backup.files for s in chain.steps] == [tuple(s.path for s in f), tuple(s.path for s in logs)]
    assert chain.findings == ()


def test_incomplete_log_in_the_chain_stops_it() -> None:
    parts = striped(log(8, 12), 2)
    chain = plan(full(5), log(0, 8), parts[0], log(12, 15))
    assert kinds(chain) == ["full", "log"]
    finding = only(chain, "stripes-incomplete")
    assert finding.severity is Severity.ERROR
    assert finding.files == (parts[0].path,)
    assert "stripe(s) 2 of 2" in finding.message
    assert chain.restores_to_lsn == lsn(8)


def test_incomplete_diff_is_skipped_for_an_older_one() -> None:
    f = full(5)
    d1, d2 = diff(10, f), striped(diff(20, f), 2)
    chain = plan(f, d1, d2[0], log(8, 22))
    assert files(chain) == ["db1/FULL/full_5.bak", "db1/DIFF/diff_10.bak", "db1/LOG/log_8_22.trn"]
    assert codes(chain) == [("stripes-incomplete", Severity.WARNING)]


def test_duplicate_copy_is_kept_once() -> None:
    original = full(5, path="backups/db1/full.bak")
    copy = dataclasses.replace(original, path="old/db1/full.bak")
    backups, findings = merge_stripes([copy, original, log(0, 10)])
    assert len(backups) == 2
    merged = next(b for b in backups if b.backup_type is BackupType.DATABASE)
    assert merged.files == ("backups/db1/full.bak",)
    assert [(f.code, f.severity) for f in findings] == [("duplicate-backup", Severity.INFO)]
    assert findings[0].files == ("backups/db1/full.bak", "old/db1/full.bak")
    assert "'old/db1/full.bak' is a copy of 'backups/db1/full.bak'" in findings[0].message


def test_the_same_path_listed_twice_is_not_a_duplicate() -> None:
    f = full(5)
    backups, findings = merge_stripes([f, f])
    assert len(backups) == 1 and findings == []


def test_stripes_that_disagree_are_an_error_and_the_set_is_incomplete() -> None:
    parts = striped(full(5), 2)
    bad = dataclasses.replace(parts[1], last_lsn=parts[1].last_lsn + 1)
    backups, findings = merge_stripes([parts[0], bad])
    assert [(f.code, f.severity) for f in findings] == [("stripe-mismatch", Severity.ERROR)]
    assert "LastLSN" in findings[0].message and findings[0].files == (parts[0].path, bad.path)
    assert len(backups) == 1 and backups[0].missing_stripes == (2,)


def test_grouped_by_backup_set_guid_not_media_set_id() -> None:
    a, b = full(5), full(30)
    b = dataclasses.replace(b, media_set_id=a.media_set_id)
    backups, _ = merge_stripes([a, b])
    assert len(backups) == 2


def test_group_by_database_is_sorted_and_keyed_by_family() -> None:
    other_family = uuid5(NAMESPACE, "other")
    sets = [
        full(5, server_name="SRV2", database_name="b"),
        full(6, database_name="B2", path="x/b2.bak"),
        full(7, database_name="a", path="x/a.bak"),
        full(8, database_name="a", path="x/a2.bak", family_guid=other_family),
    ]
    backups, _ = merge_stripes(sets)
    keys = list(group_by_database(backups))
    first_two = [DatabaseKey("SRV", "a", g) for g in sorted([FAMILY_GUID, other_family], key=str)]
    assert keys == [*first_two, DatabaseKey("SRV", "B2", FAMILY_GUID), DatabaseKey("SRV2", "b", FAMILY_GUID)]


def test_logical_backup_passthroughs() -> None:
    parts = striped(full(5, has_media_password=True, is_copy_only=None), 2)
    b = logical(*reversed(parts))
    assert b.head is b.sets[0] and b.head.family_sequence_number == 1
    assert b.files == tuple(p.path for p in parts)
    assert b.complete and b.missing_stripes == ()
    assert b.first_lsn == parts[0].first_lsn and b.last_lsn == lsn(5)
    assert b.backup_set_guid == parts[0].backup_set_guid
    assert b.backup_finish == at(lsn(5)) and b.backup_start is not None
    assert b.has_media_password and not b.is_copy_only
    with pytest.raises(ValueError):
        LogicalBackup(())


# Stop points


def _timeline(tz: timezone = UTC) -> list[BackupSet]:
    f = full(5, tz)
    return [f, log(0, 8, tz), log(8, 12, tz), log(12, 20, tz), full(25, tz), log(20, 30, tz)]


def test_stop_at_time_inside_a_log_with_naive_local_time() -> None:
    plus1 = timezone(timedelta(hours=1))
    target_local = at(lsn(10), plus1).replace(tzinfo=None)  # 10 minutes in, as the source's clock shows it
    chain = plan(*_timeline(plus1), stop=StopPoint(time=target_local))
    assert files(chain) == ["db1/FULL/full_5.bak", "db1/LOG/log_0_8.trn", "db1/LOG/log_8_12.trn"]
    assert chain.steps[-1].stop_at == at(lsn(10), plus1).isoformat()
    assert chain.steps[-1].stop_at is not None and chain.steps[-1].stop_at.endswith("+01:00")
    assert chain.restores_to == at(lsn(10))
    assert chain.findings == ()


def test_naive_time_takes_the_offset_in_force_at_that_moment() -> None:
    plus1 = timezone(timedelta(hours=1))  # the source moved its clocks forward between two log backups
    sets = [full(5), log(0, 8), log(8, 12, plus1), log(12, 20, plus1)]
    wall = at(lsn(15), plus1).replace(tzinfo=None)
    chain = plan(*sets, stop=StopPoint(time=wall))
    assert files(chain)[-1] == "db1/LOG/log_12_20.trn"
    assert chain.steps[-1].stop_at == at(lsn(15), plus1).isoformat()
    assert chain.restores_to == at(lsn(15))


def test_stop_at_aware_time_is_compared_in_utc() -> None:
    plus1 = timezone(timedelta(hours=1))
    target = at(lsn(26)).astimezone(timezone(timedelta(hours=-5)))
    chain = plan(*_timeline(plus1), stop=StopPoint(time=target))
    assert files(chain) == ["db1/FULL/full_25.bak", "db1/LOG/log_20_30.trn"]
    assert chain.steps[-1].stop_at == target.astimezone(plus1).isoformat()


def test_stop_at_time_equal_to_a_full_needs_no_log() -> None:
    chain = plan(*_timeline(), stop=StopPoint(time=at(lsn(25))))
    assert files(chain) == ["db1/FULL/full_25.bak"]
    assert chain.steps[-1].stop_at is None


def test_stop_at_time_before_the_first_full() -> None:
    chain = plan(*_timeline(), stop=StopPoint(time=at(lsn(2))))
    assert chain.steps == ()
    finding = only(chain, "stop-at-unreachable")
    assert finding.severity is Severity.ERROR
    assert str(lsn(5)) in finding.message and str(lsn(30)) in finding.message
    assert at(lsn(5)).isoformat() in finding.message
    assert "older full" in finding.hint


def test_stop_at_time_after_the_last_log() -> None:
    chain = plan(*_timeline(), stop=StopPoint(time=at(lsn(31))))
    assert files(chain) == ["db1/FULL/full_25.bak", "db1/LOG/log_20_30.trn"]
    assert chain.steps[-1].stop_at is None
    assert codes(chain) == [("stop-at-unreachable", Severity.ERROR)]
    assert chain.restores_to == at(lsn(30))
    assert "next log backup" in chain.findings[0].hint


def test_stop_at_lsn_inside_a_log() -> None:
    target = lsn(9) + 3
    chain = plan(*_timeline(), stop=StopPoint(lsn=target))
    assert files(chain)[-1] == "db1/LOG/log_8_12.trn"
    assert chain.steps[-1].stop_at == f"lsn:{target}"
    assert chain.restores_to_lsn == target
    assert chain.findings == ()


def test_stop_at_lsn_at_the_end_of_a_log_applies_it_whole() -> None:
    chain = plan(*_timeline(), stop=StopPoint(lsn=lsn(12)))
    assert files(chain)[-1] == "db1/LOG/log_8_12.trn"
    assert chain.steps[-1].stop_at is None
    assert chain.restores_to_lsn == lsn(12)


def test_stop_at_lsn_uses_the_latest_full_before_it() -> None:
    chain = plan(*_timeline(), stop=StopPoint(lsn=lsn(27)))
    assert files(chain) == ["db1/FULL/full_25.bak", "db1/LOG/log_20_30.trn"]


def test_stop_at_behind_a_gap_falls_back_to_nothing_and_says_why() -> None:
    f = full(5)
    chain = plan(f, log(0, 8), log(10, 20), stop=StopPoint(lsn=lsn(15)))
    assert {c for c, _ in codes(chain)} == {"chain-gap", "stop-at-unreachable"}


def test_stop_point_is_time_or_lsn() -> None:
    with pytest.raises(UsageError):
        StopPoint(time=T0, lsn=1)


# Copy-only backups, forks, passwords, types


def test_copy_only_full_is_never_a_diff_base() -> None:
    regular = full(5)
    copy_only = full(10, is_copy_only=True)
    fake = diff(15, copy_only)  # cannot exist in SQL Server; it must not be chained even so
    chain = plan(regular, copy_only, fake)
    assert files(chain) == ["db1/FULL/full_10.bak"]


def test_older_full_with_a_diff_beats_a_newer_copy_only_full() -> None:
    regular = full(5)
    chain = plan(regular, full(10, is_copy_only=True), diff(20, regular))
    assert files(chain) == ["db1/FULL/full_5.bak", "db1/DIFF/diff_20.bak"]


def test_copy_only_log_fills_in_only_when_needed() -> None:
    spare = log(8, 10, is_copy_only=True, path="db1/LOG/copy.trn")
    assert files(plan(full(5), log(0, 8), spare, log(8, 12)))[-1] == "db1/LOG/log_8_12.trn"
    # With the regular log missing, the copy-only one is used and the chain stops behind it.
    chain = plan(full(5), log(0, 8), spare, log(12, 15))
    assert files(chain)[-1] == "db1/LOG/copy.trn"
    assert only(chain, "chain-gap").files == ("db1/LOG/copy.trn", "db1/LOG/log_12_15.trn")
    # The same range twice: the regular log wins the tie.
    twin = log(8, 12, is_copy_only=True, path="db1/LOG/twin.trn")
    assert files(plan(full(5), log(0, 8), twin, log(8, 12)))[-1] == "db1/LOG/log_8_12.trn"


def test_logs_on_another_fork_are_not_chained() -> None:
    stray = log(8, 14, recovery_fork_id=OTHER_FORK, path="db1/LOG/stray.trn")
    chain = plan(full(5), log(0, 8), log(8, 12), stray)
    assert files(chain)[-1] == "db1/LOG/log_8_12.trn"
    finding = only(chain, "chain-fork")
    assert finding.severity is Severity.WARNING
    assert finding.files == ("db1/LOG/stray.trn",)
    assert str(OTHER_FORK).upper() in finding.message


def test_a_log_crossing_into_a_new_fork_is_followed() -> None:
    crossing = log(
        8, 12, first_recovery_fork_id=RECOVERY_FORK, recovery_fork_id=OTHER_FORK, fork_point_lsn=lsn(10)
    )
    after = log(12, 15, recovery_fork_id=OTHER_FORK)
    abandoned = log(12, 16, path="db1/LOG/abandoned.trn")  # the old fork's own next log: not this path
    chain = plan(full(5), log(0, 8), crossing, after, abandoned)
    assert files(chain)[-2:] == [crossing.path, after.path]
    assert codes(chain) == []  # the old-fork log is on a fork the chain passed through


def test_fork_tie_prefers_the_current_fork() -> None:
    mine = log(8, 12, path="db1/LOG/z_mine.trn")
    theirs = log(
        8, 12, first_recovery_fork_id=RECOVERY_FORK, recovery_fork_id=OTHER_FORK, path="db1/LOG/a.trn"
    )
    assert files(plan(full(5), log(0, 8), theirs, mine))[-1] == "db1/LOG/z_mine.trn"


def test_media_password_is_a_warning_on_chosen_sets_only() -> None:
    chain = plan(full(5, has_media_password=True), full(1, has_media_password=True, path="x/old.bak"))
    finding = only(chain, "media-password")
    assert finding.severity is Severity.WARNING and finding.files == ("db1/FULL/full_5.bak",)
    assert "MEDIAPASSWORD" in finding.hint


@pytest.mark.parametrize(
    "kind",
    [
        BackupType.FILE,
        BackupType.PARTIAL,
        BackupType.DIFFERENTIAL_FILE,
        BackupType.DIFFERENTIAL_PARTIAL,
        None,
    ],
)
def test_unsupported_backup_types_are_left_out(kind: BackupType | None) -> None:
    chain = plan(full(5), full(20, backup_type=kind, path="db1/other.bak"))
    assert files(chain) == ["db1/FULL/full_5.bak"]
    finding = only(chain, "unsupported-backup-type")
    assert finding.severity is Severity.WARNING and finding.files == ("db1/other.bak",)


def test_simple_recovery_database_is_full_and_diff() -> None:
    f = full(5, recovery_model="SIMPLE")
    chain = plan(f, diff(10, f, recovery_model="SIMPLE"))
    assert kinds(chain) == ["full", "diff"] and chain.findings == ()
    late = plan(f, diff(10, f, recovery_model="SIMPLE"), stop=StopPoint(lsn=lsn(11)))
    assert "SIMPLE" in only(late, "stop-at-unreachable").hint


def test_restorable_range() -> None:
    span = restorable_range(plan_backups(*_timeline(), log(40, 45)))
    assert (span.earliest, span.earliest_lsn) == (at(lsn(5)), lsn(5))
    assert (span.latest, span.latest_lsn) == (at(lsn(30)), lsn(30))
    assert restorable_range([]) == type(span)()


def plan_backups(*sets: BackupSet) -> list[LogicalBackup]:
    backups, _ = merge_stripes(sets)
    return backups


def test_no_backups() -> None:
    assert select_chain([]) == Chain()


# ----------------------------------------------------------------------------------------------------------
# Properties over generated histories


@dataclasses.dataclass
class History:
    sets: list[BackupSet]
    regular_logs: list[BackupSet]  # the regular log chain as taken, including the removed and broken ones
    removed: BackupSet | None  # the regular log that the generator left out (a gap)
    broken: BackupSet | None  # a backup with a stripe file left out
    fulls: list[BackupSet]


@st.composite
def histories(draw: st.DrawFn) -> History:
    lengths = draw(st.lists(st.integers(2, 6), max_size=10))
    bounds = [10]
    for n in lengths:
        bounds.append(bounds[-1] + n)
    regular = [log(a, b) for a, b in itertools.pairwise(bounds)]
    low, high = (bounds[0], bounds[-1]) if regular else (1, 40)
    full_ticks = draw(st.lists(st.integers(low, high), min_size=1, max_size=3, unique=True))
    fulls = [full(t, is_copy_only=draw(st.sampled_from([None, None, True]))) for t in sorted(full_ticks)]
    diffs = []
    for tick in draw(st.lists(st.integers(low, high), max_size=3, unique=True)):
        bases = [f for f in fulls if f.last_lsn < lsn(tick) - 50_000 and not f.is_copy_only]
        diffs.append(diff(tick, bases[-1] if bases else full(0, path="gone.bak")))
    extra = []
    for k in draw(st.lists(st.integers(0, max(len(regular) - 1, 0)), max_size=2)) if regular else []:
        lo, hi = bounds[k], bounds[k + 1]
        end = draw(st.integers(lo + 1, hi - 1))  # a copy-only log ends inside the next regular one
        extra.append(log(lo, end, is_copy_only=True, path=f"db1/LOG/copy_{lo}_{end}.trn"))
    for tick in draw(st.lists(st.sampled_from(bounds), max_size=3)):
        extra.append(log(tick, tick))  # empty
    for _ in range(draw(st.integers(0, 2))):
        start = draw(st.integers(low, high + 10))
        stop = draw(st.integers(start + 1, high + 15))
        extra.append(log(start, stop, recovery_fork_id=OTHER_FORK, path=f"db1/LOG/fork_{start}_{stop}.trn"))
    removed = draw(st.none() | st.sampled_from(regular)) if regular else None
    everything = list(dict.fromkeys([*fulls, *diffs, *regular, *extra]))  # a set drawn twice is one set
    if removed is not None:
        everything.remove(removed)
    broken = draw(st.none() | st.sampled_from(everything))
    sets: list[BackupSet] = []
    for one in everything:
        count = draw(st.integers(1, 3))
        if one is broken:
            parts = striped(one, max(count, 2))
            parts.pop(draw(st.integers(0, len(parts) - 1)))
        else:
            parts = striped(one, count) if count > 1 else [one]
        sets.extend(parts)
    copy_one: bool = draw(st.booleans())
    if sets and copy_one:  # a copy of one file in another folder
        sets.append(dataclasses.replace(sets[draw(st.integers(0, len(sets) - 1))], path="copies/x.bak"))
    return History(draw(st.permutations(sets)), regular, removed, broken, fulls)


def _chain_of(sets: list[BackupSet], stop: StopPoint | None = None) -> Chain:
    backups, findings = merge_stripes(sets)
    assert not [f for f in findings if f.severity is not Severity.INFO]
    groups = group_by_database(backups)
    assert len(groups) == 1
    return select_chain(next(iter(groups.values())), stop)


def _check_shape(chain: Chain) -> None:
    if not chain.steps:
        return
    assert [s.kind for s in chain.steps].count(StepKind.FULL) == 1 and chain.steps[0].kind is StepKind.FULL
    assert all(s.kind is StepKind.LOG for s in chain.steps[1:] if s.kind is not StepKind.DIFF)
    assert [s.kind for s in chain.steps[:2]].count(StepKind.DIFF) == sum(
        s.kind is StepKind.DIFF for s in chain.steps
    )
    for prev, step in zip(chain.steps, chain.steps[1:], strict=False):
        b = step.backup
        assert b.complete
        if step.kind is StepKind.DIFF:
            assert b.last_lsn > prev.backup.last_lsn and not prev.backup.is_copy_only
            assert b.database_backup_lsn == prev.backup.checkpoint_lsn
        else:
            assert not b.is_empty_log
            assert b.first_lsn <= prev.backup.last_lsn < b.last_lsn
    assert chain.steps[0].backup.complete


settings.register_profile(
    "chain", max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None
)


@settings.get_profile("chain")
@given(histories(), st.randoms(use_true_random=False))
def test_generated_histories(h: History, rnd: Any) -> None:
    chain = _chain_of(h.sets)
    _check_shape(chain)

    shuffled = list(h.sets)
    rnd.shuffle(shuffled)
    assert _chain_of(shuffled) == chain

    complete_fulls = [f for f in h.fulls if f is not h.broken]
    if not complete_fulls:
        assert chain.steps == () and "stripes-incomplete" in {c for c, _ in codes(chain)}
        return
    start = chain.steps[0].backup
    latest = max(complete_fulls, key=lambda f: f.last_lsn)
    # The latest complete full starts the chain, unless it is copy-only and an older full's diff gets further.
    assert start.head.backup_set_guid == latest.backup_set_guid or latest.is_copy_only
    base_end = chain.steps[1].backup.last_lsn if kinds(chain)[1:2] == ["diff"] else start.last_lsn

    # The first regular log the chain needs that is missing or broken bounds how far it gets.
    trouble = next((g for g in h.regular_logs if g.last_lsn > base_end and g in (h.removed, h.broken)), None)
    end = chain.restores_to_lsn
    assert end is not None
    if trouble is None:
        assert end == max([base_end, *(g.last_lsn for g in h.regular_logs)])
        assert "chain-gap" not in {c for c, _ in codes(chain)}
    else:
        assert max(base_end, trouble.first_lsn) <= end < trouble.last_lsn
    main_line = [
        g
        for g in h.regular_logs + [s for s in h.sets if s.is_copy_only and s.backup_type is BackupType.LOG]
        if g is not h.removed and g.recovery_fork_id == RECOVERY_FORK
    ]
    beyond = [g for g in main_line if g.first_lsn > end]
    gaps = [f for f in chain.findings if f.code == "chain-gap"]
    # The chain stops at its first blocking problem: when an incomplete stripe set (a copy-only log here)
    # covers the end, that is the finding, and the gap behind it is reported once the stripes are found.
    blocked = (
        h.broken is not None
        and h.broken.backup_type is BackupType.LOG
        and (h.broken.first_lsn <= end < h.broken.last_lsn)
    )
    if beyond and (trouble is None or trouble is h.removed) and not blocked:
        nxt = min(beyond, key=lambda g: g.first_lsn)
        assert len(gaps) == 1
        assert set(chain.steps[-1].backup.files) <= set(gaps[0].files)
        assert chain.steps[-1].backup.files[0] in gaps[0].message
        assert f"starts at {nxt.first_lsn};" in gaps[0].message
        assert gaps[0].files[-1] not in chain.steps[-1].backup.files
    elif not beyond:
        assert gaps == []


def _target_inside(chain: Chain, data: st.DataObject) -> tuple[int, int] | None:
    """An LSN strictly inside a log step of the chain and after the step before it: a reachable point."""
    spots = [
        (max(prev.backup.last_lsn, step.backup.first_lsn), step.backup.last_lsn)
        for prev, step in zip(chain.steps, chain.steps[1:], strict=False)
        if step.kind is StepKind.LOG
    ]
    if not spots:
        return None
    lo, hi = data.draw(st.sampled_from(spots))
    return lo, hi


@settings.get_profile("chain")
@given(histories(), st.data())
def test_generated_stop_at_lsn(h: History, data: st.DataObject) -> None:
    spot = _target_inside(_chain_of(h.sets), data)
    if spot is None:
        return
    target = data.draw(st.integers(spot[0] + 1, spot[1] - 1))
    chain = _chain_of(h.sets, StopPoint(lsn=target))
    _check_shape(chain)
    assert "stop-at-unreachable" not in {c for c, _ in codes(chain)}
    last = chain.steps[-1]
    if last.stop_at is None:
        assert last.backup.last_lsn == target
    else:
        assert last.stop_at == f"lsn:{target}"
        assert last.backup.first_lsn <= target < last.backup.last_lsn
    assert chain.restores_to_lsn == target
    assert all(s.stop_at is None for s in chain.steps[:-1])


@settings.get_profile("chain")
@given(histories(), st.data())
def test_generated_stop_at_time(h: History, data: st.DataObject) -> None:
    spot = _target_inside(_chain_of(h.sets), data)
    if spot is None:
        return
    when = at((spot[0] + spot[1]) // 2)
    chain = _chain_of(h.sets, StopPoint(time=when))
    _check_shape(chain)
    assert "stop-at-unreachable" not in {c for c, _ in codes(chain)}
    last, finishes = chain.steps[-1], [s.backup.backup_finish for s in chain.steps]
    assert last.stop_at == when.isoformat()
    assert all(f is not None for f in finishes)
    assert finishes[-1] is not None and finishes[-1] >= when
    assert all(f is not None and f < when for f in finishes[:-1])
    assert chain.restores_to == when
