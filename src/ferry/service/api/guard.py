"""The API's gate, in front of everything else (a plain ASGI middleware, so nothing runs before it):

1. The bearer token is checked on the request's headers before one byte of its body is read. A caller
   without the token gets 401 at once, whatever it sends: a malformed body, a huge one, a route that does
   not exist. Open are only /healthz, /api/v1/healthz, /openapi.json and /docs: everything else is
   refused by default, so a route added later cannot be left open by mistake.
   The web console's paths (`/` and `/console/...`) go to the console instead, whose own gate checks its
   session cookie the same way, before any body is read (ferry/web/gate.py).
2. A body is read whole, up to MAX_BODY bytes, before the app sees it: a larger one is answered with 413
   as soon as its Content-Length says so, or as soon as a chunked body passes the limit. A caller with
   the token cannot make the server hold more than MAX_BODY of any one request either.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ferry.service.api.errors import PREFIX, ApiError, error_body, unauthorized
from ferry.web import Console

MAX_BODY = 2 * 1024 * 1024  # a batch of 1000 migrations is about 150 KB
OPEN_PATHS = frozenset({"/healthz", f"{PREFIX}/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect"})
AUTHENTICATED = "ferry.authenticated"  # set in the ASGI scope once the token matched


class Guard:
    def __init__(
        self,
        app: ASGIApp,
        token_check: Callable[[str], bool],
        max_body: int = MAX_BODY,
        console: Console | None = None,
    ) -> None:
        self.app = app
        self.token_check = token_check
        self.max_body = max_body
        self.console = console

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.console is not None and self.console.owns(scope["path"]):
            await self.console(scope, receive, send)
            return
        headers = _headers(scope)
        length_text = headers.get("content-length")
        has_body = length_text not in (None, "0") or "chunked" in headers.get("transfer-encoding", "").lower()
        if scope["path"] not in OPEN_PATHS:
            refusal = self._check_token(headers.get("authorization"))
            if refusal is not None:
                await _answer(send, refusal, close=has_body)
                return
            scope[AUTHENTICATED] = True
        if length_text is not None and not length_text.isdigit():
            bad = ApiError(400, "invalid_request", "the Content-Length header is not a number")
            await _answer(send, bad, close=True)
            return
        if length_text is not None and int(length_text) > self.max_body:
            await _answer(send, self._too_large(), close=True)
            return
        if not has_body:
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body:
                await _answer(send, self._too_large(), close=True)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body), receive), send)

    def _check_token(self, header: str | None) -> ApiError | None:
        scheme, _, token = (header or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return unauthorized("this call needs a bearer token")
        if not self.token_check(token.strip()):
            return unauthorized("the bearer token is not valid")
        return None

    def _too_large(self) -> ApiError:
        return ApiError(
            413,
            "too_large",
            f"the request body is larger than {self.max_body // (1024 * 1024)} MiB",
            "send at most 1000 migrations per request, in several requests if need be",
        )


def _headers(scope: Scope) -> dict[str, str]:
    # The last of a repeated header wins; header values are latin-1 on the wire.
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app the body read already, then waits for a disconnect as usual."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _answer(send: Send, error: ApiError, *, close: bool = False) -> None:
    payload = json.dumps(error_body(error.code, error.message, error.hint, error.details)).encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    if close:  # the body was not read: the connection cannot carry another request after this answer
        headers.append((b"connection", b"close"))
    for name, value in (error.headers or {}).items():
        headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    start: dict[str, Any] = {"type": "http.response.start", "status": error.status, "headers": headers}
    await send(start)
    await send({"type": "http.response.body", "body": payload})
