"""Which files make up each PostgreSQL source: files grouped into clusters by system identifier, base
backups assembled from their parts (base.tar, its manifest, its backup history file, tablespace tars),
WAL segments chosen where copies of one name differ, and the findings about what does not fit.

chain.py then works out, for each source, which base backup and which segments restore it.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from posixpath import dirname
from typing import TypeVar

from ferry.core.findings import Finding, Severity
from ferry.engines.postgres.reader import (
    BackupHistoryFile,
    BackupManifest,
    BaseBackupTar,
    TablespaceTar,
    TimelineHistory,
    UnknownTar,
    WalSegment,
    WalTar,
    manifest_matches,
)
from ferry.engines.postgres.wal import DEFAULT_SEGMENT_SIZE, SegmentName, format_lsn

LISTED = 6  # names spelled out in a message before "and N more"


# -- grouping -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaseBackup:
    """One base backup: its main tar and what belongs to it, linked by content (see `group_sources`)."""

    tar: BaseBackupTar
    manifest: BackupManifest | None = None
    history: BackupHistoryFile | None = None
    tablespaces: tuple[TablespaceTar, ...] = ()
    wal_tars: tuple[WalTar, ...] = ()
    missing_tablespaces: tuple[int, ...] = ()

    @property
    def start_lsn(self) -> int:
        return self.tar.label.start_lsn

    @property
    def timeline(self) -> int:
        return self.tar.label.start_timeline

    @property
    def end_lsn(self) -> int | None:
        """Where the backup becomes consistent, when known."""
        if self.manifest is not None:
            return self.manifest.end_lsn
        if self.history is not None:
            return self.history.label.stop_lsn
        return None

    @property
    def consistent_at(self) -> int:
        return self.end_lsn if self.end_lsn is not None else self.start_lsn

    @property
    def files(self) -> tuple[str, ...]:
        parts = [self.tar.key, *(t.key for t in self.tablespaces), *(w.key for w in self.wal_tars)]
        if self.manifest is not None:
            parts.append(self.manifest.key)
        return tuple(parts)

    @property
    def size(self) -> int:
        parts = [self.tar.size, *(t.size for t in self.tablespaces), *(w.size for w in self.wal_tars)]
        return sum(parts) + (self.manifest.size if self.manifest is not None else 0)

    @property
    def embedded(self) -> frozenset[SegmentName]:
        """Segments shipped with the backup (`-X fetch` in the base tar, `-X stream` in pg_wal.tar)."""
        sysid = self.tar.system_identifier
        headers = [*self.tar.embedded_wal, *(h for w in self.wal_tars for h in w.segments)]
        return frozenset(h.segment for h in headers if h.system_identifier == sysid)

    @property
    def sort_key(self) -> tuple[int, int, str]:
        return (self.start_lsn, self.timeline, self.tar.key)


@dataclass(frozen=True)
class Source:
    """Everything the store holds of one cluster."""

    system_identifier: int
    bases: tuple[BaseBackup, ...] = ()  # oldest first
    segments: tuple[WalSegment, ...] = ()  # one file per (timeline, segment), in order
    histories: tuple[TimelineHistory, ...] = ()  # one per timeline
    segment_size: int = DEFAULT_SEGMENT_SIZE
    findings: tuple[Finding, ...] = ()  # about its files: names, copies, parts that do not fit
    partials: tuple[WalSegment, ...] = ()

    @property
    def label(self) -> str:
        return f"system {self.system_identifier}"

    @property
    def timelines(self) -> tuple[int, ...]:
        found = {s.header.timeline for s in self.segments}
        found |= {h.timeline for h in self.histories}
        found |= {b.timeline for b in self.bases}
        return tuple(sorted(found))

    def history(self, timeline: int) -> TimelineHistory | None:
        return next((h for h in self.histories if h.timeline == timeline), None)


# What the scan says of a file it could not read as a backup (pipeline/discover.py). A 0-byte file is not
# among them: it is how a segment being copied starts, and replay says so while it waits for it.
_NOT_READ = {
    "not-a-file": "it is no regular file",
    "not-a-backup": "it does not start with a WAL page header",
    "backup-truncated": "it is shorter than a segment",
    "backup-unreadable": "it is damaged",
}
_SEGMENT_FILE = re.compile(r"^[0-9A-F]{24}(\.(gz|lz4|zst|zstd))?$")


def not_segments(findings: Iterable[Finding]) -> list[Finding]:
    """A file with a WAL segment's name that the scan could not read as one (a FIFO, a file of another
    size, damaged) blocks the migration, saying so: it is never taken for WAL, and replay would wait
    for it forever."""
    out = []
    for f in findings:
        for key in f.files:
            if f.code in _NOT_READ and _SEGMENT_FILE.match(key.rsplit("/", 1)[-1]):
                out.append(
                    Finding(
                        "wal-not-a-segment",
                        Severity.ERROR,
                        f"'{key}' has the name of a WAL segment but is not one: {_NOT_READ[f.code]}",
                        "replace it with the segment from the source's archive or pg_wal, or remove it if "
                        "the source never wrote it; Ferry does not replay it",
                        (key,),
                    )
                )
    return out


def _folder(key: str) -> str:
    return dirname(key) or "."


def quoted(keys: Sequence[str]) -> str:
    shown = ", ".join(f"'{k}'" for k in keys[:LISTED])
    return shown + (f" and {len(keys) - LISTED} more" if len(keys) > LISTED else "")


def group_sources(items: Iterable[object]) -> tuple[list[Source], list[Finding]]:
    """Split what a scan read into sources (one per system identifier) and link each base backup's parts.
    Returns the sources, sorted by system identifier, and findings about files that belong to none."""
    tars: list[BaseBackupTar] = []
    segments: list[WalSegment] = []
    manifests: list[BackupManifest] = []
    histories: list[TimelineHistory] = []
    backup_histories: list[BackupHistoryFile] = []
    tablespaces: list[TablespaceTar] = []
    wal_tars: list[WalTar] = []
    findings: list[Finding] = []
    for item in items:
        if isinstance(item, BaseBackupTar):
            tars.append(item)
        elif isinstance(item, WalSegment):
            segments.append(item)
        elif isinstance(item, BackupManifest):
            manifests.append(item)
        elif isinstance(item, TimelineHistory):
            histories.append(item)
        elif isinstance(item, BackupHistoryFile):
            backup_histories.append(item)
        elif isinstance(item, TablespaceTar):
            tablespaces.append(item)
        elif isinstance(item, WalTar):
            wal_tars.append(item)
        elif isinstance(item, UnknownTar):
            findings.append(
                Finding(
                    "not-a-backup",
                    Severity.INFO,
                    f"'{item.key}' is a tar archive but holds no PostgreSQL base backup, WAL or tablespace; "
                    "skipped",
                    "move files that are not backups out of the backup folder, or ignore this note",
                    (item.key,),
                )
            )
    sysids = sorted({t.system_identifier for t in tars} | {s.header.system_identifier for s in segments})
    findings.extend(_foreign_systems(tars, segments, wal_tars))
    used: set[str] = set()
    sources = []
    for sysid in sysids:
        own_tars = sorted((t for t in tars if t.system_identifier == sysid), key=lambda t: t.key)
        own_segments = [s for s in segments if s.header.system_identifier == sysid]
        source_findings: list[Finding] = []
        bases = _link_bases(
            own_tars, manifests, backup_histories, tablespaces, wal_tars, used, source_findings
        )
        chosen, partials, seg_findings = _choose_segments(sysid, own_segments)
        source_findings.extend(seg_findings)
        sizes = Counter(s.header.segment_size for s in chosen)
        source = Source(
            system_identifier=sysid,
            bases=tuple(sorted(bases, key=lambda b: b.sort_key)),
            segments=tuple(chosen),
            segment_size=sizes.most_common(1)[0][0] if sizes else DEFAULT_SEGMENT_SIZE,
            findings=tuple(source_findings),
            partials=tuple(partials),
        )
        own_histories = _histories_for(source, histories)
        used.update(h.key for h in own_histories)
        sources.append(replace(source, histories=own_histories))
    findings.extend(_orphans(manifests, tablespaces, wal_tars, histories, used))
    return sources, findings


def _foreign_systems(
    tars: Sequence[BaseBackupTar], segments: Sequence[WalSegment], wal_tars: Sequence[WalTar]
) -> list[Finding]:
    """A folder holding files of several systems: Ferry keeps them apart, but two clusters archiving into one
    folder overwrite each other's segments of the same name, so it deserves a warning."""
    by_folder: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for t in tars:
        by_folder[_folder(t.key)][t.system_identifier].append(t.key)
    for s in segments:
        by_folder[_folder(s.key)][s.header.system_identifier].append(s.key)
    for w in wal_tars:
        if w.segments:
            by_folder[_folder(w.key)][w.segments[0].system_identifier].append(w.key)
    out = []
    for folder, systems in sorted(by_folder.items()):
        if len(systems) < 2:
            continue
        owner = max(systems, key=lambda s: (len(systems[s]), -s))
        for sysid, keys in sorted(systems.items()):
            if sysid == owner:
                continue
            keys = sorted(keys)
            out.append(
                Finding(
                    "foreign-system",
                    Severity.WARNING,
                    f"folder '{folder}' holds {len(systems[owner])} file(s) of system {owner} and "
                    f"{len(keys)} of another cluster, system {sysid}: {quoted(keys)}; Ferry plans each "
                    "system separately and never mixes their files",
                    "give each cluster its own archive folder: clusters archiving into one folder "
                    "overwrite each other's segments of the same name",
                    tuple(keys),
                )
            )
    return out


def _link_bases(
    tars: Sequence[BaseBackupTar],
    manifests: Sequence[BackupManifest],
    backup_histories: Sequence[BackupHistoryFile],
    tablespaces: Sequence[TablespaceTar],
    wal_tars: Sequence[WalTar],
    used: set[str],
    findings: list[Finding],
) -> list[BaseBackup]:
    """Each base tar with its manifest, backup history file, tablespace tars and WAL tar. The same backup
    found twice (a copy in another folder) is used once."""
    out: dict[tuple[int, int, bytes], BaseBackup] = {}
    copies: dict[tuple[int, int, bytes], list[str]] = defaultdict(list)
    for tar in tars:
        folder = _folder(tar.key)
        manifest = _pick(folder, [m for m in manifests if _manifest_fits(m, tar)])
        history = _pick(
            folder,
            [
                h
                for h in backup_histories
                if h.label.start_lsn == tar.label.start_lsn
                and h.label.start_timeline == tar.label.start_timeline
                and h.label.start_time == tar.label.start_time
                and h.label.label == tar.label.label
            ],
        )
        ts, missing = _link_tablespaces(tar, manifest, tablespaces)
        wal = _pick(
            folder,
            [
                w
                for w in wal_tars
                if any(
                    h.system_identifier == tar.system_identifier
                    and h.timeline == tar.label.start_timeline
                    and h.start_lsn <= tar.label.start_lsn < h.end_lsn
                    for h in w.segments
                )
            ],
        )
        base = BaseBackup(tar, manifest, history, ts, (wal,) if wal else (), missing)
        # Every copy's parts are accounted for, so that a copy's manifest is not reported as an orphan.
        used.update(base.files)
        if base.history is not None:
            used.add(base.history.key)
        key = (tar.label.start_lsn, tar.label.start_timeline, tar.label_raw)
        copies[key].append(tar.key)
        best = out.get(key)
        if best is None or _copy_rank(base) < _copy_rank(best):
            out[key] = base
    for key, base in out.items():
        others = [k for k in copies[key] if k != base.tar.key]
        if others:
            findings.append(
                Finding(
                    "duplicate-backup",
                    Severity.INFO,
                    f"base backup '{base.tar.key}' of system {base.tar.system_identifier} is also stored as "
                    f"{quoted(others)}; Ferry uses '{base.tar.key}'",
                    "nothing to do; remove the extra copies if they are not needed",
                    tuple(others),
                )
            )
    return list(out.values())


def _copy_rank(base: BaseBackup) -> tuple[bool, int, bool, str]:
    """Of two copies of one backup: the one with its manifest, then with its tablespace tars, then plain
    over compressed (no decompression to restore it), then the first by name."""
    return (
        base.manifest is None,
        len(base.missing_tablespaces),
        base.tar.compression != "none",
        base.tar.key,
    )


_Part = TypeVar("_Part", BackupManifest, BackupHistoryFile, WalTar)


def _pick(folder: str, candidates: list[_Part]) -> _Part | None:
    """Of several matching parts (copies), the one in the tar's folder, else the first by name."""
    if not candidates:
        return None
    candidates.sort(key=lambda c: (_folder(c.key) != folder, c.key))
    return candidates[0]


def _manifest_fits(m: BackupManifest, tar: BaseBackupTar) -> bool:
    """A manifest belongs to a tar when its WAL range starts at the label's START WAL LOCATION and its
    entry for backup_label has the label's size and checksum (PostgreSQL 17 manifests also carry the
    system identifier)."""
    if m.start_lsn != tar.label.start_lsn or m.timeline != tar.label.start_timeline:
        return False
    if m.system_identifier is not None and m.system_identifier != tar.system_identifier:
        return False
    entry = m.file("backup_label")
    return entry is not None and manifest_matches(entry, tar.label_raw) is not False


def _link_tablespaces(
    tar: BaseBackupTar, manifest: BackupManifest | None, tablespaces: Sequence[TablespaceTar]
) -> tuple[tuple[TablespaceTar, ...], tuple[int, ...]]:
    """Tablespace tars carry no OID and no system identifier. With a manifest, a tar belongs to OID n when
    its first members appear with the same sizes under pg_tblspc/n/ in the manifest. Without one, the
    tablespace tars in the base tar's folder whose PG_<major>_<catversion> folder matches are taken."""
    version_dir = f"PG_{tar.major}_{tar.catalog_version}"
    candidates = [t for t in tablespaces if t.version_dir == version_dir]
    folder = _folder(tar.key)
    wanted = set(tar.tablespace_oids)
    if manifest is None:
        chosen = sorted((t for t in candidates if _folder(t.key) == folder), key=lambda t: t.key)
        return tuple(chosen[: len(wanted)]), tuple(sorted(wanted))[len(chosen) :]
    per_oid: dict[int, dict[str, int]] = defaultdict(dict)
    for f in manifest.files:
        parts = f.path.split("/", 2)
        if len(parts) == 3 and parts[0] == "pg_tblspc" and parts[1].isdigit():
            per_oid[int(parts[1])][parts[2]] = f.size
    wanted |= set(per_oid)
    found: list[TablespaceTar] = []
    missing: list[int] = []
    for oid in sorted(wanted):
        files = per_oid.get(oid, {})
        if files:
            fits = [t for t in candidates if t.sample and all(files.get(p) == s for p, s in t.sample)]
        else:  # an empty tablespace: nothing to compare, its folder decides
            fits = [t for t in candidates if not t.sample and _folder(t.key) == folder]
        fits.sort(key=lambda t: (_folder(t.key) != folder, t.key))
        if fits:
            found.append(fits[0])
        else:
            missing.append(oid)
    return tuple(found), tuple(missing)


def _choose_segments(
    sysid: int, segments: Sequence[WalSegment]
) -> tuple[list[WalSegment], list[WalSegment], list[Finding]]:
    """One file per segment. A file whose name says another segment than its header is an error (another
    tool restoring by name would replay the wrong WAL), and so is one not named as a segment at all
    (restore_command asks by name: nothing would find it); both are still placed by their headers. `*.partial`
    files (the unfinished last segment of a timeline) are never asked for by recovery."""
    findings: list[Finding] = []
    mismatched = sorted((s for s in segments if s.name_mismatch), key=lambda s: s.key)
    for s in mismatched:
        assert s.named_as is not None
        findings.append(
            Finding(
                "wal-name-mismatch",
                Severity.ERROR,
                f"WAL file '{s.key}' of system {sysid} is named as segment "
                f"{s.named_as.name(s.header.segment_size)} but its page header says segment {s.header.name} "
                f"(timeline {s.header.timeline}, LSN {format_lsn(s.header.start_lsn)})",
                "store each segment under its own name: rename the file to what its header says, or copy "
                "the segment again from the server's archive",
                (s.key,),
            )
        )
    for s in sorted((s for s in segments if s.named_as is None and not s.partial), key=lambda s: s.key):
        findings.append(
            Finding(
                "wal-unnamed",
                Severity.ERROR,
                f"WAL file '{s.key}' holds segment {s.header.name} of system {sysid} (timeline "
                f"{s.header.timeline}, LSN {format_lsn(s.header.start_lsn)}) but is not named as a segment: "
                "PostgreSQL's restore_command asks for WAL by name, so no restore finds it",
                f"rename it to {s.header.name} (a .gz, .lz4 or .zst suffix may follow), the name "
                "archive_command's %f gives it",
                (s.key,),
            )
        )
    partials = sorted((s for s in segments if s.partial), key=lambda s: s.key)
    by_segment: dict[SegmentName, list[WalSegment]] = defaultdict(list)
    for s in segments:
        if not s.partial:
            by_segment[s.header.segment].append(s)
    chosen: list[WalSegment] = []
    spare: list[str] = []
    # Prefer a copy under its own name, in the folder that holds most of the archive, then by name.
    folders = Counter(_folder(s.key) for s in segments)
    for name in sorted(by_segment):
        copies = sorted(by_segment[name], key=lambda s: (s.name_mismatch, -folders[_folder(s.key)], s.key))
        chosen.append(copies[0])
        spare.extend(c.key for c in copies[1:])
    if spare:
        findings.append(
            Finding(
                "duplicate-segment",
                Severity.INFO,
                f"{len(spare)} WAL segment(s) of system {sysid} are stored more than once; Ferry uses one "
                f"copy of each (extra copies: {quoted(spare)})",
                "nothing to do; remove the extra copies if they are not needed",
                tuple(spare),
            )
        )
    return chosen, partials, findings


def _histories_for(source: Source, histories: Sequence[TimelineHistory]) -> tuple[TimelineHistory, ...]:
    """History files carry no system identifier. One belongs to a source that has files on its timeline, or
    (for a timeline whose segments are not archived yet) whose files share its folder and whose timelines
    include its newest ancestor. Among copies, the one beside most of the source's segments wins."""
    timelines = set(source.timelines)
    folders = Counter(_folder(s.key) for s in source.segments)
    folders.update(_folder(b.tar.key) for b in source.bases)
    picked: dict[int, TimelineHistory] = {}
    for h in sorted(histories, key=lambda h: (-folders.get(_folder(h.key), 0), h.key)):
        if h.timeline in picked:
            continue
        if h.timeline in timelines or (_folder(h.key) in folders and h.entries[-1].parent in timelines):
            picked[h.timeline] = h
    return tuple(picked[t] for t in sorted(picked))


def _orphans(
    manifests: Sequence[BackupManifest],
    tablespaces: Sequence[TablespaceTar],
    wal_tars: Sequence[WalTar],
    histories: Sequence[TimelineHistory],
    used: set[str],
) -> list[Finding]:
    out = []
    parts: list[tuple[str, str]] = [(m.key, "backup manifest") for m in manifests]
    parts += [(t.key, "tablespace tar") for t in tablespaces]
    parts += [(w.key, "WAL tar") for w in wal_tars]
    for key, what in sorted(parts):
        if key not in used:
            out.append(
                Finding(
                    "backup-part-orphan",
                    Severity.WARNING,
                    f"{what} '{key}' belongs to no base backup in the scanned files",
                    "its base backup tar (base.tar) is missing or damaged: copy it back, or remove the "
                    "leftover parts",
                    (key,),
                )
            )
    for h in sorted(histories, key=lambda h: h.key):
        if h.key not in used:
            out.append(
                Finding(
                    "history-unused",
                    Severity.INFO,
                    f"timeline history file '{h.key}' (timeline {h.timeline}) matches no cluster's WAL in "
                    "the scanned files",
                    "nothing to do unless WAL of that timeline is expected here",
                    (h.key,),
                )
            )
    return out
