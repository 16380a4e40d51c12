"""The API's request and answer models (pydantic lives here, at the edge).

The JSON schema of each request model says what the API accepts, rules across fields included (a
`last_backup` only offline; `ids` or `all_ready`, not both and not neither): a body the schema allows is
one the routes take, short of facts the schema cannot know (a name in use, a migration's state).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    RootModel,
    StringConstraints,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from ferry.core.migration import State
from ferry.service.contracts import NAME_PATTERN, MigrationRequest

MAX_BATCH = 1000
MAX_CUTOVER = 10 * MAX_BATCH
# PostgreSQL X/Y (hex), SQL Server as RESTORE HEADERONLY prints it (decimal) or as its three parts. ASCII
# digits only: `\d` would take any script's digits.
LSN_PATTERN = r"^([0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}|[0-9]{1,25}|[0-9]{1,10}:[0-9]{1,10}:[0-9]{1,10})$"
NO_NUL = r"^[^\x00]*$"  # no store and no database keeps a NUL character in a name


def _storable(value: str) -> str:
    """A lone surrogate (`"\\ud800"` in JSON) is not text: no database stores it, so it is refused here."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("holds a lone surrogate (\\ud800-\\udfff), which is not text") from None
    return value


Ref = Annotated[str, StringConstraints(pattern=NAME_PATTERN), AfterValidator(_storable)]
Lsn = Annotated[str, StringConstraints(pattern=LSN_PATTERN), AfterValidator(_storable)]
# Constraints on the string itself (not on an optional field), so that the schema carries them too.
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN), AfterValidator(_storable)]
FileName = Annotated[
    str, StringConstraints(min_length=1, max_length=1024, pattern=NO_NUL), AfterValidator(_storable)
]
# A database's name as its engine has it (SQL Server: sysname, up to 128 characters; PostgreSQL: a
# cluster's system identifier).
Database = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=NO_NUL), AfterValidator(_storable)
]


def _migration_schema(schema: dict[str, Any]) -> None:
    # last_backup ends an offline migration: either the mode is offline, or there is no last_backup.
    schema["anyOf"] = [
        {"properties": {"mode": {"const": "offline"}}, "required": ["mode"]},
        {"properties": {"last_backup": {"type": "null"}}},
    ]


class MigrationIn(BaseModel):
    """One migration to create."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra=_migration_schema,
    )

    source: Annotated[str, AfterValidator(_storable)] = Field(
        min_length=1, max_length=4096, pattern=NO_NUL, description="Store URL or path of the backups."
    )
    target: Annotated[str, AfterValidator(_storable)] = Field(
        min_length=1, max_length=128, pattern=NO_NUL, description="Name of a target the service knows."
    )
    mode: Literal["online", "offline"] = "online"
    name: Name | None = Field(
        None, description="Unique; default: the database's name, else the source folder's, numbered."
    )
    last_backup: FileName | None = Field(None, description="Offline only: stop after restoring this file.")
    database: Database | None = Field(
        None,
        description="Which database of the source's store (SQL Server: its name; PostgreSQL: the cluster's "
        "system identifier); leave it out when the store holds one. `POST /api/v1/scans` lists them.",
    )

    @model_validator(mode="after")
    def _last_backup_is_offline(self) -> MigrationIn:
        if self.last_backup is not None and self.mode != "offline":
            raise ValueError("last_backup ends an offline migration; set mode to offline or drop it")
        return self

    def request(self) -> MigrationRequest:
        return MigrationRequest(
            self.source, self.target, self.mode, self.name, self.last_backup, self.database
        )


class CreateBody(RootModel[list[MigrationIn]]):
    """One migration object, a list of them, or {"migrations": [...]}: all created, or none."""

    root: list[MigrationIn] = Field(min_length=1, max_length=MAX_BATCH)

    @model_validator(mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return value["migrations"] if set(value) == {"migrations"} else [value]
        return value

    @classmethod
    def __get_pydantic_json_schema__(cls, core: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        many = dict(handler.resolve_ref_schema(handler(core)))
        for key in ("title", "description"):
            many.pop(key, None)
        item = many.get("items", {})
        batch = {
            "type": "object",
            "properties": {"migrations": many},
            "required": ["migrations"],
            "additionalProperties": False,
        }
        return {"title": "CreateBody", "description": cls.__doc__, "anyOf": [item, many, batch]}


def _cutover_schema(schema: dict[str, Any]) -> None:
    # Either named migrations or every ready one: not both, and not neither.
    schema["oneOf"] = [
        {
            "properties": {"ids": {"minItems": 1}, "all_ready": {"const": False}},
            "required": ["ids"],
        },
        {
            "properties": {"ids": {"maxItems": 0}, "all_ready": {"const": True}},
            "required": ["all_ready"],
        },
    ]
    schema["examples"] = [{"ids": ["mig-k3xq7d2m4a"], "final_lsn": {"mig-k3xq7d2m4a": "0/3000060"}}]


class CutoverIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_cutover_schema)

    ids: list[Ref] = Field([], max_length=MAX_CUTOVER, description="Migrations to cut over (ids or names).")
    all_ready: bool = Field(False, description="Every migration in ReadyForCutover (instead of ids).")
    final_lsn: dict[Ref, Lsn] = Field(
        {},
        max_length=MAX_CUTOVER,
        description="Per migration of `ids` (id or name): replay at least to this LSN before cutting over.",
        json_schema_extra={"additionalProperties": False},  # keys are ids or names, nothing else
    )
    last_backup: dict[Ref, FileName] = Field(
        {},
        max_length=MAX_CUTOVER,
        description="Per migration of `ids` (id or name): wait for this log backup (the tail-log backup, by "
        "file name or store key) and restore it last (SQL Server).",
        json_schema_extra={"additionalProperties": False},
    )


# A file's status. PostgreSQL's WAL segments: arrived, restoring, restored, skipped. SQL Server's backups,
# in the words of Azure DMS: Arrived (a log before it is missing), Queued, Restoring, Restored, Skipped
# (with the reason), Held (still being written).
FileStatus = Literal[
    "arrived", "restoring", "restored", "skipped",
    "Arrived", "Queued", "Restoring", "Restored", "Skipped", "Held",
]  # fmt: skip


class BackupFileOut(BaseModel):
    name: str
    status: FileStatus
    reason: str | None = Field(None, description="Why a file was skipped or held.")
    size: int | None = Field(None, description="Bytes (log backups).")


class BackupSetOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    kind: str = Field(description="full, diff or log")
    files: list[BackupFileOut] = Field(
        [], description="Its files; for a long log backup set, a window around the replay position."
    )
    counts: dict[str, int] | None = Field(
        None, description="Log backups: how many files have each status, over the whole set."
    )
    shown: int | None = Field(None, description="Log backups: how many of them `files` lists.")
    # SQL Server: one set per backup, with its own status.
    status: FileStatus | None = Field(None, description="SQL Server: the backup's status.")
    reason: str | None = Field(None, description="SQL Server: why it is skipped, held or waiting.")
    backup_set_id: str | None = Field(None, description="SQL Server: its BackupSetGUID.")
    first_lsn: str | None = None
    last_lsn: str | None = None
    finished: str | None = Field(None, description="SQL Server: when the backup finished, on the source.")
    size: int | None = Field(None, description="SQL Server: bytes of the backup's files.")


class StatusDetailsOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    full_backup_restored: bool | None = None
    backup_sets: list[BackupSetOut] = Field([], description="The active backup sets and their files.")
    database: str | None = Field(None, description="SQL Server: the database's name on the target.")
    last_restored_lsn: str | None = Field(
        None, description="SQL Server: LastLSN of the last backup restored (the target's restore history)."
    )
    counts: dict[str, int] | None = Field(
        None, description="SQL Server: backups restored, pending and skipped (the list is bounded)."
    )
    queued: int | None = Field(None, description="SQL Server: log backups the chain reaches, next in line.")


class StatusOut(BaseModel):
    """The latest progress a migration's workflow reported (empty until it starts)."""

    model_config = ConfigDict(extra="allow")
    state: str | None = None
    phase: str | None = None
    source_position: str | None = None
    target_position: str | None = None
    lag_bytes: int | None = Field(None, description="How far the target is behind, in LSN (bytes).")
    lag_seconds: float | None = None
    pending_files: int | None = Field(None, description="Log backups (WAL files) not restored yet.")
    pending_bytes: int | None = None
    bytes_done: int | None = None
    bytes_total: int | None = None
    throughput: float | None = Field(None, description="Bytes per second of the current phase.")
    current_file: str | None = Field(None, description="The file being restored.")
    last_file: str | None = Field(None, description="The last file restored.")
    blocked_reason: str | None = Field(None, description="Why restoring cannot go on, when it cannot.")
    cutover_estimate_seconds: float | None = Field(
        None, description="Pending bytes over the measured restore rate."
    )
    details: StatusDetailsOut | None = None


class MigrationOut(BaseModel):
    id: str
    name: str
    source: str = Field(description="As given, with any password or secret parameter shown as ***.")
    database: str | None = Field(None, description="Which database of the source's store (null: its only).")
    target: str
    mode: Literal["online", "offline"]
    state: State
    last_backup: str | None
    status: StatusOut
    error: str | None
    attempt: int
    created_at: str
    updated_at: str


class MigrationList(BaseModel):
    migrations: list[MigrationOut]


class MigrationOne(BaseModel):
    migration: MigrationOut


class EventOut(BaseModel):
    migration_id: str
    seq: int
    at: str
    kind: str = Field(description="state, step, info or error")
    message: str
    data: dict[str, Any]


class EventList(BaseModel):
    events: list[EventOut]
    last_seq: int = Field(description="Pass it back as `after` to get only newer events.")


class CutoverAccepted(BaseModel):
    id: str
    name: str
    state: State
    final_lsn: str | None = None
    last_backup: str | None = None


class CutoverRejected(BaseModel):
    id: str
    name: str
    state: State
    code: str
    reason: str


class CutoverOut(BaseModel):
    accepted: list[CutoverAccepted]
    rejected: list[CutoverRejected]


class VolumeOut(BaseModel):
    mount_point: str
    total_bytes: int | None = None
    available_bytes: int | None = None


class TargetFactsOut(BaseModel):
    """What the target's agent last read from the target itself (at most once a minute)."""

    model_config = ConfigDict(extra="allow")
    read_at: str | None = Field(None, description="When the agent read them.")
    error: str | None = Field(None, description="Why the last read failed (the facts before it stay).")
    version: str | None = Field(None, description="SQL Server: ProductVersion.")
    edition: str | None = None
    instance: str | None = Field(None, description="SQL Server: the instance's name (null: the default one).")
    server_name: str | None = None
    data_path: str | None = Field(None, description="SQL Server: the instance's default data folder.")
    log_path: str | None = Field(None, description="SQL Server: the instance's default log folder.")
    volumes: list[VolumeOut] = Field([], description="Volumes that hold database files, with free space.")
    free_bytes: int | None = Field(None, description="Free bytes on the volume of the default data folder.")


class TargetOut(BaseModel):
    name: str
    engine: str = Field(description="sqlserver or postgres: which migrator restores onto it.")
    host: str | None = Field(description="The host its agent runs on.")
    description: str
    location: str | None = Field(None, description="The instance (mssql://...) or the folder it restores to.")
    concurrency: int | None = Field(None, description="Full backups it restores at once.")
    agent: bool = Field(False, description="Whether an agent serves it (registered itself).")
    running: int = Field(0, description="Its migrations not finished (not Succeeded, Failed or Canceled).")
    restoring: int = Field(0, description="Its migrations restoring a full backup now (RestoringFull).")
    facts: TargetFactsOut | None = Field(
        None, description="Read from the target by its agent (null: not yet)."
    )


class TargetList(BaseModel):
    targets: list[TargetOut]


class Health(BaseModel):
    status: Literal["ok"]
    version: str
