"""The checks of the format notes (§7) on every real backup file, plus version-specific facts."""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import pytest

from ferry.engines.sqlserver.headers import BackupSet, BackupType
from ferry.engines.sqlserver.media import PagedSource, walk_blocks
from ferry.stores.local import LocalFileReader
from tests.corpus.helpers import all_sets, corpus_params, read_file

pytestmark = pytest.mark.corpus

# DatabaseVersion by SoftwareVersionMajor, as SQL Server documents its on-disk versions.
DATABASE_VERSIONS = {9: {611, 612}, 10: {655, 661}, 12: {782}, 13: {852, 859}, 14: {869}, 15: {904}}


@pytest.mark.parametrize("rel", corpus_params())
def test_every_file_reads(corpus: Path, rel: str) -> None:
    sets = read_file(corpus, corpus / rel)
    assert sets, rel
    for s in sets:
        assert s.database_name
        assert s.backup_type in (BackupType.DATABASE, BackupType.DIFFERENTIAL, BackupType.LOG)
        assert s.first_lsn <= s.last_lsn
        assert s.backup_start is not None and s.backup_finish is not None
        assert s.backup_start <= s.backup_finish
        assert s.database_version in DATABASE_VERSIONS[s.software_major]
        assert 1 <= s.family_sequence_number <= s.family_count
        assert s.files and any(f.type == "L" for f in s.files) and any(f.type == "D" for f in s.files)
        row = s.headeronly()
        assert row["BackupTypeDescription"] in ("Database", "Database Differential", "Transaction Log")
        assert re.fullmatch(r"\d+", row["FirstLSN"])
        assert row["BackupStartDate"].endswith(
            tuple(f"{s.backup_start:%z}"[:3] + x for x in (":00", ":30", ":15", ":45"))
        )


@pytest.mark.parametrize("rel", [r for r in corpus_params() if "compressed" not in r])
def test_blocks_checksum_and_walk_to_the_exact_end(corpus: Path, rel: str) -> None:
    path = corpus / rel
    with LocalFileReader(rel, path) as reader:
        blocks = list(walk_blocks(PagedSource(reader)))
        # Far less than the file: the walk skips page and log data.
        assert reader.bytes_read <= 64 * 1024
    assert blocks[0].header.type == b"TAPE"
    assert {b.header.type for b in blocks} >= {b"SSET", b"VOLB", b"MSCI", b"MSLS", b"ESET"}


def _by_database(sets: tuple[BackupSet, ...]) -> dict[tuple[str, str, object], list[BackupSet]]:
    groups: dict[tuple[str, str, object], list[BackupSet]] = defaultdict(list)
    seen = set()
    for s in sets:
        if (s.backup_set_guid, s.position) in seen:
            continue  # other stripes of the same set
        seen.add((s.backup_set_guid, s.position))
        groups[(s.server_name, s.database_name, s.family_guid)].append(s)
    return groups


def test_log_chains_close(corpus: Path) -> None:
    checked = 0
    for sets in _by_database(all_sets()).values():
        logs = sorted((s for s in sets if s.backup_type is BackupType.LOG and not s.is_empty_log),
                      key=lambda s: s.first_lsn)  # fmt: skip
        for a, b in itertools.pairwise(logs):
            assert a.last_lsn == b.first_lsn, (a.path, b.path)
            checked += 1
    assert checked >= 10


def test_differentials_point_at_their_full(corpus: Path) -> None:
    checked = 0
    for sets in _by_database(all_sets()).values():
        fulls = {s.backup_set_guid: s for s in sets if s.backup_type is BackupType.DATABASE}
        for d in (s for s in sets if s.backup_type is BackupType.DIFFERENTIAL):
            full = fulls.get(d.differential_base_guid)  # type: ignore[arg-type]
            if full is None:
                continue  # db1 and others whose full is not in the corpus
            assert d.database_backup_lsn == full.checkpoint_lsn
            assert d.differential_base_lsn == full.checkpoint_lsn
            assert all(f.differential_base_lsn == full.checkpoint_lsn for f in d.files if f.type == "D")
            checked += 1
    assert checked >= 8


OLA_NAME = re.compile(r"_(FULL|DIFF|LOG)_(\d{8}_\d{6})\.(bak|trn)$")


def test_types_and_start_dates_agree_with_ola_names(corpus: Path) -> None:
    expected = {"FULL": BackupType.DATABASE, "DIFF": BackupType.DIFFERENTIAL, "LOG": BackupType.LOG}
    checked = 0
    for s in all_sets():
        m = OLA_NAME.search(s.path)
        if not m:
            continue
        assert s.backup_type is expected[m.group(1)], s.path
        if s.path.startswith("sql2008-backups/"):
            assert s.backup_start is not None
            assert s.backup_start.strftime("%Y%m%d_%H%M%S") == m.group(2), s.path
        checked += 1
    assert checked >= 30


def test_stripes_agree(corpus: Path) -> None:
    stripes: dict[object, list[BackupSet]] = defaultdict(list)
    for s in all_sets():
        if s.family_count > 1:
            stripes[s.backup_set_guid].append(s)
    assert len(stripes) >= 8
    for members in stripes.values():
        first = members[0]
        for m in members:
            assert (m.media_set_id, m.first_lsn, m.last_lsn, m.family_count) == (
                first.media_set_id, first.first_lsn, first.last_lsn, first.family_count)  # fmt: skip
        seqs = sorted(m.family_sequence_number for m in members)
        assert seqs == list(range(1, first.family_count + 1)) or len(set(seqs)) == len(seqs)


def test_finish_date_minus_utc_file_time_is_the_time_zone(corpus: Path) -> None:
    checked = 0
    for s in all_sets():
        # The three-way striped 2008 R2 set was taken in October on a server whose SSET time-zone byte
        # says UTC while its clock ran an hour ahead (summer time): the byte is what SQL Server wrote,
        # so Ferry reports it, and this check leaves that set out.
        if s.backup_type is not BackupType.DATABASE or s.path.startswith("more/striped-2008r2/"):
            continue
        data = next(f for f in s.files if f.type == "D")
        assert s.backup_finish is not None and data.base_time is not None
        local_wall = s.backup_finish.replace(tzinfo=None)
        utc_wall = data.base_time.replace(tzinfo=None)
        offset = s.backup_finish.utcoffset()
        assert offset is not None
        # The FILETIME is taken a few seconds before the header's finish date: the offset is what is left.
        assert abs((local_wall - utc_wall) - offset) < timedelta(minutes=1), s.path
        checked += 1
    assert checked >= 20


def test_known_values(corpus: Path) -> None:
    """Spot values from the corpus README, the format notes and dbatools' published expectations."""
    by_path = {s.path: s for s in all_sets()}
    stop23 = by_path["sql2008-backups/StopAt/StopAt_23.trn"]
    assert stop23.first_lsn == 19000000021500001
    assert by_path["more/sql2005/Northwind.bak"].database_version == 611
    assert by_path["more/sql2005/Northwind.bak"].compressed_backup_size is None
    assert by_path["sql2008-backups/SimpleRecovery/SimpleBacktest.bak"].recovery_model == "SIMPLE"
    assert by_path["singlerestore/singlerestore.bak"].machine_name
    db1 = by_path["sql2008-backups/db1/DIFF/SQL2008_db1_DIFF_20170518_041819.bak"]
    assert len([f for f in db1.files if f.type == "D"]) == 2
    assert any(f.create_lsn for f in db1.files)
    linux = by_path["more/sql2019/linux-container-test.bak"]
    assert all(f.physical_name.startswith("/var/opt/mssql/") for f in linux.files)
