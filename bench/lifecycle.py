# ruff: noqa: E501  (report lines are kept whole so the printed table reads as it is laid out)
"""The bulk online lifecycle the orchestration benchmark times, for any engine: a fresh embedded Temporal (with
its TLS gate and codec key, as `ferry serve` starts it), a SQLite state store, the control worker in this
process and the target's `ferry agent` in a process of its own (ferry/agent/local.py, as `ferry serve` runs
its local targets); migrations created the way the API does it (store.create of the batch, then
orchestrator.start of all), then cut over in bulk.

Per database, the orchestration overhead is the sum of the gaps in which none of its steps ran (from the
timestamps of its state and "step" events): create -> validate started, validate finished -> RestoringFull
recorded, restore_base finished -> replay started, cutover request -> cutover step started, cutover finished
-> Succeeded recorded. The wait for one of the target's restore slots is shown but not counted: it is the
target's concurrency limit, which the DBA sets.
"""

from __future__ import annotations

import asyncio
import functools
import os
import statistics
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from ferry.agent.local import LocalAgents, Reach
from ferry.agent.worker import prepare_root, register, running, target_workers
from ferry.core.migration import State
from ferry.service.activities import TargetConfig
from ferry.service.codec import KEY_FILE, create_key
from ferry.service.contracts import MigrationRecord, MigrationRequest
from ferry.service.control import control_worker
from ferry.service.orchestrator import TemporalOrchestrator
from ferry.service.store import SqlStateStore
from ferry.service.temporal_dev import DevServer
from ferry.service.tls import TemporalTls

POLL_S = 0.25
FINAL = {State.SUCCEEDED, State.FAILED, State.CANCELED}
NAN = float("nan")


class StoreMeter:
    """Wraps the store's write methods: how many calls and how many seconds (summed over threads)."""

    def __init__(self, store: SqlStateStore) -> None:
        self.lock = threading.Lock()
        self.calls = 0
        self.seconds = 0.0
        for name in ("set_state", "set_status", "append_event"):
            setattr(store, name, self._wrap(getattr(store, name)))

    def _wrap(self, fn: Any) -> Any:
        @functools.wraps(fn)
        def timed(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                dt = time.perf_counter() - t0
                with self.lock:
                    self.calls += 1
                    self.seconds += dt

        return timed

    def snap(self) -> tuple[int, float]:
        with self.lock:
            return self.calls, self.seconds


class Cpu:
    """CPU seconds of this process and of the Temporal server over a phase."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.t0 = self._now()

    def _now(self) -> tuple[float, float, float]:
        tck = os.sysconf("SC_CLK_TCK")
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        temporal = (int(fields[11]) + int(fields[12])) / tck
        return time.perf_counter(), time.process_time(), temporal

    def done(self) -> tuple[float, float, float]:
        w1, p1, t1 = self._now()
        w0, p0, t0 = self.t0
        return w1 - w0, p1 - p0, t1 - t0


async def wait_all(store: SqlStateStore, ids: list[str], want: State, timeout: float) -> None:
    wanted = set(ids)
    deadline = time.monotonic() + timeout
    while True:
        records = [r for r in await asyncio.to_thread(store.find) if r.id in wanted]
        bad = [r for r in records if r.state in FINAL and r.state is not want]
        if bad:
            raise SystemExit(f"error: {bad[0].name} ended {bad[0].state.value}: {bad[0].error}")
        if sum(r.state is want for r in records) == len(ids):
            return
        if time.monotonic() > deadline:
            counts: dict[str, int] = {}
            for r in records:
                counts[r.state.value] = counts.get(r.state.value, 0) + 1
            raise SystemExit(f"error: not all {want.value} within {timeout:.0f} s: {counts}")
        await asyncio.sleep(POLL_S)


def state_times(store: SqlStateStore, mid: str) -> dict[str, float]:
    """When each state was first recorded (wall clock, seconds since the epoch)."""
    out: dict[str, float] = {}
    for e in store.events(mid):
        if e.kind == "state":
            out.setdefault(e.data["to"], e.at.timestamp())
    return out


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def cpu_line(what: str, cpu: tuple[float, float, float], meter: tuple[int, float]) -> str:
    wall, mine, temporal = cpu
    cores = os.cpu_count() or 1
    return (
        f"  {what}: wall {wall:.1f} s on {cores} cores = {wall * cores:.1f} CPU-s available; used: Temporal "
        f"server {temporal:.1f} CPU-s ({100 * temporal / max(wall * cores, 1e-9):.0f}%), this process "
        f"(workflows in the sandbox, SDK, activities, SQLite) {mine:.1f} CPU-s "
        f"({100 * mine / max(wall * cores, 1e-9):.0f}%); state-store writes: {meter[0]} calls, "
        f"{meter[1]:.1f} s inside them (summed over threads)"
    )


async def lifecycle_run(
    root: Path,
    cfg: TargetConfig,
    reqs: list[MigrationRequest],
    final_lsns: list[str | None],
    verbose: bool,
    in_process: bool = False,
) -> dict[str, float]:
    """One bulk online migration of `reqs` onto a fresh target `cfg`: create all, all ReadyForCutover, cut
    all over, all Succeeded. The run's medians (details if `verbose`). `in_process`: the target's workers
    run in this process, beside the workflows (as `ferry serve` ran its local targets before), for a
    comparison."""
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    store_url = f"sqlite:///{root / 'state.db'}"
    store = SqlStateStore(store_url)
    meter = StoreMeter(store)
    dev = DevServer(root / "temporal", key=create_key(root / KEY_FILE))
    try:
        client = await dev.start()
        assert dev.process is not None
        prepare_root(cfg)
        register(store, cfg)
        orch = TemporalOrchestrator(client, store)
        reach = Reach(dev.address, root / KEY_FILE, store_url, tls=dev.tls or TemporalTls())
        agents = LocalAgents([] if in_process else [cfg], reach, root)
        inside = target_workers(client, store, cfg) if in_process else []
        async with running([control_worker(client, store), *inside]):
            if await agents.start():
                raise SystemExit(f"error: the agent of target {cfg.name} did not start")
            try:
                cpu = Cpu(dev.server_pid or dev.process.pid)
                records, marks = await _bulk(store, orch, reqs, final_lsns)
                use = cpu.done()
            finally:
                await agents.stop()
        per = [_figures(store, r, marks) for r in records]
    finally:
        dev.stop()
        store.close()
    result = {
        "overhead": statistics.median(p["overhead"] for p in per),
        "ready": max(p["ready"] for p in per),
        "done": max(p["done"] for p in per),
        "downtime": statistics.median(p["downtime"] for p in per),
    }
    result["wall"] = (marks["cut_at"] - marks["created_at"]) + result["done"]
    if verbose:
        _details(per, marks, result, cfg, cpu_line("CPU over both phases", use, meter.snap()))
    return result


async def _bulk(
    store: SqlStateStore,
    orch: TemporalOrchestrator,
    reqs: list[MigrationRequest],
    final_lsns: list[str | None],
) -> tuple[list[MigrationRecord], dict[str, float]]:
    """Create and start all, wait for all ReadyForCutover, cut all over, wait for all Succeeded."""
    created_at = time.time()
    c0 = time.perf_counter()
    records = await asyncio.to_thread(store.create, reqs)
    await orch.start(records)
    create_s = time.perf_counter() - c0
    ids = [r.id for r in records]
    await wait_all(store, ids, State.READY_FOR_CUTOVER, timeout=600)
    ready_poll = time.perf_counter() - c0
    cut_at = time.time()
    c1 = time.perf_counter()
    await asyncio.gather(*(orch.cutover(r.id, lsn) for r, lsn in zip(records, final_lsns, strict=True)))
    signal_s = time.perf_counter() - c1
    await wait_all(store, ids, State.SUCCEEDED, timeout=600)
    marks = {"created_at": created_at, "cut_at": cut_at, "create_s": create_s, "ready_poll": ready_poll,
             "signal_s": signal_s}  # fmt: skip
    return records, marks


def _figures(store: SqlStateStore, record: MigrationRecord, marks: dict[str, float]) -> dict[str, float]:
    """One migration's step times and orchestration gaps, from its events."""
    st = state_times(store, record.id)
    steps = {e.data["step"]: e.data for e in store.events(record.id) if e.kind == "step"}
    began = {k: _ts(d["started_at"]) for k, d in steps.items() if "started_at" in d}
    ended = {k: _ts(d["finished_at"]) for k, d in steps.items() if "finished_at" in d}
    created_at, cut_at = marks["created_at"], marks["cut_at"]
    gaps = {
        "g_start": began["validate"] - created_at,
        "g_validated": st["RestoringFull"] - ended["validate"],
        "g_restored": began["replay"] - ended["restore_base"],
        "g_cutover": began["cutover"] - cut_at,
        "g_done": st["Succeeded"] - ended["cutover"],
    }
    now = store.get(record.id)
    return {
        **gaps,
        "ready": st["ReadyForCutover"] - created_at,
        "done": st["Succeeded"] - cut_at,
        "overhead": sum(gaps.values()),
        "restore": steps["restore_base"]["seconds"],
        "validate": steps["validate"]["seconds"],
        "cutover": steps["cutover"]["seconds"],
        "replay_stop": steps["cutover"].get("replay_stop_seconds", NAN),
        "slot_wait": began["restore_base"] - st["RestoringFull"],
        "downtime": now.status["result"]["downtime_seconds"] if now is not None else NAN,
    }


def _details(
    per: list[dict[str, float]],
    marks: dict[str, float],
    result: dict[str, float],
    cfg: TargetConfig,
    cpu: str,
) -> None:
    def med(k: str) -> str:
        v = [p[k] for p in per]
        return f"median {statistics.median(v):6.2f} s  (min {min(v):.2f}, max {max(v):.2f})"

    n = len(per)
    print(
        f"  the last run in detail: create+start of {n} (store.create + orchestrator.start): {marks['create_s']:.2f} s"
    )
    print(
        f"  bulk create -> all ReadyForCutover: {result['ready']:.1f} s (last state event; poll saw it at {marks['ready_poll']:.1f} s)"
    )
    print(
        f"  bulk cutover ({n} signals sent in {marks['signal_s']:.2f} s) -> all Succeeded: {result['done']:.1f} s"
    )
    print("  per database (from its events):")
    print(f"    create -> ReadyForCutover      {med('ready')}")
    print(f"    cutover request -> Succeeded   {med('done')}")
    print(f"    validate step                  {med('validate')}")
    print(f"    restore_base step              {med('restore')}")
    print(
        f"    waiting for a restore slot     {med('slot_wait')}  (RestoringFull recorded -> restore_base started; {cfg.concurrency} slots)"
    )
    print(f"    cutover step                   {med('cutover')}")
    print(f"    downtime (result)              {med('downtime')}")
    print(f"    (of which stopping the replay  {med('replay_stop')})")
    print("    orchestration gaps (time no step of the database ran, and it waited for no slot):")
    print(f"      create -> validate started          {med('g_start')}")
    print(f"      validate done -> RestoringFull     {med('g_validated')}")
    print(f"      restore done -> replay started      {med('g_restored')}")
    print(f"      cutover request -> cutover started  {med('g_cutover')}")
    print(f"      cutover done -> Succeeded recorded  {med('g_done')}")
    print(f"    ORCHESTRATION OVERHEAD = their sum  {med('overhead')}")
    print("      (the wait for a restore slot is the target's concurrency limit, shown above, not counted)")
    print(cpu)
