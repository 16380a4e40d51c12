"""PostgreSQL positions and WAL file names.

An LSN is a 64-bit byte position in the WAL stream, printed as two hex halves `X/Y`. WAL is cut into
segments (16 MiB unless initdb said otherwise); segment file names are 24 hex digits: timeline, then the
segment number split into "log" and "seg" parts of 2**32 bytes' worth of segments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
_SEGMENT_NAME = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
_HISTORY_NAME = re.compile(r"^([0-9A-F]{8})\.history$")
_LSN = re.compile(r"^\s*([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})\s*$")


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """`16/B374D848` as PostgreSQL prints it. Raises ValueError naming the accepted form."""
    m = _LSN.match(text)
    if not m:
        raise ValueError(f"LSN '{text}' is not in PostgreSQL's X/Y form (e.g. 0/3000060)")
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16)


def segments_per_xlogid(segment_size: int) -> int:
    return 0x100000000 // segment_size


@dataclass(frozen=True, order=True)
class SegmentName:
    timeline: int
    segno: int

    def name(self, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
        per = segments_per_xlogid(segment_size)
        return f"{self.timeline:08X}{self.segno // per:08X}{self.segno % per:08X}"

    def start_lsn(self, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
        return self.segno * segment_size

    def end_lsn(self, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
        return (self.segno + 1) * segment_size


def parse_segment_name(name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> SegmentName | None:
    """The timeline and segment number of a WAL file name, or None if it is not one."""
    m = _SEGMENT_NAME.match(name)
    if not m:
        return None
    per = segments_per_xlogid(segment_size)
    log, seg = int(m.group(2), 16), int(m.group(3), 16)
    if seg >= per:
        return None
    return SegmentName(int(m.group(1), 16), log * per + seg)


def segment_of(lsn: int, timeline: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> SegmentName:
    return SegmentName(timeline, lsn // segment_size)


def history_timeline(name: str) -> int | None:
    m = _HISTORY_NAME.match(name)
    return int(m.group(1), 16) if m else None
