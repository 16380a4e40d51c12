"""The PostgreSQL reader and restore chain on a real source: a PostgreSQL 15 cluster archiving WAL into a
store, base backups in every compression and WAL method, a restored copy that promoted to timeline 2, and
damaged copies of the store."""

from __future__ import annotations

import dataclasses
import gzip
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import lz4.frame  # type: ignore[import-untyped]
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from ferry.cli.main import app
from ferry.core.catalog import RecoveryTarget
from ferry.core.errors import BackupFormatError
from ferry.core.findings import Finding, Severity
from ferry.engines.postgres.engine import PostgresEngine
from ferry.engines.postgres.grouping import group_sources
from ferry.engines.postgres.reader import (
    BackupHistoryFile,
    BackupManifest,
    BaseBackupTar,
    TablespaceTar,
    WalSegment,
    WalTar,
    read_file,
    sniff,
)
from ferry.engines.postgres.wal import format_lsn, parse_lsn
from ferry.engines.registry import all_engines
from ferry.engines.sqlserver.reader import sniff as sqlserver_sniff
from ferry.pipeline.catalog import build_plan
from ferry.pipeline.discover import scan
from ferry.stores.local import LocalFileReader, LocalStore
from ferry.stores.memory import BytesReader
from tests.integration.pgsource import (
    PgSource,
    init_only,
    make_root,
    replace_file,
    require_postgres,
    restore_and_promote,
    snapshot,
    start_source,
)

runner = CliRunner()
LSN = re.compile(r"^[0-9A-F]{1,8}/[0-9A-F]{1,8}$")
_FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@dataclass
class Scenario:
    root: Path
    source: PgSource
    sysid: int
    linear: Path  # the store before the fork: timeline 1 only
    forked: Path  # after a restored copy promoted to timeline 2 and archived into the same folder
    mid_lsn: str  # an LSN after the gzip backup and before the lz4 one
    last_linear: str  # the last segment archived before the fork
    other: Path  # data directory of another cluster (another system identifier), never started


@pytest.fixture(scope="module")
def pg() -> Iterator[Scenario]:
    require_postgres()
    with make_root() as root:
        src = start_source(root / "src", root / "store", tablespace=root / "ts")
        copy: PgSource | None = None
        try:
            src.write()
            src.switch()
            plain = src.base_backup("base-plain", "none", "stream", label="nightly")
            src.write()
            src.switch()
            src.base_backup("base-gzip", "gzip", "stream")
            src.write()
            mid = src.current_lsn()
            src.switch()
            src.base_backup("base-lz4", "lz4", "fetch")
            src.write()
            src.switch()
            src.base_backup("base-zstd", "zstd", "none")
            src.write()
            src.switch()
            src.write()
            last = src.switch()
            linear = snapshot(root / "store", root / "linear")
            copy = restore_and_promote(src, plain, root / "copy")
            copy.write()
            copy.switch()
            copy.stop()
            src.write()
            src.switch()
            src.write()
            src.switch()
            forked = snapshot(root / "store", root / "forked")
            other = init_only(root / "other").datadir
            yield Scenario(root, src, src.system_identifier, linear, forked, mid, last, other)
        finally:
            if copy is not None:
                copy.stop()
            src.stop()


def _read(root: Path, rel: str) -> Any:
    with LocalFileReader(rel, root / rel) as reader:
        [item] = read_file(reader)
    return item


def ferry(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _plan(store: Path, target: RecoveryTarget | None = None) -> dict[str, Any]:
    result = scan(LocalStore(store), all_engines())
    doc: dict[str, Any] = build_plan(str(store), result, [PostgresEngine()], target=target).to_json()
    return doc


def _codes(findings: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f["code"]: f for f in findings}


# -- reading ------------------------------------------------------------------------------------------


def test_every_compression_reads_the_same_kind_of_metadata(pg: Scenario) -> None:
    tars = {c: _read(pg.linear, f"base-{c}/base.tar{s}") for c, s in
            [("plain", ""), ("gzip", ".gz"), ("lz4", ".lz4"), ("zstd", ".zst")]}  # fmt: skip
    starts = []
    for name, tar in tars.items():
        assert isinstance(tar, BaseBackupTar), name
        assert tar.compression == ("none" if name == "plain" else name)
        assert tar.system_identifier == pg.sysid
        assert tar.pg_version == "15" and tar.major == 15
        assert tar.catalog_version == tars["plain"].catalog_version and tar.control_version == 1300
        assert tar.label.start_timeline == 1 and tar.label.backup_from == "primary"
        assert tar.label.method == "streamed" and tar.label.checkpoint_lsn is not None
        assert tar.label.start_time is not None and tar.label.start_time.tzinfo is not None
        assert len(tar.tablespace_oids) == 1
        manifest = _read(pg.linear, f"base-{name}/backup_manifest")
        assert isinstance(manifest, BackupManifest)
        assert manifest.start_lsn == tar.label.start_lsn and manifest.end_lsn > manifest.start_lsn
        starts.append(tar.label.start_lsn)
    assert starts == sorted(starts) and len(set(starts)) == 4
    assert tars["plain"].label.label == "nightly"
    assert tars["lz4"].embedded_wal and not tars["plain"].embedded_wal  # -X fetch puts WAL in base.tar
    assert isinstance(_read(pg.linear, "base-gzip/pg_wal.tar.gz"), WalTar)
    ts = _read(
        pg.linear, "base-zstd/" + next(p.name for p in (pg.linear / "base-zstd").glob("[0-9]*.tar.zst"))
    )
    assert isinstance(ts, TablespaceTar) and ts.version_dir == f"PG_15_{tars['plain'].catalog_version}"


def test_one_tar_in_each_compression_gives_identical_metadata(pg: Scenario) -> None:
    data = (pg.linear / "base-plain" / "base.tar").read_bytes()
    with LocalFileReader("base.tar", pg.linear / "base-plain" / "base.tar") as r:
        [plain] = read_file(r)
        assert r.bytes_read < len(data)  # headers hopped over, file data skipped
    packed = {
        "gzip": gzip.compress(data, compresslevel=1),
        "lz4": lz4.frame.compress(data),
        "zstd": zstandard.ZstdCompressor(level=1).compress(data),
    }
    for kind, blob in packed.items():
        [got] = read_file(BytesReader("base.tar", blob))
        assert dataclasses.replace(got, size=plain.size, compression=plain.compression) == plain, kind


def test_wal_segments_are_known_by_their_headers(pg: Scenario) -> None:
    names = sorted(p.name for p in (pg.linear / "wal").iterdir() if len(p.name) == 24)
    assert names and names[-1] == pg.last_linear
    for name in names:
        seg = _read(pg.linear, f"wal/{name}")
        assert isinstance(seg, WalSegment)
        assert seg.header.system_identifier == pg.sysid and seg.header.pg_version == 15
        assert seg.header.name == name and not seg.name_mismatch
        assert seg.header.segment_size == 16 * 1024 * 1024 and seg.header.timeline == 1
    history = [p.name for p in (pg.linear / "wal").iterdir() if p.name.endswith(".backup")]
    assert len(history) == 4
    for name in history:
        item = _read(pg.linear, f"wal/{name}")
        assert isinstance(item, BackupHistoryFile) and item.label.stop_lsn is not None


def test_parts_of_each_backup_are_linked_by_content(pg: Scenario) -> None:
    result = scan(LocalStore(pg.linear), all_engines())
    assert all(f.engine == "postgres" for f in result.files), [f.finding for f in result.files if f.finding]
    [source], findings = group_sources(result.sets_for("postgres"))
    assert findings == []
    assert len(source.bases) == 4
    for base in source.bases:
        folder = base.tar.key.split("/")[0]
        assert base.manifest is not None and base.manifest.key == f"{folder}/backup_manifest"
        assert base.history is not None and base.history.label.stop_lsn == base.end_lsn
        assert len(base.tablespaces) == 1 and base.tablespaces[0].key.startswith(folder + "/")
        assert not base.missing_tablespaces
        assert all(k.startswith(folder + "/") for k in base.files)
    by_folder = {b.tar.key.split("/")[0]: b for b in source.bases}
    assert by_folder["base-plain"].wal_tars and by_folder["base-gzip"].wal_tars
    assert by_folder["base-lz4"].embedded and not by_folder["base-zstd"].embedded


def test_sniffers_do_not_claim_each_others_files(pg: Scenario) -> None:
    for path in pg.linear.rglob("*"):
        if path.is_file():
            head = path.read_bytes()[:16384]
            assert sniff(head), path
            assert not sqlserver_sniff(head), path
    for head in (b"TAPE" + bytes(4000), b"MSSQLBAK" + bytes(4000), b"hello\nworld\n", b"{}", bytes(600)):
        assert not sniff(head)


# -- scan and plan through the CLI --------------------------------------------------------------------


def test_scan_and_plan_json_on_a_real_store(pg: Scenario) -> None:
    code, out, err = ferry("scan", str(pg.linear), "--json")
    assert code == 0, err
    cat = json.loads(out)
    [db] = cat["databases"]
    assert db["engine"] == "postgres" and db["name"] == str(pg.sysid) and db["server"] == "PostgreSQL 15"
    assert db["counts"]["full"] == 4 and db["counts"]["log"] == 1
    assert db["details"]["timelines"] == [1] and db["details"]["pg_version"] == "15"
    assert LSN.match(db["restorable_to_lsn"]) and db["restorable_from"] is not None
    assert cat["findings"] == []

    code, out, err = ferry("plan", str(pg.linear), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["version"] == 1 and doc["findings"] == []
    [db] = doc["databases"]
    assert db["executable"] and db["findings"] == [] and db["name"] == str(pg.sysid)
    full, *logs = db["steps"]
    assert full["kind"] == "full" and [s["kind"] for s in logs] == ["log"]
    assert full["files"][0] == "base-zstd/base.tar.zst" and full["files"][-1] == "base-zstd/backup_manifest"
    assert len(full["files"]) == 3  # base tar, tablespace tar, manifest (-X none: no WAL tar)
    for step in db["steps"]:
        assert LSN.match(step["first_lsn"]) and LSN.match(step["last_lsn"]) and step["stop_at"] is None
        assert step["timeline"] == 1
        for f in step["files"]:
            assert (pg.linear / f).is_file()
    segments = logs[0]["files"]
    assert segments[-1] == f"wal/{pg.last_linear}"
    assert parse_lsn(logs[0]["first_lsn"]) <= parse_lsn(full["first_lsn"])
    assert db["restores_to_lsn"] == logs[-1]["last_lsn"]

    code, out, _ = ferry("plan", str(pg.linear))
    assert code == 0 and "ready" in out and pg.last_linear in out


def test_plan_to_an_lsn(pg: Scenario) -> None:
    doc = _plan(pg.linear, RecoveryTarget(lsn=pg.mid_lsn))
    [db] = doc["databases"]
    assert db["executable"], db["findings"]
    assert db["steps"][0]["files"][0] == "base-gzip/base.tar.gz"  # the latest backup consistent before it
    last = db["steps"][-1]
    assert last["stop_at"] == format_lsn(parse_lsn(pg.mid_lsn)) == db["restores_to_lsn"]
    assert parse_lsn(last["first_lsn"]) <= parse_lsn(pg.mid_lsn) < parse_lsn(last["last_lsn"])

    for lsn in ("F/0", "0/10"):
        [db] = _plan(pg.linear, RecoveryTarget(lsn=lsn))["databases"]
        assert not db["executable"] and "stop-at-unreachable" in _codes(db["findings"])

    [db] = _plan(pg.linear, RecoveryTarget(time=datetime(2030, 1, 1)))["databases"]
    assert not db["executable"] and "stop-at-unsupported" in _codes(db["findings"])


def test_plan_to_an_lsn_through_the_cli(pg: Scenario) -> None:
    code, _, err = ferry("plan", str(pg.linear), "--stop-at-lsn", pg.mid_lsn, "--json")
    assert code == 0, err


# -- damaged stores -----------------------------------------------------------------------------------


def _segments(store: Path) -> list[str]:
    return sorted(p.name for p in (store / "wal").iterdir() if len(p.name) == 24)


def test_a_missing_segment_is_a_gap_naming_it(pg: Scenario, tmp_path: Path) -> None:
    store = snapshot(pg.linear, pg.root / f"gap-{tmp_path.name}")
    names = _segments(store)
    gone = names[-2]
    (store / "wal" / gone).unlink()
    code, out, _ = ferry("plan", str(store), "--json")
    assert code == 1
    [db] = json.loads(out)["databases"]
    assert not db["executable"]
    gap = _codes(db["findings"])["wal-gap"]
    assert gap["severity"] == "error" and gone in gap["message"]
    assert gap["files"] == [f"wal/{names[-3]}", f"wal/{names[-1]}"]
    assert db["steps"][-1]["files"][-1] == f"wal/{names[-3]}"  # the chain stops before the gap


def test_missing_wal_of_the_latest_backup(pg: Scenario, tmp_path: Path) -> None:
    store = snapshot(pg.linear, pg.root / f"start-{tmp_path.name}")
    zstd = _read(store, "base-zstd/base.tar.zst")
    (store / "wal" / zstd.label.start_file).unlink()
    [db] = _plan(store)["databases"]
    codes = _codes(db["findings"])
    missing = codes["wal-missing-for-backup"]
    assert missing["severity"] == "warning" and zstd.label.start_file in missing["message"]
    assert "base-lz4/base.tar.lz4" in missing["message"] or "older base backup" in missing["message"]
    assert codes["wal-gap"]["severity"] == "error"  # the older backup's chain needs that segment too


def test_foreign_system_files_are_flagged_and_never_mixed(pg: Scenario, tmp_path: Path) -> None:
    store = snapshot(pg.linear, pg.root / f"foreign-{tmp_path.name}")
    foreign = "wal/000000010000000000000001"
    replace_file(store / foreign, (pg.other / "pg_wal" / "000000010000000000000001").read_bytes())
    code, out, _ = ferry("plan", str(store), "--json")
    doc = json.loads(out)
    assert code == 1  # the other system has WAL but no base backup
    flagged = _codes(doc["findings"])["foreign-system"]
    assert flagged["files"] == [foreign] and str(pg.sysid) in flagged["message"]
    mine, theirs = sorted(doc["databases"], key=lambda d: d["name"] != str(pg.sysid))
    assert mine["executable"] and all(foreign not in s["files"] for s in mine["steps"])
    assert theirs["steps"] == [] and _codes(theirs["findings"])["no-base-backup"]["severity"] == "error"


def test_timeline_fork_follows_the_newest_timeline(pg: Scenario) -> None:
    code, out, err = ferry("plan", str(pg.forked), "--json")
    assert code == 0, err
    doc = json.loads(out)
    [db] = doc["databases"]
    assert db["executable"]
    timelines = [s["timeline"] for s in db["steps"][1:]]
    assert timelines[0] == 1 and timelines[-1] == 2
    tl2 = db["steps"][-1]["files"]
    assert all(re.search(r"/00000002[0-9A-F]{16}$", f) for f in tl2)
    fork = _codes(db["findings"])["timeline-fork"]
    assert fork["severity"] == "warning" and "timeline 1" in fork["message"]
    assert fork["files"] and all("/00000001" in f for f in fork["files"])
    tl1_after = sorted(set(_segments(pg.forked)) - set(_segments(pg.linear)))
    assert {f"wal/{n}" for n in tl1_after if n.startswith("00000001")} <= set(fork["files"])
    code, out, _ = ferry("scan", str(pg.forked), "--json")
    [cat] = json.loads(out)["databases"]
    assert cat["details"]["timelines"] == [1, 2] and cat["details"]["timeline_path"].startswith("timelines 1")


def test_truncated_and_fake_segments(pg: Scenario, tmp_path: Path) -> None:
    store = snapshot(pg.linear, pg.root / f"bad-{tmp_path.name}")
    names = _segments(store)
    cut = f"wal/{names[-2]}"
    replace_file(store / cut, (store / cut).read_bytes()[: 1024 * 1024])
    fake = "wal/0000000100000000000000F0"
    (store / fake).write_text("not WAL at all\n")
    code, out, _ = ferry("plan", str(store), "--json")
    assert code == 1
    doc = json.loads(out)
    files = {f["files"][0]: f for f in doc["findings"]}
    assert files[cut]["code"] == "backup-truncated" and "unexpected end of data" in files[cut]["message"]
    assert files[fake]["code"] == "not-a-backup"
    [db] = doc["databases"]
    assert names[-2] in _codes(db["findings"])["wal-gap"]["message"]


# -- fuzzing damaged copies ---------------------------------------------------------------------------


def _check_damage(key: str, data: bytes) -> None:
    try:
        read_file(BytesReader(key, data))
    except BackupFormatError as exc:
        assert f"'{key}'" in str(exc) and exc.hint


@pytest.mark.parametrize(
    "rel", ["base-plain/base.tar", "base-gzip/base.tar.gz", "base-plain/backup_manifest"]
)
def test_truncated_copies_are_format_errors(pg: Scenario, rel: str) -> None:
    data = (pg.linear / rel).read_bytes()
    end = len(data) - (1024 if rel.endswith(".tar") else 60)  # a cut inside the final zero blocks is harmless

    @_FUZZ
    @given(cut=st.integers(min_value=0, max_value=end))
    def check(cut: int) -> None:
        with pytest.raises(BackupFormatError) as info:
            read_file(BytesReader(rel, data[:cut]))
        assert info.value.offset <= cut

    check()


@pytest.mark.parametrize(
    "rel", ["base-plain/base.tar", "base-gzip/base.tar.gz", "base-lz4/base.tar.lz4", "base-zstd/base.tar.zst",
            "base-plain/backup_manifest", "base-zstd/16384.tar.zst"],
)  # fmt: skip
def test_random_damage_never_escapes_as_another_exception(pg: Scenario, rel: str) -> None:
    path = pg.linear / rel
    if not path.exists():  # the tablespace OID is the cluster's choice
        path = next((pg.linear / rel.split("/")[0]).glob("[0-9]*.tar.zst"))
    data = path.read_bytes()

    @_FUZZ
    @given(pos=st.integers(min_value=0, max_value=len(data) - 1), junk=st.binary(min_size=1, max_size=64))
    def check(pos: int, junk: bytes) -> None:
        _check_damage(rel, (data[:pos] + junk + data[pos + len(junk) :])[: len(data)])

    check()


def _checksum_text(field: bytes) -> bytes:
    """What every tar reader takes from a header's checksum field: the digits before the first NUL, with
    the spaces around them ignored (writers differ: `007342\\0 `, ` 7342\\0 `, `007342 \\0`)."""
    return field.split(b"\0", 1)[0].strip(b" ")


def test_flipped_bits_in_tar_headers_are_caught(pg: Scenario) -> None:
    """Every tar header carries a checksum: any flipped bit in one is an error naming the file. The only
    exception is a flip inside the checksum field's own padding (a leading `0` that becomes a space, the
    terminator, the byte after it), which leaves the header meaning exactly what it did: it must read."""
    path = pg.linear / "base-plain" / "base.tar"
    data = path.read_bytes()
    with tarfile.open(path) as t:
        headers = [m.offset for m in t.getmembers()]

    @_FUZZ
    @given(pick=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
    def check(pick: int, bit: int) -> None:
        header = headers[pick % len(headers)]
        pos = header + pick // len(headers) % 512
        damaged = bytearray(data)
        damaged[pos] ^= 1 << bit
        field = slice(header + 148, header + 156)
        inside = field.start <= pos < field.stop
        if inside and _checksum_text(data[field]) == _checksum_text(bytes(damaged[field])):
            read_file(BytesReader("base.tar", bytes(damaged)))
            return
        with pytest.raises(BackupFormatError) as info:
            read_file(BytesReader("base.tar", bytes(damaged)))
        assert "'base.tar'" in str(info.value)

    check()


def test_damaged_small_files(pg: Scenario) -> None:
    seg = (pg.linear / "wal" / pg.last_linear).read_bytes()
    backup = next((pg.linear / "wal").glob("*.backup")).read_bytes()
    history = (pg.forked / "wal" / "00000002.history").read_bytes()
    control = (pg.other / "global" / "pg_control").read_bytes()

    @_FUZZ
    @given(
        which=st.sampled_from(["seg", "backup", "history"]),
        pos=st.integers(min_value=0, max_value=400),
        junk=st.binary(min_size=1, max_size=16),
        cut=st.integers(min_value=1, max_value=1 << 25),
    )
    def check(which: str, pos: int, junk: bytes, cut: int) -> None:
        data = {"seg": seg, "backup": backup, "history": history}[which]
        damaged = (data[:pos] + junk + data[pos + len(junk) :])[: min(cut, len(data))]
        _check_damage(f"wal/{which}", damaged)

    check()
    # pg_control carries a CRC-32C of ControlFileData (288 bytes in PostgreSQL 15): flips there are caught
    from ferry.engines.postgres.reader import parse_control

    assert parse_control(control)[0] != 0
    for pos in (0, 9, 100, 280):
        flipped = bytearray(control)
        flipped[pos] ^= 0x10
        with pytest.raises(Exception, match=r"checksum|pg_control_version"):
            parse_control(bytes(flipped))


def test_findings_are_well_formed(pg: Scenario) -> None:
    doc = _plan(pg.forked)
    for db in doc["databases"]:
        for f in db["findings"]:
            Finding(f["code"], Severity(f["severity"]), f["message"], f["hint"], tuple(f["files"]))
            assert f["hint"] and str(pg.sysid) in f["message"]
