"""One timeline model for the planner and the prefetcher: the history parser, TimelinePath's order of
timelines per segment (XLogFileReadAnyTLI), and what the prefetcher makes of a damaged history file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ferry.engines.postgres import chain
from ferry.engines.postgres.prefetch import Prefetcher
from ferry.engines.postgres.reader import HistoryEntry as ReaderHistoryEntry
from ferry.engines.postgres.timeline import (
    HistoryEntry,
    HistoryProblem,
    Span,
    TimelinePath,
    looks_like_history,
    parse_history,
)
from ferry.engines.postgres.walstore import WalArchiveError

SEG = 1024 * 1024


def test_one_entry_type_for_the_scan_and_the_prefetcher() -> None:
    assert ReaderHistoryEntry is HistoryEntry and chain.TimelinePath is TimelinePath


def test_history_files_parse_as_readTimeLineHistory_reads_them() -> None:
    text = "# comment\n\n1\t0/3000158\tno recovery target specified\n2\t0/5000000\tbefore 2024-05-01\n"
    assert looks_like_history(text.encode())
    assert parse_history(text) == (
        HistoryEntry(1, 0x3000158, "no recovery target specified"),
        HistoryEntry(2, 0x5000000, "before 2024-05-01"),
    )
    for bad, offset in (("1\t0/5\n1\t0/6\n", 6), ("1\tnot-an-lsn\n", 0), ("0\t0/5\n", 0), ("# none\n", 0)):
        with pytest.raises(HistoryProblem) as problem:
            parse_history(bad)
        assert problem.value.offset == offset
    assert not looks_like_history(b"1\t0/5\x00")


def test_path_spans_and_description() -> None:
    path = TimelinePath.of(3, (HistoryEntry(1, 5 * SEG + 10), HistoryEntry(2, 9 * SEG)))
    assert path.spans == (Span(1, 0, 5 * SEG + 10), Span(2, 5 * SEG + 10, 9 * SEG), Span(3, 9 * SEG, None))
    assert [s.timeline for s in path] == [1, 2, 3] and path.target == 3 and path.has_ancestry
    assert path.describe() == "timelines 1 (until 0/50000A) -> 2 (until 0/900000) -> 3"
    assert path.child_of(1) == 2 and path.child_of(3) == 3 and path.timelines() == {1, 2, 3}
    assert TimelinePath.of(4).describe() == "timeline 4" and not TimelinePath.of(4).has_ancestry
    # the segment that holds a switch point is read from the child; newest first, as PostgreSQL tries
    assert path.candidates(5, SEG) == [2, 1] and path.candidates(4, SEG) == [1]
    assert path.candidates(9, SEG) == [3, 2, 1]


@given(
    switches=st.lists(st.integers(min_value=0, max_value=64 * SEG), min_size=0, max_size=5),
    segno=st.integers(min_value=0, max_value=70),
)
def test_the_planner_reads_the_first_timeline_the_prefetcher_tries(switches: list[int], segno: int) -> None:
    history = tuple(HistoryEntry(i + 1, lsn) for i, lsn in enumerate(sorted(switches)))
    path = TimelinePath.of(len(history) + 1, history)
    assert path.timeline_for(segno, SEG) == path.candidates(segno, SEG)[0]


def test_a_damaged_history_file_is_an_error_naming_it(tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "wal").mkdir(parents=True)
    (store / "wal" / "00000002.history").write_text("1\tnot-an-lsn\n")
    pre = Prefetcher(str(store), tmp_path / "spool", timeline=1, segment_size=SEG, depth=1, list_interval=0)
    (tmp_path / "spool" / ".absent").mkdir(parents=True)
    pre.advance(0)
    with pytest.raises(WalArchiveError, match=re.escape("wal/00000002.history")) as raised:
        pre.poll()
    assert "is not '<tli> <X/Y> <reason>'" in str(raised.value) and raised.value.hint
