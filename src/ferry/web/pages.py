"""The console's pages and actions. Each one is a few API calls (web/api.py) and a template.

Pages are GETs that change nothing; every action is a POST of an HTML form (with the session's CSRF token)
answered with a redirect to a page (post/redirect/get), and a message shown once on that page. A cutover
or a cancel is asked for on a confirmation page first, which shows what will happen to each migration
chosen (its state, and for a cutover its estimated downtime) and sends exactly those ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route, Router
from starlette.staticfiles import StaticFiles

from ferry.web import gate, newpage, views
from ferry.web.api import ApiClient, ApiFailure, SignedOut
from ferry.web.console import FORM, HERE, PREFIX, SESSION, not_found
from ferry.web.lag import chart
from ferry.web.sessions import Session

if TYPE_CHECKING:
    from ferry.web.console import Console

Page = Callable[[Request], Awaitable[Response]]
EVENTS_SHOWN = 200  # the newest events a page lists (the API has them all)
ROWS_SHOWN = 2000  # migrations one list page shows


def session_of(request: Request) -> Session:
    session = request.scope[SESSION]
    assert isinstance(session, Session)
    return session


def form_of(request: Request) -> gate.Form:
    form = request.scope.get(FORM) or {}
    return dict(form)


def field(form: Mapping[str, list[str]], name: str) -> str:
    return (form.get(name) or [""])[0].strip()


def see(to: str) -> Response:
    return RedirectResponse(to, status_code=303)


def back_to(value: str | None, default: str) -> str:
    """A page of the console to go back to; anything else is the default."""
    target = gate.safe_next(value)
    bare = target.split("?", 1)[0]
    return target if bare == "/" or bare.startswith(PREFIX + "/") else default


def router(console: Console) -> Router:
    def signed_in(handler: Callable[[Request, ApiClient, Session], Awaitable[Response]]) -> Page:
        """The page with the session's API client; a token the API refuses ends the session."""

        async def page(request: Request) -> Response:
            session = session_of(request)
            try:
                return await handler(request, console.api.as_user(session.token), session)
            except SignedOut:
                console.sessions.end(session.id)
                to = f"{PREFIX}/login?expired=1"
                if "hx-request" in request.headers:
                    return Response("", status_code=401, headers={"HX-Redirect": to})
                return see(to)

        return page

    # -- dashboard ------------------------------------------------------------------------------------

    async def dashboard_data(api: ApiClient) -> dict[str, Any]:
        targets, migrations = await asyncio.gather(api.targets(), api.migrations())
        for m in migrations:
            console.lag.record(m)
        return {
            "counts": views.counts(migrations),
            "total": len(migrations),
            "loads": views.target_loads(targets, migrations),
            "attention": views.attention(migrations),
        }

    async def dashboard(request: Request, api: ApiClient, session: Session) -> Response:
        return console.render("dashboard.html", session, nav="dashboard", **await dashboard_data(api))

    async def dashboard_part(request: Request, api: ApiClient, session: Session) -> Response:
        return console.render("_dashboard.html", session, **await dashboard_data(api))

    # -- the list -------------------------------------------------------------------------------------

    async def list_data(request: Request, api: ApiClient) -> dict[str, Any]:
        q = request.query_params
        state = q.get("state") if q.get("state") in views.STATES else None
        target, engine = q.get("target") or None, q.get("engine") or None
        targets, migrations = await asyncio.gather(api.targets(), api.migrations(state, target))
        by_name = {str(t.get("name")): t for t in targets}
        rows: list[dict[str, Any]] = []
        for m in sorted(migrations, key=lambda m: str(m.get("name")).casefold()):
            console.lag.record(m)
            m_engine = views.engine_of(m, by_name)
            if engine and m_engine != engine:
                continue
            rows.append({"m": m, "engine": m_engine, "refusal": views.cutover_refusal(m)})
        engines = sorted(
            {str(t.get("engine")) for t in targets if t.get("engine")} | {r["engine"] for r in rows}
        )
        filters = {"state": state or "", "target": target or "", "engine": engine or ""}
        return {
            "rows": rows[:ROWS_SHOWN],
            "hidden": max(0, len(rows) - ROWS_SHOWN),
            "selected": set(q.getlist("ids")),
            "filters": filters,
            "query": urlencode({k: v for k, v in filters.items() if v}),
            "targets": sorted(by_name),
            "engines": engines,
            "ready": sum(1 for r in rows if r["m"].get("state") == "ReadyForCutover"),
        }

    async def migrations_page(request: Request, api: ApiClient, session: Session) -> Response:
        return console.render("migrations.html", session, nav="migrations", **await list_data(request, api))

    async def rows_part(request: Request, api: ApiClient, session: Session) -> Response:
        return console.render("_rows.html", session, **await list_data(request, api))

    # -- one migration --------------------------------------------------------------------------------

    async def migration_data(api: ApiClient, ref: str) -> dict[str, Any]:
        m, targets = await asyncio.gather(api.migration(ref), api.targets())
        events = await api.events(m["id"])
        console.lag.record(m)
        status = m.get("status") or {}
        by_name = {str(t.get("name")): t for t in targets}
        samples = console.lag.samples(m["id"])
        return {
            "m": m,
            "status": status,
            "engine": views.engine_of(m, by_name),
            "sets": views.backup_sets(status),
            "timeline": views.timeline(events),
            "events": list(reversed(events[-EVENTS_SHOWN:])),
            "events_total": len(events),
            "findings": views.migration_findings(m, events),
            "result": views.result_view(status),
            "chart": chart(samples, f"Replay lag of {m.get('name')}"),
            "can_cutover": views.cutover_refusal(m) is None,
            "can_cancel": views.cancel_refusal(m) is None,
            "final": m.get("state") in views.FINAL,
        }

    async def migration_page(request: Request, api: ApiClient, session: Session) -> Response:
        ref = request.path_params["ref"]
        try:
            data = await migration_data(api, ref)
        except ApiFailure as exc:
            if exc.status == 404:
                return not_found(console, session, exc.message)
            raise
        return console.render("migration.html", session, nav="migrations", **data)

    async def migration_part(request: Request, api: ApiClient, session: Session) -> Response:
        return console.render(
            "_migration.html", session, **await migration_data(api, request.path_params["ref"])
        )

    async def retry(request: Request, api: ApiClient, session: Session) -> Response:
        ref = request.path_params["ref"]
        try:
            m = await api.retry(ref)
            session.flash("ok", f"{m['name']}: retry started (attempt {int(m.get('attempt') or 1) + 1}).")
        except ApiFailure as exc:
            session.flash("error", _said(exc))
        return see(f"{PREFIX}/migrations/{ref}")

    # -- cutover and cancel ---------------------------------------------------------------------------

    async def chosen(request: Request, api: ApiClient) -> tuple[list[dict[str, Any]], bool]:
        q = request.query_params
        ready = q.get("ready") == "1"
        if ready:
            return await api.migrations("ReadyForCutover"), True
        refs = set(q.getlist("ids"))
        every = await api.migrations() if refs else []
        return [m for m in every if m.get("id") in refs or m.get("name") in refs], False

    async def confirm_cutover(request: Request, api: ApiClient, session: Session) -> Response:
        picked, ready = await chosen(request, api)
        rows: list[dict[str, Any]] = [{"m": m, "refusal": views.cutover_refusal(m)} for m in picked]
        go: list[dict[str, Any]] = [r["m"] for r in rows if r["refusal"] is None]
        estimates = [
            e
            for m in go
            if isinstance(e := (m.get("status") or {}).get("cutover_estimate_seconds"), int | float)
        ]
        return console.render(
            "confirm.html", session, nav="migrations", action="cutover", rows=rows, go=go, ready=ready,
            longest=max(estimates) if estimates else None,
            back=back_to(request.query_params.get("back"), f"{PREFIX}/migrations"),
        )  # fmt: skip

    async def confirm_cancel(request: Request, api: ApiClient, session: Session) -> Response:
        picked, _ = await chosen(request, api)
        rows: list[dict[str, Any]] = [{"m": m, "refusal": views.cancel_refusal(m)} for m in picked]
        go: list[dict[str, Any]] = [r["m"] for r in rows if r["refusal"] is None]
        return console.render(
            "confirm.html", session, nav="migrations", action="cancel", rows=rows, go=go, ready=False,
            longest=None, back=back_to(request.query_params.get("back"), f"{PREFIX}/migrations"),
        )  # fmt: skip

    async def cutover(request: Request, api: ApiClient, session: Session) -> Response:
        form = form_of(request)
        ids = [i for i in form.get("ids", []) if i]
        back = back_to(field(form, "back"), f"{PREFIX}/migrations")
        if not ids:
            session.flash("error", "Nothing was cut over: no migration was chosen.")
            return see(back)
        try:
            answer = await api.cutover(ids)
        except ApiFailure as exc:
            session.flash("error", _said(exc))
            return see(back)
        accepted = [str(a.get("name")) for a in answer.get("accepted") or []]
        if accepted:
            session.flash("ok", f"Cutover requested for {len(accepted)}: {_names(accepted)}.")
        for r in answer.get("rejected") or []:
            session.flash("error", f"{r.get('name')}: not cut over: {r.get('reason')}")
        return see(back)

    async def cancel(request: Request, api: ApiClient, session: Session) -> Response:
        form = form_of(request)
        ids = [i for i in form.get("ids", []) if i]
        back = back_to(field(form, "back"), f"{PREFIX}/migrations")
        results = await asyncio.gather(*(api.cancel(i) for i in ids), return_exceptions=True)
        done = []
        for ref, result in zip(ids, results, strict=True):
            if isinstance(result, SignedOut):
                raise result
            if isinstance(result, ApiFailure):
                session.flash("error", f"{ref}: {_said(result)}")
            elif isinstance(result, BaseException):
                raise result
            else:
                done.append(str(result.get("name")))
        if done:
            session.flash("ok", f"Cancel requested for {len(done)}: {_names(done)}.")
        elif not ids:
            session.flash("error", "Nothing was canceled: no migration was chosen.")
        return see(back)

    # -- login ----------------------------------------------------------------------------------------

    async def login_form(request: Request) -> Response:
        nonce = gate.nonce()
        expired = request.query_params.get("expired") == "1"
        response = console.render(
            "login.html", None, nonce=nonce, next=gate.safe_next(request.query_params.get("next")),
            error="Your session ended: the API token was changed or the server restarted. Sign in again."
            if expired else "",
        )  # fmt: skip
        response.headers.append("set-cookie", gate.cookie(gate.LOGIN_COOKIE, nonce, f"{PREFIX}/login", 600))
        return response

    async def login(request: Request) -> Response:
        form = form_of(request)
        token, nonce = field(form, "token"), field(form, "nonce")
        target = gate.safe_next(field(form, "next"))
        expected = gate.cookies_of(dict(request.headers)).get(gate.LOGIN_COOKIE)
        error = ""
        if not gate.same_secret(expected, nonce):
            error = "The login form had expired. Enter the token again."
        elif not token:
            error = "Enter the API token."
        else:
            try:
                await console.api.as_user(token).targets()
            except SignedOut:
                error = "That token is not valid. Use the token `ferry serve` printed when it first started."
            except ApiFailure as exc:
                error = _said(exc)
        if error:
            fresh = gate.nonce()
            refused = console.render("login.html", None, 401, nonce=fresh, next=target, error=error)
            refused.headers.append(
                "set-cookie", gate.cookie(gate.LOGIN_COOKIE, fresh, f"{PREFIX}/login", 600)
            )
            return refused
        session = console.sessions.start(token)
        response = see(target)
        secure = request.url.scheme == "https"
        response.headers.append("set-cookie", gate.cookie(gate.SESSION_COOKIE, session.id, secure=secure))
        response.headers.append("set-cookie", gate.cookie(gate.LOGIN_COOKIE, "", f"{PREFIX}/login", 0))
        return response

    async def logout(request: Request) -> Response:
        console.sessions.end(session_of(request).id)
        response = see(f"{PREFIX}/login")
        response.headers.append("set-cookie", gate.cookie(gate.SESSION_COOKIE, "", max_age=0))
        return response

    async def home(request: Request) -> Response:
        return see("/")

    async def missing(request: Request) -> Response:
        return not_found(console, session_of(request), "There is no such page in the Ferry console.")

    p = PREFIX
    routes = [
        Route("/", signed_in(dashboard), methods=["GET"]),
        Route(p, home, methods=["GET"]),
        Route(f"{p}/", home, methods=["GET"]),
        Route(f"{p}/login", login_form, methods=["GET"]),
        Route(f"{p}/login", login, methods=["POST"]),
        Route(f"{p}/logout", logout, methods=["POST"]),
        Route(f"{p}/parts/dashboard", signed_in(dashboard_part), methods=["GET"]),
        Route(f"{p}/migrations", signed_in(migrations_page), methods=["GET"]),
        Route(f"{p}/parts/rows", signed_in(rows_part), methods=["GET"]),
        Route(f"{p}/migrations/{{ref}}", signed_in(migration_page), methods=["GET"]),
        Route(f"{p}/parts/migration/{{ref}}", signed_in(migration_part), methods=["GET"]),
        Route(f"{p}/migrations/{{ref}}/retry", signed_in(retry), methods=["POST"]),
        Route(f"{p}/cutover", signed_in(confirm_cutover), methods=["GET"]),
        Route(f"{p}/cutover", signed_in(cutover), methods=["POST"]),
        Route(f"{p}/cancel", signed_in(confirm_cancel), methods=["GET"]),
        Route(f"{p}/cancel", signed_in(cancel), methods=["POST"]),
        *newpage.routes(console, signed_in),
        Mount(f"{p}/static", StaticFiles(directory=HERE / "static"), name="static"),
        Route(f"{p}/{{rest:path}}", missing),
    ]
    return Router(routes)


def _said(exc: ApiFailure) -> str:
    return exc.message + (f" ({exc.hint})" if exc.hint else "")


def _names(names: list[str]) -> str:
    return ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
