"""Part 2b of bench/pg_migrate.py: WAL replay from Azure Blob Storage (Azurite) against replay from a local
folder, the same base backup and the same WAL, interleaved in one run.

The store the benchmark built (store/base: the plain base backup, store/wal: the archive) is uploaded once
to a container of an Azurite started here, in memory, on loopback. Both sides are Ferry's own online
Migration (`ferry_replay` of pg_migrate.py), so the ratio is the price of the store alone: listing it,
the prefetcher's parallel ranged reads into the spool, and `ferry wal-fetch` on a spool miss. The
credentials reach the target server's restore_command through the environment, as they would in use.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
from tests.integration.stores.servers import AZURITE_ACCOUNT, AZURITE_KEY, Azurite  # noqa: E402

TARGET_STORE_REPLAY_RATIO = 0.9
UPLOAD_THREADS = 8

# ferry_replay(env, src, work, i, location) -> (seconds from server start to the archive's end, extras)
Replay = Callable[[Any, Any, Path, int, str], tuple[float, dict[str, Any]]]


@contextmanager
def azurite_with(store: Path) -> Iterator[str]:
    """An Azurite holding `store`'s files under one container; yields its az:// location. The account key
    and endpoint go into this process's environment, which the servers Ferry starts inherit."""
    from azure.storage.blob import BlobServiceClient

    folder = Path(tempfile.mkdtemp(prefix="ferry-bench-azurite-"))
    server = Azurite("azurite", folder, in_memory=True)
    server.start()
    saved = {k: os.environ.get(k) for k in ("FERRY_AZURE_BLOB_ENDPOINT", "AZURE_STORAGE_KEY")}
    try:
        container = f"pg{uuid.uuid4().hex[:12]}"
        service = BlobServiceClient(
            server.endpoint, credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY}
        )
        client = service.create_container(container)
        files = [p for p in sorted(store.rglob("*")) if p.is_file()]
        t0 = time.perf_counter()

        def upload(path: Path) -> int:
            with path.open("rb") as f:
                client.upload_blob(path.relative_to(store).as_posix(), f, max_concurrency=2)
            return path.stat().st_size

        with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
            total = sum(pool.map(upload, files))
        print(
            f"   uploaded {len(files)} files ({total / 1e6:,.0f} MB) to Azurite (in memory) in "
            f"{time.perf_counter() - t0:.1f} s, once"
        )
        service.close()
        os.environ["FERRY_AZURE_BLOB_ENDPOINT"] = server.endpoint
        os.environ["AZURE_STORAGE_KEY"] = AZURITE_KEY
        yield f"az://{AZURITE_ACCOUNT}/{container}"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


def measure_store_replay(env: Any, src: Any, runs: int, replay: Replay, report: Any) -> None:
    work = env.folder(env.root / "replay-store", 0o755, owned=False)
    wal_bytes = src.wal_end - src.wal_start
    print(
        "\n2b. WAL replay from Azure Blob Storage (Azurite) against replay from a local folder  "
        f"({wal_bytes / 1e6:,.0f} MB of WAL, {runs} interleaved runs, medians)"
    )
    local: list[float] = []
    remote: list[float] = []
    misses: list[int] = []
    with azurite_with(src.store) as location:
        for i in range(runs):
            seconds, _ = replay(env, src, work, 2 * i, str(src.store))
            local.append(seconds)
            seconds, extra = replay(env, src, work, 2 * i + 1, location)
            remote.append(seconds)
            misses.append(extra["misses"])
    local_s, remote_s = statistics.median(local), statistics.median(remote)
    ratio = local_s / remote_s  # speed ratio: the same WAL
    print(f"   {'store':<44}{'median s':>9}{'range s':>16}{'MB/s':>8}  speed vs local")
    for name, times, vs in (
        ("Azurite, az://  (prefetch: parallel ranged GETs)", remote, f"{ratio:.2f}"),
        ("local folder  [reference]", local, "1"),
    ):
        spread = f"{min(times):.2f}-{max(times):.2f}"
        rate = wal_bytes / statistics.median(times) / 1e6
        print(f"   {name:<44}{statistics.median(times):>9.2f}{spread:>16}{rate:>8,.0f}  {vs}")
    print(
        "   Both: Ferry's online Migration, timed from its server start until pg_last_wal_replay_lsn() "
        "reaches the archive's end. From Azurite, segments that missed the spool went through "
        f"`ferry wal-fetch` (a Python start and a GET): {statistics.median(misses):.0f} (median; per run: "
        f"{', '.join(map(str, misses))})."
    )
    report.add(
        "2b WAL replay, Azurite",
        f"{wal_bytes / remote_s / 1e6:,.0f} MB/s",
        f"local {wal_bytes / local_s / 1e6:,.0f} MB/s",
        f"{ratio:.2f}",
        f">= {TARGET_STORE_REPLAY_RATIO}",
        ratio >= TARGET_STORE_REPLAY_RATIO,
    )
