"""Choose a store by its location: a path or `file://`, `az://` or a blob URL, `smb://`, `s3://`."""

from __future__ import annotations

from pathlib import Path

from ferry.core.errors import ObjectNotFound, UsageError
from ferry.stores.base import BackupStore
from ferry.stores.local import LocalStore
from ferry.stores.location import Location, StoreKind, parse_location


def open_store(location: str | Location) -> BackupStore:
    """A store rooted at `location` (a URL, a path or a parsed Location). Raises UsageError naming what is
    wrong, with secrets masked; a missing optional SDK names the `pip install` to run."""
    loc = location if isinstance(location, Location) else parse_location(location)
    if loc.kind is StoreKind.LOCAL:
        path = Path(loc.path)
        if not path.exists():
            raise UsageError(
                f"backup location '{loc.path}' does not exist",
                "give a folder or file that holds .bak/.trn backups",
            )
        return LocalStore(path)
    if loc.kind is StoreKind.AZURE:
        from ferry.stores.azure_blob import AzureBlobStore

        return AzureBlobStore(loc)
    if loc.kind is StoreKind.SMB:
        from ferry.stores.smb import SmbStore

        return SmbStore(loc)
    from ferry.stores.s3 import S3Store

    return S3Store(loc)


def open_location(location: str | Location) -> tuple[BackupStore, str]:
    """The store and the prefix inside it for `location`. A location that names a single object is its
    folder's store with the object's name as prefix, so a scan of one file works like a scan of a folder
    (and keys stay relative to the folder)."""
    loc = location if isinstance(location, Location) else parse_location(location)
    if loc.kind is StoreKind.LOCAL:
        store = open_store(loc)
        root = Path(loc.path)
        if root.is_file():
            return LocalStore(root.parent), root.name
        return store, ""
    if loc.path:
        parent = open_store(loc.parent())
        try:
            parent.stat(loc.name)
        except ObjectNotFound:
            pass
        else:
            return parent, loc.name
    return open_store(loc), ""


def check_location(location: str) -> None:
    """Raise UsageError when no store of this build can read `location` (its scheme, its form); opens and
    contacts nothing, so the service may ask it about a location only another host can reach, before it
    records a migration."""
    parse_location(location)
