"""What Ferry asks a SQL Server target before and during a restore, and what it makes of the answers.

Two batches, each one round trip with several result sets:

- `facts_batch`: version and edition, default data and log paths (SERVERPROPERTY, rules doc §4), the
  databases with their state and user access, `sys.master_files`, free space per volume
  (`sys.dm_os_volume_stats` over the existing files: it answers only for files that exist), the
  credentials (their names are the URLs they serve), sessions per database, the login's server roles and
  CREATE ANY DATABASE, and `xp_fileexist` for the paths a restore would create;
- `position_batch`: where one database stands: its row in sys.databases, its files with
  `redo_start_lsn` (the next LSN a log must cover, while RESTORING), and its msdb restore history (the
  latest full restore, and the latest rows) joined to `backupset`.

The queries use only documented views and functions of SQL Server 2012 and later. Parsing is pure: result
sets in, frozen values out, so it is tested without a server.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ferry.engines.sqlserver.connection import ResultSet
from ferry.engines.sqlserver.tsql import quote_literal

HISTORY_ROWS = 50  # the latest restore history rows read: enough to name the last logs restored

# sys.databases.state (rules doc §4)
ONLINE, RESTORING = 0, 1
USER_ACCESS = {0: "MULTI_USER", 1: "SINGLE_USER", 2: "RESTRICTED_USER"}

_SERVER = """SELECT CAST(SERVERPROPERTY('ProductVersion') AS nvarchar(128)) AS product_version,
       CAST(SERVERPROPERTY('Edition') AS nvarchar(128)) AS edition,
       CAST(SERVERPROPERTY('EngineEdition') AS int) AS engine_edition,
       CAST(SERVERPROPERTY('InstanceName') AS nvarchar(128)) AS instance_name,
       CAST(SERVERPROPERTY('IsSingleUser') AS int) AS is_single_user,
       CAST(SERVERPROPERTY('InstanceDefaultDataPath') AS nvarchar(260)) AS data_path,
       CAST(SERVERPROPERTY('InstanceDefaultLogPath') AS nvarchar(260)) AS log_path,
       @@SERVERNAME AS server_name,
       SUSER_SNAME() AS login_name,
       IS_SRVROLEMEMBER('sysadmin') AS is_sysadmin,
       IS_SRVROLEMEMBER('dbcreator') AS is_dbcreator,
       HAS_PERMS_BY_NAME(NULL, NULL, 'CREATE ANY DATABASE') AS can_create_database"""
_DATABASES = """SELECT d.name, d.database_id, d.state, d.user_access, d.is_in_standby, d.is_read_only
FROM sys.databases AS d"""
_FILES = """SELECT mf.database_id, mf.file_id, mf.type, mf.name, mf.physical_name, mf.size
FROM sys.master_files AS mf"""
_VOLUMES = """SELECT vs.volume_mount_point, MAX(vs.total_bytes) AS total_bytes,
       MAX(vs.available_bytes) AS available_bytes
FROM sys.master_files AS mf
CROSS APPLY sys.dm_os_volume_stats(mf.database_id, mf.file_id) AS vs
GROUP BY vs.volume_mount_point"""
_CREDENTIALS = "SELECT c.name FROM sys.credentials AS c"
_SESSIONS = """SELECT s.database_id, COUNT(*) AS sessions
FROM sys.dm_exec_sessions AS s
WHERE s.is_user_process = 1 AND s.session_id <> @@SPID
GROUP BY s.database_id"""


def probe_batch(paths: Iterable[str]) -> str:
    """`xp_fileexist` per path: one result set each (File Exists, File is a Directory, Parent Exists)."""
    return ";\n".join(f"EXEC master.dbo.xp_fileexist {quote_literal(p)}" for p in paths)


def facts_batch(probes: Sequence[str] = ()) -> str:
    parts = [_SERVER, _DATABASES, _FILES, _VOLUMES, _CREDENTIALS, _SESSIONS]
    if probes:
        parts.append(probe_batch(probes))
    return ";\n".join(parts)


@dataclass(frozen=True)
class DatabaseRow:
    name: str
    database_id: int
    state: int
    user_access: int
    is_in_standby: bool
    is_read_only: bool
    sessions: int = 0

    @property
    def access(self) -> str:
        return USER_ACCESS.get(self.user_access, str(self.user_access))

    @property
    def restoring(self) -> bool:
        return self.state == RESTORING or self.is_in_standby


@dataclass(frozen=True)
class FileRow:
    database_id: int
    file_id: int
    type: int  # 0 rows, 1 log, as sys.master_files says
    name: str
    physical_name: str
    size: int  # bytes


@dataclass(frozen=True)
class Volume:
    mount_point: str
    total_bytes: int
    available_bytes: int


@dataclass(frozen=True)
class Probe:
    exists: bool
    is_directory: bool
    parent_exists: bool


@dataclass(frozen=True)
class TargetFacts:
    product_version: str
    edition: str
    engine_edition: int
    instance_name: str | None
    server_name: str
    login: str
    single_user: bool
    data_path: str | None
    log_path: str | None
    is_sysadmin: bool
    is_dbcreator: bool
    can_create_database: bool
    databases: tuple[DatabaseRow, ...] = ()
    files: tuple[FileRow, ...] = ()
    volumes: tuple[Volume, ...] = ()
    credentials: tuple[str, ...] = ()
    probes: Mapping[str, Probe] = field(default_factory=dict)

    @property
    def major(self) -> int:
        head = self.product_version.split(".", 1)[0]
        return int(head) if head.isdigit() else 0

    def database(self, name: str) -> DatabaseRow | None:
        # Database names compare as the server's default collation does: case-insensitively.
        return next((d for d in self.databases if d.name.casefold() == name.casefold()), None)

    def files_of(self, database_id: int) -> list[FileRow]:
        return [f for f in self.files if f.database_id == database_id]

    @property
    def default_data_dir(self) -> str | None:
        """InstanceDefaultDataPath; on builds without it, the folder of the model database's data file,
        which is where CREATE DATABASE puts files by default on a fresh install."""
        return self.data_path or _folder_of(self.files, 3, 0)

    @property
    def default_log_dir(self) -> str | None:
        return self.log_path or _folder_of(self.files, 3, 1) or self.default_data_dir

    def volume_of(self, path: str) -> Volume | None:
        """The volume whose mount point is the longest prefix of `path` (Windows paths case-insensitive)."""
        key = _norm(path)
        found = [v for v in self.volumes if key.startswith(_norm(v.mount_point).rstrip("/") + "/")]
        found += [v for v in self.volumes if _norm(v.mount_point) in ("/", "")]
        return max(found, key=lambda v: len(v.mount_point), default=None)


def _norm(path: str) -> str:
    windows = bool(re.match(r"^[A-Za-z]:|^\\\\", path))
    text = path.replace("\\", "/")
    return text.casefold() if windows else text


def _folder_of(files: Sequence[FileRow], database_id: int, kind: int) -> str | None:
    for f in files:
        if f.database_id == database_id and f.type == kind:
            cut = max(f.physical_name.rfind("/"), f.physical_name.rfind("\\"))
            return f.physical_name[: cut + 1] if cut >= 0 else None
    return None


def _int(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool | int | Decimal | float):
        return int(value)
    text = str(value).strip()
    return int(text) if text.lstrip("-").isdigit() else 0


def _opt_int(value: Any) -> int | None:
    return None if value is None else _int(value)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def guid(value: Any) -> str | None:
    """A uniqueidentifier as Ferry prints GUIDs: upper case, with dashes."""
    return None if value is None else str(value).strip("{}").upper()


def parse_probes(paths: Sequence[str], results: Sequence[ResultSet]) -> dict[str, Probe]:
    out: dict[str, Probe] = {}
    for path, result in zip(paths, results, strict=True):
        row = result.rows[0] if result.rows else (0, 0, 0)
        out[path] = Probe(bool(_int(row[0])), bool(_int(row[1])), bool(_int(row[2])))
    return out


def parse_facts(results: Sequence[ResultSet], probes: Sequence[str] = ()) -> TargetFacts:
    if len(results) != 6 + len(probes):
        raise ValueError(f"the facts batch gave {len(results)} result sets, not {6 + len(probes)}")
    server = results[0].dicts()[0]
    sessions = {_int(r["database_id"]): _int(r["sessions"]) for r in results[5].dicts()}
    databases = tuple(
        DatabaseRow(
            name=_text(r["name"]) or "",
            database_id=_int(r["database_id"]),
            state=_int(r["state"]),
            user_access=_int(r["user_access"]),
            is_in_standby=bool(_int(r["is_in_standby"])),
            is_read_only=bool(_int(r["is_read_only"])),
            sessions=sessions.get(_int(r["database_id"]), 0),
        )
        for r in results[1].dicts()
    )
    files = tuple(
        FileRow(
            database_id=_int(r["database_id"]),
            file_id=_int(r["file_id"]),
            type=_int(r["type"]),
            name=_text(r["name"]) or "",
            physical_name=_text(r["physical_name"]) or "",
            size=_int(r["size"]) * 8192,  # sys.master_files.size counts 8 KiB pages
        )
        for r in results[2].dicts()
    )
    volumes = tuple(
        Volume(_text(r["volume_mount_point"]) or "", _int(r["total_bytes"]), _int(r["available_bytes"]))
        for r in results[3].dicts()
    )
    credentials = tuple(_text(r["name"]) or "" for r in results[4].dicts())
    return TargetFacts(
        product_version=_text(server["product_version"]) or "0",
        edition=_text(server["edition"]) or "",
        engine_edition=_int(server["engine_edition"]),
        instance_name=_text(server["instance_name"]),
        server_name=_text(server["server_name"]) or "",
        login=_text(server["login_name"]) or "",
        single_user=bool(_int(server["is_single_user"])),
        data_path=_text(server["data_path"]) or None,
        log_path=_text(server["log_path"]) or None,
        is_sysadmin=_int(server["is_sysadmin"]) == 1,
        is_dbcreator=_int(server["is_dbcreator"]) == 1,
        can_create_database=_int(server["can_create_database"]) == 1,
        databases=databases,
        files=files,
        volumes=volumes,
        credentials=credentials,
        probes=parse_probes(probes, results[6:]),
    )


# -- where one database stands -------------------------------------------------------------------------


def position_batch(database: str) -> str:
    name = quote_literal(database)
    return ";\n".join(
        [
            "SELECT d.database_id, d.state, d.user_access, d.is_in_standby, d.compatibility_level, "
            f"SUSER_SNAME(d.owner_sid) AS owner_name FROM sys.databases AS d WHERE d.name = {name}",
            "SELECT mf.file_id, mf.type, mf.name, mf.physical_name, mf.redo_start_lsn, "
            f"mf.redo_start_fork_guid FROM sys.master_files AS mf WHERE mf.database_id = DB_ID({name})",
            _history("TOP (1)", f"rh.destination_database_name = {name} AND rh.restore_type = N'D'"),
            _history(f"TOP ({HISTORY_ROWS})", f"rh.destination_database_name = {name}"),
        ]
    )


def _history(top: str, where: str) -> str:
    return (
        f"SELECT {top} rh.restore_history_id, rh.restore_type, rh.recovery, bs.backup_set_uuid, "
        "bs.first_lsn, bs.last_lsn, bs.family_guid, bs.last_recovery_fork_guid\n"
        "FROM msdb.dbo.restorehistory AS rh\n"
        "INNER JOIN msdb.dbo.backupset AS bs ON bs.backup_set_id = rh.backup_set_id\n"
        f"WHERE {where}\nORDER BY rh.restore_history_id DESC"
    )


@dataclass(frozen=True)
class Restored:
    """One row of msdb's restore history joined to its backupset row."""

    history_id: int
    restore_type: str  # D full, I differential, L log
    recovery: bool
    backup_set_guid: str | None
    first_lsn: int
    last_lsn: int
    family_guid: str | None


@dataclass(frozen=True)
class Position:
    """Where the database stands on the target, read from the target."""

    exists: bool
    state: int | None = None
    user_access: int | None = None
    is_in_standby: bool = False
    compatibility_level: int | None = None
    owner: str | None = None
    files: tuple[FileRow, ...] = ()
    redo_lsn: int | None = None  # the next LSN a log backup must cover (sys.master_files.redo_start_lsn)
    redo_fork: str | None = None
    last_full: Restored | None = None
    recent: tuple[Restored, ...] = ()  # newest first

    @property
    def restoring(self) -> bool:
        return self.exists and (self.state == RESTORING or self.is_in_standby)

    @property
    def online(self) -> bool:
        return self.exists and self.state == ONLINE and not self.is_in_standby

    @property
    def since_full(self) -> list[Restored]:
        """The recent rows of the current restore sequence, oldest first."""
        start = self.last_full.history_id if self.last_full else 0
        return sorted((r for r in self.recent if r.history_id >= start), key=lambda r: r.history_id)

    @property
    def last_restored(self) -> Restored | None:
        rows = self.since_full
        return rows[-1] if rows else None

    @property
    def applied(self) -> frozenset[str]:
        return frozenset(r.backup_set_guid for r in self.since_full if r.backup_set_guid)


def _restored(row: Mapping[str, Any]) -> Restored:
    return Restored(
        history_id=_int(row["restore_history_id"]),
        restore_type=(_text(row["restore_type"]) or "").upper(),
        recovery=bool(_int(row["recovery"])),
        backup_set_guid=guid(row["backup_set_uuid"]),
        first_lsn=_int(row["first_lsn"]),
        last_lsn=_int(row["last_lsn"]),
        family_guid=guid(row["family_guid"]),
    )


def parse_position(results: Sequence[ResultSet]) -> Position:
    if len(results) != 4:
        raise ValueError(f"the position batch gave {len(results)} result sets, not 4")
    rows = results[0].dicts()
    if not rows:
        return Position(False)
    db = rows[0]
    files = []
    redo: list[int] = []
    forks: list[str] = []
    for r in results[1].dicts():
        files.append(
            FileRow(
                _int(db["database_id"]),
                _int(r["file_id"]),
                _int(r["type"]),
                _text(r["name"]) or "",
                _text(r["physical_name"]) or "",
                0,
            )
        )
        if r["redo_start_lsn"] is not None:
            redo.append(_int(r["redo_start_lsn"]))
            fork = guid(r["redo_start_fork_guid"])
            if fork:
                forks.append(fork)
    full = results[2].dicts()
    return Position(
        exists=True,
        state=_int(db["state"]),
        user_access=_int(db["user_access"]),
        is_in_standby=bool(_int(db["is_in_standby"])),
        compatibility_level=_opt_int(db["compatibility_level"]),
        owner=_text(db["owner_name"]),
        files=tuple(files),
        # Every file of a database being restored waits at the same point; the lowest is the safe one.
        redo_lsn=min(redo) if redo else None,
        redo_fork=forks[0] if forks else None,
        last_full=_restored(full[0]) if full else None,
        recent=tuple(_restored(r) for r in results[3].dicts()),
    )


# -- what the target's reading of backup devices depends on ------------------------------------------------

# Asked on their own, apart from the facts batch, so that a build or a login that cannot answer one of them
# loses only that fact. sys.dm_os_host_info exists from SQL Server 2017 on; 2016 and older run on Windows
# only. https://learn.microsoft.com/sql/relational-databases/system-dynamic-management-views/sys-dm-os-host-info-transact-sql
# sys.credentials shows rows only to a login with VIEW ANY DEFINITION or ALTER ANY CREDENTIAL: without
# either, an empty answer says nothing about what exists.
# https://learn.microsoft.com/sql/relational-databases/system-catalog-views/sys-credentials-transact-sql
CREDENTIAL_RIGHTS = (
    "SELECT HAS_PERMS_BY_NAME(NULL, NULL, 'ALTER ANY CREDENTIAL') AS can_alter_credentials, "
    "HAS_PERMS_BY_NAME(NULL, NULL, 'VIEW ANY DEFINITION') AS can_view_definitions"
)
HOST_PLATFORM = "SELECT host_platform FROM sys.dm_os_host_info"


@dataclass(frozen=True)
class DeviceFacts:
    """The platform the instance runs on ("Windows", "Linux"; None when unknown) and whether the login may
    create and alter credentials (sysadmin, or ALTER ANY CREDENTIAL)."""

    platform: str | None = None
    can_alter_credentials: bool = False
    can_view_credentials: bool = False  # VIEW ANY DEFINITION or ALTER ANY CREDENTIAL: sees all of them


def parse_platform(results: Sequence[ResultSet], major: int) -> str | None:
    rows = results[0].rows if results else []
    if rows and rows[0][0]:
        text = str(rows[0][0]).strip().lower()
        return "Linux" if "linux" in text else "Windows" if "windows" in text else None
    return "Windows" if 0 < major < 14 else None


def parse_credential_rights(results: Sequence[ResultSet]) -> tuple[bool, bool]:
    """(may alter credentials, sees every row of sys.credentials)."""
    rows = results[0].rows if results else []
    if not rows:
        return False, False
    alter = _int(rows[0][0]) == 1
    view = len(rows[0]) > 1 and _int(rows[0][1]) == 1
    return alter, alter or view
