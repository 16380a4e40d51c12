"""What one SQL Server backup set says about itself: the rows of RESTORE HEADERONLY and FILELISTONLY.

Values are typed (LSNs as int, dates as aware datetimes, GUIDs as UUID). `headeronly()` and
`filelistonly()` give them under SQL Server's own column names, in the printed forms DBAs know. A field the
media reader has no sample to learn from is `None` and printed as null: unknown, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from typing import Any
from uuid import UUID


class BackupType(IntEnum):
    """HEADERONLY's BackupType codes."""

    DATABASE = 1
    LOG = 2
    FILE = 4
    DIFFERENTIAL = 5
    DIFFERENTIAL_FILE = 6
    PARTIAL = 7
    DIFFERENTIAL_PARTIAL = 8

    @property
    def description(self) -> str:
        return _TYPE_DESCRIPTIONS[self]


_TYPE_DESCRIPTIONS = {
    BackupType.DATABASE: "Database",
    BackupType.LOG: "Transaction Log",
    BackupType.FILE: "File or Filegroup",
    BackupType.DIFFERENTIAL: "Database Differential",
    BackupType.DIFFERENTIAL_FILE: "Differential File",
    BackupType.PARTIAL: "Partial",
    BackupType.DIFFERENTIAL_PARTIAL: "Differential Partial",
}

# The backup type letter in the SCIN record, as msdb.dbo.backupset.type spells it.
TYPE_LETTERS = {
    "D": BackupType.DATABASE,
    "L": BackupType.LOG,
    "I": BackupType.DIFFERENTIAL,
    "F": BackupType.FILE,
    "G": BackupType.DIFFERENTIAL_FILE,
    "P": BackupType.PARTIAL,
    "Q": BackupType.DIFFERENTIAL_PARTIAL,
}


@dataclass(frozen=True)
class DatabaseFile:
    """One row of RESTORE FILELISTONLY."""

    logical_name: str
    physical_name: str
    type: str  # "D" rows data, "L" log, as FILELISTONLY prints it
    filegroup_name: str | None
    size: int
    max_size: int
    file_id: int
    create_lsn: int
    differential_base_lsn: int
    differential_base_guid: UUID | None
    unique_id: UUID | None
    backup_size: int
    filegroup_id: int
    # UTC time of the file's differential base; for a full backup, of the backup itself.
    base_time: datetime | None = None
    # Sector size of the disk the file was on (SFIN 0x20): 512, or 4096 on 4K-sector disks.
    source_block_size: int = 512

    def filelistonly(self) -> dict[str, Any]:
        return {
            "LogicalName": self.logical_name,
            "PhysicalName": self.physical_name,
            "Type": self.type,
            "FileGroupName": self.filegroup_name,
            "Size": self.size,
            "MaxSize": self.max_size,
            "FileId": self.file_id,
            "CreateLSN": _lsn(self.create_lsn),
            "DropLSN": "0",
            "UniqueId": _guid(self.unique_id),
            "DifferentialBaseLSN": _lsn(self.differential_base_lsn),
            "DifferentialBaseGUID": _guid(self.differential_base_guid),
            "BackupSizeInBytes": self.backup_size,
            "FileGroupId": self.filegroup_id,
            "SourceBlockSize": self.source_block_size,
            # Not found in the media format (see docs/engines.md): unknown, never guessed.
            "ReadOnlyLSN": None,
            "ReadWriteLSN": None,
            "IsReadOnly": None,
            "TDEThumbprint": None,
        }


@dataclass(frozen=True)
class BackupSet:
    """One backup set as read from one media file (one stripe of it, when striped)."""

    path: str  # store key of the media file this set was read from
    position: int
    backup_type: BackupType | None  # None: a type letter this reader does not know
    type_letter: str
    database_name: str
    server_name: str
    machine_name: str
    backup_name: str | None
    backup_description: str | None
    user_name: str | None
    first_lsn: int
    last_lsn: int
    checkpoint_lsn: int
    database_backup_lsn: int
    fork_point_lsn: int | None
    backup_start: datetime | None
    backup_finish: datetime | None
    database_creation: datetime | None
    software_major: int
    software_minor: int
    software_build: int
    database_version: int
    compatibility_level: int
    recovery_model: str
    flags: int
    sort_order: int
    backup_set_guid: UUID
    database_guid: UUID | None
    family_guid: UUID | None
    recovery_fork_id: UUID | None
    first_recovery_fork_id: UUID | None
    differential_base_guid: UUID | None
    media_set_id: UUID
    media_family_id: int
    family_count: int
    family_sequence_number: int
    backup_size: int
    compressed_backup_size: int | None
    compressed: bool
    has_media_password: bool
    has_checksums: bool | None
    files: tuple[DatabaseFile, ...] = field(default=())
    # Not found in the media format, no sample to learn from: None means unknown.
    is_copy_only: bool | None = None
    is_encrypted: bool | None = None

    @property
    def is_empty_log(self) -> bool:
        """A log backup with nothing in it (FirstLSN = LastLSN): restoring it does nothing."""
        return self.backup_type is BackupType.LOG and self.first_lsn == self.last_lsn

    @property
    def differential_base_lsn(self) -> int | None:
        """HEADERONLY shows it for differentials only: the common file-level base of the data files."""
        if self.backup_type is not BackupType.DIFFERENTIAL:
            return None
        bases = {f.differential_base_lsn for f in self.files if f.type == "D"}
        return bases.pop() if len(bases) == 1 else None

    def headeronly(self) -> dict[str, Any]:
        """The RESTORE HEADERONLY row, under SQL Server's column names."""
        diff = self.backup_type is BackupType.DIFFERENTIAL
        return {
            "BackupName": self.backup_name,
            "BackupDescription": self.backup_description,
            "BackupType": int(self.backup_type) if self.backup_type else None,
            "BackupTypeDescription": self.backup_type.description if self.backup_type else None,
            "ExpirationDate": None,
            "Compressed": int(self.compressed),
            "Position": self.position,
            "DeviceType": 2,  # disk
            "UserName": self.user_name,
            "ServerName": self.server_name,
            "DatabaseName": self.database_name,
            "DatabaseVersion": self.database_version,
            "DatabaseCreationDate": _date(self.database_creation),
            "BackupSize": self.backup_size,
            "FirstLSN": _lsn(self.first_lsn),
            "LastLSN": _lsn(self.last_lsn),
            "CheckpointLSN": _lsn(self.checkpoint_lsn),
            "DatabaseBackupLSN": _lsn(self.database_backup_lsn),
            "BackupStartDate": _date(self.backup_start),
            "BackupFinishDate": _date(self.backup_finish),
            "SortOrder": self.sort_order,
            "CompatibilityLevel": self.compatibility_level,
            "SoftwareVendorId": 4608,
            "SoftwareVersionMajor": self.software_major,
            "SoftwareVersionMinor": self.software_minor,
            "SoftwareVersionBuild": self.software_build,
            "MachineName": self.machine_name,
            "Flags": self.flags,
            "BindingID": _guid(self.database_guid),
            "RecoveryForkID": _guid(self.recovery_fork_id),
            "FamilyGUID": _guid(self.family_guid),
            "HasBackupChecksums": self.has_checksums,
            "IsCopyOnly": self.is_copy_only,
            "FirstRecoveryForkID": _guid(self.first_recovery_fork_id or self.recovery_fork_id),
            "ForkPointLSN": _lsn(self.fork_point_lsn) if self.fork_point_lsn else None,
            "RecoveryModel": self.recovery_model,
            "DifferentialBaseLSN": _lsn(self.differential_base_lsn) if diff else None,
            "DifferentialBaseGUID": _guid(self.differential_base_guid) if diff else None,
            "BackupSetGUID": _guid(self.backup_set_guid),
            "CompressedBackupSize": self.compressed_backup_size,
            "DatabaseGUID": _guid(self.database_guid),
            "MediaSetId": _guid(self.media_set_id),
            "MediaFamilyId": _media_family_guid(self.media_family_id),
            "FamilyCount": self.family_count,
            "FamilySequenceNumber": self.family_sequence_number,
            "HasMediaPassword": self.has_media_password,
            "IsEncrypted": self.is_encrypted,
        }


def _lsn(value: int | None) -> str | None:
    return None if value is None else str(value)


def _guid(value: UUID | None) -> str | None:
    return None if value is None else str(value).upper()


def _date(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _media_family_guid(family_id: int) -> str:
    # LABELONLY shows the u32 family id then twelve zero bytes: B61166AA-0000-0000-0000-000000000000.
    return f"{family_id:08X}-0000-0000-0000-000000000000"
