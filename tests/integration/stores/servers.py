"""Real store servers on loopback for the tests and the benchmark: Azurite, Samba's smbd, moto's S3.

Each can be stopped and started again on the same port with the same data (Azurite and Samba keep it
on disk; moto keeps it in memory, so it is only ever started once). `DropProxy` sits between a client
and a server and cuts the connections after a given number of bytes, to test resumed reads.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
SMB_USER = "ferrysmb"
SMB_PASSWORD = "Ferry-test-1"


class Unavailable(Exception):
    """The server cannot be started on this machine; the message says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Unavailable(f"exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise Unavailable(f"did not listen on port {port} within {timeout:.0f} s")


@dataclass
class Server:
    """A server process in its own process group, so that stopping it stops its children too."""

    name: str
    folder: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        log = self.folder / f"{self.name}.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                self.command(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.folder, start_new_session=True,
            )  # fmt: skip
        wait_for_port(self.port, self.proc, log)

    def stop(self) -> None:
        if self.proc is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def azurite_binary() -> Path:
    env = os.environ.get("FERRY_AZURITE")
    path = Path(env) if env else REPO / ".tools" / "node_modules" / ".bin" / "azurite-blob"
    if not path.exists():
        raise Unavailable(f"no Azurite at {path}: run scripts/system-deps.sh (npm install into .tools)")
    if shutil.which("node") is None:
        raise Unavailable("Azurite needs node, which is not installed")
    return path


@dataclass
class Azurite(Server):
    in_memory: bool = False

    def command(self) -> list[str]:
        cmd = [
            str(azurite_binary()), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
            "--skipApiVersionCheck", "--loose", "--disableTelemetry", "--silent",
        ]  # fmt: skip
        if self.in_memory:
            return [*cmd, "--inMemoryPersistence"]
        (self.folder / "data").mkdir(exist_ok=True)
        return [*cmd, "--location", str(self.folder / "data")]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={self.endpoint};"
        )


@dataclass
class Samba(Server):
    share: str = "backups"

    def command(self) -> list[str]:
        smbd = shutil.which("smbd") or "/usr/sbin/smbd"
        return [smbd, "--foreground", "--no-process-group", f"--configfile={self.folder / 'smb.conf'}",
                "--debug-stdout", "--debuglevel=0"]  # fmt: skip

    @property
    def share_path(self) -> Path:
        return self.folder / "share"

    def prepare(self) -> None:
        """smb.conf with every state folder under ours, and a test user in a private passdb."""
        if os.geteuid() != 0:
            raise Unavailable("smbd needs root here (it switches to the share user)")
        smbd, smbpasswd = shutil.which("smbd") or "/usr/sbin/smbd", shutil.which("smbpasswd")
        if not Path(smbd).exists() or smbpasswd is None:
            raise Unavailable("Samba is not installed: apt-get install samba (scripts/system-deps.sh)")
        for d in ("share", "private", "lock", "state", "cache", "pid", "ncalrpc", "log"):
            (self.folder / d).mkdir(parents=True, exist_ok=True)
        f = self.folder
        (f / "smb.conf").write_text(
            "[global]\n"
            "  server role = standalone server\n"
            f"  smb ports = {self.port}\n"
            "  interfaces = 127.0.0.1\n  bind interfaces only = yes\n"
            f"  passdb backend = tdbsam:{f / 'private' / 'passdb.tdb'}\n"
            f"  private dir = {f / 'private'}\n  lock directory = {f / 'lock'}\n"
            f"  state directory = {f / 'state'}\n  cache directory = {f / 'cache'}\n"
            f"  pid directory = {f / 'pid'}\n  ncalrpc dir = {f / 'ncalrpc'}\n"
            f"  log file = {f / 'log' / 'log.%m'}\n"
            "  disable spoolss = yes\n  load printers = no\n  printing = bsd\n  printcap name = /dev/null\n"
            "  map to guest = never\n  server min protocol = SMB2_10\n  log level = 0\n"
            f"[{self.share}]\n  path = {self.share_path}\n  read only = no\n  force user = root\n"
        )
        if subprocess.run(["id", SMB_USER], capture_output=True).returncode != 0:
            made = subprocess.run(
                ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", SMB_USER], capture_output=True
            )
            exists = subprocess.run(["id", SMB_USER], capture_output=True).returncode == 0
            if made.returncode != 0 and not exists:  # another test process may have made it meanwhile
                raise Unavailable(f"cannot create the OS user {SMB_USER}: {made.stderr.decode()[-500:]}")
        added = subprocess.run(
            [smbpasswd, "-c", str(f / "smb.conf"), "-a", "-s", SMB_USER],
            input=f"{SMB_PASSWORD}\n{SMB_PASSWORD}\n".encode(), capture_output=True,
        )  # fmt: skip
        if added.returncode != 0:
            raise Unavailable(f"smbpasswd failed: {added.stderr.decode()[-500:]}")

    def url(self, path: str = "", *, user: str = SMB_USER) -> str:
        tail = f"/{path}" if path else ""
        return f"smb://{user}@127.0.0.1:{self.port}/{self.share}{tail}"


@dataclass
class Moto(Server):
    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class DropProxy:
    """A TCP proxy on loopback that, once armed with `drop_after(n)`, cuts every connection after the
    server has sent `n` more bytes through it: a dropped connection in the middle of a read."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._budget: int | None = None
        self._socks: set[socket.socket] = set()
        self.drops = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def drop_after(self, nbytes: int) -> None:
        with self._lock:
            self._budget = nbytes

    def close(self) -> None:
        self._closed = True
        with suppress(OSError):
            self._listener.close()
        self._cut_all()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if counted:
                    with self._lock:
                        budget = self._budget
                        if budget is not None and len(data) >= budget:
                            self._budget = None
                            cut = True
                            data = data[:budget]
                        else:
                            cut = False
                            if budget is not None:
                                self._budget = budget - len(data)
                    if cut:
                        dst.sendall(data)
                        self.drops += 1
                        self._cut_all()
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def _cut_all(self) -> None:
        with self._lock:
            socks, self._socks = self._socks, set()
        for s in socks:
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with suppress(OSError):
                s.close()
