"""`ferry migrations ...`: the migration service's REST API from the command line.

Every command talks to the API of a running `ferry serve` (--api, FERRY_API; default
http://127.0.0.1:8470) with its bearer token (--token, FERRY_TOKEN, or a file the user kept:
~/.config/ferry/token). httpx is imported only when a command runs, so `ferry plan` does not pay for it.

Exit codes: 0 ok; 1 the service refused the operation (wrong state) or the migration failed; 2 the API is
unreachable or the input unusable (4xx); 3 a server error (5xx) or a bug here.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import typer

from ferry.cli import render
from ferry.core.errors import FerryError, UsageError
from ferry.core.migration import State
from ferry.service.contracts import NAME_PATTERN

if TYPE_CHECKING:
    import httpx

EXIT_OK, EXIT_REFUSED, EXIT_INPUT, EXIT_INTERNAL = 0, 1, 2, 3
DEFAULT_API = "http://127.0.0.1:8470"
TIMEOUT = 30.0

app = typer.Typer(
    name="migrations",
    help="Create, list, watch, cut over, cancel and retry migrations run by `ferry serve` (through its API).",
    no_args_is_help=True,
)
out = render.console()
err = render.console(stderr=True)

ApiOpt = Annotated[
    str, typer.Option("--api", envvar="FERRY_API", help="URL of the Ferry API (`ferry serve`).")
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="FERRY_TOKEN",
        show_default=False,
        help="The API token (default: ~/.config/ferry/token, if you saved it there).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON answer.")]
IntervalOpt = Annotated[float, typer.Option("--interval", hidden=True, help="Seconds between refreshes.")]


class ApiFailure(FerryError):
    """An API call that did not succeed; `exit_code` says how the command ends."""

    def __init__(self, message: str, hint: str, exit_code: int, details: Any = None) -> None:
        super().__init__(message, hint)
        self.exit_code = exit_code
        self.details = details


# -- talking to the API --------------------------------------------------------------------------------


def ref(value: str) -> str:
    """A migration's id or name as given on the command line: refused here when no migration can have it
    (`victim1/cancel?` must not become another URL), so the service is never asked about it."""
    if not re.match(NAME_PATTERN, value):
        raise UsageError(
            f"'{value}' is not a migration id or name",
            "ids look like mig-k3xq7d2m4a; names are letters, digits, '.', '_' and '-'; "
            "`ferry migrations list` shows them",
        )
    return value


def path(*segments: str) -> str:
    """An API path from its segments, each percent-encoded whole: a '/', '?' or '#' in one stays in it."""
    return "".join("/" + quote(s, safe="") for s in segments)


class Client:
    def __init__(self, api: str, token: str | None) -> None:
        import httpx

        from ferry.service.auth import client_token

        self.api = api.rstrip("/")
        self.token_given = client_token(token)
        headers = {"Authorization": f"Bearer {self.token_given}"} if self.token_given else {}
        self._http = httpx.Client(base_url=f"{self.api}/api/v1", headers=headers, timeout=TIMEOUT)

    def close(self) -> None:
        self._http.close()

    def call(self, method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None) -> Any:
        import httpx

        try:
            resp = self._http.request(method, path, json=body, params=params)
        except httpx.InvalidURL as exc:
            raise ApiFailure(
                f"cannot call the Ferry API at {self.api}: {exc}", "check --api (FERRY_API)", EXIT_INPUT
            ) from None
        except httpx.TimeoutException:
            raise ApiFailure(
                f"the Ferry API at {self.api} did not answer within {TIMEOUT:.0f} s",
                "check that `ferry serve` is running and not overloaded",
                EXIT_INPUT,
            ) from None
        except httpx.HTTPError as exc:
            raise ApiFailure(
                f"cannot reach the Ferry API at {self.api}: {exc}",
                "start it with `ferry serve`, or point --api (FERRY_API) at it",
                EXIT_INPUT,
            ) from None
        if resp.status_code >= 400:
            raise self._failure(resp)
        return resp.json()

    def _failure(self, resp: httpx.Response) -> ApiFailure:
        status = resp.status_code
        try:
            error = resp.json()["error"]
            message, hint, details = str(error["message"]), str(error.get("hint") or ""), error.get("details")
        except (ValueError, KeyError, TypeError):  # not Ferry's error shape: a proxy, another server
            message, hint, details = (
                f"HTTP {status} from {self.api}",
                "is --api the URL of `ferry serve`?",
                None,
            )
        if status == 401 and not self.token_given:
            hint = "no token given: pass --token, set FERRY_TOKEN, or save it in ~/.config/ferry/token"
        if status == 409:
            code = EXIT_REFUSED
        elif status < 500 or status == 503:  # 503: the orchestrator (Temporal) is unreachable
            code = EXIT_INPUT
        else:
            code = EXIT_INTERNAL
        return ApiFailure(message, hint, code, details)


@contextmanager
def _session(api: str, token: str | None) -> Iterator[Client]:
    """A client, and the errors of a command turned into a message, a hint and an exit code."""
    client: Client | None = None
    try:
        client = Client(api, token)
        yield client
    except (typer.Exit, typer.Abort):
        raise
    except ApiFailure as exc:
        render.error(err, exc.message, exc.hint)
        rejected = exc.details.get("rejected", []) if isinstance(exc.details, dict) else []
        for item in rejected[1:]:  # the first one is in the message
            err.print(render.plain(f"  also refused: {item.get('reason')}"))
        raise typer.Exit(exc.exit_code) from None
    except UsageError as exc:
        render.error(err, exc.message, exc.hint)
        raise typer.Exit(EXIT_INPUT) from None
    except KeyboardInterrupt:
        err.print("stopped; the migrations go on in the service")
        raise typer.Exit(EXIT_OK) from None
    except Exception as exc:
        render.internal_error(err, exc)
        raise typer.Exit(EXIT_INTERNAL) from None
    finally:
        if client is not None:
            client.close()


def _state(value: str | None) -> str | None:
    """A state as users type it: `readyforcutover`, `ready-for-cutover` or `ReadyForCutover`."""
    if value is None:
        return None
    wanted = value.replace("-", "").replace("_", "").lower()
    for s in State:
        if s.value.lower() == wanted:
            return s.value
    raise UsageError(f"unknown state '{value}'", f"states: {', '.join(s.value for s in State)}")


def _exit_for(m: dict[str, Any]) -> int:
    return EXIT_REFUSED if m["state"] in (State.FAILED.value, State.CANCELED.value) else EXIT_OK


# -- commands -------------------------------------------------------------------------------------------


@app.command()
def create(
    sources: Annotated[list[str], typer.Argument(help="Store URL or path of each source's backups.")],
    target: Annotated[str, typer.Option("--target", "-t", help="The target to migrate onto.")],
    database: Annotated[
        list[str] | None,
        typer.Option(
            "--database", "-d", help="Only this database of the stores (repeatable; default: every one)."
        ),
    ] = None,
    offline: Annotated[
        bool, typer.Option("--offline", help="Restore and recover once, instead of online until cutover.")
    ] = False,
    last_backup: Annotated[
        str | None, typer.Option("--last-backup", help="Offline: the last backup file; then cut over.")
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="The migration's name (one migration only).")
    ] = None,
    no_scan: Annotated[
        bool,
        typer.Option(
            "--no-scan",
            help="Do not scan the stores first: one migration per SOURCE (of its only database, or the one "
            "--database names), for stores only the target's agent can read.",
        ),
    ] = False,
    api: ApiOpt = DEFAULT_API,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
    interval: IntervalOpt = 1.0,
) -> None:
    """Create and start migrations: one per database found in the SOURCE stores (SQL Server: each database
    of the store; PostgreSQL: each cluster), or the --database ones; all created, or none."""
    with _session(api, token) as client:
        mode = "offline" if offline else "online"
        base = {"target": target, "mode": mode, "last_backup": last_backup}
        if no_scan:
            if database and len(database) > 1:
                raise UsageError(
                    "--no-scan makes one migration per source: give at most one --database",
                    "leave --no-scan out to have every database found",
                )
            only = database[0] if database else None
            items = [{**base, "source": s, "database": only} for s in sources]
        else:
            engine = _target_engine(client, target)
            items = []
            for s in sources:
                plan = _scan(client, s, database or [], None, interval, quiet=as_json)
                items += [
                    {**base, "source": s, "database": db} for db in _databases(s, plan, engine, database)
                ]
        if name and len(items) > 1:
            raise UsageError(
                f"--name names one migration, but {len(items)} would be created",
                "leave --name out: each name is derived from its database or source folder",
            )
        if name:
            items[0]["name"] = name
        body = [{k: v for k, v in item.items() if v is not None} for item in items]
        answer = client.call("POST", "/migrations", body={"migrations": body})
        created = answer["migrations"]
        if as_json:
            render.emit_json(answer)
            return
        out.print(render.migrations_table(created))
        out.print(f"{len(created)} migration(s) created; watch one with `ferry migrations show ID --watch`")


def _target_engine(client: Client, target: str) -> str | None:
    """The engine of `target`, as its agent registered it (None: unknown yet; the create names it)."""
    found = [t for t in client.call("GET", "/targets")["targets"] if t["name"] == target]
    return str(found[0]["engine"]) if found and found[0].get("agent") else None


def _scan(
    client: Client, location: str, databases: list[str], stop_at: str | None, interval: float, quiet: bool
) -> dict[str, Any]:
    """The plan of `location` (POST /api/v1/scans, polled until it ends); a failed scan is an error."""
    body: dict[str, Any] = {"location": location, "wait_seconds": 20}
    if databases:
        body["database"] = databases
    if stop_at:
        body["stop_at"] = stop_at
    job = client.call("POST", "/scans", body=body)
    shown = False
    while job["state"] == "running":
        if not quiet and not shown:
            err.print(render.plain(f"scanning {job['location']} ({job['id']})..."))
            shown = True
        time.sleep(interval)
        job = client.call("GET", path("scans", job["id"]))
    if job["state"] == "failed":
        error = job.get("error") or {}
        raise ApiFailure(
            str(error.get("message") or f"the scan of {job['location']} failed"),
            str(error.get("hint") or ""),
            EXIT_INPUT,
        )
    return dict(job["plan"])


def _databases(
    source: str, plan: dict[str, Any], engine: str | None, wanted: list[str] | None
) -> list[str | None]:
    """The databases of a scanned store to migrate onto a target of `engine`: every one, each by name
    (a store of one PostgreSQL cluster: None, the store's only database). Blocked ones refuse the whole
    request, naming what blocks them."""
    dbs = [d for d in plan["databases"] if engine is None or d["engine"] == engine]
    if not dbs:
        held = ", ".join(sorted({f"{d['name']} ({d['engine']})" for d in plan["databases"]})) or "none"
        raise ApiFailure(
            f"no {engine or ''} database to migrate in '{plan['source']}'".replace("no  ", "no "),
            f"databases found there: {held}",
            EXIT_INPUT,
        )
    blocked = [d for d in dbs if not d["executable"]]
    if blocked:
        first = blocked[0]
        why = next((f["message"] for f in first["findings"] if f["severity"] == "error"), "no restore chain")
        raise ApiFailure(
            f"{len(blocked)} database(s) of '{plan['source']}' cannot be migrated; [{first['name']}]: {why}",
            f"`ferry migrations scan {render.clean(source)}` shows why; leave them out with --database",
            EXIT_REFUSED,
        )
    if len(dbs) == 1 and dbs[0]["engine"] == "postgres" and not wanted:
        return [None]
    return [str(d["name"]) for d in dbs]


@app.command("scan")
def scan_cmd(
    location: Annotated[str, typer.Argument(help="Store URL or path, read by the service.")],
    database: Annotated[
        list[str] | None, typer.Option("--database", "-d", help="Only this database (repeatable).")
    ] = None,
    stop_at: Annotated[
        str | None, typer.Option("--stop-at", help="Plan the restore to this time (ISO 8601).")
    ] = None,
    stop_at_lsn: Annotated[str | None, typer.Option("--stop-at-lsn", help="Plan it to this LSN.")] = None,
    api: ApiOpt = DEFAULT_API,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
    interval: IntervalOpt = 1.0,
) -> None:
    """What a store holds, read by the service: each database, its restore chain and the findings (the
    same JSON as `ferry plan --json`)."""
    with _session(api, token) as client:
        if stop_at and stop_at_lsn:
            raise UsageError("--stop-at and --stop-at-lsn exclude each other", "give one point to restore to")
        point = f"lsn:{stop_at_lsn}" if stop_at_lsn else stop_at
        plan = _scan(client, location, database or [], point, interval, quiet=as_json)
        if as_json:
            render.emit_json(plan)
        else:
            render.plan_json(out, plan)
        errors = [f for d in plan["databases"] for f in d["findings"]] + list(plan["findings"])
        if any(f["severity"] == "error" for f in errors):
            raise typer.Exit(EXIT_REFUSED)


@app.command("list")
def list_cmd(
    state: Annotated[
        str | None, typer.Option("--state", "-s", help="Only this state (ReadyForCutover...).")
    ] = None,
    target: Annotated[
        str | None, typer.Option("--target", "-t", help="Only migrations onto this target.")
    ] = None,
    api: ApiOpt = DEFAULT_API,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List migrations with their state, pending log backups and lag."""
    with _session(api, token) as client:
        params = {k: v for k, v in {"state": _state(state), "target": target}.items() if v}
        answer = client.call("GET", "/migrations", params=params)
        if as_json:
            render.emit_json(answer)
            return
        items = answer["migrations"]
        if not items:
            out.print("no migrations" + (" match" if params else ""))
            return
        out.print(render.migrations_table(items))
        counts: dict[str, int] = {}
        for m in items:
            counts[m["state"]] = counts.get(m["state"], 0) + 1
        out.print(", ".join(f"{n} {s}" for s, n in counts.items()))


@app.command()
def show(
    migration: Annotated[str, typer.Argument(help="The migration's id or name.")],
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Refresh every second until the migration ends.")
    ] = False,
    api: ApiOpt = DEFAULT_API,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
    interval: IntervalOpt = 1.0,
) -> None:
    """A migration's status: files being and last restored, pending logs, lag, cutover estimate."""
    with _session(api, token) as client:
        m = client.call("GET", path("migrations", ref(migration)))["migration"]
        if not watch:
            if as_json:
                render.emit_json({"migration": m})
            else:
                out.print(render.migration_detail(m))
            return
        m = _watch(client, m, as_json, interval)
        raise typer.Exit(_exit_for(m))


def _watch(client: Client, m: dict[str, Any], as_json: bool, interval: float) -> dict[str, Any]:
    """Poll until the migration is in a final state: a live panel, or one JSON line per change."""

    def fetch() -> dict[str, Any]:
        return dict(client.call("GET", path("migrations", m["id"]))["migration"])

    if as_json:
        render.emit_json({"migration": m}, lines=True)
        while not State(m["state"]).terminal:
            time.sleep(interval)
            new = fetch()
            if new != m:
                render.emit_json({"migration": new}, lines=True)
            m = new
        return m
    from rich.live import Live

    with Live(render.migration_detail(m), console=out, auto_refresh=False) as live:
        while not State(m["state"]).terminal:
            time.sleep(interval)
            m = fetch()
            live.update(render.migration_detail(m), refresh=True)
    return m


@app.command()
def cutover(
    migrations: Annotated[list[str] | None, typer.Argument(help="Ids or names of the migrations.")] = None,
    all_ready: Annotated[
        bool, typer.Option("--all-ready", help="Every migration in ReadyForCutover.")
    ] = False,
    final_lsn: Annotated[
        str | None, typer.Option("--final-lsn", help="Replay at least to this LSN (X/Y); one migration only.")
    ] = None,
    last_backup: Annotated[
        str | None,
        typer.Option(
            "--last-backup",
            help="SQL Server: wait for this log backup (the tail-log backup) and restore it last; one "
            "migration only.",
        ),
    ] = None,
    api: ApiOpt = DEFAULT_API,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cut over migrations that are ReadyForCutover or RestoringLogs (one, many, or --all-ready): restore
    what is left, bring the target online, check it. The downtime counts from this request."""
    with _session(api, token) as client:
        ids = [ref(m) for m in migrations or []]
        if all_ready == bool(ids):
            raise UsageError(
                "give migration ids or --all-ready (one of them)",
                "`ferry migrations list --state ReadyForCutover` shows the ready ones",
            )
        if final_lsn and len(ids) != 1:
            raise UsageError("--final-lsn is for one migration", "cut over the others in another call")
        if last_backup and len(ids) != 1:
            raise UsageError("--last-backup is for one migration", "cut over the others in another call")
        body: dict[str, Any] = {"all_ready": True} if all_ready else {"ids": ids}
        if final_lsn:
            body["final_lsn"] = {ids[0]: final_lsn}
        if last_backup:
            body["last_backup"] = {ids[0]: last_backup}
        answer = client.call("POST", "/migrations/cutover", body=body)
        if as_json:
            render.emit_json(answer)
        else:
            render.cutover_answer(out, answer, all_ready)
        if answer["rejected"]:
            raise typer.Exit(EXIT_REFUSED)


@app.command()
def cancel(
    migration: Annotated[str, typer.Argument(help="The migration's id or name.")],
    drop: Annotated[
        bool,
        typer.Option(
            "--drop", help="SQL Server: drop the RESTORING database instead of leaving it for inspection."
        ),
    ] = False,
    api: ApiOpt = DEFAULT_API,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cancel a migration: restoring stops, the target database is left unrecovered (RESTORING), or dropped
    with --drop; the source is untouched."""
    with _session(api, token) as client:
        params = {"drop": "true"} if drop else None
        answer = client.call("POST", path("migrations", ref(migration), "cancel"), params=params)
        if as_json:
            render.emit_json(answer)
            return
        m = answer["migration"]
        out.print(
            render.plain(
                f"cancel requested for {m['name']} ({m['id']}); it moves to Canceled once its workflow "
                "has stopped"
            )
        )


@app.command()
def retry(
    migration: Annotated[str, typer.Argument(help="The migration's id or name.")],
    api: ApiOpt = DEFAULT_API,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a Failed migration again; restored steps are skipped, it goes on where it stopped."""
    with _session(api, token) as client:
        answer = client.call("POST", path("migrations", ref(migration), "retry"))
        if as_json:
            render.emit_json(answer)
            return
        m = answer["migration"]
        out.print(render.plain(f"retrying {m['name']} ({m['id']}), attempt {m['attempt']}: {m['state']}"))


@app.command()
def events(
    migration: Annotated[str, typer.Argument(help="The migration's id or name.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events until the migration ends.")
    ] = False,
    after: Annotated[int, typer.Option("--after", help="Only events after this sequence number.")] = 0,
    api: ApiOpt = DEFAULT_API,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
    interval: IntervalOpt = 1.0,
) -> None:
    """A migration's event log: state changes, and each step with its command and timing."""
    with _session(api, token) as client:
        last = after
        while True:
            # The state first: a final state's event is written with it, so the fetch after sees it.
            m = client.call("GET", path("migrations", ref(migration)))["migration"] if follow else None
            answer = client.call("GET", path("migrations", ref(migration), "events"), params={"after": last})
            render.events(out, answer, as_json, lines=follow)
            last = answer["last_seq"]
            if m is None:
                return
            if State(m["state"]).terminal:
                raise typer.Exit(_exit_for(m))
            time.sleep(interval)
