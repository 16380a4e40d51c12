"""Running RESTORE statements: simulated time and progress, the state each step leaves, msdb history.

A restore takes time proportional to the backup's size at the configured rate, with a small minimum,
and sends STATS progress (3211) as it goes, then one 4035 per file and 3014. A client that disconnects
or cancels mid-way aborts it: an aborted RESTORE DATABASE (full or differential) leaves the database
RESTORING with the interrupted backup set recorded (4319 until it is restored again, or a new full
restore starts over); an aborted RESTORE LOG leaves the database where it was before that log.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Protocol

from tests.mssql_model import rules
from tests.mssql_model.backupsets import BackupSet
from tests.mssql_model.catalog import Database, DbFile, OutsideRoot, now_text
from tests.mssql_model.devices import URL_DEVICES_SINCE
from tests.mssql_model.errors import Message, fail, message, terminating
from tests.mssql_model.instance import Instance, Session
from tests.mssql_model.parser import Restore
from tests.mssql_model.tokens import (
    BIGINT,
    BIT,
    DATETIME,
    GUID,
    INT,
    LSN,
    NVARCHAR,
    SMALLINT,
    TINYINT,
    VARBINARY,
    ColType,
)

Columns = list[tuple[str, ColType]]


class Reply(Protocol):
    def info(self, msg: Message) -> None: ...

    def result(self, columns: Columns, rows: Sequence[Sequence[object]]) -> None: ...

    def pause(self, seconds: float) -> None: ...


HEADERONLY: Columns = [
    ("BackupName", NVARCHAR),
    ("BackupDescription", NVARCHAR),
    ("BackupType", SMALLINT),
    ("ExpirationDate", DATETIME),
    ("Compressed", TINYINT),
    ("Position", SMALLINT),
    ("DeviceType", TINYINT),
    ("UserName", NVARCHAR),
    ("ServerName", NVARCHAR),
    ("DatabaseName", NVARCHAR),
    ("DatabaseVersion", INT),
    ("DatabaseCreationDate", DATETIME),
    ("BackupSize", ColType("decimal", precision=20)),
    ("FirstLSN", LSN),
    ("LastLSN", LSN),
    ("CheckpointLSN", LSN),
    ("DatabaseBackupLSN", LSN),
    ("BackupStartDate", DATETIME),
    ("BackupFinishDate", DATETIME),
    ("SortOrder", SMALLINT),
    ("CodePage", SMALLINT),
    ("UnicodeLocaleId", INT),
    ("UnicodeComparisonStyle", INT),
    ("CompatibilityLevel", TINYINT),
    ("SoftwareVendorId", INT),
    ("SoftwareVersionMajor", INT),
    ("SoftwareVersionMinor", INT),
    ("SoftwareVersionBuild", INT),
    ("MachineName", NVARCHAR),
    ("Flags", INT),
    ("BindingID", GUID),
    ("RecoveryForkID", GUID),
    ("Collation", NVARCHAR),
    ("FamilyGUID", GUID),
    ("HasBulkLoggedData", BIT),
    ("IsSnapshot", BIT),
    ("IsReadOnly", BIT),
    ("IsSingleUser", BIT),
    ("HasBackupChecksums", BIT),
    ("IsDamaged", BIT),
    ("BeginsLogChain", BIT),
    ("HasIncompleteMetaData", BIT),
    ("IsForceOffline", BIT),
    ("IsCopyOnly", BIT),
    ("FirstRecoveryForkID", GUID),
    ("ForkPointLSN", LSN),
    ("RecoveryModel", NVARCHAR),
    ("DifferentialBaseLSN", LSN),
    ("DifferentialBaseGUID", GUID),
    ("BackupTypeDescription", NVARCHAR),
    ("BackupSetGUID", GUID),
    ("CompressedBackupSize", BIGINT),
    ("Containment", TINYINT),
    ("KeyAlgorithm", NVARCHAR),
    ("EncryptorThumbprint", VARBINARY),
    ("EncryptorType", NVARCHAR),
]
FILELISTONLY: Columns = [
    ("LogicalName", NVARCHAR),
    ("PhysicalName", NVARCHAR),
    ("Type", NVARCHAR),
    ("FileGroupName", NVARCHAR),
    ("Size", ColType("decimal", precision=20)),
    ("MaxSize", ColType("decimal", precision=20)),
    ("FileId", BIGINT),
    ("CreateLSN", LSN),
    ("DropLSN", LSN),
    ("UniqueId", GUID),
    ("ReadOnlyLSN", LSN),
    ("ReadWriteLSN", LSN),
    ("BackupSizeInBytes", BIGINT),
    ("SourceBlockSize", INT),
    ("FileGroupId", INT),
    ("LogGroupGUID", GUID),
    ("DifferentialBaseLSN", LSN),
    ("DifferentialBaseGUID", GUID),
    ("IsReadOnly", BIT),
    ("IsPresent", BIT),
    ("TDEThumbprint", VARBINARY),
    ("SnapshotUrl", NVARCHAR),
]
LABELONLY: Columns = [
    ("MediaName", NVARCHAR),
    ("MediaSetId", GUID),
    ("FamilyCount", INT),
    ("FamilySequenceNumber", INT),
    ("MediaFamilyId", GUID),
    ("MediaSequenceNumber", INT),
    ("MediaLabelPresent", TINYINT),
    ("MediaDescription", NVARCHAR),
    ("SoftwareName", NVARCHAR),
    ("SoftwareVendorId", INT),
    ("MediaDate", DATETIME),
    ("Mirror_Count", INT),
    ("IsCompressed", BIT),
]


def _naive(value: object) -> object:
    if isinstance(value, str) and len(value) >= 19 and value[4] == "-" and value[10] == "T":
        return value[:19].replace("T", " ")
    return value


def run(reply: Reply, instance: Instance, session: Session, stmt: Restore) -> None:
    if any(d.kind == "URL" for d in stmt.devices) and instance.config.version_tuple < URL_DEVICES_SINCE:
        raise fail(102, "URL")
    if stmt.kind in ("HEADERONLY", "FILELISTONLY", "LABELONLY", "VERIFYONLY"):
        _auxiliary(reply, instance, session, stmt)
        return
    if stmt.kind == "REWINDONLY":
        raise terminating("RESTORE REWINDONLY", message(3032, "rewindonly"))
    plan = rules.plan(instance, session, stmt)
    execute(reply, instance, session, plan)


def _auxiliary(reply: Reply, instance: Instance, session: Session, stmt: Restore) -> None:
    label = rules.STATEMENT[stmt.kind]
    problems = rules.check_options(stmt)
    if problems:
        raise terminating(label, *problems)
    if not session.has_role("dbcreator"):
        raise terminating(label, message(262))
    media = rules.open_media(instance, stmt, label)
    first = media[0]
    if stmt.kind == "VERIFYONLY":
        backup = rules.select_set(stmt, media, label, whole_set=True)
        _progress(reply, instance, session, stmt, backup.backup_size, label)
        reply.info(message(3262, backup.position))
        return
    rules.check_password(stmt, first, label)
    file_opt = stmt.opt("FILE")
    position = file_opt.value if file_opt and isinstance(file_opt.value, int) else None
    if stmt.kind == "HEADERONLY":
        sets = [s for s in first.sets if position is None or s.position == position]
        rows = [[_naive(s.headeronly().get(name)) for name, _ in HEADERONLY] for s in sets]
        for row, backup in zip(rows, sets, strict=True):
            row[HEADERONLY.index(("Collation", NVARCHAR))] = "SQL_Latin1_General_CP1_CI_AS"
            row[HEADERONLY.index(("DeviceType", TINYINT))] = 9 if first.kind == "URL" else 2
            del backup
        reply.result(HEADERONLY, rows)
    elif stmt.kind == "FILELISTONLY":
        found = first.set_at(position or 1)
        if found is None:
            raise terminating(label, message(3246, position or 1, first.device))
        rows = []
        for f in found.files:
            values = f.filelistonly()
            values["IsPresent"] = True
            rows.append([values.get(name) for name, _ in FILELISTONLY])
        reply.result(FILELISTONLY, rows)
    else:
        s = first.sets[0]
        label_row: list[object] = [
            first.label.media_name,
            str(s.media_set_id),
            s.family_count,
            s.family_sequence_number,
            s.headeronly()["MediaFamilyId"],
            1,
            1,
            first.label.media_description,
            "Microsoft SQL Server",
            4608,
            _naive(s.headeronly()["BackupStartDate"]),
            1,
            s.compressed,
        ]
        reply.result(LABELONLY, [label_row])


def _stats_step(stmt: Restore) -> int | None:
    option = stmt.opt("STATS")
    if option is None:
        return None
    return int(option.value) if isinstance(option.value, int) and option.value > 0 else 10


def _progress(
    reply: Reply, instance: Instance, session: Session, stmt: Restore, size: int, command: str, kind: str = ""
) -> float:
    """Spend the simulated time of reading `size` bytes (at least the hold of its kind), sending STATS
    messages; returns seconds spent."""
    config = instance.config
    duration = max(
        config.min_restore_seconds, config.hold.get(kind, 0.0), size / (config.restore_mbps * 1_000_000)
    )
    step = _stats_step(stmt)
    marks = list(range(step, 101, step)) if step else []
    session.command = command
    session.request_start = None
    started = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        done = min(1.0, elapsed / duration) if duration > 0 else 1.0
        session.percent_complete = round(done * 100, 2)
        while marks and marks[0] <= done * 100 + 1e-9:
            reply.info(message(3211, marks.pop(0)))
        if done >= 1.0:
            break
        reply.pause(min(0.02, max(0.0, duration - elapsed)))
    session.percent_complete = 0.0
    return time.monotonic() - started


def execute(reply: Reply, instance: Instance, session: Session, plan: rules.Plan) -> None:
    key = plan.database.lower()
    with instance.lock:
        owner = instance.busy.get(key)
        if owner is not None and owner != session.spid:
            raise terminating(plan.label, message(3101))
        instance.busy[key] = session.spid
    try:
        backup = plan.backup
        if plan.kind == "FULL":
            assert backup is not None
            _begin_full(instance, session, plan, backup)
        elif plan.kind == "DIFF":
            assert backup is not None
            with instance.lock:
                db = instance.state.database(plan.database)
                assert db is not None
                db.interrupted = str(backup.backup_set_guid).upper()
                instance.save()
        size = backup.backup_size if backup else 0
        seconds = _progress(reply, instance, session, plan.stmt, size, plan.label, plan.kind)
        pages = 0
        for file, _path in plan.targets:
            file_pages = max(1, file.backup_size // 8192) if backup else 0
            pages += file_pages
            reply.info(
                message(4035, file_pages, plan.database, file.logical_name, backup.position if backup else 1)
            )
        _finish(instance, session, plan)
        for note in plan.notes:
            reply.info(note)
        millis = max(1, int(seconds * 1000))
        rate = pages * 8192 / 1048576 / (millis / 1000)
        reply.info(
            message(
                3014, plan.label, pages, millis // 1000, millis % 1000, int(rate), int(rate * 1000) % 1000
            )
        )
    finally:
        with instance.lock:
            if instance.busy.get(key) == session.spid:
                del instance.busy[key]
        session.command = "AWAITING COMMAND"


def _placeholder(instance: Instance, path: str, text: str) -> None:
    try:
        host = instance.fs.host(path)
    except OutsideRoot:
        return
    if host.parent.is_dir() and not host.is_dir():
        host.write_text(text + "\n", encoding="utf-8")


def _remove(instance: Instance, path: str) -> None:
    try:
        host = instance.fs.host(path)
    except OutsideRoot:
        return
    if host.is_file():
        host.unlink()


def _begin_full(instance: Instance, session: Session, plan: rules.Plan, backup: BackupSet) -> None:
    """The database exists from the start of a full restore, RESTORING and marked interrupted until done."""
    with instance.lock:
        state = instance.state
        db = state.database(plan.database)
        if db is None:
            db = Database(
                plan.database, state.next_database_id, owner_sid=session.login.sid, create_date=now_text()
            )
            state.next_database_id += 1
            state.databases[plan.database.lower()] = db
        new_paths = {instance.fs.key(p) for _, p in plan.targets}
        for old in db.files:
            if instance.fs.key(old.physical_name) not in new_paths:
                _remove(instance, old.physical_name)
        if db.standby_file:
            _remove(instance, db.standby_file)
            db.standby_file = None
        db.files = [
            DbFile(f.file_id, f.type, f.logical_name, path, f.size, f.max_size, f.create_lsn)
            for f, path in plan.targets
        ]
        for f in db.files:
            _placeholder(
                instance, f.physical_name, f"SQL Server model placeholder: {db.name} {f.logical_name}"
            )
        db.state = "RESTORING"
        db.is_in_standby = db.is_read_only = False
        db.family_guid = rules._guid(backup.family_guid)
        db.database_guid = rules._guid(backup.database_guid)
        db.recovery_model = backup.recovery_model
        db.database_version = backup.database_version
        low, high = instance.config.compat_levels
        db.compatibility_level = (
            backup.compatibility_level if low <= backup.compatibility_level <= high else low
        )
        db.redo_lsn = db.redo_fork = db.redo_time = None
        db.diff_base_lsn = db.diff_base_guid = None
        db.recovery_fork = None
        db.fork_point_lsn = None
        db.interrupted = rules._guid(backup.backup_set_guid)
        instance.save()


def _finish(instance: Instance, session: Session, plan: rules.Plan) -> None:
    with instance.lock:
        db = instance.state.database(plan.database)
        assert db is not None
        backup = plan.backup
        if backup is not None and plan.kind == "FULL":
            db.diff_base_lsn = backup.checkpoint_lsn
            db.diff_base_guid = rules._guid(backup.backup_set_guid)
        db.interrupted = None
        db.redo_lsn, db.redo_fork, db.redo_time = plan.new_lsn, plan.new_fork, plan.new_time
        if db.standby_file:
            _remove(instance, db.standby_file)
            db.standby_file = None
        if plan.recovered:
            db.state = "ONLINE"
            db.is_in_standby = db.is_read_only = False
            db.recovery_fork = str(uuid.uuid4()).upper()
            db.fork_point_lsn = plan.new_lsn
            db.database_version = instance.config.database_version
            db.user_access = "RESTRICTED_USER" if plan.stmt.has("RESTRICTED_USER") else "MULTI_USER"
        elif plan.recovery == "STANDBY" and plan.standby_file:
            db.state = "ONLINE"
            db.is_in_standby = db.is_read_only = True
            db.standby_file = plan.standby_file
            _placeholder(instance, plan.standby_file, f"SQL Server model standby undo file: {db.name}")
        else:
            db.state = "RESTORING"
            db.is_in_standby = db.is_read_only = False
        if backup is not None:
            _record_history(instance, session, plan, db, backup)
        instance.save()


def _record_history(
    instance: Instance, session: Session, plan: rules.Plan, db: Database, backup: BackupSet
) -> None:
    state = instance.state
    set_id = len(state.backupset) + 1
    media_set_id = len(state.backupmediafamily) + 1
    finish = backup.backup_finish.replace(tzinfo=None) if backup.backup_finish else None
    start = backup.backup_start.replace(tzinfo=None) if backup.backup_start else None
    created = backup.database_creation.replace(tzinfo=None) if backup.database_creation else None
    state.backupset.append(
        {
            "backup_set_id": set_id,
            "backup_set_uuid": str(backup.backup_set_guid).upper(),
            "media_set_id": media_set_id,
            "first_family_number": 1,
            "first_media_number": 1,
            "last_family_number": backup.family_count,
            "last_media_number": 1,
            "position": backup.position,
            "name": backup.backup_name,
            "description": backup.backup_description,
            "user_name": backup.user_name,
            "software_major_version": backup.software_major,
            "software_minor_version": backup.software_minor,
            "software_build_version": backup.software_build,
            "database_version": backup.database_version,
            "compatibility_level": backup.compatibility_level,
            "database_creation_date": created.isoformat(sep=" ") if created else None,
            "backup_start_date": start.isoformat(sep=" ") if start else None,
            "backup_finish_date": finish.isoformat(sep=" ") if finish else None,
            "type": backup.type_letter,
            "first_lsn": backup.first_lsn,
            "last_lsn": backup.last_lsn,
            "checkpoint_lsn": backup.checkpoint_lsn,
            "database_backup_lsn": backup.database_backup_lsn,
            "database_name": backup.database_name,
            "server_name": backup.server_name,
            "machine_name": backup.machine_name,
            "recovery_model": backup.recovery_model,
            "family_guid": rules._guid(backup.family_guid),
            "database_guid": rules._guid(backup.database_guid),
            "fork_point_lsn": backup.fork_point_lsn,
            "first_recovery_fork_guid": rules._guid(backup.first_recovery_fork_id or backup.recovery_fork_id),
            "last_recovery_fork_guid": rules._guid(backup.recovery_fork_id),
            "differential_base_lsn": backup.differential_base_lsn,
            "differential_base_guid": rules._guid(backup.differential_base_guid)
            if plan.kind == "DIFF"
            else None,
            "backup_size": backup.backup_size,
            "compressed_backup_size": backup.compressed_backup_size or backup.backup_size,
            "is_copy_only": 0,
            "has_backup_checksums": 1 if backup.has_checksums else 0,
            "is_password_protected": 1 if backup.has_media_password else 0,
        }
    )
    for number, medium in enumerate(plan.media, start=1):
        state.backupmediafamily.append(
            {
                "media_set_id": media_set_id,
                "family_sequence_number": number,
                "media_family_id": None,
                "media_count": 1,
                "logical_device_name": None,
                "physical_device_name": medium.device,
                "device_type": 9 if medium.kind == "URL" else 2,
                "physical_block_size": 512,
                "mirror": 0,
            }
        )
    history_id = len(state.restorehistory) + 1
    stop = plan.stop
    state.restorehistory.append(
        {
            "restore_history_id": history_id,
            "restore_date": now_text(),
            "destination_database_name": db.name,
            "user_name": session.login.name,
            "backup_set_id": set_id,
            "restore_type": {"FULL": "D", "DIFF": "I"}.get(plan.kind, "L"),
            "replace": 1 if plan.stmt.has("REPLACE") else 0,
            "recovery": 1 if plan.recovered else 0,
            "restart": 0,
            "stop_at": stop.time.isoformat(sep=" ") if stop and stop.time else None,
            "device_count": len(plan.media),
            "stop_at_mark_name": stop.mark if stop else None,
            "stop_before": 1 if plan.stmt.has("STOPBEFOREMARK") else 0,
        }
    )
    for file, path in plan.targets:
        state.restorefile.append(
            {
                "restore_history_id": history_id,
                "file_number": file.file_id,
                "destination_phys_drive": path[:3] if path[1:2] == ":" else "/",
                "destination_phys_name": path,
            }
        )
