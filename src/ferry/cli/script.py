"""`ferry script`: the exact T-SQL that restores each planned SQL Server database, with no connection.

The output is a contract scripts rely on (docs/engines.md, "Restore scripts"): statements separated by
lines that hold only GO, a comment line before each naming its backup, nothing else on stdout. Databases
that cannot be restored get no statement; their findings go to stderr and the exit code is 1. The backup
files are named as the target reads them (the mapping `ferry migrate` uses, devices.py); the credentials
they need come first, their secrets as sqlcmd variables: a script never holds a secret.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ferry.core.errors import UsageError
from ferry.core.findings import Finding, Severity, has_errors
from ferry.engines.registry import all_engines
from ferry.engines.sqlserver import access as acc
from ferry.engines.sqlserver.devices import Credential, PathMap, Platform
from ferry.engines.sqlserver.engine import ENGINE
from ferry.engines.sqlserver.headers import BackupSet
from ferry.engines.sqlserver.restore_script import ScriptSettings, credential_batch, database_script
from ferry.engines.sqlserver.settings import Settings
from ferry.pipeline.catalog import build_plan, select_databases

EXIT_FINDINGS = 1


def script(
    path: Annotated[str, typer.Argument(help="Folder holding SQL Server backups, in any layout.")],
    database: Annotated[
        list[str] | None, typer.Option("--database", "-d", help="Script only this database (repeatable).")
    ] = None,
    stop_at: Annotated[
        str | None, typer.Option("--stop-at", help="Restore to this time (source server's local time).")
    ] = None,
    stop_at_lsn: Annotated[str | None, typer.Option("--stop-at-lsn", help="Restore to this LSN.")] = None,
    online: Annotated[
        bool, typer.Option("--online", help="Leave every database RESTORING, ready for more logs.")
    ] = False,
    target_version: Annotated[
        int | None,
        typer.Option(
            "--target-version", help="SQL Server major version restored onto, 11 (2012) to 16 (2022)."
        ),
    ] = None,
    data_dir: Annotated[
        str | None, typer.Option("--data-dir", help="Folder on the target for data files (MOVE).")
    ] = None,
    log_dir: Annotated[
        str | None, typer.Option("--log-dir", help="Folder on the target for log files (MOVE).")
    ] = None,
    backup_path_as: Annotated[
        list[str] | None,
        typer.Option(
            "--backup-path-as",
            help="LOCAL=TARGET: the target server reads the backups under LOCAL (a folder or any store "
            "location: az://..., smb://..., s3://...) at TARGET, a path, a share or a URL (repeatable).",
        ),
    ] = None,
    credential: Annotated[
        str | None,
        typer.Option(
            "--credential", help="Storage key credential for page blobs (and every blob on 2012/2014)."
        ),
    ] = None,
    target_platform: Annotated[
        str | None,
        typer.Option(
            "--target-platform", help="windows or linux: Linux reads no UNC path (\\\\host\\share)."
        ),
    ] = None,
) -> None:
    """Print the T-SQL that restores each database of PATH: RESTORE DATABASE/LOG statements, no connection."""
    from ferry.cli import render
    from ferry.cli.main import _errors, _scan, _target, err

    with _errors():
        settings = ScriptSettings(
            data_dir=data_dir,
            log_dir=log_dir,
            path_map=tuple(PathMap.parse(m) for m in backup_path_as or ()),
            online=online,
            target_version=target_version,
            credential=credential,
            platform=_platform(target_platform),
        )
        target = _target(stop_at, stop_at_lsn)
        result = _scan(path, True)
        plan = select_databases(build_plan(path, result, all_engines(), target=target), database or [])
        sets = [s for s in result.sets_for(ENGINE) if isinstance(s, BackupSet)]
        source = acc.open_source(path, Settings(credential=credential), secrets=False)
        batches: list[str] = []
        credentials: dict[str, Credential] = {}
        failed = has_errors(list(plan.findings))
        taken: frozenset[str] = frozenset()
        scripted: dict[str, str] = {}
        for db in plan.databases:
            if db.engine != ENGINE:
                err.print(f"note: {db.engine} database '{db.name}' has no T-SQL restore; skipped")
                continue
            made = database_script(db, sets, source.access, settings, taken, source.blob_type)
            taken = made.taken
            for cred in made.credentials:
                credentials.setdefault(cred.name.casefold(), cred)
            batches.extend(b.text() for b in made.batches)
            found = list(made.findings)
            if not made.batches:
                failed = True
            elif db.name.casefold() in scripted:
                found.append(_same_name(db.name, db.server, scripted[db.name.casefold()]))
            else:
                scripted[db.name.casefold()] = db.server
            render.findings(err, found, title=f"{db.name} on {db.server}")
        render.findings(err, plan.findings, title="Files")
        if batches:
            batches = [credential_batch(c).text() for c in credentials.values()] + batches
            sys.stdout.write("\nGO\n".join(batches) + "\nGO\n")
        if failed:
            raise typer.Exit(EXIT_FINDINGS)


def _same_name(name: str, server: str, first: str) -> Finding:
    return Finding(
        "name-clash",
        Severity.WARNING,
        f"database '{name}' from '{server}' is restored under the same name as the one from '{first}' "
        "earlier in this script; the second restore fails (3154) or must replace the first",
        "restore the two in separate scripts onto separate targets, or rename one after its restore",
        (),
    )


def _platform(text: str | None) -> Platform | None:
    if text is None:
        return None
    for p in Platform:
        if p.value.casefold() == text.strip().casefold():
            return p
    raise UsageError(f"--target-platform '{text}' is not windows or linux", "give windows or linux")
