"""A PostgreSQL server Ferry restores onto: one folder Ferry owns on the target host.

```
ROOT/ferry-target.json   what this folder is for: source store, system identifier, base backup, port, OS user
ROOT/data/               PGDATA (0700, owned by the server's OS user); appears only once complete
ROOT/data.partial/       PGDATA while the base backup is unpacked; removed and redone after an interruption
ROOT/tablespaces/<oid>/  tablespaces of the base backup (tablespace_map points here)
ROOT/spool/              WAL the prefetcher fetched ahead of replay (archive.Prefetcher)
ROOT/run/                the server's Unix socket (0700: only the OS user and root can connect)
ROOT/conf/pg_hba.conf    Ferry's access rule while it owns the server: trust on that socket only
ROOT/log/postgresql.log  the server log
```

The JSON file only says what the folder belongs to. Where a migration stands is read from the folder and
the server: `phase()` from the files (data or data.partial, signal files, backup_label), positions from the
running server (pg_last_wal_replay_lsn) and from pg_control (pg_controldata) when it is not running.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import json
import os
import queue
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from ferry.core.errors import FerryError, UsageError
from ferry.engines.postgres import compression as compressed
from ferry.engines.postgres.archive import conf_quote, fsync_dir
from ferry.engines.postgres.cluster import (
    Binaries,
    Cluster,
    ClusterError,
    OsUser,
    find_binaries,
    port_in_use,
    run,
)
from ferry.engines.postgres.compression import Compression
from ferry.engines.postgres.wal import SegmentName, parse_lsn
from ferry.stores.base import RangeReader

TARGET_FILE = "ferry-target.json"
RECORD_FORMAT = 1
CHUNK = 4 * 1024 * 1024
PROGRESS_EVERY = 1024 * 1024
BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
_ARCHIVE_NAME = re.compile(r"^(base|pg_wal|\d+)\.tar(\.gz|\.lz4|\.zst)?$")
_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes with the terminating NUL
RETRY_INTERVAL = "1s"  # wal_retrieve_retry_interval of a target in recovery

Verify = Literal["none", "sizes", "checksums"]
TarInput = Path | str | RangeReader


class TargetError(FerryError):
    """The target folder cannot be used as asked: not ours, another migration's, or in the wrong state."""

    retryable = False


class ArchiveEntryError(FerryError):
    """A base backup archive holds an entry Ferry refuses to unpack, or is damaged."""

    retryable = False

    def __init__(self, archive: str, entry: str, reason: str, hint: str = "") -> None:
        super().__init__(
            f"refusing entry '{entry}' of '{archive}': {reason}",
            hint
            or "a PostgreSQL base backup holds only files, folders and tablespace links inside its "
            "data directory; take the backup again with pg_basebackup",
        )
        self.archive = archive
        self.entry = entry
        self.reason = reason


class ManifestMismatch(FerryError):
    """The unpacked files differ from the backup's manifest."""

    retryable = False

    hint = "the backup may be incomplete or damaged; take a new base backup (nothing was started)"


class Phase(StrEnum):
    """Where a target folder stands, read from its files."""

    NEW = "new"  # nothing unpacked yet
    INTERRUPTED = "interrupted"  # an unpack was interrupted (data.partial); restore_base starts it over
    RESTORED = "restored"  # base backup unpacked, not configured for recovery yet
    RECOVERY = "recovery"  # configured (standby.signal or recovery.signal): replaying, or will on start
    PROMOTED = "promoted"  # recovery ended: a read-write server


@dataclass(frozen=True)
class TargetRecord:
    """The contents of ferry-target.json."""

    source: str
    system_identifier: int
    base_backup: str
    port: int
    os_user: str | None
    superuser: str = "postgres"
    state: str = "created"
    format: int = RECORD_FORMAT

    def to_json(self) -> str:
        data: dict[str, Any] = {"kind": "ferry-postgres-target", **asdict(self)}
        data["system_identifier"] = str(self.system_identifier)  # 64-bit: JSON readers lose precision
        return json.dumps(data, indent=2) + "\n"

    @staticmethod
    def from_json(text: str) -> TargetRecord:
        data = json.loads(text)
        if data.get("kind") != "ferry-postgres-target" or data.get("format") != RECORD_FORMAT:
            raise ValueError("not a Ferry PostgreSQL target record of a known format")
        return TargetRecord(
            source=str(data["source"]),
            system_identifier=int(data["system_identifier"]),
            base_backup=str(data["base_backup"]),
            port=int(data["port"]),
            os_user=data.get("os_user"),
            superuser=str(data.get("superuser", "postgres")),
            state=str(data.get("state", "")),
        )


@dataclass(frozen=True)
class ExtractProgress:
    """Progress of restore_base. Archive bytes are the (compressed) input: their total is known up front."""

    archive_bytes_done: int
    archive_bytes_total: int
    data_bytes: int
    files: int
    current: str


ProgressCallback = Callable[[ExtractProgress], None]


@dataclass(frozen=True)
class RestoreResult:
    files: int
    data_bytes: int
    archive_bytes: int
    seconds: float
    verified: Verify
    skipped: bool = False  # the folder already held the complete data directory


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


# -- the target -----------------------------------------------------------------------------------


class PostgresTarget:
    """One target folder and the PostgreSQL server in it. Build with `create` (new or resumed) or `open`."""

    def __init__(self, root: Path, record: TargetRecord, binaries: Binaries | None = None) -> None:
        self.root = root
        self.record = record
        self.user = OsUser.resolve(record.os_user) if record.os_user else OsUser.resolve(None)
        self.data = root / "data"
        self.partial = root / "data.partial"
        self.tablespaces = root / "tablespaces"
        self.spool = root / "spool"
        self.socket_dir = root / "run"
        self.conf_dir = root / "conf"
        self.logfile = root / "log" / "postgresql.log"
        self._binaries = binaries
        self._cluster: Cluster | None = None
        # status(): one connection kept open for the polls (a new connection per poll forks a backend on
        # the server each time), and the WAL segment size, read once from pg_control.
        self._probe: Any = None
        self._probe_lock = threading.Lock()
        self._segment_size: int | None = None

    # -- folder ---------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        root: Path,
        port: int,
        *,
        source: str,
        system_identifier: int,
        base_backup: str,
        os_user: str | None = None,
        superuser: str = "postgres",
        binaries: Binaries | None = None,
    ) -> PostgresTarget:
        """A target folder at `root` for the migration of `source`. A folder that exists must be empty, or
        a Ferry target of the same source (system identifier and store): that is a resume. The port must
        be free, unless it is this target's own server that holds it. Never overwrites, never shares."""
        root = Path(os.path.abspath(root))
        if "\n" in str(root):
            raise UsageError(f"target folder '{root!r}' has a newline in its path", "choose another folder")
        socket = root / "run" / f".s.PGSQL.{port}"
        if len(str(socket)) > _SOCKET_PATH_MAX:
            raise UsageError(
                f"target folder '{root}' is too deep for the server's socket path '{socket}' "
                f"({len(str(socket))} bytes, at most {_SOCKET_PATH_MAX})",
                "choose a shorter folder path",
            )
        if root.exists() and not root.is_dir():
            raise TargetError(f"target '{root}' exists and is not a folder", "choose an empty folder")
        if root.is_dir() and any(root.iterdir()):
            return cls._resume(root, port, source, system_identifier, base_backup, binaries)
        resolved = OsUser.resolve(os_user)
        record = TargetRecord(
            source=source,
            system_identifier=system_identifier,
            base_backup=base_backup,
            port=port,
            os_user=resolved.name if resolved else None,
            superuser=superuser,
        )
        target = cls(root, record, binaries)
        if port_in_use(port):
            raise TargetError(
                f"port {port} on 127.0.0.1 is already in use; the target for '{source}' needs its own port",
                "choose a free port; Ferry never shares a port with another server",
            )
        root.mkdir(mode=0o755, parents=True, exist_ok=True)
        target._prepare_folders()
        target._save(record)
        target._check_reachable()
        return target

    @classmethod
    def _resume(
        cls,
        root: Path,
        port: int,
        source: str,
        system_identifier: int,
        base_backup: str,
        binaries: Binaries | None,
    ) -> PostgresTarget:
        try:
            record = read_record(root)
        except TargetError:
            raise TargetError(
                f"target folder '{root}' is not empty and is not a Ferry target",
                "give an empty or new folder; Ferry never writes into a folder it does not own",
            ) from None
        if record.source != source or record.system_identifier != system_identifier:
            raise TargetError(
                f"target folder '{root}' belongs to another migration (source '{record.source}', system "
                f"{record.system_identifier}), not to '{source}' (system {system_identifier})",
                "give another folder, or remove this one if that migration is finished",
            )
        if record.port != port:
            raise TargetError(
                f"target folder '{root}' was created for port {record.port}, not {port}",
                f"resume with port {record.port}",
            )
        target = cls(root, record, binaries)
        if record.base_backup != base_backup:
            if target.data.exists():
                raise TargetError(
                    f"target folder '{root}' holds base backup '{record.base_backup}', not '{base_backup}'",
                    "resume with the same base backup, or remove the folder to start over",
                )
            target._save(replace(record, base_backup=base_backup))
        if not target.cluster.is_running() and port_in_use(port):
            raise TargetError(
                f"port {port} on 127.0.0.1 is in use by another program; target '{root}' needs it",
                "stop that program or move it to another port",
            )
        target._prepare_folders()
        return target

    @classmethod
    def open(cls, root: Path, binaries: Binaries | None = None) -> PostgresTarget:
        root = Path(os.path.abspath(root))
        return cls(root, read_record(root), binaries)

    def _prepare_folders(self) -> None:
        for folder, mode, owned in (
            (self.socket_dir, 0o700, True),
            (self.spool, 0o700, True),
            (self.logfile.parent, 0o750, True),
            (self.conf_dir, 0o755, False),
        ):
            folder.mkdir(mode=mode, exist_ok=True)
            if owned and self.user is not None:
                os.chown(folder, self.user.uid, self.user.gid)
        if not self.logfile.exists():
            self.logfile.touch(mode=0o640)
            if self.user is not None:
                os.chown(self.logfile, self.user.uid, self.user.gid)

    def _check_reachable(self) -> None:
        """The server runs as the OS user: it must reach ROOT through every parent folder."""
        if self.user is None:
            return
        done = run(["test", "-w", str(self.spool)], self.user, check=False, timeout=10)
        if done.returncode != 0:
            raise TargetError(
                f"OS user '{self.user.name}' cannot reach target folder '{self.root}'",
                "make every parent folder searchable by that user (chmod o+x), e.g. not under /root",
            )

    def _save(self, record: TargetRecord) -> None:
        path = self.root / TARGET_FILE
        tmp = path.with_name(f".{TARGET_FILE}.tmp")
        with open(tmp, "w") as f:
            f.write(record.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)
        fsync_dir(self.root)
        self.record = record

    def _set_state(self, state: str) -> None:
        if self.record.state != state:
            self._save(replace(self.record, state=state))

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

    def phase(self) -> Phase:
        if not (self.data / "global" / "pg_control").exists():
            return Phase.INTERRUPTED if self.partial.exists() else Phase.NEW
        if (self.data / "standby.signal").exists() or (self.data / "recovery.signal").exists():
            return Phase.RECOVERY
        if (self.data / "backup_label").exists():
            return Phase.RESTORED
        return Phase.PROMOTED

    # -- base backup ----------------------------------------------------------------------------

    def restore_base(
        self,
        archives: Sequence[TarInput],
        manifest: Path | bytes | None = None,
        *,
        verify: Verify = "sizes",
        progress: ProgressCallback | None = None,
    ) -> RestoreResult:
        """Unpack a `pg_basebackup -Ft` backup into ROOT/data: `base.tar`, optional `pg_wal.tar` (into
        pg_wal) and `<oid>.tar` tablespaces, each plain or gzip/lz4/zstd (told by content, not name).

        Resume: everything goes to ROOT/data.partial, renamed to ROOT/data only once unpacked, checked and
        synced; an interrupted run leaves data.partial, which the next run removes before starting over.
        A tar stream (compressed ones especially) cannot be entered in the middle, and a file half written
        at the kill cannot be told from a whole one without the checksums: starting over is the simple,
        always-correct choice. A folder that already holds ROOT/data is skipped (`skipped=True`).

        verify: "sizes" checks every file's size and presence against `backup_manifest` (free: the sizes
        are known while unpacking); "checksums" also runs pg_verifybackup, which reads every file back
        (CRC32C from the page cache right after the unpack: +15-30% of the unpack time measured on a
        270 MB backup).
        """
        started = time.monotonic()
        if self.data.exists():
            return RestoreResult(0, 0, 0, 0.0, "none", skipped=True)
        inputs: list[_Input] = []
        try:
            for archive in archives:
                inputs.append(_open_input(archive))
            inputs.sort(key=lambda i: i.order)
            if not any(i.kind == "base" for i in inputs):
                raise UsageError(
                    "no base.tar among the base backup's archives", "give the folder pg_basebackup -Ft wrote"
                )
            manifest_bytes = manifest.read_bytes() if isinstance(manifest, Path) else manifest
            expected = parse_manifest(manifest_bytes) if manifest_bytes is not None else None
            if expected is None and verify != "none":
                raise UsageError(
                    "cannot verify the base backup without its backup_manifest",
                    "give the manifest pg_basebackup wrote beside base.tar, or verify='none'",
                )
            for leftover in (self.partial, self.tablespaces, self.root / "tablespaces.partial"):
                _remove_tree(leftover)
            self._set_state("restoring")
            unpacker = _Unpacker(self.user, sum(i.size for i in inputs), progress)
            self.partial.mkdir(mode=0o700)
            self._own(self.partial)
            tablespaces: dict[str, Path] = {}
            ts_partial = self.root / "tablespaces.partial"
            for item in inputs:
                if item.kind == "base":
                    unpacker.unpack(item, self.partial, "")
                elif item.kind == "pg_wal":
                    unpacker.unpack(item, self.partial / "pg_wal", "pg_wal/")
                else:
                    if not ts_partial.exists():
                        ts_partial.mkdir(mode=0o700)
                        self._own(ts_partial)
                    dest = ts_partial / item.kind
                    dest.mkdir(mode=0o700)
                    self._own(dest)
                    unpacker.unpack(item, dest, f"pg_tblspc/{item.kind}/")
                    tablespaces[item.kind] = self.tablespaces / item.kind
            unpacker.report(force=True)
            self._check_version()
            if expected is not None and verify != "none":
                _compare_manifest(expected, unpacker.files)
            if tablespaces:
                os.rename(ts_partial, self.tablespaces)
                self._link_tablespaces(tablespaces)
            if manifest_bytes is not None:
                _write_owned(self.partial / "backup_manifest", manifest_bytes, self.user)
            if verify == "checksums":
                # tablespace_map was rewritten for the new locations: its manifest checksum is the old one.
                ignore = ["-i", "tablespace_map"] if tablespaces else []
                run([self.binaries.tool("pg_verifybackup"), "-n", *ignore, str(self.partial)], self.user,
                    timeout=24 * 3600)  # fmt: skip
            # One syncfs for the whole file system instead of an fsync per file: as durable, far faster.
            _syncfs(self.partial)
            os.rename(self.partial, self.data)
            fsync_dir(self.root)
        finally:
            for i in inputs:
                i.close()
        self._set_state("restored")
        return RestoreResult(
            files=len(unpacker.files),
            data_bytes=unpacker.data_bytes,
            archive_bytes=unpacker.archive_done,
            seconds=time.monotonic() - started,
            verified=verify,
        )

    def _own(self, path: Path) -> None:
        if self.user is not None:
            os.chown(path, self.user.uid, self.user.gid)

    def _check_version(self) -> None:
        try:
            text = (self.partial / "PG_VERSION").read_text().strip()
        except FileNotFoundError:
            raise ManifestMismatch(
                "the base backup has no PG_VERSION: it is not a PostgreSQL data directory"
            ) from None
        major = int(text.split(".")[0])
        self._binaries = find_binaries(major)
        if self._cluster is not None:
            self._cluster.binaries = self._binaries

    def _link_tablespaces(self, tablespaces: Mapping[str, Path]) -> None:
        """Point tablespace_map (read by the server when recovery starts) and pg_tblspc at the new
        locations. The links are made now too, so pg_verifybackup sees the tablespaces' files."""
        lines = [f"{oid} {path}" for oid, path in sorted(tablespaces.items())]
        _write_owned(self.partial / "tablespace_map", ("\n".join(lines) + "\n").encode(), self.user)
        links = self.partial / "pg_tblspc"
        for oid, path in tablespaces.items():
            link = links / oid
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            os.symlink(path, link)
            if self.user is not None:
                os.lchown(link, self.user.uid, self.user.gid)

    # -- recovery configuration -----------------------------------------------------------------

    def configure(
        self,
        online: bool,
        restore_command: str,
        recovery_target_lsn: str | None = None,
        *,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """Set the unpacked data directory up for recovery from the archive.

        online: `standby.signal`: replay until promoted. Offline: `recovery.signal`: replay to the end of
        the archive (or `recovery_target_lsn`) and promote. Prefer naming the archive's end LSN as target
        offline: without one, any "not found" (even a store outage) ends recovery early.
        `restore_command` is the value (archive.restore_command); it is quoted here. `settings` are added
        as given (values already in postgresql.conf syntax) and win over Ferry's.
        """
        phase = self.phase()
        if phase in (Phase.NEW, Phase.INTERRUPTED):
            raise TargetError(
                f"target '{self.root}' has no complete data directory to configure", "run restore_base first"
            )
        if phase is Phase.PROMOTED:
            raise TargetError(f"target '{self.root}' is already promoted", "configure a new target folder")
        if self.cluster.is_running():
            raise TargetError(
                f"the server of target '{self.root}' is running", "stop it before changing its recovery setup"
            )
        if recovery_target_lsn is not None:
            parse_lsn(recovery_target_lsn)  # ValueError names the accepted form
        for carried in ("postmaster.pid", "postmaster.opts"):
            with contextlib.suppress(FileNotFoundError):
                (self.data / carried).unlink()
        signal, other = (
            ("standby.signal", "recovery.signal") if online else ("recovery.signal", "standby.signal")
        )
        with contextlib.suppress(FileNotFoundError):
            (self.data / other).unlink()
        _write_owned(self.data / signal, b"", self.user)
        hba = self.conf_dir / "pg_hba.conf"
        hba.write_text(
            "# Ferry owns this server until cutover: only the OS user and root reach its socket folder.\n"
            "local all all trust\n"
        )
        os.chmod(hba, 0o644)
        # Debian-style servers keep these in /etc, so the backup may lack them: the server needs them.
        for name in ("postgresql.conf", "pg_ident.conf"):
            if not (self.data / name).exists():
                _write_owned(
                    self.data / name, b"# written by Ferry: the source kept this file elsewhere\n", self.user
                )
        values: dict[str, str] = {
            "port": str(self.record.port),
            "listen_addresses": conf_quote("127.0.0.1"),
            "unix_socket_directories": conf_quote(str(self.socket_dir)),
            "hba_file": conf_quote(str(hba)),
            "restore_command": conf_quote(restore_command),
            "recovery_target_timeline": conf_quote("latest"),
            "hot_standby": "on",
            # How often a standby waiting for the next segment runs restore_command again (a shell each
            # time, per target). Ferry wakes it at once when the prefetcher delivers (wake_recovery).
            "wal_retrieve_retry_interval": conf_quote(RETRY_INTERVAL),
            "archive_mode": "off",
            "archive_command": conf_quote(""),
            # A source that was itself a standby carries its primary's address: never connect there.
            "primary_conninfo": conf_quote(""),
            "primary_slot_name": conf_quote(""),
            "archive_cleanup_command": conf_quote(""),
            "recovery_end_command": conf_quote(""),
            "recovery_min_apply_delay": "0",
            "logging_collector": "off",
        }
        # Hot standby refuses to start with lower limits than the source ran with (pg_control has them).
        control = self.control_data()
        for key, setting in (
            ("max_connections setting", "max_connections"),
            ("max_worker_processes setting", "max_worker_processes"),
            ("max_wal_senders setting", "max_wal_senders"),
            ("max_prepared_xacts setting", "max_prepared_transactions"),
            ("max_locks_per_xact setting", "max_locks_per_transaction"),
        ):
            if control.get(key, "").isdigit():
                values[setting] = control[key]
        if recovery_target_lsn is not None:
            values["recovery_target_lsn"] = conf_quote(recovery_target_lsn)
            values["recovery_target_action"] = conf_quote("promote")
            values["recovery_target_inclusive"] = "on"
        values.update(settings or {})
        _write_auto_conf(self.data / "postgresql.auto.conf", values, self.user)
        self._set_state("configured-online" if online else "configured-offline")

    def check_executable(self, path: str) -> None:
        """restore_command runs as the OS user: the program it names must be executable by that user
        (a Python inside /root is not)."""
        done = run(["test", "-x", path], self.user, check=False, timeout=10)
        if done.returncode != 0:
            who = self.user.name if self.user else "this user"
            raise TargetError(
                f"'{path}' is not executable by OS user '{who}': restore_command could not run it",
                "install Ferry where that user can run it (e.g. a virtualenv under /opt)",
            )

    # -- server ---------------------------------------------------------------------------------

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
            if port_in_use(self.record.port):
                raise TargetError(
                    f"port {self.record.port} on 127.0.0.1 is in use by another program; target "
                    f"'{self.root}' needs it",
                    "stop that program; Ferry never shares a port",
                )
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


def read_record(root: Path) -> TargetRecord:
    path = root / TARGET_FILE
    try:
        return TargetRecord.from_json(path.read_text())
    except FileNotFoundError:
        raise TargetError(f"'{root}' is not a Ferry target (no {TARGET_FILE})", "check the folder") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TargetError(
            f"cannot read '{path}': {exc}", "the file is damaged; compare it with the migration's settings"
        ) from None


def _lsn_or_none(text: str | None) -> int | None:
    if not text:
        return None
    try:
        value = parse_lsn(text)
    except ValueError:
        return None
    return value or None


# -- files ----------------------------------------------------------------------------------------


def _syncfs(path: Path) -> None:
    """Flush the file system holding `path` (syncfs(2)); os.sync where syncfs is unavailable."""
    libc_name = ctypes.util.find_library("c")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if libc_name:
            libc = ctypes.CDLL(libc_name, use_errno=True)
            if hasattr(libc, "syncfs") and libc.syncfs(fd) == 0:
                return
        os.sync()
    finally:
        os.close(fd)


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _write_owned(path: Path, data: bytes, user: OsUser | None, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.ferry-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, data)
        if user is not None:
            os.fchown(fd, user.uid, user.gid)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


_AUTO_BEGIN = "# --- Ferry: recovery from the archive (rewritten by Ferry; edits here are lost) ---"
_AUTO_END = "# --- end of Ferry's settings ---"


def _write_auto_conf(path: Path, values: Mapping[str, str], user: OsUser | None) -> None:
    """Keep the source's ALTER SYSTEM settings except those Ferry sets (the file is read top to bottom
    and the last value wins, but dropping duplicates keeps `SHOW`'s sourceline honest)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        lines = ["# Do not edit this file manually!", "# It will be overwritten by the ALTER SYSTEM command."]
    keep: list[str] = []
    inside = False
    for line in lines:
        if line == _AUTO_BEGIN:
            inside = True
            continue
        if line == _AUTO_END:
            inside = False
            continue
        key = re.match(r"\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(=|\s)", line)
        if inside or (key and key.group(1).lower() in values):
            continue
        keep.append(line)
    block = [_AUTO_BEGIN, *(f"{k} = {v}" for k, v in values.items()), _AUTO_END]
    _write_owned(path, ("\n".join(keep + block) + "\n").encode(), user)


# -- manifest -------------------------------------------------------------------------------------


def parse_manifest(data: bytes) -> dict[str, int]:
    """Path -> size of every file in a `backup_manifest` (PostgreSQL 13+), after checking the
    manifest's own SHA-256 (which covers everything before its last line)."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise ManifestMismatch(f"backup_manifest is not valid JSON: {exc}") from None
    if doc.get("PostgreSQL-Backup-Manifest-Version") not in (1, 2):
        raise ManifestMismatch("backup_manifest has an unknown PostgreSQL-Backup-Manifest-Version")
    at = data.rfind(b'"Manifest-Checksum"')
    if at < 0:
        raise ManifestMismatch("backup_manifest has no Manifest-Checksum")
    covered = data[: data.rfind(b"\n", 0, at) + 1]
    if hashlib.sha256(covered).hexdigest() != str(doc.get("Manifest-Checksum", "")).lower():
        raise ManifestMismatch("backup_manifest's own checksum does not match: the manifest is damaged")
    files: dict[str, int] = {}
    for entry in doc.get("Files", []):
        if "Path" in entry:
            path = str(entry["Path"])
        else:
            path = bytes.fromhex(entry["Encoded-Path"]).decode("utf-8", "surrogateescape")
        files[path] = int(entry["Size"])
    return files


def _compare_manifest(expected: Mapping[str, int], found: Mapping[str, int]) -> None:
    # pg_wal is not covered by the manifest (pg_verifybackup skips it too).
    def relevant(p: str) -> bool:
        return not p.startswith("pg_wal/")

    missing = sorted(p for p in expected if relevant(p) and p not in found)
    extra = sorted(p for p in found if relevant(p) and p not in expected)
    wrong = sorted(p for p in expected if p in found and relevant(p) and found[p] != expected[p])
    if not (missing or extra or wrong):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (first: '{missing[0]}')")
    if wrong:
        parts.append(f"{len(wrong)} of another size (first: '{wrong[0]}', {found[wrong[0]]} bytes, manifest "
                     f"{expected[wrong[0]]})")  # fmt: skip
    if extra:
        parts.append(f"{len(extra)} not in the manifest (first: '{extra[0]}')")
    raise ManifestMismatch("the unpacked base backup differs from backup_manifest: " + "; ".join(parts))


# -- tar ------------------------------------------------------------------------------------------


@dataclass
class _Input:
    """One archive of the base backup: where it goes (kind), how to read it, its size."""

    name: str
    kind: str  # "base", "pg_wal" or a tablespace OID
    size: int
    fd: int | None  # a local file
    reader: RangeReader | None
    compression: str  # "none", "gzip", "lz4", "zstd"

    @property
    def order(self) -> tuple[int, str]:
        return (0 if self.kind == "base" else 2 if self.kind == "pg_wal" else 1, self.kind)

    def pread(self, length: int, offset: int) -> bytes:
        if self.fd is not None:
            return os.pread(self.fd, length, offset)
        assert self.reader is not None
        return self.reader.read(offset, length)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.reader is not None:
            self.reader.close()
            self.reader = None


def _open_input(item: TarInput) -> _Input:
    if isinstance(item, str | Path):
        path = Path(item)
        name = path.name
        try:
            fd: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise UsageError(
                f"cannot open base backup archive '{path}': {exc.strerror}", "check the path"
            ) from None
        assert fd is not None
        size = os.fstat(fd).st_size
        reader = None
    else:
        reader, fd = item, None
        name, size = item.key.rsplit("/", 1)[-1], item.size
    m = _ARCHIVE_NAME.match(name)
    if not m:
        if fd is not None:
            os.close(fd)
        raise UsageError(
            f"'{name}' is not an archive of pg_basebackup -Ft (base.tar, pg_wal.tar or <oid>.tar, optionally "
            ".gz/.lz4/.zst)",
            "give the files pg_basebackup wrote, under their names",
        )
    inp = _Input(name, m.group(1), size, fd, reader, "none")
    head = inp.pread(4, 0)
    if head[:2] == b"\x1f\x8b":
        inp.compression = "gzip"
    elif head == b"\x04\x22\x4d\x18":
        inp.compression = "lz4"
    elif head == b"\x28\xb5\x2f\xfd":
        inp.compression = "zstd"
    return inp


class _RawFile:
    """Sequential `read(n)` over an _Input, counting bytes for progress."""

    def __init__(self, inp: _Input) -> None:
        self.inp = inp
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = self.inp.size - self.pos
        data = self.inp.pread(min(n, max(0, self.inp.size - self.pos)), self.pos)
        self.pos += len(data)
        return data

    def readable(self) -> bool:
        return True


def _decoded_chunks(raw: _RawFile, compression: str) -> Iterator[bytes]:
    """Decompressed data in chunks of at most CHUNK bytes."""
    return compressed.chunks(raw, Compression(compression), CHUNK)


_END = object()


class _Stream:
    """Tar bytes from a decompressing thread: decompression (zlib, lz4 and zstd release the GIL) runs
    while this thread writes files, as `tar -xz` overlaps gzip and tar."""

    def __init__(self, inp: _Input) -> None:
        self.inp = inp
        self.raw = _RawFile(inp)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=8)
        self._stop = threading.Event()
        self._buf = memoryview(b"")
        self._thread = threading.Thread(target=self._produce, name=f"ferry-untar-{inp.name}", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            for chunk in _decoded_chunks(self.raw, self.inp.compression):
                if not self._put(chunk):
                    return
            self._put(_END)
        except BaseException as exc:  # handed to the consumer, which raises it with context
            self._put(exc)

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        self._thread.join()

    @property
    def consumed(self) -> int:
        return self.raw.pos

    def _more(self) -> bool:
        item = self._queue.get()
        if item is _END:
            self._queue.put(_END)  # later calls see the end too
            return False
        if isinstance(item, BaseException):
            raise ArchiveEntryError(
                self.inp.name,
                "(compressed data)",
                f"cannot decompress ({self.inp.compression}): {item}",
                "the archive is damaged or truncated; copy it again",
            ) from item
        assert isinstance(item, bytes)
        self._buf = memoryview(item)
        return True

    def read(self, n: int) -> bytes:
        parts: list[bytes] = []
        while n > 0:
            if not self._buf and not self._more():
                break
            take = self._buf[:n]
            parts.append(bytes(take))
            self._buf = self._buf[len(take) :]
            n -= len(take)
        return b"".join(parts)

    def copy(self, n: int, fd: int) -> int:
        done = 0
        while done < n:
            if not self._buf and not self._more():
                break
            take = self._buf[: n - done]
            written = 0
            while written < len(take):
                written += os.write(fd, take[written:])
            self._buf = self._buf[len(take) :]
            done += len(take)
        return done

    def skip(self, n: int) -> None:
        while n > 0:
            if not self._buf and not self._more():
                return
            take = min(n, len(self._buf))
            self._buf = self._buf[take:]
            n -= take


class _File:
    """An uncompressed local tar: headers by pread, file data by copy_file_range (no copy through user
    space, where `tar` reads and writes 10 KiB records)."""

    def __init__(self, inp: _Input) -> None:
        assert inp.fd is not None
        self.inp = inp
        self.fd = inp.fd
        self.pos = 0
        self._kernel = hasattr(os, "copy_file_range")

    @property
    def consumed(self) -> int:
        return self.pos

    def read(self, n: int) -> bytes:
        data = os.pread(self.fd, n, self.pos)
        self.pos += len(data)
        return data

    def copy(self, n: int, fd: int) -> int:
        done = 0
        while done < n:
            want = n - done
            if self._kernel:
                try:
                    got = os.copy_file_range(self.fd, fd, want, self.pos)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                        raise
                    self._kernel = False
                    continue
            else:
                data = os.pread(self.fd, min(want, CHUNK), self.pos)
                got = len(data)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            if got == 0:
                break
            self.pos += got
            done += got
        return done

    def skip(self, n: int) -> None:
        self.pos += n

    def close(self) -> None:
        pass


def _octal(field: bytes) -> int:
    if field and field[0] & 0x80:  # GNU base-256 for sizes of 8 GiB and more
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _cstr(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


class _Unpacker:
    """A streaming tar reader and writer: one header parse and a few system calls per entry, data in
    chunks of up to 4 MiB (or in the kernel), no fsync per file (one syncfs at the end)."""

    def __init__(self, user: OsUser | None, archive_total: int, progress: ProgressCallback | None) -> None:
        self.user = user
        self.archive_total = archive_total
        self.progress = progress
        self.files: dict[str, int] = {}
        self.data_bytes = 0
        self.archive_done = 0
        self._archive_base = 0
        self._source: _Stream | _File | None = None
        self._last_report = 0
        self._current = ""
        self._dirs: set[str] = set()

    def report(self, force: bool = False) -> None:
        if self._source is not None:
            self.archive_done = self._archive_base + self._source.consumed
        if self.progress is None:
            return
        if force or self.data_bytes - self._last_report >= PROGRESS_EVERY:
            self._last_report = self.data_bytes
            self.progress(ExtractProgress(self.archive_done, self.archive_total, self.data_bytes,
                                          len(self.files), self._current))  # fmt: skip

    def unpack(self, inp: _Input, dest: Path, manifest_prefix: str) -> None:
        source: _Stream | _File = (
            _File(inp) if inp.compression == "none" and inp.fd is not None else _Stream(inp)
        )
        self._source = source
        self._dirs = {""}
        root = str(dest)
        if not dest.exists():
            dest.mkdir(mode=0o700)
            self._chown(root)
        try:
            self._entries(inp.name, source, root, manifest_prefix)
        except OSError as exc:
            raise TargetError(
                f"cannot unpack '{self._current}' of '{inp.name}' into '{dest}': {exc.strerror}",
                "check free space and that nothing else writes into the target folder",
            ) from None
        finally:
            self.report()
            source.close()
            self._archive_base += inp.size
            self.archive_done = self._archive_base
            self._source = None

    def _chown(self, path: str, follow: bool = True) -> None:
        if self.user is not None:
            if follow:
                os.chown(path, self.user.uid, self.user.gid)
            else:
                os.lchown(path, self.user.uid, self.user.gid)

    def _entries(self, archive: str, src: _Stream | _File, root: str, prefix: str) -> None:
        long_name: str | None = None
        long_link: str | None = None
        pax: dict[str, str] = {}
        while True:
            offset = src.consumed if isinstance(src, _File) else -1
            block = src.read(BLOCK)
            if len(block) < BLOCK:
                raise ArchiveEntryError(archive, self._current or "(start)",
                                        "the archive ends before its end-of-archive marker",
                                        "the archive is truncated: copy it again")  # fmt: skip
            if block == _ZERO_BLOCK:
                return  # end-of-archive marker (the second zero block and padding are not read)
            stored = sum(block[:148]) + 256 + sum(block[156:])
            try:
                checksum = _octal(block[148:156])
            except ValueError:
                checksum = -1
            if checksum != stored:
                where = f" at byte {offset}" if offset >= 0 else ""
                raise ArchiveEntryError(archive, self._current or "(start)",
                                        f"bad tar header checksum after this entry{where}",
                                        "the archive is damaged or not a tar file")  # fmt: skip
            kind = block[156:157]
            size = _octal(block[124:136])
            if "size" in pax:
                size = int(pax["size"])
            padding = -size % BLOCK
            if kind in (b"L", b"K", b"x", b"g"):
                payload = src.read(size)
                src.skip(padding)
                if kind == b"L":
                    long_name = _cstr(payload)
                elif kind == b"K":
                    long_link = _cstr(payload)
                elif kind == b"x":
                    pax = _parse_pax(payload, archive)
                continue
            name = pax.get("path") or long_name or _ustar_name(block)
            link = pax.get("linkpath") or long_link or _cstr(block[157:257])
            long_name = long_link = None
            pax = {}
            self._current = name
            rel = _safe_relpath(name, archive)
            full = os.path.join(root, rel) if rel else root
            mode = _octal(block[100:108])
            if kind in (b"0", b"\0", b"7"):
                if not rel:
                    raise ArchiveEntryError(archive, name, "a file entry without a name")
                self._ensure_dir(root, os.path.dirname(rel), archive, name)
                self._file(src, full, size, (mode & 0o640) | 0o600, archive, name)
                src.skip(padding)
                self.files[prefix + rel] = size
            elif kind == b"5":
                if rel:
                    self._ensure_dir(root, os.path.dirname(rel), archive, name)
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(full, (mode & 0o750) | 0o700)
                        self._chown(full)
                    if not os.path.isdir(full) or os.path.islink(full):
                        raise ArchiveEntryError(archive, name, "a folder entry over a file or link")
                    self._dirs.add(rel)
                src.skip(size + padding)
            elif kind == b"2":
                _check_link(link, archive, name)
                if not rel:
                    raise ArchiveEntryError(archive, name, "a link in place of the data directory")
                self._ensure_dir(root, os.path.dirname(rel), archive, name)
                try:
                    os.symlink(link, full)
                except FileExistsError:
                    raise ArchiveEntryError(archive, name, "a link over an existing entry") from None
                self._chown(full, follow=False)
                src.skip(size + padding)
            elif kind == b"1":
                raise ArchiveEntryError(archive, name, f"a hard link (to '{link}')")
            elif kind in (b"3", b"4", b"6"):
                what = {b"3": "a character device", b"4": "a block device", b"6": "a FIFO"}[kind]
                raise ArchiveEntryError(archive, name, what)
            else:
                raise ArchiveEntryError(archive, name, f"an entry of unsupported tar type {kind!r}")
            self.report()

    def _ensure_dir(self, root: str, rel_dir: str, archive: str, entry: str) -> None:
        if rel_dir in self._dirs:
            return
        parts = rel_dir.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub in self._dirs:
                continue
            path = os.path.join(root, sub)
            try:
                os.mkdir(path, 0o700)
                self._chown(path)
            except FileExistsError:
                if os.path.islink(path) or not os.path.isdir(path):
                    # A link is allowed only where the backup puts one, never as a parent of other entries.
                    raise ArchiveEntryError(
                        archive, entry, f"its folder '{sub}' is a link or a file"
                    ) from None
            self._dirs.add(sub)

    def _file(self, src: _Stream | _File, path: str, size: int, mode: int, archive: str, entry: str) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ArchiveEntryError(archive, entry, "a file over a link") from None
            raise
        try:
            if self.user is not None:
                os.fchown(fd, self.user.uid, self.user.gid)
            done = 0
            while done < size:
                # Bounded steps so that progress (and an interruption) is seen inside very large files.
                step = src.copy(min(size - done, 16 * CHUNK), fd)
                if step == 0:
                    raise ArchiveEntryError(
                        archive,
                        entry,
                        f"the archive is truncated: it ends inside this file (byte {done} of {size})",
                        "the archive is truncated: copy it again",
                    )
                done += step
                self.data_bytes += step
                self.report()
        finally:
            os.close(fd)


def _ustar_name(block: bytes) -> str:
    name = _cstr(block[0:100])
    if block[257:263] == b"ustar\x00":  # POSIX ustar: a prefix field (GNU tar uses those bytes otherwise)
        prefix = _cstr(block[345:500])
        if prefix:
            return f"{prefix}/{name}"
    return name


def _parse_pax(payload: bytes, archive: str) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(payload):
        space = payload.find(b" ", pos)
        try:
            length = int(payload[pos:space])
        except ValueError:
            raise ArchiveEntryError(archive, "(pax header)", "a malformed pax extended header") from None
        record = payload[space + 1 : pos + length - 1]
        key, _, value = record.partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _safe_relpath(name: str, archive: str) -> str:
    """The entry's path relative to the destination, or an error for one that could leave it."""
    if name.startswith("/"):
        raise ArchiveEntryError(archive, name, "an absolute path")
    if "\0" in name:
        raise ArchiveEntryError(archive, name, "a NUL byte in the path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveEntryError(archive, name, "a '..' in the path")
    return "/".join(parts)


def _check_link(target: str, archive: str, entry: str) -> None:
    """Links may only point down from where they are: relative and without '..'. Then no chain of links
    can climb out of the data directory, whatever the order of entries."""
    if not target or target.startswith("/"):
        raise ArchiveEntryError(archive, entry, f"a link to '{target}', outside the data directory")
    if ".." in target.split("/"):
        raise ArchiveEntryError(archive, entry, f"a link to '{target}', which climbs with '..'")
