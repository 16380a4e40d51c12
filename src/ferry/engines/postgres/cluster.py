"""Control of local PostgreSQL clusters: find the server binaries, initdb, start, stop, query.

PostgreSQL refuses to run as root, so when Ferry runs as root every server process runs as an
unprivileged OS user (`postgres` by default, created by Debian's package). Files the server owns are
chowned to that user; Ferry itself keeps running as root.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferry.core.errors import FerryError, UsageError

DEFAULT_OS_USER = "postgres"


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


@dataclass(frozen=True)
class OsUser:
    name: str
    uid: int
    gid: int

    @staticmethod
    def resolve(name: str | None = None) -> OsUser | None:
        """The user server processes run as: None when Ferry is not root (they run as Ferry's user)."""
        if os.geteuid() != 0:
            return None
        name = name or DEFAULT_OS_USER
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise UsageError(
                f"OS user '{name}' does not exist; PostgreSQL refuses to run as root",
                f"create it (useradd --system {name}) or name another with --os-user",
            ) from None
        return OsUser(name, entry.pw_uid, entry.pw_gid)


def chown_tree(path: Path, user: OsUser | None) -> None:
    if user is None:
        return
    os.chown(path, user.uid, user.gid)
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(folder, name), user.uid, user.gid)


# Switching users through setpriv(1) lets Python start the child with vfork(): asking subprocess to switch
# (user=, group=) makes it fork() instead, which copies the page tables of a large, many-threaded process
# (`ferry serve` with its workflows and agents) while holding the interpreter lock: measured 29 ms against
# 2 ms per call in a 400 MB process.
SETPRIV = shutil.which("setpriv")


def run(cmd: Sequence[str], user: OsUser | None, *, timeout: float = 120, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run a PostgreSQL tool as the server's OS user, capturing its output for error messages."""
    kwargs: dict[str, Any] = {}
    argv = list(cmd)
    if user is not None and SETPRIV is not None:
        argv = [SETPRIV, f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", "--", *argv]
    elif user is not None:
        kwargs.update(user=user.uid, group=user.gid, extra_groups=[])
    full_env = {**os.environ, "LC_ALL": "C.UTF-8", **(env or {})}
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=full_env,
                              cwd="/", **kwargs)  # fmt: skip
    except OSError as exc:
        who = f" as OS user '{user.name}'" if user else ""
        raise ClusterError(
            f"cannot run {cmd[0]}{who}: {exc.strerror}",
            "every folder on the way to it must be readable and searchable by that user",
        ) from None
    except subprocess.TimeoutExpired:
        raise ClusterError(
            f"{Path(cmd[0]).name} did not finish within {timeout:.0f} s", "see the server log for details"
        ) from None
    if check and done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise ClusterError(
            f"{Path(cmd[0]).name} failed (exit {done.returncode}): {' | '.join(tail)}",
            "see the server log for details",
        )
    return done


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


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
