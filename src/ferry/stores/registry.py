"""Choose a store by the URL's scheme: `file://` or a plain path today; `smb://`, `az://`, `s3://` to come."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from ferry.core.errors import UsageError
from ferry.stores.base import BackupStore
from ferry.stores.local import LocalStore


def open_location(location: str) -> tuple[BackupStore, str]:
    """The store and the prefix inside it for `location`. A single local file is its folder's store with
    the file's name as prefix, so a scan of one file works like a scan of a folder."""
    store = open_store(location)
    if isinstance(store, LocalStore) and store.root.is_file():
        return LocalStore(store.root.parent), store.root.name
    return store, ""


def open_store(location: str) -> BackupStore:
    """A store for `location`, a URL or a local path. Raises UsageError naming what is wrong."""
    parsed = urlparse(location)
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and location[1:2] == ":"):
        path = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(location)
        if not path.exists():
            raise UsageError(
                f"backup location '{location}' does not exist",
                "give a folder or file that holds .bak/.trn backups",
            )
        return LocalStore(path)
    raise UsageError(
        f"backup location '{location}' uses the scheme '{parsed.scheme}', which this Ferry cannot read",
        "use a local path or a file:// URL",
    )


def check_location(location: str) -> None:
    """Raise UsageError when no store of this build can read `location` (its scheme); opens nothing, so
    it may be asked about a location on another host (the service does, before it records a migration)."""
    try:
        parsed = urlparse(location)
    except ValueError as exc:  # a malformed URL: an unclosed IPv6 bracket, say
        raise UsageError(f"backup location '{location}' is not a URL Ferry can read: {exc}", "") from None
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and location[1:2] == ":"):
        return
    raise UsageError(
        f"backup location '{location}' uses the scheme '{parsed.scheme}', which this Ferry cannot read",
        "use a local path or a file:// URL",
    )
