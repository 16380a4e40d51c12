"""Preflight of a SQL Server target: every check that can fail a restore, run before the first byte moves,
each reported as a finding with a stable code and a hint (docs/engines.md lists them).

| code | severity | what |
|---|---|---|
| `target-unsupported-version` | error | SQL Server 2008 R2 and older targets are refused |
| `target-version-too-old` | error | a backup's DatabaseVersion is newer than the target reads (3169) |
| `source-version-too-old` | error | a backup older than the target can upgrade |
| `target-instance-mismatch` | error | the instance that answered is not the one the URL names |
| `block-blobs` | error | SQL Server 2012/2014 restoring from URL need page blobs |
| `blob-types-unknown` | warning | 2012/2014 from URL, and the blob types could not be checked |
| `url-credential-missing` | error | a URL device without a credential the target could use |
| `backup-unreadable` | error | the target cannot read a backup file (RESTORE LABELONLY failed) |
| `database-exists` | error | the database exists and --replace (with --yes) was not given |
| `database-in-use` | error | --replace on a database with sessions, without --force |
| `sessions-closed` | info | --force: the sessions of the replaced database are closed first |
| `missing-rights` | error | the login cannot restore (CREATE ANY DATABASE, dbcreator or sysadmin) |
| `files-relocated` | info | files that exist on the target are restored under new names (MOVE) |
| `file-moves` | info | where every file goes |
| `free-space` | error | a volume lacks room for the files FILELISTONLY lists |
| `free-space-unknown` | warning | no volume figures for a target folder |
| `target-single-user` | warning | single-user or restricted mode: Ferry waits until it clears |

Pure: the target's facts and the backups' headers in, findings and the moves out. The findings about how
the target reads the backups (devices and their credentials) are devices.py's and access.py's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ferry.core.findings import Finding, Severity
from ferry.core.plan import DatabasePlan
from ferry.engines.sqlserver.facts import DatabaseRow, Probe, TargetFacts
from ferry.engines.sqlserver.headers import DatabaseFile
from ferry.engines.sqlserver.restore_script import OLDEST_TARGET, version_findings
from ferry.engines.sqlserver.stripes import LogicalBackup

_WINDOWS = re.compile(r"^([A-Za-z]:|\\\\)|\\")
_YEARS = {8: "2000", 9: "2005", 10: "2008 or 2008 R2", 11: "2012", 12: "2014", 13: "2016", 14: "2017",
          15: "2019", 16: "2022", 17: "2025"}  # fmt: skip


@dataclass(frozen=True)
class Wanted:
    """What the migration asks of the target."""

    database: str
    replace: bool = False
    yes: bool = False
    force: bool = False
    data_dir: str | None = None
    log_dir: str | None = None
    instance: str | None = None  # the instance the target URL names
    sas: bool = False  # a SAS token was given: Ferry may create a missing URL credential itself


@dataclass(frozen=True)
class MovePlan:
    moves: dict[str, str]  # logical name -> path on the target
    relocated: tuple[tuple[str, str, str], ...]  # (logical name, wanted path, chosen path)
    unprobed: tuple[str, ...]  # candidate paths whose existence is not known yet: probe, then plan again


@dataclass(frozen=True)
class Result:
    findings: tuple[Finding, ...]
    moves: dict[str, str] = field(default_factory=dict)
    wait: str | None = None  # single-user or restricted: what Ferry waits for
    close_sessions: bool = False
    create_credentials: tuple[str, ...] = ()  # URL prefixes Ferry creates a SAS credential for

    @property
    def blocked(self) -> bool:
        return any(f.severity is Severity.ERROR for f in self.findings)


def _f(code: str, severity: Severity, message: str, hint: str, files: Sequence[str] = ()) -> Finding:
    return Finding(code, severity, message, hint, tuple(files))


# -- the server -------------------------------------------------------------------------------------------


def check_server(facts: TargetFacts, target: str, instance: str | None) -> list[Finding]:
    out = []
    if facts.major < OLDEST_TARGET:
        out.append(
            _f(
                "target-unsupported-version",
                Severity.ERROR,
                f"{target} runs SQL Server {_YEARS.get(facts.major, facts.product_version)} "
                f"({facts.product_version}); Ferry restores onto SQL Server 2012 and later",
                "migrate onto a supported SQL Server (2016 or later is best); 2008 R2 and older are out "
                "of support and cannot read backups of newer versions anyway",
            )
        )
    if instance is not None and (facts.instance_name or "").casefold() != instance.casefold():
        answered = facts.instance_name or "the default instance"
        out.append(
            _f(
                "target-instance-mismatch",
                Severity.ERROR,
                f"{target} names instance '{instance}', but {answered} answered on that port",
                "give the port of the instance you mean, or leave the port out so that the SQL Server "
                "Browser finds it",
            )
        )
    return out


def check_rights(facts: TargetFacts, target: str, existing: DatabaseRow | None) -> list[Finding]:
    """A new database needs CREATE DATABASE; restoring over one needs sysadmin or dbcreator (being its
    db_owner is not enough, RESTORE's reference says)."""
    if facts.is_sysadmin or facts.is_dbcreator:
        return []
    if existing is None and facts.can_create_database:
        return []
    need = "CREATE ANY DATABASE" if existing is None else "the dbcreator or sysadmin role"
    return [
        _f(
            "missing-rights",
            Severity.ERROR,
            f"login '{facts.login}' on {target} lacks {need}, which RESTORE needs",
            f"ALTER SERVER ROLE dbcreator ADD MEMBER [{facts.login}]; or connect as a login that has it",
        )
    ]


def check_backups(plan: DatabasePlan, backups: Sequence[LogicalBackup], facts: TargetFacts) -> list[Finding]:
    """The backups' DatabaseVersion against the target's: a newer one fails with 3169."""
    if facts.major < OLDEST_TARGET:
        return []
    return version_findings(plan, backups, facts.major)


# -- the database -------------------------------------------------------------------------------------------


def check_existing(
    db: DatabaseRow | None, wanted: Wanted, target: str, ours: bool
) -> tuple[list[Finding], bool]:
    """A database of that name: refused, unless it is this migration's own (a resume) or --replace --yes.
    Returns the findings and whether its sessions must be closed first (--force)."""
    if db is None or ours:
        return [], False
    name = f"database [{wanted.database}] on {target}"
    state = "RESTORING" if db.restoring else ("ONLINE" if db.state == 0 else f"state {db.state}")
    if not wanted.replace:
        return [
            _f(
                "database-exists",
                Severity.ERROR,
                f"{name} already exists ({state}); Ferry never overwrites a database unasked",
                "restore under another name (--target-database), drop it, or give --replace --yes to "
                "overwrite it",
            )
        ], False
    if not wanted.yes:
        return [
            _f(
                "database-exists",
                Severity.ERROR,
                f"{name} already exists ({state}): --replace overwrites it only with --yes",
                "add --yes to confirm that its contents may be lost",
            )
        ], False
    if db.sessions and not wanted.force:
        return [
            _f(
                "database-in-use",
                Severity.ERROR,
                f"{name} has {db.sessions} open session(s); Ferry does not replace a database in use",
                "close them, or add --force to have Ferry close them (SET SINGLE_USER WITH ROLLBACK "
                "IMMEDIATE) right before the restore",
            )
        ], False
    if db.sessions:
        return [
            _f(
                "sessions-closed",
                Severity.INFO,
                f"{name} has {db.sessions} open session(s): --force closes them before the restore",
                "nothing to do; their open transactions are rolled back",
            )
        ], True
    return [], False


def single_user_reason(facts: TargetFacts, db: DatabaseRow | None, target: str) -> str | None:
    """Why Ferry must wait before it restores: the instance runs in single-user mode, or the database
    it replaces is set to SINGLE_USER or RESTRICTED_USER (someone is at work on it). None: go on."""
    if facts.single_user:
        return f"{target} runs in single-user mode (started with -m): Ferry waits until it restarts normally"
    if db is not None and not db.restoring and db.user_access in (1, 2):
        return (
            f"database [{db.name}] on {target} is in {db.access} mode: Ferry waits until it is "
            "MULTI_USER again"
        )
    return None


# -- where the files go ----------------------------------------------------------------------------------


def _sep(folder: str) -> str:
    return "\\" if _WINDOWS.search(folder) else "/"


def _key(path: str) -> str:
    return path.replace("\\", "/").casefold() if _WINDOWS.search(path) else path


def base_name(f: DatabaseFile) -> str:
    name = re.split(r"[\\/]", f.physical_name.rstrip("\\/"))[-1]
    return name or f.logical_name


def join(folder: str, name: str) -> str:
    trimmed = folder.rstrip("/\\")
    return (trimmed or folder[:1]) + _sep(folder) + name if trimmed else folder + name


def _variant(name: str, n: int) -> str:
    stem, dot, ext = name.rpartition(".")
    return f"{stem}_{n}.{ext}" if dot and stem else f"{name}_{n}"


def plan_moves(
    files: Sequence[DatabaseFile],
    data_dir: str,
    log_dir: str,
    facts: TargetFacts,
    probes: Mapping[str, Probe],
    own: frozenset[str] = frozenset(),
    claimed: frozenset[str] = frozenset(),
) -> MovePlan:
    """Every file under `log_dir` (log files) or `data_dir` (the others), under its original file name.
    A name another database of the target uses, or that exists on disk (`probes`, from xp_fileexist), or
    that an earlier file of this restore took, gets `_2`, `_3`... Paths in `own` (the files of the database
    this restore replaces) are free; paths in `claimed` (chosen by other migrations onto the target, not
    yet restoring) are not. A candidate not yet probed is returned in `unprobed`."""
    taken = ({_key(f.physical_name) for f in facts.files} | {_key(p) for p in claimed}) - {
        _key(p) for p in own
    }
    moves: dict[str, str] = {}
    relocated: list[tuple[str, str, str]] = []
    unprobed: list[str] = []
    for f in files:
        folder = log_dir if f.type == "L" else data_dir
        wanted = join(folder, base_name(f))
        path, n = wanted, 1
        while True:
            probe = probes.get(path)
            on_disk = (
                probe is not None
                and (probe.exists or probe.is_directory)
                and _key(path) not in {_key(p) for p in own}
            )
            if _key(path) not in taken and not on_disk:
                break
            n += 1
            path = join(folder, _variant(base_name(f), n))
        if path not in probes and _key(path) not in {_key(p) for p in own}:
            unprobed.append(path)
        taken.add(_key(path))
        moves[f.logical_name] = path
        if path != wanted:
            relocated.append((f.logical_name, wanted, path))
    return MovePlan(moves, tuple(relocated), tuple(unprobed))


def move_findings(plan: MovePlan, target: str, database: str) -> list[Finding]:
    out = []
    if plan.relocated:
        listed = "; ".join(f"'{name}': '{wanted}' -> '{chosen}'" for name, wanted, chosen in plan.relocated)
        out.append(
            _f(
                "files-relocated",
                Severity.INFO,
                f"{len(plan.relocated)} file(s) of database [{database}] would overwrite files that exist on "
                f"{target}; they are restored under new names: {listed}",
                "nothing to do; give --data-dir/--log-dir to choose other folders",
                [c for _, _, c in plan.relocated],
            )
        )
    listed = "; ".join(f"'{logical}' -> '{path}'" for logical, path in plan.moves.items())
    out.append(
        _f(
            "file-moves",
            Severity.INFO,
            f"database [{database}] files on {target}: {listed}",
            "nothing to do",
            list(plan.moves.values()),
        )
    )
    return out


def file_sizes(backups: Sequence[LogicalBackup]) -> dict[str, tuple[DatabaseFile, int]]:
    """Each logical file and the largest size FILELISTONLY gives it in the restored backups."""
    out: dict[str, tuple[DatabaseFile, int]] = {}
    for b in backups:
        for f in b.head.files:
            known = out.get(f.logical_name)
            if known is None or f.size > known[1]:
                out[f.logical_name] = (known[0] if known else f, f.size)
    return out


def check_space(
    sizes: Mapping[str, int], moves: Mapping[str, str], facts: TargetFacts, target: str,
    freed: Sequence[tuple[str, int]] = (),
) -> list[Finding]:  # fmt: skip
    """Each volume must hold the files it receives (`freed`: files of a replaced database, going away)."""
    need: dict[str, int] = {}
    volumes = {}
    unknown: list[str] = []
    for logical, path in moves.items():
        volume = facts.volume_of(path)
        if volume is None:
            unknown.append(path)
            continue
        volumes[volume.mount_point] = volume
        need[volume.mount_point] = need.get(volume.mount_point, 0) + sizes.get(logical, 0)
    for path, size in freed:
        volume = facts.volume_of(path)
        if volume is not None and volume.mount_point in need:
            need[volume.mount_point] -= size
    out = []
    for mount, bytes_needed in sorted(need.items()):
        available = volumes[mount].available_bytes
        if bytes_needed > available:
            out.append(
                _f(
                    "free-space",
                    Severity.ERROR,
                    f"volume '{mount}' of {target} has {available} bytes free; the restore needs "
                    f"{bytes_needed} bytes there (file sizes from FILELISTONLY)",
                    "free space on it, or give --data-dir/--log-dir on a volume with room",
                )
            )
    if unknown:
        out.append(
            _f(
                "free-space-unknown",
                Severity.WARNING,
                f"{target} reports no volume for {', '.join(repr(p) for p in unknown)}: free space is not "
                "checked there",
                "make sure the volume has room for the database's files",
                unknown,
            )
        )
    return out
