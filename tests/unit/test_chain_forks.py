"""Recovery forks in chain selection: databases created by RESTORE, and real forks after a restore.

Every backup of a database that was itself restored carries the fork it was restored from (boot page copied
into each header): FirstRecoveryForkID = the old fork, RecoveryForkID = the current one, ForkPointLSN = where
that restore's recovery ended, even when the backup lies far beyond that point.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any
from uuid import UUID

from hypothesis import given, settings
from hypothesis import strategies as st

from ferry.core.findings import Severity
from ferry.engines.sqlserver.chain import Chain, StopPoint
from ferry.engines.sqlserver.headers import BackupSet
from tests.factories import RECOVERY_FORK
from tests.unit.test_chain import (
    History,
    _chain_of,
    at,
    codes,
    diff,
    files,
    full,
    histories,
    kinds,
    log,
    lsn,
    only,
    plan,
)

SOURCE_FORK = UUID("aaaaaaaa-0000-4000-8000-000000000001")  # the fork of the database restored from
LATER_FORK = UUID("cccccccc-0000-4000-8000-000000000003")  # a point-in-time restore made after that
OTHER_SOURCE = UUID("bbbbbbbb-0000-4000-8000-000000000002")  # the ancestor of the stray fork's database
FAR_BELOW = lsn(-400)  # where the restore that created the database ended, long before any of its backups

# What every backup of a database restored from SOURCE_FORK says about forks.
INHERITED: dict[str, Any] = {
    "first_recovery_fork_id": SOURCE_FORK,
    "recovery_fork_id": RECOVERY_FORK,
    "fork_point_lsn": FAR_BELOW,
}


def restored_history() -> list[BackupSet]:
    """A database restored from another server's backup, then backed up on its own schedule. The first log
    after the full starts before the full's FirstLSN: log backups run on their own schedule."""
    f = full(5, **INHERITED)
    return [
        f,
        log(0, 8, **INHERITED),
        log(8, 11, **INHERITED),
        diff(12, f, **INHERITED),
        log(11, 14, **INHERITED),
        log(14, 20, **INHERITED),
        log(20, 23, **INHERITED),
    ]


def assert_reaches(chain: Chain, target: int) -> None:
    assert "stop-at-unreachable" not in {c for c, _ in codes(chain)}, chain.findings
    assert chain.restores_to_lsn == target
    last = chain.steps[-1]
    assert last.stop_at == (f"lsn:{target}" if target < last.backup.last_lsn else None)


def test_database_created_by_restore_plans_its_whole_chain() -> None:
    chain = plan(*restored_history())
    assert kinds(chain) == ["full", "diff", "log", "log", "log"]
    assert files(chain)[2:] == ["db1/LOG/log_11_14.trn", "db1/LOG/log_14_20.trn", "db1/LOG/log_20_23.trn"]
    assert chain.findings == ()
    assert chain.restores_to_lsn == lsn(23)


def test_database_created_by_restore_without_a_differential() -> None:
    sets = [s for s in restored_history() if "DIFF" not in s.path]
    chain = plan(*sets)
    assert kinds(chain) == ["full", "log", "log", "log", "log", "log"]
    assert files(chain)[1] == "db1/LOG/log_0_8.trn"  # starts before the full's FirstLSN
    assert chain.findings == ()


def test_database_created_by_restore_reaches_every_point_by_lsn() -> None:
    sets = restored_history()
    for tick in range(5, 23):
        for target in (lsn(tick), lsn(tick) + 1, lsn(tick) + 73_001):
            assert_reaches(plan(*sets, stop=StopPoint(lsn=target)), target)
    assert_reaches(plan(*sets, stop=StopPoint(lsn=lsn(23))), lsn(23))


def test_database_created_by_restore_reaches_every_point_by_time() -> None:
    sets = restored_history()
    for tick in range(5, 23):
        when = at(lsn(tick) + 50_000)  # half a minute after each tick
        chain = plan(*sets, stop=StopPoint(time=when))
        assert "stop-at-unreachable" not in {c for c, _ in codes(chain)}, chain.findings
        assert chain.restores_to == when and chain.steps[-1].stop_at == when.isoformat()


def test_data_backup_at_the_fork_point_is_on_both_forks() -> None:
    # Restored and backed up at once: the full ends exactly where the restore's recovery ended.
    at_point = {**INHERITED, "fork_point_lsn": lsn(5)}
    chain = plan(full(5, **at_point), log(0, 8, **at_point), log(8, 11, **at_point))
    assert kinds(chain) == ["full", "log", "log"] and chain.findings == ()


# A real fork in the middle: the restored database is itself restored to a point inside log 12-16, on
# the same server under the same name. Backups taken afterwards carry the fork it left (RECOVERY_FORK)
# as their first fork. The first log after that restore starts where the restored log started and
# crosses into the new fork at the restore point.
FORK_POINT = lsn(14)
LATER: dict[str, Any] = {
    "first_recovery_fork_id": RECOVERY_FORK,
    "recovery_fork_id": LATER_FORK,
    "fork_point_lsn": FORK_POINT,
}


def forked_history() -> list[BackupSet]:
    return [
        full(5, **INHERITED),
        log(0, 8, **INHERITED),
        log(8, 12, **INHERITED),
        log(12, 16, **INHERITED),
        log(16, 24, path="db1/LOG/abandoned.trn", **INHERITED),  # the old branch, after the fork point
        log(12, 18, path="db1/LOG/crossing.trn", **LATER),
        log(18, 22, **LATER),
        full(20, **LATER),
        log(22, 26, **LATER),
    ]


def test_real_fork_after_a_restore_plans_from_the_new_full() -> None:
    chain = plan(*forked_history())
    assert files(chain) == ["db1/FULL/full_20.bak", "db1/LOG/log_18_22.trn", "db1/LOG/log_22_26.trn"]
    finding = only(chain, "chain-fork")
    assert finding.severity is Severity.WARNING and finding.files == ("db1/LOG/abandoned.trn",)
    assert str(RECOVERY_FORK).upper() in finding.message


def test_real_fork_after_a_restore_crosses_into_the_new_fork() -> None:
    sets = forked_history()
    for target in (lsn(15), FORK_POINT + 1, lsn(17), lsn(19)):
        chain = plan(*sets, stop=StopPoint(lsn=target))
        assert_reaches(chain, target)
        assert files(chain)[:4] == [
            "db1/FULL/full_5.bak",
            "db1/LOG/log_0_8.trn",
            "db1/LOG/log_8_12.trn",
            "db1/LOG/crossing.trn",
        ]
    for target in (lsn(20), lsn(21), lsn(25), lsn(26)):
        chain = plan(*sets, stop=StopPoint(lsn=target))
        assert_reaches(chain, target)
        assert files(chain)[0] == "db1/FULL/full_20.bak"


def test_real_fork_without_the_new_full_follows_the_crossing_log() -> None:
    sets = [s for s in forked_history() if s.path != "db1/FULL/full_20.bak"]
    chain = plan(*sets)
    assert files(chain)[3:] == ["db1/LOG/crossing.trn", "db1/LOG/log_18_22.trn", "db1/LOG/log_22_26.trn"]
    # The abandoned branch is the fork this chain passed through before the crossing: nothing to report,
    # as for any log crossing a fork point.
    assert chain.findings == ()


def test_old_branch_log_beyond_the_fork_point_cannot_follow_the_new_fork() -> None:
    # Standing on the new fork past the fork point, the abandoned branch's log is not on the path.
    sets = [s for s in forked_history() if s.path not in ("db1/LOG/log_18_22.trn", "db1/FULL/full_20.bak")]
    chain = plan(*sets)
    assert files(chain)[-1] == "db1/LOG/crossing.trn"
    assert "chain-gap" in {c for c, _ in codes(chain)}  # log_22_26 is on the new fork, 18-22 missing


# ----------------------------------------------------------------------------------------------------------
# Properties


def inherit(sets: list[BackupSet]) -> list[BackupSet]:
    """The same backups as taken by a database that was restored from another one long before them."""
    out = []
    for s in sets:
        source = SOURCE_FORK if s.recovery_fork_id == RECOVERY_FORK else OTHER_SOURCE
        out.append(
            dataclasses.replace(s, first_recovery_fork_id=source, fork_point_lsn=FAR_BELOW)
            if s.first_recovery_fork_id is None
            else s
        )
    return out


def same_plan(a: Chain, b: Chain) -> None:
    assert [(s.kind, s.backup.backup_set_guid, s.stop_at) for s in a.steps] == [
        (s.kind, s.backup.backup_set_guid, s.stop_at) for s in b.steps
    ]
    assert codes(a) == codes(b)
    assert (a.restores_to, a.restores_to_lsn) == (b.restores_to, b.restores_to_lsn)


@settings.get_profile("chain")
@given(histories(), st.data())
def test_inherited_fork_fields_change_no_plan(h: History, data: st.DataObject) -> None:
    """A fork point far below every backup changes nothing: whole chains and point-in-time chains alike."""
    plain, restored = h.sets, inherit(h.sets)
    whole = _chain_of(plain)
    same_plan(_chain_of(restored), whole)
    if whole.steps and whole.restores_to_lsn is not None:
        start = whole.steps[0].backup.last_lsn
        target = data.draw(st.integers(start, whole.restores_to_lsn))
        same_plan(_chain_of(restored, StopPoint(lsn=target)), _chain_of(plain, StopPoint(lsn=target)))


@st.composite
def restored_chains(draw: st.DrawFn) -> list[BackupSet]:
    """A contiguous history of a restored database: a full inside its log chain, a differential or not."""
    bounds = [0]
    for n in draw(st.lists(st.integers(1, 6), min_size=1, max_size=8)):
        bounds.append(bounds[-1] + n)
    tick = draw(st.integers(1, bounds[-1]))
    f = full(tick, **INHERITED)
    sets = [f, *(log(a, b, **INHERITED) for a, b in itertools.pairwise(bounds))]
    if draw(st.booleans()) and tick + 1 < bounds[-1]:
        sets.append(diff(draw(st.integers(tick + 1, bounds[-1])), f, **INHERITED))
    return sets


@settings.get_profile("chain")
@given(restored_chains(), st.data())
def test_restored_database_reaches_every_point(sets: list[BackupSet], data: st.DataObject) -> None:
    chain = _chain_of(sets)
    assert chain.findings == ()
    end = max(s.last_lsn for s in sets)
    assert chain.restores_to_lsn == end
    target = data.draw(st.integers(sets[0].last_lsn, end))
    assert_reaches(_chain_of(sets, StopPoint(lsn=target)), target)
