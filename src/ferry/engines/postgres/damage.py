"""Damage a parser finds in a file's bytes, before its caller names the file.

The PostgreSQL parsers (tar headers, timeline history files, backup manifests, labels, WAL headers) read
bytes, not files: they say where the damage is and what it is, and the caller, which knows the file and
the situation, raises the error the user sees (a BackupFormatError when scanning, an ArchiveEntryError
when unpacking, a WalArchiveError when fetching WAL).

Only stdlib: the WAL commands import the history parser, and they must start fast.
"""

from __future__ import annotations


class Damage(Exception):
    """Damage at byte `offset` of a file. A reason starting with "unexpected end of data" means the file is
    cut short; `hint`, when given, says what to do about this damage in particular."""

    def __init__(self, offset: int, reason: str, hint: str = "") -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason
        self.hint = hint

    @property
    def truncated(self) -> bool:
        return self.reason.startswith("unexpected end of data")
