"""New migration: a store location, the databases found there (POST /api/v1/scans, whose plan is the
answer of `ferry plan --json`), then the databases picked, a target and a mode (POST /api/v1/migrations).
A scan that takes longer than a few seconds runs on: the page shows it running and asks again every
two seconds (htmx) until its plan or its error is there.

The location may carry a credential (`smb://user:password@host/share`, a SAS in a blob URL). It stays in
the session on the server between the scan and the start: the page shows it redacted and holds only a
key to it, so no secret is ever written into a page. Resubmitting the redacted form unchanged means the
location scanned last.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ferry.core.redact import redact_location
from ferry.web import views
from ferry.web.api import ApiClient, ApiFailure, SignedOut
from ferry.web.console import PREFIX
from ferry.web.sessions import Session

if TYPE_CHECKING:
    from ferry.web.console import Console

Handler = Callable[[Request, ApiClient, Session], Awaitable[Response]]
SCAN_WAIT = 5.0  # seconds the scan request waits for the plan before the page shows the scan running
NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # the API's migration names


def routes(
    console: Console, signed_in: Callable[[Handler], Callable[[Request], Awaitable[Response]]]
) -> list[Route]:
    from ferry.web.pages import _said, field, form_of, see

    async def new_page(request: Request, api: ApiClient, session: Session) -> Response:
        key = request.query_params.get("scan") or ""
        pending = session.pending.get(key)
        targets = await api.targets()
        if pending is not None and pending.get("state") == "running":
            await follow(api, pending)
        context: dict[str, Any] = {
            "targets": targets,
            "key": key if pending else "",
            "location": redact_location(str(pending["location"])) if pending else "",
            "wanted": ", ".join(pending.get("databases") or ()) if pending else "",
            "scanning": bool(pending and pending.get("state") == "running"),
            "failed": pending.get("error") if pending else None,
            "scanned": None,
        }
        if pending and isinstance(pending.get("plan"), Mapping):
            context["scanned"] = found = scanned(pending["plan"], targets)
            # The targets of the engines found come first: the one preselected fits the databases.
            engines = {db["engine"] for db in found["databases"]}
            context["targets"] = sorted(targets, key=lambda t: t.get("engine") not in engines)
        return console.render("new.html", session, nav="new", **context)

    async def scan(request: Request, api: ApiClient, session: Session) -> Response:
        form = form_of(request)
        location = field(form, "location")
        for earlier in session.pending.values():  # the redacted location shown, sent back unchanged
            if location and location == redact_location(str(earlier["location"])):
                location = str(earlier["location"])
        wanted = [d for d in re.split(r"[,\s]+", field(form, "databases")) if d]
        if not location:
            session.flash("error", "Enter the location of the backups.")
            return see(f"{PREFIX}/new")
        try:
            job = await api.scan(location, wanted, SCAN_WAIT)
        except ApiFailure as exc:
            session.flash("error", f"The scan could not start: {_said(exc)}")
            return see(f"{PREFIX}/new")
        pending: dict[str, Any] = {"location": location, "databases": wanted}
        take_job(pending, job)
        return see(f"{PREFIX}/new?scan={session.keep_scan(pending)}")

    async def start(request: Request, api: ApiClient, session: Session) -> Response:
        form = form_of(request)
        key = field(form, "scan")
        pending = session.pending.get(key)
        if pending is None:
            session.flash("error", "That scan is no longer known to the console: scan the location again.")
            return see(f"{PREFIX}/new")
        again = f"{PREFIX}/new?scan={key}"
        target, mode = field(form, "target"), field(form, "mode") or "online"
        if not target:
            session.flash("error", "Choose a target.")
            return see(again)
        if mode not in ("online", "offline"):
            session.flash("error", "The mode is online or offline.")
            return see(again)
        base = {"source": str(pending["location"]), "target": target, "mode": mode}
        engines = {str(t.get("name")): str(t.get("engine") or "") for t in await api.targets()}
        items: list[dict[str, Any]] = []
        plan = pending.get("plan")
        databases = list(plan.get("databases") or []) if isinstance(plan, Mapping) else []
        several = len(databases) > 1
        for pick in form.get("pick", []):
            if not pick.isdigit() or int(pick) >= len(databases):
                continue
            i = int(pick)
            db = databases[i]
            if refusal := engine_mismatch(db, target, engines):
                session.flash("error", refusal)
                return see(again)
            item = dict(base)
            if several or db.get("engine") == "sqlserver":
                item["database"] = str(db.get("name"))
            name = field(form, f"name-{i}")
            if name:
                item["name"] = name
            items.append(item)
        if not items:
            session.flash("error", "Pick at least one database to migrate.")
            return see(again)
        try:
            created = await api.create(items)
        except ApiFailure as exc:
            session.flash("error", f"Nothing was started: {_said(exc)}")
            return see(again)
        session.pending.pop(key, None)
        names = ", ".join(str(m.get("name")) for m in created[:10])
        session.flash("ok", f"Started {len(created)} migration{'s' if len(created) != 1 else ''}: {names}.")
        if len(created) == 1:
            return see(f"{PREFIX}/migrations/{created[0]['id']}")
        return see(f"{PREFIX}/migrations")

    return [
        Route(f"{PREFIX}/new", signed_in(new_page), methods=["GET"]),
        Route(f"{PREFIX}/new/scan", signed_in(scan), methods=["POST"]),
        Route(f"{PREFIX}/new/start", signed_in(start), methods=["POST"]),
    ]


def engine_mismatch(db: Mapping[str, Any], target: str, engines: Mapping[str, str]) -> str | None:
    """Why a database cannot go to that target (another engine's), said before anything is created."""
    mine, theirs = str(db.get("engine") or ""), engines.get(target, "")
    if not mine or not theirs or mine == theirs:
        return None
    return (
        f"Nothing was started: {db.get('name')} is a {views.engine_words(mine)} database and target "
        f"{target} is {views.engine_words(theirs)}; choose a {views.engine_words(mine)} target."
    )


async def follow(api: ApiClient, pending: dict[str, Any]) -> None:
    """A running scan's job, asked again: its plan or its error once it ended."""
    try:
        take_job(pending, await api.scan_job(str(pending["scan_id"])))
    except ApiFailure as exc:
        if isinstance(exc, SignedOut):
            raise
        # The server forgot it (restarted, or an hour passed): say so; scanning again is the way on.
        pending.update(state="failed", error={"message": exc.message, "hint": exc.hint})


def take_job(pending: dict[str, Any], job: Mapping[str, Any]) -> None:
    pending.update(
        scan_id=job.get("id"), state=job.get("state"), plan=job.get("plan"), error=job.get("error")
    )
    pending["seconds"] = job.get("seconds")


def scanned(result: Mapping[str, Any], targets: list[dict[str, Any]]) -> dict[str, Any]:
    """The scan's answer as the page shows it: each database with its chain and its findings (worst
    first), whether it can be restored, a default name, and the targets of its engine."""
    engines = {str(t.get("name")): str(t.get("engine") or "") for t in targets}
    databases = []
    for i, db in enumerate(result.get("databases") or []):
        if not isinstance(db, Mapping):
            continue
        findings = views.migration_findings({"status": {"findings": db.get("findings") or []}})
        errors = [f for f in findings if f.severity == "error"]
        engine = str(db.get("engine") or "")
        name = str(db.get("name") or "")
        databases.append(
            {
                "index": i,
                "name": name,
                "engine": engine,
                "server": str(db.get("server") or ""),
                "restores_to": db.get("restores_to") or db.get("restores_to_lsn") or "",
                "executable": bool(db.get("executable")) and not errors,
                "steps": [s for s in db.get("steps") or [] if isinstance(s, Mapping)],
                "findings": findings,
                "errors": len(errors),
                "default_name": name if engine == "sqlserver" and NAME_OK.match(name) else "",
                "targets": [t for t, e in engines.items() if not e or not engine or e == engine],
            }
        )
    files = views.migration_findings({"status": {"findings": result.get("findings") or []}})
    return {"databases": databases, "findings": files}
