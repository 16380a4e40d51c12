"""The model's own refusals of a backup file, as SQL Server words them on RESTORE: a file that ends before
its blocks do is truncated (3203, OS error 38), anything else that is not the documented layout is not a
backup (3241). The format document (sqlserver-backup-format.md, sections 2 and 8) says what a sound file is.
"""

from __future__ import annotations


class BackupFormatError(Exception):
    """A device the model cannot read as a SQL Server backup."""


class TruncatedBackup(BackupFormatError):
    """The file ends inside a block, a stream or a compressed chunk."""


class NotABackup(BackupFormatError):
    """Bytes that are not a SQL Server backup: wrong magic, bad checksum, a structure out of bounds."""
