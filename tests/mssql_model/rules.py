"""RESTORE's rules, written from the rules document (docs/sqlserver-restore-rules.md in the shared docs):
what a RESTORE statement may do to the model's databases, and the error SQL Server gives when it may not.

`plan()` checks a statement against the instance without changing anything and returns a `Plan`: what
to read, where each file goes, and where the database stands afterwards. Every failure raises SqlError
with SQL Server's messages, ending with 3013. No planning code of Ferry is used here.

Position model: a database being restored stands at LSN P (`redo_lsn`) on recovery fork `redo_fork`. A
log applies iff FirstLSN <= P < LastLSN (else 4305 too recent / 4326 too early). Within one log, LSNs below
ForkPointLSN belong to FirstRecoveryForkID and the others to RecoveryForkID; the fork the log has at P
must be the database's (else 4330). Data backups start a sequence: they set P = LastLSN and the fork
the backup has there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from tests.mssql_model.backupsets import BackupSet, BackupType, DatabaseFile
from tests.mssql_model.catalog import Database, OutsideRoot, is_windows_path
from tests.mssql_model.errors import Message, SqlError, message, terminating
from tests.mssql_model.instance import Instance, Session
from tests.mssql_model.media import DeviceError, DeviceRequest, Medium, password_matches
from tests.mssql_model.parser import Restore

RECOVERY_OPTIONS = ("RECOVERY", "NORECOVERY", "STANDBY")
_CONFLICTS = (
    ("RECOVERY", "NORECOVERY", "STANDBY"),
    ("STOPAT", "STOPATMARK", "STOPBEFOREMARK"),
    ("CHECKSUM", "NO_CHECKSUM"),
    ("CONTINUE_AFTER_ERROR", "STOP_ON_ERROR"),
    ("ENABLE_BROKER", "ERROR_BROKER_CONVERSATIONS", "NEW_BROKER"),
    ("REWIND", "NOREWIND"),
    ("UNLOAD", "NOUNLOAD"),
)
_COMMON = {
    "FILE",
    "MEDIAPASSWORD",
    "PASSWORD",
    "CHECKSUM",
    "NO_CHECKSUM",
    "CONTINUE_AFTER_ERROR",
    "STOP_ON_ERROR",
    "CREDENTIAL",
    "MEDIANAME",
    "REWIND",
    "NOREWIND",
    "UNLOAD",
    "NOUNLOAD",
    "BUFFERCOUNT",
    "MAXTRANSFERSIZE",
    "BLOCKSIZE",
}
_ALLOWED = {
    "HEADERONLY": _COMMON,
    "FILELISTONLY": _COMMON,
    "LABELONLY": _COMMON,
    "VERIFYONLY": _COMMON | {"STATS", "MOVE", "LOADHISTORY"},
    "LOG": _COMMON
    | {
        "MOVE",
        "RECOVERY",
        "NORECOVERY",
        "STANDBY",
        "REPLACE",
        "RESTART",
        "STATS",
        "STOPAT",
        "STOPATMARK",
        "STOPBEFOREMARK",
        "RESTRICTED_USER",
        "KEEP_REPLICATION",
        "KEEP_CDC",
    },
    "DATABASE": _COMMON
    | {
        "MOVE",
        "RECOVERY",
        "NORECOVERY",
        "STANDBY",
        "REPLACE",
        "RESTART",
        "STATS",
        "STOPAT",
        "STOPATMARK",
        "STOPBEFOREMARK",
        "RESTRICTED_USER",
        "KEEP_REPLICATION",
        "KEEP_CDC",
        "ENABLE_BROKER",
        "ERROR_BROKER_CONVERSATIONS",
        "NEW_BROKER",
        "PARTIAL",
    },
}
STATEMENT = {
    "DATABASE": "RESTORE DATABASE",
    "LOG": "RESTORE LOG",
    "HEADERONLY": "RESTORE HEADERONLY",
    "FILELISTONLY": "RESTORE FILELIST",
    "LABELONLY": "RESTORE LABELONLY",
    "VERIFYONLY": "VERIFY DATABASE",
    "REWINDONLY": "RESTORE REWINDONLY",
}


@dataclass
class Stop:
    time: datetime | None = None
    lsn: int | None = None
    mark: str | None = None  # a named mark: the model has no log records to find it in


@dataclass
class Plan:
    stmt: Restore
    label: str
    database: str
    backup: BackupSet | None = None
    media: list[Medium] = field(default_factory=list)
    targets: list[tuple[DatabaseFile, str]] = field(default_factory=list)
    recovery: str = "RECOVERY"
    standby_file: str | None = None
    # Where the database stands afterwards.
    new_lsn: int | None = None
    new_fork: str | None = None
    new_time: str | None = None
    recovered: bool = False
    notes: list[Message] = field(default_factory=list)  # informational messages sent after success
    stop: Stop | None = None

    @property
    def kind(self) -> str:
        if self.backup is None:
            return "RECOVER"
        return {BackupType.DATABASE: "FULL", BackupType.DIFFERENTIAL: "DIFF"}.get(
            self.backup.backup_type or BackupType.LOG, "LOG"
        )


def _guid(value: object) -> str | None:
    return None if value is None else str(value).upper()


def _local(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.replace(tzinfo=None)


def fork_at(backup: BackupSet, lsn: int) -> str | None:
    """The recovery fork `backup` has at `lsn` (the inherited-fork rule)."""
    if backup.fork_point_lsn and lsn < backup.fork_point_lsn and backup.first_recovery_fork_id:
        return _guid(backup.first_recovery_fork_id)
    return _guid(backup.recovery_fork_id)


def check_options(stmt: Restore) -> list[Message]:
    names = [o.name for o in stmt.options]
    allowed = _ALLOWED.get(stmt.kind, _COMMON)
    unsupported = [n for n in names if n not in allowed]
    # CREDENTIAL goes only with URL devices, for RESTORE and its HEADERONLY/FILELISTONLY/LABELONLY/
    # VERIFYONLY forms alike (https://learn.microsoft.com/sql/relational-databases/backup-restore/
    # sql-server-backup-to-url, "Support for Backup/Restore Statements").
    if stmt.opt("CREDENTIAL") and stmt.devices and not any(d.kind == "URL" for d in stmt.devices):
        unsupported.append("CREDENTIAL")
    if unsupported:
        return [message(3032, ", ".join(n.lower() for n in unsupported))]
    for group in _CONFLICTS:
        present = [n for n in group if n in names]
        if len(present) > 1:
            return [message(3031, present[1], present[0])]
    if "NORECOVERY" in names:
        for name in ("KEEP_REPLICATION", "KEEP_CDC"):
            if name in names:
                return [message(3031, name, "NORECOVERY")]
    for option in stmt.options:
        value = option.value
        if (
            option.name in ("FILE", "BUFFERCOUNT", "STATS", "MAXTRANSFERSIZE", "BLOCKSIZE")
            and option.has_value
        ):
            if not isinstance(value, int):
                return [message(3217, option.name)]
            if option.name == "FILE" and value < 1:
                return [message(3250, value, "FILE")]
            if option.name == "BUFFERCOUNT" and value < 1:
                return [message(3217, "BUFFERCOUNT")]
            if option.name == "MAXTRANSFERSIZE" and (value % 65536 or not 65536 <= value <= 4194304):
                return [message(3217, "MAXTRANSFERSIZE")]
            if option.name == "BLOCKSIZE" and (value & (value - 1) or not 512 <= value <= 65536):
                return [message(3253)]
            if option.name == "STATS" and not 0 <= value <= 100:
                return [message(3250, value, "STATS")]
    if len(stmt.devices) > 64:
        return [message(3205, 64)]
    return []


def parse_stop(stmt: Restore) -> Stop | None:
    for name in ("STOPAT", "STOPATMARK", "STOPBEFOREMARK"):
        option = stmt.opt(name)
        if option is None:
            continue
        text = str(option.value)
        if name == "STOPAT":
            try:
                return Stop(time=datetime.fromisoformat(text.strip().replace("T", " ")).replace(tzinfo=None))
            except ValueError:
                raise terminating(STATEMENT[stmt.kind], message(241)) from None
        if text.lower().startswith("lsn:"):
            digits = text[4:].strip()
            if not digits.isdigit():
                raise terminating(STATEMENT[stmt.kind], message(4334))
            return Stop(lsn=int(digits))
        if stmt.kind == "DATABASE":
            raise terminating(STATEMENT[stmt.kind], message(4340))
        return Stop(mark=text)
    return None


def open_media(instance: Instance, stmt: Restore, label: str) -> list[Medium]:
    if any(d.kind == "LOGICAL" for d in stmt.devices):
        device = next(d for d in stmt.devices if d.kind == "LOGICAL")
        raise terminating(label, message(3206, device.name))
    media = []
    request = device_request(instance, stmt)
    for device in stmt.devices:
        try:
            media.append(instance.media.open(device.kind, device.name, request))
        except DeviceError as exc:
            raise terminating(label, *exc.messages) from None
    return media


def device_request(instance: Instance, stmt: Restore) -> DeviceRequest:
    """What opening this statement's devices depends on: the instance and the statement's options."""
    config = instance.config
    with instance.lock:
        credentials = tuple(instance.state.credentials)
    option = stmt.opt("CREDENTIAL")
    return DeviceRequest(
        version=config.version_tuple,
        platform=config.platform,
        credentials=credentials,
        with_credential=None if option is None else str(option.value),
        url_devices=sum(1 for d in stmt.devices if d.kind == "URL"),
        smb_login=config.smb_credentials,
        smb_servers={k.lower(): v for k, v in config.smb_servers.items()},
    )


def check_password(stmt: Restore, medium: Medium, label: str) -> None:
    given = stmt.opt("MEDIAPASSWORD") or stmt.opt("PASSWORD")
    password = None if given is None else str(given.value)
    if not password_matches(medium.label, password):
        raise terminating(label, message(3279, state=2))


def select_set(stmt: Restore, media: list[Medium], label: str, whole_set: bool) -> BackupSet:
    """The backup set at FILE = n, checked across every device of the media set."""
    file_opt = stmt.opt("FILE")
    position = int(file_opt.value) if file_opt and isinstance(file_opt.value, int) else 1
    chosen: BackupSet | None = None
    seen: dict[int, str] = {}
    for medium in media:
        check_password(stmt, medium, label)
        found = medium.set_at(position)
        if found is None:
            raise terminating(label, message(3246, position, medium.device))
        if chosen is None:
            chosen = found
        elif found.media_set_id != chosen.media_set_id or found.backup_set_guid != chosen.backup_set_guid:
            raise terminating(label, message(3258, medium.device))
        if found.family_sequence_number in seen:
            raise terminating(
                label,
                message(
                    3227, medium.device, found.family_sequence_number, seen[found.family_sequence_number]
                ),
            )
        seen[found.family_sequence_number] = medium.device
    assert chosen is not None
    if whole_set and len(seen) < chosen.family_count:
        raise terminating(label, message(3132, chosen.family_count, len(seen)))
    if stmt.has("CHECKSUM") and chosen.has_checksums is False:
        raise terminating(label, message(3187))
    return chosen


def created_by(backup: BackupSet) -> str:
    if backup.backup_type is BackupType.LOG:
        return "BACKUP LOG"
    if backup.backup_type is BackupType.DIFFERENTIAL:
        return "BACKUP DATABASE WITH DIFFERENTIAL"
    return "BACKUP DATABASE"


def version_text(major: int, minor: int, build: int) -> str:
    return f"{major}.{minor:02d}.{build}"


def check_access(instance: Instance, session: Session, name: str, label: str) -> None:
    """Exclusive access: nobody else in the database, and not the restoring session itself."""
    with instance.lock:
        owner = instance.busy.get(name.lower())
        if owner is not None and owner != session.spid:
            raise terminating(label, message(3101))
        if session.database.lower() == name.lower():
            raise terminating(label, message(3102, label.split()[0], name))
        if instance.users_of(name, but=session.spid):
            raise terminating(label, message(3101))


def check_permission(session: Session, db: Database | None, name: str, label: str) -> None:
    if session.has_role("dbcreator"):
        return
    if db is None:
        raise terminating(label, message(262))
    if db.owner_sid != session.login.sid:
        raise terminating(label, message(3110, name))


def plan(instance: Instance, session: Session, stmt: Restore) -> Plan:
    label = STATEMENT[stmt.kind]
    problems = check_options(stmt)
    if problems:
        raise terminating(label, *problems)
    if session.trancount > 0:
        raise terminating(label, message(3021))
    assert stmt.database is not None
    name = stmt.database
    with instance.lock:
        db = instance.state.database(name)
    check_permission(session, db, name, label)
    result = Plan(stmt, label, db.name if db else name)
    recovery = [n for n in RECOVERY_OPTIONS if stmt.has(n)]
    result.recovery = recovery[0] if recovery else "RECOVERY"
    standby = stmt.opt("STANDBY")
    result.standby_file = str(standby.value) if standby else None
    result.stop = parse_stop(stmt)
    if not stmt.devices:
        return _plan_recover(instance, session, result, db)
    result.media = open_media(instance, stmt, label)
    backup = select_set(stmt, result.media, label, whole_set=True)
    result.backup = backup
    if stmt.kind == "LOG" and backup.backup_type is not BackupType.LOG:
        raise terminating(label, message(3135, result.media[0].device, created_by(backup)))
    if stmt.kind == "DATABASE" and backup.backup_type not in (BackupType.DATABASE, BackupType.DIFFERENTIAL):
        raise terminating(label, message(3135, result.media[0].device, created_by(backup)))
    _check_version(instance, result, backup)
    if backup.backup_type is BackupType.DATABASE:
        _plan_full(instance, session, result, db)
    elif backup.backup_type is BackupType.DIFFERENTIAL:
        _plan_diff(instance, session, result, db)
    else:
        _plan_log(instance, session, result, db)
    return result


def _check_version(instance: Instance, result: Plan, backup: BackupSet) -> None:
    config = instance.config
    if not config.oldest_restorable <= backup.database_version <= config.database_version:
        theirs = version_text(backup.software_major, backup.software_minor, backup.software_build)
        ours = version_text(*config.version_tuple)
        raise terminating(result.label, message(3169, theirs, ours))
    if result.recovery == "STANDBY" and backup.database_version < config.database_version:
        raise terminating(result.label, message(3180))


def _plan_recover(instance: Instance, session: Session, result: Plan, db: Database | None) -> Plan:
    label = result.label
    if db is None:
        raise terminating(label, message(3118, result.database))
    check_access(instance, session, db.name, label)
    if db.state != "RESTORING" and not db.is_in_standby:
        raise terminating(label, message(3153, state=2))
    if db.interrupted:
        raise terminating(label, message(4319, _primary(db)))
    result.new_lsn, result.new_fork, result.new_time = db.redo_lsn, db.redo_fork, db.redo_time
    result.recovered = result.recovery == "RECOVERY"
    return result


def _primary(db: Database) -> str:
    return next((f.logical_name for f in db.files if f.type == "D"), db.name)


def _data_stop_check(result: Plan, backup: BackupSet) -> None:
    """STOPAT on a data backup: refused on SIMPLE; an error only if the backup is newer than the point."""
    stop = result.stop
    if stop is None:
        return
    if backup.recovery_model == "SIMPLE":
        raise terminating(result.label, message(3145))
    finish = _local(backup.backup_finish)
    if stop.time is not None and finish is not None and stop.time < finish:
        raise terminating(result.label, message(4338))
    if stop.lsn is not None and stop.lsn < backup.last_lsn:
        raise terminating(result.label, message(4338))


def _settle_data(result: Plan, backup: BackupSet) -> None:
    """Where a full or differential restore leaves the database."""
    result.new_lsn = backup.last_lsn
    result.new_fork = fork_at(backup, backup.last_lsn)
    finish = _local(backup.backup_finish)
    result.new_time = finish.isoformat(sep=" ") if finish else None
    stop = result.stop
    if stop is not None and (
        (stop.time is not None and finish is not None and stop.time > finish)
        or (stop.lsn is not None and stop.lsn > backup.last_lsn)
    ):
        # The point lies in a later log: the database stays restoring whatever the recovery option.
        result.notes.append(message(4322))
        result.recovered = False
        return
    result.recovered = result.recovery == "RECOVERY"


def _plan_full(instance: Instance, session: Session, result: Plan, db: Database | None) -> None:
    stmt, backup, label = result.stmt, result.backup, result.label
    assert backup is not None
    replace = stmt.has("REPLACE")
    if db is not None:
        check_access(instance, session, db.name, label)
        family = _guid(backup.family_guid)
        if not replace and db.family_guid and family and db.family_guid != family:
            raise terminating(label, message(3154, db.name))
        if (
            db.state != "RESTORING"
            and not db.is_in_standby
            and db.recovery_model != "SIMPLE"
            and not replace
            and result.stop is None
        ):
            raise terminating(label, message(3159, db.name))
    _data_stop_check(result, backup)
    result.targets = _file_targets(instance, result, backup, db, replace)
    _check_space(instance, result, db)
    _settle_data(result, backup)


def _plan_diff(instance: Instance, session: Session, result: Plan, db: Database | None) -> None:
    backup, label = result.backup, result.label
    assert backup is not None
    if db is None:
        raise terminating(label, message(3118, result.database))
    check_access(instance, session, db.name, label)
    if db.state != "RESTORING" and not db.is_in_standby:
        raise terminating(label, message(3117))
    if db.interrupted and db.interrupted != _guid(backup.backup_set_guid):
        raise terminating(label, message(4319, _primary(db)))
    base = _guid(backup.differential_base_guid)
    if base != db.diff_base_guid or (db.redo_lsn is not None and backup.last_lsn < db.redo_lsn):
        raise terminating(label, message(3136))
    _data_stop_check(result, backup)
    result.targets = [(f, _current_path(db, f)) for f in backup.files]
    _settle_data(result, backup)


def _current_path(db: Database, file: DatabaseFile) -> str:
    own = next((f for f in db.files if f.logical_name.lower() == file.logical_name.lower()), None)
    return own.physical_name if own else file.physical_name


def _plan_log(instance: Instance, session: Session, result: Plan, db: Database | None) -> None:
    backup, label = result.backup, result.label
    assert backup is not None
    if db is None:
        raise terminating(label, message(3118, result.database))
    check_access(instance, session, db.name, label)
    if db.state != "RESTORING" and not db.is_in_standby:
        raise terminating(label, message(3117))
    if db.interrupted:
        raise terminating(label, message(4319, _primary(db)))
    if db.is_in_standby and db.standby_file:
        try:
            undo = instance.fs.host(db.standby_file)
        except OutsideRoot:
            undo = None
        if undo is None or not undo.is_file():
            raise terminating(
                label,
                message(
                    3441,
                    db.name,
                    db.database_id,
                    db.standby_file,
                    "2(The system cannot find the file specified.)",
                ),
            )
    for option in result.stmt.options:
        if option.name == "MOVE" and not any(
            f.logical_name.lower() == str(option.value).lower() for f in backup.files
        ):
            raise terminating(label, message(3234, option.value, db.name))
    p = db.redo_lsn if db.redo_lsn is not None else 0
    first, last = backup.first_lsn, backup.last_lsn
    if first > p:
        raise terminating(label, message(4305, first, p))
    if last <= p:
        raise terminating(label, message(4326, last, p))
    if db.redo_fork and fork_at(backup, p) != db.redo_fork:
        raise terminating(label, message(4330))
    result.targets = [(f, _current_path(db, f)) for f in backup.files if f.type == "L"]
    _settle_log(result, backup, db, p)


def _settle_log(result: Plan, backup: BackupSet, db: Database, p: int) -> None:
    first, last = backup.first_lsn, backup.last_lsn
    end_time = _local(backup.backup_finish or backup.backup_start)
    stop = result.stop
    stop_lsn: int | None = None
    if stop is not None and stop.time is not None:
        begin = datetime.fromisoformat(db.redo_time) if db.redo_time else None
        if begin is not None and stop.time < begin:
            raise terminating(result.label, message(4335))
        if end_time is not None and stop.time < end_time:
            # Commit times inside a log are not in its header: the model puts the stop point at the
            # fraction of the log's LSN range that the time is of its time range.
            span = (end_time - begin).total_seconds() if begin else 0.0
            frac = (stop.time - begin).total_seconds() / span if begin and span > 0 else 0.0
            stop_lsn = min(last - 1, max(p, first + int((last - first) * frac)))
    elif stop is not None and stop.lsn is not None:
        if stop.lsn <= p:
            raise terminating(result.label, message(4338))
        if stop.lsn < last:
            stop_lsn = stop.lsn
    if stop is not None and stop_lsn is None:
        # The point lies beyond this log: all of it applies and the database waits for the next one.
        result.notes.append(message(4322 if stop.time is not None else 4329))
        result.recovery = "NORECOVERY" if result.recovery == "RECOVERY" else result.recovery
    result.new_lsn = stop_lsn if stop_lsn is not None else last
    result.new_fork = fork_at(backup, result.new_lsn)
    if stop_lsn is not None and stop is not None and stop.time is not None:
        result.new_time = stop.time.isoformat(sep=" ")
    else:
        result.new_time = end_time.isoformat(sep=" ") if end_time else None
    result.recovered = result.recovery == "RECOVERY"


def _file_targets(
    instance: Instance, result: Plan, backup: BackupSet, db: Database | None, replace: bool
) -> list[tuple[DatabaseFile, str]]:
    """Where each file of the backup goes, and every planning problem with those places (then 3119)."""
    moves: dict[str, str] = {}
    label = result.label
    for option in result.stmt.options:
        if option.name != "MOVE":
            continue
        logical = str(option.value).lower()
        if not any(f.logical_name.lower() == logical for f in backup.files):
            raise terminating(label, message(3234, option.value, backup.database_name))
        if logical in moves:
            raise terminating(label, message(4353, option.value))
        moves[logical] = str(option.target)
    fs = instance.fs
    owners: dict[str, str] = {}
    with instance.lock:
        for other in instance.state.databases.values():
            for f in other.files:
                owners[fs.key(f.physical_name)] = other.name
    targets: list[tuple[DatabaseFile, str]] = []
    problems: list[Message] = []
    claimed: dict[str, tuple[DatabaseFile, str]] = {}
    for file in backup.files:
        # Over an existing database, a file without MOVE keeps that database's current location.
        default = _current_path(db, file) if db is not None else file.physical_name
        path = moves.get(file.logical_name.lower(), default)
        targets.append((file, path))
        try:
            key, host = fs.key(path), fs.host(path)
        except OutsideRoot:
            problems += [message(5133, path, "5(Access is denied.)"), message(3156, file.logical_name, path)]
            continue
        if key in claimed:
            first = claimed[key][0]
            problems.append(
                message(3176, path, first.logical_name, first.file_id, file.logical_name, file.file_id)
            )
            continue
        claimed[key] = (file, path)
        owner = owners.get(key)
        missing_dir = (
            "3(The system cannot find the path specified.)"
            if is_windows_path(path)
            else ("2(The system cannot find the file specified.)")
        )
        if not host.parent.is_dir():
            problems += [message(5133, path, missing_dir), message(3156, file.logical_name, path)]
        elif owner is not None and (db is None or owner.lower() != db.name.lower()):
            problems += [message(1834, path, owner), message(3156, file.logical_name, path)]
        elif host.is_dir():
            problems += [message(5170, path), message(3156, file.logical_name, path)]
        elif owner is None and host.exists() and not replace:
            problems.append(message(3142, file.logical_name, path))
    if problems:
        raise SqlError(*problems, message(3119), message(3013, label))
    return targets


def _check_space(instance: Instance, result: Plan, db: Database | None) -> None:
    need: dict[str, int] = {}
    totals: dict[str, int] = {}
    for file, path in result.targets:
        volume, total = instance.volume_of(path)
        totals[volume] = total
        need[volume] = need.get(volume, 0) + file.size
    if db is not None:
        for f in db.files:
            volume, total = instance.volume_of(f.physical_name)
            if volume in need:
                need[volume] -= f.size
    for volume, bytes_needed in need.items():
        available = instance.available_on(volume, totals[volume])
        if bytes_needed > available:
            raise SqlError(
                message(3257, volume, bytes_needed, available), message(3119), message(3013, result.label)
            )
