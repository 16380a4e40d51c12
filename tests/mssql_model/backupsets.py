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


def _text_guid(value: UUID | None) -> str | None:
    """GUID columns print in upper case, as SQL Server shows uniqueidentifier values."""
    return str(value).upper() if value else None


def _text_lsn(value: int | None) -> str | None:
    """LSN columns are numeric(25,0): the model hands them on as their decimal digits."""
    return None if value is None else f"{value:d}"


def _text_date(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


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
        """The FILELISTONLY row; ReadOnlyLSN, ReadWriteLSN, LogGroupGUID, IsReadOnly, TDEThumbprint and
        SnapshotUrl have no known place in the file (section 3.3) and stay NULL."""
        row: dict[str, Any] = dict.fromkeys(
            ("ReadOnlyLSN", "ReadWriteLSN", "LogGroupGUID", "IsReadOnly", "TDEThumbprint", "SnapshotUrl")
        )
        row.update(
            LogicalName=self.logical_name,
            PhysicalName=self.physical_name,
            Type=self.type,
            FileGroupName=self.filegroup_name,
            Size=self.size,
            MaxSize=self.max_size,
            FileId=self.file_id,
            CreateLSN=_text_lsn(self.create_lsn),
            DropLSN=_text_lsn(self.drop_lsn),
            UniqueId=_text_guid(self.unique_id),
            BackupSizeInBytes=self.backup_size,
            SourceBlockSize=self.source_block_size,
            FileGroupId=self.filegroup_id,
            DifferentialBaseLSN=_text_lsn(self.differential_base_lsn),
            DifferentialBaseGUID=_text_guid(self.differential_base_guid),
        )
        return row


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

    # What the rules read off a set but the media header holds (one TAPE per device).
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
        """Section 4: a differential's DifferentialBaseLSN is the one base LSN its data files share (SFIN
        0x9E); other types, or data files that disagree, have none."""
        if self.backup_type != BackupType.DIFFERENTIAL:
            return None
        data_bases = sorted({f.differential_base_lsn for f in self.files if f.type == "D"})
        return data_bases[0] if len(data_bases) == 1 else None

    def headeronly(self) -> dict[str, Any]:
        """The RESTORE HEADERONLY row under SQL Server's column names (and LABELONLY's MediaFamilyId).
        Columns the format does not hold (section 4) are NULL; the runner fills Collation and DeviceType."""
        kind = self.backup_type
        differential = kind == BackupType.DIFFERENTIAL
        fork_point = self.fork_point_lsn or None
        return {
            # Who, what, when.
            "BackupName": self.backup_name,
            "BackupDescription": self.backup_description,
            "BackupType": None if kind is None else kind.value,
            "BackupTypeDescription": None if kind is None else DESCRIPTIONS[kind],
            "Position": self.position,
            "DeviceType": 2,
            "UserName": self.user_name,
            "ServerName": self.server_name,
            "MachineName": self.machine_name,
            "DatabaseName": self.database_name,
            "DatabaseVersion": self.database_version,
            "DatabaseCreationDate": _text_date(self.database_creation),
            "BackupStartDate": _text_date(self.backup_start),
            "BackupFinishDate": _text_date(self.backup_finish),
            "ExpirationDate": None,
            "IsCopyOnly": self.is_copy_only,
            # Sizes and compression: Compressed is the MSSQLBAK container (section 8).
            "BackupSize": self.backup_size,
            "CompressedBackupSize": self.compressed_backup_size,
            "Compressed": int(bool(self.compressed)),
            # The log chain.
            "FirstLSN": _text_lsn(self.first_lsn),
            "LastLSN": _text_lsn(self.last_lsn),
            "CheckpointLSN": _text_lsn(self.checkpoint_lsn),
            "DatabaseBackupLSN": _text_lsn(self.database_backup_lsn),
            "ForkPointLSN": _text_lsn(fork_point),
            "RecoveryForkID": _text_guid(self.recovery_fork_id),
            # Below ForkPointLSN a database is on its first fork; without one, both are the same.
            "FirstRecoveryForkID": _text_guid(self.first_recovery_fork_id or self.recovery_fork_id),
            "FamilyGUID": _text_guid(self.family_guid),
            "BindingID": _text_guid(self.database_guid),
            "BackupSetGUID": _text_guid(self.backup_set_guid),
            "DifferentialBaseLSN": _text_lsn(self.differential_base_lsn),
            "DifferentialBaseGUID": _text_guid(self.differential_base_guid) if differential else None,
            # Server and database settings.
            "RecoveryModel": self.recovery_model,
            "CompatibilityLevel": self.compatibility_level,
            "SortOrder": self.sort_order,
            "CodePage": None,
            "UnicodeLocaleId": self.unicode_locale_id,
            "UnicodeComparisonStyle": self.unicode_comparison_style,
            "SoftwareVendorId": 0x1200,  # TAPE 0x56 and SSET 0x3C; the same on every SQL Server backup
            "SoftwareVersionMajor": self.software_major,
            "SoftwareVersionMinor": self.software_minor,
            "SoftwareVersionBuild": self.software_build,
            "Flags": self.flags,
            "HasBackupChecksums": self.has_checksums,
            # The media (LABELONLY shows the u32 family id as the first group of a GUID).
            "MediaSetId": _text_guid(self.media_set_id),
            "MediaFamilyId": f"{self.media.media_family_id:08X}-0000-0000-0000-000000000000",
            "FamilyCount": self.family_count,
            "FamilySequenceNumber": self.family_sequence_number,
        }
