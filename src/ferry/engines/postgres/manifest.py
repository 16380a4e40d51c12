"""Backup manifests: the `backup_manifest` JSON that pg_basebackup (PostgreSQL 13 and later) writes beside
a base backup, read by the scan (to link a manifest to its base tar and learn where the backup becomes
consistent) and by the restore (every unpacked file's presence and size checked against it).

The document (src/backend/backup/backup_manifest.c): "PostgreSQL-Backup-Manifest-Version" (1; 2 adds
"System-Identifier" in PostgreSQL 17), "Files" (each with "Path", or "Encoded-Path" in hex for names that
are not UTF-8, "Size", and optionally "Checksum-Algorithm" and "Checksum"), "WAL-Ranges" ("Timeline",
"Start-LSN", "End-LSN": the WAL needed to make the backup consistent), and last "Manifest-Checksum", the
SHA-256 of every line before its own (parse_manifest.c checks the same).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ferry.core.errors import BackupFormatError
from ferry.engines.postgres.damage import Damage
from ferry.engines.postgres.wal import parse_lsn

MANIFEST_KEY = b'"PostgreSQL-Backup-Manifest-Version"'


def is_manifest(head: bytes) -> bool:
    """Whether a file's first bytes are a backup manifest's."""
    return head.lstrip()[:1] == b"{" and MANIFEST_KEY in head[:256]


@dataclass(frozen=True)
class WalRange:
    timeline: int
    start_lsn: int
    end_lsn: int


@dataclass(frozen=True)
class ManifestFile:
    path: str
    size: int
    checksum_algorithm: str | None = None
    checksum: str | None = None


@dataclass(frozen=True)
class BackupManifest:
    key: str
    version: int
    wal_ranges: tuple[WalRange, ...]
    files: tuple[ManifestFile, ...]
    system_identifier: int | None = None  # manifest version 2 (PostgreSQL 17) and later
    size: int = 0

    @property
    def start_lsn(self) -> int:
        return self.wal_ranges[0].start_lsn

    @property
    def end_lsn(self) -> int:
        return self.wal_ranges[-1].end_lsn

    @property
    def timeline(self) -> int:
        return self.wal_ranges[0].timeline

    def file(self, path: str) -> ManifestFile | None:
        return next((f for f in self.files if f.path == path), None)


def parse_manifest(key: str, data: bytes) -> BackupManifest:
    """A `backup_manifest` already in memory (`key` names it in errors): BackupFormatError when it cannot be
    used. The scan and the restore's size check read manifests through here."""
    try:
        return _parse(key, data)
    except Damage as exc:
        raise BackupFormatError(key, exc.offset, exc.reason, exc.hint) from None


def _parse(key: str, data: bytes) -> BackupManifest:
    try:
        doc = json.loads(data)
    except UnicodeDecodeError as exc:
        raise Damage(exc.start, "backup manifest is not UTF-8") from None
    except json.JSONDecodeError as exc:
        offset = len(exc.doc[: exc.pos].encode("utf-8", "surrogatepass"))
        # A whole manifest ends with the closing brace of its object; a cut one ends anywhere.
        if offset >= len(data.rstrip()) - 1 or not data.rstrip().endswith(b"}"):
            raise Damage(
                len(data), "unexpected end of data: the backup manifest's JSON is cut short"
            ) from None
        raise Damage(offset, f"backup manifest is not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise Damage(0, "backup manifest is not valid JSON (nested too deeply)") from None
    if not isinstance(doc, dict):
        raise Damage(0, "backup manifest is not a JSON object")
    _check_manifest_checksum(data, doc)
    version = doc.get("PostgreSQL-Backup-Manifest-Version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise Damage(0, "backup manifest has no valid PostgreSQL-Backup-Manifest-Version")
    ranges = tuple(_wal_range(r) for r in _list(doc, "WAL-Ranges"))
    if not ranges:
        raise Damage(0, "backup manifest lists no WAL-Ranges")
    files = tuple(_manifest_file(f) for f in _list(doc, "Files"))
    sysid = doc.get("System-Identifier")
    if sysid is not None and (not isinstance(sysid, int) or isinstance(sysid, bool)):
        raise Damage(0, "backup manifest System-Identifier is not a number")
    return BackupManifest(key, version, ranges, files, sysid, len(data))


def _check_manifest_checksum(data: bytes, doc: dict[str, Any]) -> None:
    """The manifest ends with the SHA-256 of every byte before its "Manifest-Checksum" line."""
    stored = doc.get("Manifest-Checksum")
    if stored is None:
        raise Damage(len(data), "backup manifest has no Manifest-Checksum")
    at = data.rfind(b'"Manifest-Checksum"')
    covered = data[: data.rfind(b"\n", 0, at) + 1]  # every line before the checksum's (parse_manifest.c)
    if not isinstance(stored, str) or at < 0 or hashlib.sha256(covered).hexdigest() != stored.lower():
        raise Damage(
            max(at, 0),
            "backup manifest checksum does not match its content",
            "the manifest was changed or damaged after pg_basebackup wrote it: copy it again",
        )


def _list(doc: dict[str, Any], key: str) -> list[Any]:
    value = doc.get(key)
    if not isinstance(value, list):
        raise Damage(0, f"backup manifest has no {key} list")
    return value


def _wal_range(raw: Any) -> WalRange:
    if not isinstance(raw, dict):
        raise Damage(0, "backup manifest WAL-Ranges entry is not an object")
    tli = raw.get("Timeline")
    start, end = raw.get("Start-LSN"), raw.get("End-LSN")
    if not isinstance(tli, int) or not isinstance(start, str) or not isinstance(end, str) or tli < 1:
        raise Damage(0, "backup manifest WAL-Ranges entry lacks Timeline, Start-LSN or End-LSN")
    try:
        return WalRange(tli, parse_lsn(start), parse_lsn(end))
    except ValueError as exc:
        raise Damage(0, f"backup manifest WAL-Ranges: {exc}") from None


def _manifest_file(raw: Any) -> ManifestFile:
    if not isinstance(raw, dict):
        raise Damage(0, "backup manifest Files entry is not an object")
    path = raw.get("Path")
    if path is None and isinstance(raw.get("Encoded-Path"), str):  # names that are not UTF-8, hex-encoded
        try:
            path = bytes.fromhex(raw["Encoded-Path"]).decode("utf-8", "surrogateescape")
        except ValueError:
            raise Damage(0, "backup manifest Encoded-Path is not hexadecimal") from None
    size = raw.get("Size")
    if not isinstance(path, str) or not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise Damage(0, "backup manifest Files entry lacks Path or Size")
    algorithm, checksum = raw.get("Checksum-Algorithm"), raw.get("Checksum")
    return ManifestFile(
        path,
        size,
        algorithm if isinstance(algorithm, str) else None,
        checksum if isinstance(checksum, str) else None,
    )


# -- checksums ----------------------------------------------------------------------------------------


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC32C_TABLE = _crc32c_table()  # reader.py runs it over pg_control byte by byte


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = CRC32C_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


_DIGESTS: dict[str, Callable[[bytes], str]] = {
    "CRC32C": lambda d: crc32c(d).to_bytes(4, "little").hex(),  # printed in memory (little-endian) order
    "SHA224": lambda d: hashlib.sha224(d).hexdigest(),
    "SHA256": lambda d: hashlib.sha256(d).hexdigest(),
    "SHA384": lambda d: hashlib.sha384(d).hexdigest(),
    "SHA512": lambda d: hashlib.sha512(d).hexdigest(),
}


def manifest_matches(entry: ManifestFile, content: bytes) -> bool | None:
    """Whether `content` is the file the manifest entry describes: None when its checksum cannot tell
    (algorithm NONE or unknown), then only the size was compared."""
    if entry.size != len(content):
        return False
    digest = _DIGESTS.get((entry.checksum_algorithm or "").upper())
    if digest is None or entry.checksum is None:
        return None
    return digest(content) == entry.checksum.lower()
