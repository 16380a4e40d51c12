"""One model SQL Server instance: its settings, durable state, file system and live sessions."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from tests.mssql_model.catalog import FileSystem, Login, State, load_state, new_sid, now_text, save_state
from tests.mssql_model.media import MediaReader

# SQL Server major version -> the DatabaseVersion its databases have (the rules doc's table).
DATABASE_VERSIONS = {9: 611, 10: 661, 11: 706, 12: 782, 13: 852, 14: 869, 15: 904, 16: 957, 17: 998}
# Oldest DatabaseVersion a server restores: 2012 and 2014 read 2005 backups, 2016 and later 2008 ones.
OLDEST_RESTORABLE = {11: 611, 12: 611}
DEFAULT_OLDEST = 655
DEFAULT_LOGIN = "sa:Model-Passw0rd:sysadmin"
LINUX_DATA = "/var/opt/mssql/data/"
PLATFORMS = ("linux", "windows")
# Server permissions a login may hold without sysadmin, given as role-like tokens in `--login`.
PERMISSION_TOKENS = {
    "alter-any-credential": "ALTER ANY CREDENTIAL",
    "view-any-definition": "VIEW ANY DEFINITION",
}


@dataclass
class Config:
    state_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    version: str = "15.0.2000.5"
    edition: str = "Developer Edition (64-bit)"
    engine_edition: int = 3
    instance: str | None = None
    machine: str = "MSSQLMODEL"
    logins: list[str] = field(default_factory=lambda: [DEFAULT_LOGIN])
    restore_mbps: float = 200.0
    min_restore_seconds: float = 0.05
    # Seconds a RESTORE of a kind ("FULL", "DIFF", "LOG") takes at least, whatever its size: crash tests
    # set it on a running model so that a kill lands in the middle of the statement they choose.
    hold: dict[str, float] = field(default_factory=dict)
    # The state file is written and synced after every change. Off (benchmarks, where it is not what is
    # looked at): written twice a second and when the server stops; rewriting it per change costs more
    # than the restores once an instance holds hundreds of databases.
    durable: bool = True
    free_bytes: dict[str, int] = field(default_factory=dict)
    default_free_bytes: int = 1 << 40
    fs_root: Path | None = None
    data_path: str = LINUX_DATA
    log_path: str = LINUX_DATA
    backup_path: str = "/var/opt/mssql/backup/"
    # The operating system the instance runs on: what @@VERSION and sys.dm_os_host_info say, and whether
    # UNC paths are read (Windows only). On Windows the default folders are the instance's own.
    platform: str = "linux"
    # The service account's SMB login ("USER:PASSWORD") for UNC devices, and where each UNC host name is
    # served ("NAME" -> "ADDRESS:PORT"): a UNC path has no port, a test Samba has one.
    smb_login: str | None = None
    smb_servers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.platform not in PLATFORMS:
            raise ValueError(f"platform must be one of {', '.join(PLATFORMS)}, not {self.platform!r}")
        if self.platform == "windows":
            major, minor, _ = self.version_tuple
            number = f"{major}_50" if (major, minor) == (10, 50) else str(major)  # 2008 R2: MSSQL10_50
            folder = f"MSSQL{number}.{self.instance or 'MSSQLSERVER'}"
            root = f"C:\\Program Files\\Microsoft SQL Server\\{folder}\\MSSQL\\"
            if self.data_path == LINUX_DATA:
                self.data_path = root + "DATA\\"
            if self.log_path == LINUX_DATA:
                self.log_path = root + "DATA\\"
            if self.backup_path == "/var/opt/mssql/backup/":
                self.backup_path = root + "Backup\\"

    @property
    def smb_credentials(self) -> tuple[str, str] | None:
        if not self.smb_login:
            return None
        user, _, password = self.smb_login.partition(":")
        return user, password

    @property
    def version_tuple(self) -> tuple[int, int, int]:
        parts = [int(p) for p in self.version.split(".")] + [0, 0, 0]
        return parts[0], parts[1], parts[2]

    @property
    def database_version(self) -> int:
        major, minor, _ = self.version_tuple
        if major == 10 and minor < 50:
            return 655
        return DATABASE_VERSIONS.get(major, 904)

    @property
    def oldest_restorable(self) -> int:
        return OLDEST_RESTORABLE.get(self.version_tuple[0], DEFAULT_OLDEST)

    @property
    def compat_levels(self) -> tuple[int, int]:
        major = self.version_tuple[0]
        return (100 if major >= 12 else 90), major * 10

    @property
    def server_name(self) -> str:
        return f"{self.machine}\\{self.instance}" if self.instance else self.machine

    @property
    def root(self) -> Path:
        return self.fs_root or (self.state_dir / "fs")


@dataclass
class Session:
    spid: int
    login: Login
    sock: socket.socket
    host: str = ""
    program: str = ""
    database: str = "master"
    trancount: int = 0
    implicit_transactions: bool = False
    login_time: str = field(default_factory=now_text)
    command: str = "AWAITING COMMAND"
    percent_complete: float = 0.0
    request_start: datetime | None = None
    killed: bool = False
    tds: int = 0x74000004

    def has_role(self, *roles: str) -> bool:
        mine = {r.lower() for r in self.login.roles}
        return "sysadmin" in mine or any(r.lower() in mine for r in roles)

    def has_permission(self, permission: str) -> bool:
        """A server permission: sysadmin holds them all, others the ones their tokens grant."""
        mine = {PERMISSION_TOKENS.get(r.lower()) for r in self.login.roles}
        return self.has_role() or permission.upper() in mine


class Instance:
    """Shared by every connection. `lock` guards `state`, `sessions` and `busy`; `save()` persists."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.lock = threading.RLock()
        self.state: State = load_state(config.state_dir)
        self.fs = FileSystem(config.root, config.backup_path)
        self.media = MediaReader(self.fs)
        self.sessions: dict[int, Session] = {}
        self.dirty = False
        self.busy: dict[str, int] = {}  # database (lower) -> spid running a RESTORE on it
        self._next_spid = 51
        for folder in (config.data_path, config.log_path, config.backup_path):
            self.fs.host(folder).mkdir(parents=True, exist_ok=True)
        self._merge_logins()
        self.save()

    def _merge_logins(self) -> None:
        for spec in self.config.logins:
            name, _, rest = spec.partition(":")
            password, _, roles = rest.partition(":")
            existing = self.state.logins.get(name.lower())
            sid = "01" if name.lower() == "sa" else (existing.sid if existing else new_sid())
            role_list = [r.strip().lower() for r in roles.split(",") if r.strip()]
            self.state.logins[name.lower()] = Login(name, password, role_list, sid)

    def save(self) -> None:
        with self.lock:
            if not self.config.durable:
                self.dirty = True
                return
            save_state(self.config.state_dir, self.state)

    def flush(self) -> None:
        """Write the state file now if a change is not in it yet (durable=False)."""
        with self.lock:
            if self.dirty:
                save_state(self.config.state_dir, self.state)
                self.dirty = False

    def new_spid(self) -> int:
        with self.lock:
            spid = self._next_spid
            self._next_spid += 1
            return spid

    def users_of(self, database: str, but: int | None = None) -> list[Session]:
        with self.lock:
            return [
                s for s in self.sessions.values() if s.database.lower() == database.lower() and s.spid != but
            ]

    def volume_of(self, path: str) -> tuple[str, int]:
        """The configured volume (longest matching prefix) holding `path`, and its total bytes."""
        key = self.fs.key(path)
        best: tuple[str, int] | None = None
        for prefix, size in self.config.free_bytes.items():
            pkey = self.fs.key(prefix).rstrip("/")
            if (key == pkey or key.startswith(pkey + "/") or pkey == "") and (
                best is None or len(prefix) > len(best[0])
            ):
                best = (prefix, size)
        if best is not None:
            return best
        parts = self.fs.parts(path)
        top = (parts[0] + ":\\") if len(parts[0]) == 1 and path[1:2] == ":" else "/"
        return top, self.config.default_free_bytes

    def used_on(self, volume: str) -> int:
        with self.lock:
            return sum(
                f.size
                for db in self.state.databases.values()
                for f in db.files
                if self.volume_of(f.physical_name)[0] == volume
            )

    def available_on(self, volume: str, total: int) -> int:
        return max(0, total - self.used_on(volume))
