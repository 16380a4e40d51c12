"""Benchmark: how fast Ferry scans a large backup store, against reading every file whole.

    .venv/bin/python bench/scan.py [--files N] [--runs 5] [--data DIR] [--keep]

It builds a store of N real SQL Server backup files (default 10,000, about 3.8 GB) from the corpus in
$FERRY_SQLSERVER_CORPUS (default ../shared/sqlserver-backups), warms the page cache, then times, interleaved
and `--runs` times each: the in-process scan with 1 and 4 worker threads, and a plain whole-file read of
the same files. It also times the `ferry scan --json` command once, end to end. It prints the medians,
the bytes each scan read per file, and PASS/FAIL against the targets. See bench/README.md.

The store is a copy of the corpus, so every byte Ferry parses was written by a real SQL Server. To make
thousands of distinct databases out of ~25, each copy of a database gets a new name and new GUIDs, patched
in place at the same offsets in every file of that copy (see `Source.patch`).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import hashlib
import json
import mmap
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from ferry.core.errors import BackupFormatError
from ferry.engines.sqlserver.engine import SqlServerEngine
from ferry.engines.sqlserver.headers import BackupSet
from ferry.engines.sqlserver.media import PagedSource, walk_blocks
from ferry.engines.sqlserver.mtf import u16, u32
from ferry.engines.sqlserver.reader import read_backup_sets, sniff
from ferry.pipeline.discover import ScanResult, scan
from ferry.stores.base import RangeReader
from ferry.stores.local import LocalStore

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
# Bump when the generated store changes shape: a store built by another version is rebuilt, not reused.
GENERATOR = "scan-bench-1"
SEED = 20240611
# ~4 GB for 10,000 files. Full backups in the corpus weigh 1.4-3.8 MB, logs 16-420 KB: the mix of
# databases is steered so the mean file stays near this, which is also what a log-heavy real store looks like.
TARGET_BYTES_PER_FILE = 380_000
# Share of compressed (MSSQLBAK) files. They come from one 3-way striped database and cannot be patched
# (their headers sit inside compressed chunks), so they are copied as is and form one database.
COMPRESSED_SHARE = 0.075
CHUNK = 1 << 20
BUILDING = ".scan-store-building"  # renamed to "store" once built and verified
TARGET_FILES_PER_S = 5000  # issue 11: on this 2-core machine, warm cache
TARGET_BYTES_PER_UNCOMPRESSED_FILE = 64 * 1024

KINDS = {"D": "FULL", "I": "DIFF", "L": "LOG"}
# Offsets of the GUIDs that tie a database's backups together, from the format doc (§2.4, §2.5, §3.1,
# §3.3). They are all rewritten through one mapping per copy, so every equality between them (stripes
# sharing a BackupSetGUID, a differential's base = its full's BackupSetGUID, fork ids) survives.
SSET_GUIDS = (0x64,)  # BackupSetGUID. The DBLK checksum covers only 0x00..0x31.
SCIN_GUIDS = (0x7C, 0x9C, 0xB8, 0xC8, 0xE0)  # DatabaseGUID, RecoveryForkID, FirstForkID, DiffBase, Family
SFIN_GUIDS = (0xAA, 0xBA)  # file-level DifferentialBaseGUID, UniqueId
SCIN_NAME_TA = 0x68
NAME_SUFFIX_CHARS = 4
BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def main() -> int:
    args = parse_args()
    corpus = Path(os.environ.get("FERRY_SQLSERVER_CORPUS") or REPO.parent / "shared" / "sqlserver-backups")
    if not corpus.is_dir():
        raise SystemExit(f"error: no corpus at {corpus}: set FERRY_SQLSERVER_CORPUS to the backup folder")
    if args.files < 1 or args.runs < 1:
        raise SystemExit("error: --files and --runs must be at least 1")
    data = Path(args.data).resolve()
    store_dir = data / "store"
    engine = SqlServerEngine()

    print(f"Ferry scan benchmark  (python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    store_info = ensure_store(corpus, data, args.files)
    store = LocalStore(store_dir)
    try:
        measure(store, store_dir, store_info, engine, args.runs)
    finally:
        if args.keep:
            print(f"\ndata kept in {data} (the next run reuses it if built with the same parameters)")
        else:
            remove_store(data)
            print(f"\ndata removed from {data} (--keep leaves it for the next run)")
    return 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=10_000, help="files in the store (default 10,000)")
    p.add_argument("--runs", type=int, default=5, help="timed runs of each measurement (default 5)")
    p.add_argument("--data", default=str(BENCH / ".data"), help="where the store is built (bench/.data)")
    p.add_argument("--keep", action="store_true", help="keep the store afterwards, for the next run")
    return p.parse_args()


# ---------------------------------------------------------------------------------------------------
# The corpus: each database becomes a template, each file a Source with its patch locations.


@dataclass(frozen=True)
class Source:
    key: str
    data: bytes
    set_id: str  # BackupSetGUID: the stripes of one backup share it
    kind: str  # FULL, DIFF or LOG
    start: datetime | None
    stripes: int
    stripe: int
    # Where the database name lies (byte offset, UTF-16 code units), once per SCIN copy.
    names: tuple[tuple[int, int], ...] = ()
    # Where a non-zero GUID lies. Zero GUIDs mean "none" and stay zero.
    guids: tuple[int, ...] = ()

    def patch(self, salt: bytes, suffix: str) -> bytes:
        """The file as if taken from another database: same layout, same length, the name's last
        characters replaced by `suffix` and every GUID replaced by a keyed hash of itself. Both SCIN copies
        (MSCI at the start, MSLS at the end) get identical bytes: the reader compares them to catch damage."""
        buf = bytearray(self.data)
        tail = suffix.encode("utf-16-le")
        for off, chars in self.names:
            end = off + 2 * chars
            buf[end - len(tail) : end] = tail
        for off in self.guids:
            buf[off : off + 16] = hashlib.blake2b(buf[off : off + 16], digest_size=16, salt=salt).digest()
        return bytes(buf)


@dataclass
class Template:
    server: str
    database: str
    files: list[Source] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(len(f.data) for f in self.files)

    @property
    def has_full(self) -> bool:
        return any(f.kind == "FULL" for f in self.files)


def load_corpus(corpus: Path) -> tuple[list[Template], list[Source]]:
    """Databases of the uncompressed corpus files, and the compressed files (kept apart: not patchable)."""
    groups: dict[tuple[str, str, str], Template] = {}
    compressed: list[Source] = []
    root = LocalStore(corpus)
    for info in root.iter_objects():
        with root.open(info.key) as reader:
            if not sniff(reader.read(0, 16)):
                continue  # README and other non-backups
            try:
                sets = read_backup_sets(reader)
            except BackupFormatError:
                continue  # a damaged sample is no template (the corpus has none today)
            if len(sets) != 1:
                continue  # appended sets: none in the corpus, and the patching assumes one per file
            s = sets[0]
            src = Source(
                key=info.key,
                data=Path(corpus, info.key).read_bytes(),
                set_id=str(s.backup_set_guid),
                kind=KINDS.get(s.type_letter, "FULL"),
                start=s.backup_start,
                stripes=s.family_count,
                stripe=s.family_sequence_number,
            )
            if s.compressed:
                compressed.append(src)
                continue
            names, guids = patch_points(reader, s.database_name)
            key = (s.server_name, s.database_name, str(s.family_guid))
            template = groups.setdefault(key, Template(s.server_name, s.database_name))
            template.files.append(replace(src, names=names, guids=guids))
    # Names of 3+ characters leave room for 36**3 = 46,656 copies; shorter ones would run out quickly.
    templates = [t for t in groups.values() if len(t.database) >= 3]
    for t in templates:
        t.files.sort(key=lambda f: (f.start or datetime.min, f.key))
    return sorted(templates, key=lambda t: (t.server, t.database)), sorted(compressed, key=lambda f: f.key)


def patch_points(reader: RangeReader, name: str) -> tuple[tuple[tuple[int, int], ...], tuple[int, ...]]:
    """Absolute offsets of the database name and of every non-zero GUID in one uncompressed file, found by
    walking its blocks the way the reader does (stream headers give where each MQCI stream's data lies)."""
    names: list[tuple[int, int]] = []
    guids: list[int] = []
    src = PagedSource(reader)
    for block in walk_blocks(src):
        kind, base = block.header.type, block.header.offset
        if kind == b"SSET":
            guids.extend(base + off for off in SSET_GUIDS)
        for sh, data in block.streams:
            if data is None:
                continue
            at = sh.data_offset
            if sh.id == b"RAID":
                guids.append(at)  # MediaSetId, shared by the stripes of one set
            elif sh.id == b"MQCI" and data[:4] == b"SCIN":
                scin_len = u32(data, 4)
                size, off = u16(data, SCIN_NAME_TA), u16(data, SCIN_NAME_TA + 2)
                if data[off : off + size].decode("utf-16-le") != name:
                    raise SystemExit(f"error: database name not where expected in {reader.key}")
                names.append((at + off, size // 2))
                guids.extend(at + o for o in SCIN_GUIDS)
                pos = scin_len
                while pos + 8 <= len(data):  # SFGI/SFIN records follow the SCIN
                    tag, length = data[pos : pos + 4], u32(data, pos + 4)
                    if length < 8:
                        break
                    if tag == b"SFIN" and length >= 0xCA:
                        guids.extend(at + pos + o for o in SFIN_GUIDS)
                    pos += length
    whole = src.get(0, src.size)
    return tuple(names), tuple(o for o in guids if any(whole[o : o + 16]))


# ---------------------------------------------------------------------------------------------------
# Building the store.


@dataclass(frozen=True)
class StoreInfo:
    files: int
    bytes: int
    compressed_files: int
    databases: int
    templates: int
    built_seconds: float | None  # None: reused


def ensure_store(corpus: Path, data: Path, files: int) -> StoreInfo:
    store_dir, manifest = data / "store", data / "manifest.json"
    params = {
        "generator": GENERATOR,
        "files": files,
        "seed": SEED,
        "target_bytes_per_file": TARGET_BYTES_PER_FILE,
        "compressed_share": COMPRESSED_SHARE,
        "corpus": str(corpus.resolve()),
        "corpus_digest": corpus_digest(corpus),
    }
    if manifest.is_file() and store_dir.is_dir():
        saved = json.loads(manifest.read_text())
        if saved.get("params") == params and listing_matches(store_dir, saved["files"], saved["bytes"]):
            print(f"store:   reusing {store_dir} (built earlier with the same parameters)")
            return StoreInfo(
                saved["files"],
                saved["bytes"],
                saved["compressed_files"],
                saved["databases"],
                saved["templates"],
                None,
            )
        print(f"store:   {store_dir} was built with other parameters or has changed: rebuilding")
    elif store_dir.exists():
        raise SystemExit(
            f"error: {store_dir} exists but was not made by this benchmark; remove it or use --data"
        )
    remove_store(data)
    data.mkdir(parents=True, exist_ok=True)
    print(f"store:   building {files:,} files in {store_dir} from {corpus} ...", flush=True)
    t0 = time.perf_counter()
    info = build_store(corpus, data / BUILDING, files)
    (data / BUILDING).rename(store_dir)
    seconds = time.perf_counter() - t0
    manifest.write_text(json.dumps({"params": params, **info.__dict__, "built_seconds": seconds}, indent=1))
    return StoreInfo(**{**info.__dict__, "built_seconds": seconds})


def remove_store(data: Path) -> None:
    """Remove only what this benchmark writes under `data`, never the folder itself."""
    for name in ("store", BUILDING):
        if (data / name).exists():
            shutil.rmtree(data / name)
    (data / "manifest.json").unlink(missing_ok=True)


def corpus_digest(corpus: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(corpus.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(corpus)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def listing_matches(root: Path, files: int, size: int) -> bool:
    n = total = 0
    for folder, _dirs, names in os.walk(root):
        for name in names:
            n += 1
            total += os.stat(os.path.join(folder, name)).st_size
    return (n, total) == (files, size)


def build_store(corpus: Path, root: Path, files: int) -> StoreInfo:
    rng = random.Random(SEED)
    templates, compressed = load_corpus(corpus)
    if not templates or not any(len(t.files) == 1 for t in templates):
        raise SystemExit(f"error: the corpus at {corpus} has no single-file database to fill the store with")
    writer = Writer(root)

    # Compressed sets first: whole stripe sets (3 files), alternately the full and the differential.
    sets: dict[str, list[Source]] = {}
    for src in compressed:
        sets.setdefault(src.set_id, []).append(src)
    comp_sets = sorted(sets.values(), key=lambda s: s[0].key)
    comp_files = 0
    want = round(files * COMPRESSED_SHARE) if comp_sets else 0
    i = 0
    while comp_sets and comp_files + len(comp_sets[i % len(comp_sets)]) <= want:
        group = comp_sets[i % len(comp_sets)]
        spread = rng.random() < 0.5
        for src in group:
            name = Path(src.key).name
            if spread:  # stripes on different disks, as `BACKUP ... TO DISK=a, DISK=b, DISK=c` often does
                writer.write(f"compressed/disk{src.stripe}/set{i:04d}_{name}", src.data)
            else:
                writer.write(f"compressed/together/set{i:04d}/{name}", src.data)
        comp_files += len(group)
        i += 1

    # Then uncompressed databases, each a patched copy of one corpus database with all its files. The pick
    # is random but keeps the running mean file size at the target, so the store stays within budget:
    # heavy databases (big fulls) while there is room, log-rich ones otherwise. Databases without a full
    # (orphan logs and differentials, which real stores have too) are rarer.
    remaining = files - comp_files
    budget_mean = TARGET_BYTES_PER_FILE
    used: Counter[str] = Counter()
    n_db = total_uncompressed = written = 0
    while written < remaining:
        left = remaining - written
        fits = [t for t in templates if len(t.files) <= left]
        in_budget = [t for t in fits if total_uncompressed + t.size <= budget_mean * (written + len(t.files))]
        pool = in_budget or fits
        weights = [1.0 if t.has_full else 0.1 for t in pool]
        t = rng.choices(pool, weights)[0]
        write_database(writer, t, n_db, rng)
        used[f"{t.server}/{t.database}"] += 1
        n_db += 1
        written += len(t.files)
        total_uncompressed += t.size
    if written != remaining:
        raise SystemExit(f"error: built {written} uncompressed files, expected {remaining}")

    expected_dbs = n_db + (1 if comp_files else 0)
    info = StoreInfo(writer.files, writer.bytes, comp_files, expected_dbs, len(used), None)
    verify(scan(LocalStore(root), [SqlServerEngine()], workers=4), info, "verify")
    return info


class Writer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = self.bytes = 0
        self._dirs: set[Path] = set()
        self._used: set[str] = set()

    def write(self, key: str, data: bytes) -> None:
        stem, n = key, 1
        while key in self._used:  # two backups that would get the same name: suffix like a copy job does
            n += 1
            key = f"{stem}~{n}"
        self._used.add(key)
        path = self.root / key
        if path.parent not in self._dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(path.parent)
        path.write_bytes(data)
        self.files += 1
        self.bytes += len(data)


def write_database(writer: Writer, t: Template, n: int, rng: random.Random) -> None:
    """One patched copy of template `t`: database number `n`, in a layout picked at random."""
    width = min(NAME_SUFFIX_CHARS, len(t.database))
    suffix = base36(n, width)
    name = t.database[:-width] + suffix
    salt = n.to_bytes(8, "little") + b"ferry-bn"  # blake2b salts are 16 bytes
    layout = rng.choices(LAYOUTS, [0.40, 0.25, 0.20, 0.15])[0]
    spread = rng.random() < 0.5  # stripes of one set on different disks/folders, or together
    server = t.server.replace("\\", "$")  # how Ola Hallengren's scripts write SERVER\INSTANCE in paths
    bucket = rng.randrange(20)
    for i, src in enumerate(t.files):
        writer.write(layout(server, name, src, i, bucket, spread, rng), src.patch(salt, suffix))


def base36(n: int, width: int) -> str:
    if n >= 36**width:
        raise SystemExit(f"error: too many databases for a {width}-character name suffix")
    out = ""
    for _ in range(width):
        n, r = divmod(n, 36)
        out = BASE36[r] + out
    return out


def _stamp(src: Source) -> str:
    return src.start.strftime("%Y%m%d_%H%M%S") if src.start else "00000000_000000"


def _ext(src: Source) -> str:
    return "trn" if src.kind == "LOG" else "bak"


def _stripe(src: Source) -> str:
    return f"_{src.stripe}" if src.stripes > 1 else ""


def ola(server: str, db: str, src: Source, i: int, bucket: int, spread: bool, rng: random.Random) -> str:
    # Ola Hallengren's DatabaseBackup: Dir\Server$Instance\Db\FULL\Server$Instance_Db_FULL_date_time.bak;
    # striped over several directories, stripe k goes to the k-th directory.
    root = f"ola-disk{src.stripe}" if spread and src.stripes > 1 else "ola"
    name = f"{server}_{db}_{src.kind}_{_stamp(src)}{_stripe(src)}.{_ext(src)}"
    return f"{root}/{server}/{db}/{src.kind}/{name}"


def flat(server: str, db: str, src: Source, i: int, bucket: int, spread: bool, rng: random.Random) -> str:
    # One folder per share holding many databases of many servers, as plain maintenance plans do.
    root = f"flat/share{bucket:02d}" + (f"/stripe{src.stripe}" if spread and src.stripes > 1 else "")
    return f"{root}/{db}_{src.kind.lower()}_{_stamp(src)}{_stripe(src)}.{_ext(src)}"


def deep(server: str, db: str, src: Source, i: int, bucket: int, spread: bool, rng: random.Random) -> str:
    # Archive trees: region/site/server/yyyy/mm/dd/db/kind/..., nine levels down.
    region = ("eu-west", "us-east", "ap-south", "sa-east")[bucket % 4]
    day = src.start.strftime("%Y/%m/%d") if src.start else "0000/00/00"
    stripe = f"/s{src.stripe}" if spread and src.stripes > 1 else ""
    folder = f"deep/{region}/dc{bucket % 3}/{server}/{day}/{db}/{src.kind.lower()}{stripe}"
    return f"{folder}/{_stamp(src)}_{i}.{_ext(src)}"


def odd(server: str, db: str, src: Source, i: int, bucket: int, spread: bool, rng: random.Random) -> str:
    # Names a scan must not rely on: no extension, rotation suffixes, spaces, hashes, upper case.
    stripe = f"s{src.stripe}/" if spread and src.stripes > 1 else ""
    style = rng.randrange(5)
    if style == 0:
        name = f"{db}_{src.kind.lower()}_{i}"
    elif style == 1:
        name = f"{db}.{_ext(src)}.{i}"
    elif style == 2:
        name = f"{db} {src.kind.lower()} backup ({i})"
    elif style == 3:
        name = hashlib.sha1(f"{db}/{src.key}/{i}".encode()).hexdigest()[:16]
    else:
        name = f"{db.upper()}_{i}.{_ext(src).upper()}"
    return f"odd/bin{bucket:02d}/{stripe}{name}"


Layout = Callable[[str, str, Source, int, int, bool, random.Random], str]
LAYOUTS: list[Layout] = [ola, flat, deep, odd]


def verify(result: ScanResult, info: StoreInfo, label: str) -> None:
    """The store must read as intended: every file a backup, none damaged by the patching (the reader
    compares both header copies), and exactly one database per copy plus the compressed one."""
    codes = Counter(f.finding.code for f in result.files if f.finding is not None)
    keys = {(s.server_name, s.database_name, s.family_guid) for s in backup_sets(result)}
    problems = []
    if len(result.files) != info.files:
        problems.append(f"{len(result.files)} files listed, {info.files} written")
    if codes:
        problems.append(f"findings: {dict(codes)}")
    if len(keys) != info.databases:
        problems.append(f"{len(keys)} distinct databases, {info.databases} expected")
    if problems:
        raise SystemExit("error: the generated store is not as intended: " + "; ".join(problems))
    print(
        f"{label + ':':<9}{len(result.files):,} files read, {len(keys):,} distinct databases as expected, "
        "0 backup-unreadable (no file-level finding at all)"
    )


def backup_sets(result: ScanResult) -> Iterator[BackupSet]:
    for f in result.files:
        for s in f.sets:
            if isinstance(s, BackupSet):
                yield s


# ---------------------------------------------------------------------------------------------------
# Measuring.


@dataclass
class Timing:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, wall: float, cpu: float) -> None:
        self.wall.append(wall)
        self.cpu.append(cpu)

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def median_cpu(self) -> float:
        return statistics.median(self.cpu)


def measure(store: LocalStore, root: Path, info: StoreInfo, engine: SqlServerEngine, runs: int) -> None:
    paths = [root / o.key for o in store.iter_objects()]
    how = "reused" if info.built_seconds is None else f"built in {info.built_seconds:.1f} s"
    print(
        f"store:   {info.files:,} files, {gib(info.bytes)} ({info.compressed_files:,} compressed), "
        f"{info.databases:,} distinct databases from {info.templates} corpus databases; {how}"
    )
    print(f"disk:    {gib(disk_usage(root))} allocated under {root}")

    # Warm-up, untimed. Reading every file once puts the whole store in the page cache, so the scan and
    # the reference both read from memory: the figures are CPU and parsing cost, not disk speed. One scan
    # of each kind also loads code paths, fills allocator arenas and starts threads before the clock runs.
    t0 = time.perf_counter()
    read_whole(paths)
    first = scan(store, [engine], workers=1)
    scan(store, [engine], workers=4)
    resident = page_cache_residency(paths)
    cached = f"; mincore: {resident:.1%} of the store's pages are cached" if resident is not None else ""
    warm_s = time.perf_counter() - t0
    print(f"warm:    every file read once and each scan run once before timing ({warm_s:.1f} s){cached}")
    print("         so scans and whole-file read all run from the page cache: CPU/parsing cost, not disk")

    verify(first, info, "check")  # again on every run: a reused store may have been tampered with
    unc = [f.bytes_read for f in first.files if not is_compressed(f.sets)]
    comp = [f.bytes_read for f in first.files if is_compressed(f.sets)]
    del first

    # Interleaved, one of each per round, so drift (frequency, noisy neighbours) hits all three alike.
    steps: list[tuple[str, Callable[[], int], int]] = [
        ("scan1", lambda: len(scan(store, [engine], workers=1).files), info.files),
        ("scan4", lambda: len(scan(store, [engine], workers=4).files), info.files),
        ("read", lambda: read_whole(paths), info.bytes),
    ]
    timings = {name: Timing() for name, _, _ in steps}
    for _ in range(runs):
        for name, fn, expected in steps:
            gc.collect()  # garbage of the previous step is not this step's cost
            w0, c0 = time.perf_counter(), time.process_time()
            got = fn()
            timings[name].add(time.perf_counter() - w0, time.process_time() - c0)
            if got != expected:
                raise SystemExit(f"error: {name} saw {got:,}, expected {expected:,}")
    cli_wall, cli_rc, cli_dbs = run_cli(root)

    n, size = info.files, info.bytes
    read_rate = n / timings["read"].median
    print()
    print(f"medians of {runs} interleaved runs over {n:,} files, {size:,} bytes ({gib(size)})")
    print()
    print(
        f"  {'measurement':<40}{'wall s':>8}{'CPU s':>8}{'files/s':>9}{'MiB/s':>8}  scan speed / read speed"
    )
    print("  " + "-" * 98)
    rows = (
        ("scan, in-process, workers=1", "scan1"),
        ("scan, in-process, workers=4 (threads)", "scan4"),
        ("reference: whole-file read, 1 MiB chunks", "read"),
    )
    for label, key in rows:
        t = timings[key]
        rate = n / t.median
        ratio = "1 (reference)" if key == "read" else speed_ratio(rate / read_rate)
        mibs = size / t.median / 2**20
        print(f"  {label:<40}{t.median:>8.3f}{t.median_cpu:>8.3f}{rate:>9,.0f}{mibs:>8,.0f}  {ratio}")
    cli = f"exit {cli_rc}, {cli_dbs:,} databases in its JSON" + (
        "" if cli_dbs == info.databases else f" (expected {info.databases:,})"
    )
    label, cli_rate = "ferry scan DIR --json (CLI, run once)", n / cli_wall
    print(f"  {label:<40}{cli_wall:>8.3f}{'':>8}{cli_rate:>9,.0f}{'':>8}  {cli}")
    print(
        "  In-process scans include listing the store; the CLI adds interpreter start-up, the catalog and the"
    )
    print("  JSON; the whole-file read gets the file list ready-made. CPU s = process CPU time, all threads.")
    print()
    print(f"  {'bytes read per file':<40}{'mean':>12}{'max':>12}{'files':>8}")
    print("  " + "-" * 72)
    for label, values in (("scan, uncompressed files", unc), ("scan, compressed files (MSSQLBAK)", comp)):
        if values:
            print(f"  {label:<40}{kib(statistics.mean(values)):>12}{kib(max(values)):>12}{len(values):>8,}")
    print(f"  {'reference: whole-file read':<40}{kib(size / n):>12}{kib(max_size(paths)):>12}{n:>8,}")
    print()
    s1, s4 = n / timings["scan1"].median, n / timings["scan4"].median
    worst = max(unc, default=0)
    checks = (
        (
            f"scan >= {TARGET_FILES_PER_S:,} files/s, workers=1",
            f"{s1:,.0f} files/s",
            s1 >= TARGET_FILES_PER_S,
        ),
        (
            f"scan >= {TARGET_FILES_PER_S:,} files/s, workers=4",
            f"{s4:,.0f} files/s",
            s4 >= TARGET_FILES_PER_S,
        ),
        (
            "<= 64 KiB read per uncompressed file (max)",
            kib(worst),
            worst <= TARGET_BYTES_PER_UNCOMPRESSED_FILE,
        ),
    )
    print(f"  {'target':<46}{'measured':>16}")
    print("  " + "-" * 72)
    for label, value, ok in checks:
        print(f"  {label:<46}{value:>16}   {'PASS' if ok else 'FAIL'}")
    measure_cold(store, paths, engine, info, runs)


DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def drop_page_cache() -> bool:
    """Empty the kernel's page cache (root only) so the next read comes from the disk."""
    try:
        os.sync()
        DROP_CACHES.write_text("3\n")
    except OSError:
        return False
    return True


def measure_cold(
    store: LocalStore, paths: list[Path], engine: SqlServerEngine, info: StoreInfo, runs: int
) -> None:
    """The same scan and whole-file read, each started with an empty page cache: what a DBA's first scan
    of a backup share costs. Here the scan's few small reads per file meet the disk's latency, and the
    whole-file read meets its bandwidth."""
    print()
    if not drop_page_cache():
        print("cold:    skipped: emptying the page cache needs root (/proc/sys/vm/drop_caches)")
        return
    scans, reads = Timing(), Timing()
    for _ in range(runs):
        for timing, fn in ((scans, lambda: len(scan(store, [engine], workers=1).files)),
                           (reads, lambda: read_whole(paths))):  # fmt: skip
            gc.collect()
            drop_page_cache()
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            timing.add(time.perf_counter() - w0, time.process_time() - c0)
    n, size = info.files, info.bytes
    print(f"cold page cache (emptied before each step), medians of {runs} interleaved runs")
    print(
        f"  {'measurement':<40}{'wall s':>8}{'CPU s':>8}{'files/s':>9}{'MiB/s':>8}  scan speed / read speed"
    )
    print("  " + "-" * 98)
    read_rate = n / reads.median
    for label, t in (("scan, in-process, workers=1", scans), ("reference: whole-file read", reads)):
        rate = n / t.median
        ratio = "1 (reference)" if t is reads else speed_ratio(rate / read_rate)
        mibs = size / t.median / 2**20
        print(f"  {label:<40}{t.median:>8.3f}{t.median_cpu:>8.3f}{rate:>9,.0f}{mibs:>8,.0f}  {ratio}")
    print(
        f"  The corpus files average {kib(size / n)}; the scan reads about the same per file whatever its\n"
        "  size, while a whole-file read grows with it: real backups of gigabytes widen the gap accordingly."
    )


def speed_ratio(r: float) -> str:
    return f"{r:.1f}x faster" if r >= 1 else f"{r:.2f}x ({1 / r:.1f}x slower)"


def read_whole(paths: list[Path]) -> int:
    """The reference: what any tool that opens each backup (a checksum, a copy, a restore) pays."""
    total = 0
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(CHUNK):
                total += len(chunk)
    return total


def run_cli(root: Path) -> tuple[float, int, int]:
    exe = Path(sys.executable).with_name("ferry")
    cmd = [str(exe) if exe.exists() else "ferry", "scan", str(root), "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):  # 1 = error findings (orphan logs/diffs are in the store on purpose)
        raise SystemExit(f"error: {' '.join(cmd)} exited {proc.returncode}: {proc.stderr.decode()[-2000:]}")
    return wall, proc.returncode, len(json.loads(proc.stdout)["databases"])


def is_compressed(sets: Sequence[object]) -> bool:
    return any(isinstance(s, BackupSet) and s.compressed for s in sets)


def page_cache_residency(paths: list[Path]) -> float | None:
    """Share of the files' pages in the page cache, by mincore(2). None where that cannot be asked."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        c_mmap, c_munmap, c_mincore = libc.mmap, libc.munmap, libc.mincore
    except (OSError, AttributeError):
        return None
    c_mmap.restype = ctypes.c_void_p
    c_mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    c_munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    c_mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    page = mmap.PAGESIZE
    resident = total = 0
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                continue
            addr = c_mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if addr is None or addr == ctypes.c_void_p(-1).value:
                return None
            try:
                pages = (size + page - 1) // page
                vec = ctypes.create_string_buffer(pages)
                if c_mincore(addr, size, vec) != 0:
                    return None
                resident += sum(b & 1 for b in vec.raw)
                total += pages
            finally:
                c_munmap(addr, size)
        finally:
            os.close(fd)
    return resident / total if total else None


def disk_usage(root: Path) -> int:
    total = 0
    for folder, _dirs, names in os.walk(root):
        for name in names:
            total += os.stat(os.path.join(folder, name)).st_blocks * 512
    return total


def max_size(paths: list[Path]) -> int:
    return max((p.stat().st_size for p in paths), default=0)


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def kib(n: float) -> str:
    return f"{n / 1024:,.1f} KiB"


if __name__ == "__main__":
    sys.exit(main())
