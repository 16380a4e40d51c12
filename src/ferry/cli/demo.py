"""`ferry demo`: a whole online migration on this machine, from nothing to a verified cutover.

It creates a source PostgreSQL server that archives its WAL with `ferry wal-push`, loads it with pgbench
and keeps writing, takes a base backup into a local store, migrates it online to a new target server,
cuts over while the workload runs until the last moment, and proves with per-table row counts and
checksums that the target holds exactly what the source held at the cutover.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ferry.cli import render
from ferry.cli.live import run_migration
from ferry.core.errors import UsageError
from ferry.core.migration import MigrationStatus, State
from ferry.engines.postgres import source as src_tools
from ferry.engines.postgres.cluster import Cluster, OsUser, chown_tree, find_binaries, free_port
from ferry.engines.postgres.cutover import CutoverRequest
from ferry.engines.postgres.migration import MigrationResult, MigrationSpec
from ferry.engines.postgres.target import PostgresTarget
from ferry.engines.postgres.verify import differences, fingerprints, user_databases


@dataclass(frozen=True)
class DemoResult:
    folder: Path
    migration: MigrationResult
    tables: int
    rows: int
    differences: tuple[str, ...]
    transactions: int
    max_lag_bytes: int


def default_folder() -> Path:
    # Under the system's temporary folder, which every user may traverse: PostgreSQL's processes run as
    # an unprivileged user and must reach the store and the data folders.
    return Path(tempfile.gettempdir()) / f"ferry-demo-{datetime.now():%Y%m%d-%H%M%S}"


class _Workload:
    """pgbench writing to the source in the background until stopped."""

    def __init__(self, cluster: Cluster, clients: int) -> None:
        cmd = [cluster.binaries.tool("pgbench"), "-h", str(cluster.socket_dir), "-p", str(cluster.port),
               "-U", "postgres", "-c", str(clients), "-j", str(clients), "-T", "86400", "-n",
               "postgres"]  # fmt: skip
        user = cluster.user
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=user.uid if user else None,
            group=user.gid if user else None,
            extra_groups=[] if user else None,
            cwd="/",
        )

    def stop(self) -> None:
        """Stop writing now: every transaction pgbench reported committed is in the source's WAL."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_demo(console: Console, folder: Path | None, scale: int, online_seconds: float) -> DemoResult:
    root = folder or default_folder()
    if root.exists() and any(root.iterdir()):
        raise UsageError(f"demo folder '{root}' exists and is not empty", "give a new folder with --dir")
    root.mkdir(parents=True, exist_ok=True, mode=0o755)
    binaries = find_binaries()
    user = OsUser.resolve()
    store = root / "store" / "source1"
    console.print(f"[bold]Ferry demo[/] in {root} (PostgreSQL {binaries.major})")

    step = _Steps(console)
    source = Cluster(root / "source", free_port(), binaries, user)
    with step("creating the source server with WAL archiving to the store (ferry wal-push)"):
        source.initdb()
        src_tools.configure_archiving(
            source, store, {"max_wal_size": "'1GB'", "checkpoint_timeout": "'5min'"}
        )
        chown_tree(root, user)
        src_tools.check_ferry_runs_as_server_user(source)
        source.start()
    workload: _Workload | None = None
    target = root / "target"
    try:
        with step(f"loading pgbench data (scale {scale})"):
            src_tools.run_pgbench_init(source, scale)
        with step("starting the workload: pgbench writes to the source from now until the cutover"):
            workload = _Workload(source, clients=2)
        with step("taking a base backup into the store (pg_basebackup -Ft, lz4)"):
            src_tools.base_backup(source, store / "base" / f"{datetime.now():%Y%m%dT%H%M%S}", "lz4")
        ready_since: list[float] = []
        max_lag = [0]

        def on_status(status: MigrationStatus) -> None:
            if status.state is State.READY_FOR_CUTOVER and not ready_since:
                ready_since.append(time.monotonic())
            if status.lag_bytes:
                max_lag[0] = max(max_lag[0], status.lag_bytes)

        def cutover() -> CutoverRequest | None:
            if not ready_since or time.monotonic() - ready_since[0] < online_seconds:
                return None
            # The application stops writing: the downtime starts here.
            stopped_at = time.time()
            assert workload is not None
            workload.stop()
            return CutoverRequest(stopped_at, final_lsn=src_tools.switch_wal(source))

        spec = MigrationSpec(str(store), target, online=True)
        hint = f"online: the demo cuts over after {online_seconds:.0f} s caught up, while pgbench writes"
        result = run_migration(spec, console, "migrating source1 → target", cutover, hint, on_status)
        transactions = int(source.query("SELECT count(*) FROM pgbench_history")[0][0])
        with step("verifying: row counts and checksums of every table, source against target"):
            tgt = PostgresTarget.open(target)
            dbs = user_databases(source.connect)
            before = fingerprints(source.connect, dbs)
            after = fingerprints(tgt.connect, dbs)
            diff = differences(before, after)
        demo = DemoResult(
            folder=root,
            migration=result,
            tables=len(before),
            rows=sum(f.rows for f in before.values()),
            differences=tuple(diff),
            transactions=transactions,
            max_lag_bytes=max_lag[0],
        )
    finally:
        if workload is not None and workload.proc.poll() is None:
            workload.stop()
        with step("stopping the source and target servers"):
            source.stop()
            if (target / "ferry-target.json").exists():
                PostgresTarget.open(target).stop()
    summary(console, demo)
    return demo


class _Steps:
    def __init__(self, console: Console) -> None:
        self.console = console

    def __call__(self, label: str) -> _Step:
        return _Step(self.console, label)


class _Step:
    def __init__(self, console: Console, label: str) -> None:
        self.console, self.label = console, label

    def __enter__(self) -> None:
        self.started = time.monotonic()
        self.console.print(f"  {self.label} ...", highlight=False)

    def __exit__(self, kind: object, *rest: object) -> None:
        if kind is None:
            self.console.print(f"    done in {render.duration(time.monotonic() - self.started)}", style="dim")


def summary(console: Console, demo: DemoResult) -> None:
    m = demo.migration
    table = Table(title="Ferry demo: summary", title_justify="left", show_header=False)
    table.add_column(style="dim")
    table.add_column()
    speed = m.restored_bytes / m.restore_seconds if m.restore_seconds else None
    table.add_row(
        "base backup restored", f"{render.size(m.restored_bytes)} in {render.duration(m.restore_seconds)}"
    )
    table.add_row("restore throughput", render.rate(speed))
    table.add_row(
        "WAL replayed online", f"{render.size(m.replayed_bytes)} in {render.duration(m.replay_seconds)}"
    )
    table.add_row("largest replay lag", render.size(demo.max_lag_bytes))
    table.add_row("transactions during the migration", f"{demo.transactions:,}")
    table.add_row("cutover LSN", m.final_lsn or "-")
    table.add_row("downtime", Text(render.duration(m.downtime_seconds), style="bold"))
    verdict = (
        Text(f"identical: {demo.tables} tables, {demo.rows:,} rows", style="bold green")
        if not demo.differences
        else Text("; ".join(demo.differences), style="bold red")
    )
    table.add_row("verification", verdict)
    console.print(table)
    console.print(f"Everything is in {demo.folder}. Remove it with: rm -rf {demo.folder}")
