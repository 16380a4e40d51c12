"""Migrations read WAL wherever the source's archive_command put it, and never wait in silence.

Real PostgreSQL sources archiving the ways DBAs set them up (`cp %p /backups/db1/archive/wal/%f`, folders
nested by date, beside the base backups, compressed by gzip, lz4 or zstd), migrated offline and online;
an offline migration whose store ends before its plan fails naming the file; an online one says what it
waits for, and stays ReadyForCutover while it keeps up.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.core.migration import MigrationStatus, State
from ferry.engines.postgres.cutover import CutoverRequest
from ferry.engines.postgres.migration import MigrationSpec, WalMissing
from ferry.engines.postgres.target import PostgresTarget
from ferry.pipeline.migrate import Migration
from tests.integration.pgsource import PgSource, make_root, require_postgres, start_source

# (name, folder under the store, archive_command with {dir} for that folder, what it appends to %f)
LAYOUTS = [
    ("archive-wal", "archive/wal", "cp %p {dir}/%f", ""),
    ("nested-by-date", "backups/db1/2026/12/01", "cp %p {dir}/%f", ""),
    ("beside-base-backups", "", "cp %p {dir}/%f", ""),
    ("gzip", "archive", "gzip -c %p > {dir}/%f.gz", ".gz"),
    ("lz4", "archive", "lz4 -q -c %p > {dir}/%f.lz4", ".lz4"),
    ("zstd", "archive", "zstd -q -c %p > {dir}/%f.zst", ".zst"),
]


@pytest.fixture()
def root() -> Iterator[Path]:
    require_postgres()
    with make_root("ferry-layout-") as folder:
        yield folder


def layout_source(root: Path, folder: str, command: str, suffix: str) -> PgSource:
    store = root / "store"
    archive = store / folder if folder else store
    src = start_source(
        root / "src", store, archive_subdir=folder, archive_command=command.format(dir=archive)
    )
    src.archive_suffix = suffix
    src.write(3000)
    src.base_backup("base", compress="lz4", wal_method="none")
    src.write(3000)
    src.switch()
    return src


def count(connectable: object, table: str = "ferry_t") -> int:
    with connectable.connect() as conn:  # type: ignore[attr-defined]
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


@pytest.mark.parametrize(
    ("folder", "command", "suffix"), [x[1:] for x in LAYOUTS], ids=[x[0] for x in LAYOUTS]
)
def test_offline_migration_reads_wal_wherever_it_is(
    root: Path, folder: str, command: str, suffix: str
) -> None:
    src = layout_source(root, folder, command, suffix)
    try:
        spec = MigrationSpec(str(src.store), root / "target", online=False, blocked_after=20)
        assert Migration(spec, lambda s: None, lambda: None).run().state == "Succeeded"
        target = PostgresTarget.open(root / "target")
        assert count(target) == count(src.cluster) == 6000
        target.stop()
    finally:
        src.stop()


def test_offline_migration_fails_naming_the_file_its_store_lacks(root: Path) -> None:
    """The plan saw WAL that is gone by the time replay needs it: the migration fails, never waits."""
    src = layout_source(root, "archive/wal", "cp %p {dir}/%f", "")
    src.write(2000)
    src.switch()
    src.stop()
    segments = sorted(p for p in (src.store / "archive" / "wal").iterdir() if len(p.name) == 24)
    gone = segments[-2:]

    def report(status: MigrationStatus) -> None:
        if status.state is State.RESTORING_FULL:
            for path in gone:  # after the plan, before replay: archive cleanup, say
                path.unlink(missing_ok=True)

    spec = MigrationSpec(str(src.store), root / "target", online=False, blocked_after=3)
    with pytest.raises(WalMissing) as info:
        Migration(spec, report, lambda: None).run()
    assert gone[0].name in info.value.message and str(src.store) in info.value.message
    assert info.value.hint
    PostgresTarget.open(root / "target").stop()


def test_online_migration_waits_visibly_and_stays_ready_while_it_keeps_up(root: Path) -> None:
    src = layout_source(root, "archive/2026-12-01", "gzip -c %p > {dir}/%f.gz", ".gz")
    statuses: list[MigrationStatus] = []
    ready_at: list[float] = []
    plan: dict[str, object] = {}

    def report(status: MigrationStatus) -> None:
        statuses.append(status)
        if status.state is State.READY_FOR_CUTOVER and not ready_at:
            ready_at.append(time.monotonic())

    def cutover() -> CutoverRequest | None:
        if not ready_at or time.monotonic() - ready_at[0] < 4:
            return None  # idle and caught up for a while: longer than blocked_after
        if "writes" not in plan:
            for _ in range(3):  # the source goes on, a segment at a time
                src.write(1500)
                src.switch()
                time.sleep(0.7)
            plan["writes"] = True
            plan["after"] = len(statuses)
            return None
        if time.monotonic() - ready_at[0] < 8:
            return None
        return CutoverRequest(time.time(), final_lsn=src.switch_lsn())

    try:
        spec = MigrationSpec(str(src.store), root / "target", blocked_after=2, ready_lag_segments=2)
        result = Migration(spec, report, cutover).run()
        assert result.state == "Succeeded"
        target = PostgresTarget.open(root / "target")
        assert count(target) == count(src.cluster) == 6000 + 4500
        target.stop()
    finally:
        src.stop()
    first_ready = next(i for i, s in enumerate(statuses) if s.state is State.READY_FOR_CUTOVER)
    cut = next(i for i, s in enumerate(statuses) if s.state is State.CUTTING_OVER)
    states = {s.state for s in statuses[first_ready:cut]}
    assert states == {State.READY_FOR_CUTOVER}, "new segments while keeping up must not leave ReadyForCutover"
    idle = statuses[first_ready : int(str(plan["after"]))]
    waited = [s for s in idle if s.blocked_reason]
    assert waited, "a replay waiting longer than blocked_after says for what"
    assert "for WAL file" in str(waited[-1].blocked_reason) and str(src.store) in str(
        waited[-1].blocked_reason
    )
    assert all(s.lag_bytes == 0 for s in idle if s.pending_files == 0 and s.lag_bytes is not None)
    final = statuses[-1]
    assert final.state is State.SUCCEEDED and final.lag_bytes is None and final.blocked_reason is None
