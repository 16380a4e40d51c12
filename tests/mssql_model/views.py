"""The system views and msdb tables a restore driver reads, built from the model's state as SQLite rows.

Each view is a table name in SQLite (`sys.databases` -> sys_databases, `msdb.dbo.backupset` ->
msdb_backupset) with its columns' SQL Server types, so result sets carry the types SQL Server sends
(LSNs as numeric(25,0), GUIDs as uniqueidentifier, dates as datetime).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from tests.mssql_model.catalog import Database, DbFile
from tests.mssql_model.instance import Instance, Session
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

Schema = dict[str, list[tuple[str, ColType]]]

_FILE_COLUMNS = [
    ("database_id", INT),
    ("file_id", INT),
    ("file_guid", GUID),
    ("type", TINYINT),
    ("type_desc", NVARCHAR),
    ("data_space_id", INT),
    ("name", NVARCHAR),
    ("physical_name", NVARCHAR),
    ("state", TINYINT),
    ("state_desc", NVARCHAR),
    ("size", INT),
    ("max_size", INT),
    ("growth", INT),
    ("is_read_only", BIT),
    ("create_lsn", LSN),
    ("drop_lsn", LSN),
    ("read_only_lsn", LSN),
    ("read_write_lsn", LSN),
    ("differential_base_lsn", LSN),
    ("differential_base_guid", GUID),
    ("differential_base_time", DATETIME),
    ("redo_start_lsn", LSN),
    ("redo_start_fork_guid", GUID),
    ("redo_target_lsn", LSN),
    ("redo_target_fork_guid", GUID),
    ("backup_lsn", LSN),
]

SCHEMA: Schema = {
    "sys_databases": [
        ("name", NVARCHAR),
        ("database_id", INT),
        ("source_database_id", INT),
        ("owner_sid", VARBINARY),
        ("create_date", DATETIME),
        ("compatibility_level", TINYINT),
        ("collation_name", NVARCHAR),
        ("user_access", TINYINT),
        ("user_access_desc", NVARCHAR),
        ("is_read_only", BIT),
        ("is_auto_close_on", BIT),
        ("state", TINYINT),
        ("state_desc", NVARCHAR),
        ("is_in_standby", BIT),
        ("recovery_model", TINYINT),
        ("recovery_model_desc", NVARCHAR),
        ("is_broker_enabled", BIT),
        ("log_reuse_wait_desc", NVARCHAR),
    ],
    "sys_master_files": _FILE_COLUMNS,
    "sys_database_files": [c for c in _FILE_COLUMNS if c[0] != "database_id"],
    "sys_dm_os_volume_stats": [
        ("database_id", INT),
        ("file_id", INT),
        ("volume_mount_point", NVARCHAR),
        ("volume_id", NVARCHAR),
        ("logical_volume_name", NVARCHAR),
        ("file_system_type", NVARCHAR),
        ("total_bytes", BIGINT),
        ("available_bytes", BIGINT),
        ("supports_compression", TINYINT),
        ("supports_alternate_streams", TINYINT),
        ("supports_sparse_files", TINYINT),
        ("is_read_only", TINYINT),
        ("is_compressed", TINYINT),
    ],
    "sys_dm_exec_sessions": [
        ("session_id", SMALLINT),
        ("login_time", DATETIME),
        ("host_name", NVARCHAR),
        ("program_name", NVARCHAR),
        ("login_name", NVARCHAR),
        ("original_login_name", NVARCHAR),
        ("status", NVARCHAR),
        ("database_id", SMALLINT),
        ("is_user_process", BIT),
        ("open_transaction_count", INT),
    ],
    "sys_sysprocesses": [
        ("spid", SMALLINT),
        ("dbid", SMALLINT),
        ("loginame", NVARCHAR),
        ("hostname", NVARCHAR),
        ("program_name", NVARCHAR),
        ("status", NVARCHAR),
        ("cmd", NVARCHAR),
        ("open_tran", SMALLINT),
    ],
    "sys_dm_exec_requests": [
        ("session_id", SMALLINT),
        ("request_id", INT),
        ("start_time", DATETIME),
        ("status", NVARCHAR),
        ("command", NVARCHAR),
        ("database_id", SMALLINT),
        ("percent_complete", ColType("float")),
        ("estimated_completion_time", BIGINT),
    ],
    "sys_credentials": [
        ("credential_id", INT),
        ("name", NVARCHAR),
        ("credential_identity", NVARCHAR),
        ("create_date", DATETIME),
        ("modify_date", DATETIME),
        ("target_type", NVARCHAR),
        ("target_id", INT),
    ],
    # https://learn.microsoft.com/sql/relational-databases/system-dynamic-management-views/sys-dm-os-host-info-transact-sql
    # (SQL Server 2017 and later): host_platform is Windows or Linux.
    "sys_dm_os_host_info": [
        ("host_platform", NVARCHAR),
        ("host_distribution", NVARCHAR),
        ("host_release", NVARCHAR),
        ("host_service_pack_level", NVARCHAR),
        ("host_sku", INT),
        ("os_language_version", INT),
    ],
    "sys_server_principals": [
        ("name", NVARCHAR),
        ("principal_id", INT),
        ("sid", VARBINARY),
        ("type", NVARCHAR),
        ("type_desc", NVARCHAR),
        ("is_disabled", BIT),
        ("default_database_name", NVARCHAR),
    ],
    "msdb_backupset": [
        ("backup_set_id", INT),
        ("backup_set_uuid", GUID),
        ("media_set_id", INT),
        ("first_family_number", TINYINT),
        ("first_media_number", SMALLINT),
        ("last_family_number", TINYINT),
        ("last_media_number", SMALLINT),
        ("position", INT),
        ("name", NVARCHAR),
        ("description", NVARCHAR),
        ("user_name", NVARCHAR),
        ("software_major_version", TINYINT),
        ("software_minor_version", TINYINT),
        ("software_build_version", SMALLINT),
        ("database_version", INT),
        ("compatibility_level", TINYINT),
        ("database_creation_date", DATETIME),
        ("backup_start_date", DATETIME),
        ("backup_finish_date", DATETIME),
        ("type", NVARCHAR),
        ("first_lsn", LSN),
        ("last_lsn", LSN),
        ("checkpoint_lsn", LSN),
        ("database_backup_lsn", LSN),
        ("database_name", NVARCHAR),
        ("server_name", NVARCHAR),
        ("machine_name", NVARCHAR),
        ("recovery_model", NVARCHAR),
        ("family_guid", GUID),
        ("database_guid", GUID),
        ("fork_point_lsn", LSN),
        ("first_recovery_fork_guid", GUID),
        ("last_recovery_fork_guid", GUID),
        ("differential_base_lsn", LSN),
        ("differential_base_guid", GUID),
        ("backup_size", ColType("decimal", precision=20)),
        ("compressed_backup_size", ColType("decimal", precision=20)),
        ("is_copy_only", BIT),
        ("has_backup_checksums", BIT),
        ("is_password_protected", BIT),
    ],
    "msdb_backupmediafamily": [
        ("media_set_id", INT),
        ("family_sequence_number", TINYINT),
        ("media_family_id", GUID),
        ("media_count", INT),
        ("logical_device_name", NVARCHAR),
        ("physical_device_name", NVARCHAR),
        ("device_type", TINYINT),
        ("physical_block_size", INT),
        ("mirror", TINYINT),
    ],
    "msdb_restorehistory": [
        ("restore_history_id", INT),
        ("restore_date", DATETIME),
        ("destination_database_name", NVARCHAR),
        ("user_name", NVARCHAR),
        ("backup_set_id", INT),
        ("restore_type", NVARCHAR),
        ("replace", BIT),
        ("recovery", BIT),
        ("restart", BIT),
        ("stop_at", DATETIME),
        ("device_count", TINYINT),
        ("stop_at_mark_name", NVARCHAR),
        ("stop_before", BIT),
    ],
    "msdb_restorefile": [
        ("restore_history_id", INT),
        ("file_number", BIGINT),
        ("destination_phys_drive", NVARCHAR),
        ("destination_phys_name", NVARCHAR),
    ],
}

_STATES = {"ONLINE": 0, "RESTORING": 1, "RECOVERING": 2, "RECOVERY_PENDING": 3, "SUSPECT": 4, "OFFLINE": 6}
_ACCESS = {"MULTI_USER": 0, "SINGLE_USER": 1, "RESTRICTED_USER": 2}
_MODELS = {"FULL": 1, "BULK_LOGGED": 2, "SIMPLE": 3}


def system_databases(instance: Instance) -> list[Database]:
    """master, tempdb, model and msdb: always there, always online."""
    path = instance.config.data_path.rstrip("/\\")
    sep = "\\" if path[1:2] == ":" else "/"
    out = []
    for number, (name, model) in enumerate(
        [("master", "SIMPLE"), ("tempdb", "SIMPLE"), ("model", "FULL"), ("msdb", "SIMPLE")], start=1
    ):
        stem = {"master": "master", "tempdb": "tempdb", "model": "model", "msdb": "MSDBData"}[name]
        db = Database(
            name,
            number,
            recovery_model=model,
            compatibility_level=instance.config.compat_levels[1],
            create_date="2003-04-08 09:13:36.390",
        )
        db.files = [
            DbFile(
                1,
                "D",
                "master" if name == "master" else f"{name}dev" if name != "msdb" else "MSDBData",
                f"{path}{sep}{stem}.mdf",
                4 << 20,
            ),
            DbFile(
                2, "L", f"{name}log" if name != "msdb" else "MSDBLog", f"{path}{sep}{stem}log.ldf", 1 << 20
            ),
        ]
        out.append(db)
    return out


def all_databases(instance: Instance) -> list[Database]:
    with instance.lock:
        return system_databases(instance) + sorted(
            instance.state.databases.values(), key=lambda d: d.database_id
        )


def _file_row(instance: Instance, db: Database, f: Any) -> dict[str, Any]:
    restoring = db.state == "RESTORING" or db.is_in_standby
    return {
        "database_id": db.database_id,
        "file_id": f.file_id,
        "file_guid": None,
        "type": 0 if f.type == "D" else 1,
        "type_desc": "ROWS" if f.type == "D" else "LOG",
        "data_space_id": 1 if f.type == "D" else 0,
        "name": f.logical_name,
        "physical_name": f.physical_name,
        "state": _STATES.get(db.state, 0),
        "state_desc": db.state,
        "size": f.size // 8192,
        "max_size": -1,
        "growth": 8192,
        "is_read_only": 1 if db.is_read_only else 0,
        "create_lsn": f.create_lsn or None,
        "drop_lsn": None,
        "read_only_lsn": None,
        "read_write_lsn": None,
        "differential_base_lsn": db.diff_base_lsn,
        "differential_base_guid": db.diff_base_guid,
        "differential_base_time": None,
        "redo_start_lsn": db.redo_lsn if restoring else None,
        "redo_start_fork_guid": db.redo_fork if restoring else None,
        "redo_target_lsn": None,
        "redo_target_fork_guid": None,
        "backup_lsn": None,
    }


def host_info(platform: str) -> dict[str, Any]:
    """sys.dm_os_host_info's row: on Linux host_release and host_service_pack_level are empty strings and
    host_sku is NULL (the page above); the distribution and releases are those of a typical host."""
    if platform == "windows":
        return {
            "host_platform": "Windows",
            "host_distribution": "Windows Server 2019 Datacenter",
            "host_release": "10.0",
            "host_service_pack_level": "",
            "host_sku": 8,
            "os_language_version": 1033,
        }
    return {
        "host_platform": "Linux",
        "host_distribution": "Ubuntu",
        "host_release": "",
        "host_service_pack_level": "",
        "host_sku": None,
        "os_language_version": 1033,
    }


def rows(
    instance: Instance, session: Session, tables: Collection[str] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """The rows of the views a query reads (`tables`; every view when None) as of now. Free space is
    worked out once per volume: per file, it made each SELECT quadratic in the number of files, which an
    instance holding hundreds of databases (the orchestration benchmark) could not afford."""
    want = set(SCHEMA) if tables is None else set(tables)
    free: dict[str, int] = {}
    dbs = all_databases(instance)
    by_name = {d.name.lower(): d for d in dbs}
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in SCHEMA}
    per_file = {"sys_master_files", "sys_database_files", "sys_dm_os_volume_stats"} & want
    for db in dbs if "sys_databases" in want or per_file else ():
        if "sys_databases" in want:
            out["sys_databases"].append(
                {
                    "name": db.name,
                    "database_id": db.database_id,
                    "source_database_id": None,
                    "owner_sid": db.owner_sid,
                    "create_date": db.create_date or None,
                    "compatibility_level": db.compatibility_level,
                    "collation_name": "SQL_Latin1_General_CP1_CI_AS",
                    "user_access": _ACCESS[db.user_access],
                    "user_access_desc": db.user_access,
                    "is_read_only": 1 if db.is_read_only else 0,
                    "is_auto_close_on": 0,
                    "state": _STATES.get(db.state, 0),
                    "state_desc": db.state,
                    "is_in_standby": 1 if db.is_in_standby else 0,
                    "recovery_model": _MODELS.get(db.recovery_model, 1),
                    "recovery_model_desc": db.recovery_model,
                    "is_broker_enabled": 0,
                    "log_reuse_wait_desc": "NOTHING",
                }
            )
        for f in db.files if per_file else ():
            row = _file_row(instance, db, f)
            out["sys_master_files"].append(row)
            if db.name.lower() == session.database.lower():
                out["sys_database_files"].append({k: v for k, v in row.items() if k != "database_id"})
            if "sys_dm_os_volume_stats" not in want:
                continue
            volume, total = instance.volume_of(f.physical_name)
            if volume not in free:
                free[volume] = instance.available_on(volume, total)
            out["sys_dm_os_volume_stats"].append(
                {
                    "database_id": db.database_id,
                    "file_id": f.file_id,
                    "volume_mount_point": volume,
                    "volume_id": volume,
                    "logical_volume_name": "",
                    "file_system_type": "EXT4" if volume.startswith("/") else "NTFS",
                    "total_bytes": total,
                    "available_bytes": free[volume],
                    "supports_compression": 0,
                    "supports_alternate_streams": 0,
                    "supports_sparse_files": 1,
                    "is_read_only": 0,
                    "is_compressed": 0,
                }
            )
    with instance.lock:
        sessions = list(instance.sessions.values())
        state = instance.state
        # sys.credentials shows rows only to holders of VIEW ANY DEFINITION or ALTER ANY CREDENTIAL
        # (https://learn.microsoft.com/sql/relational-databases/system-catalog-views/sys-credentials-transact-sql):
        # to anyone else the view is empty, as catalog views hide what a login may not see.
        visible = session.has_permission("VIEW ANY DEFINITION") or session.has_permission(
            "ALTER ANY CREDENTIAL"
        )
        for c in state.credentials if visible else ():
            out["sys_credentials"].append(
                {
                    "credential_id": c.credential_id,
                    "name": c.name,
                    "credential_identity": c.identity,
                    "create_date": c.create_date,
                    "modify_date": c.create_date,
                    "target_type": None,
                    "target_id": None,
                }
            )
        out["sys_dm_os_host_info"].append(host_info(instance.config.platform))
        for number, login in enumerate(state.logins.values(), start=256):
            out["sys_server_principals"].append(
                {
                    "name": login.name,
                    "principal_id": 1 if login.sid == "01" else number,
                    "sid": login.sid,
                    "type": "S",
                    "type_desc": "SQL_LOGIN",
                    "is_disabled": 0,
                    "default_database_name": "master",
                }
            )
        for table in ("backupset", "backupmediafamily", "restorehistory", "restorefile"):
            if f"msdb_{table}" in want:
                out[f"msdb_{table}"] = [dict(r) for r in getattr(state, table)]
    for s in sessions:
        current = by_name.get(s.database.lower())
        db_id = current.database_id if current else 1
        running = s.command != "AWAITING COMMAND"
        out["sys_dm_exec_sessions"].append(
            {
                "session_id": s.spid,
                "login_time": s.login_time,
                "host_name": s.host,
                "program_name": s.program,
                "login_name": s.login.name,
                "original_login_name": s.login.name,
                "status": "running" if running or s.spid == session.spid else "sleeping",
                "database_id": db_id,
                "is_user_process": 1,
                "open_transaction_count": s.trancount,
            }
        )
        out["sys_sysprocesses"].append(
            {
                "spid": s.spid,
                "dbid": db_id,
                "loginame": s.login.name,
                "hostname": s.host,
                "program_name": s.program,
                "status": "runnable" if running else "sleeping",
                "cmd": s.command,
                "open_tran": s.trancount,
            }
        )
        if running or s.spid == session.spid:
            out["sys_dm_exec_requests"].append(
                {
                    "session_id": s.spid,
                    "request_id": 0,
                    "start_time": s.login_time,
                    "status": "running",
                    "command": s.command if running else "SELECT",
                    "database_id": db_id,
                    "percent_complete": s.percent_complete,
                    "estimated_completion_time": 0,
                }
            )
    return out
