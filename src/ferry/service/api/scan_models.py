"""The models of `/api/v1/scans`: a scan's request, its job, and the plan it returns, which is the contract
of `ferry plan --json` (docs/engines.md: keys are only ever added)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from ferry.service.api.errors import ErrorDetail
from ferry.service.api.models import NO_NUL, Database, _storable

MAX_WAIT = 60.0
# An ISO 8601 date and time (the source server's local time, or with an offset), or `lsn:` and an LSN as
# RESTORE HEADERONLY prints it (SQL Server) or X/Y (PostgreSQL).
STOP_AT_PATTERN = (
    r"^(lsn:([0-9]{1,25}|[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8})"
    r"|[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}:[0-9]{2})?)?)$"
)
StopAt = Annotated[str, StringConstraints(pattern=STOP_AT_PATTERN), AfterValidator(_storable)]


class ScanIn(BaseModel):
    """A store to scan: what it holds, per database, and how far each can be restored."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={"examples": [{"location": "/backups/sql01", "database": ["Sales"]}]},
    )

    location: Annotated[str, AfterValidator(_storable)] = Field(
        min_length=1,
        max_length=4096,
        pattern=NO_NUL,
        description="Store URL or path, as for a migration's source; a password in it is never shown.",
    )
    database: list[Database] = Field(
        [], max_length=1000, description="Only these databases (case-insensitive); every one when empty."
    )
    stop_at: StopAt | None = Field(
        None, description="Plan the restore to this point: an ISO 8601 time, or lsn:<LSN>."
    )
    wait_seconds: float = Field(
        10.0,
        ge=0,
        le=MAX_WAIT,
        description="How long the request waits for the scan to end: the answer then carries the plan "
        "(200). A scan that takes longer goes on; the answer (202) names it, to poll with GET.",
    )


class FindingOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    code: str
    severity: Literal["error", "warning", "info"]
    message: str
    hint: str
    files: list[str]


class PlanStepOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    kind: str = Field(description="full, diff or log")
    files: list[str]
    first_lsn: str | None = None
    last_lsn: str | None = None
    stop_at: str | None = None


class PlanDatabaseOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    server: str
    engine: str
    family_guid: str | None = None
    restores_to: str | None = None
    restores_to_lsn: str | None = None
    executable: bool = Field(description="It has steps and no error finding: a migration of it can start.")
    steps: list[PlanStepOut]
    findings: list[FindingOut]


class PlanOut(BaseModel):
    """`ferry plan --json`: per database, the chosen restore chain and the findings about it."""

    model_config = ConfigDict(extra="allow")
    version: int
    source: str = Field(description="The location, with any password or secret parameter shown as ***.")
    databases: list[PlanDatabaseOut]
    findings: list[FindingOut] = Field(description="About files and folders of the store.")


class ScanOut(BaseModel):
    """A scan job: running, done (with its plan) or failed (with its error)."""

    id: str
    state: Literal["running", "done", "failed"]
    location: str = Field(description="As given, with any password or secret parameter shown as ***.")
    started_at: str
    finished_at: str | None
    seconds: float = Field(description="How long it ran (so far).")
    plan: PlanOut | None
    error: ErrorDetail | None = Field(description="Why it failed: the store could not be read, a timeout.")


def scan_json(job: Any) -> dict[str, Any]:
    out: dict[str, Any] = job.to_json()
    return out
