"""The REST API (FastAPI, OpenAPI at /openapi.json and /docs), under /api/v1.

It depends on the StateStore and Orchestrator protocols only. Pydantic lives here, at the edge: request
bodies are validated into models, turned into the contract's dataclasses, and records go out as their
`to_json()`.

Decisions (docs/service.md says the same to users):
- Every route but /healthz, /openapi.json and /docs needs the bearer token, reads included: a migration's
  source URL and events are not for everyone on the network.
- One error shape for everything, FastAPI's own errors included: {"error": {"code", "message", "hint",
  "details"}}. Malformed input is 400 (not FastAPI's 422), a wrong token 401, an unknown id 404, an
  operation the migration's state refuses 409, an orchestrator that cannot be reached 503, a bug 500.
- Cutover is accepted in ReadyForCutover and in RestoringLogs (the workflow first replays what is left,
  then cuts over); `all_ready` takes the ReadyForCutover ones only. Everything else is refused with a
  reason, per migration.
- Cancel and cutover are requests (202): the workflow moves the migration to Canceled / CuttingOver when
  it acts. Retry moves a Failed migration to Queued here, then asks the orchestrator to run it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, Literal, ParamSpec, Protocol, TypeVar, runtime_checkable

from anyio import to_thread
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, RootModel, model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema
from starlette.exceptions import HTTPException as StarletteHTTPException

from ferry import __version__
from ferry.core.migration import TRANSITIONS, InvalidTransition, State
from ferry.service.contracts import MigrationRecord, MigrationRequest, Orchestrator, StateStore

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
MAX_BATCH = 1000
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
# PostgreSQL X/Y (hex), SQL Server as RESTORE HEADERONLY prints it (decimal) or as its three parts.
LSN_RE = re.compile(r"^([0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}|\d{1,25}|\d+:\d+:\d+)$")
CUTOVER_STATES = frozenset({State.RESTORING_LOGS, State.READY_FOR_CUTOVER})
TOKEN_HINT = (
    "send 'Authorization: Bearer TOKEN' with the token `ferry serve` printed on its first start "
    "(the CLI reads FERRY_TOKEN or --token); `ferry serve --reset-token` makes a new one"
)

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class TargetInfo:
    """A target the service knows: its agent's task queue is derived from the name."""

    name: str
    engine: str = "postgres"
    host: str | None = None
    description: str = ""


@runtime_checkable
class NameLookup(Protocol):
    """Optional: a store that finds a migration by its name too (SqlStateStore does)."""

    def get_by_name(self, name: str) -> MigrationRecord | None: ...


# -- the error shape ---------------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        hint: str = "",
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.hint = status, code, message, hint
        self.details, self.headers = details, headers


def error_body(code: str, message: str, hint: str = "", details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "hint": hint, "details": details}}


def _error_response(exc: ApiError) -> JSONResponse:
    body = error_body(exc.code, exc.message, exc.hint, exc.details)
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "wrong_state",
    413: "too_large",
    415: "unsupported_media_type",
}


def _loc(parts: tuple[int | str, ...] | list[int | str]) -> str:
    text = ""
    for p in parts:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else str(p))
    return text


def _validation_error(exc: RequestValidationError) -> ApiError:
    errors = [
        {"location": _loc(e.get("loc", ())), "message": str(e.get("msg", "")).removeprefix("Value error, ")}
        for e in exc.errors()
    ]  # no "input": it may be large, and it is the caller's own data anyway
    broken = next((e for e in exc.errors() if e.get("type") == "json_invalid"), None)
    if broken is not None:
        where = [p for p in broken.get("loc", ()) if isinstance(p, int)]
        at = f" (at character {where[0]})" if where else ""
        return ApiError(
            400,
            "invalid_json",
            f"the request body is not valid JSON{at}",
            "send a JSON document with Content-Type: application/json",
        )
    first = errors[0] if errors else {"location": "request", "message": "invalid"}
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return ApiError(
        400,
        "invalid_request",
        f"{first['location']}: {first['message']}{more}",
        "see the request's schema in the OpenAPI document at /docs",
        errors,
    )


def _install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return _error_response(exc)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _error_response(_validation_error(exc))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else f"HTTP {exc.status_code}"
        if exc.status_code == 404:
            message, hint = f"no route {request.method} {request.url.path}", f"the API is under {PREFIX}"
        elif exc.status_code == 405:
            message, hint = f"{request.method} is not allowed on {request.url.path}", "see /docs"
        else:
            hint = ""
        return _error_response(
            ApiError(exc.status_code, code, message, hint, headers=dict(exc.headers or {}))
        )

    async def on_transition(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, InvalidTransition)
        return _error_response(ApiError(409, "wrong_state", exc.message, exc.hint))

    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        # The message is not sent: it may name internals (a database URL). The log has it all.
        log.exception("internal error answering %s %s", request.method, request.url.path)
        return _error_response(
            ApiError(
                500,
                "internal",
                f"internal error ({type(exc).__name__})",
                "this is a bug in Ferry; the server's log has the details, please report it",
            )
        )

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(InvalidTransition, on_transition)
    app.add_exception_handler(Exception, on_bug)


# -- models at the edge ------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, for programs: invalid_request, unknown_target, not_found, ...")
    message: str = Field(description="What failed, on which object.")
    hint: str = Field(description="What to do about it (may be empty).")
    details: Any = Field(None, description="Per-item specifics: validation errors, rejected ids.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class MigrationIn(BaseModel):
    """One migration to create."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={"examples": [{"source": "/backups/pg/sales", "target": "pg-east-1"}]},
    )

    source: str = Field(min_length=1, max_length=4096, description="Store URL or path of the backups.")
    target: str = Field(min_length=1, max_length=128, description="Name of a target the service knows.")
    mode: Literal["online", "offline"] = "online"
    name: str | None = Field(
        None, pattern=NAME_PATTERN, description="Unique; default: the source folder's name, numbered."
    )
    last_backup: str | None = Field(
        None, min_length=1, max_length=1024, description="Offline only: stop after restoring this file."
    )

    @model_validator(mode="after")
    def _last_backup_is_offline(self) -> MigrationIn:
        if self.last_backup is not None and self.mode != "offline":
            raise ValueError("last_backup ends an offline migration; set mode to offline or drop it")
        return self

    def request(self) -> MigrationRequest:
        return MigrationRequest(self.source, self.target, self.mode, self.name, self.last_backup)


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
        batch = {"type": "object", "properties": {"migrations": many}, "required": ["migrations"]}
        return {"title": "CreateBody", "description": cls.__doc__, "anyOf": [item, many, batch]}


class BackupFileOut(BaseModel):
    name: str
    status: Literal["arrived", "restoring", "restored", "skipped"]
    reason: str | None = Field(None, description="Why a file was skipped.")
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


class StatusDetailsOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    full_backup_restored: bool | None = None
    backup_sets: list[BackupSetOut] = Field([], description="The active backup sets and their files.")


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
    source: str
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


class CutoverIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"ids": ["mig-k3xq7d2m4a"], "final_lsn": {"mig-k3xq7d2m4a": "0/3000060"}}]
        },
    )

    ids: list[str] = Field([], max_length=10 * MAX_BATCH, description="Migrations to cut over.")
    all_ready: bool = Field(False, description="Every migration in ReadyForCutover (instead of ids).")
    final_lsn: dict[str, str] = Field(
        {}, description="Per id: replay at least to this LSN before cutting over."
    )


class CutoverAccepted(BaseModel):
    id: str
    name: str
    state: State
    final_lsn: str | None = None


class CutoverRejected(BaseModel):
    id: str
    name: str
    state: State
    code: str
    reason: str


class CutoverOut(BaseModel):
    accepted: list[CutoverAccepted]
    rejected: list[CutoverRejected]


class TargetOut(BaseModel):
    name: str
    engine: str
    host: str | None
    description: str


class TargetList(BaseModel):
    targets: list[TargetOut]


class Health(BaseModel):
    status: Literal["ok"]
    version: str


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "Malformed or unusable input",
        401: "Missing or wrong bearer token",
        404: "Unknown migration",
        409: "The migration's state does not allow it",
        503: "The orchestrator could not be reached",
    }
    return {c: {"model": ErrorResponse, "description": text[c]} for c in codes}


# -- routes -------------------------------------------------------------------------------------------


async def _db(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a (blocking) store call in a worker thread: the event loop keeps serving other requests."""
    return await to_thread.run_sync(partial(fn, *args, **kwargs))


def _json(record: MigrationRecord) -> dict[str, Any]:
    return record.to_json()


def _cutover_refusal(record: MigrationRecord) -> str | None:
    """Why `record` cannot be cut over now, or None when it can."""
    s = record.state
    if s in CUTOVER_STATES:
        return None
    if s in (State.QUEUED, State.VALIDATING, State.RESTORING_FULL):
        return f"'{record.name}' is {s.value}: a cutover is possible once its full backup is restored"
    if s is State.CUTTING_OVER:
        return f"'{record.name}' is already cutting over"
    if s is State.FAILED:
        return f"'{record.name}' failed ({record.error or 'see its events'}); retry it first"
    return f"'{record.name}' is {s.value} and final"


def _cancel_refusal(record: MigrationRecord) -> str | None:
    if State.CANCELED in TRANSITIONS[record.state]:
        return None
    if record.state is State.CUTTING_OVER:
        return f"'{record.name}' is cutting over, which cannot be stopped half way; wait for it to end"
    if record.state is State.FAILED:
        return f"'{record.name}' failed and is not running: there is nothing to cancel"
    return f"'{record.name}' is {record.state.value} and final"


class _Routes:
    def __init__(
        self, store: StateStore, orchestrator: Orchestrator, targets: Mapping[str, TargetInfo] | None
    ) -> None:
        self.store = store
        self.orchestrator = orchestrator
        self.targets = targets

    # -- lookups ---------------------------------------------------------------------------------

    def _find_sync(self, ref: str) -> MigrationRecord | None:
        record = self.store.get(ref)
        if record is None and isinstance(self.store, NameLookup):
            record = self.store.get_by_name(ref)
        return record

    async def _one(self, ref: str) -> MigrationRecord:
        record = await _db(self._find_sync, ref)
        if record is None:
            raise ApiError(
                404,
                "not_found",
                f"no migration '{ref}'",
                "list the migrations: GET /api/v1/migrations or `ferry migrations list`",
            )
        return record

    async def _orchestrate(self, what: str, call: Awaitable[None]) -> None:
        try:
            await call
        except Exception as exc:
            log.warning("orchestrator refused to %s: %s", what, exc)
            raise ApiError(
                503,
                "orchestrator_unavailable",
                f"could not {what}: {exc}",
                "check that `ferry serve` and its Temporal server are running, then try again",
            ) from None

    # -- handlers --------------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    async def list_targets(self) -> JSONResponse:
        items = [vars(t) for t in (self.targets or {}).values()]
        return JSONResponse({"targets": items})

    async def create(self, body: CreateBody) -> JSONResponse:
        items = body.root
        self._check_targets(items)
        try:
            records = await _db(self.store.create, [i.request() for i in items])
        except ValueError as exc:  # the store refuses the batch as a whole
            code = str(getattr(exc, "code", "invalid_request"))
            raise ApiError(
                409 if code == "name_taken" else 400,
                code,
                str(exc),
                str(getattr(exc, "hint", "")),
                getattr(exc, "details", None),
            ) from None
        await self._start(records)
        return JSONResponse({"migrations": [_json(r) for r in records]}, status_code=201)

    def _check_targets(self, items: list[MigrationIn]) -> None:
        if self.targets is None:
            return  # the store checks them
        unknown = sorted({i.target for i in items} - set(self.targets))
        if unknown:
            known = sorted(self.targets)
            raise ApiError(
                400,
                "unknown_target",
                f"unknown target{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}",
                f"known targets: {', '.join(known)}" if known else "no target is known: start an agent",
                {"unknown": unknown, "known": known},
            )

    async def _start(self, records: list[MigrationRecord]) -> None:
        try:
            await self.orchestrator.start(records)
        except Exception as exc:
            # Recorded but not started: Failed, so that `retry` starts them once Temporal is back.
            message = f"could not start the workflow: {exc}"
            log.warning("orchestrator could not start %d migration(s): %s", len(records), exc)
            await _db(self._fail_all, [r.id for r in records], message)
            raise ApiError(
                503,
                "orchestrator_unavailable",
                f"{len(records)} migration(s) were recorded but could not be started: {exc}",
                "check that `ferry serve` and its Temporal server are running; then retry them "
                "(`ferry migrations retry ID`)",
                {"ids": [r.id for r in records]},
            ) from None

    def _fail_all(self, ids: list[str], message: str) -> None:
        for migration_id in ids:
            # InvalidTransition: its workflow did start after all and moved on; it reports its own fate.
            with contextlib.suppress(InvalidTransition):
                self.store.set_state(migration_id, State.FAILED, error=message)

    async def list_migrations(
        self,
        state: Annotated[State | None, Query(description="Only migrations in this state.")] = None,
        target: Annotated[str | None, Query(description="Only migrations onto this target.")] = None,
    ) -> JSONResponse:
        records = await _db(self.store.find, state, target)
        return JSONResponse({"migrations": [_json(r) for r in records]})

    async def get_migration(self, migration_id: str) -> JSONResponse:
        record = await self._one(migration_id)
        return JSONResponse({"migration": _json(record)})

    async def list_events(
        self,
        migration_id: str,
        after: Annotated[int, Query(ge=0, description="Only events with a larger seq.")] = 0,
    ) -> JSONResponse:
        record = await self._one(migration_id)
        found = await _db(self.store.events, record.id, after)
        last = found[-1].seq if found else after
        return JSONResponse({"events": [e.to_json() for e in found], "last_seq": last})

    async def cancel(self, migration_id: str) -> JSONResponse:
        record = await self._one(migration_id)
        refusal = _cancel_refusal(record)
        if refusal:
            raise ApiError(
                409,
                "wrong_state",
                f"cannot cancel: {refusal}",
                f"see its state and events: `ferry migrations show {record.id}`",
                {"state": record.state.value},
            )
        await self._orchestrate(f"cancel '{record.name}'", self.orchestrator.cancel(record.id))
        await _db(self.store.append_event, record.id, "info", "cancel requested", {"by": "api"})
        return JSONResponse({"migration": _json(record)}, status_code=202)

    async def retry(self, migration_id: str) -> JSONResponse:
        record = await self._one(migration_id)
        if record.state is not State.FAILED:
            raise ApiError(
                409,
                "wrong_state",
                f"cannot retry '{record.name}': it is {record.state.value}, not Failed",
                "only a Failed migration is retried; a running one retries its steps by itself",
                {"state": record.state.value},
            )
        queued = await _db(self.store.set_state, record.id, State.QUEUED)
        try:
            await self._orchestrate(f"retry '{record.name}'", self.orchestrator.retry(record.id))
        except ApiError as exc:
            await _db(self.store.set_state, record.id, State.FAILED, None, exc.message)
            raise
        return JSONResponse({"migration": _json(queued)}, status_code=202)

    async def cutover(self, body: CutoverIn) -> JSONResponse:
        records = await self._cutover_candidates(body)
        _check_lsns(body, records)
        accepted: list[tuple[MigrationRecord, str | None]] = []
        rejected: list[dict[str, Any]] = []
        for r in records:
            refusal = _cutover_refusal(r)
            if refusal:
                rejected.append(_rejection(r, "wrong_state", refusal))
            else:
                accepted.append((r, body.final_lsn.get(r.id) or body.final_lsn.get(r.name)))
        # All at once: one slow workflow does not hold up the signals to the others.
        results = await asyncio.gather(
            *(self.orchestrator.cutover(r.id, lsn) for r, lsn in accepted), return_exceptions=True
        )
        done: list[tuple[MigrationRecord, str | None]] = []
        for (r, lsn), result in zip(accepted, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("orchestrator refused the cutover of %s: %s", r.id, result)
                rejected.append(_rejection(r, "orchestrator_unavailable", f"could not signal: {result}"))
            else:
                done.append((r, lsn))
        await _db(self._record_cutovers, done)
        if not done and rejected and not body.all_ready:
            first = rejected[0]
            status = 503 if all(x["code"] == "orchestrator_unavailable" for x in rejected) else 409
            raise ApiError(
                status,
                first["code"],
                f"no migration was cut over: {first['reason']}",
                "cut over migrations in ReadyForCutover or RestoringLogs; `ferry migrations list "
                "--state ReadyForCutover` shows them",
                {"rejected": rejected},
            )
        out = [{"id": r.id, "name": r.name, "state": r.state.value, "final_lsn": lsn} for r, lsn in done]
        return JSONResponse({"accepted": out, "rejected": rejected}, status_code=202)

    async def _cutover_candidates(self, body: CutoverIn) -> list[MigrationRecord]:
        if body.all_ready and body.ids:
            raise ApiError(
                400,
                "invalid_request",
                "give either ids or all_ready, not both",
                "all_ready cuts over every migration in ReadyForCutover",
            )
        if body.all_ready:
            return await _db(self.store.find, State.READY_FOR_CUTOVER)
        if not body.ids:
            raise ApiError(
                400,
                "invalid_request",
                "nothing to cut over: no ids and no all_ready",
                'send {"ids": ["mig-..."]} or {"all_ready": true}',
            )
        found = await _db(lambda: [(ref, self._find_sync(ref)) for ref in dict.fromkeys(body.ids)])
        unknown = [ref for ref, r in found if r is None]
        if unknown:
            raise ApiError(
                404,
                "not_found",
                f"no migration {', '.join(repr(u) for u in unknown)}",
                "nothing was cut over; list the migrations with `ferry migrations list`",
                {"unknown": unknown},
            )
        unique = {r.id: r for _, r in found if r is not None}
        return list(unique.values())

    def _record_cutovers(self, done: list[tuple[MigrationRecord, str | None]]) -> None:
        for r, lsn in done:
            self.store.append_event(r.id, "info", "cutover requested", {"by": "api", "final_lsn": lsn})


def _rejection(record: MigrationRecord, code: str, reason: str) -> dict[str, Any]:
    return {"id": record.id, "name": record.name, "state": record.state.value, "code": code, "reason": reason}


def _check_lsns(body: CutoverIn, records: list[MigrationRecord]) -> None:
    refs = {r.id for r in records} | {r.name for r in records}
    stray = sorted(k for k in body.final_lsn if k not in refs)
    if stray and not body.all_ready:
        raise ApiError(
            400,
            "invalid_request",
            f"final_lsn names {', '.join(stray)}, which is not in ids",
            "give a final LSN only for migrations you cut over",
        )
    bad = {k: v for k, v in body.final_lsn.items() if not LSN_RE.match(v.strip())}
    if bad:
        ref, value = next(iter(bad.items()))
        raise ApiError(
            400,
            "invalid_request",
            f"final_lsn of '{ref}' is '{value}', which is not an LSN",
            "PostgreSQL: X/Y as pg_switch_wal() prints it; SQL Server: the decimal LSN",
            {"final_lsn": bad},
        )


# -- the app ------------------------------------------------------------------------------------------


_SCHEME = HTTPBearer(auto_error=False, description="The token `ferry serve` printed on its first start.")


def _bearer(token_check: Callable[[str], bool]) -> Callable[..., Awaitable[None]]:
    async def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_SCHEME)],
    ) -> None:
        challenge = {"WWW-Authenticate": "Bearer"}
        if credentials is None:
            raise ApiError(
                401, "unauthorized", "this call needs a bearer token", TOKEN_HINT, headers=challenge
            )
        # Never log or echo the token: the message says only that it did not match.
        if not token_check(credentials.credentials):
            raise ApiError(
                401, "unauthorized", "the bearer token is not valid", TOKEN_HINT, headers=challenge
            )

    return require_token


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document without its 422 answers: validation errors are 400s in the one error shape."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    app.openapi_schema = schema
    return schema


def create_app(
    store: StateStore,
    orchestrator: Orchestrator,
    token_check: Callable[[str], bool],
    targets: Mapping[str, TargetInfo] | None = None,
) -> FastAPI:
    """The API app. `targets`: the targets migrations may go to (None: the store alone decides)."""
    app = FastAPI(
        title="Ferry",
        version=__version__,
        description="Database migrations from native backups: create, watch, cut over. "
        "Every route but /healthz needs `Authorization: Bearer TOKEN`.",
        docs_url="/docs",
        redoc_url=None,
    )
    _install_error_handlers(app)
    routes = _Routes(store, orchestrator, targets)

    open_routes = APIRouter(prefix=PREFIX, tags=["health"])
    open_routes.add_api_route(
        "/healthz",
        routes.health,
        methods=["GET"],
        response_model=Health,
        summary="Is the API up (no token needed)",
    )
    app.include_router(open_routes)
    app.add_api_route("/healthz", routes.health, methods=["GET"], include_in_schema=False)

    api = APIRouter(prefix=PREFIX, dependencies=[Depends(_bearer(token_check))], tags=["migrations"])
    add = api.add_api_route
    add(
        "/targets",
        routes.list_targets,
        methods=["GET"],
        response_model=TargetList,
        responses=_errors(401),
        summary="The targets migrations may go to",
        tags=["targets"],
    )
    add(
        "/migrations",
        routes.create,
        methods=["POST"],
        status_code=201,
        response_model=MigrationList,
        responses=_errors(400, 401, 409, 503),
        summary="Create migrations: one, or many all-or-nothing",
    )
    add(
        "/migrations",
        routes.list_migrations,
        methods=["GET"],
        response_model=MigrationList,
        responses=_errors(400, 401),
        summary="List migrations, by state and target",
    )
    add(
        "/migrations/cutover",
        routes.cutover,
        methods=["POST"],
        status_code=202,
        response_model=CutoverOut,
        responses=_errors(400, 401, 404, 409, 503),
        summary="Cut over one, many, or all ready migrations",
    )
    add(
        "/migrations/{migration_id}",
        routes.get_migration,
        methods=["GET"],
        response_model=MigrationOne,
        responses=_errors(401, 404),
        summary="One migration with its status details (by id or name)",
    )
    add(
        "/migrations/{migration_id}/events",
        routes.list_events,
        methods=["GET"],
        response_model=EventList,
        responses=_errors(400, 401, 404),
        summary="A migration's event log, oldest first",
    )
    add(
        "/migrations/{migration_id}/cancel",
        routes.cancel,
        methods=["POST"],
        status_code=202,
        response_model=MigrationOne,
        responses=_errors(401, 404, 409, 503),
        summary="Cancel a migration",
    )
    add(
        "/migrations/{migration_id}/retry",
        routes.retry,
        methods=["POST"],
        status_code=202,
        response_model=MigrationOne,
        responses=_errors(401, 404, 409, 503),
        summary="Retry a Failed migration",
    )
    app.include_router(api)
    app.openapi = partial(_openapi, app)  # type: ignore[method-assign]
    return app
