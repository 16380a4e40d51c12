"""Timelines: PostgreSQL's timeline history files and the path of timelines recovery follows.

Each promotion (or recovery that ends before the end of the WAL) starts a new timeline and writes
`<tli>.history`: one line per ancestor, oldest first, `<parent tli>\\t<X/Y>\\t<reason>`, where X/Y is
the LSN at which the parent ended and its child began (readTimeLineHistory in timeline.c). Blank lines
and lines starting with `#` are ignored; timelines must increase from line to line.

Recovery to a timeline reads WAL along that ancestry: for each segment it tries the timelines of the path
newest first and takes the first that had begun by then (XLogFileReadAnyTLI), so the segment holding a
switch point is read from the child. `TimelinePath` is that rule, used by the planner (chain.py) to name
the segments a restore reads and by the prefetcher (prefetch.py) to fetch them ahead of replay.

Only stdlib and wal.py are imported: `ferry wal-fetch` imports this through the prefetcher and must
start fast.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise

from ferry.engines.postgres.damage import Damage
from ferry.engines.postgres.wal import format_lsn, parse_lsn

__all__ = ["HistoryEntry", "HistoryProblem", "Span", "TimelinePath", "looks_like_history", "parse_history"]

_LINE = re.compile(r"^(\d+)\s+([0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8})(?:\s+(.*?))?\s*$", re.ASCII)
_FIRST_LINE = re.compile(rb"^\d+\t[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}(\t|$)")
_MAX_TIMELINE = 0xFFFFFFFF


class HistoryProblem(Damage):
    """A history file that cannot be read, at a byte offset of its text. The caller names the file (as a
    BackupFormatError when scanning, a WalArchiveError when fetching)."""


@dataclass(frozen=True)
class HistoryEntry:
    """One line of a history file: timeline `parent` ended, and its child began, at `switch_lsn`."""

    parent: int
    switch_lsn: int
    reason: str = ""


def parse_history(text: str) -> tuple[HistoryEntry, ...]:
    """The ancestry a history file lists, oldest first. Raises HistoryProblem for a line that is not
    `<tli> <X/Y> [reason]`, timelines out of order or out of range, or a file that lists none."""
    entries: list[HistoryEntry] = []
    offset = 0
    for raw in text.splitlines(keepends=True):
        line = raw.strip()
        if line and not line.startswith("#"):
            m = _LINE.match(line)
            if not m:
                raise HistoryProblem(
                    offset, f"timeline history line {line[:60]!r} is not '<tli> <X/Y> <reason>'"
                )
            tli, lsn = int(m.group(1)), parse_lsn(m.group(2))
            if entries and (tli <= entries[-1].parent or lsn < entries[-1].switch_lsn):
                raise HistoryProblem(offset, "timeline history entries are not in increasing order")
            if tli == 0 or tli > _MAX_TIMELINE:
                raise HistoryProblem(offset, f"timeline {tli} in a history file is out of range")
            entries.append(HistoryEntry(tli, lsn, m.group(3) or ""))
        offset += len(raw.encode("utf-8", "surrogateescape"))
    if not entries:
        raise HistoryProblem(0, "timeline history file lists no timeline")
    return tuple(entries)


def looks_like_history(head: bytes) -> bool:
    """Text whose first meaningful line is `<tli>\\t<X/Y>...` (comments and blank lines may come first):
    how a history file is told by its content, whatever its name."""
    if b"\0" in head[:4096]:
        return False
    for raw in head[:4096].splitlines():
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        return bool(_FIRST_LINE.match(line))
    return False


@dataclass(frozen=True)
class Span:
    """A stretch of a timeline path: `timeline` from `begin_lsn` until `end_lsn` (None: open-ended)."""

    timeline: int
    begin_lsn: int
    end_lsn: int | None


@dataclass(frozen=True)
class TimelinePath:
    """The timelines recovery follows to reach its target timeline (the last span), oldest first.

    Iterating gives the spans, so `[s.timeline for s in path]` lists the timelines oldest first."""

    spans: tuple[Span, ...]

    @staticmethod
    def of(target: int, history: Sequence[HistoryEntry] = ()) -> TimelinePath:
        """The path to `target` given its history file's entries. Without them (timeline 1, or a history
        file that is missing) PostgreSQL takes the timeline to have no parents, and so does Ferry."""
        spans: list[Span] = []
        begin = 0
        for entry in history:
            spans.append(Span(entry.parent, begin, entry.switch_lsn))
            begin = entry.switch_lsn
        spans.append(Span(target, begin, None))
        return TimelinePath(tuple(spans))

    def __iter__(self) -> Iterator[Span]:
        return iter(self.spans)

    def __len__(self) -> int:
        return len(self.spans)

    @property
    def target(self) -> int:
        return self.spans[-1].timeline

    @property
    def has_ancestry(self) -> bool:
        """Whether the path knows timelines before its target (read from the target's history file)."""
        return len(self.spans) > 1

    def timelines(self) -> frozenset[int]:
        return frozenset(s.timeline for s in self.spans)

    def span(self, timeline: int) -> Span | None:
        return next((s for s in self.spans if s.timeline == timeline), None)

    def candidates(self, segno: int, segment_size: int) -> list[int]:
        """The timelines PostgreSQL tries for segment `segno`, in its order: newest first, skipping those
        that begin after the segment (XLogFileReadAnyTLI)."""
        return [s.timeline for s in reversed(self.spans) if s.begin_lsn // segment_size <= segno]

    def timeline_for(self, segno: int, segment_size: int) -> int:
        """The timeline recovery reads segment `segno` from: the newest on the path that had begun by then."""
        for span in reversed(self.spans):
            if span.begin_lsn // segment_size <= segno:
                return span.timeline
        return self.spans[0].timeline

    def child_of(self, timeline: int) -> int:
        """The timeline that followed `timeline` on this path (itself when it is the target or not on it)."""
        for a, b in pairwise(self.spans):
            if a.timeline == timeline:
                return b.timeline
        return timeline

    def describe(self) -> str:
        """`timeline 1`, or `timelines 1 (until 0/5000000) -> 2`."""
        if len(self.spans) == 1:
            return f"timeline {self.spans[0].timeline}"
        hops = " -> ".join(
            f"{s.timeline}" + (f" (until {format_lsn(s.end_lsn)})" if s.end_lsn is not None else "")
            for s in self.spans
        )
        return f"timelines {hops}"
