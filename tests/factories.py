"""Builders of SQL Server header values for tests: sensible defaults, any field overridable by keyword.

`backup_set(path=..., backup_type=BackupType.LOG, first_lsn=..., last_lsn=...)` builds one row as the reader
returns it (a full backup of 'db1' on 'SRV' by default); `striped(row, 3)` writes the same set to three stripe
files; `logical(*rows)` makes the LogicalBackup that planning works on.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid5

from ferry.engines.sqlserver.headers import TYPE_LETTERS, BackupSet, BackupType, DatabaseFile
from ferry.engines.sqlserver.stripes import LogicalBackup

# Fixed identities, so that sets built without arguments belong to one database on one fork.
NAMESPACE = UUID("6f1c2a52-9a55-4c0e-9a43-5a7e0f3d2b10")
DATABASE_GUID = UUID("0b8b5c0e-1d2f-4c3b-8a9d-7e6f5a4b3c2d")
FAMILY_GUID = UUID("2c7d1e4f-3a5b-4c6d-9e8f-0a1b2c3d4e5f")
RECOVERY_FORK = UUID("9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d")
DEFAULT_TIME = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
_LETTERS = {kind: letter for letter, kind in TYPE_LETTERS.items()}


def database_file(**overrides: Any) -> DatabaseFile:
    values: dict[str, Any] = {
        "logical_name": "db1",
        "physical_name": r"D:\Data\db1.mdf",
        "type": "D",
        "filegroup_name": "PRIMARY",
        "size": 8 * 1024 * 1024,
        "max_size": 35184372080640,
        "file_id": 1,
        "create_lsn": 0,
        "differential_base_lsn": 0,
        "differential_base_guid": None,
        "unique_id": uuid5(NAMESPACE, "file-1"),
        "backup_size": 3 * 1024 * 1024,
        "filegroup_id": 1,
    }
    values.update(overrides)
    return DatabaseFile(**values)


def backup_set(**overrides: Any) -> BackupSet:
    """A full backup of 'db1' on 'SRV' unless overridden. The BackupSetGUID is derived from the path,
    position, type and LSNs, so two calls with the same arguments describe the same set (striped() keeps
    it)."""
    kind: BackupType | None = overrides.get("backup_type", BackupType.DATABASE)
    path = overrides.get("path", "db1/FULL/db1_FULL.bak")
    first_lsn = overrides.get("first_lsn", 34_000_000_010_000_001)
    last_lsn = overrides.get("last_lsn", 34_000_000_012_000_001)
    position = overrides.get("position", 1)
    finish = overrides.get("backup_finish", DEFAULT_TIME)
    identity = f"{path}|{position}|{kind}|{first_lsn}|{last_lsn}"
    values: dict[str, Any] = {
        "path": path,
        "position": position,
        "backup_type": kind,
        "type_letter": _LETTERS.get(kind, "?") if kind is not None else "?",
        "database_name": "db1",
        "server_name": "SRV",
        "machine_name": "SRV",
        "backup_name": None,
        "backup_description": None,
        "user_name": "sa",
        "first_lsn": first_lsn,
        "last_lsn": last_lsn,
        "checkpoint_lsn": first_lsn,
        "database_backup_lsn": 0,
        "fork_point_lsn": None,
        "backup_start": finish,
        "backup_finish": finish,
        "database_creation": datetime(2020, 1, 1, tzinfo=UTC),
        "software_major": 13,
        "software_minor": 0,
        "software_build": 5081,
        "database_version": 852,
        "compatibility_level": 130,
        "recovery_model": "FULL",
        "flags": 512,
        "sort_order": 52,
        "backup_set_guid": uuid5(NAMESPACE, identity),
        "database_guid": DATABASE_GUID,
        "family_guid": FAMILY_GUID,
        "recovery_fork_id": RECOVERY_FORK,
        "first_recovery_fork_id": None,
        "differential_base_guid": None,
        "media_set_id": uuid5(NAMESPACE, "media|" + identity),
        "media_family_id": 1,
        "family_count": 1,
        "family_sequence_number": 1,
        "backup_size": 4 * 1024 * 1024,
        "compressed_backup_size": None,
        "compressed": False,
        "has_media_password": False,
        "has_checksums": True,
        "files": (database_file(),),
    }
    values.update(overrides)
    return BackupSet(**values)


def striped(base: BackupSet, count: int, paths: list[str] | None = None) -> list[BackupSet]:
    """`base` written to `count` stripe files: same header, own file, FamilySequenceNumber 1..count."""
    if paths is None:
        stem, dot, ext = base.path.rpartition(".")
        paths = [
            f"{stem}_{k}of{count}.{ext}" if dot else f"{base.path}_{k}of{count}" for k in range(1, count + 1)
        ]
    return [
        dataclasses.replace(
            base, path=path, family_count=count, family_sequence_number=k, media_family_id=1000 + k
        )
        for k, path in enumerate(paths, start=1)
    ]


def logical(*sets: BackupSet, **overrides: Any) -> LogicalBackup:
    """A LogicalBackup of the given stripe rows, or of one `backup_set(**overrides)`."""
    rows = sets or (backup_set(**overrides),)
    return LogicalBackup(tuple(sorted(rows, key=lambda s: s.family_sequence_number)))
