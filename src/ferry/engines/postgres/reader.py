"""Read PostgreSQL backups from a store without PostgreSQL: base backup tars, backup manifests, WAL segments,
timeline history files and backup history files.

What a file is comes from its content, never from its name or folder:

- a tar (ustar magic at byte 257), plain or inside gzip, lz4 or zstd, is a base backup when it holds
  `backup_label` and `global/pg_control`, a WAL tar (`pg_basebackup -X stream`) when its members are WAL
  segments, a tablespace tar when its members live under `PG_<major>_<catversion>/`;
- a backup manifest is JSON with "PostgreSQL-Backup-Manifest-Version";
- a WAL segment starts with a long page header (XLogLongPageHeaderData) whose magic names the major version;
- a backup history file (`*.backup` in the archive) is text starting with "START WAL LOCATION:";
- a timeline history file is text lines `<parent tli>\\t<X/Y>\\t<reason>`.

Names are used only as a cross-check (a segment file whose name disagrees with its header is a finding) and
for the one fact content does not carry: the timeline a history file opens.

Every reader raises BackupFormatError(key, offset, reason) for damaged or truncated data, and nothing else
(store errors pass through as StoreError).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from posixpath import basename
from typing import Any

from ferry.core.errors import BackupFormatError
from ferry.engines.postgres import compression, tarread
from ferry.engines.postgres.tarread import Compression, Member, TarProblem
from ferry.engines.postgres.wal import (
    SegmentName,
    format_lsn,
    history_timeline,
    parse_lsn,
    parse_segment_name,
)
from ferry.stores.base import RangeReader

# xlp_magic per major version (src/include/access/xlog_internal.h, XLOG_PAGE_MAGIC). A magic not listed
# here but shaped like one (0xD0xx-0xD1xx) is still read as WAL, with the version unknown.
WAL_MAGIC = {0xD097: 10, 0xD098: 11, 0xD101: 12, 0xD106: 13, 0xD10D: 14, 0xD110: 15, 0xD113: 16, 0xD116: 17}
XLP_LONG_HEADER = 0x0002
XLP_ALL_FLAGS = 0x0007
LONG_HEADER_SIZE = 40
MANIFEST_KEY = b'"PostgreSQL-Backup-Manifest-Version"'
LABEL_START = b"START WAL LOCATION: "
DEFAULT_LABEL = "pg_basebackup base backup"

_HEAD = 4096  # enough to tell every kind apart; discovery has these bytes in memory already
_TEXT_LIMIT = 1024 * 1024  # history and label files are a few hundred bytes; a megabyte is not one
_MANIFEST_LIMIT = 1024 * 1024 * 1024
_TABLESPACE_SAMPLE = 16  # members of a tablespace tar compared with the manifest to link it to its backup
_CONTROL_CAPTURE = 1024
_HISTORY_LINE = re.compile(rb"^\s*(\d+)\s+([0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8})(?:\s+(.*?))?\s*$")
_TABLESPACE_DIR = re.compile(r"^PG_\d+_\d+$")


# -- values -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WalHeader:
    """The long page header at the start of a WAL segment."""

    magic: int
    timeline: int
    start_lsn: int  # xlp_pageaddr: the LSN of the segment's first byte
    system_identifier: int
    segment_size: int
    block_size: int
    byte_order: str = "<"

    @property
    def pg_version(self) -> int | None:
        return WAL_MAGIC.get(self.magic)

    @property
    def segno(self) -> int:
        return self.start_lsn // self.segment_size

    @property
    def segment(self) -> SegmentName:
        return SegmentName(self.timeline, self.segno)

    @property
    def name(self) -> str:
        return self.segment.name(self.segment_size)

    @property
    def end_lsn(self) -> int:
        return self.start_lsn + self.segment_size


@dataclass(frozen=True)
class WalSegment:
    """A WAL segment file. `named_as` is what its file name says, when the name has a segment's shape."""

    key: str
    size: int
    header: WalHeader
    named_as: SegmentName | None = None
    partial: bool = False  # named *.partial: the last, unfinished segment of a timeline before a switch
    compression: str = "none"  # compressed by another tool's archive_command (`%f.gz`, `.lz4`, `.zst`)

    @property
    def name_mismatch(self) -> bool:
        return self.named_as is not None and self.named_as != self.header.segment


@dataclass(frozen=True)
class HistoryEntry:
    parent: int  # a timeline of the ancestry ...
    switch_lsn: int  # ... and the LSN where its child began
    reason: str = ""


@dataclass(frozen=True)
class TimelineHistory:
    """A timeline history file: the ancestry of `timeline`, oldest first."""

    key: str
    timeline: int
    entries: tuple[HistoryEntry, ...]
    timeline_from_name: bool = True


@dataclass(frozen=True)
class BackupLabel:
    """backup_label as PostgreSQL writes it (and the backup history file, which adds the STOP lines)."""

    start_lsn: int
    start_timeline: int
    checkpoint_lsn: int | None = None
    method: str | None = None
    backup_from: str | None = None
    start_time: datetime | None = None
    label: str = ""
    start_file: str = ""
    stop_lsn: int | None = None
    stop_time: datetime | None = None
    stop_timeline: int | None = None


@dataclass(frozen=True)
class BackupHistoryFile:
    """`<segment>.<offset>.backup` in a WAL archive: written when a base backup ends."""

    key: str
    label: BackupLabel


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


@dataclass(frozen=True)
class BaseBackupTar:
    """The main tar of a base backup: the data directory, with backup_label and pg_control."""

    key: str
    size: int
    compression: Compression
    label: BackupLabel
    label_raw: bytes
    pg_version: str
    system_identifier: int
    control_version: int
    catalog_version: int
    tablespace_oids: tuple[int, ...] = ()
    embedded_wal: tuple[WalHeader, ...] = ()  # `-X fetch` puts the WAL into the base tar itself
    members: int = 0
    data_bytes: int = 0

    @property
    def major(self) -> int | None:
        head = self.pg_version.split(".")[0]
        return int(head) if head.isdigit() else None


@dataclass(frozen=True)
class WalTar:
    """pg_wal.tar of `pg_basebackup -Ft -X stream`: the WAL the backup needs to become consistent."""

    key: str
    size: int
    compression: Compression
    segments: tuple[WalHeader, ...]


@dataclass(frozen=True)
class TablespaceTar:
    """A tablespace's tar (`<oid>.tar`). `sample` holds its first members (path, size) for linking."""

    key: str
    size: int
    compression: Compression
    version_dir: str  # PG_<major>_<catalog version>
    sample: tuple[tuple[str, int], ...] = field(default=())


@dataclass(frozen=True)
class UnknownTar:
    """A tar that holds no PostgreSQL backup Ferry recognises."""

    key: str
    size: int
    compression: Compression


PgFile = (
    BaseBackupTar | WalTar | TablespaceTar | UnknownTar | BackupManifest | WalSegment | TimelineHistory
    | BackupHistoryFile
)  # fmt: skip


# -- sniffing -----------------------------------------------------------------------------------------


def sniff(head: bytes) -> bool:
    """Whether `head` (a file's first bytes) starts a PostgreSQL backup file Ferry reads."""
    if tarread.is_tar_header(head[: tarread.BLOCK]):
        return True
    kind = tarread.compression_of(head)
    if kind is not Compression.NONE:
        inner = tarread.decompressed_head(head, _HEAD)
        if not inner:
            # lz4 and zstd emit nothing before a whole block, which can be larger than `head`: only a
            # deeper read tells, and no other engine reads these formats (read_file says "not ours").
            return kind in (Compression.LZ4, Compression.ZSTD)
        return tarread.is_tar_header(inner[: tarread.BLOCK]) or _sniff_plain(inner)
    return _sniff_plain(head)


def _sniff_plain(head: bytes) -> bool:
    return (
        parse_wal_header(head) is not None
        or _is_manifest(head)
        or head.startswith(LABEL_START)
        or _is_history(head)
    )


def _is_manifest(head: bytes) -> bool:
    return head.lstrip()[:1] == b"{" and MANIFEST_KEY in head[:256]


def _is_history(head: bytes) -> bool:
    """Text whose first meaningful line is `<tli>\\t<X/Y>...` (comments and blank lines are allowed)."""
    if b"\0" in head[:4096]:
        return False
    for raw in head[:4096].splitlines():
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        return bool(re.match(rb"^\d+\t[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}(\t|$)", line))
    return False


def parse_wal_header(data: bytes) -> WalHeader | None:
    """The long page header of a WAL segment, or None if `data` does not start with one."""
    if len(data) < LONG_HEADER_SIZE:
        return None
    for order in ("<", ">"):  # the server's byte order: little-endian nearly always
        magic, info, tli, pageaddr, _rem = struct.unpack_from(order + "HHIQI", data, 0)
        if magic not in WAL_MAGIC and not 0xD000 <= magic <= 0xD1FF:
            continue
        sysid, seg_size, blcksz = struct.unpack_from(order + "QII", data, 24)
        if not (info & XLP_LONG_HEADER) or info & ~XLP_ALL_FLAGS or tli == 0 or sysid == 0:
            continue
        if not _power_of_two(seg_size, 1 << 20, 1 << 30) or not _power_of_two(blcksz, 1 << 10, 1 << 16):
            continue
        if pageaddr % seg_size:
            continue
        return WalHeader(magic, tli, pageaddr, sysid, seg_size, blcksz, order)
    return None


def _power_of_two(value: int, low: int, high: int) -> bool:
    return low <= value <= high and value & (value - 1) == 0


# -- reading ------------------------------------------------------------------------------------------


class _Problem(Exception):
    def __init__(self, offset: int, reason: str, hint: str = "") -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason
        self.hint = hint


def read_file(reader: RangeReader) -> list[PgFile]:
    """The PostgreSQL backup file in `reader` (a list of one, as the pipeline expects a list of sets)."""
    try:
        head = reader.read(0, _HEAD)
        if not head:
            raise _Problem(0, "unexpected end of data: the file is empty")
        if tarread.is_tar_header(head[: tarread.BLOCK]):
            return [_read_tar(reader, Compression.NONE)]
        kind = tarread.compression_of(head)
        if kind is not Compression.NONE:
            inner = tarread.decompressed_head(head, _HEAD) or compression.head_of(
                _Whole(reader), kind, _HEAD, _COMPRESSED_HEAD_LIMIT
            )
            if _sniff_plain(inner):
                return [_read_compressed(reader, kind, inner)]
            if tarread.is_tar_header(inner[: tarread.BLOCK]) or len(inner) < tarread.BLOCK:
                return [_read_tar(reader, kind)]  # a tar, or one cut short: the tar reader names the damage
            return []  # compressed, but not a PostgreSQL file: the scan notes it as not a backup
        header = parse_wal_header(head)
        if header is not None:
            return [_read_segment(reader, header)]
        if _is_manifest(head):
            return [_read_manifest(reader)]
        if head.startswith(LABEL_START):
            return [_read_backup_history(reader)]
        if _is_history(head):
            return [_read_history(reader)]
        raise _Problem(0, "not a PostgreSQL backup file (no tar, WAL, manifest or history header)")
    except TarProblem as exc:
        raise BackupFormatError(reader.key, exc.offset, exc.reason, _TAR_HINT) from None
    except _Problem as exc:
        raise BackupFormatError(reader.key, exc.offset, exc.reason, exc.hint) from None


_TAR_HINT = (
    "the tar may be truncated or still being copied; check it with `tar -tvf` (after decompressing) and "
    "copy the backup again from its source if it is damaged"
)
_WAL_HINT = (
    "copy the segment again from the archive or the server's pg_wal; check it with pg_waldump; Ferry reads "
    "it again on the next scan"
)


def _read_segment(reader: RangeReader, header: WalHeader, compressed: bool = False) -> WalSegment:
    if compressed:
        pass  # the stored size is the compressed one: _read_compressed checked what the format records
    elif reader.size < header.segment_size:
        raise _Problem(
            reader.size,
            f"unexpected end of data: WAL segment {header.name} ends early (its header gives a segment "
            f"size of {header.segment_size} bytes)",
            _WAL_HINT,
        )
    if reader.size > header.segment_size:
        raise _Problem(
            header.segment_size,
            f"file is {reader.size} bytes, longer than the {header.segment_size}-byte WAL segment its "
            "header describes",
            "a WAL archive holds segments as PostgreSQL wrote them: check what wrote this file",
        )
    name = compression.strip_suffix(basename(reader.key))
    partial = name.endswith(".partial")
    stem = name.removesuffix(".partial").upper()
    named_as = parse_segment_name(stem, header.segment_size) if len(stem) == 24 else None
    return WalSegment(reader.key, reader.size, header, named_as, partial)


# How much of an lz4 or zstd file is read to reach its first decompressed bytes (a block: 4 MiB at most
# for the lz4 tool, 128 KiB for zstd's).
_COMPRESSED_HEAD_LIMIT = 8 * 1024 * 1024


def _read_compressed(reader: RangeReader, kind: Compression, inner: bytes) -> PgFile:
    """A WAL file another tool's archive_command compressed: a segment is read by its header (the size
    checked where the format records it), a history or backup history file whole."""
    header = parse_wal_header(inner)
    if header is not None:
        size = compression.content_size(reader, kind)
        if size is not None and size != header.segment_size:
            raise _Problem(
                reader.size,
                f"{kind} file holds {size} bytes, not the {header.segment_size}-byte WAL segment its header "
                "describes",
                _WAL_HINT,
            )
        segment = _read_segment(reader, header, compressed=True)
        return replace(segment, compression=kind.value)
    if _is_manifest(inner):
        raise _Problem(
            0,
            f"a {kind}-compressed backup manifest is not read",
            "decompress it next to its base backup (pg_basebackup writes backup_manifest uncompressed)",
        )
    if reader.size > _TEXT_LIMIT:
        raise _Problem(0, f"{kind} file of {reader.size} bytes is too large to be a history file")
    try:
        text = b"".join(compression.chunks(_Whole(reader), kind)).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Problem(exc.start, "history file is not UTF-8 text") from None
    except EOFError:
        raise _Problem(reader.size, f"unexpected end of data in the {kind} stream") from None
    except Exception as exc:  # the codecs' errors have no common base
        raise _Problem(0, f"damaged {kind} data ({exc})") from None
    if inner.startswith(LABEL_START):
        return BackupHistoryFile(reader.key, parse_label(text))
    return _history_from(reader.key, text)


class _Whole:
    """A small store object read front to back (for the decompressors)."""

    def __init__(self, reader: RangeReader) -> None:
        self.reader, self.pos = reader, 0

    def read(self, n: int = -1, /) -> bytes:
        data = self.reader.read(self.pos, self.reader.size - self.pos if n < 0 else n)
        self.pos += len(data)
        return data


def _read_text(reader: RangeReader, what: str) -> str:
    if reader.size > _TEXT_LIMIT:
        raise _Problem(0, f"{what} of {reader.size} bytes is too large to be one")
    data = reader.read(0, reader.size)
    if len(data) < reader.size:
        raise _Problem(len(data), "unexpected end of data")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Problem(exc.start, f"{what} is not UTF-8 text") from None


def _read_history(reader: RangeReader) -> TimelineHistory:
    return _history_from(reader.key, _read_text(reader, "timeline history file"))


def _history_from(key: str, text: str) -> TimelineHistory:
    entries = parse_history(text)
    name = compression.strip_suffix(basename(key))
    named = history_timeline(name[:8].upper() + name[8:])
    if named is not None:
        if entries and named <= entries[-1].parent:
            raise _Problem(
                0,
                f"timeline history file is named for timeline {named} but lists timeline "
                f"{entries[-1].parent} as an ancestor",
                "a history file must be stored under its own name (NNNNNNNN.history)",
            )
        return TimelineHistory(key, named, entries, True)
    # Content does not say which timeline the file opens; PostgreSQL names it. Without a usable name, the
    # next number after the newest ancestor is what PostgreSQL chooses unless other timelines exist.
    return TimelineHistory(key, entries[-1].parent + 1, entries, False)


def parse_history(text: str) -> tuple[HistoryEntry, ...]:
    """Lines `<parent tli>\\t<switch X/Y>\\t<reason>`, as readTimeLineHistory parses them."""
    entries: list[HistoryEntry] = []
    offset = 0
    for raw in text.splitlines(keepends=True):
        line = raw.strip()
        if line and not line.startswith("#"):
            m = _HISTORY_LINE.match(line.encode())
            if not m:
                raise _Problem(offset, f"timeline history line {line[:60]!r} is not '<tli> <X/Y> <reason>'")
            tli, lsn = int(m.group(1)), parse_lsn(m.group(2).decode())
            if entries and (tli <= entries[-1].parent or lsn < entries[-1].switch_lsn):
                raise _Problem(offset, "timeline history entries are not in increasing order")
            if tli == 0 or tli > 0xFFFFFFFF:
                raise _Problem(offset, f"timeline {tli} in a history file is out of range")
            entries.append(HistoryEntry(tli, lsn, (m.group(3) or b"").decode()))
        offset += len(raw.encode())
    if not entries:
        raise _Problem(0, "timeline history file lists no timeline")
    return tuple(entries)


def _read_backup_history(reader: RangeReader) -> BackupHistoryFile:
    return BackupHistoryFile(reader.key, parse_label(_read_text(reader, "backup history file")))


_LABEL_LSN = re.compile(r"^([0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8})(?: \(file ([0-9A-Fa-f]{24})\))?$")


def parse_label(text: str) -> BackupLabel:
    """backup_label / backup history file: `KEY: value` lines (xlogbackup.c, build_backup_content)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            values.setdefault(key.strip(), value.strip())
    start, start_file = _label_lsn(values, "START WAL LOCATION", required=True)
    assert start is not None
    checkpoint, _ = _label_lsn(values, "CHECKPOINT LOCATION")
    stop, _ = _label_lsn(values, "STOP WAL LOCATION")
    timeline = _label_int(values, "START TIMELINE")
    if timeline is None:  # before PostgreSQL 11 the timeline is only in the file name
        if not start_file:
            raise _Problem(0, "backup label has neither START TIMELINE nor a segment file name")
        timeline = int(start_file[:8], 16)
    if start_file:
        _check_label_file(start, timeline, start_file)
    return BackupLabel(
        start_lsn=start,
        start_timeline=timeline,
        checkpoint_lsn=checkpoint,
        method=values.get("BACKUP METHOD"),
        backup_from=values.get("BACKUP FROM"),
        start_time=_label_time(values.get("START TIME")),
        label=values.get("LABEL", ""),
        start_file=start_file.upper(),
        stop_lsn=stop,
        stop_time=_label_time(values.get("STOP TIME")),
        stop_timeline=_label_int(values, "STOP TIMELINE"),
    )


def _label_lsn(values: dict[str, str], key: str, required: bool = False) -> tuple[int | None, str]:
    raw = values.get(key)
    if raw is None:
        if required:
            raise _Problem(0, f"backup label has no {key}")
        return None, ""
    m = _LABEL_LSN.match(raw)
    if not m:
        raise _Problem(0, f"backup label {key} {raw[:60]!r} is not 'X/Y (file NAME)'")
    return parse_lsn(m.group(1)), m.group(2) or ""


def _label_int(values: dict[str, str], key: str) -> int | None:
    raw = values.get(key)
    if raw is None:
        return None
    if not raw.isdigit() or not 0 < int(raw) <= 0xFFFFFFFF:
        raise _Problem(0, f"backup label {key} {raw[:20]!r} is not a timeline number")
    return int(raw)


def _check_label_file(lsn: int, timeline: int, name: str) -> None:
    """The segment file named beside START WAL LOCATION must hold that LSN, on START TIMELINE, for some
    segment size: a cheap check that the label is not damaged."""
    if int(name[:8], 16) != timeline:
        raise _Problem(0, f"backup label names segment {name} but START TIMELINE {timeline}")
    for shift in range(20, 31):
        seg = parse_segment_name(name.upper(), 1 << shift)
        if seg is not None and seg.segno == lsn >> shift:
            return
    raise _Problem(0, f"backup label START WAL LOCATION {format_lsn(lsn)} is not in segment {name}")


def _label_time(raw: str | None) -> datetime | None:
    """`2024-05-01 12:34:56 UTC`: the zone is the server's log_timezone abbreviation. UTC/GMT and numeric
    offsets are understood; any other abbreviation is ambiguous, so the time is kept without a zone."""
    if not raw:
        return None
    m = re.match(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})(?: (\S+))?$", raw)
    if not m:
        return None
    try:
        value = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    zone = m.group(2) or ""
    if zone in ("UTC", "GMT", "Z"):
        return value.replace(tzinfo=UTC)
    z = re.fullmatch(r"([+-])(\d{2}):?(\d{2})?", zone)
    if z:
        delta = timedelta(hours=int(z.group(2)), minutes=int(z.group(3) or 0))
        if delta < timedelta(hours=24):
            return value.replace(tzinfo=timezone(-delta if z.group(1) == "-" else delta))
    return value


def _read_manifest(reader: RangeReader) -> BackupManifest:
    if reader.size > _MANIFEST_LIMIT:
        raise _Problem(0, f"backup manifest of {reader.size} bytes is too large")
    data = reader.read(0, reader.size)
    if len(data) < reader.size:
        raise _Problem(len(data), "unexpected end of data")
    return parse_manifest(reader.key, data)


def parse_manifest(key: str, data: bytes) -> BackupManifest:
    try:
        doc = json.loads(data)
    except UnicodeDecodeError as exc:
        raise _Problem(exc.start, "backup manifest is not UTF-8") from None
    except json.JSONDecodeError as exc:
        offset = len(exc.doc[: exc.pos].encode("utf-8", "surrogatepass"))
        # A whole manifest ends with the closing brace of its object; a cut one ends anywhere.
        if offset >= len(data.rstrip()) - 1 or not data.rstrip().endswith(b"}"):
            raise _Problem(
                len(data), "unexpected end of data: the backup manifest's JSON is cut short"
            ) from None
        raise _Problem(offset, f"backup manifest is not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise _Problem(0, "backup manifest is not valid JSON (nested too deeply)") from None
    if not isinstance(doc, dict):
        raise _Problem(0, "backup manifest is not a JSON object")
    _check_manifest_checksum(data, doc)
    version = doc.get("PostgreSQL-Backup-Manifest-Version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _Problem(0, "backup manifest has no valid PostgreSQL-Backup-Manifest-Version")
    ranges = tuple(_wal_range(r) for r in _list(doc, "WAL-Ranges"))
    if not ranges:
        raise _Problem(0, "backup manifest lists no WAL-Ranges")
    files = tuple(_manifest_file(f) for f in _list(doc, "Files"))
    sysid = doc.get("System-Identifier")
    if sysid is not None and (not isinstance(sysid, int) or isinstance(sysid, bool)):
        raise _Problem(0, "backup manifest System-Identifier is not a number")
    return BackupManifest(key, version, ranges, files, sysid, len(data))


def _check_manifest_checksum(data: bytes, doc: dict[str, Any]) -> None:
    """The manifest ends with the SHA-256 of every byte before its "Manifest-Checksum" line."""
    stored = doc.get("Manifest-Checksum")
    if stored is None:
        raise _Problem(len(data), "backup manifest has no Manifest-Checksum")
    at = data.rfind(b'"Manifest-Checksum"')
    if not isinstance(stored, str) or at < 0 or hashlib.sha256(data[:at]).hexdigest() != stored.lower():
        raise _Problem(
            max(at, 0),
            "backup manifest checksum does not match its content",
            "the manifest was changed or damaged after pg_basebackup wrote it: copy it again",
        )


def _list(doc: dict[str, Any], key: str) -> list[Any]:
    value = doc.get(key)
    if not isinstance(value, list):
        raise _Problem(0, f"backup manifest has no {key} list")
    return value


def _wal_range(raw: Any) -> WalRange:
    if not isinstance(raw, dict):
        raise _Problem(0, "backup manifest WAL-Ranges entry is not an object")
    tli = raw.get("Timeline")
    start, end = raw.get("Start-LSN"), raw.get("End-LSN")
    if not isinstance(tli, int) or not isinstance(start, str) or not isinstance(end, str) or tli < 1:
        raise _Problem(0, "backup manifest WAL-Ranges entry lacks Timeline, Start-LSN or End-LSN")
    try:
        return WalRange(tli, parse_lsn(start), parse_lsn(end))
    except ValueError as exc:
        raise _Problem(0, f"backup manifest WAL-Ranges: {exc}") from None


def _manifest_file(raw: Any) -> ManifestFile:
    if not isinstance(raw, dict):
        raise _Problem(0, "backup manifest Files entry is not an object")
    path = raw.get("Path")
    if path is None and isinstance(raw.get("Encoded-Path"), str):  # names that are not UTF-8, hex-encoded
        try:
            path = bytes.fromhex(raw["Encoded-Path"]).decode("utf-8", "surrogateescape")
        except ValueError:
            raise _Problem(0, "backup manifest Encoded-Path is not hexadecimal") from None
    size = raw.get("Size")
    if not isinstance(path, str) or not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _Problem(0, "backup manifest Files entry lacks Path or Size")
    algorithm, checksum = raw.get("Checksum-Algorithm"), raw.get("Checksum")
    return ManifestFile(
        path,
        size,
        algorithm if isinstance(algorithm, str) else None,
        checksum if isinstance(checksum, str) else None,
    )


# -- tars ---------------------------------------------------------------------------------------------

_SMALL = {"backup_label": 64 * 1024, "PG_VERSION": 64, "tablespace_map": 1024 * 1024}


@dataclass
class _TarScan:
    """What a walk of one tar collected."""

    small: dict[str, bytes] = field(default_factory=dict)
    wal: list[tuple[str, WalHeader]] = field(default_factory=list)
    tablespace: list[tuple[str, int]] = field(default_factory=list)
    members: int = 0
    data_bytes: int = 0
    label_seen: bool = False
    other_files: int = 0
    version_dirs: set[str] = field(default_factory=set)

    def capture(self, m: Member) -> int:
        base = basename(m.name)
        if base in _SMALL:
            return _SMALL[base]
        if m.name == "global/pg_control" or m.name.endswith("/global/pg_control"):
            return _CONTROL_CAPTURE
        if _power_of_two(m.size, 1 << 20, 1 << 30):
            return LONG_HEADER_SIZE  # possibly a WAL segment: its header tells
        return 0

    def add(self, m: Member, head: bytes) -> None:
        top = m.name.split("/", 1)[0]
        if _TABLESPACE_DIR.match(top) and ("/" in m.name or m.kind == "dir"):
            self.version_dirs.add(top)
        if m.kind != "file":
            return
        self.members += 1
        self.data_bytes += m.size
        base = basename(m.name)
        if base in _SMALL or base == "pg_control":
            self.small.setdefault(m.name, head)
            self.label_seen = self.label_seen or base == "backup_label"
        header = parse_wal_header(head) if len(head) == LONG_HEADER_SIZE else None
        if header is not None and header.segment_size == m.size:
            self.wal.append((m.name, header))
        elif _TABLESPACE_DIR.match(top) and "/" in m.name:
            self.tablespace.append((m.name, m.size))
        else:
            self.other_files += 1

    def tablespace_sample_done(self) -> bool:
        """A tablespace tar is known by its first members; reading it to the end would cost its whole size
        for a compressed tar. Base and WAL tars are walked to the end (see _read_tar)."""
        return (
            not self.label_seen
            and not self.wal
            and self.other_files == 0
            and len(self.tablespace) >= _TABLESPACE_SAMPLE
        )


def _read_tar(reader: RangeReader, kind: Compression) -> PgFile:
    """Walk the tar to its end-of-archive marker (which also proves it is complete), except a tablespace
    tar, recognised by its first members. pg_basebackup writes global/pg_control last, after every data
    file, and `-X fetch` appends the WAL after it, so a base tar is read whole either way."""
    scan = _TarScan()
    source = tarread.open_source(reader, kind)
    for member, head in tarread.walk(source, scan.capture, stop=scan.tablespace_sample_done):
        scan.add(member, head)
    root = _root(scan.small)
    if root is not None:
        return _base_tar(reader, kind, scan, root)
    if scan.wal:
        return WalTar(reader.key, reader.size, kind, tuple(h for _, h in scan.wal))
    if len(scan.version_dirs) == 1 and scan.other_files == 0:
        # An empty tablespace still has its version folder: the tar then holds only that directory.
        sample = tuple(scan.tablespace[:_TABLESPACE_SAMPLE])
        return TablespaceTar(reader.key, reader.size, kind, next(iter(scan.version_dirs)), sample)
    return UnknownTar(reader.key, reader.size, kind)


def _root(small: dict[str, bytes]) -> str | None:
    """The folder inside the tar that holds the data directory: "" for pg_basebackup, `data/` for a tar
    someone made of a data directory. The first backup_label with a pg_control beside it decides."""
    for name in small:
        if basename(name) == "backup_label":
            root = name[: -len("backup_label")]
            if root + "global/pg_control" in small:
                return root
    return None


def _base_tar(reader: RangeReader, kind: Compression, scan: _TarScan, root: str) -> BaseBackupTar:
    label_raw = scan.small[root + "backup_label"]
    try:
        label = parse_label(label_raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise _Problem(0, "backup_label in the tar is not UTF-8 text") from None
    version_raw = scan.small.get(root + "PG_VERSION")
    if version_raw is None:
        raise _Problem(
            reader.size, "base backup tar has backup_label and global/pg_control but no PG_VERSION"
        )
    version = version_raw.decode("ascii", "replace").strip()
    if not re.fullmatch(r"\d+(\.\d+)?", version):
        raise _Problem(0, f"PG_VERSION in the tar holds {version[:20]!r}, not a version number")
    sysid, control_version, catalog = parse_control(scan.small[root + "global/pg_control"])
    oids = _tablespace_oids(scan.small.get(root + "tablespace_map", b""))
    embedded = tuple(h for name, h in scan.wal if h.system_identifier == sysid and name.startswith(root))
    return BaseBackupTar(
        key=reader.key,
        size=reader.size,
        compression=kind,
        label=label,
        label_raw=label_raw,
        pg_version=version,
        system_identifier=sysid,
        control_version=control_version,
        catalog_version=catalog,
        tablespace_oids=oids,
        embedded_wal=embedded,
        members=scan.members,
        data_bytes=scan.data_bytes,
    )


def parse_control(data: bytes) -> tuple[int, int, int]:
    """(system identifier, pg_control_version, catalog_version_no): pg_control's first three fields.
    The file carries a CRC-32C of ControlFileData, stored right after it; its offset depends on the
    version, so Ferry looks for the 4-aligned position where the running CRC matches the stored value."""
    if len(data) < 64:
        raise _Problem(0, f"global/pg_control in the tar is {len(data)} bytes, too short")
    for order in ("<", ">"):
        sysid, control_version, catalog = struct.unpack_from(order + "QII", data, 0)
        if 800 <= control_version < 10000:
            break
    else:
        raise _Problem(0, "global/pg_control has no plausible pg_control_version")
    if not _control_crc_found(data[:512], order):
        raise _Problem(
            0,
            "global/pg_control checksum does not match its content",
            "the base backup's pg_control is damaged: take a new base backup or copy this one again",
        )
    return sysid, control_version, catalog


def _control_crc_found(data: bytes, order: str) -> bool:
    crc = 0xFFFFFFFF
    for i, b in enumerate(data):
        if i >= 16 and i % 4 == 0 and i + 4 <= len(data):
            stored = int.from_bytes(data[i : i + 4], "little" if order == "<" else "big")
            if crc ^ 0xFFFFFFFF == stored:
                return True
        crc = _CRC32C[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return False


def _tablespace_oids(raw: bytes) -> tuple[int, ...]:
    """tablespace_map: one `<oid> <path>` line per tablespace."""
    oids = []
    for line in raw.decode("utf-8", "replace").splitlines():
        head = line.split(" ", 1)[0]
        if head.isdigit():
            oids.append(int(head))
    return tuple(sorted(set(oids)))


# -- checksums ----------------------------------------------------------------------------------------


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC32C[(crc ^ b) & 0xFF] ^ (crc >> 8)
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
