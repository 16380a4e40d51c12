"""PostgreSQL restore chains on generated inputs (segment sets with gaps, forks, foreign systems), and the
pure parts of the reader: backup labels, history files, manifests, WAL headers and tar walking."""

from __future__ import annotations

import hashlib
import io
import json
import random
import struct
import tarfile
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferry.core.catalog import RecoveryTarget
from ferry.core.errors import BackupFormatError, UsageError
from ferry.engines.postgres import chain, grouping
from ferry.engines.postgres.engine import PostgresEngine
from ferry.engines.postgres.reader import (
    BackupHistoryFile,
    BackupLabel,
    BackupManifest,
    BaseBackupTar,
    HistoryEntry,
    ManifestFile,
    TablespaceTar,
    TimelineHistory,
    WalHeader,
    WalRange,
    WalSegment,
    WalTar,
    crc32c,
    parse_history,
    parse_label,
    parse_wal_header,
    read_file,
    sniff,
)
from ferry.engines.postgres.tarread import Compression
from ferry.engines.postgres.wal import SegmentName, format_lsn
from ferry.stores.memory import BytesReader

SYS = 7_300_000_000_000_000_001
OTHER = 7_300_000_000_000_000_999
SIZE = 16 * 1024 * 1024
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


# -- builders -----------------------------------------------------------------------------------------


def header(tli: int, segno: int, sysid: int = SYS) -> WalHeader:
    return WalHeader(0xD110, tli, segno * SIZE, sysid, SIZE, 8192)


def seg(tli: int, segno: int, sysid: int = SYS, key: str | None = None, partial: bool = False) -> WalSegment:
    h = header(tli, segno, sysid)
    name = key or f"wal/{h.name}" + (".partial" if partial else "")
    return WalSegment(name, SIZE, h, SegmentName(tli, segno), partial)


def label_text(start: int, tli: int = 1, stop: int | None = None) -> str:
    lines = [
        f"START WAL LOCATION: {format_lsn(start)} (file {SegmentName(tli, start // SIZE).name()})",
        f"CHECKPOINT LOCATION: {format_lsn(start + 0x38)}",
        "BACKUP METHOD: streamed",
        "BACKUP FROM: primary",
        "START TIME: 2024-05-01 12:00:00 UTC",
        "LABEL: pg_basebackup base backup",
        f"START TIMELINE: {tli}",
    ]
    if stop is not None:
        lines += [
            f"STOP WAL LOCATION: {format_lsn(stop)} (file {SegmentName(tli, stop // SIZE).name()})",
            "STOP TIME: 2024-05-01 12:00:05 UTC",
            f"STOP TIMELINE: {tli}",
        ]
    return "\n".join(lines) + "\n"


def base(
    start_seg: int,
    tli: int = 1,
    *,
    sysid: int = SYS,
    folder: str | None = None,
    spans: int = 0,
    embedded: tuple[int, ...] = (),
    oids: tuple[int, ...] = (),
    manifest: bool = True,
) -> list[object]:
    """A base backup starting 0x28 bytes into segment `start_seg` and consistent `spans` segments later,
    with its manifest (by default) in `folder`."""
    start = start_seg * SIZE + 0x28
    end = (start_seg + spans) * SIZE + 0x100
    folder = folder or f"base-{tli}-{start_seg}"
    raw = label_text(start, tli).encode()
    parsed = parse_label(raw.decode())
    tar = BaseBackupTar(
        key=f"{folder}/base.tar",
        size=1000,
        compression=Compression.NONE,
        label=parsed,
        label_raw=raw,
        pg_version="15",
        system_identifier=sysid,
        control_version=1300,
        catalog_version=202209061,
        tablespace_oids=oids,
        embedded_wal=tuple(header(tli, n, sysid) for n in embedded),
    )
    out: list[object] = [tar]
    if manifest:
        files = [ManifestFile("backup_label", len(raw), "CRC32C", crc32c(raw).to_bytes(4, "little").hex())]
        files += [ManifestFile(f"pg_tblspc/{oid}/PG_15_202209061/5/1{oid}", 8192) for oid in oids]
        out.append(BackupManifest(f"{folder}/backup_manifest", 1, (WalRange(tli, start, end),), tuple(files)))
    return out


def tablespace(oid: int, folder: str) -> TablespaceTar:
    return TablespaceTar(
        f"{folder}/{oid}.tar",
        100,
        Compression.NONE,
        "PG_15_202209061",
        ((f"PG_15_202209061/5/1{oid}", 8192),),
    )


def history(tli: int, *switches: tuple[int, int]) -> TimelineHistory:
    """History of `tli`: (parent, switch LSN) pairs, oldest first."""
    entries = tuple(HistoryEntry(p, lsn, "no recovery target specified") for p, lsn in switches)
    return TimelineHistory(f"wal/{tli:08X}.history", tli, entries)


def plan(items: list[object], target: RecoveryTarget | None = None) -> dict[str, Any]:
    dbs, findings = PostgresEngine().plan(items, target)
    return {"databases": [d.to_json() for d in dbs], "findings": [f.to_json() for f in findings]}


def codes(db: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["code"]: f for f in db["findings"]}


def segment_files(db: dict[str, Any]) -> list[str]:
    return [f for s in db["steps"] if s["kind"] == "log" for f in s["files"]]


# -- chains -------------------------------------------------------------------------------------------


def test_linear_chain_is_one_full_and_one_log_run() -> None:
    items = [*base(3, spans=1), *(seg(1, n) for n in range(1, 12))]
    [db] = plan(items)["databases"]
    assert db["executable"] and db["name"] == str(SYS) and db["server"] == "PostgreSQL 15"
    full, log = db["steps"]
    assert full["files"] == ["base-1-3/base.tar", "base-1-3/backup_manifest"]
    assert (full["first_lsn"], full["last_lsn"]) == ("0/3000028", "0/4000100")
    assert log["files"] == [f"wal/{SegmentName(1, n).name()}" for n in range(3, 12)]
    assert (log["first_lsn"], log["last_lsn"], log["timeline"]) == ("0/3000000", "0/C000000", 1)
    assert db["restores_to_lsn"] == "0/C000000" and db["findings"] == []


def test_ten_thousand_segments_are_one_step() -> None:
    items = [*base(2), *(seg(1, n) for n in range(2, 10_002))]
    [db] = plan(items)["databases"]
    assert len(db["steps"]) == 2 and len(db["steps"][1]["files"]) == 10_000
    assert db["steps"][1]["last_lsn"] == format_lsn(10_002 * SIZE)


@settings(max_examples=150, deadline=None)
@given(
    count=st.integers(min_value=2, max_value=40),
    start=st.integers(min_value=0, max_value=10),
    spans=st.integers(min_value=0, max_value=3),
    holes=st.sets(st.integers(min_value=0, max_value=50), max_size=6),
    seed=st.integers(),
)
def test_gaps_end_the_chain_and_are_named(
    count: int, start: int, spans: int, holes: set[int], seed: int
) -> None:
    present = [n for n in range(count) if n not in holes]
    items = [*base(start, spans=spans), *(seg(1, n) for n in present)]
    random.Random(seed).shuffle(items)
    [db] = plan(items)["databases"]
    assert plan(list(reversed(items))) == plan(items)  # the listing order never matters
    first_missing = next(n for n in range(start, count + 100) if n not in present)
    consistent = first_missing > start + spans
    found = codes(db)
    later = [n for n in present if n > first_missing]
    if not consistent:
        assert not db["executable"] and db["steps"] == []
        assert SegmentName(1, first_missing).name() in found["wal-missing-for-backup"]["message"]
        return
    assert segment_files(db) == [f"wal/{SegmentName(1, n).name()}" for n in range(start, first_missing)]
    assert db["restores_to_lsn"] == format_lsn(first_missing * SIZE)
    if later:
        gap = found["wal-gap"]
        assert not db["executable"] and gap["severity"] == "error"
        missing = [SegmentName(1, n).name() for n in range(first_missing, later[0])]
        assert missing[0] in gap["message"] and missing[-1] in gap["message"]
        assert gap["files"][-1] == f"wal/{SegmentName(1, later[0]).name()}"
    else:
        assert db["executable"] and "wal-gap" not in found


@settings(max_examples=100, deadline=None)
@given(
    switch_seg=st.integers(min_value=4, max_value=20),
    offset=st.sampled_from([0, 0x1000, SIZE // 2]),
    tl1_after=st.integers(min_value=0, max_value=4),
    tl2_count=st.integers(min_value=1, max_value=10),
)
def test_forks_follow_the_newest_timeline(
    switch_seg: int, offset: int, tl1_after: int, tl2_count: int
) -> None:
    switch = switch_seg * SIZE + offset
    tl1 = [seg(1, n) for n in range(1, switch_seg + 1 + tl1_after)]
    tl2 = [seg(2, n) for n in range(switch_seg, switch_seg + tl2_count)]
    items = [*base(2), *tl1, *tl2, history(2, (1, switch))]
    [db] = plan(items)["databases"]
    assert db["executable"], db["findings"]
    runs = [(s["timeline"], s["files"]) for s in db["steps"][1:]]
    assert runs == [
        (1, [f"wal/{SegmentName(1, n).name()}" for n in range(2, switch_seg)]),
        (2, [f"wal/{SegmentName(2, n).name()}" for n in range(switch_seg, switch_seg + tl2_count)]),
    ]
    # tl1 segments that start at or after the switch point were written after the branch
    forked = [s.key for s in tl1 if s.header.start_lsn >= switch]
    if forked:
        fork = codes(db)["timeline-fork"]
        assert fork["files"] == forked and fork["severity"] == "warning"
    else:
        assert "timeline-fork" not in codes(db)


def test_a_backup_after_the_switch_point_stays_on_its_timeline() -> None:
    # An old primary that kept running on timeline 1 and took a backup after timeline 2 branched off.
    items = [*base(2), *base(12), *(seg(1, n) for n in range(1, 16)), *(seg(2, n) for n in range(8, 20))]
    items.append(history(2, (1, 8 * SIZE)))
    [db] = plan(items)["databases"]
    # Timeline 2 is the newest: the older backup, before the branch, is the one that reaches it.
    assert db["steps"][0]["files"][0] == "base-1-2/base.tar"
    assert db["steps"][-1]["timeline"] == 2 and db["restores_to_lsn"] == format_lsn(20 * SIZE)
    assert "timeline-fork" in codes(db)


def test_a_timeline_without_its_history_file_is_not_followed() -> None:
    items = [*base(2), *(seg(1, n) for n in range(1, 8)), *(seg(2, n) for n in range(6, 9))]
    [db] = plan(items)["databases"]
    assert db["executable"] and {s["timeline"] for s in db["steps"][1:]} == {1}
    found = codes(db)["history-missing"]
    assert "00000002.history" in found["message"] and found["severity"] == "warning"


def test_timeline_for_matches_recovery_rules() -> None:
    source = grouping.Source(SYS, histories=(history(3, (1, 5 * SIZE + 10), (2, 9 * SIZE)),))
    path = chain.timeline_path(3, source)
    assert [s.timeline for s in path] == [1, 2, 3]
    # the segment holding a switch point comes from the child timeline
    assert [chain.timeline_for(path, n, SIZE) for n in range(3, 11)] == [1, 1, 2, 2, 2, 2, 3, 3]


def test_wal_shipped_with_the_backup_makes_it_consistent() -> None:
    items = [*base(5, spans=1, embedded=(5, 6)), *(seg(1, n) for n in range(7, 10))]
    [db] = plan(items)["databases"]
    assert db["executable"], db["findings"]
    assert segment_files(db)[0] == f"wal/{SegmentName(1, 7).name()}"
    # without the shipped WAL the same archive is short of what the backup needs
    [db] = plan([*base(5, spans=1), *(seg(1, n) for n in range(7, 10))])["databases"]
    assert "wal-missing-for-backup" in codes(db)


def test_latest_backup_with_missing_wal_is_passed_over() -> None:
    items = [*base(2), *base(8), *(seg(1, n) for n in range(2, 8)), *(seg(1, n) for n in range(9, 12))]
    [db] = plan(items)["databases"]
    # base 8 cannot start (segment 8 missing); base 2 reaches segment 7, then the gap
    assert db["steps"][0]["files"][0] == "base-1-2/base.tar"
    found = codes(db)
    assert found["wal-missing-for-backup"]["severity"] == "warning"
    assert "older base backup 'base-1-2/base.tar'" in found["wal-missing-for-backup"]["message"]
    assert found["wal-gap"]["severity"] == "error"


@settings(max_examples=60, deadline=None)
@given(mine=st.sets(st.integers(0, 15), min_size=1), theirs=st.sets(st.integers(0, 15), min_size=1))
def test_systems_are_never_mixed(mine: set[int], theirs: set[int]) -> None:
    items = [*base(0, spans=0), *(seg(1, n) for n in mine)]
    items += [seg(1, n, sysid=OTHER, key=f"wal/other-{n}") for n in theirs]
    out = plan(items)
    names = {d["name"]: d for d in out["databases"]}
    assert set(names) == {str(SYS), str(OTHER)}
    assert all("other-" not in f for s in names[str(SYS)]["steps"] for f in s["files"])
    assert names[str(OTHER)]["steps"] == [] and "no-base-backup" in codes(names[str(OTHER)])
    flagged = [f for f in out["findings"] if f["code"] == "foreign-system"]
    assert len(flagged) == 1 and flagged[0]["severity"] == "warning"


def test_name_mismatch_duplicates_and_partials() -> None:
    wrong = WalSegment("wal/000000010000000000000009", SIZE, header(1, 4), SegmentName(1, 9))
    items = [*base(2), *(seg(1, n) for n in range(2, 8)), wrong, seg(1, 8, partial=True)]
    items.append(seg(1, 3, key="copy/000000010000000000000003"))
    [db] = plan(items)["databases"]
    found = codes(db)
    assert found["wal-name-mismatch"]["severity"] == "error" and not db["executable"]
    assert "000000010000000000000004" in found["wal-name-mismatch"]["message"]
    assert set(found["duplicate-segment"]["files"]) == {"copy/000000010000000000000003", wrong.key}
    assert segment_files(db)[-1] == "wal/000000010000000000000007"  # a .partial is never used


def test_tablespaces_are_linked_through_the_manifest() -> None:
    items = [*base(2, oids=(16384,), folder="b"), tablespace(16384, "b"), *(seg(1, n) for n in range(2, 4))]
    [db] = plan(items)["databases"]
    assert db["executable"] and "b/16384.tar" in db["steps"][0]["files"]
    items = [*base(2, oids=(16384,), folder="b"), *(seg(1, n) for n in range(2, 4))]
    [db] = plan(items)["databases"]
    assert not db["executable"] and "16384.tar" in codes(db)["tablespace-missing"]["message"]


def test_orphans_and_backup_history_files() -> None:
    items = [*base(2, manifest=False), *(seg(1, n) for n in range(2, 5))]
    [db] = plan(items)["databases"]
    assert codes(db)["backup-end-unknown"]["severity"] == "info"
    stop = BackupHistoryFile("wal/x.backup", parse_label(label_text(2 * SIZE + 0x28, stop=3 * SIZE + 0x100)))
    [db] = plan([*items, stop])["databases"]
    assert "backup-end-unknown" not in codes(db) and db["steps"][0]["last_lsn"] == "0/3000100"
    lone = base(9, folder="gone")[1]
    out = plan([*items, lone, WalTar("x/pg_wal.tar", 10, Compression.NONE, (header(1, 30),))])
    assert {f["code"] for f in out["findings"]} == {"backup-part-orphan"}


def test_a_copy_of_a_backup_is_used_once() -> None:
    first, second = base(2, folder="a"), base(2, folder="b")
    items = [*first, *second, *(seg(1, n) for n in range(2, 5))]
    out = plan(items)
    [db] = out["databases"]
    assert db["steps"][0]["files"] == ["a/base.tar", "a/backup_manifest"]
    assert codes(db)["duplicate-backup"]["files"] == ["b/base.tar"] and out["findings"] == []


def test_lsn_targets() -> None:
    items = [*base(2), *base(6), *(seg(1, n) for n in range(2, 12))]
    [db] = plan(items, RecoveryTarget(lsn="0/4ABCDEF"))["databases"]
    assert db["executable"] and db["steps"][0]["files"][0] == "base-1-2/base.tar"
    assert db["steps"][-1]["stop_at"] == "0/4ABCDEF" == db["restores_to_lsn"]
    assert segment_files(db)[-1] == "wal/000000010000000000000004"
    [db] = plan(items, RecoveryTarget(lsn="0/9000000"))["databases"]
    assert db["steps"][0]["files"][0] == "base-1-6/base.tar"
    for unreachable in ("0/1000000", "0/20000000"):
        [db] = plan(items, RecoveryTarget(lsn=unreachable))["databases"]
        assert not db["executable"] and "stop-at-unreachable" in codes(db)
    with pytest.raises(UsageError):
        plan(items, RecoveryTarget(lsn="34000000016700004"))
    assert plan([], RecoveryTarget(lsn="34000000016700004")) == {"databases": [], "findings": []}
    [db] = plan(items, RecoveryTarget(time=T0))["databases"]
    assert codes(db)["stop-at-unsupported"]["severity"] == "error" and len(db["steps"]) == 2


def test_catalog() -> None:
    items = [*base(2), *(seg(1, n) for n in (2, 3, 4, 7, 8))]
    [db], findings = PostgresEngine().catalog(items)
    doc = db.to_json()
    assert doc["counts"] == {"full": 1, "log": 2} and doc["restorable_to_lsn"] == "0/5000000"
    assert doc["restorable_from"] == T0.isoformat() and doc["details"]["timelines"] == [1]
    assert findings == []


# -- reader: pure parts -------------------------------------------------------------------------------


def test_backup_label() -> None:
    label = parse_label(label_text(0x2000028, stop=0x2000100))
    assert label == BackupLabel(
        start_lsn=0x2000028, start_timeline=1, checkpoint_lsn=0x2000060, method="streamed",
        backup_from="primary", start_time=T0, label="pg_basebackup base backup",
        start_file="000000010000000000000002", stop_lsn=0x2000100,
        stop_time=datetime(2024, 5, 1, 12, 0, 5, tzinfo=UTC), stop_timeline=1,
    )  # fmt: skip
    for bad in ("START WAL LOCATION: 0/FF000028 (file 000000010000000000000002)\nSTART TIMELINE: 1\n",
                "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nSTART TIMELINE: 2\n",
                "LABEL: x\n", "START WAL LOCATION: nonsense\n"):  # fmt: skip
        with pytest.raises(Exception, match="backup label"):
            parse_label(bad)


def test_history_files() -> None:
    text = "1\t0/3000158\tno recovery target specified\n\n2\t0/5000000\tbefore 2024-05-01\n"
    assert parse_history(text) == (
        HistoryEntry(1, 0x3000158, "no recovery target specified"),
        HistoryEntry(2, 0x5000000, "before 2024-05-01"),
    )
    [h] = read_file(BytesReader("wal/00000003.history", text.encode()))
    assert isinstance(h, TimelineHistory) and h.timeline == 3 and h.timeline_from_name
    [h] = read_file(BytesReader("wal/copy-of-history", text.encode()))
    assert isinstance(h, TimelineHistory) and h.timeline == 3 and not h.timeline_from_name
    for bad in ("2\t0/5\tx\n1\t0/6\ty\n", "0\t0/5\n", "4\t0/5\n", "# only a comment\n"):
        with pytest.raises(BackupFormatError):
            read_file(BytesReader("wal/00000003.history", bad.encode()))


def _segment_head(tli: int, segno: int, sysid: int = SYS, magic: int = 0xD110) -> bytes:
    return struct.pack("<HHIQI4xQII", magic, 0x0002, tli, segno * SIZE, 0, sysid, SIZE, 8192)


def test_wal_headers() -> None:
    h = parse_wal_header(_segment_head(2, 0x1FF))
    assert h == header(2, 0x1FF) and h.name == "0000000200000001000000FF" and h.pg_version == 15
    assert parse_wal_header(_segment_head(1, 3, magic=0xD116)).pg_version == 17  # type: ignore[union-attr]
    assert parse_wal_header(_segment_head(1, 3, magic=0x1234)) is None
    assert parse_wal_header(_segment_head(1, 3)[:39]) is None
    assert parse_wal_header(b"TAPE" + bytes(60)) is None
    big_endian = struct.pack(">HHIQI4xQII", 0xD110, 2, 1, 3 * SIZE, 0, SYS, SIZE, 8192)
    assert parse_wal_header(big_endian) == WalHeader(0xD110, 1, 3 * SIZE, SYS, SIZE, 8192, ">")
    head = _segment_head(1, 3) + bytes(100)
    with pytest.raises(BackupFormatError, match="unexpected end of data"):
        read_file(BytesReader("wal/000000010000000000000003", head))
    [s] = read_file(BytesReader("wal/000000010000000000000004", head + bytes(SIZE - len(head))))
    assert isinstance(s, WalSegment) and s.name_mismatch


def _manifest(body: dict[str, Any]) -> bytes:
    text = json.dumps(body, indent=0)[:-2] + ",\n"
    return (text + f'"Manifest-Checksum": "{hashlib.sha256(text.encode()).hexdigest()}"}}\n').encode()


def test_manifests() -> None:
    body = {
        "PostgreSQL-Backup-Manifest-Version": 1,
        "Files": [{"Path": "backup_label", "Size": 3}, {"Encoded-Path": "6869", "Size": 1}],
        "WAL-Ranges": [{"Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100"}],
    }
    data = _manifest(body)
    assert sniff(data)
    [m] = read_file(BytesReader("m", data))
    assert isinstance(m, BackupManifest) and (m.start_lsn, m.end_lsn) == (0x2000028, 0x2000100)
    assert [f.path for f in m.files] == ["backup_label", "hi"]
    tampered = data.replace(b'"Size": 3', b'"Size": 4')
    with pytest.raises(BackupFormatError, match="checksum"):
        read_file(BytesReader("m", tampered))
    with pytest.raises(BackupFormatError, match="unexpected end of data"):
        read_file(BytesReader("m", data[: len(data) // 2]))


def _tar(members: dict[str, bytes], fmt: int = tarfile.USTAR_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _control(sysid: int = SYS) -> bytes:
    head = struct.pack("<QII", sysid, 1300, 202209061) + bytes(272)
    return head + crc32c(head).to_bytes(4, "little") + bytes(8192 - len(head) - 4)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_layouts(fmt: int) -> None:
    """A data directory tarred by hand, under a folder, with a long path: still a base backup."""
    root = "data/" + "x" * 120 + "/" if fmt != tarfile.USTAR_FORMAT else "data/"
    members = {
        root + "backup_label": label_text(0x2000028).encode(),
        root + "base/1/PG_VERSION": b"15\n",
        root + "PG_VERSION": b"15\n",
        root + "global/pg_control": _control(),
    }
    data = _tar(members, fmt)
    assert sniff(data[:16384])
    [tar] = read_file(BytesReader("t.tar", data))
    assert isinstance(tar, BaseBackupTar)
    assert (tar.system_identifier, tar.pg_version, tar.catalog_version) == (SYS, "15", 202209061)
    with pytest.raises(BackupFormatError, match="checksum"):
        damaged = bytearray(data)
        damaged[100] ^= 0x01  # inside the first header's name field
        read_file(BytesReader("t.tar", bytes(damaged)))
