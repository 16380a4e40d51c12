"""Backup stores: where backups live. Every store lists objects, serves ranged reads and writes new
objects without ever overwriting one; locations are parsed and redacted in one place."""

from ferry.stores.base import (
    BackupStore,
    BlobType,
    ObjectInfo,
    PutResult,
    RangeReader,
    StoreCapabilities,
    WritableStore,
)
from ferry.stores.location import Location, StoreKind, parse_location, redact, redact_text
from ferry.stores.registry import open_location, open_store

__all__ = [
    "BackupStore",
    "BlobType",
    "Location",
    "ObjectInfo",
    "PutResult",
    "RangeReader",
    "StoreCapabilities",
    "StoreKind",
    "WritableStore",
    "open_location",
    "open_store",
    "parse_location",
    "redact",
    "redact_text",
]
