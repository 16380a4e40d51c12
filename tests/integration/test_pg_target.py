"""The PostgreSQL restore target and the WAL archive tools, against real PostgreSQL servers.

A source cluster (1 MiB WAL segments, fsync off) archives through `wal_push`; its base backups are restored
with `PostgresTarget.restore_base` and replayed through `restore_command` (`wal_fetch` and the prefetch
spool). PostgreSQL runs its commands as its OS user, so they go through a small shim script run by a
Python that user can execute (the project's virtualenv may live where it cannot).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ferry.core.errors import StoreError, UsageError
from ferry.engines.postgres.archive import (
    ABSENT_DIR,
    OWNER_FILE,
    Prefetcher,
    WalArchiveError,
    WalConflict,
    conf_quote,
    restore_command,
    wal_fetch,
    wal_push,
)
from ferry.engines.postgres.cluster import (
    Binaries,
    Cluster,
    ClusterError,
    OsUser,
    find_binaries,
    free_port,
    run,
)
from ferry.engines.postgres.target import (
    ArchiveEntryError,
    ExtractProgress,
    ManifestMismatch,
    Phase,
    PostgresTarget,
    TargetError,
    TargetStatus,
)
from ferry.engines.postgres.wal import SegmentName, format_lsn, parse_lsn, parse_segment_name

SRC = Path(__file__).resolve().parents[2] / "src"
SEG = 1024 * 1024  # the test source's WAL segment size (initdb --wal-segsize=1): small archives, fast tests


def _binaries() -> Binaries | None:
    try:
        return find_binaries()
    except ClusterError:
        return None


PG = _binaries()
USER = OsUser.resolve()
needs_pg = pytest.mark.skipif(PG is None, reason="PostgreSQL server binaries are not installed")
T = TypeVar("T")


def pg_folder() -> Path:
    """A folder the server's OS user can reach (pytest's tmp_path is 0700 under root's)."""
    folder = Path(tempfile.mkdtemp(prefix="ferry-pg-"))
    folder.chmod(0o755)
    return folder


def owned_folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if USER is not None:
        os.chown(path, USER.uid, USER.gid)
    return path


def copy_owned(src: Path, dest: Path) -> None:
    """Copy a WAL file the way the archiver leaves it: readable by the server's OS user."""
    shutil.copy(src, dest)
    if USER is not None:
        os.chown(dest, USER.uid, USER.gid)


def wait_for(check: Callable[[], T | None], timeout: float, what: Callable[[], str]) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what()}")
        time.sleep(0.1)


def stop_servers_under(folder: Path) -> None:
    assert PG is not None
    for pid_file in folder.rglob("postmaster.pid"):
        run(
            [PG.tool("pg_ctl"), "-D", str(pid_file.parent), "-m", "immediate", "-w", "stop"],
            USER,
            check=False,
            timeout=60,
        )


@pytest.fixture
def workdir() -> Iterator[Path]:
    folder = pg_folder()
    try:
        yield folder
    finally:
        if PG is not None:
            stop_servers_under(folder)
        shutil.rmtree(folder, ignore_errors=True)


# -- the shim PostgreSQL runs -----------------------------------------------------------------------

SHIM = """\
import os, sys
sys.path.insert(0, {src!r})
from pathlib import Path
from ferry.core.errors import FerryError
from ferry.engines.postgres.archive import wal_fetch, wal_push


def main(argv):
    if argv[0] == "wal-push":
        wal_push(Path(argv[1]), argv[2])
        return 0
    name, dest = argv[1], argv[2]
    store = argv[argv.index("--store") + 1]
    spool = Path(argv[argv.index("--spool") + 1]) if "--spool" in argv else None
    found = wal_fetch(name, Path(dest), store, spool)
    log = os.environ.get("SHIM_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{{name}} {{int(found)}}\\n")
    return 0 if found else 1


try:
    sys.exit(main(sys.argv[1:]))
except FerryError as exc:
    print(f"shim: {{exc.message}} (hint: {{exc.hint}})", file=sys.stderr)
    sys.exit(2)
"""


def server_python() -> str | None:
    """A Python the OS user can run that imports Ferry's archive module from the source tree."""
    probe = f"import sys; sys.path.insert(0, {str(SRC)!r}); import ferry.engines.postgres.archive"
    for candidate in (sys.executable, "/usr/bin/python3", shutil.which("python3")):
        try:
            if candidate and run([candidate, "-c", probe], USER, check=False, timeout=60).returncode == 0:
                return candidate
        except ClusterError:
            continue  # not runnable by that user (e.g. a Python under /root)
    return None


# -- the source -------------------------------------------------------------------------------------


@dataclass
class Source:
    folder: Path
    cluster: Cluster
    store: Path
    python: str
    shim: Path
    system_identifier: int
    next_id: int = 1
    backups: dict[str, Path] = field(default_factory=dict)

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        return self.cluster.query(query, params)

    def write(self, rows: int = 1500) -> None:
        """About 1 MiB of WAL per 1500 rows."""
        self.sql(
            "INSERT INTO t SELECT g, repeat(md5(g::text), 20) FROM generate_series(%s::int, %s::int) g",
            self.next_id,
            self.next_id + rows - 1,
        )
        self.next_id += rows

    def count(self) -> int:
        return int(self.sql("SELECT count(*) FROM t")[0][0])

    def switch(self) -> tuple[str, int]:
        """Close the current segment and wait until it is archived. Returns its name and the LSN after the
        last commit before the switch (what a target must replay to see every row written so far)."""
        (lsn,) = self.sql("SELECT pg_current_wal_lsn()::text")[0]
        (name,) = self.sql("SELECT pg_walfile_name(pg_switch_wal())")[0]
        path = self.store / "wal" / name
        wait_for(lambda: path.exists(), 30, lambda: f"'{name}' to be archived")
        return name, parse_lsn(lsn)

    def basebackup(self, compression: str, wal: str = "none") -> Path:
        """pg_basebackup -Ft: WAL from the archive (-X none), or also in pg_wal.tar (-X stream)."""
        key = f"{compression}-{wal}"
        if key not in self.backups:
            assert PG is not None
            dest = owned_folder(self.folder / f"base-{key}")
            run(
                [
                    PG.tool("pg_basebackup"),
                    "-h",
                    str(self.cluster.socket_dir),
                    "-p",
                    str(self.cluster.port),
                    "-U",
                    "postgres",
                    "-D",
                    str(dest),
                    "-Ft",
                    "-X",
                    wal,
                    "-Z",
                    compression,
                    "-c",
                    "fast",
                    "--no-sync",
                ],
                USER,
                timeout=120,
            )
            self.backups[key] = dest
        return self.backups[key]

    def fetch_command(self, log: Path | None = None) -> list[str]:
        env = ["/usr/bin/env", f"SHIM_LOG={log}"] if log else []
        return [*env, self.python, str(self.shim), "wal-fetch"]


class SourceCluster(Cluster):
    def settings(self) -> dict[str, str]:
        # On the command line, so not in the backup's files: above the target's default (100), configure
        # must carry the source's value over from pg_control, or a hot standby refuses to start.
        return {**super().settings(), "max_connections": "120"}


@pytest.fixture(scope="module")
def source() -> Iterator[Source]:
    if PG is None:
        pytest.skip("PostgreSQL server binaries are not installed")
    python = server_python()
    if python is None:
        pytest.skip("no Python that PostgreSQL's OS user can run imports Ferry")
    folder = pg_folder()
    try:
        shim = folder / "shim.py"
        shim.write_text(SHIM.format(src=str(SRC)))
        shim.chmod(0o755)
        store = owned_folder(folder / "store")
        cluster = SourceCluster(folder / "src", free_port(), PG, USER)
        cluster.initdb("--wal-segsize=1")
        with (cluster.datadir / "postgresql.auto.conf").open("a") as conf:
            conf.write(
                "fsync = off\n"
                "wal_level = replica\n"
                "archive_mode = on\n"
                f"archive_command = {conf_quote(f'{python} {shim} wal-push %p {store}')}\n"
            )
        cluster.start()
        cluster.query("CREATE TABLE t (id int PRIMARY KEY, v text)")
        (sysid,) = cluster.query("SELECT system_identifier FROM pg_control_system()")[0]
        src = Source(folder, cluster, store, python, shim, int(sysid))
        src.write(500)
        src.switch()
        yield src
    finally:
        stop_servers_under(folder)
        shutil.rmtree(folder, ignore_errors=True)


def new_target(src: Source, root: Path, compression: str, wal: str = "none") -> tuple[PostgresTarget, Path]:
    backup = src.basebackup(compression, wal)
    target = PostgresTarget.create(
        root,
        free_port(),
        source=str(src.store),
        system_identifier=src.system_identifier,
        base_backup=backup.name,
    )
    return target, backup


def archives_of(backup: Path) -> list[Path]:
    return sorted(p for p in backup.iterdir() if ".tar" in p.name)


def backup_start(target: PostgresTarget) -> int:
    # The server renames backup_label once recovery has started from it.
    label_file = target.data / "backup_label"
    if not label_file.exists():
        label_file = target.data / "backup_label.old"
    label = label_file.read_text()
    m = re.search(r"START WAL LOCATION: (\S+)", label)
    assert m, label
    return parse_lsn(m.group(1))


def catch_up(
    target: PostgresTarget, lsn: int, prefetcher: Prefetcher | None = None, timeout: float = 40
) -> TargetStatus:
    def check() -> TargetStatus | None:
        status = target.status()
        if prefetcher is not None and status.position:
            prefetcher.advance(status.position)
        if not status.running:
            pytest.fail(f"target server stopped: {target.cluster.log_tail()}")
        return status if status.replay_lsn is not None and status.replay_lsn >= lsn else None

    return wait_for(
        check,
        timeout,
        lambda: f"replay to reach {format_lsn(lsn)}: {target.status()} | {target.cluster.log_tail()}",
    )


def target_count(target: PostgresTarget) -> int:
    with target.connect() as conn:
        return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])


def kill_server(target: PostgresTarget) -> None:
    """SIGKILL the postmaster and every child, as a crash of the machine's processes would."""
    pid = int((target.data / "postmaster.pid").read_text().split()[0])
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    for p in [pid, *children]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    wait_for(
        lambda: not target.cluster.is_running() and not any(Path(f"/proc/{c}").exists() for c in children),
        20,
        lambda: "the killed server's processes to exit",
    )


# -- wal_push / wal_fetch / restore_command, no server -------------------------------------------------


def segment_file(folder: Path, name: str, size: int = SEG, fill: bytes = b"w") -> Path:
    path = folder / name
    path.write_bytes(fill * size)
    return path


def test_wal_push_is_atomic_idempotent_and_never_overwrites(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    pg_wal = tmp_path / "pg_wal"
    pg_wal.mkdir()
    seg = segment_file(pg_wal, "000000010000000000000003")
    first = wal_push(seg, str(store))
    assert (first.key, first.size, first.already_present) == ("wal/000000010000000000000003", SEG, False)
    stored = store / "wal" / seg.name
    assert stored.read_bytes() == seg.read_bytes()
    # PostgreSQL re-runs archive_command after a crash: the same content succeeds, file:// works too.
    again = wal_push(seg, stored.parent.parent.as_uri())
    assert again.already_present
    # Different content under the same name: refused, and the stored file is untouched.
    seg.write_bytes(b"x" * SEG)
    with pytest.raises(WalConflict) as conflict:
        wal_push(seg, str(store))
    assert str(seg) in str(conflict.value) and "wal/000000010000000000000003" in str(conflict.value)
    assert "never overwrites" in conflict.value.hint
    assert stored.read_bytes() == b"w" * SEG
    assert not [p for p in stored.parent.iterdir() if p.name.startswith(".")], "temp files left behind"
    # History, backup label and partial files keep their names; any size for the first two.
    for name in ("00000002.history", "000000010000000000000003.00000028.backup"):
        path = pg_wal / name
        path.write_text("1\t0/3000000\tno recovery target specified\n")
        assert wal_push(path, str(store)).key == f"wal/{name}"
    assert wal_push(segment_file(pg_wal, "000000010000000000000004.partial"), str(store)).size == SEG


def test_wal_push_refuses_bad_input(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    short = segment_file(tmp_path, "000000010000000000000005", size=SEG - 8192)
    with pytest.raises(WalArchiveError, match="not a segment size"):
        wal_push(short, str(store))
    with pytest.raises(UsageError, match="not a WAL file name"):
        wal_push(segment_file(tmp_path, "RECOVERYXLOG"), str(store))
    seg = segment_file(tmp_path, "000000010000000000000006")
    with pytest.raises(UsageError, match="'ftp'"):  # a scheme no store of Ferry's reads
        wal_push(seg, "ftp://host/db1")
    with pytest.raises(StoreError, match="does not exist"):
        wal_push(seg, str(tmp_path / "not-mounted"))
    assert not (tmp_path / "not-mounted").exists()


def test_wal_fetch_from_spool_store_or_not_at_all(tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "wal").mkdir(parents=True)
    spool = tmp_path / "spool"
    spool.mkdir()
    pg_wal = tmp_path / "pg_wal"
    pg_wal.mkdir()
    segment_file(store / "wal", "000000010000000000000007", fill=b"s")
    segment_file(spool, "000000010000000000000008", fill=b"p")
    dest = pg_wal / "RECOVERYXLOG"
    # In the spool: moved into place (same file system: a rename, the spool copy is gone).
    assert wal_fetch("000000010000000000000008", dest, str(store), spool)
    assert dest.read_bytes() == b"p" * SEG and not (spool / "000000010000000000000008").exists()
    # Not in the spool: copied from the store, which keeps its copy.
    assert wal_fetch("000000010000000000000007", dest, str(store), spool)
    assert dest.read_bytes() == b"s" * SEG and (store / "wal" / "000000010000000000000007").exists()
    # Nowhere: False (PostgreSQL waits or ends recovery); no temp files left.
    assert not wal_fetch("000000010000000000000009", dest, str(store), spool)
    assert not wal_fetch("00000002.history", dest, str(store), None)
    assert sorted(p.name for p in pg_wal.iterdir()) == ["RECOVERYXLOG"]
    # A store that cannot be read is an error, not "not found": that would end recovery early.
    with pytest.raises(UsageError, match="does not exist"):
        wal_fetch("000000010000000000000007", dest, str(tmp_path / "gone"), spool)
    segment_file(store / "wal", "00000001000000000000000A", size=4096)
    with pytest.raises(WalArchiveError, match="not a WAL segment size"):
        wal_fetch("00000001000000000000000A", dest, str(store), None)
    with pytest.raises(UsageError):
        wal_fetch("../../etc/passwd", dest, str(store), spool)


def postgres_substitute(conf_literal: str, name: str, path: str) -> str:
    """What PostgreSQL does with a restore_command from postgresql.auto.conf: unquote, then %-expand."""
    assert conf_literal.startswith("'") and conf_literal.endswith("'")
    value = conf_literal[1:-1].replace("''", "'").replace("\\\\", "\\")
    return re.sub(r"%[fp%]", lambda m: {"%f": name, "%p": path, "%%": "%"}[m.group(0)], value)


def test_restore_command_quoting_and_fast_paths(tmp_path: Path) -> None:
    odd = tmp_path / "it's 100% odd"
    spool, store, data = odd / "spool dir", odd / "store", odd / "data"
    for folder in (spool / ABSENT_DIR, store / "wal", data / "pg_wal"):
        folder.mkdir(parents=True)
    calls = tmp_path / "calls"
    fetch = ["sh", "-c", f'echo "$@" >> {calls}; exit 7', "fetch"]
    literal = conf_quote(restore_command(str(store), spool, fetch_command=fetch))

    def restore(name: str) -> int:
        cmd = postgres_substitute(literal, name, "pg_wal/RECOVERYXLOG")
        return subprocess.run(["/bin/sh", "-c", cmd], cwd=data, timeout=30).returncode

    def called() -> list[str]:
        return calls.read_text().splitlines() if calls.exists() else []

    # 1. Prefetched: moved into place by the shell, Ferry not started.
    segment_file(spool, "000000010000000000000002", fill=b"p")
    assert restore("000000010000000000000002") == 0
    assert (data / "pg_wal" / "RECOVERYXLOG").read_bytes() == b"p" * SEG and called() == []
    # 2. Not prefetched: Ferry runs, with the names and the odd paths intact.
    assert restore("000000010000000000000003") == 7
    assert called() == [f"000000010000000000000003 pg_wal/RECOVERYXLOG --store {store} --spool {spool}"]
    # 3. A marker from a live prefetcher, on a standby: "not found" without starting Ferry.
    (spool / ABSENT_DIR / "000000010000000000000004").touch()
    (spool / ABSENT_DIR / OWNER_FILE).write_text(f"{os.getpid()}\n")
    (data / "standby.signal").touch()
    assert restore("000000010000000000000004") == 1 and len(called()) == 1
    # 4. The same marker in one-shot recovery (recovery.signal): only the store may say "not found".
    (data / "standby.signal").unlink()
    assert restore("000000010000000000000004") == 7 and len(called()) == 2
    # 5. A marker left by a prefetcher that died: ignored.
    (data / "standby.signal").touch()
    (spool / ABSENT_DIR / OWNER_FILE).write_text("999999999\n")  # above pid_max: no such process
    assert restore("000000010000000000000004") == 7 and len(called()) == 3
    (spool / ABSENT_DIR / OWNER_FILE).write_text("")  # nor an empty owner file
    assert restore("000000010000000000000004") == 7 and len(called()) == 4
    # 6. A history file's marker holds out of standby mode too (promotion looks for the parent's and the
    #    next timelines' histories after leaving it): "not found" without starting Ferry.
    (spool / ABSENT_DIR / OWNER_FILE).write_text(f"{os.getpid()}\n")
    (data / "standby.signal").unlink()
    (spool / ABSENT_DIR / "00000002.history").touch()
    assert restore("00000002.history") == 1 and len(called()) == 4
    assert restore("00000003.history") == 7 and len(called()) == 5  # no marker: the store answers


def history(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def test_prefetcher_window_timelines_cap_and_gaps(tmp_path: Path) -> None:
    store, spool = tmp_path / "store", tmp_path / "spool"
    wal = store / "wal"
    wal.mkdir(parents=True)
    for segno in range(1, 6):  # timeline 1 up to the switch in segment 5
        segment_file(wal, SegmentName(1, segno).name(SEG), fill=b"1")
    for segno in range(5, 13):  # timeline 2 from segment 5 (the switch point 0/500100 is inside it)
        segment_file(wal, SegmentName(2, segno).name(SEG), fill=b"2")
    (wal / "00000002.history").write_bytes(history("1\t0/500100\tno recovery target specified"))

    pre = Prefetcher(str(store), spool, timeline=1, segment_size=SEG, depth=3, list_interval=0)
    pre.start()
    pre.stop()  # prepared the spool; poll() below runs the rounds inline, deterministically
    pre.advance(0x200028)
    pre.poll()
    names = sorted(p.name for p in spool.iterdir() if not p.name.startswith("."))
    assert names == [SegmentName(1, s).name(SEG) for s in (2, 3, 4)]  # segment 2..4 only exist on tli 1
    stats = pre.stats()
    assert (stats.segments_fetched, stats.bytes_fetched, stats.spool_files) == (3, 3 * SEG, 3)
    assert stats.timeline == 2 and stats.pending == 10 and stats.archive_end_lsn == 13 * SEG
    # The server takes segment 2 (mv), replay moves into segment 5: timeline 2's copy of the switch
    # segment is the one PostgreSQL reads; replayed and consumed files leave the spool.
    (spool / SegmentName(1, 2).name(SEG)).rename(tmp_path / "taken")
    pre.advance(5 * SEG + 0x200)
    pre.poll()
    names = sorted(p.name for p in spool.iterdir() if not p.name.startswith("."))
    assert names == [SegmentName(2, s).name(SEG) for s in (5, 6, 7)]
    assert (spool / SegmentName(2, 6).name(SEG)).read_bytes()[:1] == b"2"  # not timeline 3's
    assert pre.stats().timeline == 2
    # Timeline 3 appears, forking off timeline 2 before the replay position: PostgreSQL refuses to
    # follow it, and so does the prefetcher.
    (wal / "00000003.history").write_bytes(history("1\t0/500100\tx", "2\t0/600000\tx"))
    segment_file(wal, SegmentName(3, 8).name(SEG), fill=b"3")
    # A hole in the archive: segment 9 missing while 10.. exist. The window stops at the hole.
    (wal / SegmentName(2, 9).name(SEG)).unlink()
    pre.advance(8 * SEG + 16)
    pre.poll()
    stats = pre.stats()
    assert stats.missing_next == SegmentName(2, 9).name(SEG) and stats.gap
    assert sorted(p.name for p in spool.iterdir() if not p.name.startswith(".")) == [
        SegmentName(2, 8).name(SEG)
    ]
    assert stats.timeline == 2 and (spool / SegmentName(2, 8).name(SEG)).read_bytes()[:1] == b"2"
    markers = {p.name for p in (spool / ABSENT_DIR).iterdir()}
    assert SegmentName(2, 9).name(SEG) in markers and "00000004.history" in markers
    # With max_bytes the cap is in bytes.
    assert Prefetcher(str(store), spool, 1, SEG, depth=8, max_bytes=2 * SEG).depth == 2


# -- the target folder, no server ---------------------------------------------------------------------


@needs_pg
def test_target_folder_refuses_foreign_folders_and_busy_ports(workdir: Path) -> None:
    foreign = workdir / "foreign"
    foreign.mkdir()
    (foreign / "something.txt").write_text("not Ferry's")
    with pytest.raises(TargetError, match="not empty and is not a Ferry target"):
        PostgresTarget.create(foreign, free_port(), source="/s", system_identifier=1, base_backup="b")
    assert sorted(p.name for p in foreign.iterdir()) == ["something.txt"]

    port = free_port()
    ours = PostgresTarget.create(workdir / "t", port, source="/s", system_identifier=1, base_backup="b")
    assert ours.phase() is Phase.NEW and ours.record.port == port
    # The same source again: a resume of the same folder.
    again = PostgresTarget.create(workdir / "t", port, source="/s", system_identifier=1, base_backup="b")
    assert again.record == ours.record
    # Another source (or another system) in the same folder: refused.
    with pytest.raises(TargetError, match="belongs to another migration"):
        PostgresTarget.create(workdir / "t", port, source="/other", system_identifier=1, base_backup="b")
    with pytest.raises(TargetError, match="belongs to another migration"):
        PostgresTarget.create(workdir / "t", port, source="/s", system_identifier=2, base_backup="b")

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        with pytest.raises(TargetError, match=f"port {port} .* in use"):
            PostgresTarget.create(workdir / "t2", port, source="/s", system_identifier=1, base_backup="b")
        assert not (workdir / "t2").exists()
        # A resume too: the folder's own port, taken by another program, is never shared.
        with pytest.raises(TargetError, match=f"port {port} .* in use by another program"):
            PostgresTarget.create(workdir / "t", port, source="/s", system_identifier=1, base_backup="b")


def make_tar(
    entries: list[tuple[tarfile.TarInfo, bytes | None]],
    compress: bool = False,
    fmt: int = tarfile.USTAR_FORMAT,
) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue()
    return gzip.compress(raw) if compress else raw


def entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = 0o600
    return info


HOSTILE = [
    ("absolute", entry("/tmp/ferry-escaped"), b"x", "an absolute path"),
    ("dotdot", entry("base/../../ferry-escaped"), b"x", "'..'"),
    ("symlink-out", entry("pg_tblspc/1", tarfile.SYMTYPE, "/etc"), None, "outside the data directory"),
    ("symlink-up", entry("escape", tarfile.SYMTYPE, "base/../.."), None, "climbs"),
    ("device", entry("dev", tarfile.CHRTYPE), None, "a character device"),
    ("fifo", entry("fifo", tarfile.FIFOTYPE), None, "a FIFO"),
    ("hardlink", entry("hard", tarfile.LNKTYPE, "/etc/passwd"), None, "a hard link"),
]


@needs_pg
@pytest.mark.parametrize("compress", [False, True], ids=["tar", "tar.gz"])
@pytest.mark.parametrize(("case", "bad", "data", "reason"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_tar_entries_are_refused(
    workdir: Path, compress: bool, case: str, bad: tarfile.TarInfo, data: bytes | None, reason: str
) -> None:
    good = [(entry("PG_VERSION"), b"15\n"), (entry("global", tarfile.DIRTYPE), None)]
    archive = workdir / ("base.tar.gz" if compress else "base.tar")
    archive.write_bytes(make_tar([*good, (bad, data)], compress))
    target = PostgresTarget.create(
        workdir / "t", free_port(), source="/s", system_identifier=1, base_backup="b"
    )
    with pytest.raises(ArchiveEntryError) as refused:
        target.restore_base([archive], verify="none")
    assert refused.value.entry == bad.name and reason in str(refused.value)
    assert f"'{bad.name}'" in str(refused.value) and "base.tar" in str(refused.value)
    assert target.phase() is Phase.INTERRUPTED and not target.data.exists()
    assert not Path("/tmp/ferry-escaped").exists() and not (workdir / "ferry-escaped").exists()


@needs_pg
def test_a_link_cannot_be_used_as_a_folder(workdir: Path) -> None:
    """An allowed in-tree link must not become the parent of later entries (the classic two-step escape)."""
    archive = workdir / "base.tar"
    archive.write_bytes(
        make_tar(
            [
                (entry("PG_VERSION"), b"15\n"),
                (entry("sub", tarfile.SYMTYPE, "x"), None),
                (entry("sub/file"), b"y"),
            ]
        )
    )
    target = PostgresTarget.create(
        workdir / "t", free_port(), source="/s", system_identifier=1, base_backup="b"
    )
    with pytest.raises(ArchiveEntryError, match="is a link or a file"):
        target.restore_base([archive], verify="none")


@needs_pg
@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=["gnu", "pax"])
@pytest.mark.parametrize("compression", ["none", "gzip", "lz4", "zstd"])
def test_unpack_matches_python_tarfile(workdir: Path, fmt: int, compression: str) -> None:
    import lz4.frame  # type: ignore[import-untyped]
    import zstandard

    rnd = os.urandom(5 * 1024 * 1024 + 77)  # spans several 4 MiB chunks, not block-aligned
    deep = "base/" + "/".join(["d" * 60] * 3) + "/long-name-" + "n" * 120  # > 100 bytes: long-name headers
    entries = [
        (entry("PG_VERSION"), b"15\n"),
        (entry("./global/pg_control"), rnd[:8192]),
        (entry("empty"), b""),
        (entry(deep), rnd),
        (entry("pg_wal", tarfile.DIRTYPE), None),
        (entry("link", tarfile.SYMTYPE, "global/pg_control"), None),
    ]
    raw = make_tar(entries, fmt=fmt)
    packed = {
        "none": lambda b: b,
        "gzip": gzip.compress,
        "lz4": lz4.frame.compress,
        "zstd": zstandard.ZstdCompressor().compress,
    }[compression](raw)
    archive = workdir / "base.tar"
    archive.write_bytes(packed)
    target = PostgresTarget.create(
        workdir / "t", free_port(), source="/s", system_identifier=1, base_backup="b"
    )
    seen: list[ExtractProgress] = []
    result = target.restore_base([archive], verify="none", progress=seen.append)
    assert result.files == 4 and result.data_bytes == 3 + 8192 + len(rnd)
    assert (target.data / deep).read_bytes() == rnd and (target.data / "empty").read_bytes() == b""
    assert os.readlink(target.data / "link") == "global/pg_control"
    assert seen and seen[-1].archive_bytes_done == seen[-1].archive_bytes_total == len(packed)
    assert [p.data_bytes for p in seen] == sorted(p.data_bytes for p in seen)
    if USER is not None:
        st = (target.data / deep).stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (USER.uid, USER.gid, 0o600)
    assert (target.data.stat().st_mode & 0o777) == 0o700 and not target.partial.exists()


@needs_pg
def test_truncated_archives_are_refused(workdir: Path) -> None:
    raw = make_tar([(entry("PG_VERSION"), b"15\n"), (entry("big"), os.urandom(100_000))])
    for name, data in (("base.tar", raw[:50_000]), ("base.tar.gz", gzip.compress(raw)[:30_000])):
        archive = workdir / name
        archive.write_bytes(data)
        root = workdir / f"t-{name}"
        target = PostgresTarget.create(root, free_port(), source="/s", system_identifier=1, base_backup="b")
        with pytest.raises(ArchiveEntryError, match="truncated"):
            target.restore_base([archive], verify="none")
        archive.unlink()


# -- real servers -------------------------------------------------------------------------------------


@needs_pg
@pytest.mark.parametrize("compression", ["gzip", "lz4", "zstd", "none"])
def test_online_migration_catches_up_promotes_and_takes_writes(
    source: Source, workdir: Path, compression: str
) -> None:
    target, backup = new_target(source, workdir / "target", compression)
    seen: list[ExtractProgress] = []
    restored = target.restore_base(
        archives_of(backup), backup / "backup_manifest", verify="sizes", progress=seen.append
    )
    assert restored.files > 900 and not restored.skipped
    assert seen[-1].archive_bytes_done == seen[-1].archive_bytes_total
    assert target.phase() is Phase.RESTORED
    log = owned_folder(workdir / "logs") / "fetch.log"
    command = restore_command(str(source.store), target.spool, fetch_command=source.fetch_command(log))
    target.configure(online=True, restore_command=command)
    assert target.phase() is Phase.RECOVERY

    # WAL written after the backup, archived before the target starts: the prefetcher has it ready.
    source.write(3000)
    early_name, _ = source.switch()
    prefetcher = Prefetcher(
        str(source.store),
        target.spool,
        timeline=1,
        segment_size=SEG,
        depth=6,
        owner=target.user,
        poll_interval=0.1,
        list_interval=0.5,
    )
    with prefetcher:
        prefetcher.advance(backup_start(target))
        wait_for(
            lambda: prefetcher.stats().spool_files >= 3,
            20,
            lambda: f"the spool to fill: {prefetcher.stats()}",
        )
        status = target.start(wait=60)
        assert status.accepting_connections and status.in_recovery and status.phase is Phase.RECOVERY
        with target.connect() as conn:
            (shown,) = conn.execute("SHOW restore_command").fetchone()
        assert shown == command  # the conf file quoting round-trips

        # The source keeps working; the standby follows.
        for _ in range(2):
            source.write(1500)
            _, lsn = source.switch()
        status = catch_up(target, lsn, prefetcher)
        assert status.in_recovery and target_count(target) == source.count()
        assert status.lag_bytes(prefetcher.stats().archive_end_lsn) is not None
        assert status.last_replay_time is not None and status.lag_seconds() is not None
        stats = prefetcher.stats()
        assert stats.segments_fetched >= 3 and stats.errors == 0, stats

    # Segments served from the spool never started Ferry (the fetch log has only the rest).
    fetched_by_ferry = (
        {line.split()[0] for line in log.read_text().splitlines() if line.endswith(" 1")}
        if log.exists()
        else set()
    )
    assert early_name not in fetched_by_ferry

    promoted = target.promote(wait_seconds=60)
    assert promoted.in_recovery is False and promoted.phase is Phase.PROMOTED and promoted.timeline == 2
    check = target.verify_writable()
    assert check.xid > 0 and check.lsn > 0
    with target.connect() as conn:
        conn.execute("INSERT INTO t VALUES (-1, 'written on the target')")
    assert target_count(target) == source.count() + 1
    target.stop()
    assert target.status().running is False and target.phase() is Phase.PROMOTED


@needs_pg
def test_standby_killed_mid_replay_resumes_from_its_own_position(source: Source, workdir: Path) -> None:
    target, backup = new_target(source, workdir / "target", "zstd")
    target.restore_base(archives_of(backup), backup / "backup_manifest")
    # No prefetcher: every segment through wal_fetch from the store.
    target.configure(
        online=True,
        restore_command=restore_command(
            str(source.store), target.spool, fetch_command=source.fetch_command()
        ),
    )
    target.start(wait=60)
    source.write(3000)
    source.sql("CHECKPOINT")  # a standby can only make a restartpoint at a replayed checkpoint record
    _, lsn = source.switch()
    catch_up(target, lsn)
    with target.connect() as conn:
        conn.execute("CHECKPOINT")  # the restartpoint: where a restart replays from
    redo = target.status().checkpoint_redo_lsn
    assert redo is not None and redo > backup_start(target)

    for _ in range(4):  # several segments, then kill while they replay
        source.write(1500)
        source.sql("SELECT pg_switch_wal()")
    _, final = source.switch()
    kill_server(target)
    down = target.status()
    assert not down.running and down.phase is Phase.RECOVERY
    assert down.checkpoint_redo_lsn is not None and down.checkpoint_redo_lsn >= redo

    target.start(wait=60)
    log = target.logfile.read_text()
    starts = re.findall(r"redo starts at (\S+)", log)
    assert len(starts) >= 2 and parse_lsn(starts[-1]) >= redo, starts  # from its restartpoint, not the backup
    status = catch_up(target, final)
    assert status.in_recovery and target_count(target) == source.count()


@needs_pg
def test_missing_segment_stops_replay_at_the_gap(source: Source, workdir: Path) -> None:
    """Replay stops before a hole in the archive and waits there; nothing is skipped or damaged, and it
    continues once the segment arrives."""
    target, backup = new_target(source, workdir / "target", "gzip")
    target.restore_base(archives_of(backup), backup / "backup_manifest")
    mirror = owned_folder(workdir / "mirror")
    owned_folder(mirror / "wal")

    def sync_mirror(skip: str | None) -> None:
        for path in (source.store / "wal").iterdir():
            if path.name != skip and not (mirror / "wal" / path.name).exists():
                copy_owned(path, mirror / "wal" / path.name)

    sync_mirror(None)
    target.configure(
        online=True,
        restore_command=restore_command(str(mirror), target.spool, fetch_command=source.fetch_command()),
    )
    target.start(wait=60)
    source.write(1500)
    _, before_gap = source.switch()
    count_before_gap = source.count()
    source.write(1500)
    gap, _ = source.switch()
    source.write(1500)
    _, after_gap = source.switch()
    sync_mirror(skip=gap)
    assert not (mirror / "wal" / gap).exists()

    catch_up(target, before_gap)
    with Prefetcher(str(mirror), target.spool, 1, SEG, poll_interval=0.1, list_interval=0.2) as prefetcher:
        time.sleep(1.5)  # replay has everything up to the gap: it must stay there
        status = target.status()
        prefetcher.advance(status.replay_lsn or 0)
        stats = wait_for(
            lambda: (s := prefetcher.stats()).missing_next and s.gap and s,
            10,
            lambda: str(prefetcher.stats()),
        )
    assert status.running and status.in_recovery
    gap_segment = parse_segment_name(gap, SEG)
    assert gap_segment is not None and status.replay_lsn is not None
    assert status.replay_lsn < gap_segment.start_lsn(SEG)
    assert status.next_segment() == gap and stats.missing_next == gap and stats.gap
    assert target_count(target) == count_before_gap  # consistent, read-only, at the gap

    copy_owned(source.store / "wal" / gap, mirror / "wal" / gap)
    status = catch_up(target, after_gap)
    assert target_count(target) == source.count()


@needs_pg
def test_offline_recovery_stops_at_the_target_and_promotes(source: Source, workdir: Path) -> None:
    target, backup = new_target(source, workdir / "target", "lz4")
    target.restore_base(archives_of(backup), backup / "backup_manifest", verify="checksums")
    source.write(1500)
    (stop_at,) = source.sql("SELECT pg_current_wal_lsn()::text")[0]
    expected = source.count()
    source.switch()
    target.configure(
        online=False,
        restore_command=restore_command(
            str(source.store), target.spool, fetch_command=source.fetch_command()
        ),
        recovery_target_lsn=stop_at,
    )
    assert (target.data / "recovery.signal").exists() and not (target.data / "standby.signal").exists()
    target.start(wait=60)
    status = wait_for(
        lambda: (s := target.status()).in_recovery is False and s,
        60,
        lambda: f"promotion at the recovery target: {target.cluster.log_tail()}",
    )
    assert status.phase is Phase.PROMOTED
    assert target_count(target) == expected
    target.verify_writable()


@needs_pg
def test_base_restore_killed_then_resumed(source: Source, workdir: Path) -> None:
    target, backup = new_target(source, workdir / "target", "gzip", wal="stream")
    assert (backup / "pg_wal.tar.gz").exists()
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(SRC)!r})
from pathlib import Path
from ferry.engines.postgres.target import PostgresTarget

def progress(p):
    if p.data_bytes > 4 * 1024 * 1024:
        os.kill(os.getpid(), signal.SIGKILL)

t = PostgresTarget.open(Path({str(target.root)!r}))
t.restore_base(sorted(Path({str(backup)!r}).glob("*.tar*")), Path({str(backup / "backup_manifest")!r}),
               progress=progress)
"""
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert target.phase() is Phase.INTERRUPTED and target.partial.exists() and not target.data.exists()

    resumed = PostgresTarget.create(
        target.root,
        target.record.port,
        source=str(source.store),
        system_identifier=source.system_identifier,
        base_backup=backup.name,
    )
    result = resumed.restore_base(archives_of(backup), backup / "backup_manifest", verify="checksums")
    assert result.verified == "checksums" and not result.skipped
    assert resumed.phase() is Phase.RESTORED and not resumed.partial.exists()
    assert [p.name for p in (resumed.data / "pg_wal").iterdir() if len(p.name) == 24]  # from pg_wal.tar.gz
    assert resumed.restore_base(archives_of(backup), backup / "backup_manifest").skipped


@needs_pg
def test_manifest_catches_a_damaged_backup(source: Source, workdir: Path) -> None:
    backup = source.basebackup("none")
    damaged = owned_folder(workdir / "damaged")
    base = (backup / "base.tar").read_bytes()
    # Drop the last file: rewrite the archive without it (sizes still self-consistent for tar).
    with tarfile.open(fileobj=io.BytesIO(base)) as src_tar, tarfile.open(damaged / "base.tar", "w") as out:
        members = src_tar.getmembers()
        victim = next(m for m in reversed(members) if m.isfile() and m.name.startswith("base/"))
        for m in members:
            if m is not victim:
                out.addfile(m, src_tar.extractfile(m) if m.isfile() else None)
    target = PostgresTarget.create(
        workdir / "t",
        free_port(),
        source=str(source.store),
        system_identifier=source.system_identifier,
        base_backup="damaged",
    )
    with pytest.raises(ManifestMismatch, match=re.escape(victim.name)):
        target.restore_base([damaged / "base.tar"], backup / "backup_manifest")
    assert target.phase() is Phase.INTERRUPTED
    bad_manifest = (backup / "backup_manifest").read_bytes().replace(b'"Size": 8192', b'"Size": 8193', 1)
    with pytest.raises(ManifestMismatch, match="checksum"):
        target.restore_base(archives_of(backup), bad_manifest)
