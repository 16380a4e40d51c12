"""The model instance's durable state: databases and their files, logins, credentials, msdb's restore
history. Kept as one JSON document written atomically (temporary file, fsync, rename) after every
change, so a model restarted on the same state folder continues where it was.

Paths: every path the model sees (database files, backup devices, standby files) lives under one root
folder: `/var/opt/mssql/data/x.mdf` is ROOT/var/opt/mssql/data/x.mdf and `C:\\Data\\x.mdf` is
ROOT/C/Data/x.mdf. A path is never allowed to climb above the root.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

STATE_FILE = "model-state.json"
FORMAT = 1


@dataclass
class DbFile:
    file_id: int
    type: str  # D rows, L log
    logical_name: str
    physical_name: str
    size: int  # bytes, as in the backup
    max_size: int = 0
    create_lsn: int = 0


@dataclass
class Database:
    name: str
    database_id: int
    state: str = "ONLINE"  # ONLINE, RESTORING, OFFLINE
    user_access: str = "MULTI_USER"  # MULTI_USER, SINGLE_USER, RESTRICTED_USER
    is_in_standby: bool = False
    is_read_only: bool = False
    recovery_model: str = "FULL"
    compatibility_level: int = 150
    owner_sid: str = "01"
    create_date: str = ""
    family_guid: str | None = None
    database_guid: str | None = None
    database_version: int = 0  # of the backup restored; the server's own once recovered
    files: list[DbFile] = field(default_factory=list)
    # The restore sequence. `redo_lsn` is the point the database is rolled forward to (P), `redo_fork` the
    # recovery fork it is on there, `redo_time` the source's local wall time of that point.
    redo_lsn: int | None = None
    redo_fork: str | None = None
    redo_time: str | None = None
    diff_base_lsn: int | None = None  # CheckpointLSN of the full backup the sequence started from
    diff_base_guid: str | None = None  # its BackupSetGUID
    interrupted: str | None = None  # a restore of this backup set was cut short (4319 until redone)
    standby_file: str | None = None
    # Once recovered: the fork the database lives on, and where it began.
    recovery_fork: str | None = None
    fork_point_lsn: int | None = None


@dataclass
class Login:
    name: str
    password: str
    roles: list[str] = field(default_factory=list)
    sid: str = ""


@dataclass
class CredentialRow:
    credential_id: int
    name: str
    identity: str
    secret: str
    create_date: str


def _load(cls: type[Any], data: dict[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class State:
    databases: dict[str, Database] = field(default_factory=dict)  # key: lower-case name
    logins: dict[str, Login] = field(default_factory=dict)
    credentials: list[CredentialRow] = field(default_factory=list)
    backupset: list[dict[str, Any]] = field(default_factory=list)
    backupmediafamily: list[dict[str, Any]] = field(default_factory=list)
    restorehistory: list[dict[str, Any]] = field(default_factory=list)
    restorefile: list[dict[str, Any]] = field(default_factory=list)
    next_database_id: int = 5
    next_credential_id: int = 65536

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        state = cls()
        for key, raw in data.get("databases", {}).items():
            db = _load(Database, raw)
            db.files = [_load(DbFile, f) for f in raw.get("files", [])]
            state.databases[key] = db
        state.logins = {k: _load(Login, v) for k, v in data.get("logins", {}).items()}
        state.credentials = [_load(CredentialRow, c) for c in data.get("credentials", [])]
        for name in ("backupset", "backupmediafamily", "restorehistory", "restorefile"):
            setattr(state, name, list(data.get(name, [])))
        state.next_database_id = int(data.get("next_database_id", 5))
        state.next_credential_id = int(data.get("next_credential_id", 65536))
        return state

    def database(self, name: str) -> Database | None:
        return self.databases.get(name.lower())

    def database_by_id(self, database_id: int) -> Database | None:
        return next((d for d in self.databases.values() if d.database_id == database_id), None)


def load_state(folder: Path) -> State:
    path = folder / STATE_FILE
    if not path.exists():
        return State()
    return State.from_json(json.loads(path.read_text(encoding="utf-8")))


def save_state(folder: Path, state: State) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (STATE_FILE + ".tmp")
    data = json.dumps(state.to_json(), indent=1, sort_keys=True)
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / STATE_FILE)
    # The rename is durable only once the folder itself is synced.
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def now_text() -> str:
    return datetime.now().isoformat(sep=" ", timespec="milliseconds")


def new_sid() -> str:
    return uuid.uuid4().hex.upper()


# -- the model's file system -------------------------------------------------------------------------------

_DRIVE = re.compile(r"^([A-Za-z]):[\\/]?")


def is_windows_path(path: str) -> bool:
    return bool(_DRIVE.match(path)) or path.startswith("\\\\")


class OutsideRoot(ValueError):
    pass


class FileSystem:
    """Maps the paths SQL Server would see onto host paths under `root`."""

    def __init__(self, root: Path, default_dir: str) -> None:
        self.root = root
        self.default_dir = default_dir

    def parts(self, path: str) -> list[str]:
        if not (path.startswith("/") or is_windows_path(path)):
            path = (
                self.default_dir.rstrip("/\\") + ("\\" if is_windows_path(self.default_dir) else "/") + path
            )
        drive = _DRIVE.match(path)
        if drive:
            rest = path[drive.end() :].replace("\\", "/")
            prefix = [drive.group(1).upper()]
        elif path.startswith("\\\\"):
            rest = path[2:].replace("\\", "/")
            prefix = ["UNC"]
        else:
            rest = path
            prefix = []
        normal = posixpath.normpath("/" + rest)
        if normal.startswith("//"):
            normal = normal[1:]
        pieces = [p for p in normal.split("/") if p]
        if ".." in pieces:
            raise OutsideRoot(path)
        return prefix + pieces

    def host(self, path: str) -> Path:
        return self.root.joinpath(*self.parts(path))

    def key(self, path: str) -> str:
        """A comparison key: Windows paths are case-insensitive, POSIX ones are not."""
        joined = "/".join(self.parts(path))
        return joined.lower() if is_windows_path(path) else joined
