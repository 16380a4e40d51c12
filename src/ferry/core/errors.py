"""Errors with context: what failed, on which object, and a hint sentence saying what to do."""

from __future__ import annotations


class FerryError(Exception):
    """Base of every error Ferry raises on purpose. `hint` tells the user what to do next.

    `retryable`: whether running the same step again may succeed (a store or server briefly unreachable,
    a killed process). The service retries those with backoff and fails a migration at once on the
    others, whose cause no retry can fix (bad input, blocked backups, a damaged archive)."""

    hint: str = ""
    retryable: bool = True

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        if hint:
            self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(FerryError):
    """The user's input cannot be used: a bad option value, a path that does not exist."""

    retryable = False


class StoreError(FerryError):
    """A backup store could not be listed or read."""


class ObjectNotFound(StoreError):
    """A key that does not exist in its store."""

    def __init__(self, store: str, key: str) -> None:
        super().__init__(
            f"no object '{key}' in store '{store}'",
            "check the path; the file may have been moved or deleted since the listing",
        )
        self.store = store
        self.key = key


class BackupFormatError(FerryError):
    """A backup file that cannot be read: truncated, corrupt, or not a backup at all."""

    hint = (
        "the file may be truncated, still uploading, or not a backup; Ferry reads it again on the next scan"
    )

    def __init__(self, key: str, offset: int, reason: str, hint: str = "") -> None:
        super().__init__(f"cannot read '{key}': {reason} at byte {offset}", hint)
        self.key = key
        self.offset = offset
        self.reason = reason
