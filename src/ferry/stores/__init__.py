"""Backup stores: where backups live. Every store lists objects and serves ranged reads."""

from ferry.stores.base import BackupStore, ObjectInfo, RangeReader, StoreCapabilities
from ferry.stores.registry import open_store

__all__ = ["BackupStore", "ObjectInfo", "RangeReader", "StoreCapabilities", "open_store"]
