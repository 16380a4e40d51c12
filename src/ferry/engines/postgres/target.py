"""A PostgreSQL server Ferry restores onto: one folder Ferry owns on the target host (targetdir.py lays it
out), the server in it (server.py), the base backup unpacked into it (unpack.py) and its recovery
configuration (recovery.py). `PostgresTarget` is what migrations drive:

```
target = PostgresTarget.create(root, port, source=..., system_identifier=..., base_backup=...)
target.restore_base(archives, manifest)     unpack into ROOT/data.partial, check, sync, rename to ROOT/data
target.configure(online, restore_command)   standby.signal or recovery.signal, Ferry's settings
target.start(); target.status(); target.promote(); target.verify_writable()
```

Where a migration stands is read from the folder and the server, never from a record of Ferry's: `phase()`
from the files, positions from the running server and from pg_control.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from ferry.core.errors import UsageError
from ferry.engines.postgres import recovery
from ferry.engines.postgres.cluster import Binaries, OsUser, find_binaries, port_in_use, run
from ferry.engines.postgres.fileops import fsync_dir, remove_tree, write_file
from ferry.engines.postgres.fileops import syncfs as _syncfs  # a module name of its own: bench/ times it
from ferry.engines.postgres.recovery import RETRY_INTERVAL
from ferry.engines.postgres.server import TargetServer, TargetStatus, WriteCheck
from ferry.engines.postgres.targetdir import TARGET_FILE, Phase, TargetError, TargetRecord, read_record
from ferry.engines.postgres.unpack import (
    ArchiveEntryError,
    ExtractProgress,
    ManifestMismatch,
    ProgressCallback,
    TarInput,
    Unpacker,
    compare_manifest,
    manifest_sizes,
    open_archives,
)

__all__ = [
    "RETRY_INTERVAL",
    "TARGET_FILE",
    "ArchiveEntryError",
    "ExtractProgress",
    "ManifestMismatch",
    "Phase",
    "PostgresTarget",
    "ProgressCallback",
    "RestoreResult",
    "TarInput",
    "TargetError",
    "TargetRecord",
    "TargetStatus",
    "Verify",
    "WriteCheck",
    "read_record",
]

_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes with the terminating NUL

Verify = Literal["none", "sizes", "checksums"]


@dataclass(frozen=True)
class RestoreResult:
    files: int
    data_bytes: int
    archive_bytes: int
    seconds: float
    verified: Verify
    skipped: bool = False  # the folder already held the complete data directory


class PostgresTarget(TargetServer):
    """One target folder and the PostgreSQL server in it. Build with `create` (new or resumed) or `open`."""

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
        target.check_port()
        target._prepare_folders()
        return target

    @classmethod
    def open(cls, root: Path, binaries: Binaries | None = None) -> PostgresTarget:
        root = Path(os.path.abspath(root))
        return cls(root, read_record(root), binaries)

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
        inputs = open_archives(archives)
        try:
            manifest_bytes = manifest.read_bytes() if isinstance(manifest, Path) else manifest
            expected = manifest_sizes(manifest_bytes) if manifest_bytes is not None else None
            if expected is None and verify != "none":
                raise UsageError(
                    "cannot verify the base backup without its backup_manifest",
                    "give the manifest pg_basebackup wrote beside base.tar, or verify='none'",
                )
            for leftover in (self.partial, self.tablespaces, self.root / "tablespaces.partial"):
                remove_tree(leftover)
            self._set_state("restoring")
            unpacker = Unpacker(self.user, sum(i.size for i in inputs), progress)
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
                compare_manifest(expected, unpacker.files)
            if tablespaces:
                os.rename(ts_partial, self.tablespaces)
                self._link_tablespaces(tablespaces)
            if manifest_bytes is not None:
                write_file(self.partial / "backup_manifest", manifest_bytes, owner=self.owner)
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
        write_file(self.partial / "tablespace_map", ("\n".join(lines) + "\n").encode(), owner=self.owner)
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
        recovery.configure(self, online, restore_command, recovery_target_lsn, settings)
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
