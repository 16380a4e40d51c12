"""`ferry serve`: the whole service on one host, put together here, above the service and the agent it wires
up (the composition root). The state store, the API token, a local Temporal dev server
(unless `--temporal HOST:PORT`), an in-process worker for the control queue (the workflows and their
bookkeeping), the REST API on uvicorn, and one `ferry agent` process per local target (agent/local.py:
restores and scans never share this interpreter with the workflows).

Local targets are `--target NAME=ROOT[:N]` (PostgreSQL: a folder) or
`--target NAME=mssql://USER@HOST[:PORT][/INSTANCE][:N]` (SQL Server: an instance this host reaches; N, the
restores at once, follows the port, so `mssql://sa@sql01:1433:8` is port 1433 and 8 at once).

The data folder (default: FERRY_HOME, else ~/.local/share/ferry) holds:

```
DATA/state.db            the state store (SQLite; `--store URL` for PostgreSQL), 0600
DATA/api-token.hash      the API token's salted hash, 0600
DATA/codec.key           the key that encrypts everything Ferry hands to Temporal, 0600
DATA/tls/                the embedded Temporal gate's CA and certificates (0700, keys 0600)
DATA/temporal.db         the embedded Temporal's SQLite file (workflows survive restarts), 0600
DATA/temporal.pid        the embedded Temporal's pid and port while it runs
DATA/log/temporal.log    its log
DATA/targets/<id>/       the default local target: one folder per migration (engines/postgres/target.py)
DATA/sqlserver/          the work folders of SQL Server migrations (engines/sqlserver/workdir.py)
DATA/agent-NAME.ready    while the local agent of target NAME serves its queues
```

PostgreSQL target servers run as an unprivileged OS user, which must reach the target folders: when a
local target lies inside DATA, DATA is made 0711 (enterable, not listable) and its files stay 0600.

SIGINT / SIGTERM stop the API, then the workers (running activities are handed back to Temporal), then the
embedded Temporal. After a kill -9, start it again: Temporal's SQLite file has every workflow, the workers
pick their activities up again (a heartbeat timeout after the kill), and each step resumes from the
target's own state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import uvicorn

from ferry.core.errors import UsageError
from ferry.engines.base import ReplaySettings
from ferry.service.activities import TargetConfig
from ferry.service.tls import TemporalTls

log = logging.getLogger(__name__)

DEFAULT_PORT = 8470
DEFAULT_CONCURRENCY = 4
DEFAULT_TARGET = "local"  # the target `ferry serve` serves when no --target is given: DATA/targets


@dataclass
class ServeOptions:
    data: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    temporal: str | None = None  # HOST:PORT of an existing cluster; None: the embedded dev server
    temporal_port: int | None = None  # the embedded server's port (default: a free one)
    temporal_tls: TemporalTls = field(default_factory=TemporalTls)  # towards an existing cluster
    codec_key: Path | None = None  # default DATA/codec.key, made at the first start
    namespace: str = "default"
    targets: list[TargetConfig] = field(default_factory=list)  # served here (local agents)
    remote_targets: list[str] = field(default_factory=list)  # served by `ferry agent` elsewhere
    local_agent: bool = True
    store_url: str | None = None
    reset_token: bool = False
    save_token: bool = False
    os_user: str | None = None  # of the default target (DATA/targets) when no --target is given
    replay: ReplaySettings = field(default_factory=ReplaySettings)  # of every target served here
    scan_timeout: float = 600.0  # seconds a scan of POST /api/v1/scans may run before it is stopped


def backup_path_mappings(values: list[str]) -> list[str]:
    """`--backup-path-as LOCAL=TARGET`: how SQL Server instances see the stores (LOCAL made absolute)."""
    from ferry.engines.sqlserver.devices import PathMap

    # LOCAL is parsed as a store location (a local one made absolute), never resolved as a path.
    return [PathMap.parse(value).text for value in values]


def parse_target(
    text: str, data: Path, os_user: str | None = None, backup_path_as: list[str] | None = None
) -> TargetConfig | str:
    """`NAME=ROOT[:CONCURRENCY]`: a PostgreSQL target served here, its migrations in ROOT/<id>;
    `NAME=mssql://USER@HOST[:PORT][/INSTANCE][:CONCURRENCY]`: a SQL Server instance reached from here, its
    migrations' work folders in DATA/sqlserver. At most CONCURRENCY full restores at once (default 4).
    `NAME`: a target served by `ferry agent` on its own host."""
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not name or not all(c.isalnum() or c in "._-" for c in name):
        raise UsageError(
            f"--target '{text}': '{name}' is not a target name",
            "use letters, digits, '.', '_' or '-', e.g. --target pg-east=/srv/ferry/targets:4",
        )
    if not sep:
        return name
    if rest.strip().lower().startswith("mssql://"):
        return _sqlserver_target(name, rest.strip(), data, backup_path_as or [])
    root_text, concurrency = rest, DEFAULT_CONCURRENCY
    head, colon, tail = rest.rpartition(":")
    if colon and tail.isdigit():
        root_text, concurrency = head, int(tail)
    if not root_text:
        raise UsageError(f"--target '{text}' names no folder", "write NAME=ROOT[:CONCURRENCY]")
    if concurrency < 1:
        raise UsageError(f"--target '{text}': the concurrency must be at least 1", "e.g. NAME=ROOT:4")
    return TargetConfig(name, Path(os.path.abspath(root_text)), concurrency, os_user, socket.gethostname())


def split_concurrency(url: str) -> tuple[str, int | None]:
    """`mssql://USER@HOST[:PORT][/INSTANCE][:N]` into the instance's URL and N. The first `:digits` after
    the host is the port; a second one, or one after the instance's name, is N."""
    scheme, _, after = url.partition("://")
    netloc, slash, instance = after.partition("/")
    if slash:
        head, colon, tail = instance.rpartition(":")
        if colon and tail.isdigit():
            return f"{scheme}://{netloc}/{head}", int(tail)
        return url, None
    host = netloc.rpartition("@")[2].rpartition("]")[2]  # after an [IPv6] literal
    if host.count(":") >= 2:
        head, _, tail = netloc.rpartition(":")
        if tail.isdigit():
            return f"{scheme}://{head}", int(tail)
    return url, None


def _sqlserver_target(name: str, text: str, data: Path, backup_path_as: list[str]) -> TargetConfig:
    from ferry.engines.sqlserver.connection import TargetUrl

    location, concurrency = split_concurrency(text)
    url = TargetUrl.parse(location)  # a usage error names what is wrong with it, before anything starts
    if concurrency is not None and concurrency < 1:
        raise UsageError(
            f"--target '{name}={text}': the concurrency must be at least 1",
            "e.g. NAME=mssql://sa@sql01:1433:4",
        )
    options = {"backup_path_as": backup_path_mappings(backup_path_as)} if backup_path_as else {}
    return TargetConfig(
        name,
        data / "sqlserver",
        concurrency or DEFAULT_CONCURRENCY,
        None,
        socket.gethostname(),
        engine="sqlserver",
        location=str(url),
        options=options,
    )


def _private_file(path: Path) -> None:
    """Create `path` empty with mode 0600 if it does not exist (SQLite keeps the mode, also for -wal/-shm)."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)


def prepare_data(options: ServeOptions) -> None:
    data = options.data
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    inside = [t for t in options.targets if t.root == data or data in t.root.parents]
    if inside and options.local_agent:
        mode = stat.S_IMODE(data.stat().st_mode)
        if mode & 0o011 != 0o011:
            os.chmod(data, mode | 0o011)  # enterable by the servers' OS user, still not listable
    (data / "log").mkdir(exist_ok=True, mode=0o700)


class Service:
    """What `ferry serve` runs. `say` prints a line for the user (the token, the addresses)."""

    def __init__(self, options: ServeOptions, say: Callable[[str], None] | None = None) -> None:
        self.options = options
        self.say = say or (lambda text: print(text, flush=True))
        self.address: str | None = None

    async def run(self, stop: asyncio.Event | None = None) -> None:
        from ferry.agent.local import LocalAgents, Reach
        from ferry.agent.worker import on_signals, prepare_root, register, running
        from ferry.service.api import ScanJobs, StoreTargets, create_app
        from ferry.service.auth import TokenVerifier, ensure_token, reset_token, save_token
        from ferry.service.codec import KEY_FILE, create_key, load_key
        from ferry.service.control import control_worker
        from ferry.service.orchestrator import TemporalOrchestrator
        from ferry.service.store import SqlStateStore
        from ferry.service.temporal_dev import DevServer, connect

        opts = self.options
        if not opts.targets and not opts.remote_targets and opts.local_agent:
            opts.targets = [
                TargetConfig(
                    DEFAULT_TARGET,
                    opts.data / "targets",
                    DEFAULT_CONCURRENCY,
                    opts.os_user,
                    socket.gethostname(),
                )
            ]
        opts.targets = [replace(t, replay=opts.replay) for t in opts.targets]
        _check_port_free(opts.host, opts.port)
        prepare_data(opts)
        if opts.local_agent:
            for cfg in opts.targets:
                prepare_root(cfg)
        url = opts.store_url
        if url is None:
            _private_file(opts.data / "state.db")
            url = f"sqlite:///{opts.data / 'state.db'}"
        store = SqlStateStore(url)
        dev: DevServer | None = None
        try:
            known = store.targets()
            for cfg in opts.targets:
                register(store, cfg)
            for name in opts.remote_targets:
                if name not in known:
                    store.register_target(name, {"agent": False})
            token = reset_token(opts.data) if opts.reset_token else ensure_token(opts.data)
            if token is not None:
                self.say(f"API token (shown once; keep it, e.g. in FERRY_TOKEN): {token}")
                if opts.save_token:
                    self.say(f"token saved in {save_token(token)}")
            key = load_key(opts.codec_key) if opts.codec_key else create_key(opts.data / KEY_FILE)
            if opts.temporal:
                self.address = opts.temporal
                client = await connect(opts.temporal, key, opts.namespace, tls=opts.temporal_tls)
            else:
                dev = DevServer(opts.data, opts.temporal_port, key=key)
                client = await dev.start()
                self.address = dev.address
                if not dev.isolated:
                    self.say(
                        f"warning: the embedded Temporal's own ports are open to every local user "
                        f"({dev.exposure}); what Ferry hands it stays encrypted and signed"
                    )
            stop = stop or on_signals()
            workers = [control_worker(client, store)]
            tls = dev.tls if dev is not None and dev.tls is not None else opts.temporal_tls
            reach = Reach(str(self.address), opts.codec_key or opts.data / KEY_FILE, url, opts.namespace, tls)
            agents = LocalAgents(opts.targets if opts.local_agent else [], reach, opts.data)
            orchestrator = TemporalOrchestrator(client, store)
            app = create_app(store, orchestrator, TokenVerifier(opts.data), StoreTargets(store),
                             scan_jobs=ScanJobs(opts.scan_timeout))  # fmt: skip
            server = _Server(uvicorn.Config(app, host=opts.host, port=opts.port, log_level="warning",
                                            access_log=False, lifespan="off"))  # fmt: skip
            async with running(workers):
                try:
                    await self._serve(server, agents, stop, dev is not None)
                finally:
                    await agents.stop()
        finally:
            if dev is not None:
                dev.stop()
            store.close()

    async def _serve(self, server: Any, agents: Any, stop: asyncio.Event, embedded: bool) -> None:
        """Start the local agents and the API; serve until `stop`; then stop the API (the agents after)."""
        opts = self.options
        late = await agents.start()
        if late:
            self.say(f"warning: the agents of {', '.join(late)} are still starting")
        serving = asyncio.create_task(server.serve())
        await _started(server, serving)
        where = (
            f"embedded Temporal at {self.address} (TLS, client certificates in {opts.data / 'tls'}; "
            f"{opts.data / 'temporal.db'})"
            if embedded
            else f"Temporal at {self.address}" + (" (TLS)" if opts.temporal_tls.active else "")
        )
        local = ", ".join(f"{t.name} ({t.where}, {t.concurrency} restores)" for t in opts.targets)
        self.say(f"Ferry API on http://{opts.host}:{opts.port} · {where}")
        self.say(
            f"targets: {local or 'none here'}"
            + (f" · remote: {', '.join(opts.remote_targets)}" if opts.remote_targets else "")
        )
        self.say("ready")
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({serving, waiter}, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        await serving
        waiter.cancel()
        self.say("stopping: API down, handing running steps back to Temporal")


def _check_port_free(host: str, port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise UsageError(
                f"cannot serve the API on {host}:{port}: {exc.strerror}",
                "another `ferry serve` may run there; stop it or choose another --port",
            ) from None


async def _started(server: Any, serving: asyncio.Task[None]) -> None:
    while not server.started:
        if serving.done():
            serving.result()
            raise UsageError("the API server stopped at start", "see the messages above")
        await asyncio.sleep(0.05)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: Ferry stops it, then the workers, then Temporal."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def default_data() -> Path:
    from ferry.service.auth import data_folder

    return data_folder()


def serve(options: ServeOptions) -> None:
    """Run the service in the foreground until SIGINT/SIGTERM."""
    from ferry.service.logs import configure

    configure(logging.WARNING, sys.stderr)
    asyncio.run(Service(options).run())
