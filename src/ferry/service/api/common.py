"""What the routes of every resource share: the service they act on, store calls off the event loop,
finding a migration by id or name, and records as they leave the API (with their secrets masked)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, ParamSpec, Protocol, TypeVar, runtime_checkable

from anyio import to_thread

from ferry.core.redact import redact_location, redact_text, redact_value
from ferry.service.api.errors import ApiError, log
from ferry.service.contracts import Event, MigrationRecord, Orchestrator, StateStore, WorkflowEnded

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class TargetInfo:
    """A target the service knows: its agent's task queue is derived from the name. What its agent
    registered: the engine, where it restores, its restore limit, and the facts it last read from it."""

    name: str
    engine: str = "postgres"
    host: str | None = None
    description: str = ""
    location: str | None = None
    concurrency: int | None = None
    agent: bool = False
    facts: Mapping[str, Any] | None = None


@runtime_checkable
class NameLookup(Protocol):
    """Optional: a store that finds a migration by its name too (SqlStateStore does)."""

    def get_by_name(self, name: str) -> MigrationRecord | None: ...


@runtime_checkable
class BulkLookup(Protocol):
    """Optional: a store that finds many migrations by id or name in one query (SqlStateStore does)."""

    def find_refs(self, refs: list[str]) -> dict[str, MigrationRecord]: ...


@dataclass(frozen=True)
class Service:
    store: StateStore
    orchestrator: Orchestrator
    targets: Mapping[str, TargetInfo] | None  # None: the store alone decides which targets exist


async def db(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a (blocking) store call in a worker thread: the event loop keeps serving other requests."""
    return await to_thread.run_sync(partial(fn, *args, **kwargs))


def find_sync(store: StateStore, ref: str) -> MigrationRecord | None:
    record = store.get(ref)
    if record is None and isinstance(store, NameLookup):
        record = store.get_by_name(ref)
    return record


def find_many_sync(store: StateStore, refs: list[str]) -> dict[str, MigrationRecord]:
    """Each of `refs` (ids or names) that names a migration, with its record: one query when the store
    can, since a cutover may name 10,000 of them."""
    if isinstance(store, BulkLookup):
        return store.find_refs(refs)
    found = {ref: find_sync(store, ref) for ref in refs}
    return {ref: r for ref, r in found.items() if r is not None}


async def one(service: Service, ref: str) -> MigrationRecord:
    record = await db(find_sync, service.store, ref)
    if record is None:
        raise ApiError(
            404,
            "not_found",
            f"no migration '{redact_text(ref)}'",
            "list the migrations: GET /api/v1/migrations or `ferry migrations list`",
        )
    return record


async def orchestrate(what: str, call: Awaitable[None]) -> None:
    try:
        await call
    except WorkflowEnded:
        raise  # not the orchestrator's failure: the route answers it from the migration's state
    except Exception as exc:
        message = redact_text(str(exc))
        log.warning("orchestrator refused to %s: %s", what, message)
        raise ApiError(
            503,
            "orchestrator_unavailable",
            f"could not {what}: {message}",
            "check that `ferry serve` and its Temporal server are running, then try again",
        ) from None


def record_json(record: MigrationRecord) -> dict[str, Any]:
    """A migration as the API sends it: its source without a password or secret parameter, and its error
    and status the same (records written before Ferry redacted them may still hold one)."""
    data = record.to_json()
    data["source"] = redact_location(record.source)
    if record.error:
        data["error"] = redact_text(record.error)
    data["status"] = redact_value(record.status)
    return data


def event_json(event: Event) -> dict[str, Any]:
    data = event.to_json()
    data["message"] = redact_text(event.message)
    data["data"] = redact_value(event.data)
    return data
