"""The agents of the targets `ferry serve` serves on its own host, each a `ferry agent` process.

Restores, scans and status reads are CPU work in Python; run in `ferry serve`'s interpreter they would
share its lock with the workflows, the API and the state records of every migration, and slow them all
down. So each local target gets an agent process of its own, started and watched here:

- it reaches Temporal and the state store exactly as a remote agent does (the embedded server's gate with
  DATA/tls's client certificate, the codec key, the store's URL), the store's URL through the environment
  (a command line is readable by every local user, and the URL may hold a password);
- it is started again when it dies (after RESTART_AFTER seconds, with a line in serve's log), so a crash
  costs the running steps one heartbeat timeout, as for a remote agent;
- it dies with `ferry serve`, even after a kill -9 (Linux parent-death signal, SIGKILL: as an in-process
  agent would, it takes its running steps down with it and Temporal hands them to the next agent); a
  stop of `ferry serve` stops it first with SIGTERM, so that its steps are handed back cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ferry.service.activities import TargetConfig
from ferry.service.tls import TemporalTls

log = logging.getLogger(__name__)

READY_TIMEOUT = 120.0  # seconds an agent may take to serve its queues at start (a loaded machine)
RESTART_AFTER = 1.0
STOP_TIMEOUT = 30.0
STORE_ENV = "FERRY_STORE"  # `ferry agent --store` reads it: the URL never goes on a command line
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Reach:
    """How an agent reaches the rest of the service: Temporal (address, namespace, TLS, codec key) and the
    state store."""

    temporal: str
    codec_key: Path
    store_url: str
    namespace: str = "default"
    tls: TemporalTls = field(default_factory=TemporalTls)


def agent_command(cfg: TargetConfig, reach: Reach, ready_file: Path | None = None) -> list[str]:
    """The `ferry agent` command line of a target (no secret in it)."""
    args = [
        sys.executable, "-m", "ferry", "agent", "--target", cfg.name, "--root", str(cfg.root),
        "--concurrency", str(cfg.concurrency), "--temporal", reach.temporal, "--namespace", reach.namespace,
        "--codec-key", str(reach.codec_key), "--blocked-after", str(cfg.replay.blocked_after),
        "--ready-lag", str(cfg.replay.ready_lag),
    ]  # fmt: skip
    if cfg.location is not None:
        args += ["--mssql", cfg.location]
    for mapping in cfg.options.get("backup_path_as") or ():
        args += ["--backup-path-as", str(mapping)]
    if cfg.os_user:
        args += ["--os-user", cfg.os_user]
    tls = reach.tls
    for option, value in (
        ("--temporal-tls-ca", tls.ca),
        ("--temporal-tls-cert", tls.cert),
        ("--temporal-tls-key", tls.key),
        ("--temporal-tls-server-name", tls.server_name),
    ):
        if value is not None:
            args += [option, str(value)]
    if tls.enabled:
        args.append("--temporal-tls")
    if ready_file is not None:
        args += ["--ready-file", str(ready_file)]
    return args


def _die_with_parent() -> None:
    """In the child, before exec: killed when `ferry serve` dies, however it dies."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class AgentProcess:
    """One target's `ferry agent`, started again when it exits until `stop`."""

    def __init__(self, cfg: TargetConfig, reach: Reach, folder: Path) -> None:
        self.cfg = cfg
        self.reach = reach
        self.ready_file = folder / f"agent-{cfg.name}.ready"
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self._stopping = False
        self._watch: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def _spawn(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.ready_file.unlink()
        env = {**os.environ, STORE_ENV: self.reach.store_url}
        # Started from the event loop's thread: the parent-death signal follows the thread that forked,
        # and this one lives as long as `ferry serve` does.
        self.proc = await asyncio.create_subprocess_exec(
            *agent_command(self.cfg, self.reach, self.ready_file),
            stdin=asyncio.subprocess.DEVNULL,
            env=env,
            preexec_fn=_die_with_parent,
        )
        self.starts += 1

    async def start(self) -> None:
        await self._spawn()
        self._watch = asyncio.get_running_loop().create_task(self._restart_when_it_exits())

    async def ready(self, timeout: float = READY_TIMEOUT) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready_file.exists():
                return True
            await asyncio.sleep(0.05)
        return False

    async def _restart_when_it_exits(self) -> None:
        while not self._stopping:
            assert self.proc is not None
            code = await self.proc.wait()
            if self._stopping:
                return
            log.warning(
                "the agent of target %s exited (code %s); starting it again in %.0f s",
                self.cfg.name,
                code,
                RESTART_AFTER,
            )
            await asyncio.sleep(RESTART_AFTER)
            if not self._stopping:
                await self._spawn()

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM (the agent hands its running steps back to Temporal), SIGKILL after `timeout`."""
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        with contextlib.suppress(FileNotFoundError):
            self.ready_file.unlink()


class LocalAgents:
    """The agent processes of the targets served on this host."""

    def __init__(self, targets: list[TargetConfig], reach: Reach, folder: Path | None = None) -> None:
        self.folder = folder or Path(tempfile.gettempdir())
        self.agents = [AgentProcess(cfg, reach, self.folder) for cfg in targets]

    async def start(self, timeout: float = READY_TIMEOUT) -> list[str]:
        """Start every agent and wait until each serves its queues; the names of those that did not in
        time (they go on starting: their steps wait in Temporal meanwhile)."""
        for agent in self.agents:
            await agent.start()
        waited = await asyncio.gather(*(a.ready(timeout) for a in self.agents))
        return [a.cfg.name for a, ok in zip(self.agents, waited, strict=True) if not ok]

    async def stop(self) -> None:
        await asyncio.gather(*(a.stop() for a in self.agents))
