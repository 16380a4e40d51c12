"""The format document, section 4 ("Reconstructing results"): what the model knows of one backup set and
of each database file in it, and the RESTORE HEADERONLY / FILELISTONLY rows built from them.

Column meanings are Microsoft's: RESTORE HEADERONLY
(https://learn.microsoft.com/en-us/sql/t-sql/statements/restore-statements-headeronly-transact-sql) and
RESTORE FILELISTONLY
(https://learn.microsoft.com/en-us/sql/t-sql/statements/restore-statements-filelistonly-transact-sql).
A column whose place in the file is not known (section 4: IsCopyOnly, BeginsLogChain, ExpirationDate, ...)
is NULL: unknown, never guessed.
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


DESCRIPTIONS = {
    BackupType.DATABASE: "Database",
    BackupType.LOG: "Transaction Log",
    BackupType.FILE: "File or Filegroup",
    BackupType.DIFFERENTIAL: "Database Differential",
    BackupType.DIFFERENTIAL_FILE: "Differential File",
    BackupType.PARTIAL: "Partial",
    BackupType.DIFFERENTIAL_PARTIAL: "Differential Partial",
}

# SCIN 0x57, the letters of msdb.dbo.backupset.type: D, I and L are verified, the others by analogy.
LETTERS = {
    "D": BackupType.DATABASE,
    "I": BackupType.DIFFERENTIAL,
    "L": BackupType.LOG,
    "F": BackupType.FILE,
    "G": BackupType.DIFFERENTIAL_FILE,
    "P": BackupType.PARTIAL,
    "Q": BackupType.DIFFERENTIAL_PARTIAL,
}


@dataclass(frozen=True)
class MediaHeader:
    """The TAPE block and its RAID stream (section 2.4): one per device."""

    media_name: str | None
    media_description: str | None
    media_date: datetime | None  # local time of the server that wrote it; the TAPE block has no zone
    password_hash: bytes | None  # MD5 of the UTF-16LE media password, when one is set
    media_family_id: int
    media_set_id: UUID | None
    family_count: int
    family_sequence_number: int
    compressed: bool


@dataclass(frozen=True)
class DatabaseFile:
    """One SFIN record (section 3.3): one FILELISTONLY row."""

    logical_name: str
    physical_name: str
    type: str  # "D" rows, "L" log, as FILELISTONLY prints it
    file_id: int
    filegroup_id: int
    filegroup_name: str | None
    size: int
    max_size: int
    backup_size: int
    source_block_size: int
    create_lsn: int
    drop_lsn: int
    differential_base_lsn: int
    differential_base_guid: UUID | None
    unique_id: UUID | None
    base_time: datetime | None  # UTC (FILETIME at SFIN 0x106)

    def filelistonly(self) -> dict[str, Any]:
        return {
            "LogicalName": self.logical_name,
            "PhysicalName": self.physical_name,
            "Type": self.type,
            "FileGroupName": self.filegroup_name,
            "Size": self.size,
            "MaxSize": self.max_size,
            "FileId": self.file_id,
            "CreateLSN": str(self.create_lsn),
            "DropLSN": str(self.drop_lsn),
            "UniqueId": _guid(self.unique_id),
            "ReadOnlyLSN": None,
            "ReadWriteLSN": None,
            "BackupSizeInBytes": self.backup_size,
            "SourceBlockSize": self.source_block_size,
            "FileGroupId": self.filegroup_id,
            "LogGroupGUID": None,
            "DifferentialBaseLSN": str(self.differential_base_lsn),
            "DifferentialBaseGUID": _guid(self.differential_base_guid),
            "IsReadOnly": None,
            "TDEThumbprint": None,
            "SnapshotUrl": None,
        }


@dataclass(frozen=True)
class BackupSet:
    """One SSET with its VOLB and the MSLS (else MSCI) copy of its SCIN record, on one device."""

    position: int
    backup_type: BackupType | None  # None: a type letter the model does not know
    type_letter: str
    backup_name: str | None
    backup_description: str | None
    user_name: str | None
    server_name: str | None
    machine_name: str | None
    database_name: str
    database_version: int
    compatibility_level: int
    software_major: int
    software_minor: int
    software_build: int
    first_lsn: int
    last_lsn: int
    checkpoint_lsn: int
    database_backup_lsn: int
    fork_point_lsn: int | None
    backup_start: datetime | None  # aware: local time and the SSET's zone
    backup_finish: datetime | None
    database_creation: datetime | None
    recovery_model: str
    flags: int
    sort_order: int
    unicode_locale_id: int
    unicode_comparison_style: int
    backup_set_guid: UUID
    database_guid: UUID | None
    family_guid: UUID | None
    recovery_fork_id: UUID | None
    first_recovery_fork_id: UUID | None  # only where ForkPointLSN is set
    differential_base_guid: UUID | None  # the database's current base, in every type of backup
    backup_size: int
    compressed_backup_size: int | None  # None where the SCIN record has no such field (2005)
    has_checksums: bool
    media: MediaHeader
    files: tuple[DatabaseFile, ...] = field(default=())
    is_copy_only: bool | None = None  # section 4: not found in the format

    # The media header's fields, as the rules read them off a set.
    @property
    def media_set_id(self) -> UUID | None:
        return self.media.media_set_id

    @property
    def family_count(self) -> int:
        return self.media.family_count

    @property
    def family_sequence_number(self) -> int:
        return self.media.family_sequence_number

    @property
    def compressed(self) -> bool:
        return self.media.compressed

    @property
    def has_media_password(self) -> bool:
        return self.media.password_hash is not None

    @property
    def differential_base_lsn(self) -> int | None:
        """HEADERONLY shows it for differentials only: the common base LSN of the data files."""
        if self.backup_type is not BackupType.DIFFERENTIAL:
            return None
        bases = {f.differential_base_lsn for f in self.files if f.type == "D"}
        return bases.pop() if len(bases) == 1 else None

    def headeronly(self) -> dict[str, Any]:
        """The RESTORE HEADERONLY row under SQL Server's column names (and LABELONLY's MediaFamilyId)."""
        diff = self.backup_type is BackupType.DIFFERENTIAL
        base_lsn = self.differential_base_lsn
        return {
            "BackupName": self.backup_name,
            "BackupDescription": self.backup_description,
            "BackupType": int(self.backup_type) if self.backup_type else None,
            "ExpirationDate": None,
            "Compressed": 1 if self.compressed else 0,
            "Position": self.position,
            "DeviceType": 2,
            "UserName": self.user_name,
            "ServerName": self.server_name,
            "DatabaseName": self.database_name,
            "DatabaseVersion": self.database_version,
            "DatabaseCreationDate": _date(self.database_creation),
            "BackupSize": self.backup_size,
            "FirstLSN": str(self.first_lsn),
            "LastLSN": str(self.last_lsn),
            "CheckpointLSN": str(self.checkpoint_lsn),
            "DatabaseBackupLSN": str(self.database_backup_lsn),
            "BackupStartDate": _date(self.backup_start),
            "BackupFinishDate": _date(self.backup_finish),
            "SortOrder": self.sort_order,
            "CodePage": None,
            "UnicodeLocaleId": self.unicode_locale_id,
            "UnicodeComparisonStyle": self.unicode_comparison_style,
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
            "ForkPointLSN": str(self.fork_point_lsn) if self.fork_point_lsn else None,
            "RecoveryModel": self.recovery_model,
            "DifferentialBaseLSN": str(base_lsn) if diff and base_lsn is not None else None,
            "DifferentialBaseGUID": _guid(self.differential_base_guid) if diff else None,
            "BackupTypeDescription": DESCRIPTIONS[self.backup_type] if self.backup_type else None,
            "BackupSetGUID": _guid(self.backup_set_guid),
            "CompressedBackupSize": self.compressed_backup_size,
            "MediaSetId": _guid(self.media_set_id),
            "MediaFamilyId": f"{self.media.media_family_id:08X}-0000-0000-0000-000000000000",
            "FamilyCount": self.family_count,
            "FamilySequenceNumber": self.family_sequence_number,
        }


def _guid(value: UUID | None) -> str | None:
    return None if value is None else str(value).upper()


def _date(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
