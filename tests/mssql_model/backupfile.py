"""The model's reader of backup headers: the media header and every backup set of one device, built from
the blocks of the format document (sqlserver-backup-format.md) with the model's own code.

Sections used: 2.4 (TAPE and its RAID stream), 2.5 (SSET), 2.6 (VOLB), 3 (the MQCI stream of MSLS, else
MSCI: one SCIN, then SFGI and SFIN records), 8 (compressed devices) and 9 (what differs by version).
Only the fields the model's rules and its HEADERONLY / FILELISTONLY / LABELONLY answers use are read.

A set is complete when its ESET follows: a file that ends before (even on a block boundary) is truncated,
as a file cut while it was being copied would be.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from tests.mssql_model import encodings as enc
from tests.mssql_model.backupsets import LETTERS, BackupSet, DatabaseFile, MediaHeader
from tests.mssql_model.formaterrors import NotABackup, TruncatedBackup
from tests.mssql_model.mssqlbak import MAGIC, open_source
from tests.mssql_model.mtf import Block, Source, walk

# 3.1 / 9: SQL Server 2005 ends the fixed part of SCIN at 0x158, so CompressedBackupSize (0x158) exists
# only where the first string starts at 0x160 or later.
_COMPRESSED_SIZE_AT = 0x158
# SCIN 0xF4 (3.1) holds the database status bits of sys.sysdatabases: 1 autoclose, 4 select into/bulkcopy
# (BULK_LOGGED), 8 trunc. log on chkpt (SIMPLE), both set by ALTER DATABASE ... SET RECOVERY
# (https://learn.microsoft.com/en-us/previous-versions/sql/sql-server-2008-r2/ms179900(v=sql.105)). The
# corpus shows 1 and 8 where that page says; it has no bulk-logged database, so 4 is untried.
_STATUS_SIMPLE = 0x8
_STATUS_BULK_LOGGED = 0x4
_FLAG_CHECKSUMS = 0x10
_PAGE = 8192
_SCIN_FIXED_MIN = 0x100  # the last field read below 0x158 is the u32 at 0xF4
_SFIN_FIXED_MIN = 0x10E  # ends with the FILETIME at 0x106


@dataclass(frozen=True)
class Record:
    """One SQL Server record of an MQCI stream (tag, then u32 length): offsets count from its tag."""

    tag: str
    data: bytes

    def u8(self, at: int) -> int:
        return self.data[at]

    def u16(self, at: int) -> int:
        return int(struct.unpack_from("<H", self.data, at)[0])

    def u32(self, at: int) -> int:
        return int(struct.unpack_from("<I", self.data, at)[0])

    def u64(self, at: int) -> int:
        return int(struct.unpack_from("<Q", self.data, at)[0])

    def string_at(self, at: int) -> int | None:
        """Where the string of the TAPE_ADDRESS at `at` starts (None for NULL)."""
        size, where = struct.unpack_from("<HH", self.data, at)
        return int(where) if size else None

    def text(self, at: int) -> str | None:
        size, where = struct.unpack_from("<HH", self.data, at)
        if size == 0:
            return None
        raw = self.data[where : where + size]
        if len(raw) != size or size % 2:
            raise NotABackup(f"{self.tag} record: a string outside the record or of an odd length")
        return raw.decode("utf-16-le", "replace")


def records(stream: bytes) -> list[Record]:
    """Section 3: SCIN first, then SFGI / SFIN, each `length` bytes long, to the end of the stream."""
    found: list[Record] = []
    at = 0
    while at < len(stream):
        if at + 8 > len(stream):
            raise NotABackup("MQCI stream: a record header past its end")
        tag = stream[at : at + 4].decode("latin-1")
        (length,) = struct.unpack_from("<I", stream, at + 4)
        if length < 8 or at + length > len(stream):
            raise NotABackup(f"MQCI stream: the {tag!r} record at {at} has length {length}")
        found.append(Record(tag, bytes(stream[at : at + length])))
        at += length
    if not found or found[0].tag != "SCIN":
        raise NotABackup("MQCI stream: it does not start with a SCIN record")
    if len(found[0].data) < _SCIN_FIXED_MIN:
        raise NotABackup("MQCI stream: its SCIN record is shorter than its fixed part")
    return found


# The SCIN fixed part up to 0xF8 is written at the start (MSCI) and repeated at the end (MSLS), except
# what the end fills in (section 3): the LSNs at 0x20-0x47, BackupFinishDate at 0x52, BackupSize at 0x60
# and the LSN at 0x90 (it equals LastLSN). From 0xF8 on the fields are unknown and some change. The MQCI
# stream has no checksum of its own: two copies that differ elsewhere mean a damaged file, which the model
# refuses rather than answer with a wrong name or GUID.
_FIXED_PART_END = 0xF8
_FILLED_AT_END = ((0x20, 0x48), (0x52, 0x57), (0x60, 0x68), (0x90, 0x9A))


def _check_copies(start: Record, end: Record, position: int) -> None:
    if len(start.data) != len(end.data):
        raise NotABackup(f"backup set {position}: the two copies of its header differ in length")
    for at in range(0x08, _FIXED_PART_END):
        if any(lo <= at < hi for lo, hi in _FILLED_AT_END):
            continue
        if start.data[at] != end.data[at]:
            raise NotABackup(f"backup set {position}: the two copies of its header differ at SCIN {at:#x}")
    for at in (0x68, 0x6C):
        if start.text(at) != end.text(at):
            raise NotABackup(f"backup set {position}: the two copies of its header name different objects")


@dataclass
class _Open:
    """A backup set while its blocks are read."""

    sset: Block
    machine_name: str | None = None
    start: bytes | None = None  # MQCI of MSCI
    end: bytes | None = None  # MQCI of MSLS
    ended: bool = False


def media_header(tape: Block, compressed: bool) -> MediaHeader:
    """Section 2.4: the TAPE block and its RAID stream."""
    raid = tape.stream("RAID")
    if raid is None or raid.data is None or len(raid.data) < 26:
        raise NotABackup("the TAPE block has no RAID stream of 26 bytes or more")
    family_count, _mirrors, sequence = struct.unpack_from("<HHH", raid.data, 20)
    protected = tape.u16(0x3E) != 0
    return MediaHeader(
        media_name=tape.text(0x44),
        media_description=tape.text(0x48),
        media_date=enc.mtf_date(tape.header, 0x58, None),
        password_hash=tape.raw(0x4C) if protected else None,
        media_family_id=tape.u32(0x34),
        media_set_id=enc.guid(raid.data, 0),
        family_count=int(family_count),
        family_sequence_number=int(sequence),
        compressed=compressed,
    )


def read_device(device: Source) -> tuple[MediaHeader, list[BackupSet]]:
    """The media header and the backup sets of one device, in the order they are written."""
    if device.size == 0:
        raise TruncatedBackup("the device is empty")
    compressed = device.size >= len(MAGIC) and device.read(0, len(MAGIC)) == MAGIC
    blocks = walk(open_source(device))
    first = next(blocks, None)
    if first is None or first.block_type != "TAPE":
        raise NotABackup("the device does not start with a TAPE block")
    media = media_header(first, compressed)
    sets: list[_Open] = []
    last = first.block_type
    for block in blocks:
        kind = last = block.block_type
        current = sets[-1] if sets and not sets[-1].ended else None
        if kind == "SSET":
            sets.append(_Open(block))
        elif kind == "TAPE":
            raise NotABackup(f"a second TAPE block at byte {block.offset}")
        elif current is None:
            continue  # SFMB, and the second ESET of a set: no metadata
        elif kind == "VOLB":
            current.machine_name = block.text(0x40)
        elif kind in ("MSCI", "MSLS"):
            stream = block.stream("MQCI")
            if stream is None or stream.data is None:
                raise NotABackup(f"the {kind} block at byte {block.offset} has no MQCI stream")
            if kind == "MSCI":
                current.start = stream.data
            else:
                current.end = stream.data
        elif kind == "ESET":
            current.ended = True
    if not sets:
        raise TruncatedBackup("the device ends before its first backup set")
    if not compressed and last != "SFMB":
        # 2.3: a disk medium ends with a soft filemark after the last ESET; the compressed container's
        # decoded stream has none (section 8).
        raise TruncatedBackup("the device ends without its closing filemark")
    return media, [_backup_set(s, media) for s in sets]


def _backup_set(opened: _Open, media: MediaHeader) -> BackupSet:
    sset = opened.sset
    position = sset.u16(0x3E)
    if not opened.ended:
        raise TruncatedBackup(f"the device ends inside backup set {position} (no ESET block)")
    if opened.start is None and opened.end is None:
        raise NotABackup(f"backup set {position} has neither an MSCI nor an MSLS block")
    found = records(opened.end or opened.start or b"")
    scin = found[0]
    if opened.start is not None and opened.end is not None:
        _check_copies(records(opened.start)[0], scin, position)
    zone = enc.quarter_hours(struct.unpack_from("<b", sset.header, 0x5F)[0])
    groups = {r.u32(0x0C): r.text(0x10) for r in found if r.tag == "SFGI"}
    files = tuple(_file(r, groups) for r in found if r.tag == "SFIN")
    letter = chr(scin.u8(0x57))
    status = scin.u32(0xF4)
    fork_point = enc.lsn(scin.data, 0xAC)
    starts = [s for s in (scin.string_at(0x68), scin.string_at(0x6C)) if s is not None]
    guid = enc.guid(sset.header, 0x64)
    database = scin.text(0x68)
    if guid is None or database is None:
        raise NotABackup(f"backup set {position}: no BackupSetGUID or no database name")
    return BackupSet(
        position=position,
        backup_type=LETTERS.get(letter),
        type_letter=letter,
        backup_name=sset.text(0x40),
        backup_description=sset.text(0x44),
        user_name=sset.text(0x4C),
        server_name=scin.text(0x6C),
        machine_name=opened.machine_name,
        database_name=database,
        database_version=scin.u16(0x5E),
        compatibility_level=scin.u8(0x5B),
        software_major=scin.u8(0x1B),
        software_minor=scin.u8(0x1A),
        software_build=scin.u16(0x18),
        first_lsn=enc.lsn(scin.data, 0x20),
        last_lsn=enc.lsn(scin.data, 0x2A),
        checkpoint_lsn=enc.lsn(scin.data, 0x34),
        database_backup_lsn=enc.lsn(scin.data, 0x3E),
        fork_point_lsn=fork_point or None,
        backup_start=enc.mtf_date(scin.data, 0x4D, zone),
        backup_finish=enc.mtf_date(scin.data, 0x52, zone),
        database_creation=enc.mtf_date(scin.data, 0x48, zone),
        recovery_model=_recovery_model(status),
        flags=scin.u32(0x08),
        sort_order=scin.u8(0x58),
        unicode_locale_id=scin.u32(0x74),
        unicode_comparison_style=scin.u32(0x78),
        backup_set_guid=guid,
        database_guid=enc.guid(scin.data, 0x7C),
        family_guid=enc.guid(scin.data, 0xE0),
        recovery_fork_id=enc.guid(scin.data, 0x9C),
        first_recovery_fork_id=enc.guid(scin.data, 0xB8) if fork_point else None,
        differential_base_guid=enc.guid(scin.data, 0xC8),
        backup_size=scin.u64(0x60),
        compressed_backup_size=(
            scin.u64(_COMPRESSED_SIZE_AT)
            if min(starts, default=0) >= _COMPRESSED_SIZE_AT + 8 and len(scin.data) >= _COMPRESSED_SIZE_AT + 8
            else None
        ),
        has_checksums=bool(scin.u32(0x08) & _FLAG_CHECKSUMS),
        media=media,
        files=files,
    )


def _recovery_model(status: int) -> str:
    if status & _STATUS_SIMPLE:
        return "SIMPLE"
    if status & _STATUS_BULK_LOGGED:
        return "BULK_LOGGED"
    return "FULL"


def _file(record: Record, groups: dict[int, str | None]) -> DatabaseFile:
    """Section 3.3: one SFIN record."""
    if len(record.data) < _SFIN_FIXED_MIN:
        raise NotABackup(f"an SFIN record of {len(record.data)} bytes, shorter than its fixed part")
    logical, physical = record.text(0x30), record.text(0x34)
    if logical is None or physical is None:
        raise NotABackup("an SFIN record without a logical or a physical file name")
    kind = {1: "D", 2: "L"}.get(record.u32(0x1C))
    if kind is None:
        raise NotABackup(f"file {logical!r}: a file type the model does not know ({record.u32(0x1C)})")
    group = record.u32(0x24)
    return DatabaseFile(
        logical_name=logical,
        physical_name=physical,
        type=kind,
        file_id=record.u32(0x14),
        filegroup_id=group,
        filegroup_name=groups.get(group) if kind == "D" else None,
        size=record.u64(0x28),
        max_size=record.u64(0x56),
        backup_size=record.u32(0x18) * _PAGE,
        source_block_size=record.u32(0x20),
        create_lsn=enc.lsn(record.data, 0x8A),
        drop_lsn=enc.lsn(record.data, 0x94),
        differential_base_lsn=enc.lsn(record.data, 0x9E),
        differential_base_guid=enc.guid(record.data, 0xAA),
        unique_id=enc.guid(record.data, 0xBA),
        base_time=enc.filetime(record.data, 0x106),
    )
