"""`ferry`: the command line. Parses options, calls the pipeline, renders tables or JSON.

Exit codes: 0 ok, 1 error findings (or an operation that failed), 2 unusable input or unreachable store,
3 internal error.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ferry import __version__
from ferry.cli import mssql, render, service
from ferry.cli.migrations import app as migrations_app
from ferry.cli.script import script as script_command
from ferry.cli.service import BlockedAfter, ReadyLag
from ferry.core.catalog import RecoveryTarget
from ferry.core.errors import FerryError, StoreError, UsageError
from ferry.core.findings import has_errors
from ferry.engines.registry import all_engines
from ferry.pipeline.catalog import build_catalog, build_plan, select_databases
from ferry.pipeline.discover import ScanResult, scan
from ferry.stores.base import CheckedStore
from ferry.stores.local import LocalStore
from ferry.stores.location import StoreKind, parse_location, redact
from ferry.stores.registry import open_location

EXIT_OK, EXIT_FINDINGS, EXIT_INPUT, EXIT_INTERNAL = 0, 1, 2, 3

app = typer.Typer(
    name="ferry",
    help="Ferry reads native database backups where they are and plans, runs and verifies migrations.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(migrations_app, name="migrations")
app.command("script")(script_command)
app.command("serve")(service.serve)
app.command("agent")(service.agent)
out = render.console()
err = render.console(stderr=True)


def os_error(exc: OSError, path: object = None) -> UsageError:
    """What the file system said, on which path, and what to do about it."""
    where = path if path is not None else (exc.filename or "a file")
    reason = exc.strerror or type(exc).__name__
    if exc.errno == errno.ENAMETOOLONG:
        hint = "a name in the path is longer than 255 bytes, or the whole path longer than 4096: check it"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        hint = "Ferry's user may not read it, or may not enter a folder above it: check their permissions"
    elif exc.errno == errno.ELOOP:
        hint = "the path goes through a loop of symbolic links: check them"
    else:
        hint = "check the path"
    return UsageError(f"cannot read '{where}': {reason}", hint)


def _fail(exc: FerryError, code: int) -> typer.Exit:
    render.error(err, exc.message, exc.hint)
    return typer.Exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn Ferry's errors into a message, a hint and an exit code; anything else is a bug (exit 3)."""
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except (UsageError, StoreError) as exc:
        raise _fail(exc, EXIT_INPUT) from None
    except FerryError as exc:
        raise _fail(exc, EXIT_FINDINGS) from None
    except OSError as exc:  # the file system refused: not a bug in Ferry, and the user can act on it
        raise _fail(os_error(exc), EXIT_INPUT) from None
    except Exception as exc:
        render.internal_error(err, exc)
        raise typer.Exit(EXIT_INTERNAL) from None


@contextmanager
def _progress(label: str, quiet: bool) -> Iterator[Callable[[int, int | None], None]]:
    """A progress line that appears only when the work takes more than a second (and stderr is a tty)."""
    started = time.monotonic()
    bar: Progress | None = None
    task = None

    def update(done: int, total: int | None) -> None:
        nonlocal bar, task
        if quiet or not err.is_terminal:
            return
        if bar is None:
            if time.monotonic() - started < 1.0:
                return
            bar = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TextColumn("{task.completed} files"),
                TimeElapsedColumn(),
                console=err,
                transient=True,
            )
            bar.start()
            task = bar.add_task(label, total=total)
        assert task is not None
        bar.update(task, completed=done)

    try:
        yield update
    finally:
        if bar is not None:
            bar.stop()


def _scan(location: str, quiet: bool) -> ScanResult:
    store, prefix = open_location(location)
    _check_store(store)
    with _progress(f"Reading backup headers in {escape(render.clean(location))}", quiet) as update:
        return scan(store, all_engines(), prefix, progress=update)


def _check_store(store: object) -> None:
    """Credentials rejected, a missing container, an expired SAS: said before anything starts (exit 2)."""
    if not isinstance(store, CheckedStore):
        return
    problems = [f for f in store.check_access() if f.severity.value == "error"]
    if problems:
        first = problems[0]
        raise StoreError("; ".join(f.message for f in problems), first.hint)


@app.command()
def inspect(
    files: Annotated[
        list[str], typer.Argument(help="Backup files (.bak, .trn, any name): paths or store URLs.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="RESTORE HEADERONLY/FILELISTONLY as JSON.")] = False,
) -> None:
    """Show what backup files hold: RESTORE HEADERONLY and FILELISTONLY, read with no SQL Server."""
    with _errors():
        engines = all_engines()
        rows: list[dict[str, Any]] = []
        failed = False
        for arg in files:
            store, key, shown = _one_object(arg)
            reader = store.open(key)
            try:
                head = reader.read(0, 16)
                engine = next((e for e in engines if e.sniff(head)), None)
                if engine is None:
                    render.error(
                        err, f"'{shown}' is not a backup file Ferry knows", "give SQL Server .bak/.trn files"
                    )
                    failed = True
                    continue
                try:
                    sets = engine.read(reader)
                except FerryError as exc:
                    render.error(err, exc.message.replace(key, shown, 1), exc.hint)
                    failed = True
                    continue
            finally:
                reader.close()
            for s in sets:
                row = _inspect_row(s)
                row["path"] = shown
                rows.append(row)
        if as_json:
            render.emit_json(rows)
        else:
            render.inspect(out, rows)
        if failed:
            raise typer.Exit(EXIT_INPUT)


def _one_object(arg: str) -> tuple[Any, str, str]:
    """The store, key and printable name of one backup file given by path or URL."""
    loc = parse_location(arg)
    if loc.kind is StoreKind.LOCAL:
        path = Path(loc.path)
        try:
            is_file = path.is_file()
        except OSError as exc:  # an unreadable folder above it, a name too long
            raise os_error(exc, path) from None
        if not is_file:
            raise UsageError(f"'{path}' is not a file", "give paths of backup files")
        return LocalStore(path.parent), path.name, str(path)
    store, key = open_location(loc)
    if not key:
        raise UsageError(
            f"'{loc.display}' is not a single backup file",
            "give the URL of one file; `ferry scan` reads folders",
        )
    _check_store(store)
    return store, key, loc.display


def _inspect_row(s: object) -> dict[str, Any]:
    headeronly = getattr(s, "headeronly", None)
    files = getattr(s, "files", ())
    row: dict[str, Any] = headeronly() if callable(headeronly) else {}
    row["files"] = [f.filelistonly() for f in files]
    return row


@app.command("scan")
def scan_cmd(
    path: Annotated[str, typer.Argument(help="Folder or store URL holding backups, in any layout.")],
    as_json: Annotated[bool, typer.Option("--json", help="The catalog as JSON.")] = False,
) -> None:
    """List the databases whose backups are in PATH, and how far each can be restored."""
    with _errors():
        result = _scan(path, as_json)
        cat = build_catalog(redact(path), result, all_engines())
        if as_json:
            render.emit_json(cat.to_json())
        else:
            render.catalog(out, cat)
        if has_errors(list(cat.findings)):
            raise typer.Exit(EXIT_FINDINGS)


def _target(stop_at: str | None, stop_at_lsn: str | None) -> RecoveryTarget | None:
    if stop_at and stop_at_lsn:
        raise UsageError("--stop-at and --stop-at-lsn exclude each other", "give one point to restore to")
    if stop_at_lsn:
        return RecoveryTarget(lsn=stop_at_lsn)
    if stop_at:
        try:
            return RecoveryTarget(time=datetime.fromisoformat(stop_at.strip()))
        except ValueError:
            raise UsageError(
                f"--stop-at '{stop_at}' is not a date and time",
                "write it as 2017-05-18T04:18:31 (the source server's local time) or with an offset, "
                "2017-05-18T04:18:31+02:00",
            ) from None
    return None


@app.command()
def plan(
    path: Annotated[str, typer.Argument(help="Folder or store URL holding backups, in any layout.")],
    database: Annotated[
        list[str] | None, typer.Option("--database", "-d", help="Plan only this database (repeatable).")
    ] = None,
    stop_at: Annotated[
        str | None, typer.Option("--stop-at", help="Restore to this time (source server's local time).")
    ] = None,
    stop_at_lsn: Annotated[str | None, typer.Option("--stop-at-lsn", help="Restore to this LSN.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="The plan as JSON (a documented contract).")
    ] = False,
) -> None:
    """Choose each database's restore chain (full, differential, logs) and report what blocks it."""
    with _errors():
        target = _target(stop_at, stop_at_lsn)
        result = _scan(path, as_json)
        p = select_databases(build_plan(redact(path), result, all_engines(), target=target), database or [])
        if as_json:
            render.emit_json(p.to_json())
        else:
            render.plan(out, p)
        if has_errors(p.all_findings()):
            raise typer.Exit(EXIT_FINDINGS)


@app.command()
def migrate(
    source: Annotated[
        str,
        typer.Argument(help="Store folder of the source's backups (PostgreSQL, or SQL Server .bak/.trn)."),
    ],
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="PostgreSQL: a target folder Ferry creates on this host; SQL Server: "
            "mssql://USER@HOST:PORT/INSTANCE, port and instance optional (password: FERRY_MSSQL_PASSWORD).",
        ),
    ],
    online: Annotated[
        bool, typer.Option("--online/--offline", help="Keep replaying until cutover, or restore and promote.")
    ] = True,
    port: Annotated[int | None, typer.Option(help="Port of the target server (default: a free one).")] = None,
    os_user: Annotated[
        str | None, typer.Option(help="OS user the target server runs as when Ferry runs as root.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    blocked_after: BlockedAfter = 60.0,
    ready_lag: ReadyLag = 2,
    database: mssql.Database = None,
    target_database: mssql.TargetDatabase = None,
    stop_at: mssql.StopAt = None,
    stop_at_lsn: mssql.StopAtLsn = None,
    last_backup: mssql.LastBackup = None,
    data_dir: mssql.DataDir = None,
    log_dir: mssql.LogDir = None,
    backup_path_as: mssql.BackupPathAs = None,
    replace: mssql.Replace = False,
    yes: mssql.Yes = False,
    force: mssql.Force = False,
    standby: mssql.Standby = None,
    checkdb: mssql.CheckDb = False,
    media_password_env: mssql.MediaPasswordEnv = None,
    credential: mssql.KeyCredential = None,
) -> None:
    """Migrate a source onto a new server from its backups; online until `ferry cutover`."""
    from ferry.cli.live import run_migration, target_path
    from ferry.core.findings import MigrationBlocked
    from ferry.engines.postgres.migration import MigrationSpec

    if to.lower().startswith("mssql://"):
        with _errors():
            options = mssql.SqlMigrateOptions(
                source, to, online, database, target_database, stop_at, stop_at_lsn, last_backup, data_dir,
                log_dir, backup_path_as or [], replace, yes, force, standby, checkdb, blocked_after,
                ready_lag, as_json, media_password_env, credential,
            )  # fmt: skip
            mssql.migrate(options, out, err)
        return
    with _errors():
        spec = MigrationSpec(
            source,
            target_path(to),
            online=online,
            port=port,
            os_user=os_user,
            blocked_after=blocked_after,
            ready_lag_segments=ready_lag,
        )
        try:
            result = run_migration(spec, err if as_json else out, f"migrating {source} to {spec.target}")
        except MigrationBlocked as exc:
            render.findings(err, exc.findings)
            raise _fail(exc, EXIT_FINDINGS) from None
        except KeyboardInterrupt:
            err.print("stopped; the target server keeps running. Run the same command again to resume.")
            raise typer.Exit(EXIT_FINDINGS) from None
        if as_json:
            render.emit_json(result.to_json())
        else:
            render.migration_result(out, result)


@app.command()
def cutover(
    target: Annotated[
        str, typer.Argument(help="The target given to `ferry migrate --to`: a folder, or an mssql:// URL.")
    ],
    final_lsn: Annotated[
        str | None, typer.Option(help="Replay at least to this LSN (X/Y) before promoting.")
    ] = None,
    source_dsn: Annotated[
        str | None, typer.Option(help="Connection string of the source: Ferry closes its last WAL segment.")
    ] = None,
    database: Annotated[
        str | None, typer.Option("--database", "-d", help="SQL Server: the database's name on the target.")
    ] = None,
    last_backup: Annotated[
        str | None, typer.Option("--last-backup", help="SQL Server: wait for this (tail-log) backup first.")
    ] = None,
) -> None:
    """Ask a running `ferry migrate` to cut over: apply what is left, bring the target online, prove it."""
    from ferry.cli.live import target_path
    from ferry.engines.postgres.cutover import request_cutover
    from ferry.engines.postgres.wal import parse_lsn

    if target.lower().startswith("mssql://"):
        with _errors():
            mssql.cutover(target, database, last_backup, out)
        return
    with _errors():
        root = target_path(target)
        if not (root / "ferry-target.json").exists():
            raise UsageError(
                f"'{root}' is not a Ferry target folder", "give the folder of `ferry migrate --to`"
            )
        if final_lsn:
            try:
                parse_lsn(final_lsn)
            except ValueError as exc:
                raise UsageError(str(exc), "SELECT pg_switch_wal() on the source prints one") from None
        request_cutover(root, final_lsn, source_dsn)
        out.print(f"cutover requested for {root}; `ferry migrate` carries it out and reports the downtime")


@app.command()
def demo(
    folder: Annotated[
        str | None, typer.Option("--dir", help="Folder for everything the demo makes (default: a new one).")
    ] = None,
    scale: Annotated[int, typer.Option(help="pgbench scale: about 15 MB of data per unit.")] = 10,
    online_seconds: Annotated[
        float, typer.Option(help="How long to keep replaying online, caught up, before the cutover.")
    ] = 10.0,
) -> None:
    """Run a whole online PostgreSQL migration on this machine and verify it: source, backups, target."""
    from ferry.cli.demo import run_demo

    with _errors():
        result = run_demo(out, Path(folder).resolve() if folder else None, scale, online_seconds)
        if result.differences:
            raise typer.Exit(EXIT_FINDINGS)


@app.command()
def version() -> None:
    """Print Ferry's version."""
    out.print(f"ferry {__version__}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
