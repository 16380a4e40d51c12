"""The folder Ferry owns on a target host for one PostgreSQL migration, and its record.

```
ROOT/ferry-target.json   what this folder is for: source store, system identifier, base backup, port, OS user
ROOT/data/               PGDATA (0700, owned by the server's OS user); appears only once complete
ROOT/data.partial/       PGDATA while the base backup is unpacked; removed and redone after an interruption
ROOT/tablespaces/<oid>/  tablespaces of the base backup (tablespace_map points here)
ROOT/spool/              WAL the prefetcher fetched ahead of replay (prefetch.Prefetcher)
ROOT/run/                the server's Unix socket (0700: only the OS user and root can connect)
ROOT/conf/pg_hba.conf    Ferry's access rule while it owns the server: trust on that socket only
ROOT/log/postgresql.log  the server log
```

The JSON record only says what the folder belongs to (and a last state, for people reading it). Where a
migration stands is read from the files: `phase()` from data or data.partial, the signal files and
backup_label.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from ferry.core.errors import FerryError
from ferry.engines.postgres.cluster import OsUser, run
from ferry.engines.postgres.fileops import fsync_dir, write_file

TARGET_FILE = "ferry-target.json"
RECORD_FORMAT = 1


class TargetError(FerryError):
    """The target folder cannot be used as asked: not ours, another migration's, or in the wrong state."""

    retryable = False


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


class TargetFolder:
    """One target folder: where each part lives, its record, and its phase."""

    def __init__(self, root: Path, record: TargetRecord) -> None:
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

    @property
    def owner(self) -> tuple[int, int] | None:
        """(uid, gid) of the server's OS user, who owns what the server reads or writes."""
        return (self.user.uid, self.user.gid) if self.user is not None else None

    def phase(self) -> Phase:
        if not (self.data / "global" / "pg_control").exists():
            return Phase.INTERRUPTED if self.partial.exists() else Phase.NEW
        if (self.data / "standby.signal").exists() or (self.data / "recovery.signal").exists():
            return Phase.RECOVERY
        if (self.data / "backup_label").exists():
            return Phase.RESTORED
        return Phase.PROMOTED

    def _prepare_folders(self) -> None:
        for folder, mode, owned in (
            (self.socket_dir, 0o700, True),
            (self.spool, 0o700, True),
            (self.logfile.parent, 0o750, True),
            (self.conf_dir, 0o755, False),
        ):
            folder.mkdir(mode=mode, exist_ok=True)
            if owned:
                self._own(folder)
        if not self.logfile.exists():
            self.logfile.touch(mode=0o640)
            self._own(self.logfile)

    def _own(self, path: Path) -> None:
        if self.user is not None:
            os.chown(path, self.user.uid, self.user.gid)

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
        write_file(self.root / TARGET_FILE, record.to_json().encode(), mode=0o644)
        fsync_dir(self.root)
        self.record = record

    def _set_state(self, state: str) -> None:
        if self.record.state != state:
            self._save(replace(self.record, state=state))
