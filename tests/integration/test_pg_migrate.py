"""Whole PostgreSQL migrations on real servers: offline, online under writes, cutover, kill and resume,
and the inputs that must block a migration before it touches the target."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.core.errors import FerryError, UsageError
from ferry.core.findings import MigrationBlocked
from ferry.core.migration import MigrationStatus, State
from ferry.engines.postgres.archive import ferry_command
from ferry.engines.postgres.cutover import CutoverRequest
from ferry.engines.postgres.migration import MigrationSpec
from ferry.engines.postgres.target import PostgresTarget
from ferry.engines.postgres.verify import differences, fingerprints
from ferry.pipeline.migrate import Migration
from tests.integration.pgsource import PgSource, RowWriter, make_root, require_postgres, start_source


def _wal_push_command(store: Path) -> str:
    return " ".join([*ferry_command(), "wal-push", "%p", str(store)])


@pytest.fixture()
def root() -> Iterator[Path]:
    require_postgres()
    with make_root("ferry-mig-") as folder:
        yield folder


def _source(root: Path) -> PgSource:
    store = root / "store"
    src = start_source(root / "src", store, archive_command=_wal_push_command(store))
    src.write(5000)
    src.base_backup(f"base-{time.time_ns()}", compress="lz4", wal_method="none")
    src.write(5000)
    src.switch()
    return src


def _count(connectable: object, table: str = "ferry_t") -> int:
    with connectable.connect() as conn:  # type: ignore[attr-defined]
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


class _Recorder:
    def __init__(self) -> None:
        self.states: list[State] = []
        self.last: MigrationStatus | None = None

    def __call__(self, status: MigrationStatus) -> None:
        if not self.states or self.states[-1] is not status.state:
            self.states.append(status.state)
        self.last = status


def test_offline_restores_to_the_end_of_the_archive_and_promotes(root: Path) -> None:
    src = _source(root)
    try:
        rec = _Recorder()
        spec = MigrationSpec(str(src.store), root / "target", online=False)
        result = Migration(spec, rec, lambda: None).run()
        assert result.state == "Succeeded"
        assert rec.states[0] is State.VALIDATING and rec.states[-1] is State.SUCCEEDED
        target = PostgresTarget.open(root / "target")
        assert _count(target) == _count(src.cluster) == 10000
        target.verify_writable()
        target.stop()
    finally:
        src.stop()


def test_online_cutover_under_writes_loses_nothing(root: Path) -> None:
    src = _source(root)
    writer = RowWriter(src).start()
    rec = _Recorder()
    ready: list[float] = []

    def report(status: MigrationStatus) -> None:
        rec(status)
        if status.state is State.READY_FOR_CUTOVER and not ready:
            ready.append(time.monotonic())

    def cutover() -> CutoverRequest | None:
        if not ready or time.monotonic() - ready[0] < 2:
            return None
        stopped = time.time()
        writer.stop()
        return CutoverRequest(stopped, final_lsn=src.switch_lsn())

    try:
        result = Migration(MigrationSpec(str(src.store), root / "target"), report, cutover).run()
        target = PostgresTarget.open(root / "target")
        assert writer.committed > 100
        assert _count(target, "orders") == writer.committed == _count(src.cluster, "orders")
        before = fingerprints(src.cluster.connect, ["postgres"])
        assert differences(before, fingerprints(target.connect, ["postgres"])) == []
        assert State.READY_FOR_CUTOVER in rec.states and State.CUTTING_OVER in rec.states
        assert result.downtime_seconds is not None and result.downtime_seconds < 30
        target.stop()
    finally:
        writer.stop()
        src.stop()


def _ferry(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*ferry_command(), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip


def _wait_for(proc: subprocess.Popen[str], needle: str, timeout: float = 120) -> str:
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if needle in line:
            return "".join(seen)
    raise AssertionError(f"'{needle}' never appeared:\n{''.join(seen)}")


def test_kill_during_replay_then_resume_and_cut_over(root: Path) -> None:
    src = _source(root)
    target = root / "target"
    try:
        first = _ferry("migrate", str(src.store), "--to", str(target))
        _wait_for(first, "ReadyForCutover")
        first.send_signal(signal.SIGKILL)
        first.wait()
        src.write(3000)  # the source goes on while Ferry is down
        src.switch()
        second = _ferry("migrate", str(src.store), "--to", str(target))
        _wait_for(second, "ReadyForCutover")
        final = src.switch_lsn()
        done = subprocess.run([*ferry_command(), "cutover", str(target), "--final-lsn", final],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        out = _wait_for(second, "Succeeded")
        assert second.wait(timeout=60) == 0, out
        tgt = PostgresTarget.open(target)
        assert _count(tgt) == _count(src.cluster) == 13000
        tgt.stop()
    finally:
        src.stop()


def test_kill_during_base_restore_then_resume(root: Path) -> None:
    store = root / "store"
    src = start_source(root / "src", store, archive_command=_wal_push_command(store))
    try:
        # Enough data that unpacking takes a moment; zstd makes it CPU-bound.
        src.sql("CREATE TABLE big AS SELECT g AS id, md5(g::text) || md5((g + 1)::text) AS v "
                "FROM generate_series(1, 1500000) g")  # fmt: skip
        src.base_backup("base", compress="gzip", wal_method="none")
        src.switch()
        target = root / "target"
        first = _ferry("migrate", str(store), "--to", str(target), "--offline")
        _wait_for(first, "RestoringFull")
        time.sleep(0.3)
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert not (target / "data").exists() or (target / "data.partial").exists() is False
        second = subprocess.run([*ferry_command(), "migrate", str(store), "--to", str(target), "--offline"],
                                capture_output=True, text=True, timeout=300)  # fmt: skip
        assert second.returncode == 0, second.stdout + second.stderr
        tgt = PostgresTarget.open(target)
        assert _count(tgt, "big") == 1500000
        tgt.stop()
    finally:
        src.stop()


def test_missing_segment_blocks_before_touching_the_target(root: Path) -> None:
    src = _source(root)
    src.write(2000)
    src.switch()
    src.write(2000)
    src.switch()
    src.stop()
    wal = sorted((src.store / "wal").glob("0*"))
    segments = [p for p in wal if len(p.name) == 24]
    segments[-2].unlink()  # a hole with archived WAL after it
    with pytest.raises(MigrationBlocked) as info:
        Migration(MigrationSpec(str(src.store), root / "target"), lambda s: None, lambda: None).run()
    codes = {f.code for f in info.value.findings}
    assert "wal-gap" in codes
    gap = next(f for f in info.value.findings if f.code == "wal-gap")
    assert segments[-2].name in gap.message
    assert not (root / "target").exists()


def test_existing_folder_is_refused(root: Path) -> None:
    src = _source(root)
    try:
        target = root / "target"
        target.mkdir()
        (target / "precious.txt").write_text("keep me")
        with pytest.raises(FerryError) as info:
            Migration(MigrationSpec(str(src.store), target), lambda s: None, lambda: None).run()
        assert str(target) in str(info.value) and "not empty" in str(info.value) and info.value.hint
        assert (target / "precious.txt").read_text() == "keep me"
        assert sorted(p.name for p in target.iterdir()) == ["precious.txt"]
    finally:
        src.stop()


def test_two_clusters_in_one_source_folder_are_refused(root: Path) -> None:
    a = _source(root)
    a.stop()
    other_store = root / "other"
    b = start_source(root / "src2", other_store, archive_command=_wal_push_command(other_store))
    b.write(100)
    b.switch()
    b.stop()
    for seg in (other_store / "wal").glob("0*"):
        shutil.copy(seg, a.store / "wal" / f"foreign-{seg.name}")
    with pytest.raises((UsageError, MigrationBlocked)) as info:
        Migration(MigrationSpec(str(a.store), root / "target"), lambda s: None, lambda: None).run()
    assert "cluster" in str(info.value) or "system" in str(info.value)
    assert not (root / "target").exists()


def test_cli_blocked_migration_exits_1_with_findings(root: Path) -> None:
    src = _source(root)
    src.stop()
    for seg in (src.store / "wal").glob("0*"):
        seg.unlink()
    done = subprocess.run([sys.executable, "-m", "ferry", "migrate", str(src.store), "--to",
                           str(root / "t")], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "error" in done.stderr and "hint:" in done.stderr
