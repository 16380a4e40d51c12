"""This host: the OS user server processes run as, commands run as that user, TCP ports.

Engines and the service both need these (PostgreSQL target servers run as an unprivileged user; the
service picks ports for the embedded Temporal and for target servers), so they live here, below both.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferry.core.errors import FerryError, UsageError

# Debian's PostgreSQL package makes this user; servers refuse to run as root, so Ferry runs them as it.
DEFAULT_OS_USER = "postgres"

# Switching users through setpriv(1) lets Python start the child with vfork(): asking subprocess to switch
# (user=, group=) makes it fork() instead, which copies the page tables of a large, many-threaded process
# (`ferry serve` with its workflows and agents) while holding the interpreter lock: measured 29 ms against
# 2 ms per call in a 400 MB process.
SETPRIV = shutil.which("setpriv")


class HostError(FerryError):
    """A command could not be run on this host, or failed."""


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
                f"OS user '{name}' does not exist; database servers refuse to run as root",
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


def run(
    cmd: Sequence[str],
    user: OsUser | None,
    *,
    timeout: float = 120,
    check: bool = True,
    env: dict[str, str] | None = None,
    error: type[FerryError] = HostError,
) -> subprocess.CompletedProcess[str]:
    """Run a command as `user` (None: as Ferry), capturing its output for error messages. A failure
    raises `error` (the caller's own class, so its callers catch what they always caught)."""
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
        raise error(
            f"cannot run {cmd[0]}{who}: {exc.strerror}",
            "every folder on the way to it must be readable and searchable by that user",
        ) from None
    except subprocess.TimeoutExpired:
        raise error(
            f"{Path(cmd[0]).name} did not finish within {timeout:.0f} s", "see the server log for details"
        ) from None
    if check and done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise error(
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
