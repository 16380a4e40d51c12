"""Benchmark: scanning 10,000 backups in Azure Blob Storage (Azurite) and on an SMB share (Samba).

    .venv/bin/python bench/store_scan.py [--files N] [--runs 5] [--data DIR] [--keep] [--only azure|smb]

It builds (or reuses) the synthetic store of bench/scan.py: N real SQL Server backups made distinct
databases. It starts Azurite (in memory) and smbd on loopback, uploads the files to a container once
and shares the folder over SMB, then times, interleaved and `--runs` times each, per store:

- Ferry's scan through the store (`scan(store, [SqlServerEngine()])`, the store's own parallel reads);
- the reference: downloading every file whole with the same SDK and as many threads.

It prints medians: files per second, bytes read per file, and the ratio scan speed / download speed,
with PASS/FAIL against the targets (>= 300 files/s, <= 64 KiB read per uncompressed file).
See bench/README.md.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import scan as local_bench  # bench/scan.py: the synthetic store of real backups
from ferry.engines.sqlserver.engine import SqlServerEngine
from ferry.pipeline.discover import ScanResult, scan
from ferry.stores.base import BackupStore
from ferry.stores.local import LocalStore
from ferry.stores.registry import open_store

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
from tests.integration.stores.servers import (  # noqa: E402
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    SMB_PASSWORD,
    SMB_USER,
    Azurite,
    Samba,
)

TARGET_FILES_PER_S = 300
TARGET_BYTES = 64 * 1024
CHUNK = 4 << 20
SMB_CHUNK = 1 << 20


@dataclass
class Side:
    """One store's measurements."""

    name: str
    store: BackupStore
    download: Callable[[list[str]], int]
    scans: list[float] = field(default_factory=list)
    downloads: list[float] = field(default_factory=list)
    first: ScanResult | None = None


def main() -> int:
    args = parse_args()
    corpus = Path(
        os.environ.get("FERRY_SQLSERVER_CORPUS") or BENCH.parent.parent / "shared" / "sqlserver-backups"
    )
    if not corpus.is_dir():
        raise SystemExit(f"error: no corpus at {corpus}: set FERRY_SQLSERVER_CORPUS to the backup folder")
    data = Path(args.data).resolve()
    print(f"Ferry store scan benchmark  (python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    info = local_bench.ensure_store(corpus, data, args.files)
    root = data / "store"
    keys = [o.key for o in LocalStore(root).iter_objects()]
    print(f"store:   {info.files:,} files, {local_bench.gib(info.bytes)}, {info.databases:,} databases")
    servers = Path(tempfile.mkdtemp(prefix="ferry-store-bench-"))
    started: list[Azurite | Samba] = []
    sides: list[Side] = []
    try:
        if args.only in (None, "azure"):
            azurite = Azurite("azurite", servers, in_memory=True)
            azurite.start()
            started.append(azurite)
            sides.append(azure_side(azurite, root, keys))
        if args.only in (None, "smb"):
            samba = Samba("smbd", servers / "samba", share="store")
            samba.folder.mkdir()
            samba.prepare()
            conf = samba.folder / "smb.conf"  # share the built store itself, read-only: no copy
            conf.write_text(
                conf.read_text()
                .replace(f"path = {samba.share_path}", f"path = {root}")
                .replace("read only = no", "read only = yes")
            )
            samba.start()
            started.append(samba)
            sides.append(smb_side(samba, keys))
        measure(sides, info, args.runs)
    finally:
        for server in started:
            server.stop()
        if not args.keep:
            local_bench.remove_store(data)
            print(f"\ndata removed from {data} (--keep leaves it for the next run)")
    return 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=10_000, help="files in the store (default 10,000)")
    p.add_argument("--runs", type=int, default=5, help="timed runs of each measurement (default 5)")
    p.add_argument("--data", default=str(BENCH / ".data" / "store_scan"), help="where the store is built")
    p.add_argument("--keep", action="store_true", help="keep the built store for the next run")
    p.add_argument("--only", choices=("azure", "smb"), help="measure one store only")
    return p.parse_args()


def azure_side(azurite: Azurite, root: Path, keys: list[str]) -> Side:
    from azure.storage.blob import BlobServiceClient

    svc = BlobServiceClient(
        azurite.endpoint,
        credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY},
        max_single_put_size=64 << 20,
    )
    container = svc.get_container_client("bench")
    container.create_container()
    t0 = time.perf_counter()

    def upload(key: str) -> None:
        container.upload_blob(key, (root / key).read_bytes(), max_concurrency=1)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(upload, keys))
    print(f"azure:   uploaded to Azurite (in memory) in {time.perf_counter() - t0:.1f} s, once")
    os.environ["FERRY_AZURE_BLOB_ENDPOINT"] = azurite.endpoint
    os.environ["AZURE_STORAGE_KEY"] = AZURITE_KEY
    store = open_store(f"az://{AZURITE_ACCOUNT}/bench")
    workers = store.capabilities.parallel_reads

    def download(names: list[str]) -> int:
        def one(key: str) -> int:
            return len(container.download_blob(key, max_concurrency=1).readall())

        with ThreadPoolExecutor(workers) as pool:
            return sum(pool.map(one, names))

    return Side("Azure Blob (Azurite)", store, download)


def smb_side(samba: Samba, keys: list[str]) -> Side:
    import smbclient

    os.environ["FERRY_SMB_PASSWORD"] = SMB_PASSWORD
    store = open_store(samba.url())
    workers = store.capabilities.parallel_reads
    # One connection per thread: threads sharing one ran out of SMB credits with whole-file reads.
    local = threading.local()
    share = f"\\\\127.0.0.1\\{samba.share}"

    def download(names: list[str]) -> int:
        def one(key: str) -> int:
            if not hasattr(local, "kw"):
                local.kw = {"port": samba.port, "connection_cache": {}, "username": SMB_USER,
                            "password": SMB_PASSWORD}  # fmt: skip
            total = 0
            with smbclient.open_file(share + "\\" + key.replace("/", "\\"), mode="rb", **local.kw) as f:
                # 1 MiB reads: 4 MiB ones from 4 threads ran out of SMB credits.
                while chunk := f.read(SMB_CHUNK):
                    total += len(chunk)
            return total

        with ThreadPoolExecutor(workers) as pool:
            return sum(pool.map(one, names))

    print(f"smb:     smbd shares the store's folder read-only on 127.0.0.1:{samba.port}")
    return Side("SMB (Samba)", store, download)


def measure(sides: list[Side], info: local_bench.StoreInfo, runs: int) -> None:
    engine = SqlServerEngine()
    keys = {}
    for side in sides:  # warm-up, untimed, and the check that every file reads as intended
        side.first = scan(side.store, [engine])
        local_bench.verify(side.first, info, side.name.split()[0].lower())
        keys[side.name] = [f.info.key for f in side.first.files]
    for round_ in range(1, runs + 1):
        for side in sides:
            gc.collect()
            t0 = time.perf_counter()
            got = len(scan(side.store, [engine]).files)
            side.scans.append(time.perf_counter() - t0)
            if got != info.files:
                raise SystemExit(f"error: {side.name} scan saw {got:,} files, expected {info.files:,}")
            gc.collect()
            t0 = time.perf_counter()
            total = side.download(keys[side.name])
            side.downloads.append(time.perf_counter() - t0)
            if total != info.bytes:
                raise SystemExit(f"error: {side.name} download read {total:,} bytes, expected {info.bytes:,}")
            print(f"round {round_}/{runs}: {side.name}: scan {side.scans[-1]:.1f} s, "
                  f"download {side.downloads[-1]:.1f} s", flush=True)  # fmt: skip
    n = info.files
    print()
    print(f"medians of {runs} interleaved runs over {n:,} files ({local_bench.gib(info.bytes)})")
    print()
    head = f"  {'store':<22}{'measurement':<34}{'wall s':>8}{'files/s':>9}{'KiB/file':>10}  scan / download"
    print(head)
    print("  " + "-" * (len(head) + 4))
    checks = []
    for side in sides:
        assert side.first is not None
        scan_s, down_s = statistics.median(side.scans), statistics.median(side.downloads)
        unc = [f.bytes_read for f in side.first.files if not local_bench.is_compressed(f.sets)]
        comp = [f.bytes_read for f in side.first.files if local_bench.is_compressed(f.sets)]
        per_file = side.first.bytes_read / n / 1024
        workers = side.store.capabilities.parallel_reads
        ratio = local_bench.speed_ratio(down_s / scan_s)
        print(f"  {side.name:<22}{f'scan, {workers} reads in flight':<34}{scan_s:>8.2f}{n / scan_s:>9,.0f}"
              f"{per_file:>10,.1f}  {ratio}")  # fmt: skip
        print(f"  {'':<22}{f'download whole files, {workers} threads':<34}{down_s:>8.2f}{n / down_s:>9,.0f}"
              f"{info.bytes / n / 1024:>10,.1f}  1 (reference)")  # fmt: skip
        print(f"  {'':<22}{'bytes read, uncompressed (mean/max)':<34}"
              f"{local_bench.kib(statistics.mean(unc))} / {local_bench.kib(max(unc))}")  # fmt: skip
        if comp:
            print(f"  {'':<22}{'bytes read, compressed (mean/max)':<34}"
                  f"{local_bench.kib(statistics.mean(comp))} / {local_bench.kib(max(comp))}")  # fmt: skip
        checks.append((f"{side.name}: >= {TARGET_FILES_PER_S} files/s", f"{n / scan_s:,.0f} files/s",
                       n / scan_s >= TARGET_FILES_PER_S))  # fmt: skip
        checks.append((f"{side.name}: <= 64 KiB per uncompressed file", local_bench.kib(max(unc)),
                       max(unc) <= TARGET_BYTES))  # fmt: skip
    print()
    print(f"  {'target':<54}{'measured':>16}")
    print("  " + "-" * 76)
    for label, value, ok in checks:
        print(f"  {label:<54}{value:>16}   {'PASS' if ok else 'FAIL'}")


if __name__ == "__main__":
    sys.exit(main())
