"""The console's way to the REST API: the very routes the CLI calls, over HTTP inside the process.

The console never reaches around the API into the state store or Temporal. Each call goes through the
API's whole stack (its token guard, its validation, its error shape) with the signed-in session's token
as its bearer token, so the console can do exactly what that token lets the CLI do, and a token reset
ends a console session at its next call. The transport is httpx's ASGI transport: no socket, no port.

Whatever the API sends back is redacted once more here (`ferry.core.redact`): the API masks secrets
already, and a page must never be the place where one shows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import quote

import httpx
from starlette.types import ASGIApp

from ferry.core.redact import redact_value

PREFIX = "/api/v1"
TIMEOUT = 60.0  # a scan of a large remote store takes a while; everything else answers in milliseconds


class ApiFailure(Exception):
    """An answer in the API's error shape (or something that is not one, said as such)."""

    def __init__(self, status: int, code: str, message: str, hint: str = "", details: Any = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.hint, self.details = status, code, message, hint, details


class SignedOut(ApiFailure):
    """The API refused the session's token (401): it was reset, or the session is gone."""


class Api:
    """The API app, called in-process. One shared HTTP client: it holds no connection, only settings."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._http: httpx.AsyncClient | None = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            # trust_env=False: no proxy from the environment can stand between the console and its own API.
            self._http = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=self._app),
                base_url="http://ferry.internal",
                timeout=TIMEOUT,
                trust_env=False,
            )
        return self._http

    def as_user(self, token: str) -> ApiClient:
        return ApiClient(self, token)


class ApiClient:
    """The API calls the console makes, each with one session's token."""

    def __init__(self, api: Api, token: str) -> None:
        self._api = api
        self._headers = {"Authorization": f"Bearer {token}"}

    async def _call(
        self, method: str, path: str, *, params: Mapping[str, Any] | None = None, body: Any = None
    ) -> tuple[int, dict[str, Any]]:
        http = self._api._client()
        clean = {k: v for k, v in (params or {}).items() if v not in (None, "")}
        resp = await http.request(method, PREFIX + path, params=clean, json=body, headers=self._headers)
        try:
            data = resp.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise ApiFailure(
                resp.status_code, "bad_answer", f"the API answered {resp.status_code} without JSON"
            )
        data = cast(dict[str, Any], redact_value(data))
        if resp.status_code >= 400:
            raw = data.get("error")
            error: dict[str, Any] = raw if isinstance(raw, dict) else {}
            kind = SignedOut if resp.status_code == 401 else ApiFailure
            raise kind(
                resp.status_code,
                str(error.get("code") or "error"),
                str(error.get("message") or f"the API answered {resp.status_code}"),
                str(error.get("hint") or ""),
                error.get("details"),
            )
        return resp.status_code, data

    async def migrations(self, state: str | None = None, target: str | None = None) -> list[dict[str, Any]]:
        _, data = await self._call("GET", "/migrations", params={"state": state, "target": target})
        return list(data.get("migrations") or [])

    async def migration(self, ref: str) -> dict[str, Any]:
        _, data = await self._call("GET", f"/migrations/{_segment(ref)}")
        return dict(data["migration"])

    async def events(self, ref: str, after: int = 0) -> list[dict[str, Any]]:
        _, data = await self._call("GET", f"/migrations/{_segment(ref)}/events", params={"after": after})
        return list(data.get("events") or [])

    async def targets(self) -> list[dict[str, Any]]:
        _, data = await self._call("GET", "/targets")
        return list(data.get("targets") or [])

    async def create(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        _, data = await self._call("POST", "/migrations", body={"migrations": items})
        return list(data.get("migrations") or [])

    async def cutover(self, ids: list[str]) -> dict[str, Any]:
        _, data = await self._call("POST", "/migrations/cutover", body={"ids": ids})
        return data

    async def cancel(self, ref: str) -> dict[str, Any]:
        _, data = await self._call("POST", f"/migrations/{_segment(ref)}/cancel")
        return dict(data["migration"])

    async def retry(self, ref: str) -> dict[str, Any]:
        _, data = await self._call("POST", f"/migrations/{_segment(ref)}/retry")
        return dict(data["migration"])

    async def scan(
        self, location: str, databases: list[str] | None = None, wait: float = 5.0
    ) -> dict[str, Any]:
        """Start a scan; the job, with its plan when it ended within `wait` seconds (else it runs on)."""
        body: dict[str, Any] = {"location": location, "wait_seconds": wait}
        if databases:
            body["database"] = databases
        _, data = await self._call("POST", "/scans", body=body)
        return data

    async def scan_job(self, scan_id: str) -> dict[str, Any]:
        _, data = await self._call("GET", f"/scans/{_segment(scan_id)}")
        return data


def _segment(ref: str) -> str:
    """An id or name as one path segment: the API's names hold no '/', and nothing else may travel."""
    return quote(ref, safe="")
