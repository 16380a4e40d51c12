"""GET /api/v1/targets (the targets migrations may go to, their load and facts) and GET /api/v1/healthz (no
token needed).

Targets are what agents registered in the state store (`StoreTargets` reads them at each use): the engine,
where they restore, their restore limit, and the facts the agent reads from the target itself at most once
a minute (agent/worker.py: version, edition, default folders, free space). The API never asks a target
anything: a slow or unreachable target cannot hold it. The load (migrations running, restoring a full
backup) is counted with one grouped query of the state store.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from fastapi import APIRouter

from ferry import __version__
from ferry.core.migration import State
from ferry.core.redact import redact_location, redact_value
from ferry.service.api.common import Service, TargetInfo, db
from ferry.service.api.errors import responses
from ferry.service.api.models import Health, TargetList

_DONE = {State.SUCCEEDED.value, State.FAILED.value, State.CANCELED.value}


def target_info(name: str, data: Mapping[str, Any]) -> TargetInfo:
    """A target as its agent registered it (older registrations name neither engine nor location)."""
    concurrency = data.get("concurrency")
    facts = data.get("facts")
    return TargetInfo(
        name,
        str(data.get("engine") or "postgres"),
        data.get("host"),
        str(data.get("description", "")),
        data.get("location") or data.get("root"),
        concurrency if isinstance(concurrency, int) else None,
        bool(data.get("agent")),
        facts if isinstance(facts, dict) else None,
    )


class StoreTargets(Mapping[str, TargetInfo]):
    """The targets known now, read from the store at each use (agents register themselves)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def snapshot(self) -> dict[str, TargetInfo]:
        """Every target, read with one query."""
        known: dict[str, dict[str, Any]] = self.store.targets()
        return {name: target_info(name, data) for name, data in known.items()}

    _load = snapshot

    def __getitem__(self, name: str) -> TargetInfo:
        return self._load()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


def router(service: Service) -> APIRouter:
    api = APIRouter(tags=["targets"])

    def collect() -> list[dict[str, Any]]:
        targets = service.targets or {}
        infos = list((targets.snapshot() if isinstance(targets, StoreTargets) else targets).values())
        load_of = getattr(service.store, "load", None)
        load: dict[str, dict[str, int]] = load_of() if callable(load_of) else {}
        out = []
        for t in infos:
            counts = load.get(t.name, {})
            item: dict[str, Any] = {
                "name": t.name,
                "engine": t.engine,
                "host": t.host,
                "description": t.description,
                "location": redact_location(t.location) if t.location else None,
                "concurrency": t.concurrency,
                "agent": t.agent,
                "running": sum(n for state, n in counts.items() if state not in _DONE),
                "restoring": counts.get(State.RESTORING_FULL.value, 0),
                "facts": redact_value(dict(t.facts)) if t.facts is not None else None,
            }
            out.append(item)
        return out

    async def list_targets() -> dict[str, Any]:
        return {"targets": await db(collect)}

    api.add_api_route(
        "/targets",
        list_targets,
        methods=["GET"],
        response_model=TargetList,
        response_model_exclude_unset=True,
        responses=responses(401),
        summary="The targets migrations may go to: engine, load, and facts read from them",
    )
    return api


async def health() -> dict[str, Any]:
    return {"status": "ok", "version": __version__}


def health_router() -> APIRouter:
    api = APIRouter(tags=["health"])
    api.add_api_route(
        "/healthz", health, methods=["GET"], response_model=Health, summary="Is the API up (no token needed)"
    )
    return api
