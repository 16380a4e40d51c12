"""GET /api/v1/migrations/{id}/events: a migration's append-only event log, oldest first."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from ferry.service.api.common import Service, db, event_json, one
from ferry.service.api.errors import responses
from ferry.service.api.models import EventList

# The largest `after` the state stores compare with (SQLite and PostgreSQL BIGINT): a larger one is a 400,
# not a database's overflow.
MAX_SEQ = 2**63 - 1


def router(service: Service) -> APIRouter:
    api = APIRouter(tags=["migrations"])

    async def list_events(
        migration_id: str,
        after: Annotated[int, Query(ge=0, le=MAX_SEQ, description="Only events with a larger seq.")] = 0,
    ) -> dict[str, Any]:
        record = await one(service, migration_id)
        found = await db(service.store.events, record.id, after)
        last = found[-1].seq if found else after
        return {"events": [event_json(e) for e in found], "last_seq": last}

    api.add_api_route(
        "/migrations/{migration_id}/events",
        list_events,
        methods=["GET"],
        response_model=EventList,
        response_model_exclude_unset=True,
        responses=responses(400, 401, 404),
        summary="A migration's event log, oldest first",
    )
    return api
