# ruff: noqa: E501  (report lines are kept whole so the printed table reads as it is laid out)
"""Part 3 of bench/orchestration.py: SQL Server databases through the whole online lifecycle, against the
SQL Server restore model (tests/mssql_model, a TDS server that pymssql talks to; no real SQL Server here).

The store holds `n` SQL Server databases, each a distinct copy of the corpus database RestoreTimeClean made
the way bench/scan.py makes its store (the last characters of the database name and every GUID that ties
its backups together patched, one mapping per copy): a full backup, a differential, the three logs after
it and the three before it (covered by the differential: Skipped). All `n` share one store, as databases
of one server share a backup share. The model restores at 2 GB/s with 10 ms per statement at least, so
what is timed is Ferry's orchestration (Temporal, the state store, the agent's steps over TDS), not a
restore. Each run gets a fresh model, Temporal, state store and agent process.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.lifecycle import lifecycle_run

from ferry.serve import DEFAULT_CONCURRENCY
from ferry.service.activities import TargetConfig
from ferry.service.contracts import MigrationRequest

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = "RestoreTimeClean"
PASSWORD = "Model-Passw0rd"  # the model's default `sa` login
AZURE_QUEUE_S = 120.0  # Azure: about 2 minutes per database to queue it (published figure, not measured)
AZURE_CUTOVER_S = 60.0  # and about 1 minute to cut it over, one database after another
TARGET_TOTAL_S = 60.0
TARGET_OVERHEAD_S = 1.0


def build_store(corpus: Path, store: Path, n: int) -> list[str]:
    """`n` patched copies of RestoreTimeClean, one folder each; their database names."""
    from bench.scan import NAME_SUFFIX_CHARS, base36, load_corpus

    templates, _ = load_corpus(corpus / TEMPLATE)
    (t,) = [t for t in templates if t.database == TEMPLATE]
    names = []
    for i in range(n):
        suffix = base36(i, NAME_SUFFIX_CHARS)
        name = t.database[:-NAME_SUFFIX_CHARS] + suffix
        salt = i.to_bytes(8, "little") + b"ferry-bn"
        folder = store / name
        folder.mkdir(parents=True)
        for src in t.files:
            (folder / Path(src.key).name).write_bytes(src.patch(salt, suffix))
        names.append(name)
    return names


def start_model(state: Path, store: Path) -> tuple[subprocess.Popen[str], int]:
    """The restore model in a process of its own (as a SQL Server would be), seeing `store` at /store."""
    (state / "fs").mkdir(parents=True)
    os.symlink(store, state / "fs" / "store")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.mssql_model", "--state", str(state), "--port", "0",
         "--restore-mbps", "2000", "--min-restore-seconds", "0.01", "--lazy-state"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("ready "):
        proc.kill()
        raise SystemExit(f"error: the SQL Server model did not start: {line}{proc.stdout.read()}")
    return proc, int(line.split()[1])


def check_restored(state: Path, names: list[str]) -> None:
    """Every database ONLINE on the model, each of its five backup sets restored once."""
    from tests.mssql_model.client import ModelClient

    model = ModelClient(state)
    for name in names:
        counts = model.restore_counts(name)
        if model.db_state(name) != "ONLINE" or sorted(counts.values()) != [1] * 5:
            raise SystemExit(f"error: {name} is {model.db_state(name)} with restores {counts}")


async def mssql_run(root: Path, store: Path, names: list[str], verbose: bool) -> dict[str, float]:
    root.mkdir(mode=0o755)
    model, port = start_model(root / "model", store)
    try:
        cfg = TargetConfig(
            "ms", root / "work", DEFAULT_CONCURRENCY, engine="sqlserver",
            location=f"mssql://sa@127.0.0.1:{port}", options={"backup_path_as": [f"{store}=/store"]},
        )  # fmt: skip
        reqs = [MigrationRequest(str(store), "ms", "online", name, database=name) for name in names]
        result = await lifecycle_run(root / "run", cfg, reqs, [None] * len(names), verbose)
    finally:
        model.terminate()  # it writes its state file as it stops
        model.wait(30)
    check_restored(root / "model", names)
    return result


async def part_mssql(
    root: Path, corpus: Path, n: int, runs: int, keep: bool
) -> list[tuple[str, float, str, str]]:
    os.environ["FERRY_MSSQL_PASSWORD"] = PASSWORD  # read by the agent process, never on its command line
    root.mkdir(mode=0o755)
    print(f"\n== 3. {n} SQL Server databases in one store, online, against the SQL Server restore model ==")
    t0 = time.perf_counter()
    store = root / "store"
    names = build_store(corpus, store, n)
    files = sum(1 for _ in store.rglob("*.*"))
    print(
        f"  built {n} databases ({files} backup files, copies of {TEMPLATE}) in {time.perf_counter() - t0:.1f} s; "
        f"{runs} runs, each with a fresh model, Temporal, state store and agent process ({DEFAULT_CONCURRENCY} restore slots)"
    )
    results = []
    for i in range(runs):
        run = await mssql_run(root / f"run{i + 1}", store, names, verbose=i == runs - 1)
        if not keep:
            shutil.rmtree(root / f"run{i + 1}", ignore_errors=True)
        results.append(run)
        print(
            f"  run {i + 1}: overhead per DB median {run['overhead']:.2f} s; create -> all ReadyForCutover "
            f"{run['ready']:.1f} s; bulk cutover -> all Succeeded {run['done']:.1f} s; whole lifecycle {run['wall']:.1f} s; "
            f"downtime median {run['downtime']:.2f} s"
        )
    over = statistics.median(r["overhead"] for r in results)
    wall = statistics.median(r["wall"] for r in results)
    azure = n * (AZURE_QUEUE_S + AZURE_CUTOVER_S)
    print(
        f"  over {runs} runs (medians): orchestration overhead per DB {over:.2f} s; all {n} created -> Succeeded "
        f"{wall:.1f} s ({wall / n:.2f} s per DB)"
    )
    print(
        f"  Azure, for comparison (published figures, not measured here): about {AZURE_QUEUE_S / 60:.0f} min per "
        f"database to queue + {AZURE_CUTOVER_S / 60:.0f} min to cut over, one after another: {n} x "
        f"{AZURE_QUEUE_S + AZURE_CUTOVER_S:.0f} s = {azure:,.0f} s ({azure / 3600:.1f} h); Ferry measured {wall:.1f} s "
        f"({azure / max(wall, 1e-9):,.0f}x less)"
    )
    pf = ("PASS", "FAIL")
    return [
        (
            f"3. {n} SQL Server DBs: orchestration overhead per DB (median)",
            over,
            "<= 1 s",
            pf[over > TARGET_OVERHEAD_S],
        ),
        (
            f"3. {n} SQL Server DBs: create -> all Succeeded (wall, s)",
            wall,
            "<= 60 s",
            pf[wall > TARGET_TOTAL_S],
        ),
    ]
