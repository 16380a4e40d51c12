"""Recovery forks read from real headers: databases that were themselves created by RESTORE.

The corpus holds no whole chain of such a database, but it holds their real headers: two log backups of
RestoreTimeClean taken on a 2016 server after restoring it from the 2008 server's backups, and differentials
taken after their full had been restored. Each test completes a chain around them with the few synthetic
backups that are missing (a full, a log), copying the real fork fields into them as SQL Server does.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from uuid import UUID

import pytest

from ferry.core.findings import Severity
from ferry.engines.sqlserver.chain import StopPoint, group_by_database, merge_stripes, select_chain
from ferry.engines.sqlserver.headers import BackupSet, BackupType
from tests.corpus.helpers import read_file

pytestmark = pytest.mark.corpus


def sets_in(corpus: Path, *names: str) -> list[BackupSet]:
    return [s for name in names for s in read_file(corpus, corpus / name)]


def chain_of(sets: list[BackupSet], target: StopPoint | None = None) -> list[str]:
    backups, findings = merge_stripes(sets)
    assert not [f for f in findings if f.severity is Severity.ERROR]
    [group] = group_by_database(backups).values()
    chain = select_chain(group, target)
    assert chain.findings == (), chain.findings
    if target is not None and target.lsn is not None:
        assert chain.restores_to_lsn == target.lsn
    return [s.backup.files[0] for s in chain.steps]


def test_logs_of_a_database_restored_from_another_server(corpus: Path) -> None:
    logs = sets_in(
        corpus, "restoretimeclean2016/RestoreTimeClean_1.trn", "restoretimeclean2016/RestoreTimeClean_2.trn"
    )
    first, second = sorted(logs, key=lambda s: s.first_lsn)
    # Real header facts this test rests on: inherited fork fields far below both logs.
    assert first.fork_point_lsn is not None and first.fork_point_lsn < first.first_lsn
    assert first.first_recovery_fork_id != first.recovery_fork_id
    # The full these logs follow, as the 2016 server took it: its CheckpointLSN is the logs'
    # DatabaseBackupLSN, which lies after the first log's FirstLSN (log backups run on their own schedule).
    start = first.database_backup_lsn
    assert first.first_lsn < start < first.last_lsn
    the_full = dataclasses.replace(
        first,
        path="synthetic/RestoreTimeClean_FULL.bak",
        backup_type=BackupType.DATABASE,
        type_letter="D",
        first_lsn=start,
        checkpoint_lsn=start,
        last_lsn=start + 200_000,
        database_backup_lsn=0,
        backup_set_guid=UUID(int=1),
    )
    sets = [the_full, *logs]
    assert chain_of(sets) == [the_full.path, first.path, second.path]
    for target in range(the_full.last_lsn, second.last_lsn + 1, 100_000):
        assert chain_of(sets, StopPoint(lsn=target))[0] == the_full.path
    assert chain_of(sets, StopPoint(lsn=second.last_lsn - 1))[-1] == second.path


@pytest.mark.parametrize(
    ("full_files", "diff_files"),
    [
        (
            [f"more/compressed-striped-2016/multiFilesBackup{i}.bak" for i in (1, 2, 3)],
            [f"more/compressed-striped-2016/differentialMultiFilesBackup{i}.bak" for i in (1, 2, 3)],
        ),
        (["more/sql2019/full_backup.bak"], ["more/sql2019/diff_backup.bak"]),
        (["more/sql2017-prerelease/FullBackup.bak"], ["more/sql2017-prerelease/DiffBackup.bak"]),
    ],
)
def test_logs_after_a_differential_taken_on_a_restored_database(
    corpus: Path, full_files: list[str], diff_files: list[str]
) -> None:
    fulls, diffs = sets_in(corpus, *full_files), sets_in(corpus, *diff_files)
    the_diff = diffs[0]
    # Real header facts: the differential was taken after its full had been restored, so it carries a
    # fork that starts where the full ends.
    assert the_diff.fork_point_lsn == fulls[0].last_lsn
    assert the_diff.first_recovery_fork_id == fulls[0].recovery_fork_id != the_diff.recovery_fork_id
    # Two logs of that database, with the fork fields every later backup carries; the first one starts
    # before the differential's FirstLSN.
    logs = [
        dataclasses.replace(
            the_diff,
            path=f"synthetic/log_{k}.trn",
            backup_type=BackupType.LOG,
            type_letter="L",
            family_count=1,
            family_sequence_number=1,
            first_lsn=lo,
            last_lsn=hi,
            checkpoint_lsn=lo,
            backup_set_guid=UUID(int=100 + k),
        )
        for k, (lo, hi) in enumerate(
            [
                (the_diff.first_lsn - 1, the_diff.last_lsn + 300_000),
                (the_diff.last_lsn + 300_000, the_diff.last_lsn + 900_000),
            ]
        )
    ]
    sets = [*fulls, *diffs, *logs]
    assert chain_of(sets) == [full_files[0], diff_files[0], "synthetic/log_0.trn", "synthetic/log_1.trn"]
    for target in range(the_diff.last_lsn, logs[-1].last_lsn + 1, 150_000):
        assert chain_of(sets, StopPoint(lsn=target))[:2] == [full_files[0], diff_files[0]]
