"""A SQL Server migration's settings (from the target's options and the migration's own) and the state its
steps hand each other (Prepared.state).

Settings come from `TargetSpec.options` (per target: folders, path mapping, work folder, credentials) and
`MigrationJob.options` (per migration: --replace, --force, --standby, --checkdb...), the migration's
winning. Secrets (the SAS token, a media password) are read from the options or the environment at each
step and never copied into Prepared.state.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ferry.engines.base import MigrationJob, Prepared
from ferry.engines.sqlserver.devices import PathMap

SAS_ENV = "FERRY_MSSQL_SAS"
MEDIA_PASSWORD_ENV = "FERRY_MSSQL_MEDIA_PASSWORD"


def parse_mapping(value: str | Sequence[str]) -> tuple[str, str]:
    """`LOCAL=TARGET` (or a [local, target] pair): how the target server sees the store's files. LOCAL may be
    any store location (a path, az://..., a blob URL, smb://..., s3://...)."""
    m = PathMap.parse(value)
    return m.local_text, m.target


@dataclass(frozen=True)
class Settings:
    data_dir: str | None = None
    log_dir: str | None = None
    path_map: tuple[PathMap, ...] = ()
    replace: bool = False
    yes: bool = False
    force: bool = False
    standby: str | None = None  # the undo file: logs are applied WITH STANDBY (read-only between logs)
    checkdb: bool = False
    stats: int = 10
    checksum: bool = True
    buffer_count: int | None = None
    max_transfer_size: int | None = None
    credential: str | None = None  # SQL Server 2012/2014: the storage key credential for URL devices
    wait_single_user: bool = True
    login_timeout: int = 15
    options: Mapping[str, Any] = field(default_factory=dict)  # all of them, for the work folder etc.

    @staticmethod
    def of(job: MigrationJob) -> Settings:
        o: dict[str, Any] = {**dict(job.target.options), **dict(job.options)}
        maps = o.get("backup_path_as") or ()
        if isinstance(maps, str):
            maps = [maps]
        standby = o.get("standby")
        return Settings(
            data_dir=o.get("data_dir") or None,
            log_dir=o.get("log_dir") or o.get("data_dir") or None,
            path_map=tuple(PathMap.parse(m) for m in maps),
            replace=bool(o.get("replace")),
            yes=bool(o.get("yes")),
            force=bool(o.get("force")),
            standby=str(standby) if standby else None,
            checkdb=bool(o.get("checkdb")),
            stats=int(o.get("stats", 10)),
            checksum=bool(o.get("checksum", True)),
            buffer_count=o.get("buffer_count"),
            max_transfer_size=o.get("max_transfer_size"),
            credential=o.get("credential"),
            wait_single_user=bool(o.get("wait_single_user", True)),
            login_timeout=int(o.get("login_timeout", 15)),
            options=o,
        )

    @property
    def sas(self) -> str | None:
        return self.options.get("sas_token") or os.environ.get(SAS_ENV) or None

    @property
    def media_password(self) -> str | None:
        """The media password: the option, else the variable named by `media_password_env`
        (--media-password-env), else FERRY_MSSQL_MEDIA_PASSWORD. Never taken from a command line."""
        env = str(self.options.get("media_password_env") or MEDIA_PASSWORD_ENV)
        return self.options.get("media_password") or os.environ.get(env) or None


@dataclass(frozen=True)
class BaseStep:
    """A full or differential backup to restore, as prepared: its statement is exact T-SQL."""

    kind: str
    files: list[str]
    devices: list[str]
    backup_set_guid: str
    first_lsn: int
    last_lsn: int
    size: int
    statement: str


@dataclass(frozen=True)
class SqlState:
    """Prepared.state of a SQL Server migration: JSON-friendly and bounded (no list of logs)."""

    url: str
    database: str  # on the target
    source_server: str
    source_database: str
    family_guid: str | None
    base: list[BaseStep]
    moves: dict[str, str]
    plan_end_lsn: int  # where the chain planned at prepare ends
    last_log: str | None  # the plan's last log file at prepare
    history_floor: int  # restore history rows of this name before the migration: not ours
    target_major: int
    stop_at: str | None = None
    close_sessions: bool = False
    replace: bool = False  # the full backup's statement says REPLACE
    target_platform: str | None = None  # Windows, Linux; None when the target did not say

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["plan_end_lsn"] = str(self.plan_end_lsn)  # numeric(25,0) exceeds what JSON readers keep exact
        for step in doc["base"]:
            step["first_lsn"], step["last_lsn"] = str(step["first_lsn"]), str(step["last_lsn"])
        return doc

    @staticmethod
    def of(prepared: Prepared) -> SqlState:
        raw = dict(prepared.state)
        base = [
            BaseStep(**{**b, "first_lsn": int(b["first_lsn"]), "last_lsn": int(b["last_lsn"])})
            for b in raw.pop("base")
        ]
        return SqlState(**{**raw, "base": base, "plan_end_lsn": int(raw["plan_end_lsn"])})

    @property
    def full(self) -> BaseStep:
        return self.base[0]

    @property
    def diff(self) -> BaseStep | None:
        return self.base[1] if len(self.base) > 1 else None
