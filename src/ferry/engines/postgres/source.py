"""The source side of a PostgreSQL migration, as Ferry's docs tell users to set it up: WAL archived with
`ferry wal-push` into a store folder, base backups taken with `pg_basebackup -Ft` into the same folder.
Used by `ferry demo`, the benchmarks and the tests to build real sources."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from ferry.engines.postgres.archive import ferry_command
from ferry.engines.postgres.cluster import Cluster, ClusterError, chown_tree, run

ARCHIVE_SETTINGS = {
    "wal_level": "'replica'",
    "archive_mode": "'on'",
    # A segment that fills slowly is still archived within this time, so the target lags by at most it.
    "archive_timeout": "'60s'",
}


def archive_command(store: Path) -> str:
    """archive_command for postgresql.conf (single quotes doubled for the conf file's string syntax)."""
    cmd = " ".join(shlex.quote(p) for p in [*ferry_command(), "wal-push"]) + " %p " + shlex.quote(str(store))
    return "'" + cmd.replace("'", "''") + "'"


def configure_archiving(cluster: Cluster, store: Path, extra: dict[str, str] | None = None) -> None:
    """Append archive settings to the cluster's postgresql.conf; the store folder is made writable by the
    server's OS user."""
    store.mkdir(parents=True, exist_ok=True)
    chown_tree(store, cluster.user)
    settings = {**ARCHIVE_SETTINGS, "archive_command": archive_command(store), **(extra or {})}
    with (cluster.datadir / "postgresql.conf").open("a") as conf:
        conf.write("\n# Ferry: WAL archiving into the backup store\n")
        for key, value in settings.items():
            conf.write(f"{key} = {value}\n")


def check_ferry_runs_as_server_user(cluster: Cluster) -> None:
    """PostgreSQL runs archive_command as its own OS user: that user must be able to start Ferry."""
    done = run([*ferry_command(), "version"], cluster.user, check=False, timeout=60)
    if done.returncode != 0:
        who = cluster.user.name if cluster.user else "the server's user"
        raise ClusterError(
            f"OS user '{who}' cannot run Ferry ({' '.join(ferry_command())}): "
            f"{(done.stderr or done.stdout).strip()[-200:]}",
            "put Ferry's checkout (and its .venv) in a folder every user may read, e.g. /opt or /srv, "
            "not under /root",
        )


def base_backup(cluster: Cluster, dest: Path, compress: str | None = "lz4", label: str = "ferry") -> Path:
    """`pg_basebackup -Ft` into `dest` (a new folder), WAL taken from the archive (-X none), with a
    manifest. `compress` is gzip, lz4, zstd or None."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        raise ClusterError(f"base backup folder '{dest}' already exists", "choose a new folder")
    dest.mkdir(mode=0o755)
    chown_tree(dest, cluster.user)
    cmd = [cluster.binaries.tool("pg_basebackup"), "-h", str(cluster.socket_dir), "-p", str(cluster.port),
           "-U", "postgres", "-D", str(dest), "-Ft", "-X", "none", "-c", "fast", "-l", label,
           "--no-sync"]  # fmt: skip
    if compress:
        cmd += ["-Z", f"client-{compress}" if compress != "gzip" else "gzip"]
    run(cmd, cluster.user, timeout=3600)
    return dest


def switch_wal(cluster: Cluster) -> str:
    """Close the current WAL segment so it is archived now; returns the switch LSN (X/Y)."""
    return str(cluster.query("SELECT pg_switch_wal()")[0][0])


def wait_archived(cluster: Cluster, timeout: float = 60) -> None:
    """Until the archiver has archived every completed segment (last_archived_wal catches up)."""
    deadline = time.monotonic() + timeout
    failed = None
    while time.monotonic() < deadline:
        rows = cluster.query(
            "SELECT last_archived_wal, last_failed_wal, "
            "pg_walfile_name(pg_current_wal_lsn()) FROM pg_stat_archiver"
        )
        archived, failed, current = rows[0]
        if archived is not None and archived >= _previous_segment(str(current)):
            return
        time.sleep(0.05)
    raise ClusterError(
        f"WAL archiving of the server on port {cluster.port} is behind or failing (last failed: {failed})",
        f"read the server log {cluster.logfile} for the archive_command's errors",
    )


def _previous_segment(name: str) -> str:
    """The segment before `name` (the last one that can be complete)."""
    from ferry.engines.postgres.wal import SegmentName, parse_segment_name

    seg = parse_segment_name(name)
    if seg is None or seg.segno == 0:
        return name
    return SegmentName(seg.timeline, seg.segno - 1).name()


def run_pgbench_init(cluster: Cluster, scale: int, dbname: str = "postgres") -> None:
    """pgbench's tables at `scale` (about 15 MB of data per unit), with primary keys."""
    run([cluster.binaries.tool("pgbench"), "-i", "-s", str(scale), "-q", "-h", str(cluster.socket_dir),
         "-p", str(cluster.port), "-U", "postgres", dbname], cluster.user, timeout=3600)  # fmt: skip
