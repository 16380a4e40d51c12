"""Restore chains for PostgreSQL: which base backup and which WAL segments restore each source cluster, along
which timelines, and what stands in the way (as findings).

A source is one cluster, known by its system identifier (pg_control's first field, repeated in every WAL
segment's long page header): standbys and restored copies share it, an initdb makes a new one. Files of
two systems are never mixed.

The rules are PostgreSQL's own archive recovery:

- A base backup is usable once the WAL from its START WAL LOCATION to the end of the backup (the
  manifest's WAL-Ranges End-LSN, or STOP WAL LOCATION of its backup history file) can be replayed: the
  backup is only consistent there.
- Recovery then asks for segments one after another. With recovery_target_timeline = 'latest' it follows
  the newest timeline whose history (NNNNNNNN.history) leads back to the backup's timeline, and for each
  segment it takes the newest timeline on that path that had begun by then (XLogFileReadAnyTLI): the
  segment holding a switch point is read from the child timeline.
- Recovery ends at the first segment it cannot get. Segments found later on the same path are a gap.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from ferry.core.findings import Finding, Severity
from ferry.engines.postgres.grouping import LISTED, BaseBackup, Source, quoted
from ferry.engines.postgres.reader import (
    WalSegment,
)
from ferry.engines.postgres.timeline import TimelinePath
from ferry.engines.postgres.wal import DEFAULT_SEGMENT_SIZE, SegmentName, format_lsn

# -- timelines ----------------------------------------------------------------------------------------


def timeline_path(target: int, source: Source) -> TimelinePath:
    """The path to `target` from its history file. Without one (timeline 1, or a history file that is
    missing), PostgreSQL assumes the timeline has no parents, and so does Ferry."""
    history = source.history(target)
    return TimelinePath.of(target, history.entries if history is not None else ())


def timeline_for(path: TimelinePath, segno: int, segment_size: int) -> int:
    """The timeline recovery reads segment `segno` from: the newest on the path that had begun by then."""
    return path.timeline_for(segno, segment_size)


def _on_path(base: BaseBackup, path: TimelinePath) -> bool:
    """The backup was taken on a timeline of the path, before that timeline's switch point: it must reach
    consistency before recovery moves on to the child timeline."""
    span = path.span(base.timeline)
    return (
        span is not None
        and span.begin_lsn <= base.start_lsn
        and (span.end_lsn is None or base.consistent_at <= span.end_lsn)
    )


def describe_path(path: TimelinePath) -> str:
    """`timeline 1`, or `timelines 1 (until 0/5000000) -> 2`: the catalog shows it."""
    return path.describe()


# -- walking ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """Contiguous segments of one timeline: one log step."""

    timeline: int
    segments: tuple[WalSegment, ...]

    @property
    def first_lsn(self) -> int:
        return self.segments[0].header.start_lsn

    @property
    def last_lsn(self) -> int:
        return self.segments[-1].header.end_lsn


@dataclass(frozen=True)
class Walk:
    base: BaseBackup
    path: TimelinePath
    runs: tuple[Run, ...]
    last_segno: int  # the last segment recovery can read (start segment - 1 if none)
    missing: SegmentName | None  # the segment where recovery stops for want of a file
    consistent: bool
    reached: bool  # the LSN target was reached (always False without one)
    segment_size: int = DEFAULT_SEGMENT_SIZE

    @property
    def end_lsn(self) -> int:
        return (self.last_segno + 1) * self.segment_size

    @property
    def target_timeline(self) -> int:
        return self.path.target


def walk(base: BaseBackup, path: TimelinePath, source: Source, goal_lsn: int | None = None) -> Walk:
    """Recovery from `base` along `path`: segment after segment, archive copies first (recovery asks
    restore_command before looking in pg_wal), then the WAL shipped inside the backup. With `goal_lsn`
    (recovery_target_lsn) it stops after the segment that holds the goal."""
    size = source.segment_size
    files = {s.header.segment: s for s in source.segments if s.header.segment_size == size}
    embedded = base.embedded
    start = base.start_lsn // size
    goal_seg = goal_lsn // size if goal_lsn is not None else None
    needed = (base.consistent_at - 1) // size if base.consistent_at > base.start_lsn else start
    runs: list[Run] = []
    current: list[WalSegment] = []
    s = start
    missing: SegmentName | None = None
    while goal_seg is None or s <= goal_seg:
        name = SegmentName(path.timeline_for(s, size), s)
        seg = files.get(name)
        if seg is None and name not in embedded:
            missing = name
            break
        if seg is not None:
            prev = current[-1].header if current else None
            if prev is not None and (prev.timeline != name.timeline or prev.segno != s - 1):
                runs.append(Run(prev.timeline, tuple(current)))
                current = []
            current.append(seg)
        s += 1
    if current:
        runs.append(Run(current[-1].header.timeline, tuple(current)))
    last = s - 1
    consistent = last >= needed
    reached = (
        goal_lsn is not None
        and goal_seg is not None
        and consistent
        and last >= goal_seg
        and base.consistent_at <= goal_lsn
    )
    return Walk(base, path, tuple(runs), last, missing, consistent, reached, size)


def later_on_path(w: Walk, source: Source) -> WalSegment | None:
    """The first archived segment on the walk's path after the one it stopped at: proof of a gap."""
    if w.missing is None:
        return None
    size = source.segment_size
    after = [
        seg
        for seg in source.segments
        if seg.header.segno > w.missing.segno
        and seg.header.timeline == w.path.timeline_for(seg.header.segno, size)
    ]
    return min(after, key=lambda seg: seg.header.segno, default=None)


# -- selection ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chain:
    """The chosen restore of one source. `walk` is None when no base backup can start one."""

    source: Source
    walk: Walk | None = None
    findings: tuple[Finding, ...] = ()
    stop_lsn: int | None = None  # recovery_target_lsn, when one was asked for and is reached

    @property
    def restores_to_lsn(self) -> int | None:
        if self.walk is None or not self.walk.consistent:
            return None
        if self.stop_lsn is not None:
            return self.stop_lsn
        return max(self.walk.end_lsn, self.walk.base.consistent_at)


@dataclass(frozen=True)
class _Candidate:
    walk: Walk
    problems: tuple[Finding, ...] = field(default=())

    @property
    def usable(self) -> bool:
        return self.walk.consistent and not self.walk.base.missing_tablespaces


def best_target(base: BaseBackup, source: Source) -> TimelinePath:
    """recovery_target_timeline = 'latest', among the timelines this backup can reach: the newest whose
    path holds the backup."""
    for tli in sorted(source.timelines, reverse=True):
        path = timeline_path(tli, source)
        if _on_path(base, path):
            return path
    return TimelinePath.of(base.timeline)


def select_chain(source: Source, goal_lsn: int | None = None) -> Chain:
    """The restore chain of one source: the latest base backup that reaches the target (or, without one,
    the one whose chain reaches furthest along the newest timeline), then WAL runs along its path."""
    label = source.label
    findings: list[Finding] = list(source.findings)
    if not source.bases:
        keys = [s.key for s in source.segments]
        findings.append(
            Finding(
                "no-base-backup",
                Severity.ERROR,
                f"{label} has {len(keys)} WAL segment(s) ({quoted(keys)}) but no base backup among the "
                "scanned files",
                "add the folder that holds its base backups (pg_basebackup -Ft output) to the scan, or take "
                "a new base backup",
                tuple(keys),
            )
        )
        return Chain(source, None, tuple(findings))
    candidates: list[_Candidate] = []
    chosen: _Candidate | None = None
    for base in sorted(source.bases, key=lambda b: b.sort_key, reverse=True):  # latest first
        if goal_lsn is not None and base.consistent_at > goal_lsn:
            continue
        w = walk(base, best_target(base, source), source, goal_lsn)
        cand = _Candidate(w, tuple(_base_problems(w, source)))
        candidates.append(cand)
        if goal_lsn is not None and cand.usable and w.reached:
            chosen = cand
            break
    usable = [c for c in candidates if c.usable]
    if chosen is None and usable:
        # Furthest along the newest timeline; `max` keeps the first, i.e. latest, backup on ties.
        chosen = max(usable, key=lambda c: (c.walk.target_timeline, c.walk.last_segno))
    if chosen is None:
        if candidates:  # the latest backup's problems say why nothing can be restored
            findings.extend(candidates[0].problems)
        if goal_lsn is not None:
            findings.append(_unreachable(source, goal_lsn, None))
        return Chain(source, None, tuple(findings))
    for c in candidates:
        if c.walk.base.sort_key > chosen.walk.base.sort_key and not c.usable:
            findings.extend(_passed_over(p, chosen.walk.base) for p in c.problems)
    findings.extend(chosen.problems)
    w = chosen.walk
    gap_after = later_on_path(w, source) if not (goal_lsn is not None and w.reached) else None
    if gap_after is not None:
        findings.append(_gap(source, w, gap_after))
    findings.extend(_off_path(source, w))
    if goal_lsn is not None and not w.reached:
        findings.append(_unreachable(source, goal_lsn, w))
    return Chain(source, w, tuple(findings), goal_lsn if w.reached else None)


def _segment_names(names: Sequence[str]) -> str:
    if len(names) <= LISTED:
        return ", ".join(names)
    return f"{', '.join(names[:3])}, ... {names[-1]} ({len(names)} segments)"


def _base_problems(w: Walk, source: Source) -> list[Finding]:
    """Why this backup cannot be restored, if it cannot."""
    base = w.base
    out = []
    if not w.consistent and w.missing is not None:
        size = source.segment_size
        needed_end = (
            (base.consistent_at - 1) // size if base.consistent_at > base.start_lsn else w.missing.segno
        )
        names = [
            SegmentName(w.path.timeline_for(n, size), n).name(size)
            for n in range(w.missing.segno, needed_end + 1)
        ]
        out.append(
            Finding(
                "wal-missing-for-backup",
                Severity.ERROR,
                f"base backup '{base.tar.key}' of {source.label} needs the WAL from "
                f"{format_lsn(base.start_lsn)} to {format_lsn(base.consistent_at)} to become consistent, "
                f"but segment(s) {_segment_names(names)} are missing",
                "copy the missing segments into the store (from the archive or the server's pg_wal), or "
                "take the base backup with -X stream so that it carries its own WAL",
                base.files,
            )
        )
    if base.missing_tablespaces:
        oids = ", ".join(str(o) for o in base.missing_tablespaces)
        out.append(
            Finding(
                "tablespace-missing",
                Severity.ERROR,
                f"base backup '{base.tar.key}' of {source.label} has tablespace(s) {oids}, but their tar "
                f"file(s) ({', '.join(f'{o}.tar' for o in base.missing_tablespaces)}) are not among the "
                "scanned files",
                "copy the tablespace tars that pg_basebackup wrote beside base.tar into the store",
                base.files,
            )
        )
    if base.end_lsn is None:
        out.append(
            Finding(
                "backup-end-unknown",
                Severity.INFO,
                f"base backup '{base.tar.key}' of {source.label} has no backup_manifest and no backup "
                "history file: Ferry cannot check that the WAL reaches the end of the backup",
                "keep the backup_manifest pg_basebackup writes beside the tars, or archive WAL so the "
                "server writes its .backup history file",
                (base.tar.key,),
            )
        )
    return out


def _passed_over(problem: Finding, used: BaseBackup) -> Finding:
    if problem.severity is not Severity.ERROR:
        return problem
    return Finding(
        problem.code,
        Severity.WARNING,
        f"{problem.message}; Ferry restores the older base backup '{used.tar.key}' instead",
        problem.hint,
        problem.files,
    )


def _gap(source: Source, w: Walk, after: WalSegment) -> Finding:
    assert w.missing is not None
    size = source.segment_size
    names = [
        SegmentName(w.path.timeline_for(n, size), n).name(size)
        for n in range(w.missing.segno, after.header.segno)
    ]
    before = w.runs[-1].segments[-1].key if w.runs else w.base.tar.key
    return Finding(
        "wal-gap",
        Severity.ERROR,
        f"WAL of {source.label} breaks after '{before}': segment(s) {_segment_names(names)} are missing "
        f"before '{after.key}' (LSN {format_lsn(w.end_lsn)} to {format_lsn(after.header.start_lsn)}); "
        f"the restore stops at {format_lsn(w.end_lsn)}",
        "find the missing segments (the server's pg_wal, another archive copy) and put them in the store, "
        "or take a new base backup",
        (before, after.key),
    )


def _off_path(source: Source, w: Walk) -> list[Finding]:
    """Segments the chain does not use because their timeline left the path: another branch, an ancestor
    that went on after its child began (an old primary that kept running), or a timeline whose history
    file is missing, so that Ferry cannot place it."""
    spans = {s.timeline: s for s in w.path.spans}
    off: dict[int, list[WalSegment]] = defaultdict(list)
    for seg in source.segments:
        h = seg.header
        span = spans.get(h.timeline)
        # An ancestor's segment that holds WAL from before its switch point is on the path (the switch
        # segment itself is read from the child, but its start is shared history); one that starts at or
        # after the switch point is WAL the ancestor wrote after the branch.
        if span is None or (span.end_lsn is not None and h.start_lsn >= span.end_lsn):
            off[h.timeline].append(seg)
    out = []
    target = w.target_timeline
    for tli, segs in sorted(off.items()):
        keys = [s.key for s in segs]
        span = spans.get(tli)
        if span is None and tli > 1 and source.history(tli) is None:
            out.append(
                Finding(
                    "history-missing",
                    Severity.WARNING,
                    f"{source.label} has {len(keys)} WAL segment(s) of timeline {tli} ({quoted(keys)}) but "
                    f"no history file {tli:08X}.history: Ferry cannot tell where timeline {tli} branched "
                    f"off, so the plan does not follow it; it follows {w.path.describe()}",
                    f"copy {tli:08X}.history from the pg_wal folder of the server that created timeline "
                    f"{tli} into the store",
                    tuple(keys),
                )
            )
            continue
        why = (
            f"timeline {tli} went on after timeline {w.path.child_of(tli)} branched off at "
            f"{format_lsn(span.end_lsn)}"
            if span is not None and span.end_lsn is not None
            else f"timeline {tli} is not an ancestor of timeline {target}"
        )
        out.append(
            Finding(
                "timeline-fork",
                Severity.WARNING,
                f"{source.label}: {len(keys)} WAL segment(s) of timeline {tli} ({quoted(keys)}) are not "
                f"used: {why}; the plan follows {w.path.describe()}",
                "Ferry follows the newest timeline, as recovery_target_timeline = 'latest' does; if "
                f"timeline {tli} is the one to restore (timeline {target} may come from a test restore "
                f"that archived into this store), move timeline {target}'s segments and its history file "
                "out of the store",
                tuple(keys),
            )
        )
    return out


def _unreachable(source: Source, goal_lsn: int, w: Walk | None) -> Finding:
    bases = sorted(source.bases, key=lambda b: b.consistent_at)
    if w is not None and w.consistent:
        reach = (
            f"its backups restore it to LSNs from {format_lsn(bases[0].consistent_at)} "
            f"to {format_lsn(w.end_lsn)} on {w.path.describe()}"
        )
        hint = "choose an LSN inside that range, or scan again once the WAL holding it is archived"
    elif bases:
        reach = (
            f"its earliest base backup becomes consistent at {format_lsn(bases[0].consistent_at)}, and no "
            "usable chain reaches the LSN"
        )
        hint = "choose a later LSN, or add an older base backup to the scan"
    else:
        reach = "it has no base backup"
        hint = "add the folder that holds its base backups to the scan"
    return Finding(
        "stop-at-unreachable",
        Severity.ERROR,
        f"cannot restore {source.label} to LSN {format_lsn(goal_lsn)}: {reach}",
        hint,
        (),
    )


def wal_runs(source: Source) -> list[Run]:
    """All the source's segments as contiguous runs per timeline (for the catalog)."""
    runs: list[Run] = []
    current: list[WalSegment] = []
    for seg in source.segments:  # sorted by (timeline, segno)
        if current and (
            current[-1].header.timeline != seg.header.timeline
            or current[-1].header.segno != seg.header.segno - 1
        ):
            runs.append(Run(current[-1].header.timeline, tuple(current)))
            current = []
        current.append(seg)
    if current:
        runs.append(Run(current[-1].header.timeline, tuple(current)))
    return runs
