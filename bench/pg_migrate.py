"""Benchmark: a PostgreSQL migration through Ferry, against the plain tools that do the same work.

    /tmp/sysvenv/bin/python bench/pg_migrate.py [--size-gb 1.0] [--wal-gb 2.0] [--runs 5] [--keep]

It builds a real source cluster of about `--size-gb` (pgbench tables plus a table of md5 text, so that
compression has real work to do), archiving its WAL with `ferry wal-push`, takes `pg_basebackup -Ft -X none`
backups (plain, lz4, gzip) and pgBackRest full backups (none, lz4) of it, writes `--wal-gb` of WAL after the
last base backup, then measures, in one run:

1. base restore: `PostgresTarget.restore_base` against `tar -x` (through `lz4 -dc` / `gzip -dc`) of the same
   archive, page cache warm, with and without the final sync;
2. WAL replay: an online `Migration` from server start until the replay LSN reaches the archive's end, against
   a standby unpacked with `tar -x` and configured by hand with `restore_command = 'cp ARCHIVE/%f %p'`;
3. cutover downtime under a pgbench workload, with a breakdown (archive, replay, promote);
4. pgBackRest's `restore` of the same data beside Ferry's base restore (same compression).

It prints medians, ratios against the references measured in the same run, and PASS/FAIL against the
targets. PostgreSQL refuses to run as root: servers, pgBackRest, archive_command and restore_command run as
the OS user `postgres`, so this must run under a Python that user can execute (not one under /root), and
the data goes to a 0755 folder (default bench/.data). See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ferry.engines.postgres.archive as archive_module
import ferry.engines.postgres.target as target_module
from ferry.core.migration import MigrationStatus, State
from ferry.engines.postgres.archive import conf_quote
from ferry.engines.postgres.cluster import (
    Binaries,
    Cluster,
    ClusterError,
    OsUser,
    chown_tree,
    find_binaries,
    free_port,
    run,
)
from ferry.engines.postgres.cutover import CutoverRequest
from ferry.engines.postgres.migration import MigrationSpec
from ferry.engines.postgres.source import (
    base_backup,
    check_ferry_runs_as_server_user,
    configure_archiving,
    switch_wal,
    wait_archived,
)
from ferry.engines.postgres.target import RETRY_INTERVAL, PostgresTarget
from ferry.engines.postgres.wal import DEFAULT_SEGMENT_SIZE, format_lsn, parse_lsn, parse_segment_name
from ferry.pipeline.migrate import Migration, Outcome
from pg_store_replay import measure_store_replay  # bench/pg_store_replay.py: part 2b

BENCH = Path(__file__).resolve().parent
PG_MAJOR = 15
MB = 1_000_000
GB = 1_000_000_000
TARGET_RESTORE_RATIO = 0.9
TARGET_REPLAY_RATIO = 0.9
TARGET_DOWNTIME_S = 3.0
PARTS = ("restore", "replay", "store-replay", "cutover")
PGBACKREST_PROCESSES = (1, 2)
# Each run of a measurement shorter than this gets `--runs` repetitions; longer ones get 3.
LONG_RUN_S = 20.0
# pgbench: about 15 MB per scale unit (accounts table and its index). The rest of the size is md5 text.
PGBENCH_SHARE = 0.7
PGBENCH_BYTES_PER_SCALE = 15_400_000
TEXT_ROW_BYTES = 140  # bigint + 96 characters of hex, tuple header and line pointer
UPDATE_BATCH_ROWS = 400_000
CUTOVER_SCALE = 10  # the cutover source: pgbench scale 10, about 150 MB
CUTOVER_SETTLE_S = 3.0  # how long ReadyForCutover must have been reported before the cutover is asked
POLL_S = 0.02

# The source's settings. fsync=off only makes building it faster; full_page_writes stays on, so the WAL is
# the WAL of a real server. The targets inherit postgresql.conf from the base backup: the Ferry target and
# the hand-made standby both run with these.
SOURCE_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "shared_buffers": "'256MB'",
    "max_wal_size": "'4GB'",
    "checkpoint_timeout": "'30min'",
    "autovacuum": "off",
    "max_wal_senders": "4",
}


def main() -> int:
    args = parse_args()
    wall0 = time.perf_counter()
    try:
        binaries = find_binaries(PG_MAJOR)
    except ClusterError as exc:
        raise SystemExit(f"error: {exc.message}; hint: {exc.hint}") from None
    user = OsUser.resolve()
    missing = [t for t in ("tar", "lz4", "gzip", "sync") if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"error: {', '.join(missing)} not found; install them (apt-get install -y lz4)")
    data = Path(args.data).resolve()
    data.mkdir(parents=True, exist_ok=True)
    os.chmod(data, 0o755)
    root = Path(tempfile.mkdtemp(prefix="pg_migrate-", dir=data))
    os.chmod(root, 0o755)
    env = Env(root, binaries, user, pgbackrest=shutil.which("pgbackrest"))
    print(
        f"Ferry PostgreSQL migration benchmark  (python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"PostgreSQL {pg_version(binaries)}, {tool_version(['tar', '--version'])}, "
        f"{tool_version(['pgbackrest', 'version']) if env.pgbackrest else 'no pgBackRest'})"
    )
    print(f"root:    {root}  (servers run as OS user '{user.name if user else getpass.getuser()}')")
    print(f"machine: {load_average()} (other work on the machine widens the ranges below)")
    report = Report()
    try:
        src = build_main_source(env, int(args.size_gb * GB), int(args.wal_gb * GB), report)
        peer = measure_restore(env, src, args.runs, report) if "restore" in args.parts else None
        if "replay" in args.parts:
            measure_replay(env, src, args.runs, report)
        if "store-replay" in args.parts:
            measure_store_replay(env, src, args.runs, ferry_replay, report)
        if "cutover" in args.parts:
            measure_cutover(env, args.runs, report)
        if peer is not None:
            print_peer(env, src, peer)
        report.summary()
    finally:
        env.cleanup(keep=args.keep)
    print(f"\ntotal run time {time.perf_counter() - wall0:.0f} s; {load_average()}")
    return 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-gb", type=float, default=1.0, help="size of the source database (default 1.0)")
    p.add_argument("--wal-gb", type=float, default=2.0, help="WAL written after the base backup (2.0)")
    p.add_argument("--runs", type=int, default=5, help="timed runs of each measurement (default 5)")
    p.add_argument("--data", default=str(BENCH / ".data"), help="where the work folder goes (bench/.data)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (servers are stopped anyway)")
    p.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated parts to run (default all: {','.join(PARTS)})",
    )
    args = p.parse_args()
    args.parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    if unknown := sorted(set(args.parts) - set(PARTS)):
        raise SystemExit(f"error: unknown part {', '.join(unknown)}; the parts are {', '.join(PARTS)}")
    if args.runs < 1 or args.size_gb <= 0 or args.wal_gb <= 0:
        raise SystemExit("error: --runs, --size-gb and --wal-gb must be positive")
    return args


# ---------------------------------------------------------------------------------------------------
# The work folder, the servers and processes started in it.


@dataclass
class Env:
    root: Path
    binaries: Binaries
    user: OsUser | None
    pgbackrest: str | None
    servers: list[Path] = field(default_factory=list)  # data directories of servers started here
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def folder(self, path: Path, mode: int = 0o700, owned: bool = True) -> Path:
        """A new folder, owned by the servers' OS user unless `owned` is False."""
        path.mkdir(mode=mode, parents=True)
        os.chmod(path, mode)
        if owned:
            chown_tree(path, self.user)
        return path

    def as_user(self) -> dict[str, Any]:
        if self.user is None:
            return {}
        return {"user": self.user.uid, "group": self.user.gid, "extra_groups": []}

    def tool(self, name: str) -> str:
        return self.binaries.tool(name)

    def stop_server(self, datadir: Path, mode: str = "fast") -> None:
        if (datadir / "postmaster.pid").exists():
            run([self.tool("pg_ctl"), "-D", str(datadir), "-m", mode, "-w", "-t", "60", "stop"], self.user,
                timeout=90, check=False)  # fmt: skip

    def cleanup(self, keep: bool) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
        for datadir in self.servers:
            self.stop_server(datadir, "immediate")
        if keep:
            print(f"\ndata kept in {self.root} (servers stopped)")
        else:
            shutil.rmtree(self.root, ignore_errors=True)
            print(f"\nservers stopped, {self.root} removed (--keep leaves it)")


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"


def pg_version(binaries: Binaries) -> str:
    out = subprocess.run([binaries.tool("postgres"), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"\d+\.\d+", out)
    return m.group(0) if m else "?"


def tool_version(cmd: list[str]) -> str:
    with contextlib.suppress(OSError):
        out = subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()
        if out:
            return out[0].replace("(GNU tar)", "GNU tar").replace("tar GNU tar", "GNU tar")
    return f"no {cmd[0]}"


def say(text: str, indent: str = "   ") -> None:
    """A paragraph of explanation, wrapped to the width of the tables."""
    print(textwrap.fill(text, width=110, initial_indent=indent, subsequent_indent=" " * len(indent)))


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# The source: a cluster archiving with `ferry wal-push`, its base backups and its WAL.


@dataclass
class MainSource:
    cluster: Cluster
    store: Path  # what Ferry migrates from: store/base (plain tar, the latest base backup) and store/wal
    system_identifier: int
    archives: dict[str, Path]  # compression -> base.tar[.lz4|.gz]
    manifests: dict[str, Path]
    data_bytes: int  # bytes of files in the base backup (its manifest): the numerator of every MB/s
    wal_start: int  # where replay of the plain base backup starts (its checkpoint's redo)
    wal_end: int  # the archive's end: the final pg_switch_wal() LSN
    pgbackrest: PgBackRest | None


def start_source(env: Env, name: str, store: Path, settings: dict[str, str] | None = None) -> Cluster:
    cluster = Cluster(env.root / name, free_port(), env.binaries, env.user)
    cluster.initdb()
    with (cluster.datadir / "postgresql.conf").open("a") as conf:
        conf.write("\n# bench/pg_migrate.py\n")
        for key, value in {**SOURCE_SETTINGS, **(settings or {})}.items():
            conf.write(f"{key} = {value}\n")
    configure_archiving(cluster, store)  # archive_command = ferry wal-push %p STORE
    env.servers.append(cluster.datadir)
    cluster.start()
    return cluster


def pgbench_init(env: Env, cluster: Cluster, scale: int) -> None:
    run([env.tool("pgbench"), "-i", "-s", str(scale), "-I", "dtGvp", "-q", "-h", str(cluster.socket_dir),
         "-p", str(cluster.port), "-U", "postgres", "postgres"], env.user, timeout=3600)  # fmt: skip


def cluster_bytes(cluster: Cluster) -> int:
    return int(cluster.query("SELECT sum(pg_database_size(datname))::bigint FROM pg_database")[0][0])


def build_main_source(env: Env, size: int, wal: int, report: Report) -> MainSource:
    store = env.folder(env.root / "store", 0o755)
    t0 = time.perf_counter()
    cluster = start_source(env, "src", store)
    check_ferry_runs_as_server_user(cluster)
    scale = max(1, round(size * PGBENCH_SHARE / PGBENCH_BYTES_PER_SCALE))
    pgbench_init(env, cluster, scale)
    rows = max(0, (size - cluster_bytes(cluster)) // TEXT_ROW_BYTES)
    cluster.query("CREATE TABLE bench_text (id bigint, v text)")
    cluster.query(
        "INSERT INTO bench_text SELECT g, md5(g::text) || md5((g + 1)::text) || md5((g + 2)::text) "
        "FROM generate_series(1, %s) g",
        (rows,),
    )
    cluster.query("CHECKPOINT")
    total = cluster_bytes(cluster)
    sysid = int(str(cluster.query("SELECT system_identifier FROM pg_control_system()")[0][0]))
    say(
        f"pgbench scale {scale} + {rows:,} rows of md5 text: {total / MB:,.0f} MB in all databases (built in "
        f"{time.perf_counter() - t0:.0f} s; fsync=off on the source, full_page_writes on)",
        indent="source:  ",
    )

    # Base backups, the plain one last: it is the latest in the store, so the migrations restore it and the
    # WAL volume below is counted from its start.
    t0 = time.perf_counter()
    backups = env.folder(env.root / "backups", 0o755)
    archives: dict[str, Path] = {}
    manifests: dict[str, Path] = {}
    for kind, compress, dest in (
        ("gzip", "gzip", backups / "gzip"),
        ("lz4", "lz4", backups / "lz4"),
    ):
        base_backup(cluster, dest, compress=compress, label=f"bench-{kind}")
        archives[kind] = next(dest.glob("base.tar*"))
        manifests[kind] = dest / "backup_manifest"
    pgbr = None
    if env.pgbackrest:
        pgbr = PgBackRest(env, cluster)
        pgbr.backup("none")
        pgbr.backup("lz4")
    base_backup(cluster, store / "base", compress=None, label="bench-none")
    archives["none"] = store / "base" / "base.tar"
    manifests["none"] = store / "base" / "backup_manifest"
    manifest = json.loads(manifests["none"].read_bytes())
    data_bytes = sum(int(f["Size"]) for f in manifest["Files"])
    wal_start = parse_lsn(manifest["WAL-Ranges"][0]["Start-LSN"])
    plain = archives["none"].stat().st_size
    sizes = ", ".join(
        f"{archives[k].name} {archives[k].stat().st_size / MB:,.0f} MB "
        f"({plain / archives[k].stat().st_size:.1f}:1)"
        for k in ("lz4", "gzip")
    )
    say(
        f"pg_basebackup -Ft -X none: base.tar {plain / MB:,.0f} MB ({data_bytes / MB:,.0f} MB of files), "
        f"{sizes}; "
        + (
            ", ".join(
                f"pgBackRest full compress-type={k}: {v / MB:,.0f} MB" for k, v in pgbr.repo_bytes.items()
            )
            if pgbr is not None
            else "pgBackRest not installed (apt-get install -y pgbackrest): part 4 is skipped"
        )
        + f" ({time.perf_counter() - t0:.0f} s)",
        indent="backups: ",
    )

    # WAL after the plain base backup: UPDATEs of pgbench_accounts in batches, until `wal` bytes are written.
    t0 = time.perf_counter()
    accounts = scale * 100_000
    aid = 1
    with cluster.connect() as conn:
        while True:
            now = parse_lsn(str(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]))
            if now - wal_start >= wal:
                break
            conn.execute(
                "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid >= %s AND aid < %s",
                (aid, aid + UPDATE_BATCH_ROWS),
            )
            aid = aid + UPDATE_BATCH_ROWS if aid + UPDATE_BATCH_ROWS <= accounts else 1
    generated = time.perf_counter() - t0
    wal_end = parse_lsn(switch_wal(cluster))
    wait_archived(cluster, timeout=1800)
    segments = sum(1 for p in (store / "wal").iterdir() if len(p.name) == 24)
    say(
        f"{(wal_end - wal_start) / MB:,.0f} MB of WAL from the plain base backup's start "
        f"({format_lsn(wal_start)}) "
        f"to the final pg_switch_wal() ({format_lsn(wal_end)}), written in {generated:.0f} s by UPDATEs of "
        f"pgbench_accounts and archived by `ferry wal-push` ({segments} segments in the store; the archive "
        f"was complete {time.perf_counter() - t0 - generated:.1f} s after the switch)",
        indent="WAL:     ",
    )
    env.stop_server(cluster.datadir)  # idle from here on: nothing else writes while timing
    report.facts["wal_bytes"] = wal_end - wal_start
    return MainSource(cluster, store, sysid, archives, manifests, data_bytes, wal_start, wal_end, pgbr)


# ---------------------------------------------------------------------------------------------------
# pgBackRest, the peer reference: its own repo per compression, all paths in the work folder.


class PgBackRest:
    STANZA = "bench"

    def __init__(self, env: Env, cluster: Cluster) -> None:
        self.env = env
        self.home = env.folder(env.root / "pgbackrest", 0o755)
        for sub in ("log", "lock"):
            env.folder(self.home / sub)
        self.config = self.home / "pgbackrest.conf"
        self.config.write_text(
            "[global]\n"
            f"log-path={self.home / 'log'}\n"
            f"lock-path={self.home / 'lock'}\n"
            "log-level-console=warn\n"
            "log-level-file=off\n"
            "start-fast=y\n"
            # WAL goes to Ferry's store (archive_command = ferry wal-push): pgBackRest's own archive is not
            # needed to time a restore, only to make the backup consistent, which is not the point here.
            "archive-check=n\n"
            f"\n[{self.STANZA}]\n"
            f"pg1-path={cluster.datadir}\n"
            f"pg1-port={cluster.port}\n"
            f"pg1-socket-path={cluster.socket_dir}\n"
        )
        os.chmod(self.config, 0o644)
        self.repo_bytes: dict[str, int] = {}

    def repo(self, compress: str) -> Path:
        return self.home / f"repo-{compress}"

    def cmd(self, compress: str, *args: str) -> list[str]:
        return ["pgbackrest", f"--config={self.config}", f"--stanza={self.STANZA}",
                f"--repo1-path={self.repo(compress)}", *args]  # fmt: skip

    def backup(self, compress: str) -> None:
        self.env.folder(self.repo(compress), 0o750)
        run(self.cmd(compress, "stanza-create"), self.env.user, timeout=300)
        run(self.cmd(compress, f"--compress-type={compress}", "--type=full", "backup"), self.env.user,
            timeout=3600)  # fmt: skip
        self.repo_bytes[compress] = tree_bytes(self.repo(compress) / "backup")

    def restore(self, compress: str, dest: Path, processes: int) -> tuple[float, int]:
        """`pgbackrest restore` into the new folder `dest`: (seconds, bytes restored)."""
        self.env.folder(dest)
        cmd = self.cmd(compress, f"--pg1-path={dest}", f"--process-max={processes}", "restore")
        try:
            os.sync()
            t0 = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True, cwd="/", **self.env.as_user())
            elapsed = time.perf_counter() - t0
            if done.returncode != 0:
                raise SystemExit(f"error: {' '.join(cmd)} failed: {(done.stderr or done.stdout)[-1000:]}")
            return elapsed, tree_bytes(dest)
        finally:
            remove(dest)


def tree_bytes(path: Path) -> int:
    total = 0
    for folder, _dirs, names in os.walk(path):
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def read_through(paths: list[Path]) -> None:
    """Read files once so that every timed run reads them from the page cache."""
    for p in paths:
        if p.is_dir():
            read_through([Path(f, n) for f, _d, names in os.walk(p) for n in names])
            continue
        with open(p, "rb") as f:
            while f.read(8 << 20):
                pass


# ---------------------------------------------------------------------------------------------------
# Part 1 (and 4): base restore.


@dataclass
class Samples:
    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def spread(self) -> str:
        return f"{min(self.values):.2f}-{max(self.values):.2f}"


@contextlib.contextmanager
def timed_syncfs(samples: list[float]) -> Iterator[None]:
    """Time restore_base's final syncfs (the function is wrapped, not replaced: it still runs)."""
    original = target_module._syncfs

    def wrapper(path: Path) -> None:
        t0 = time.perf_counter()
        original(path)
        samples.append(time.perf_counter() - t0)

    target_module._syncfs = wrapper
    try:
        yield
    finally:
        target_module._syncfs = original


@dataclass
class RestoreRow:
    tool: str
    seconds: Samples
    nbytes: int


def ferry_restore(src: MainSource, kind: str, root: Path) -> tuple[float, float]:
    """Ferry's restore_base, in-process as `ferry migrate` calls it: (seconds, seconds of its syncfs)."""
    archive = src.archives[kind]
    target = PostgresTarget.create(
        root,
        free_port(),
        source=str(src.store),
        system_identifier=src.system_identifier,
        base_backup=archive.name,
    )
    syncs: list[float] = []
    try:
        os.sync()
        with timed_syncfs(syncs):
            t0 = time.perf_counter()
            result = target.restore_base([archive], src.manifests[kind])
            elapsed = time.perf_counter() - t0
    finally:
        remove(root)
    if result.data_bytes != src.data_bytes and kind == "none":
        raise SystemExit(
            f"error: restore_base wrote {result.data_bytes:,} bytes, expected {src.data_bytes:,}"
        )
    return elapsed, sum(syncs)


def tar_restore(env: Env, archive: Path, pipe: str, dest: Path) -> tuple[float, float]:
    """The reference: GNU tar (through the decompressor), then `sync -f`: (seconds of tar, of both)."""
    env.folder(dest)
    q = shlex.quote
    cmd = f"tar -xf {q(str(archive))} -C {q(str(dest))}"
    if pipe:
        cmd = f"{pipe} {q(str(archive))} | tar -xf - -C {q(str(dest))}"
    try:
        os.sync()
        t0 = time.perf_counter()
        subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True)
        t1 = time.perf_counter()
        subprocess.run(["sync", "-f", str(dest)], check=True)
        t2 = time.perf_counter()
    finally:
        remove(dest)
    return t1 - t0, t2 - t0


Peer = list[tuple[str, list[RestoreRow]]]


def measure_restore(env: Env, src: MainSource, runs: int, report: Report) -> Peer:
    """Part 1, with part 4's pgBackRest restores interleaved in the same rounds; returns part 4's rows."""
    work = env.folder(env.root / "restore", 0o755, owned=False)
    warm: list[Path] = list(src.archives.values())
    if src.pgbackrest is not None:
        warm += [src.pgbackrest.repo(c) for c in src.pgbackrest.repo_bytes]
    read_through(warm)
    print("\n1. Base restore, Ferry against `tar -x` of the same archive  (medians of interleaved runs)")
    say(
        "Ferry = PostgresTarget.restore_base(archive, backup_manifest) in this process, with its default "
        "verify='sizes' (every file's presence and size against backup_manifest; no checksums: "
        "verify='checksums' would add pg_verifybackup). It ends with one syncfs(2) of the file system, so it "
        "is durable like the reference `tar -x` + `sync -f`; the syncfs is also timed alone (wrapped, not "
        "removed) to show both without their sync. tar runs as root like Ferry and keeps the archived owner. "
        "Archives (and pgBackRest repos) are read once first, so every run reads from the page cache; "
        "os.sync() runs before each timed step. MB/s = bytes of restored files per second (1 MB = 10^6 B)."
    )
    peer: Peer = []
    label = {"none": "plain tar", "lz4": "lz4", "gzip": "gzip"}
    for kind in ("none", "lz4", "gzip"):
        archive = src.archives[kind]
        pipe = {"none": "", "lz4": "lz4 -dc", "gzip": "gzip -dc"}[kind]
        t_ferry, t_ferry_nosync, t_tar, t_tar_sync = Samples(), Samples(), Samples(), Samples()
        pgbr = src.pgbackrest if kind in ("none", "lz4") else None
        t_pgbr = {p: Samples() for p in PGBACKREST_PROCESSES} if pgbr is not None else {}
        pgbr_bytes = 0
        n, i = runs, 0
        while i < n:
            elapsed, sync = ferry_restore(src, kind, work / f"ferry-{kind}-{i}")
            t_ferry.add(elapsed)
            t_ferry_nosync.add(elapsed - sync)
            untarred, synced = tar_restore(env, archive, pipe, work / f"tar-{kind}-{i}")
            t_tar.add(untarred)
            t_tar_sync.add(synced)
            for processes, samples in t_pgbr.items():
                assert pgbr is not None
                seconds, nbytes = pgbr.restore(kind, work / f"pgbackrest-{kind}-{processes}-{i}", processes)
                samples.add(seconds)
                pgbr_bytes = pgbr_bytes or nbytes
            if i == 0 and max(elapsed, synced) > LONG_RUN_S:
                n = min(runs, 3)
            i += 1
        size = src.data_bytes
        ratio = t_tar_sync.median / t_ferry.median  # speed ratio: same bytes
        ratio_nosync = t_tar.median / t_ferry_nosync.median
        ref = f"{pipe} | tar -x" if pipe else "tar -x"
        runs_note = "" if n == runs else f"; 3 runs, not {runs}: one run takes over {LONG_RUN_S:.0f} s"
        print(
            f"\n   {archive.name}: {archive.stat().st_size / MB:,.0f} MB archive, "
            f"{size / MB:,.0f} MB of files "
            f"({n} runs{runs_note})"
        )
        print(f"   {'tool':<46}{'median s':>9}{'range s':>13}{'MB/s':>8}  speed vs reference")
        rows = [
            ("Ferry restore_base (ends with syncfs)", t_ferry, f"{ratio:.2f}"),
            (f"{ref} + sync -f   [reference]", t_tar_sync, "1"),
            (
                "Ferry restore_base, its syncfs not counted",
                t_ferry_nosync,
                f"{ratio_nosync:.2f} (of the next)",
            ),
            (f"{ref} alone, no sync", t_tar, "-"),
        ]
        for name, t, vs_text in rows:
            print(f"   {name:<46}{t.median:>9.2f}{t.spread():>13}{size / t.median / MB:>8,.0f}  {vs_text}")
        report.add(
            f"1 base restore, {label[kind]}",
            f"{size / t_ferry.median / MB:,.0f} MB/s",
            f"{ref} + sync {size / t_tar_sync.median / MB:,.0f} MB/s",
            f"{ratio:.2f}",
            f">= {TARGET_RESTORE_RATIO}",
            ratio >= TARGET_RESTORE_RATIO,
        )
        if t_pgbr:
            peer_rows = [RestoreRow(f"Ferry restore_base on {archive.name}", t_ferry, size)]
            peer_rows += [
                RestoreRow(f"pgBackRest restore, compress-type={kind}, process-max={p}", t, pgbr_bytes)
                for p, t in t_pgbr.items()
            ]
            peer.append((kind, peer_rows))
            ferry_rate = size / t_ferry.median / MB
            pgbr_rate = pgbr_bytes / t_pgbr[1].median / MB
            report.add(
                f"4 restore vs pgBackRest, {kind}",
                f"{ferry_rate:,.0f} MB/s",
                f"pgBackRest {pgbr_rate:,.0f} MB/s",
                f"{ferry_rate / pgbr_rate:.2f}",
                "(peer)",
                None,
            )
    return peer


def print_peer(env: Env, src: MainSource, peer: Peer) -> None:
    print("\n4. Peer reference: pgBackRest restore of the same source  (measured in part 1's rounds)")
    if src.pgbackrest is None:
        say("skipped: pgBackRest is not installed (apt-get install -y pgbackrest)")
        return
    say(
        "pgBackRest "
        + tool_version(["pgbackrest", "version"]).split()[-1]
        + " took full backups of the same cluster (idle, right before the plain base backup) into a posix "
        "repo per compression, compress-type=none and lz4 (the same lz4 as pg_basebackup's client-lz4); "
        "`pgbackrest restore` runs as the postgres user into an empty data directory. Ferry restores the "
        "pg_basebackup tar of the same compression. pgBackRest writes each file with fsync and checks every "
        "file's SHA-1 against its manifest as it restores (more checking than Ferry's verify='sizes'); its "
        "repo holds one file per data file. process-max=1 is its default (one process); process-max=2 uses "
        "both cores."
    )
    print(f"   {'compression':<13}{'tool':<56}{'median s':>9}{'range s':>13}{'MB/s':>8}  vs Ferry")
    for kind, rows in peer:
        ferry_rate = rows[0].nbytes / rows[0].seconds.median
        for row in rows:
            rate = row.nbytes / row.seconds.median
            vs = "1" if row is rows[0] else f"{rate / ferry_rate:.2f}"
            print(
                f"   {kind:<13}{row.tool:<56}{row.seconds.median:>9.2f}{row.seconds.spread():>13}"
                f"{rate / MB:>8,.0f}  {vs}"
            )


# ---------------------------------------------------------------------------------------------------
# Part 2: WAL replay.


class ReplayWatcher:
    """Polls a server's pg_last_wal_replay_lsn() over one kept connection (reconnects while it starts)."""

    def __init__(self, socket_dir: Path, port: int) -> None:
        self.socket_dir = socket_dir
        self.port = port
        self.conn: Any = None
        self.first: float | None = None  # perf_counter when the server first answered (consistent)

    def lsn(self) -> int | None:
        import psycopg

        try:
            if self.conn is None:
                self.conn = psycopg.connect(
                    host=str(self.socket_dir),
                    port=self.port,
                    user="postgres",
                    dbname="postgres",
                    autocommit=True,
                    connect_timeout=2,
                )
            row = self.conn.execute("SELECT pg_last_wal_replay_lsn()::text").fetchone()
        except psycopg.Error:
            self.close()
            return None
        if self.first is None:
            self.first = time.perf_counter()
        return parse_lsn(row[0]) if row and row[0] else None

    def wait(self, lsn: int, timeout: float, clock: Callable[[], float] = time.perf_counter) -> float:
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                now = self.lsn()
                if now is not None and now >= lsn:
                    return clock()
                time.sleep(POLL_S)
        finally:
            self.close()
        raise TimeoutError(f"replay did not reach {format_lsn(lsn)} within {timeout:.0f} s")

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None


@contextlib.contextmanager
def counting_spool_misses(env: Env, log: Path) -> Iterator[None]:
    """Make the restore_command Ferry writes log every segment that misses the spool before it runs `ferry
    wal-fetch` (one more `sh` on that path only; the spool path, `mv`, is unchanged)."""
    script = log.with_suffix(".sh")
    script.write_text(
        "#!/bin/sh\n# bench/pg_migrate.py: note a spool miss, then fetch as Ferry's restore_command does\n"
        'log=$1; shift\necho "$1" >> "$log"\n'
        f'exec {shlex.join(archive_module.ferry_command())} wal-fetch "$@"\n'
    )
    os.chmod(script, 0o755)
    log.touch()
    chown_tree(log, env.user)
    original = archive_module.restore_command

    def restore_command(store: str, spool: Path | None, **_: Any) -> str:
        return original(store, spool, fetch_command=["/bin/sh", str(script), str(log)])

    archive_module.restore_command = restore_command
    try:
        yield
    finally:
        archive_module.restore_command = original


def spool_misses(log: Path, first: int, last: int) -> int:
    """Segments first..last (segment numbers) that replay took through `ferry wal-fetch`."""
    names = set(log.read_text().split())
    segnos = {seg.segno for seg in map(parse_segment_name, names) if seg is not None}
    return sum(1 for n in segnos if first <= n <= last)


def ferry_replay(
    env: Env, src: MainSource, work: Path, i: int, location: str | None = None
) -> tuple[float, dict[str, Any]]:
    """An online Migration from `location` (default: the local store); seconds from its server start
    until replay reached the archive's end."""
    root = work / f"ferry-{i}"
    log = work / f"ferry-{i}-misses.log"
    port = free_port()
    marks: dict[str, float] = {}
    started, caught = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def report(status: MigrationStatus) -> None:
        if status.state is State.RESTORING_LOGS and not started.is_set():
            os.sync()  # the restored files reach the disk before the clock runs, as for the reference
            marks["start"] = time.perf_counter()  # just before `target.start()`
            started.set()
        if status.state is State.READY_FOR_CUTOVER and "ready" not in marks:
            marks["ready"] = time.perf_counter()

    def watch() -> None:
        try:
            if not started.wait(1800):
                raise TimeoutError("the migration never started its server")
            watcher = ReplayWatcher(root / "run", port)
            marks["caught"] = watcher.wait(src.wal_end, 1800)
            marks["first"] = watcher.first or marks["caught"]
        except BaseException as exc:
            failure.append(exc)
        caught.set()

    def cutover() -> CutoverRequest | None:
        if failure:
            raise RuntimeError(f"replay watcher failed: {failure[0]}")
        if caught.is_set():
            return CutoverRequest(time.time(), final_lsn=format_lsn(src.wal_end))
        return None

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    spec = MigrationSpec(location or str(src.store), root, online=True, port=port)
    try:
        with counting_spool_misses(env, log):
            Migration(spec, report, cutover).run()
        thread.join()
        settings = read_ferry_settings(root / "data" / "postgresql.auto.conf")
    finally:
        env.stop_server(root / "data", "immediate")
        remove(root)
    segment = DEFAULT_SEGMENT_SIZE
    extra = {
        "misses": spool_misses(log, src.wal_start // segment, (src.wal_end - 1) // segment),
        "settings": settings,
        "ready": marks["ready"] - marks["start"] if "ready" in marks else None,
        "first": marks["first"] - marks["start"],
    }
    return marks["caught"] - marks["start"], extra


def read_ferry_settings(path: Path) -> dict[str, str]:
    """The settings Ferry put into the target's postgresql.auto.conf (its marked block)."""
    out: dict[str, str] = {}
    inside = False
    for line in path.read_text().splitlines():
        if line.startswith("# --- Ferry"):
            inside = True
        elif line.startswith("# --- end"):
            inside = False
        elif inside and " = " in line:
            key, _, value = line.partition(" = ")
            out[key.strip()] = value.strip()
    if not out:
        raise SystemExit(f"error: no Ferry settings found in {path}")
    return out


def reference_replay(
    env: Env, src: MainSource, work: Path, i: int, ferry_settings: dict[str, str]
) -> tuple[float, float]:
    """The same base backup unpacked with tar into a standby configured by hand, WAL by `cp`."""
    root = env.folder(work / f"ref-{i}", 0o755)
    data, sock, log = root / "data", env.folder(root / "run"), root / "postgresql.log"
    env.folder(data)
    subprocess.run(["tar", "-xf", str(src.archives["none"]), "-C", str(data)], check=True)
    log.touch()
    chown_tree(log, env.user)
    port = free_port()
    settings = {k: v for k, v in ferry_settings.items() if k != "hba_file"}  # the backup's hba: local trust
    settings.update(
        port=str(port),
        unix_socket_directories=conf_quote(str(sock)),
        restore_command=conf_quote(f"cp {src.store / 'wal'}/%f %p"),
    )
    with (data / "postgresql.auto.conf").open("a") as conf:
        conf.write("\n".join(f"{k} = {v}" for k, v in settings.items()) + "\n")
    (data / "standby.signal").touch()
    chown_tree(data, env.user)
    env.servers.append(data)
    try:
        os.sync()
        t0 = time.perf_counter()
        run([env.tool("pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "600", "start"], env.user,
            timeout=660, check=False)  # fmt: skip
        watcher = ReplayWatcher(sock, port)
        t1 = watcher.wait(src.wal_end, 1800)
    finally:
        env.stop_server(data, "immediate")
        remove(root)
    return t1 - t0, (watcher.first or t1) - t0


def measure_replay(env: Env, src: MainSource, runs: int, report: Report) -> None:
    work = env.folder(env.root / "replay", 0o755, owned=False)
    wal_bytes = src.wal_end - src.wal_start
    read_through([src.store / "wal", src.archives["none"]])
    ferry_t, ref_t, ferry_first, ref_first = Samples(), Samples(), Samples(), Samples()
    ready: list[float] = []
    misses: list[int] = []
    settings: dict[str, str] = {}
    n, i = runs, 0
    while i < n:
        seconds, extra = ferry_replay(env, src, work, i)
        ferry_t.add(seconds)
        ferry_first.add(extra["first"])
        misses.append(extra["misses"])
        if extra["ready"] is not None:
            ready.append(extra["ready"])
        settings = settings or extra["settings"]
        seconds_ref, first_ref = reference_replay(env, src, work, i, settings)
        ref_t.add(seconds_ref)
        ref_first.add(first_ref)
        if i == 0 and max(seconds, seconds_ref) > LONG_RUN_S:
            n = min(runs, 3)
        i += 1
    ratio = ref_t.median / ferry_t.median  # speed ratio: same WAL
    ferry_rate, ref_rate = wal_bytes / ferry_t.median / MB, wal_bytes / ref_t.median / MB
    note = "" if n == runs else f"; 3 runs, not {runs}: one run takes over {LONG_RUN_S:.0f} s"
    print(
        "\n2. WAL replay, Ferry's online migration against a hand-made standby  "
        f"({wal_bytes / MB:,.0f} MB of WAL, "
        f"{n} interleaved runs, medians{note})"
    )
    say(
        "Both restore the plain base backup (Ferry: Migration(MigrationSpec(store, target, online=True)), "
        "which unpacks it itself; reference: tar -x, standby.signal) and replay the archived WAL from the "
        "backup's start to the final pg_switch_wal() LSN. Timed from the server start (Ferry: its "
        "RestoringLogs report, before it primes its prefetcher and starts the server; reference: pg_ctl "
        "start) until "
        "pg_last_wal_replay_lsn() reaches "
        f"that LSN, polled every {POLL_S * 1000:.0f} ms over one connection for both; then Ferry gets its "
        "cutover request. The unpacking before is not timed; os.sync() runs just before each start. The "
        f"reference runs with Ferry's own recovery settings ({len(settings)} keys copied from the "
        "postgresql.auto.conf Ferry wrote: hot_standby, "
        f"wal_retrieve_retry_interval={RETRY_INTERVAL}, the limits from "
        "pg_control...) except restore_command = 'cp STORE/wal/%f %p'; both inherit the source's "
        "postgresql.conf (fsync=off, shared_buffers=256MB, max_wal_size=4GB). Ferry's restore_command "
        "moves a segment from its prefetch spool (`mv`) or, on a spool miss, runs `ferry wal-fetch`."
    )
    print(f"   {'tool':<52}{'median s':>9}{'range s':>13}{'MB/s':>8}{'first LSN s':>13}  speed vs ref")
    for name, t, first, vs in (
        ("Ferry online Migration (spool + mv / wal-fetch)", ferry_t, ferry_first, f"{ratio:.2f}"),
        ("standby, tar -x, restore_command = cp  [reference]", ref_t, ref_first, "1"),
    ):
        rate = wal_bytes / t.median / MB
        print(f"   {name:<52}{t.median:>9.2f}{t.spread():>13}{rate:>8,.0f}{first.median:>13.2f}  {vs}")
    segments = (src.wal_end - 1) // DEFAULT_SEGMENT_SIZE - src.wal_start // DEFAULT_SEGMENT_SIZE + 1
    say(
        "first LSN s = when the server first answered pg_last_wal_replay_lsn() (consistent, accepting "
        f"connections): the start-up part of the time. Spool misses: {statistics.median(misses):.0f} of the "
        f"{segments} segments replayed went through `ferry wal-fetch` (a Python start and a copy) instead of "
        f"the prefetch spool (median; per run: {', '.join(map(str, misses))}); this benchmark counts them "
        "with a one-line `sh` wrapper on that path."
        + (
            f" Ferry reported ReadyForCutover {statistics.median(ready):.2f} s after its start (median; "
            "replay was then inside the archive's last segment)."
            if ready
            else " Ferry had not reported ReadyForCutover yet when replay reached the end (its status "
            "loop polls every 0.25 s and lists the store every 5 s)."
        )
    )
    report.add(
        "2 WAL replay",
        f"{ferry_rate:,.0f} MB/s",
        f"cp standby {ref_rate:,.0f} MB/s",
        f"{ratio:.2f}",
        f">= {TARGET_REPLAY_RATIO}",
        ratio >= TARGET_REPLAY_RATIO,
    )


# ---------------------------------------------------------------------------------------------------
# Part 3: cutover downtime under a workload.


def start_workload(env: Env, cluster: Cluster) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [env.tool("pgbench"), "-n", "-c", "2", "-j", "2", "-T", "3600", "-h", str(cluster.socket_dir),
         "-p", str(cluster.port), "-U", "postgres", "postgres"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/", **env.as_user(),
    )  # fmt: skip
    env.processes.append(proc)
    return proc


def one_cutover(env: Env, cluster: Cluster, store: Path, work: Path, i: int) -> dict[str, float]:
    root = work / f"target-{i}"
    port = free_port()
    workload = start_workload(env, cluster)
    marks: dict[str, float] = {}
    ready: list[float] = []
    threads: list[threading.Thread] = []

    def report(status: MigrationStatus) -> None:
        if status.state is State.READY_FOR_CUTOVER and not ready:
            ready.append(time.monotonic())
        if status.phase.startswith("cutting over: promoting") and "promote" not in marks:
            marks["promote"] = time.time()

    def watch_archive(path: Path) -> None:
        while not path.exists():
            time.sleep(0.005)
        marks["archived"] = time.time()

    def cutover() -> CutoverRequest | None:
        if not ready or time.monotonic() - ready[0] < CUTOVER_SETTLE_S:
            return None
        marks["stop"] = time.time()
        workload.send_signal(signal.SIGTERM)
        workload.wait()
        marks["stopped"] = time.time()
        lsn, segment = cluster.query("SELECT s::text, pg_walfile_name(s) FROM pg_switch_wal() s")[0]
        marks["switched"] = time.time()
        threads.append(
            threading.Thread(target=watch_archive, args=(store / "wal" / str(segment),), daemon=True)
        )
        threads[-1].start()
        return CutoverRequest(marks["stop"], final_lsn=str(lsn))

    try:
        result: Outcome = Migration(MigrationSpec(str(store), root, online=True, port=port), report,
                                    cutover).run()  # fmt: skip
        for t in threads:
            t.join(60)
        assert result.downtime_seconds is not None
        end = marks["stop"] + result.downtime_seconds
        return {
            "downtime": result.downtime_seconds,
            "stop workload": marks["stopped"] - marks["stop"],
            "pg_switch_wal": marks["switched"] - marks["stopped"],
            "archive (wal-push)": marks["archived"] - marks["switched"],
            "fetch + replay + see": marks["promote"] - marks["archived"],
            "promote + verify": end - marks["promote"],
        }
    finally:
        if workload.poll() is None:
            workload.terminate()
            workload.wait()
        env.stop_server(root / "data", "immediate")
        remove(root)


def measure_cutover(env: Env, runs: int, report: Report) -> None:
    store = env.folder(env.root / "cut-store", 0o755)
    work = env.folder(env.root / "cutover", 0o755, owned=False)
    cluster = start_source(env, "cut-src", store)
    pgbench_init(env, cluster, CUTOVER_SCALE)
    size = cluster_bytes(cluster)
    rows: list[dict[str, float]] = []
    for i in range(runs):
        # A fresh base backup for each cutover (the latest in the store is the one restored), so every
        # target replays only the WAL of its own run.
        base_backup(cluster, store / f"base-{i}", compress="lz4", label=f"cut-{i}")
        switch_wal(cluster)
        wait_archived(cluster, timeout=300)
        rows.append(one_cutover(env, cluster, store, work, i))
    env.stop_server(cluster.datadir)
    downtime = statistics.median(r["downtime"] for r in rows)
    print(
        f"\n3. Cutover downtime under a workload  ({runs} cutovers, median; "
        f"target <= {TARGET_DOWNTIME_S:.0f} s)"
    )
    say(
        f"Source: pgbench scale {CUTOVER_SCALE} ({size / MB:,.0f} MB), archiving with `ferry wal-push`. Each "
        "cutover: a fresh lz4 base backup (the latest in the store is the one Ferry restores, so each target "
        "replays only its own run's WAL), `pgbench -n -c 2 -j 2` started (unthrottled), an online Migration "
        f"onto a new target; {CUTOVER_SETTLE_S:.0f} s after it reports ReadyForCutover the workload is "
        "stopped (SIGTERM), pg_switch_wal() gives the final LSN and the cutover is requested with it. "
        "Downtime = "
        "the result's downtime_seconds: from the stop until Ferry has promoted the target and committed a "
        "write on it (verify_writable). The steps, timed by this benchmark around it (seconds): stop "
        "workload = SIGTERM until pgbench exits; archive = from the switch until the segment is in the store "
        "(archive_command = ferry wal-push); fetch + replay + see = until Ferry, having seen the target's "
        "replay reach the final LSN, starts promoting; promote + verify = pg_promote(wait) and the test "
        "write."
    )
    keys = list(rows[0])
    print(
        f"   {'step':<24}" + "".join(f"{'run ' + str(i + 1):>9}" for i in range(len(rows))) + f"{'median':>9}"
    )
    for key in keys:
        values = [r[key] for r in rows]
        print(f"   {key:<24}" + "".join(f"{v:>9.3f}" for v in values) + f"{statistics.median(values):>9.3f}")
    report.add(
        "3 cutover downtime",
        f"{downtime:.2f} s (median)",
        "-",
        "-",
        f"<= {TARGET_DOWNTIME_S:.0f} s",
        downtime <= TARGET_DOWNTIME_S,
    )


# ---------------------------------------------------------------------------------------------------
# The final table.


@dataclass
class Report:
    rows: list[tuple[str, str, str, str, str, bool | None]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def add(self, what: str, value: str, ref: str, ratio: str, target: str, ok: bool | None) -> None:
        self.rows.append((what, value, ref, ratio, target, ok))

    def summary(self) -> None:
        print("\nSummary  (ratio = Ferry's speed / the reference's; part 4 compares with a peer: no target)")
        print(f"   {'measurement':<31}{'Ferry':>16}{'reference':>34}{'ratio':>7}{'target':>9}  result")
        print("   " + "-" * 105)
        for what, value, ref, ratio, target, ok in sorted(self.rows, key=lambda r: r[0][0]):
            verdict = "-" if ok is None else "PASS" if ok else "FAIL"
            print(f"   {what:<31}{value:>16}{ref:>34}{ratio:>7}{target:>9}  {verdict}")


if __name__ == "__main__":
    sys.exit(main())
