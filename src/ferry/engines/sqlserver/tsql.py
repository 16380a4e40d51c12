"""RESTORE statements for one planned chain, as exact T-SQL text. Pure functions: no connection, no I/O.

The restore rules this follows (docs/engines.md, "Restore scripts"; RESTORE arguments in Microsoft's
reference):

- one statement per backup set, naming every stripe file of it (a media set needs all its families);
- `FILE = n` selects the set on appended media (HEADERONLY `Position`); 1 is the default and is left out;
- `MOVE` relocates a logical file (FILELISTONLY `LogicalName`): on RESTORE DATABASE for every file it
  knows, on RESTORE LOG only for files created inside that log;
- exactly one of `NORECOVERY`, `RECOVERY`, `STANDBY = undo file`;
- `STOPAT` takes a `datetime`, `STOPATMARK` on RESTORE DATABASE only `'lsn:n'`;
- `CHECKSUM` fails (3187) on a set written without backup checksums, so it is only asked for when the
  header says the set has them: HEADERONLY `Flags` bit 16;
- with `URL =` devices, `FILE`, `BUFFERCOUNT` and `MAXTRANSFERSIZE` are not supported; SQL Server 2012 and
  2014 read one URL per restore and need `WITH CREDENTIAL`, 2016 and later find a SAS credential by URL.

Identifiers are quoted in brackets with `]` doubled, literals as N'...' with `'` doubled, so any name is safe.
A statement never contains a line that a client would take for the `GO` batch separator.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from ferry.core.errors import UsageError
from ferry.core.plan import StepKind
from ferry.engines.sqlserver.chain import ChainStep
from ferry.engines.sqlserver.headers import DatabaseFile

MAX_IDENTIFIER = 128  # sysname
_MAX_TRANSFER_STEP = 65536
_MAX_TRANSFER_LIMIT = 4 * 1024 * 1024
_BATCH_SEPARATOR = re.compile(r"^\s*go\s*(\d+\s*)?$", re.IGNORECASE)


class ScriptError(UsageError):
    """Options that SQL Server would refuse together, or a name a script cannot carry."""


class Recovery(StrEnum):
    NORECOVERY = "NORECOVERY"
    RECOVERY = "RECOVERY"
    STANDBY = "STANDBY"


@dataclass(frozen=True)
class Device:
    """One stripe file as the target server reads it: a path (`DISK =`) or a URL (`URL =`: an Azure blob's
    http(s) URL, or an s3:// URL on SQL Server 2022). devices.py decides which."""

    path: str

    @property
    def is_url(self) -> bool:
        return self.path.lower().startswith(("https://", "http://", "s3://"))

    def clause(self) -> str:
        return f"{'URL' if self.is_url else 'DISK'} = {quote_literal(self.path)}"


@dataclass(frozen=True)
class RestoreOptions:
    """What a restore of one database is asked to do, beyond what the backups themselves decide.

    `moves` maps logical file names to the physical paths on the target (MOVE ... TO ...). `target_version`
    is the SQL Server major version restored onto (11 = 2012 ... 16 = 2022), None when unknown."""

    database: str
    moves: Mapping[str, str] = field(default_factory=dict)
    recovery: Recovery = Recovery.NORECOVERY
    standby_file: str | None = None
    stats: int | None = 10
    checksum: bool = True
    media_password: str | None = None
    buffer_count: int | None = None
    max_transfer_size: int | None = None
    replace: bool = False
    credential: str | None = None
    target_version: int | None = None

    def __post_init__(self) -> None:
        if (self.recovery is Recovery.STANDBY) != (self.standby_file is not None):
            raise ScriptError(
                f"restore of database {self.database!r}: STANDBY needs an undo file, and an undo file "
                "needs STANDBY",
                "give both the standby mode and the undo file path, or neither",
            )
        if self.stats is not None and not 1 <= self.stats <= 100:
            raise ScriptError(f"STATS = {self.stats} is out of range", "give a percentage from 1 to 100")
        if self.buffer_count is not None and self.buffer_count < 1:
            raise ScriptError(f"BUFFERCOUNT = {self.buffer_count} is out of range", "give a positive number")
        size = self.max_transfer_size
        if size is not None and (size % _MAX_TRANSFER_STEP or not 0 < size <= _MAX_TRANSFER_LIMIT):
            raise ScriptError(
                f"MAXTRANSFERSIZE = {size} is not allowed",
                "give a multiple of 65536 bytes up to 4194304 (4 MiB)",
            )


def quote_ident(name: str) -> str:
    """A bracketed identifier: `[name]` with every `]` doubled. Refuses what SQL Server refuses."""
    if not name or len(name) > MAX_IDENTIFIER or "\x00" in name:
        raise ScriptError(
            f"{name!r} cannot be a SQL Server identifier",
            f"names are 1 to {MAX_IDENTIFIER} characters long, without NUL characters",
        )
    return "[" + name.replace("]", "]]") + "]"


def unquote_ident(quoted: str) -> str:
    if not (quoted.startswith("[") and quoted.endswith("]")):
        raise ValueError(f"{quoted!r} is not a bracketed identifier")
    inner = quoted[1:-1]
    if "]" in inner.replace("]]", ""):
        raise ValueError(f"{quoted!r} has an unpaired ']'")
    return inner.replace("]]", "]")


def quote_literal(value: str) -> str:
    """A Unicode string literal: `N'value'` with every `'` doubled."""
    if "\x00" in value:
        raise ScriptError(f"{value!r} holds a NUL character", "a T-SQL string literal cannot carry it")
    return "N'" + value.replace("'", "''") + "'"


def unquote_literal(quoted: str) -> str:
    if not (quoted.startswith("N'") and quoted.endswith("'") and len(quoted) >= 3):
        raise ValueError(f"{quoted!r} is not an N'...' literal")
    inner = quoted[2:-1]
    if "'" in inner.replace("''", ""):
        raise ValueError(f"{quoted!r} has an unpaired quote")
    return inner.replace("''", "'")


def stop_clause(stop_at: str, kind: StepKind) -> str:
    """`STOPAT = N'...'` for a time, `STOPATMARK = N'lsn:n'` for an LSN (the plan's `stop_at` forms).

    The time is written in the source server's wall-clock time, which is what the log records carry,
    without an offset (the `datetime` type has none), to the millisecond (its precision, rounded down)."""
    if stop_at.startswith("lsn:"):
        digits = stop_at[4:]
        if not digits.isdigit():
            raise ScriptError(f"stop point {stop_at!r} is not an LSN", "give it as lsn:<numeric LSN>")
        return f"STOPATMARK = {quote_literal('lsn:' + str(int(digits)))}"
    if kind is not StepKind.LOG:
        raise ScriptError(
            f"a stop time ({stop_at}) on a {kind.value} backup",
            "a point in time is reached in a log backup: put STOPAT on the log that holds it",
        )
    try:
        when = datetime.fromisoformat(stop_at)
    except ValueError:
        raise ScriptError(f"stop point {stop_at!r} is not a date and time", "use ISO 8601") from None
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    if when.microsecond:
        text += f".{when.microsecond // 1000:03d}"
    return f"STOPAT = {quote_literal(text)}"


def files_to_move(step: ChainStep) -> tuple[DatabaseFile, ...]:
    """The files a RESTORE of `step` may relocate: all of them for a full or differential; for a log, only
    files created inside it (MOVE on RESTORE LOG is for those alone)."""
    files = step.backup.head.files
    if step.kind is not StepKind.LOG:
        return files
    lo, hi = step.backup.first_lsn, step.backup.last_lsn
    return tuple(f for f in files if f.create_lsn and lo <= f.create_lsn < hi)


def restore_statement(step: ChainStep, devices: Sequence[Device], options: RestoreOptions) -> str:
    """`RESTORE DATABASE|LOG [db] FROM <every stripe> WITH ...` for one planned step."""
    if not devices:
        raise ScriptError(f"no backup file given for a {step.kind.value} backup", "give every stripe file")
    urls = {d.is_url for d in devices}
    if len(urls) > 1:
        raise ScriptError(
            f"the stripes of one backup of database {options.database!r} mix URLs and paths",
            "a restore reads all stripes from one kind of device: map every file to a URL or to a path",
        )
    url = urls == {True}
    backup = step.backup
    if url:
        _check_url(step, devices, options)
    elif options.credential is not None:
        raise ScriptError(
            "CREDENTIAL is only allowed with URL devices",
            "drop the credential, or map the backup files to https:// URLs",
        )
    verb = "DATABASE" if step.kind in (StepKind.FULL, StepKind.DIFF) else "LOG"
    opts: list[str] = []
    if backup.position != 1:
        opts.append(f"FILE = {backup.position}")
    if options.checksum and backup.head.has_checksums:
        opts.append("CHECKSUM")
    if options.media_password is not None:
        opts.append(f"MEDIAPASSWORD = {quote_literal(options.media_password)}")
    opts.extend(
        f"MOVE {quote_literal(f.logical_name)} TO {quote_literal(options.moves[f.logical_name])}"
        for f in files_to_move(step)
        if f.logical_name in options.moves
    )
    if options.replace and step.kind is StepKind.FULL:
        opts.append("REPLACE")
    if options.buffer_count is not None:
        opts.append(f"BUFFERCOUNT = {options.buffer_count}")
    if options.max_transfer_size is not None:
        opts.append(f"MAXTRANSFERSIZE = {options.max_transfer_size}")
    if url and options.credential is not None:
        opts.append(f"CREDENTIAL = {quote_literal(options.credential)}")
    if step.stop_at is not None:
        opts.append(stop_clause(step.stop_at, step.kind))
    opts.append(_recovery(options, backup.head.database_version))
    if options.stats is not None:
        opts.append(f"STATS = {options.stats}")
    lines = [f"RESTORE {verb} {quote_ident(options.database)}"]
    lines.append("FROM " + ",\n     ".join(d.clause() for d in devices))
    lines.append("WITH " + ",\n     ".join(opts))
    return check_batch("\n".join(lines))


def recover_statement(database: str) -> str:
    """Bring a database left RESTORING (NORECOVERY) or in STANDBY online: the last step of every restore."""
    return check_batch(f"RESTORE DATABASE {quote_ident(database)} WITH RECOVERY")


def check_batch(statement: str) -> str:
    """A client (sqlcmd, SSMS) splits scripts at lines holding only GO, even inside a string literal, so a
    name with a line break followed by such a line would cut the statement in two. Refuse it instead."""
    for line in statement.splitlines()[1:]:
        if _BATCH_SEPARATOR.match(line):
            raise ScriptError(
                f"a name in this statement holds a line that reads as the batch separator: {line!r}",
                "rename the database, file or path so that no line of it is GO",
            )
    return statement


def _check_url(step: ChainStep, devices: Sequence[Device], options: RestoreOptions) -> None:
    unsupported = [
        name
        for name, present in (
            ("FILE", step.backup.position != 1),
            ("BUFFERCOUNT", options.buffer_count is not None),
            ("MAXTRANSFERSIZE", options.max_transfer_size is not None),
        )
        if present
    ]
    if unsupported:
        raise ScriptError(
            f"restore of database {options.database!r} from URL cannot use {', '.join(unsupported)}",
            "SQL Server does not support these options with URL devices: copy the files to a disk "
            "the server reads, or leave the options out",
        )
    if options.target_version is not None and options.target_version <= 12:
        if len(devices) > 1:
            raise ScriptError(
                f"restore of database {options.database!r} reads {len(devices)} URLs, but SQL Server "
                f"{options.target_version} reads one URL per restore",
                "restore striped backups from URL on SQL Server 2016 or later, or from disk",
            )
        if options.credential is None:
            raise ScriptError(
                f"restore of database {options.database!r} from URL on SQL Server "
                f"{options.target_version} needs a credential",
                "give the name of the credential that holds the storage account key",
            )


def _recovery(options: RestoreOptions, database_version: int) -> str:
    if options.recovery is not Recovery.STANDBY:
        return options.recovery.value
    ceiling = max_database_version(options.target_version)
    if ceiling is not None and database_version < ceiling:
        # Restoring an older database upgrades it, and an upgrade cannot stop in a readable standby (3180).
        raise ScriptError(
            f"database {options.database!r} (version {database_version}) is upgraded by this restore, "
            "which STANDBY does not allow",
            "restore WITH NORECOVERY instead; the database is readable once recovered",
        )
    assert options.standby_file is not None
    return f"STANDBY = {quote_literal(options.standby_file)}"


# The internal database version each SQL Server major version writes (and the newest it can read).
_DATABASE_VERSIONS = {11: 706, 12: 782, 13: 852, 14: 869, 15: 904, 16: 957}


def max_database_version(major: int | None) -> int | None:
    """The newest DatabaseVersion SQL Server `major` restores; None when unknown (newer than 2022)."""
    return None if major is None else _DATABASE_VERSIONS.get(major)
