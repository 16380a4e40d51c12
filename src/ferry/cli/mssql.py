"""`ferry migrate SOURCE --to mssql://...` and `ferry cutover mssql://... --database NAME`: SQL Server
migrations in the foreground, through the execution seam (the registry finds the SQL Server migrator).

The cutover reaches a running `ferry migrate` through a small request file in the migration's local work
folder (named after the target instance and the database: engines/sqlserver/workdir.py), so it works from
another shell, a script or a scheduler, and survives the migrating process being killed and restarted.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ferry.cli import render
from ferry.core.errors import UsageError
from ferry.engines.base import MigrationJob, ReplaySettings, TargetSpec
from ferry.engines.sqlserver.connection import TargetUrl
from ferry.engines.sqlserver.devices import PathMap
from ferry.engines.sqlserver.workdir import WorkFolder

EXIT_FINDINGS = 1


@dataclass(frozen=True)
class SqlMigrateOptions:
    source: str
    to: str
    online: bool = True
    database: str | None = None
    target_database: str | None = None
    stop_at: str | None = None
    stop_at_lsn: str | None = None
    last_backup: str | None = None
    data_dir: str | None = None
    log_dir: str | None = None
    backup_path_as: list[str] = field(default_factory=list)
    replace: bool = False
    yes: bool = False
    force: bool = False
    standby: str | None = None
    checkdb: bool = False
    blocked_after: float = 60.0
    ready_lag: int = 2
    as_json: bool = False
    media_password_env: str | None = None
    credential: str | None = None


def job_of(o: SqlMigrateOptions) -> MigrationJob:
    url = TargetUrl.parse(o.to)
    if o.stop_at and o.stop_at_lsn:
        raise UsageError("--stop-at and --stop-at-lsn exclude each other", "give one point to restore to")
    if o.force and not o.replace:
        raise UsageError("--force only applies with --replace", "give --replace --yes --force, or none")
    stop = f"lsn:{o.stop_at_lsn.strip()}" if o.stop_at_lsn else (o.stop_at.strip() if o.stop_at else None)
    # LOCAL may be any store location (az://..., a blob URL, smb://...): parsed, never resolved as a path.
    maps = [PathMap.parse(m).text for m in o.backup_path_as]
    options = {
        "data_dir": o.data_dir,
        "log_dir": o.log_dir,
        "backup_path_as": maps,
        "replace": o.replace,
        "yes": o.yes,
        "force": o.force,
        "standby": o.standby,
        "checkdb": o.checkdb,
        "media_password_env": _env_name(o.media_password_env),
        "credential": o.credential,
    }
    source = str(Path(o.source).resolve()) if "://" not in o.source else o.source
    key = f"{url}|{o.target_database or o.database or ''}|{source}"
    return MigrationJob(
        id="mssql-" + hashlib.sha256(key.encode()).hexdigest()[:12],
        source=source,
        target=TargetSpec(url.key.lower(), "sqlserver", str(url)),
        online=o.online,
        database=o.database,
        last_backup=o.last_backup,
        replay=ReplaySettings(o.blocked_after, o.ready_lag),
        target_database=o.target_database,
        stop_at=stop,
        options={k: v for k, v in options.items() if v not in (None, [], False)},
    )


def _env_name(name: str | None) -> str | None:
    """A variable's name, never a value: a password given here by mistake is refused, not echoed."""
    if name is None:
        return None
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise UsageError(
            "--media-password-env takes the name of an environment variable, not the password",
            "export the password, e.g. export FERRY_MSSQL_MEDIA_PASSWORD=..., and give its name",
        )
    return name


def migrate(o: SqlMigrateOptions, out: Console, err: Console) -> None:
    """Run one SQL Server migration until it succeeds; online, until `ferry cutover` (or the c key)."""
    from ferry.cli.live import run_job
    from ferry.core.findings import MigrationBlocked
    from ferry.engines.sqlserver.settings import Settings

    job = job_of(o)
    url = TargetUrl.parse(o.to)
    name = o.target_database or o.database
    work: list[WorkFolder] = []

    def folder() -> WorkFolder | None:
        # The database's name on the target is known once the source is read: the first status after
        # prepare carries it.
        return work[0] if work else (WorkFolder.of(Settings.of(job).options, url, name) if name else None)

    def on_status(status: object) -> None:
        details = getattr(status, "details", {}) or {}
        if not work and details.get("database"):
            work.append(WorkFolder.of(Settings.of(job).options, url, str(details["database"])))

    def ask() -> object:
        w = folder()
        return w.pending_cutover() if w is not None and job.online else None

    def on_key(key: str) -> None:
        w = folder()
        if key.lower() == "c" and job.online and w is not None and w.pending_cutover() is None:
            w.request_cutover()

    hint = (
        "press c (or run `ferry cutover`) to cut over · Ctrl-C stops Ferry (the database stays RESTORING; "
        "run again to resume)"
        if job.online
        else "offline: restores to the end of the logs, then recovers · Ctrl-C stops; run again to go on"
    )
    console = err if o.as_json else out
    try:
        outcome = run_job(job, console, f"migrating {o.source} to {url}", ask, on_key, hint, on_status)  # type: ignore[arg-type]
    except MigrationBlocked as exc:
        render.findings(err, exc.findings)
        render.error(err, exc.message, exc.hint)
        raise typer.Exit(EXIT_FINDINGS) from None
    except KeyboardInterrupt:
        err.print(
            "stopped; the database stays RESTORING on the target. Run the same command again to resume."
        )
        raise typer.Exit(EXIT_FINDINGS) from None
    if o.as_json:
        render.emit_json(dict(outcome.result))
    else:
        render.sqlserver_result(out, dict(outcome.result))


def cutover(target: str, database: str | None, last_backup: str | None, out: Console) -> None:
    """Ask the running `ferry migrate ... --to TARGET` of DATABASE to cut over."""
    if not database:
        raise UsageError(
            f"which database on {TargetUrl.parse(target)} should cut over?",
            "give --database NAME (its name on the target)",
        )
    url = TargetUrl.parse(target)
    work = WorkFolder.of({}, url, database)
    if work.claim() is None:
        raise UsageError(
            f"no migration of [{database}] onto {url} is known here ({work.path})",
            "run the cutover on the host and as the user that runs `ferry migrate`, with the same FERRY_HOME",
        )
    work.request_cutover(last_backup)
    what = f" after '{last_backup}' is restored" if last_backup else ""
    out.print(f"cutover of [{database}] on {url} requested{what}; `ferry migrate` carries it out")


# The options `ferry migrate` takes for SQL Server targets (main.py lists them in its signature).
Database = Annotated[
    str | None, typer.Option("--database", "-d", help="SQL Server: the source database to migrate.")
]
TargetDatabase = Annotated[
    str | None, typer.Option("--target-database", help="SQL Server: its name on the target (default: same).")
]
StopAt = Annotated[
    str | None, typer.Option("--stop-at", help="SQL Server: restore to this time (source's local time).")
]
StopAtLsn = Annotated[str | None, typer.Option("--stop-at-lsn", help="SQL Server: restore to this LSN.")]
LastBackup = Annotated[
    str | None, typer.Option("--last-backup", help="Offline: stop after this log backup file is restored.")
]
DataDir = Annotated[
    str | None, typer.Option("--data-dir", help="SQL Server: folder on the target for data files.")
]
LogDir = Annotated[
    str | None, typer.Option("--log-dir", help="SQL Server: folder on the target for log files.")
]
BackupPathAs = Annotated[
    list[str] | None,
    typer.Option(
        "--backup-path-as",
        help="SQL Server: LOCAL=TARGET, the target reads the store's files under LOCAL (a folder or any "
        "store location: az://..., a blob URL, smb://..., s3://...) at TARGET (a path, a share or a URL; "
        "repeatable).",
    ),
]
MediaPasswordEnv = Annotated[
    str | None,
    typer.Option(
        "--media-password-env",
        help="SQL Server: the environment variable that holds the backups' media password (default "
        "FERRY_MSSQL_MEDIA_PASSWORD); the password itself is never an option.",
    ),
]
KeyCredential = Annotated[
    str | None,
    typer.Option(
        "--credential",
        help="SQL Server: name of the storage key credential for page blobs (default ferry_ACCOUNT).",
    ),
]
Replace = Annotated[bool, typer.Option("--replace", help="SQL Server: overwrite an existing database.")]
Yes = Annotated[bool, typer.Option("--yes", help="Confirm --replace.")]
Force = Annotated[bool, typer.Option("--force", help="With --replace: close the database's sessions first.")]
Standby = Annotated[
    str | None,
    typer.Option(
        "--standby", help="SQL Server: apply logs WITH STANDBY = this undo file (readable between logs)."
    ),
]
CheckDb = Annotated[bool, typer.Option("--checkdb", help="SQL Server: run DBCC CHECKDB after the cutover.")]
