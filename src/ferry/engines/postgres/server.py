"""The PostgreSQL server of a target folder: finding its binaries, starting and stopping it, connecting over
its private socket, promoting it, and where it stands (`status()`).

Positions come from the running server (pg_last_wal_replay_lsn and friends, on one kept connection, so that
polling many times a second does not fork a backend per poll) and from pg_control (pg_controldata) before
the server takes connections or when it is not running.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ferry.engines.postgres.cluster import Binaries, Cluster, ClusterError, find_binaries, port_in_use, run
from ferry.engines.postgres.targetdir import Phase, TargetError, TargetFolder, TargetRecord
from ferry.engines.postgres.wal import SegmentName, parse_lsn


@dataclass(frozen=True)
class TargetStatus:
    phase: Phase
    running: bool
    accepting_connections: bool
    in_recovery: bool | None
    replay_lsn: int | None
    last_replay_time: datetime | None
    timeline: int | None
    """In recovery: the timeline of the latest restartpoint (PostgreSQL 15 shows no replay timeline)."""
    replay_paused: bool | None
    current_lsn: int | None
    """Promoted: the WAL insert position."""
    control_state: str | None
    min_recovery_lsn: int | None
    """pg_control's minimum recovery point: progress before the server accepts connections."""
    checkpoint_redo_lsn: int | None
    """Where a restart replays from (the latest checkpoint or restartpoint)."""
    segment_size: int | None

    @property
    def position(self) -> int | None:
        """The best known replay position: the server's, else pg_control's."""
        if self.replay_lsn is not None:
            return self.replay_lsn
        if self.current_lsn is not None:
            return self.current_lsn
        return self.min_recovery_lsn or self.checkpoint_redo_lsn

    def next_segment(self) -> str | None:
        """The WAL segment replay needs after everything replayed so far (what it waits for when idle)."""
        pos = self.position
        if pos is None or not self.segment_size or self.in_recovery is False:
            return None
        segno = (pos - 1) // self.segment_size + 1 if pos else 0
        return SegmentName(self.timeline or 1, segno).name(self.segment_size)

    def lag_bytes(self, archive_end_lsn: int | None) -> int | None:
        """Bytes of archived WAL not replayed yet, given the end of the archive's newest segment."""
        pos = self.position
        if archive_end_lsn is None or pos is None:
            return None
        return max(0, archive_end_lsn - pos)

    def lag_seconds(self, source_time: datetime | None = None) -> float | None:
        """Seconds between the last replayed commit and `source_time` (the source's last commit; now if
        not given, which counts idle time on the source as lag)."""
        if self.last_replay_time is None:
            return None
        ref = source_time or datetime.now(UTC)
        return max(0.0, (ref - self.last_replay_time).total_seconds())


@dataclass(frozen=True)
class WriteCheck:
    xid: int
    lsn: int


class TargetServer(TargetFolder):
    """A target folder and the PostgreSQL server that runs in it, as the folder's OS user."""

    def __init__(self, root: Path, record: TargetRecord, binaries: Binaries | None = None) -> None:
        super().__init__(root, record)
        self._binaries = binaries
        self._cluster: Cluster | None = None
        # status(): one connection kept open for the polls (a new connection per poll forks a backend on
        # the server each time), and the WAL segment size, read once from pg_control.
        self._probe: Any = None
        self._probe_lock = threading.Lock()
        self._segment_size: int | None = None

    @property
    def binaries(self) -> Binaries:
        if self._binaries is None:
            version = self.data / "PG_VERSION"
            major = int(version.read_text().split(".")[0]) if version.exists() else None
            self._binaries = find_binaries(major)
        return self._binaries

    @property
    def cluster(self) -> Cluster:
        if self._cluster is None:
            binaries = self._binaries or find_binaries(None)
            cluster = Cluster(self.data, self.record.port, binaries, self.user)
            cluster.socket_dir = self.socket_dir
            cluster.logfile = self.logfile
            self._cluster = cluster
        if self._binaries is None and (self.data / "PG_VERSION").exists():
            self._cluster.binaries = self.binaries
        return self._cluster

    def control_data(self, datadir: Path | None = None) -> dict[str, str]:
        done = run([self.binaries.tool("pg_controldata"), str(datadir or self.data)], self.user, timeout=30)
        out: dict[str, str] = {}
        for line in done.stdout.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                out[key.strip()] = value.strip()
        return out

    def start(self, wait: float = 60) -> TargetStatus:
        """Start the server (no-op if it runs) and wait up to `wait` s for it to accept connections. A
        standby accepts them once consistent, which may take longer: then this returns a status with
        accepting_connections False and the server keeps recovering. Raises if the server exits."""
        if self.phase() in (Phase.NEW, Phase.INTERRUPTED):
            raise TargetError(f"target '{self.root}' has no data directory yet", "run restore_base first")
        cluster = self.cluster
        deadline = time.monotonic() + wait
        if not cluster.is_running():
            self.check_port()
            self._prepare_folders()
            run([self.binaries.tool("pg_ctl"), "-D", str(self.data), "-l", str(self.logfile), "-w", "-t",
                 str(max(1, int(wait))), "start"], self.user, timeout=wait + 30, check=False)  # fmt: skip
        while True:
            if cluster.accepts_connections():
                break
            if not cluster.is_running():
                raise ClusterError(
                    f"PostgreSQL of target '{self.root}' stopped: {cluster.log_tail()}",
                    f"read the server log {self.logfile}",
                )
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        return self.status()

    def check_port(self) -> None:
        """The record's port must be free while this target's server is stopped: Ferry never shares one."""
        if not self.cluster.is_running() and port_in_use(self.record.port):
            raise TargetError(
                f"port {self.record.port} on 127.0.0.1 is in use by another program; target '{self.root}' "
                "needs it",
                "stop that program or move it to another port; Ferry never shares a port",
            )

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        self.close()
        self.cluster.stop(mode, timeout)
        if self.cluster.is_running():
            raise ClusterError(
                f"PostgreSQL of target '{self.root}' did not stop within {timeout:.0f} s",
                "try again, or stop it with pg_ctl -m immediate",
            )

    def connect(self, dbname: str | None = None) -> Any:
        """A psycopg connection as the record's superuser over the private socket. Without a name, to
        `postgres`, else `template1` (a source may have dropped `postgres`)."""
        import psycopg

        last: Exception | None = None
        for db in [dbname] if dbname else ["postgres", "template1"]:
            try:
                return psycopg.connect(host=str(self.socket_dir), port=self.record.port,
                                       user=self.record.superuser, dbname=db, autocommit=True,
                                       connect_timeout=10)  # fmt: skip
            except psycopg.OperationalError as exc:
                last = exc
                if "does not exist" not in str(exc):
                    break
        raise ClusterError(
            f"cannot connect to the target server of '{self.root}' on port {self.record.port}: "
            f"{str(last).strip()}",
            f"check that it runs and accepts connections (log: {self.logfile})",
        )

    def status(self, pg_control: bool = True) -> TargetStatus:
        """Where the target is. With `pg_control` False, cheap enough to poll many times a second: a query on
        a kept connection while the server takes connections, and pg_controldata (a process) only before
        that, when pg_control is all there is (control_state and the pg_control positions are then None)."""
        phase = self.phase()
        running = self.cluster.is_running() if self.data.exists() else False
        row = self._status_row() if running else None
        if running and row is None and self.cluster.accepts_connections():
            # The server takes connections but not Ferry's: an error to report, unless it was only between
            # states (starting, stopping, promoting) and a new connection works.
            with self.connect() as conn:
                row = conn.execute(_STATUS_SQL).fetchone()
        accepting = row is not None
        control: dict[str, str] = {}
        if self.data.exists() and (pg_control or not accepting or self._segment_size is None):
            with contextlib.suppress(ClusterError):
                control = self.control_data()
        seg = control.get("Bytes per WAL segment", "")
        if seg.isdigit():
            self._segment_size = int(seg)
        in_recovery, replay, replay_time, tli, paused, current = row or (None,) * 6
        if tli is None and control.get("Latest checkpoint's TimeLineID", "").isdigit():
            tli = int(control["Latest checkpoint's TimeLineID"])
        return TargetStatus(
            phase=phase,
            running=running,
            accepting_connections=accepting,
            in_recovery=in_recovery if accepting else (phase is Phase.RECOVERY if running else None),
            replay_lsn=parse_lsn(replay) if replay else None,
            last_replay_time=replay_time,
            timeline=tli,
            replay_paused=paused,
            current_lsn=parse_lsn(current) if current else None,
            control_state=control.get("Database cluster state"),
            min_recovery_lsn=_lsn_or_none(control.get("Minimum recovery ending location")),
            checkpoint_redo_lsn=_lsn_or_none(control.get("Latest checkpoint's REDO location")),
            segment_size=self._segment_size,
        )

    def _status_row(self) -> tuple[Any, ...] | None:
        """The status query on the kept connection (made again when the server restarted); None when the
        server does not take connections (yet)."""
        row = self._on_probe(_STATUS_SQL)
        return tuple(row) if row is not None else None

    def wake_recovery(self) -> bool:
        """Make a standby that waits for WAL look again now rather than after wal_retrieve_retry_interval:
        a configuration reload (SIGHUP) sets the startup process's wakeup latch. False if the server does
        not take connections."""
        return self._on_probe("SELECT pg_reload_conf()") is not None

    def _on_probe(self, sql: str) -> Any:
        """One row of `sql` on the kept connection (made again after a restart); None when the server does
        not take connections (yet)."""
        import psycopg

        with self._probe_lock:
            try:
                if self._probe is None or self._probe.closed:
                    self._probe = self.connect()
                return self._probe.execute(sql).fetchone()
            except (ClusterError, psycopg.Error):
                self.close()
                return None

    def close(self) -> None:
        """Close the kept status connection (status() opens it again when needed)."""
        probe, self._probe = self._probe, None
        if probe is not None:
            with contextlib.suppress(Exception):
                probe.close()

    def promote(self, wait_seconds: int = 60) -> TargetStatus:
        """End recovery and open for writes; a no-op if already promoted."""
        with self.connect() as conn:
            (in_recovery,) = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            if in_recovery:
                (done,) = conn.execute("SELECT pg_promote(true, %s)", (int(wait_seconds),)).fetchone()
                if not done:
                    raise ClusterError(
                        f"target '{self.root}' was not promoted within {wait_seconds} s",
                        f"read the server log {self.logfile}; promotion may still complete",
                    )
        self._set_state("promoted")
        return self.status()

    def verify_writable(self) -> WriteCheck:
        """Prove the server takes writes: out of recovery, and a transaction that is assigned an xid
        commits (which writes and flushes a commit record)."""
        with self.connect() as conn:
            (in_recovery,) = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            if in_recovery:
                raise ClusterError(
                    f"target '{self.root}' is still in recovery (read-only)", "promote it first"
                )
            (xid,) = conn.execute("SELECT txid_current()").fetchone()
            (lsn,) = conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
        return WriteCheck(int(xid), parse_lsn(lsn))


_STATUS_SQL = """
SELECT pg_is_in_recovery(),
       pg_last_wal_replay_lsn()::text,
       pg_last_xact_replay_timestamp(),
       CASE WHEN pg_is_in_recovery() THEN (SELECT timeline_id FROM pg_control_checkpoint())
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END,
       CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() <> 'not paused' END,
       CASE WHEN NOT pg_is_in_recovery() THEN pg_current_wal_lsn()::text END
"""


def _lsn_or_none(text: str | None) -> int | None:
    if not text:
        return None
    try:
        value = parse_lsn(text)
    except ValueError:
        return None
    return value or None
