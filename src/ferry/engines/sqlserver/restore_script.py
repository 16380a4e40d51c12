"""A restore script for one planned database: its RESTORE statements in order, each with a comment naming its
backup, plus the choices a script makes for the target: where files go (MOVE), how the target server sees
the backup files (devices.py, the mapping `ferry migrate` uses too), and whether the target's version can
read the backups at all.

A script never holds a secret: the credentials its devices need are statements whose secret is a sqlcmd
variable (`$(FERRY_SAS)`), and a media password is `$(FERRY_MEDIA_PASSWORD)`; `setvar_lines` says how to
set them.

Pure: the plan, the headers read by the scan and the source's location go in, text and findings come out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from ferry.core.errors import UsageError
from ferry.core.findings import Finding, Severity
from ferry.core.plan import DatabasePlan, PlanStep
from ferry.engines.sqlserver import devices as dv
from ferry.engines.sqlserver.chain import ChainStep
from ferry.engines.sqlserver.headers import BackupSet, DatabaseFile
from ferry.engines.sqlserver.stripes import LogicalBackup
from ferry.engines.sqlserver.tsql import (
    RestoreOptions,
    ScriptError,
    max_database_version,
    quote_ident,
    quote_literal,
    recover_statement,
    restore_statement,
)

OLDEST_TARGET = 11  # SQL Server 2012; 2008 R2 and older are out of support and not restored onto
_YEARS = {9: 2005, 10: 2008, 11: 2012, 12: 2014, 13: 2016, 14: 2017, 15: 2019, 16: 2022, 17: 2025}
# SQL Server 2017 and later restore user databases from SQL Server 2008 on (DatabaseVersion 655); up to
# 2016 they also read 2005's (611).
_OLDEST_SOURCE = {11: 611, 12: 611, 13: 611}
_OLDEST_SOURCE_LATER = 655
_WINDOWS_PATH = re.compile(r"^([A-Za-z]:|\\\\)|\\")
MEDIA_PASSWORD_VARIABLE = "FERRY_MEDIA_PASSWORD"
# The script names credentials itself: the findings that say Ferry could not create one do not apply.
_SCRIPT_CREATES = {"url-credential-missing"}


@dataclass(frozen=True)
class ScriptSettings:
    """How the target sees things. `path_map` (--backup-path-as) maps store locations to what the target
    reads, the longest matching one first; `platform` is the target's, when given."""

    data_dir: str | None = None
    log_dir: str | None = None
    path_map: tuple[dv.PathMap, ...] = ()
    online: bool = False
    target_version: int | None = None
    credential: str | None = None
    stats: int | None = 10
    platform: dv.Platform | None = None

    @property
    def view(self) -> dv.TargetView:
        """The target as the script knows it: a version and platform when given, and a DBA who runs the
        credential statements the script prints."""
        return dv.TargetView(self.target_version or 0, self.platform, (), True)

    def __post_init__(self) -> None:
        if self.target_version is not None and self.target_version < OLDEST_TARGET:
            raise UsageError(
                f"target version {self.target_version} (SQL Server {_year(self.target_version)}) is not "
                "supported",
                f"Ferry restores onto SQL Server 2012 (version {OLDEST_TARGET}) and later: give the "
                "target's major version, e.g. 16 for SQL Server 2022",
            )


@dataclass(frozen=True)
class Batch:
    """One statement and the comment lines that say what it restores."""

    comments: tuple[str, ...]
    statement: str

    def text(self) -> str:
        return "\n".join([*(f"-- {comment_text(c)}" for c in self.comments), self.statement])


@dataclass(frozen=True)
class DatabaseScript:
    plan: DatabasePlan
    batches: tuple[Batch, ...] = ()
    findings: tuple[Finding, ...] = ()  # the plan's findings and the script's own
    taken: frozenset[str] = field(default=frozenset())  # target file paths used so far, case-folded
    credentials: tuple[dv.Credential, ...] = ()  # what the devices read through, to create first
    media_password: bool = False  # a statement names $(FERRY_MEDIA_PASSWORD)


def comment_text(text: str) -> str:
    """Comments are single lines: a control character (a line break in a file name) is written escaped."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _no_type(key: str) -> str | None:
    return None


def database_script(
    plan: DatabasePlan,
    sets: Sequence[BackupSet],
    source: dv.SourceAccess,
    settings: ScriptSettings,
    taken: frozenset[str] = frozenset(),
    blob_type: Callable[[str], str | None] = _no_type,
) -> DatabaseScript:
    """The batches that restore `plan`, or none and the findings that say why. `sets` are the scanned
    headers (those of the plan's files are used); `source` is where the plan's relative file paths live
    (no secret needed); `taken` holds the target paths earlier databases of the same script use;
    `blob_type` gives an Azure file's blob type when the store can say."""
    findings = list(plan.findings)
    if not plan.executable:
        return DatabaseScript(plan, (), tuple(findings), taken)
    steps = [_chain_step(step, sets) for step in plan.steps]
    findings.extend(version_findings(plan, [s.backup for s in steps], settings.target_version))
    mapped = [_map_step(step.files, source, settings, blob_type) for step in plan.steps]
    every = [m for ms in mapped for m in ms]
    findings.extend(f for f in dv.findings_of(every) if f.code not in _SCRIPT_CREATES)
    if any(f.severity is Severity.ERROR for f in findings):
        return DatabaseScript(plan, (), tuple(findings), taken)
    files = _all_files(steps)
    moves, now_taken, clashes = relocate(files, settings.data_dir, settings.log_dir, taken)
    if clashes:
        findings.append(
            Finding(
                "file-clash",
                Severity.WARNING,
                f"database {_label(plan)} restores files to paths another database of this script uses: "
                + ", ".join(f"'{p}'" for p in clashes),
                "give --data-dir and --log-dir so that Ferry gives every file its own name",
                (),
            )
        )
    locked = any(s.backup.has_media_password for s in steps)
    options = RestoreOptions(
        database=plan.name,
        moves=moves,
        stats=settings.stats,
        target_version=settings.target_version,
    )
    batches: list[Batch] = []
    try:
        for i, (step, chained, ms) in enumerate(zip(plan.steps, steps, mapped, strict=True)):
            devices = [m.device for m in ms]
            named = next((m.with_credential for m in ms if m.with_credential), None)
            # --credential with disk devices stays, so that the statement refuses it as SQL Server would.
            credential = named or (settings.credential if not any(d.is_url for d in devices) else None)
            password = f"$({MEDIA_PASSWORD_VARIABLE})" if chained.backup.has_media_password else None
            opts = replace(options, credential=credential, media_password=password)
            comments = (_describe(plan), *(setvar_lines(None) if locked else ())) if i == 0 else ()
            batches.append(Batch((*comments, _step_comment(step)), restore_statement(chained, devices, opts)))
        if not settings.online:
            batches.append(Batch((f"recovery: bring {plan.name} online",), recover_statement(plan.name)))
    except ScriptError as exc:
        findings.append(
            Finding(
                "not-scriptable",
                Severity.ERROR,
                f"no restore script for database {_label(plan)}: {exc.message}",
                exc.hint,
                (),
            )
        )
        return DatabaseScript(plan, (), tuple(findings), taken)
    creds = tuple(dv.credentials_of(every))
    return DatabaseScript(plan, tuple(batches), tuple(findings), now_taken, creds, locked)


def _map_step(
    files: Sequence[str],
    source: dv.SourceAccess,
    settings: ScriptSettings,
    blob_type: Callable[[str], str | None],
) -> list[dv.Mapped]:
    """A step's files as the target reads them. A blob whose type the store does not say is taken to be a
    page blob when --credential names a storage key credential (the only kind that reads page blobs)."""
    access = dv.replace_key_credential(source, settings.credential)
    fallback = "PageBlob" if settings.credential else None
    return [
        dv.map_file(access, key, settings.view, settings.path_map, blob_type(key) or fallback)
        for key in files
    ]


def credential_batch(cred: dv.Credential) -> Batch:
    """The statement that puts `cred` on the target (altered when it is there already, so that a renewed
    secret replaces the old one), its secret a sqlcmd variable: the script holds no secret."""
    name = quote_literal(cred.name)
    statement = (
        f"IF EXISTS (SELECT 1 FROM sys.credentials WHERE name = {name})\n"
        f"    {cred.statement(f'$({cred.secret.variable})', alter=True)}\n"
        f"ELSE\n    {cred.shown}"
    )
    what = "read through it" if not cred.named else f"name it in WITH CREDENTIAL = {name}"
    return Batch(
        (f"credential {quote_ident(cred.name)}: the target's restores {what}", *setvar_lines(cred.secret)),
        statement,
    )


def setvar_lines(secret: dv.Secret | None) -> tuple[str, ...]:
    """The commented `:setvar` line for a secret (None: the media password). Uncomment it with the value,
    or pass it as `sqlcmd -v NAME=...`; sqlcmd refuses to run a script whose variable is not set."""
    if secret is None:
        return (f':setvar {MEDIA_PASSWORD_VARIABLE} "<the media password of the backups>"',)
    return (f':setvar {secret.variable} "<{dv.secret_words(secret)}>"',)


def version_findings(
    plan: DatabasePlan, backups: Sequence[LogicalBackup], target: int | None
) -> list[Finding]:
    """Whether SQL Server `target` (major version) can restore these backups. Nothing to say when unknown."""
    if target is None or not backups:
        return []
    newest = max(backups, key=lambda b: b.head.database_version).head
    version, made_by = newest.database_version, _build(newest)
    ceiling = max_database_version(target)
    if ceiling is not None and version > ceiling:
        return [
            Finding(
                "target-version-too-old",
                Severity.ERROR,
                f"database {_label(plan)} was backed up by SQL Server {made_by} (database version "
                f"{version}); SQL Server {_year(target)} reads database versions up to {ceiling}",
                "restore onto a SQL Server as new as the source or newer: no backup restores onto an "
                "older version",
                tuple(f for b in backups for f in b.files),
            )
        ]
    oldest = min(backups, key=lambda b: b.head.database_version).head
    floor = _OLDEST_SOURCE.get(target, _OLDEST_SOURCE_LATER)
    if oldest.database_version < floor:
        return [
            Finding(
                "source-version-too-old",
                Severity.ERROR,
                f"database {_label(plan)} was backed up by SQL Server {_build(oldest)} "
                f"(database version {oldest.database_version}), which SQL Server {_year(target)} "
                "cannot restore",
                "restore it first onto SQL Server 2016 or older, back it up there, and migrate that backup",
                tuple(f for b in backups for f in b.files),
            )
        ]
    return []


def relocate(
    files: Sequence[DatabaseFile],
    data_dir: str | None,
    log_dir: str | None,
    taken: frozenset[str] = frozenset(),
) -> tuple[dict[str, str], frozenset[str], list[str]]:
    """Where each logical file goes: into `log_dir` (log files) or `data_dir` (the others) under its own
    file name, made unique when two would collide (case-insensitively, as on Windows); without a folder,
    to its original path. Returns the moves, the paths now taken, and original paths that collide."""
    moves: dict[str, str] = {}
    used = set(taken)
    clashes: list[str] = []
    for f in files:
        folder = log_dir if f.type == "L" else data_dir
        if folder is None:
            path = f.physical_name
            if path.casefold() in used:
                clashes.append(path)
        else:
            path = _unique(folder, _base_name(f), used)
        used.add(path.casefold())
        moves[f.logical_name] = path
    return moves, frozenset(used), clashes


def chain_step(step: PlanStep, sets: Sequence[BackupSet]) -> ChainStep:
    """The planned step with the headers the scan read for its files (a RESTORE statement needs them)."""
    return _chain_step(step, sets)


def _chain_step(step: PlanStep, sets: Sequence[BackupSet]) -> ChainStep:
    stripes = sorted(
        (s for s in sets if s.path in step.files and s.position == step.position),
        key=lambda s: (s.family_sequence_number, s.path),
    )
    by_stripe = {s.family_sequence_number: s for s in stripes}  # a copy in another folder is one stripe
    if not stripes or len(by_stripe) != len(step.files):
        raise ValueError(f"the scan holds no headers for {step.files}")  # a bug: the plan came from them
    return ChainStep(step.kind, LogicalBackup(tuple(by_stripe[k] for k in sorted(by_stripe))), step.stop_at)


def _all_files(steps: Sequence[ChainStep]) -> list[DatabaseFile]:
    # A file added after the full backup is listed by the later backups only.
    seen: dict[str, DatabaseFile] = {}
    for step in steps:
        for f in step.backup.head.files:
            seen.setdefault(f.logical_name, f)
    return sorted(seen.values(), key=lambda f: (f.file_id, f.logical_name))


def _base_name(f: DatabaseFile) -> str:
    # Physical names come from Windows or Linux servers: split on both separators.
    name = re.split(r"[\\/]", f.physical_name.rstrip("\\/"))[-1]
    return name or f.logical_name


def _unique(folder: str, name: str, used: set[str]) -> str:
    sep = "\\" if _WINDOWS_PATH.search(folder) else "/"
    base = folder.rstrip("/\\") + sep if folder.rstrip("/\\") else folder
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    candidate, n = base + name, 2
    while candidate.casefold() in used:
        candidate = f"{base}{stem}_{n}{'.' + ext if dot else ''}"
        n += 1
    return candidate


def _describe(plan: DatabasePlan) -> str:
    point = plan.restores_to or (f"LSN {plan.restores_to_lsn}" if plan.restores_to_lsn else "?")
    return f"database {quote_ident(plan.name)} from server '{plan.server}': restores to {point}"


def _step_comment(step: PlanStep) -> str:
    files = ", ".join(f"'{f}'" for f in step.files)
    text = (
        f"{step.kind.value} backup {files}; LSN {step.first_lsn} to {step.last_lsn}; "
        f"finished {step.backup_finish or 'at an unknown time'}"
    )
    return text + (f"; stop at {step.stop_at}" if step.stop_at else "")


def _label(plan: DatabasePlan) -> str:
    return f"'{plan.name}' on '{plan.server}'"


def _build(s: BackupSet) -> str:
    return f"{s.software_major}.{s.software_minor}.{s.software_build}"


def _year(major: int) -> str:
    return str(_YEARS.get(major, f"version {major}"))
