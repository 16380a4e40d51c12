"""The API's one error shape, `{"error": {"code", "message", "hint", "details"}}`, for every answer that is
not a success: Ferry's own refusals (ApiError), FastAPI's validation errors (400, not 422), Starlette's
404 and 405, a refused state transition (409), and bugs (500, without their details: the log has them)."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ferry.core.errors import FerryError
from ferry.core.migration import InvalidTransition
from ferry.core.redact import safe

log = logging.getLogger("ferry.service.api")

PREFIX = "/api/v1"
TOKEN_HINT = (
    "send 'Authorization: Bearer TOKEN' with the token `ferry serve` printed on its first start "
    "(the CLI reads FERRY_TOKEN or --token); `ferry serve --reset-token` makes a new one"
)


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


def error_response(exc: ApiError) -> JSONResponse:
    body = error_body(exc.code, exc.message, exc.hint, exc.details)
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


def unauthorized(message: str) -> ApiError:
    # Never log or echo the token: the message says only that it is missing or did not match.
    return ApiError(401, "unauthorized", message, TOKEN_HINT, headers={"WWW-Authenticate": "Bearer"})


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


def validation_error(exc: RequestValidationError) -> ApiError:
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
        errors[:100],  # a list of 10,000 bad ids does not need 10,000 lines back
    )


def _allowed(request: Request) -> list[str]:
    """The methods the OpenAPI document gives this path (Starlette's own Allow names only one route's): a
    path of its own (`/migrations/cutover`) before a template it also fits (`/migrations/{id}`)."""
    paths: dict[str, dict[str, Any]] = request.app.openapi().get("paths", {})
    path = request.url.path
    if path in paths:
        return sorted(m.upper() for m in paths[path])
    methods: set[str] = set()
    for template, operations in paths.items():
        pattern = "^" + re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path):
            methods |= {m.upper() for m in operations}
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else f"HTTP {exc.status_code}"
        path = safe(request.url.path)[:200]
        if exc.status_code == 404:
            message, hint = f"no route {request.method} {path}", f"the API is under {PREFIX}"
        elif exc.status_code == 405:
            message, hint = f"{request.method} is not allowed on {path}", "see /docs"
            allowed = _allowed(request)
            if allowed:
                hint = f"{path} takes {', '.join(allowed)}"
                return error_response(
                    ApiError(405, code, message, hint, headers={"Allow": ", ".join(allowed)})
                )
        else:
            hint = ""
        return error_response(ApiError(exc.status_code, code, message, hint, headers=dict(exc.headers or {})))

    async def on_transition(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, InvalidTransition)
        return error_response(ApiError(409, "wrong_state", exc.message, exc.hint))

    async def on_ferry_error(request: Request, exc: Exception) -> JSONResponse:
        # An expected error of a layer below (bad input it found, a store it could not reach): one log line,
        # no traceback, and the answer says what it was.
        assert isinstance(exc, FerryError)
        if isinstance(exc, LookupError):  # the migration went away between two calls
            status, code = 404, "not_found"
        elif exc.retryable:  # the state store, briefly unreachable
            status, code = 503, "unavailable"
        else:
            status, code = 400, "invalid_request"
        log.warning("%s %s: %s", request.method, safe(request.url.path), safe(exc.message))
        return error_response(ApiError(status, code, safe(exc.message), safe(exc.hint)))

    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        # The message is not sent: it may name internals (a database URL). The log has it all.
        log.exception("internal error answering %s %s", request.method, safe(request.url.path))
        return error_response(
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
    app.add_exception_handler(FerryError, on_ferry_error)
    app.add_exception_handler(Exception, on_bug)


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, for programs: invalid_request, unknown_target, not_found, ...")
    message: str = Field(description="What failed, on which object.")
    hint: str = Field(description="What to do about it (may be empty).")
    details: Any = Field(None, description="Per-item specifics: validation errors, rejected ids.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


_ANSWERS = {
    400: "Malformed or unusable input",
    401: "Missing or wrong bearer token",
    404: "Unknown migration or scan",
    409: "The migration's state does not allow it",
    413: "The request body is larger than the API takes (2 MiB)",
    503: "The orchestrator could not be reached",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error answers of a route, for the OpenAPI document."""
    return {c: {"model": ErrorResponse, "description": _ANSWERS[c]} for c in codes}
