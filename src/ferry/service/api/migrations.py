"""/api/v1/migrations: create (one, or many all-or-nothing), list, show, cancel and retry.

- A source whose scheme this build cannot read is refused at creation (400 `unsupported_source`), before
  anything is recorded: it would only fail once its workflow ran.
- Cancel is a request (202): the workflow moves the migration to Canceled when it acts.
- Retry moves a Failed migration to Queued by compare-and-set in the state store, then asks the
  orchestrator to run it again: of two retries at once, one wins and the other gets 409, so one new run
  starts and the error of the failed one stays in the migration's events.
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Query

from ferry.core.errors import UsageError
from ferry.core.migration import TRANSITIONS, InvalidTransition, State
from ferry.core.redact import redact_text
from ferry.service.api.common import Service, db, one, orchestrate, record_json
from ferry.service.api.errors import ApiError, log, responses
from ferry.service.api.models import CreateBody, MigrationIn, MigrationList, MigrationOne
from ferry.service.contracts import MigrationRecord, WorkflowEnded
from ferry.service.store import StateConflict
from ferry.stores.registry import check_location


def router(service: Service) -> APIRouter:
    api = APIRouter(tags=["migrations"])

    async def create(body: CreateBody) -> dict[str, Any]:
        items = body.root
        _check_targets(service, items)
        _check_sources(items)
        try:
            records = await db(service.store.create, [i.request() for i in items])
        except ValueError as exc:  # the store refuses the batch as a whole
            code = str(getattr(exc, "code", "invalid_request"))
            raise ApiError(
                409 if code == "name_taken" else 400,
                code,
                str(exc),
                str(getattr(exc, "hint", "")),
                getattr(exc, "details", None),
            ) from None
        await _start(service, records)
        return {"migrations": [record_json(r) for r in records]}

    async def list_migrations(
        state: Annotated[State | None, Query(description="Only migrations in this state.")] = None,
        target: Annotated[str | None, Query(description="Only migrations onto this target.")] = None,
    ) -> dict[str, Any]:
        records = await db(service.store.find, state, target)
        return {"migrations": [record_json(r) for r in records]}

    async def get_migration(migration_id: str) -> dict[str, Any]:
        record = await one(service, migration_id)
        return {"migration": record_json(record)}

    async def cancel(
        migration_id: str,
        drop: Annotated[
            bool,
            Query(
                description="Remove what was restored (SQL Server: DROP DATABASE of the RESTORING database) "
                "instead of leaving it for inspection."
            ),
        ] = False,
    ) -> dict[str, Any]:
        record = await one(service, migration_id)
        refusal = _cancel_refusal(record)
        if refusal:
            raise ApiError(
                409,
                "wrong_state",
                f"cannot cancel: {refusal}",
                f"see its state and events: `ferry migrations show {record.id}`",
                {"state": record.state.value},
            )
        try:
            call = service.orchestrator.cancel(record.id, record.attempt, drop=drop)
            await orchestrate(f"cancel '{record.name}'", call)
        except WorkflowEnded:
            # It ended between the read above and the signal (or ended without recording it): nothing
            # left to cancel, which is the caller's state problem, not the orchestrator's.
            now = await one(service, migration_id)
            raise ApiError(
                409,
                "wrong_state",
                f"cannot cancel '{now.name}': its workflow has ended ({now.state.value})",
                f"see its state and events: `ferry migrations show {now.id}`",
                {"state": now.state.value},
            ) from None
        asked = {"by": "api", "drop": drop}
        await db(service.store.append_event, record.id, "info", "cancel requested", asked)
        return {"migration": record_json(record)}

    async def retry(migration_id: str) -> dict[str, Any]:
        record = await one(service, migration_id)
        if record.state is not State.FAILED:
            raise _not_failed(record.name, record.state)
        try:
            queued = await db(service.store.set_state, record.id, State.QUEUED, expected=State.FAILED)
        except StateConflict as exc:  # another retry (or the workflow) came first
            raise _not_failed(record.name, exc.current) from None
        try:
            await orchestrate(f"retry '{record.name}'", service.orchestrator.retry(record.id))
        except ApiError as exc:
            before = f"; it had failed with: {record.error}" if record.error else ""
            with contextlib.suppress(InvalidTransition):  # its new run did start and moved on
                await db(service.store.set_state, record.id, State.FAILED, None, exc.message + before)
            raise
        return {"migration": record_json(queued)}

    add = api.add_api_route
    add(
        "/migrations",
        create,
        methods=["POST"],
        status_code=201,
        response_model=MigrationList,
        response_model_exclude_unset=True,
        responses=responses(400, 401, 409, 413, 503),
        summary="Create migrations: one, or many all-or-nothing",
    )
    add(
        "/migrations",
        list_migrations,
        methods=["GET"],
        response_model=MigrationList,
        response_model_exclude_unset=True,
        responses=responses(400, 401),
        summary="List migrations, by state and target",
    )
    add(
        "/migrations/{migration_id}",
        get_migration,
        methods=["GET"],
        response_model=MigrationOne,
        response_model_exclude_unset=True,
        responses=responses(401, 404),
        summary="One migration with its status details (by id or name)",
    )
    add(
        "/migrations/{migration_id}/cancel",
        cancel,
        methods=["POST"],
        status_code=202,
        response_model=MigrationOne,
        response_model_exclude_unset=True,
        responses=responses(400, 401, 404, 409, 503),
        summary="Cancel a migration",
    )
    add(
        "/migrations/{migration_id}/retry",
        retry,
        methods=["POST"],
        status_code=202,
        response_model=MigrationOne,
        response_model_exclude_unset=True,
        responses=responses(401, 404, 409, 503),
        summary="Retry a Failed migration",
    )
    return api


def _not_failed(name: str, state: State) -> ApiError:
    return ApiError(
        409,
        "wrong_state",
        f"cannot retry '{name}': it is {state.value}, not Failed",
        "only a Failed migration is retried; a running one retries its steps by itself",
        {"state": state.value},
    )


def _check_targets(service: Service, items: list[MigrationIn]) -> None:
    if service.targets is None:
        return  # the store checks them
    known = sorted(service.targets)
    unknown = sorted({i.target for i in items} - set(known))
    if unknown:
        raise ApiError(
            400,
            "unknown_target",
            f"unknown target{'s' if len(unknown) > 1 else ''}: {', '.join(unknown[:10])}"
            + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""),
            f"known targets: {', '.join(known)}" if known else "no target is known: start an agent",
            {"unknown": unknown[:100], "known": known},
        )


def _check_sources(items: list[MigrationIn]) -> None:
    """Refuse a source no store of this build can read (its scheme), before anything is recorded."""
    for index, item in enumerate(items):
        try:
            check_location(item.source)
        except UsageError as exc:
            raise ApiError(
                400,
                "unsupported_source",
                f"migrations[{index}].source: {redact_text(exc.message)}",
                redact_text(exc.hint),
                {"index": index},
            ) from None


async def _start(service: Service, records: list[MigrationRecord]) -> None:
    try:
        await service.orchestrator.start(records)
    except Exception as exc:
        # Recorded but not started: Failed, so that `retry` starts them once Temporal is back.
        shown = redact_text(str(exc))
        log.warning("orchestrator could not start %d migration(s): %s", len(records), shown)
        await db(_fail_all, service, [r.id for r in records], f"could not start the workflow: {shown}")
        raise ApiError(
            503,
            "orchestrator_unavailable",
            f"{len(records)} migration(s) were recorded but could not be started: {shown}",
            "check that `ferry serve` and its Temporal server are running; then retry them "
            "(`ferry migrations retry ID`)",
            {"ids": [r.id for r in records]},
        ) from None


def _fail_all(service: Service, ids: list[str], message: str) -> None:
    for migration_id in ids:
        # InvalidTransition: its workflow did start after all and moved on; it reports its own fate.
        with contextlib.suppress(InvalidTransition):
            service.store.set_state(migration_id, State.FAILED, error=message)


def _cancel_refusal(record: MigrationRecord) -> str | None:
    if State.CANCELED in TRANSITIONS[record.state]:
        return None
    if record.state is State.CUTTING_OVER:
        return f"'{record.name}' is cutting over, which cannot be stopped half way; wait for it to end"
    if record.state is State.FAILED:
        return f"'{record.name}' failed and is not running: there is nothing to cancel"
    return f"'{record.name}' is {record.state.value} and final"
