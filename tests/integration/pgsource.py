"""Real PostgreSQL sources for tests: a cluster archiving its WAL into a store folder, base backups taken
with `pg_basebackup -Ft` (any compression, any WAL method), restored copies that promote to a new timeline,
and snapshots of the store to damage.

PostgreSQL refuses to run as root, so servers run as the OS user `postgres`; everything they touch lives
under a 0755 folder made by `make_root()` (pytest's tmp_path is 0700 under /tmp/pytest-of-root, which that
user cannot enter). Test clusters are small and run with fsync=off.

Use it from a test module:

    from tests.integration.pgsource import PgSource, make_root, require_postgres, start_source

    @pytest.fixture(scope="module")
    def source() -> Iterator[PgSource]:
        require_postgres()
        with make_root() as root:
            src = start_source(root / "src", root / "store")
            try:
                src.write(); src.switch()
                src.base_backup("base", compress="lz4")
                yield src
            finally:
                src.stop()
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

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

PG_MAJOR = 15
TEST_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "'16MB'",
    "max_wal_senders": "4",
    "wal_level": "'replica'",
    "checkpoint_timeout": "'1h'",
}


def require_postgres(major: int = PG_MAJOR) -> tuple[Binaries, OsUser | None]:
    """The server binaries and the OS user to run them as; skips the test when either is missing."""
    try:
        binaries = find_binaries(major)
        user = OsUser.resolve()
    except Exception as exc:  # ClusterError or UsageError: no server to test with here
        pytest.skip(f"PostgreSQL {major} is not usable here: {exc}")
    return binaries, user


@contextlib.contextmanager
def make_root(prefix: str = "ferry-pg-") -> Iterator[Path]:
    """A fresh 0755 folder under the system temp dir, removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _conf(cluster: Cluster, settings: dict[str, str]) -> None:
    with (cluster.datadir / "postgresql.conf").open("a") as conf:
        conf.write("\n# tests/integration/pgsource.py\n")
        for key, value in settings.items():
            conf.write(f"{key} = {value}\n")


@dataclass
class PgSource:
    """A running source cluster whose WAL is archived into `archive` (a folder of the store `store`)."""

    cluster: Cluster
    store: Path
    archive: Path
    backups: list[Path] = field(default_factory=list)
    archive_suffix: str = ""  # what the archive_command appends to %f (.gz when it compresses with gzip)

    def sql(self, query: str) -> list[tuple[object, ...]]:
        return self.cluster.query(query)

    @property
    def system_identifier(self) -> int:
        return int(str(self.sql("SELECT system_identifier FROM pg_control_system()")[0][0]))

    @property
    def timeline(self) -> int:
        return int(str(self.sql("SELECT timeline_id FROM pg_control_checkpoint()")[0][0]))

    def write(self, rows: int = 2000, table: str = "ferry_t") -> None:
        """Some committed changes, so the next segment has content."""
        self.sql(f"CREATE TABLE IF NOT EXISTS {table} (id int, note text)")
        self.sql(f"INSERT INTO {table} SELECT g, md5(g::text) FROM generate_series(1, {rows}) g")

    def current_lsn(self) -> str:
        return str(self.sql("SELECT pg_current_wal_lsn()")[0][0])

    def switch(self, timeout: float = 60) -> str:
        """Close the current segment and wait until the archiver has copied it; returns its file name."""
        return self._switch(timeout)[0]

    def switch_lsn(self, timeout: float = 60) -> str:
        """Close the current segment, wait until it is archived, return the switch LSN (a cutover's final
        LSN once writes have stopped)."""
        return self._switch(timeout)[1]

    def _switch(self, timeout: float) -> tuple[str, str]:
        # pg_switch_wal() returns the end of the switch record, or the current position when nothing was
        # written since the last switch; pg_walfile_name() of either is the segment that holds every
        # record written so far (at an exact boundary it names the segment before).
        lsn, name = self.sql("SELECT s, pg_walfile_name(s) FROM (SELECT pg_switch_wal() AS s) AS x")[0]
        self.wait_archived(str(name), timeout)
        return str(name), str(lsn)

    def wait_archived(self, name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (self.archive / f"{name}{self.archive_suffix}").exists():
                row = self.sql("SELECT last_archived_wal, last_failed_wal FROM pg_stat_archiver")[0]
                if row[0] is not None and str(row[0]) >= name:
                    return
            time.sleep(0.05)
        raise ClusterError(
            f"segment {name} was not archived within {timeout} s",
            f"read the server log {self.cluster.logfile}",
        )

    def base_backup(
        self, name: str, compress: str = "none", wal_method: str = "stream", label: str | None = None
    ) -> Path:
        """`pg_basebackup -Ft` into `store/name`. compress: none, gzip, lz4 or zstd (client side);
        wal_method: stream (pg_wal.tar), fetch (WAL inside base.tar) or none (WAL from the archive)."""
        dest = self.store / name
        dest.mkdir(parents=True)
        chown_tree(dest, self.cluster.user)
        cmd = [self.cluster.binaries.tool("pg_basebackup"), "-h", str(self.cluster.socket_dir),
               "-p", str(self.cluster.port), "-U", "postgres", "-D", str(dest), "-Ft", "-X", wal_method,
               "-Z", compress, "-c", "fast", "--no-sync"]  # fmt: skip
        if label:
            cmd += ["-l", label]
        run(cmd, self.cluster.user, timeout=300)
        self.backups.append(dest)
        return dest

    def stop(self) -> None:
        self.cluster.stop("immediate")


def start_source(
    datadir: Path,
    store: Path,
    *,
    archive_subdir: str = "wal",
    archive_command: str | None = None,
    tablespace: Path | None = None,
    settings: dict[str, str] | None = None,
) -> PgSource:
    """initdb + start a cluster archiving into `store/archive_subdir` (default: `cp %p DIR/%f`). With
    `tablespace`, a tablespace `ts1` there holds a table, so base backups carry a tablespace tar."""
    binaries, user = require_postgres()
    archive = store / archive_subdir
    archive.mkdir(parents=True, exist_ok=True)
    chown_tree(store, user)
    cluster = Cluster(datadir, free_port(), binaries, user)
    cluster.initdb()
    command = archive_command or f"cp %p {archive}/%f"
    _conf(
        cluster,
        {
            **TEST_SETTINGS,
            "archive_mode": "on",
            "archive_command": "'" + command.replace("'", "''") + "'",
            **(settings or {}),
        },
    )
    cluster.start()
    source = PgSource(cluster, store, archive)
    if tablespace is not None:
        tablespace.mkdir(parents=True)
        chown_tree(tablespace, user)
        source.sql(f"CREATE TABLESPACE ts1 LOCATION '{tablespace}'")
        source.sql("CREATE TABLE ferry_ts (id int) TABLESPACE ts1")
        source.sql("INSERT INTO ferry_ts SELECT generate_series(1, 500)")
    return source


def init_only(datadir: Path) -> Cluster:
    """An initdb'ed cluster that never starts: a second system identifier, with a WAL segment
    (pg_wal/000000010000000000000001) and a pg_control, in about a second."""
    binaries, user = require_postgres()
    cluster = Cluster(datadir, free_port(), binaries, user)
    cluster.initdb()
    return cluster


def restore_and_promote(source: PgSource, backup: Path, datadir: Path) -> PgSource:
    """Restore a plain (`-Z none`) tar backup into `datadir`, replay the archive with
    `restore_command = 'cp ARCHIVE/%f %p'` and let it promote at the end of the archive: a new timeline.
    Its postgresql.conf comes from the backup, so it archives into the same folder as the source, the
    way a test restore that keeps the production settings does."""
    binaries, user = require_postgres()
    datadir.mkdir(mode=0o700)
    for tar in sorted(backup.glob("*.tar")):
        if tar.name == "base.tar":
            target = datadir
        elif tar.name == "pg_wal.tar":
            target = datadir / "pg_wal"
        else:
            target = datadir.parent / f"{datadir.name}-ts-{tar.stem}"
        target.mkdir(exist_ok=True)
        with tarfile.open(tar) as t:
            # Extraction filters arrived in Python 3.11.4; Debian 12's 3.11.2 has none. These archives
            # are the test's own pg_basebackup output.
            if hasattr(tarfile, "tar_filter"):
                t.extractall(target, filter="tar")
            else:
                t.extractall(target)
    tablespace_map = datadir / "tablespace_map"
    if tablespace_map.exists():  # point tablespaces at the restored copies, not at the source's folders
        lines = [
            f"{oid} {datadir.parent / f'{datadir.name}-ts-{oid}'}"
            for oid, _, _ in (line.partition(" ") for line in tablespace_map.read_text().splitlines())
            if oid
        ]
        tablespace_map.write_text("\n".join(lines) + "\n")
    (datadir / "recovery.signal").touch()
    _conf_path = datadir / "postgresql.auto.conf"
    with _conf_path.open("a") as conf:
        conf.write(f"restore_command = 'cp {source.archive}/%f %p'\n")
    for p in datadir.parent.glob(f"{datadir.name}*"):
        chown_tree(p, user)
    copy = Cluster(datadir, free_port(), binaries, user)
    copy.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if copy.query("SELECT NOT pg_is_in_recovery()")[0][0]:
            return PgSource(copy, source.store, source.archive)
        time.sleep(0.05)
    raise ClusterError(f"restored copy in '{datadir}' did not promote", f"read {copy.logfile}")


def snapshot(store: Path, dest: Path) -> Path:
    """A copy of the store to change freely. Files are hard links (cheap): replace a file, never write
    into one, or the original changes too."""
    shutil.copytree(store, dest, copy_function=os.link)
    return dest


def replace_file(path: Path, data: bytes) -> None:
    """Write `data` as a new file at `path` (breaking a hard link made by `snapshot`)."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)


class RowWriter:
    """An application writing to a source: one row per committed transaction into `orders`, counted once
    committed, until `stop()`. `committed` is then exactly the number of rows the table must hold."""

    def __init__(self, source: PgSource, pause: float = 0.0) -> None:
        self.source = source
        self.pause = pause
        self.committed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="row-writer", daemon=True)

    def start(self) -> RowWriter:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        return self.committed

    def _run(self) -> None:
        with self.source.cluster.connect() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS orders (id bigint PRIMARY KEY, v text)")
            while not self._stop.is_set():
                n = self.committed
                conn.execute("INSERT INTO orders VALUES (%s, md5(%s::text))", (n + 1, n))
                self.committed = n + 1
                if self.pause:
                    time.sleep(self.pause)
