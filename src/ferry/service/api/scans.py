"""POST /api/v1/scans (scan a store: its databases, chains and findings) and GET /api/v1/scans/{id}.

A scan runs in a process of its own with a timeout (service/scans.py): the request waits for it up to
`wait_seconds` and answers 200 with the plan, or 202 with the running job, which the client polls. A
location whose form no store of this build reads is refused at once (400 `unsupported_source`); one that
cannot be read (a missing folder, a store that refuses the credentials) ends the job `failed`, with the
error in the job.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from ferry.core.errors import UsageError
from ferry.core.redact import redact_text
from ferry.service.api.errors import ApiError, responses
from ferry.service.api.scan_models import ScanIn, ScanOut, scan_json
from ferry.service.scans import ScanJobs, ScanRequest
from ferry.stores.registry import check_location


def router(jobs: ScanJobs) -> APIRouter:
    api = APIRouter(tags=["scans"])

    async def create(body: ScanIn, response: Response) -> dict[str, Any]:
        try:
            check_location(body.location)
        except UsageError as exc:
            raise ApiError(
                400, "unsupported_source", f"location: {redact_text(exc.message)}", redact_text(exc.hint)
            ) from None
        job = jobs.start(ScanRequest(body.location, list(body.database), body.stop_at))
        await jobs.wait(job, body.wait_seconds)
        if job.state == "running":
            response.status_code = 202
        return scan_json(job)

    async def get(scan_id: str) -> dict[str, Any]:
        job = jobs.get(scan_id)
        if job is None:
            raise ApiError(
                404,
                "not_found",
                f"no scan '{redact_text(scan_id)[:100]}'",
                "scans are kept for an hour after they end, and not across restarts: scan again",
            )
        return scan_json(job)

    api.add_api_route(
        "/scans",
        create,
        methods=["POST"],
        response_model=ScanOut,
        response_model_exclude_unset=True,
        responses={
            202: {"model": ScanOut, "description": "Still scanning: poll GET /api/v1/scans/{id}"},
            **responses(400, 401, 413),
        },
        summary="Scan a store: its databases, restore chains and findings (`ferry plan --json`)",
    )
    api.add_api_route(
        "/scans/{scan_id}",
        get,
        methods=["GET"],
        response_model=ScanOut,
        response_model_exclude_unset=True,
        responses=responses(401, 404),
        summary="A scan: running, done with its plan, or failed with its error",
    )
    return api
