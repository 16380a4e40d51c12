"""GET /api/v1/targets (the targets migrations may go to) and GET /api/v1/healthz (no token needed)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ferry import __version__
from ferry.service.api.common import Service
from ferry.service.api.errors import responses
from ferry.service.api.models import Health, TargetList


def router(service: Service) -> APIRouter:
    api = APIRouter(tags=["targets"])

    async def list_targets() -> JSONResponse:
        items = [vars(t) for t in (service.targets or {}).values()]
        return JSONResponse({"targets": items})

    api.add_api_route(
        "/targets",
        list_targets,
        methods=["GET"],
        response_model=TargetList,
        responses=responses(401),
        summary="The targets migrations may go to",
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
