"""The REST API (FastAPI, OpenAPI at /openapi.json and /docs), under /api/v1, one module per resource:
`migrations` (create, list, show, cancel, retry), `cutover`, `events`, `targets` (and health), `scans`;
`errors` holds the one error shape, `guard` the token and body checks in front of everything, `models`
and `scan_models` the request and answer models, `schema` the OpenAPI document. Every route returns its
answer model: FastAPI checks what is sent against it, so the OpenAPI document is what is sent.

It depends on the StateStore and Orchestrator protocols only. Pydantic lives here, at the edge: request
bodies are validated into models, turned into the contract's dataclasses, and records go out as JSON with
their secrets masked (a source's password, a SAS signature).

Decisions (docs/service.md says the same to users):
- Every route but /healthz, /openapi.json and /docs needs the bearer token, reads included: a migration's
  source and events are not for everyone on the network. The token is checked before a request's body is
  read, and bodies are capped (2 MiB, 413 beyond).
- One error shape for everything, FastAPI's own errors included: {"error": {"code", "message", "hint",
  "details"}}. Malformed input is 400 (not FastAPI's 422), a wrong token 401, an unknown id 404, an
  operation the migration's state refuses 409, a body too large 413, an orchestrator that cannot be reached
  503, a bug 500.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ferry import __version__
from ferry.service.api import cutover, events, migrations, scans
from ferry.service.api import targets as target_routes
from ferry.service.api.common import Service, TargetInfo
from ferry.service.api.errors import PREFIX, ApiError, install_error_handlers, unauthorized
from ferry.service.api.guard import AUTHENTICATED, MAX_BODY, Guard
from ferry.service.api.models import (
    CutoverIn,
    CutoverOut,
    EventList,
    MigrationIn,
    MigrationList,
    MigrationOne,
    TargetList,
)
from ferry.service.api.scan_models import ScanIn, ScanOut
from ferry.service.api.schema import Document
from ferry.service.api.targets import StoreTargets
from ferry.service.contracts import Orchestrator, StateStore
from ferry.service.scans import ScanJobs

__all__ = [
    "MAX_BODY",
    "PREFIX",
    "ApiError",
    "CutoverIn",
    "CutoverOut",
    "EventList",
    "MigrationIn",
    "MigrationList",
    "MigrationOne",
    "ScanIn",
    "ScanJobs",
    "ScanOut",
    "StoreTargets",
    "TargetInfo",
    "TargetList",
    "create_app",
]

_SCHEME = HTTPBearer(auto_error=False, description="The token `ferry serve` printed on its first start.")


async def _token_checked(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_SCHEME)]
) -> None:
    """The guard checked the token before the body was read; this declares the scheme in the OpenAPI
    document, and refuses a request that did not pass the guard (an app mounted without it)."""
    if not request.scope.get(AUTHENTICATED):
        raise unauthorized("this call needs a bearer token")


def create_app(
    store: StateStore,
    orchestrator: Orchestrator,
    token_check: Callable[[str], bool],
    targets: Mapping[str, TargetInfo] | None = None,
    max_body: int = MAX_BODY,
    scan_jobs: ScanJobs | None = None,
) -> FastAPI:
    """The API app. `targets`: the targets migrations may go to (None: the store alone decides);
    `scan_jobs`: where scans run (their timeout)."""
    app = FastAPI(
        title="Ferry",
        version=__version__,
        description="Database migrations from native backups: create, watch, cut over. "
        "Every route but /healthz needs `Authorization: Bearer TOKEN`.",
        docs_url="/docs",
        redoc_url=None,
    )
    install_error_handlers(app)
    service = Service(store, orchestrator, targets)

    app.include_router(target_routes.health_router(), prefix=PREFIX)
    app.add_api_route("/healthz", target_routes.health, methods=["GET"], include_in_schema=False)

    protected = APIRouter(prefix=PREFIX, dependencies=[Depends(_token_checked)])
    protected.include_router(target_routes.router(service))
    # The cutover route first: `/migrations/cutover` must not be taken for a migration named "cutover".
    protected.include_router(cutover.router(service))
    protected.include_router(migrations.router(service))
    protected.include_router(events.router(service))
    protected.include_router(scans.router(scan_jobs or ScanJobs()))
    app.include_router(protected)
    app.openapi = Document(app, targets)  # type: ignore[method-assign]
    # Outermost: nothing, not even FastAPI's own error handling, runs before the token is checked.
    app.add_middleware(Guard, token_check=token_check, max_body=max_body)
    return app
