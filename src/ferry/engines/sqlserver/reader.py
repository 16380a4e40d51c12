"""Read RESTORE HEADERONLY and FILELISTONLY from SQL Server backup media, with no SQL Server.

`read_backup_sets(reader)` returns one BackupSet per set in the file. It reads the media header (TAPE),
each set's SSET and VOLB blocks and the SQL Server configuration record written at the end of the set
(the MQCI stream of the MSLS block); the database pages and log blocks in between are skipped.
Compressed media (`MSSQLBAK`) are read from their first and last chunks only (see container.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timezone
from typing import Any
from uuid import UUID

from ferry.core.errors import BackupFormatError
from ferry.engines.sqlserver import container
from ferry.engines.sqlserver.headers import TYPE_LETTERS, BackupSet, DatabaseFile
from ferry.engines.sqlserver.media import Block, PagedSource, blocks_in_buffer, find_block, walk_blocks
from ferry.engines.sqlserver.mtf import (
    FormatProblem,
    filetime,
    guid,
    lsn,
    mtf_date,
    quarter_hours_tz,
    ta_offset,
    text,
    u8,
    u16,
    u32,
    u64,
)
from ferry.stores.base import RangeReader

TAPE_MAGIC = b"TAPE"

# SCIN database status bits (offset 0xF4). Only "truncate log on checkpoint" has been seen, on every
# SIMPLE-recovery database; other models are told apart by it alone.
_STATUS_TRUNC_LOG_ON_CHKPT = 0x8
_FLAG_DIFFERENTIAL = 0x800
# HEADERONLY's Flags column is this field; Microsoft documents bit 16 as "backup contains backup checksums".
# It is set on every backup in the corpus taken by a job that asks for checksums, and on no other.
_FLAG_CHECKSUMS = 0x10


def sniff(head: bytes) -> bool:
    """Whether `head` (the first bytes of a file) starts SQL Server backup media."""
    return head.startswith(TAPE_MAGIC) or container.is_compressed_backup(head)


@dataclass
class _Media:
    """Facts of the media header, shared by every set in the file."""

    media_family_id: int = 0
    has_password: bool = False
    media_set_id: UUID | None = None
    family_count: int = 1
    family_sequence: int = 1


@dataclass
class _OpenSet:
    sset: bytes
    sset_offset: int
    machine: str = ""
    mqci_start: bytes | None = None
    mqci_end: bytes | None = None
    end_offset: int = 0


def read_backup_sets(reader: RangeReader) -> list[BackupSet]:
    """Every backup set in one media file. Raises BackupFormatError naming the file and the byte offset."""
    try:
        head = reader.read(0, 8)
        if container.is_compressed_backup(head):
            return _read_compressed(reader)
        if not head.startswith(TAPE_MAGIC):
            raise FormatProblem(0, "not SQL Server backup media (no TAPE or MSSQLBAK header)")
        return _assemble(walk_blocks(PagedSource(reader)), reader.key, reader.size, compressed=False)
    except FormatProblem as exc:
        raise BackupFormatError(reader.key, exc.offset, exc.reason) from None


def _read_compressed(reader: RangeReader) -> list[BackupSet]:
    # Only up to the first bulk block of the head is parsed, so decode no chunk beyond it.
    regions = container.read_compressed_regions(reader, head_min=0)
    blocks = list(blocks_in_buffer(regions.head, stop_at_bulk=True))
    end = find_block(regions.tail, b"MSLS")
    if end is None:
        # The decoded tail offsets are logical, not physical: name the file's end, where the data is missing.
        raise FormatProblem(reader.size, "no end-of-set record (MSLS) in the last chunks")
    eset = find_block(regions.tail, b"ESET")
    blocks.append(end)
    if eset is not None:
        blocks.append(eset)
    return _assemble(blocks, reader.key, None, compressed=True)


def _assemble(
    blocks: Iterable[Block], key: str, walked_to: int | None, *, compressed: bool
) -> list[BackupSet]:
    """Backup sets from the blocks of a file. `walked_to` is the file size when `blocks` is the whole file
    (uncompressed media), None when only its head and end were decoded (compressed media)."""
    whole = walked_to is not None
    media = _Media()
    current: _OpenSet | None = None
    done: list[BackupSet] = []
    last_offset = 0
    last_type = b""
    for block in blocks:
        kind, raw, last_offset = block.header.type, block.header.raw, block.header.offset
        last_type = kind
        if kind == b"TAPE":
            media = _read_tape(block)
        elif kind == b"SSET":
            if current is not None:
                raise FormatProblem(last_offset, "a new backup set starts before the previous one ended")
            current = _OpenSet(sset=raw, sset_offset=last_offset)
        elif current is None:
            continue  # media-level blocks (SFMB, ESET of the media) carry no set metadata
        elif kind == b"VOLB":
            current.machine = _text(raw, 0x40, last_offset) or ""
        elif kind in (b"MSCI", b"MSLS"):
            mqci = block.stream(b"MQCI")
            if mqci is None:
                raise FormatProblem(last_offset, f"{kind.decode()} block has no configuration stream")
            if kind == b"MSCI":
                current.mqci_start = mqci
            else:
                current.mqci_end, current.end_offset = mqci, last_offset
        elif kind == b"ESET":
            done.append(_build(key, media, current, compressed))
            current = None
    if whole and last_type != b"SFMB":
        # Media always close with a filemark after the last set: a file that stops right after a block
        # was cut at a block boundary, and may lack the sets that were still to come.
        raise FormatProblem(
            walked_to or 0, "the media ends without its closing filemark; the file is incomplete"
        )
    if current is not None:
        if whole or current.mqci_end is None:
            raise FormatProblem(
                walked_to or last_offset, "the backup set has no end marker; the file is incomplete"
            )
        done.append(_build(key, media, current, compressed))
    if not done:
        raise FormatProblem(last_offset, "the media holds no backup set")
    return done


def _text(raw: bytes, ta: int, where: int) -> str | None:
    try:
        return text(raw, ta)
    except ValueError as exc:
        raise FormatProblem(where + ta, str(exc)) from None


def _read_tape(block: Block) -> _Media:
    raw = block.header.raw
    if len(raw) < 0x5E:
        raise FormatProblem(block.header.offset, "media header is too short")
    media = _Media(
        media_family_id=u32(raw, 0x34),
        # Password algorithm 0 is none; 5 was seen with a media password. Any other non-zero value also
        # means the media is protected, so the restore needs MEDIAPASSWORD.
        has_password=u16(raw, 0x3E) != 0,
    )
    raid = block.stream(b"RAID")
    if raid is not None and len(raid) >= 26:
        media.media_set_id = guid(raid, 0)
        media.family_count = u16(raid, 20)
        media.family_sequence = u16(raid, 24)
    return media


def _build(key: str, media: _Media, s: _OpenSet, compressed: bool) -> BackupSet:
    mqci = s.mqci_end if s.mqci_end is not None else s.mqci_start
    if mqci is None:
        raise FormatProblem(s.sset_offset, "the backup set has no SQL Server configuration record")
    sset = s.sset
    if len(sset) < 0x74:
        raise FormatProblem(s.sset_offset, "backup set header (SSET) is too short")
    try:
        tz = quarter_hours_tz(u8(sset, 0x5F))
    except ValueError as exc:
        raise FormatProblem(s.sset_offset + 0x5F, f"backup set header is damaged: {exc}") from None
    backup_set_guid = guid(sset, 0x64)
    if backup_set_guid is None:
        raise FormatProblem(s.sset_offset + 0x64, "backup set has no BackupSetGUID")
    where = s.end_offset if s.mqci_end is not None else s.sset_offset
    try:
        scin = _parse_mqci(mqci, tz)
    except (ValueError, IndexError, KeyError) as exc:  # struct.error and UnicodeError are ValueErrors
        raise FormatProblem(where, f"SQL Server configuration record is damaged: {exc}") from None
    if s.mqci_start is not None and s.mqci_end is not None:
        _check_copies(s.mqci_start, s.mqci_end, where)
    return BackupSet(
        path=key,
        position=u16(sset, 0x3E),
        backup_name=_text(sset, 0x40, s.sset_offset),
        backup_description=_text(sset, 0x44, s.sset_offset),
        user_name=_text(sset, 0x4C, s.sset_offset),
        machine_name=s.machine,
        backup_set_guid=backup_set_guid,
        media_set_id=media.media_set_id or backup_set_guid,
        media_family_id=media.media_family_id,
        family_count=media.family_count,
        family_sequence_number=media.family_sequence,
        has_media_password=media.has_password,
        compressed=compressed,
        **scin,
    )


# Byte ranges of the SCIN record that SQL Server writes identically at the start of a backup (MSCI) and
# at its end (MSLS): flags, versions, names, GUIDs, recovery fork, status. LSNs, dates and sizes are
# updated at the end, so they are left out. The MQCI stream has no checksum of its own; comparing the two
# copies is what catches a damaged header instead of reporting a wrong database name or GUID.
_INVARIANT_SCIN = ((0x08, 0x20), (0x57, 0x60), (0x68, 0x90), (0x9C, 0xF8))


def _check_copies(start: bytes, end: bytes, where: int) -> None:
    scin_len = u32(end, 4)
    if u32(start, 4) != scin_len:
        raise FormatProblem(
            where, "the two copies of the backup header differ in length; the file is damaged"
        )
    ranges = [*_INVARIANT_SCIN, (_strings_start(end, scin_len), scin_len)]
    for lo, hi in ranges:
        if start[lo:hi] != end[lo:hi]:
            bad = next(i for i in range(lo, hi) if start[i] != end[i])
            raise FormatProblem(
                where, f"the two copies of the backup header disagree at byte {bad:#x}; the file is damaged"
            )


def _strings_start(scin: bytes, scin_len: int) -> int:
    offsets = (ta_offset(scin, 0x68), ta_offset(scin, 0x6C))
    return min((o for o in offsets if o is not None), default=scin_len)


def _parse_mqci(buf: bytes, tz: timezone) -> dict[str, Any]:
    """The SCIN record (backup header) and the SFGI/SFIN records (filegroups, files) that follow it."""
    if buf[:4] != b"SCIN":
        raise ValueError("it does not start with SCIN")
    scin_len = u32(buf, 4)
    if not 0x158 <= scin_len <= len(buf):
        raise ValueError(f"SCIN length {scin_len} is out of range")
    scin = buf[:scin_len]
    letter = chr(scin[0x57])
    flags = u32(scin, 0x08)
    status = u32(scin, 0xF4)
    # The fixed part grew across versions (0x158 on 2005, 0x16C on 2008 R2, 0x190 from 2014). Where the
    # strings begin tells which fields exist: CompressedBackupSize at 0x158 only if nothing starts there.
    strings_at = _strings_start(scin, scin_len)
    fork_point = lsn(scin, 0xAC)
    filegroups: dict[int, str | None] = {}
    files: list[DatabaseFile] = []
    pos = scin_len
    while pos + 8 <= len(buf):
        tag, length = buf[pos : pos + 4], u32(buf, pos + 4)
        if length < 8 or pos + length > len(buf):
            raise ValueError(f"record {tag!r} at +{pos:#x} has a bad length")
        rec = buf[pos : pos + length]
        if tag == b"SFGI":
            filegroups[u32(rec, 0x0C)] = text(rec, 0x10)
        elif tag == b"SFIN":
            files.append(_parse_sfin(rec, filegroups))
        pos += length
    backup_type = TYPE_LETTERS.get(letter)
    return {
        "type_letter": letter,
        "backup_type": backup_type,
        "flags": flags,
        "software_build": u16(scin, 0x18),
        "software_minor": scin[0x1A],
        "software_major": scin[0x1B],
        "first_lsn": lsn(scin, 0x20),
        "last_lsn": lsn(scin, 0x2A),
        "checkpoint_lsn": lsn(scin, 0x34),
        "database_backup_lsn": lsn(scin, 0x3E),
        "database_creation": mtf_date(scin, 0x48, tz),
        "backup_start": mtf_date(scin, 0x4D, tz),
        "backup_finish": mtf_date(scin, 0x52, tz),
        "sort_order": scin[0x58],
        "compatibility_level": scin[0x5B],
        "database_version": u16(scin, 0x5E),
        "backup_size": u64(scin, 0x60),
        "database_name": text(scin, 0x68) or "",
        "server_name": text(scin, 0x6C) or "",
        "database_guid": guid(scin, 0x7C),
        "recovery_fork_id": guid(scin, 0x9C),
        "fork_point_lsn": fork_point or None,
        "first_recovery_fork_id": guid(scin, 0xB8) if fork_point else None,
        "differential_base_guid": guid(scin, 0xC8),
        "family_guid": guid(scin, 0xE0),
        "recovery_model": "SIMPLE" if status & _STATUS_TRUNC_LOG_ON_CHKPT else "FULL",
        "compressed_backup_size": u64(scin, 0x158) if strings_at >= 0x160 else None,
        "has_checksums": bool(flags & _FLAG_CHECKSUMS),
        "files": tuple(files),
    }


def _parse_sfin(rec: bytes, filegroups: dict[int, str | None]) -> DatabaseFile:
    ftype = u32(rec, 0x1C)
    fg_id = u32(rec, 0x24)
    return DatabaseFile(
        logical_name=text(rec, 0x30) or "",
        physical_name=text(rec, 0x34) or "",
        type={1: "D", 2: "L"}.get(ftype, "?"),
        filegroup_name=filegroups.get(fg_id) if ftype == 1 else None,
        size=u64(rec, 0x28),
        max_size=u64(rec, 0x56),
        file_id=u32(rec, 0x14),
        create_lsn=lsn(rec, 0x8A),
        differential_base_lsn=lsn(rec, 0x9E),
        differential_base_guid=guid(rec, 0xAA),
        unique_id=guid(rec, 0xBA),
        backup_size=u32(rec, 0x18) * 8192,
        filegroup_id=fg_id,
        base_time=filetime(rec, 0x106) if len(rec) >= 0x10E else None,
        source_block_size=u32(rec, 0x20),
    )
