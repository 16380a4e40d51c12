"""Control of local PostgreSQL clusters: find the server binaries, initdb, start, stop, query.

PostgreSQL refuses to run as root, so when Ferry runs as root every server process runs as an
unprivileged OS user (`postgres` by default, created by Debian's package). Files the server owns are
chowned to that user; Ferry itself keeps running as root.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferry import host
from ferry.core.errors import FerryError
from ferry.host import OsUser, chown_tree, free_port, port_in_use

__all__ = [
    "Binaries",
    "Cluster",
    "ClusterError",
    "OsUser",
    "chown_tree",
    "find_binaries",
    "free_port",
    "port_in_use",
    "run",
]


class ClusterError(FerryError):
    """A PostgreSQL server could not be set up, started, stopped or reached."""


@dataclass(frozen=True)
class Binaries:
    bindir: Path
    major: int

    def tool(self, name: str) -> str:
        return str(self.bindir / name)


def find_binaries(major: int | None = None) -> Binaries:
    """The server binaries for `major` (or the newest installed): Debian keeps them in
    /usr/lib/postgresql/N/bin; elsewhere `pg_config --bindir` says where they are."""
    candidates: list[Binaries] = []
    root = Path("/usr/lib/postgresql")
    if root.is_dir():
        for d in root.iterdir():
            if d.name.isdigit() and (d / "bin" / "postgres").exists():
                candidates.append(Binaries(d / "bin", int(d.name)))
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            bindir = Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                         check=True, timeout=10).stdout.strip())  # fmt: skip
            version = subprocess.run([pg_config, "--version"], capture_output=True, text=True, timeout=10)
            m = re.search(r"(\d+)", version.stdout)
            if m and (bindir / "postgres").exists():
                candidates.append(Binaries(bindir, int(m.group(1))))
        except (OSError, subprocess.SubprocessError):
            pass
    if major is not None:
        candidates = [c for c in candidates if c.major == major]
    if not candidates:
        wanted = f"PostgreSQL {major}" if major else "PostgreSQL"
        raise ClusterError(
            f"{wanted} server binaries not found (looked in /usr/lib/postgresql and pg_config)",
            f"install them: apt-get install postgresql-{major}" if major else "apt-get install postgresql",
        )
    return max(candidates, key=lambda b: b.major)


def run(cmd: Sequence[str], user: OsUser | None, *, timeout: float = 120, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run a PostgreSQL tool as the server's OS user (host.run); its failures are ClusterErrors."""
    return host.run(cmd, user, timeout=timeout, check=check, env=env, error=ClusterError)


class Cluster:
    """One PostgreSQL server: a data directory, a port on 127.0.0.1, a socket folder, a log file."""

    def __init__(self, datadir: Path, port: int, binaries: Binaries, user: OsUser | None) -> None:
        self.datadir = datadir
        self.port = port
        self.binaries = binaries
        self.user = user
        self.socket_dir = datadir.parent / f"{datadir.name}.sock"
        self.logfile = datadir.parent / f"{datadir.name}.log"

    # -- lifecycle ---------------------------------------------------------------------------------

    def initdb(self, *extra: str) -> None:
        self.datadir.mkdir(parents=True, exist_ok=False, mode=0o700)
        chown_tree(self.datadir, self.user)
        run([self.binaries.tool("initdb"), "-D", str(self.datadir), "-U", "postgres", "-A", "trust",
             "--no-sync", *extra], self.user)  # fmt: skip

    def prepare_runtime(self) -> None:
        """Socket folder and log file owned by the server's user."""
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self.logfile.touch(exist_ok=True)
        for p in (self.socket_dir, self.logfile):
            chown_tree(p, self.user)

    def settings(self) -> dict[str, str]:
        return {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.socket_dir}'",
        }

    def start(self, timeout: float = 60) -> None:
        if port_in_use(self.port):
            raise ClusterError(
                f"port {self.port} on 127.0.0.1 is already in use",
                "stop what listens there or choose another port",
            )
        self.prepare_runtime()
        opts = " ".join(f"-c {k}={v}" for k, v in self.settings().items())
        run([self.binaries.tool("pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile),
             "-o", opts, "-w", "-t", str(int(timeout)), "start"], self.user, timeout=timeout + 10,
            check=False)  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.accepts_connections():
                return
            if not self.is_running():
                break
            time.sleep(0.1)
        raise ClusterError(
            f"PostgreSQL in '{self.datadir}' did not start: {self.log_tail()}",
            f"read the server log {self.logfile}",
        )

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        if not self.is_running():
            return
        run([self.binaries.tool("pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "-t",
             str(int(timeout)), "stop"], self.user, timeout=timeout + 10, check=False)  # fmt: skip

    def is_running(self) -> bool:
        pid_file = self.datadir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def accepts_connections(self) -> bool:
        done = run([self.binaries.tool("pg_isready"), "-h", str(self.socket_dir), "-p", str(self.port)],
                   None, check=False, timeout=10)  # fmt: skip
        return done.returncode == 0

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.logfile.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no server log"
        return " | ".join(text[-lines:]) or "the server log is empty"

    # -- queries -----------------------------------------------------------------------------------

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.socket_dir} port={self.port} user=postgres dbname={dbname}"

    def connect(self, dbname: str = "postgres", autocommit: bool = True) -> Any:
        import psycopg  # imported here: only the PostgreSQL engine needs it

        try:
            return psycopg.connect(self.dsn(dbname), autocommit=autocommit, connect_timeout=10)
        except psycopg.Error as exc:
            raise ClusterError(
                f"cannot connect to PostgreSQL on port {self.port}: {exc}".strip(),
                f"check that the server in '{self.datadir}' is running (log: {self.logfile})",
            ) from None

    def query(self, sql: str, params: Sequence[Any] = (), dbname: str = "postgres") -> list[tuple[Any, ...]]:
        with self.connect(dbname) as conn:
            cur = conn.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []
