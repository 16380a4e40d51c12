"""POST /api/v1/migrations/cutover: cut over one, many, or every ready migration.

A cutover is accepted in ReadyForCutover and in RestoringLogs (the workflow first replays what is left,
then cuts over); `all_ready` takes the ReadyForCutover ones only. Everything else is refused with a
reason, per migration. The migrations named are found with one query, however many there are (up to
10,000), and answers about unknown or refused ones list at most LISTED of them with their count: the
answer's size does not grow with a list of made-up ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter

from ferry.core.migration import State
from ferry.core.redact import redact_text
from ferry.service.api.common import Service, db, find_many_sync
from ferry.service.api.errors import ApiError, log, responses
from ferry.service.api.models import CutoverIn, CutoverOut
from ferry.service.contracts import MigrationRecord

CUTOVER_STATES = frozenset({State.RESTORING_LOGS, State.READY_FOR_CUTOVER})
LISTED = 100  # items an error's details name, at most (the count says how many there were)
SIGNALS_AT_ONCE = 64  # cutover signals in flight to Temporal at once


def router(service: Service) -> APIRouter:
    api = APIRouter(tags=["migrations"])

    async def cutover(body: CutoverIn) -> dict[str, Any]:
        records = await _candidates(service, body)
        _check_named(body.final_lsn, "final_lsn", "a final LSN", body.all_ready, records)
        _check_named(body.last_backup, "last_backup", "a last backup", body.all_ready, records)
        accepted: list[tuple[MigrationRecord, str | None]] = []
        rejected: list[dict[str, Any]] = []
        for r in records:
            refusal = cutover_refusal(r)
            if refusal:
                rejected.append(_rejection(r, "wrong_state", refusal))
            else:
                accepted.append((r, body.final_lsn.get(r.id) or body.final_lsn.get(r.name)))
        # All at once (a bounded number in flight): one slow workflow does not hold up the others.
        gate = asyncio.Semaphore(SIGNALS_AT_ONCE)

        async def signal(record: MigrationRecord, lsn: str | None) -> None:
            last = body.last_backup.get(record.id) or body.last_backup.get(record.name)
            async with gate:
                await service.orchestrator.cutover(record.id, lsn, record.attempt, last_backup=last)

        results = await asyncio.gather(*(signal(r, lsn) for r, lsn in accepted), return_exceptions=True)
        done: list[tuple[MigrationRecord, str | None]] = []
        for (r, lsn), result in zip(accepted, results, strict=True):
            if isinstance(result, BaseException):
                shown = redact_text(str(result))
                log.warning("orchestrator refused the cutover of %s: %s", r.id, shown)
                rejected.append(_rejection(r, "orchestrator_unavailable", f"could not signal: {shown}"))
            else:
                done.append((r, lsn))
        await db(_record, service, done, body.last_backup)
        if not done and rejected and not body.all_ready:
            first = rejected[0]
            status = 503 if all(x["code"] == "orchestrator_unavailable" for x in rejected) else 409
            raise ApiError(
                status,
                first["code"],
                f"no migration was cut over: {first['reason']}"
                + (f" (and {len(rejected) - 1} more refused)" if len(rejected) > 1 else ""),
                "cut over migrations in ReadyForCutover or RestoringLogs; `ferry migrations list "
                "--state ReadyForCutover` shows them",
                {"rejected": rejected[:LISTED], "rejected_count": len(rejected)},
            )
        out = [
            {"id": r.id, "name": r.name, "state": r.state.value, "final_lsn": lsn,
             "last_backup": body.last_backup.get(r.id) or body.last_backup.get(r.name)}
            for r, lsn in done
        ]  # fmt: skip
        return {"accepted": out, "rejected": rejected}

    api.add_api_route(
        "/migrations/cutover",
        cutover,
        methods=["POST"],
        status_code=202,
        response_model=CutoverOut,
        response_model_exclude_unset=True,
        responses=responses(400, 401, 404, 409, 413, 503),
        summary="Cut over one, many, or all ready migrations",
    )
    return api


def cutover_refusal(record: MigrationRecord) -> str | None:
    """Why `record` cannot be cut over now, or None when it can."""
    s = record.state
    if s in CUTOVER_STATES:
        return None
    if s in (State.QUEUED, State.VALIDATING, State.RESTORING_FULL):
        return f"'{record.name}' is {s.value}: a cutover is possible once its full backup is restored"
    if s is State.CUTTING_OVER:
        return f"'{record.name}' is already cutting over"
    if s is State.FAILED:
        error = redact_text(record.error or "see its events")
        return f"'{record.name}' failed ({error}); retry it first"
    return f"'{record.name}' is {s.value} and final"


async def _candidates(service: Service, body: CutoverIn) -> list[MigrationRecord]:
    if body.all_ready and body.ids:
        raise ApiError(
            400,
            "invalid_request",
            "give either ids or all_ready, not both",
            "all_ready cuts over every migration in ReadyForCutover",
        )
    if body.all_ready:
        return await db(service.store.find, State.READY_FOR_CUTOVER)
    if not body.ids:
        raise ApiError(
            400,
            "invalid_request",
            "nothing to cut over: no ids and no all_ready",
            'send {"ids": ["mig-..."]} or {"all_ready": true}',
        )
    refs = list(dict.fromkeys(body.ids))
    found = await db(find_many_sync, service.store, refs)
    unknown = [ref for ref in refs if ref not in found]
    if unknown:
        named = ", ".join(repr(u) for u in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise ApiError(
            404,
            "not_found",
            f"no migration {named}{more}",
            "nothing was cut over; list the migrations with `ferry migrations list`",
            {"unknown": unknown[:LISTED], "unknown_count": len(unknown)},
        )
    unique = {r.id: r for r in (found[ref] for ref in refs)}
    return list(unique.values())


def _record(
    service: Service, done: list[tuple[MigrationRecord, str | None]], last: Mapping[str, str]
) -> None:
    events = [
        (r.id, "info", "cutover requested",
         {"by": "api", "final_lsn": lsn, "last_backup": last.get(r.id) or last.get(r.name)})
        for r, lsn in done
    ]  # fmt: skip
    many = getattr(service.store, "append_events", None)
    if callable(many):
        many(events)  # one transaction for all of them
        return
    for migration_id, kind, message, data in events:
        service.store.append_event(migration_id, kind, message, data)


def _rejection(record: MigrationRecord, code: str, reason: str) -> dict[str, Any]:
    return {"id": record.id, "name": record.name, "state": record.state.value, "code": code, "reason": reason}


def _check_named(
    given: Mapping[str, str], field: str, what: str, all_ready: bool, records: list[MigrationRecord]
) -> None:
    """`final_lsn` and `last_backup` name migrations of `ids` only (their values' form is the model's)."""
    refs = {r.id for r in records} | {r.name for r in records}
    stray = sorted(k for k in given if k not in refs)
    if stray and not all_ready:
        raise ApiError(
            400,
            "invalid_request",
            f"{field} names {', '.join(stray[:5])}{' and more' if len(stray) > 5 else ''}, "
            "which is not in ids",
            f"give {what} only for migrations you cut over",
            {"stray": stray[:LISTED]},
        )
