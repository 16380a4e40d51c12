"""Store-level checks, as findings with hints: what a target or a migration needs from its store.

`access_findings` asks the store itself (credentials rejected, a missing container or share, an expired
SAS or one without the permissions needed); `page_blob_findings` is for SQL Server targets that restore
FROM URL: SQL Server 2012 and 2014 read only page blobs there (2016 and later read block blobs too).
"""

from __future__ import annotations

from collections.abc import Iterable

from ferry.core.findings import Finding, Severity
from ferry.stores.base import BackupStore, BlobType, CheckedStore, ObjectInfo

# SQL Server's major versions: 11 = 2012, 12 = 2014, 13 = 2016.
FIRST_VERSION_WITH_BLOCK_BLOBS = 13


def needs_page_blobs(sql_server_major_version: int) -> bool:
    """SQL Server 2012 and 2014 restore FROM URL from page blobs only (with an account-key credential)."""
    return sql_server_major_version < FIRST_VERSION_WITH_BLOCK_BLOBS


def page_blob_findings(objects: Iterable[ObjectInfo], *, target: str) -> list[Finding]:
    """One error naming every backup stored as a block (or append) blob, for a target that restores from
    page blobs only. Objects of stores without blob types (shares, S3) are not blobs: nothing to say."""
    wrong = sorted(o.key for o in objects if o.blob_type in (BlobType.BLOCK, BlobType.APPEND))
    if not wrong:
        return []
    return [
        Finding(
            "block-blob-needs-page-blob",
            Severity.ERROR,
            f"{target} restores FROM URL only from page blobs; {len(wrong)} backup file(s) are block blobs",
            "copy them as page blobs (azcopy copy ... --blob-type PageBlob), or restore to SQL Server 2016 "
            "or later, which reads block blobs with a SAS credential",
            tuple(wrong),
        )
    ]


def access_findings(store: BackupStore, *, write: bool = False) -> list[Finding]:
    """What stops Ferry from using `store` (and writing to it when `write`), before anything starts."""
    if isinstance(store, CheckedStore):
        return store.check_access(write=write)
    return []
