"""The console as one ASGI app: its gate (gate.py), then its pages (pages.py).

The API's guard hands it every request whose path it owns (`/` and everything under `/console/`) before
the API's own token check; everything else stays the API's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.responses import HTMLResponse, Response
from starlette.routing import Router
from starlette.types import ASGIApp, Receive, Scope, Send

from ferry import __version__
from ferry.web import gate, views
from ferry.web.api import Api
from ferry.web.lag import LagHistory
from ferry.web.sessions import Session, Sessions

PREFIX = "/console"
HERE = Path(__file__).parent
SESSION = "ferry.session"  # the scope key a request's session travels under, once the gate let it in
FORM = "ferry.form"  # and its form, read by the gate


def templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        # Every value is escaped, whatever the template's name: nothing from the API is ever markup.
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        state_words=views.state_words,
        state_sign=views.state_sign,
        engine_words=views.engine_words,
        duration=views.duration,
        size=views.size,
        when=views.when,
        estimate=views.estimate_words,
    )
    env.globals.update(prefix=PREFIX, version=__version__, STATES=views.STATES)
    return env


class Console:
    """The web console. `api_app`: the API it calls, in-process (create_app's app)."""

    def __init__(self, api_app: ASGIApp) -> None:
        from ferry.web import pages

        self.api = Api(api_app)
        self.sessions = Sessions()
        self.lag = LagHistory()
        self.env = templates()
        self.router: Router = pages.router(self)

    @staticmethod
    def owns(path: str) -> bool:
        return path == "/" or path == PREFIX or path.startswith(PREFIX + "/")

    def render(
        self, name: str, request_session: Session | None, http_status: int = 200, **context: Any
    ) -> HTMLResponse:
        flashes = (
            request_session.take_flashes() if request_session is not None and not name.startswith("_") else []
        )
        html = self.env.get_template(name).render(
            csrf=request_session.csrf if request_session else "", flashes=flashes, **context
        )
        return HTMLResponse(html, status_code=http_status)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.router(scope, receive, send)
            return
        send = gate.with_security_headers(send)
        path, method = scope["path"], scope["method"]
        headers = gate.headers_of(scope)
        has_body = headers.get("content-length") not in (None, "0") or "transfer-encoding" in headers
        reading = method not in ("GET", "HEAD")
        if path.startswith(f"{PREFIX}/static/") or path == f"{PREFIX}/login":
            if reading and not await self._take_form(scope, receive, send, headers, None):
                return
            await self.router(scope, receive, send)
            return
        session = self.sessions.get(gate.cookies_of(headers).get(gate.SESSION_COOKIE))
        if session is None:
            if not reading:
                to = gate.login_url(scope, PREFIX)
                if "hx-request" in headers:
                    await gate.answer(send, 401, gate.refusal_text(401), [("HX-Redirect", to)])
                else:
                    await gate.answer(send, 303, "", [("location", to)])
                return
            await gate.answer(send, 401, gate.refusal_text(401), close=has_body)
            return
        if reading and not await self._take_form(scope, receive, send, headers, session):
            return
        scope[SESSION] = session
        await self.router(scope, receive, send)

    async def _take_form(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[str, str], session: Session | None
    ) -> bool:
        """Read a POST's form once the request may be read at all; False when it was refused (answered)."""
        if gate.cross_site(scope, headers):
            await gate.answer(send, 403, gate.refusal_text(403), close=True)
            return False
        form = await gate.read_form(scope, receive, headers)
        if isinstance(form, int):
            await gate.answer(send, form, gate.refusal_text(form), close=True)
            return False
        if session is not None:
            given = headers.get("x-csrf-token") or (form.get("csrf_token") or [""])[0]
            if not session.csrf_matches(given):
                await gate.answer(send, 403, gate.refusal_text(403))
                return False
        scope[FORM] = form
        return True


def not_found(console: Console, session: Session | None, what: str) -> Response:
    return console.render("error.html", session, 404, title="Not found", message=what, hint="")
