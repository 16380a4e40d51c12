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
    offline: Annotated[
        bool, typer.Option("--offline", help="Restore and recover once, instead of online until cutover.")
    ] = False,
    last_backup: Annotated[
        str | None, typer.Option("--last-backup", help="Offline: the last backup file; then cut over.")
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="The migration's name (one source only).")
    ] = None,
    api: ApiOpt = DEFAULT_API,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create and start migrations: one per SOURCE, all in one call (all created, or none)."""
    with _session(api, token) as client:
        if name and len(sources) > 1:
            raise UsageError(
                "--name names one migration, but several sources were given",
                "leave --name out: each name is derived from its source's folder",
            )
        mode = "offline" if offline else "online"
        items = [
            {
                k: v
                for k, v in {
                    "source": s,
                    "target": target,
                    "mode": mode,
                    "name": name,
                    "last_backup": last_backup,
                }.items()
                if v is not None
            }
            for s in sources
        ]
        answer = client.call("POST", "/migrations", body={"migrations": items})
        created = answer["migrations"]
        if as_json:
            render.emit_json(answer)
            return
        out.print(render.migrations_table(created))
        out.print(f"{len(created)} migration(s) created; watch one with `ferry migrations show ID --watch`")


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
    api: ApiOpt = DEFAULT_API,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cut over migrations that are ReadyForCutover or RestoringLogs (one, many, or --all-ready)."""
    with _session(api, token) as client:
        ids = [ref(m) for m in migrations or []]
        if all_ready == bool(ids):
            raise UsageError(
                "give migration ids or --all-ready (one of them)",
                "`ferry migrations list --state ReadyForCutover` shows the ready ones",
            )
        if final_lsn and len(ids) != 1:
            raise UsageError("--final-lsn is for one migration", "cut over the others in another call")
        body: dict[str, Any] = {"all_ready": True} if all_ready else {"ids": ids}
        if final_lsn:
            body["final_lsn"] = {ids[0]: final_lsn}
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
    api: ApiOpt = DEFAULT_API,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cancel a migration: restoring stops, the target database is left unrecovered, the source untouched."""
    with _session(api, token) as client:
        answer = client.call("POST", path("migrations", ref(migration), "cancel"))
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
