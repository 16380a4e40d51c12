"""The agent: Temporal workers on a target host, running the steps of migrations onto its target.

`ferry agent --target NAME --root DIR` (PostgreSQL) or `ferry agent --target NAME --mssql URL` (SQL Server)
serves two task queues (see service/workflow_io.py):

- `ferry-target-NAME`: restore_base, at most `--concurrency` at once (the target's restore limit);
- `ferry-target-NAME-ops`: validate, replay, cutover, stop_target, up to `ops_slots` at once (replay is one
  long-running activity per online migration that mostly waits on PostgreSQL, so a target holds any
  number of migrations beyond its restore limit).

`ferry serve` starts one `ferry agent` process per local target (serve.py), so that restores never share an
interpreter with the workflows. Several agents may serve one target only if they share its folder (they
would pick ports for it independently otherwise): run one per target.

The agent registers its target in the state store (engine, where it restores, its restore limit) and, for
engines whose migrator can describe a target (SQL Server: version, edition, default folders, free space),
reads those facts from the target at start and then once a minute (FACTS_EVERY), in the background, into
the same registration: the API shows them without ever asking a target itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from ferry.core.errors import UsageError
from ferry.core.redact import redact_text
from ferry.engines.base import TargetSpec
from ferry.engines.registry import migrator
from ferry.host import OsUser, run
from ferry.service import workflow_io as io
from ferry.service.activities import TargetActivities, TargetConfig
from ferry.service.codec import CodecKey
from ferry.service.contracts import StateStore
from ferry.service.tls import TemporalTls

log = logging.getLogger(__name__)

OPS_SLOTS = 1000
FACTS_EVERY = 60.0  # seconds between reads of a target's facts (version, free space...)


def prepare_root(cfg: TargetConfig) -> None:
    """Make the target's root folder (0755) and check that the servers' OS user can reach it (PostgreSQL;
    a SQL Server target's root is Ferry's own work folder)."""
    try:
        cfg.root.mkdir(parents=True, exist_ok=True, mode=0o755)
    except OSError as exc:
        raise UsageError(
            f"cannot create target folder '{cfg.root}': {exc.strerror}", "choose another --root"
        ) from None
    user = OsUser.resolve(cfg.os_user) if cfg.location is None else None
    if user is None:
        return
    done = run(["test", "-x", str(cfg.root)], user, check=False, timeout=10)
    if done.returncode != 0:
        raise UsageError(
            f"OS user '{user.name}' cannot reach target folder '{cfg.root}' (PostgreSQL runs as that user)",
            "put the targets under a folder every parent of which that user may enter (chmod o+x; not "
            "under /root), e.g. --root /srv/ferry/targets or `ferry serve --data /srv/ferry`",
        )


def _notifier(client: Client, loop: asyncio.AbstractEventLoop) -> TargetActivities.Notify:
    """A state flip, told to the workflow from an activity thread (a signal on the worker's loop)."""

    def notify(workflow_id: str, signal: io.ProgressSignal) -> None:
        future = asyncio.run_coroutine_threadsafe(
            client.get_workflow_handle(workflow_id).signal(io.S_PROGRESS, signal), loop
        )
        try:
            future.result(timeout=10)
        except Exception as exc:  # the store has the state; the workflow's query view is only a copy
            log.warning("cannot tell workflow %s of its progress: %s", workflow_id, exc)

    return notify


def target_workers(
    client: Client, store: StateStore, cfg: TargetConfig, ops_slots: int = OPS_SLOTS
) -> list[Worker]:
    """The two workers of one target (call in the event loop that runs them)."""
    acts = TargetActivities(store, {cfg.name: cfg}, _notifier(client, asyncio.get_running_loop()))
    restore = Worker(
        client,
        task_queue=io.restore_queue(cfg.name),
        activities=[acts.restore_base],
        activity_executor=ThreadPoolExecutor(cfg.concurrency, thread_name_prefix=f"ferry-restore-{cfg.name}"),
        max_concurrent_activities=cfg.concurrency,
    )
    ops = Worker(
        client,
        task_queue=io.ops_queue(cfg.name),
        activities=[acts.validate, acts.replay, acts.cutover, acts.stop_target],
        activity_executor=ThreadPoolExecutor(ops_slots, thread_name_prefix=f"ferry-ops-{cfg.name}"),
        max_concurrent_activities=ops_slots,
    )
    return [restore, ops]


@contextlib.asynccontextmanager
async def running(workers: list[Worker]) -> AsyncIterator[None]:
    """Run `workers` in the background; on exit, shut them down (running activities are cancelled and
    retried by Temporal elsewhere or after a restart)."""
    async with contextlib.AsyncExitStack() as stack:
        for worker in workers:
            await stack.enter_async_context(worker)
        yield


def registration(cfg: TargetConfig, facts: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What the service knows of a target served here."""
    data: dict[str, Any] = {
        "engine": cfg.engine,
        "location": cfg.where,
        "root": str(cfg.root),
        "concurrency": cfg.concurrency,
        "host": cfg.host or socket.gethostname(),
        "os_user": cfg.os_user,
        "agent": True,
    }
    if facts is not None:
        data["facts"] = dict(facts)
    return data


def register(store: StateStore, cfg: TargetConfig, facts: Mapping[str, Any] | None = None) -> None:
    """Make the target known to the service (the API accepts migrations onto known targets only)."""
    reg = getattr(store, "register_target", None)
    if callable(reg):
        reg(cfg.name, registration(cfg, facts))


def describer(cfg: TargetConfig) -> Callable[[TargetSpec], Mapping[str, Any]] | None:
    """The migrator's `describe(target)`, for engines that have one (it is optional in the seam)."""
    try:
        fn = getattr(migrator(cfg.engine), "describe", None)
    except UsageError:
        return None
    return fn if callable(fn) else None


async def keep_facts(
    store: StateStore, cfg: TargetConfig, stop: asyncio.Event, every: float = FACTS_EVERY
) -> None:
    """Read the target's facts now and then every `every` seconds, into its registration. A failed read
    keeps the facts read before, with the error beside them."""
    describe = describer(cfg)
    if describe is None:
        return
    facts: dict[str, Any] = {}
    while not stop.is_set():
        started = time.time()
        try:
            read = await asyncio.to_thread(describe, cfg.spec())
            facts = {**dict(read), "error": None}
        except Exception as exc:  # the target is down or refuses: said in the facts, tried again later
            facts = {**facts, "error": redact_text(str(getattr(exc, "message", None) or exc))}
            log.warning("cannot read the facts of target %s: %s", cfg.name, facts["error"])
        facts["read_at"] = datetime.fromtimestamp(started, UTC).isoformat()
        try:
            await asyncio.to_thread(register, store, cfg, facts)
        except Exception as exc:
            log.warning("cannot record the facts of target %s: %s", cfg.name, exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


async def run_agent(
    cfg: TargetConfig,
    temporal: str,
    store: StateStore,
    *,
    key: CodecKey,
    tls: TemporalTls | None = None,
    namespace: str = "default",
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
    ready_file: Path | None = None,
) -> None:
    """Serve `cfg`'s task queues until `stop` is set (or SIGINT/SIGTERM when not given). `key`: the
    deployment's codec key (the one `ferry serve` made); `tls`: how to reach Temporal over TLS;
    `ready_file`: made once the workers serve (how `ferry serve` knows its local agents are up)."""
    from ferry.service.temporal_dev import connect

    prepare_root(cfg)
    register(store, cfg)
    client = await connect(temporal, key, namespace, tls=tls)
    stop = stop or on_signals()
    async with running(target_workers(client, store, cfg)):
        log.info(
            "agent of target %s serving %s and %s",
            cfg.name,
            io.restore_queue(cfg.name),
            io.ops_queue(cfg.name),
        )
        facts = asyncio.create_task(keep_facts(store, cfg, stop))
        if ready is not None:
            ready.set()
        if ready_file is not None:
            ready_file.write_text(f"{cfg.name}\n")
        await stop.wait()
        facts.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await facts


def on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (in the running loop): how `ferry agent` and `ferry serve` stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def default_root(data: Path) -> Path:
    return data / "targets"
