"""`ferry serve` and `ferry agent`: the migration service and the agents of its targets.

A target is PostgreSQL (a folder on the agent's host, under which each migration gets its own) or SQL
Server (an instance the agent's host reaches: `mssql://USER@HOST[:PORT][/INSTANCE]`, the password from
FERRY_MSSQL_PASSWORD... or a credentials file, never from the command line). `ferry serve` runs an agent
process for each target it serves itself; `ferry agent` serves one target from any other host.
"""

from __future__ import annotations

import os
from contextlib import suppress
from pathlib import Path
from typing import Annotated, Any

import typer

from ferry.cli import render
from ferry.core.errors import UsageError

err = render.console(stderr=True)

# The replay settings `migrate`, `serve` and `agent` share (see MigrationSpec).
BlockedAfter = Annotated[
    float,
    typer.Option(
        "--blocked-after",
        help="Seconds replay may wait for a WAL file the store lacks before it is shown as blocked "
        "(and an offline migration fails, naming the file).",
        min=1.0,
    ),
]
ReadyLag = Annotated[
    int,
    typer.Option(
        "--ready-lag",
        help="Once caught up, stay ReadyForCutover while the lag is within this many WAL segments.",
        min=1,
    ),
]
# How `serve` (with --temporal) and `agent` reach Temporal, and the key of the payload codec.
TlsCa = Annotated[
    Path | None,
    typer.Option("--temporal-tls-ca", help="CA certificate (PEM) of the Temporal server's certificate."),
]
TlsCert = Annotated[
    Path | None, typer.Option("--temporal-tls-cert", help="Client certificate (PEM) for Temporal (mTLS).")
]
TlsKey = Annotated[
    Path | None, typer.Option("--temporal-tls-key", help="The client certificate's key (PEM).")
]
TlsName = Annotated[
    str | None,
    typer.Option(
        "--temporal-tls-server-name", help="Name the server's certificate must carry, if not its host."
    ),
]
TlsOn = Annotated[
    bool, typer.Option("--temporal-tls", help="Reach Temporal over TLS (implied by the other TLS options).")
]
CodecKeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--codec-key",
        help="The key that encrypts what Ferry hands Temporal: the file `ferry serve` made, DATA/codec.key "
        "(the same for every process of a deployment).",
    ),
]

BackupPathAs = Annotated[
    list[str] | None,
    typer.Option(
        "--backup-path-as",
        help="SQL Server targets: LOCAL=TARGET, the instance reads the stores' files under LOCAL (a folder "
        "or any store location: az://..., smb://..., s3://...) at TARGET (a path, a share or a URL; "
        "repeatable).",
    ),
]


def _errors() -> Any:
    from ferry.cli.main import _errors as errors  # one error renderer for every command

    return errors()


def serve(
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Ferry's data folder (default: FERRY_HOME, else ~/.local/share/ferry)."),
    ] = None,
    host: Annotated[str, typer.Option(help="Address the API listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the API.")] = 8470,
    temporal: Annotated[
        str | None,
        typer.Option(
            "--temporal", help="HOST:PORT of an existing Temporal cluster (default: start one here)."
        ),
    ] = None,
    temporal_port: Annotated[
        int | None, typer.Option(help="Port of the embedded Temporal (default: a free one).")
    ] = None,
    namespace: Annotated[str, typer.Option(help="Temporal namespace.")] = "default",
    target: Annotated[
        list[str] | None,
        typer.Option(
            "--target",
            help="NAME=ROOT:CONCURRENCY (PostgreSQL) or NAME=mssql://USER@HOST:PORT/INSTANCE:CONCURRENCY "
            "(SQL Server; port, instance and concurrency optional) served here, or NAME served by `ferry "
            "agent` elsewhere (repeatable; default: local=DATA/targets:4).",
        ),
    ] = None,
    no_local_agent: Annotated[
        bool, typer.Option("--no-local-agent", help="Run no agent here: every target has its own.")
    ] = False,
    store: Annotated[
        str | None,
        typer.Option("--store", help="State store: a file path or postgresql://... (default DATA)."),
    ] = None,
    os_user: Annotated[
        str | None, typer.Option(help="OS user the local target servers run as when Ferry runs as root.")
    ] = None,
    reset_token: Annotated[bool, typer.Option("--reset-token", help="Make a new API token.")] = False,
    save_token: Annotated[
        bool, typer.Option("--save-token", help="Keep a new token in ~/.config/ferry/token for the CLI.")
    ] = False,
    blocked_after: BlockedAfter = 60.0,
    ready_lag: ReadyLag = 2,
    backup_path_as: BackupPathAs = None,
    scan_timeout: Annotated[
        float,
        typer.Option(
            "--scan-timeout",
            help="Seconds a scan (POST /api/v1/scans) may run before it is stopped.",
            min=1.0,
        ),
    ] = 600.0,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_name: TlsName = None,
    tls_on: TlsOn = False,
    codec_key: CodecKeyOpt = None,
) -> None:
    """Run the migration service: API, durable workflows (Temporal), and an agent for each local target."""
    from ferry.engines.base import ReplaySettings
    from ferry.serve import ServeOptions, default_data, parse_target
    from ferry.serve import serve as run_service
    from ferry.service.activities import TargetConfig
    from ferry.service.tls import TemporalTls

    with _errors():
        tls = TemporalTls(tls_ca, tls_cert, tls_key, tls_name, tls_on)
        if tls.active and not temporal:
            raise UsageError(
                "the --temporal-tls options are for a Temporal cluster given with --temporal",
                "the embedded Temporal is reached over TLS with certificates Ferry makes in DATA/tls",
            )
        folder = Path(os.path.abspath(data)) if data else default_data()
        parsed = [parse_target(t, folder, os_user, backup_path_as or []) for t in target or []]
        options = ServeOptions(
            data=folder,
            host=host,
            port=port,
            temporal=temporal,
            temporal_port=temporal_port,
            namespace=namespace,
            targets=[t for t in parsed if isinstance(t, TargetConfig)],
            remote_targets=[t for t in parsed if isinstance(t, str)],
            local_agent=not no_local_agent,
            store_url=store,
            reset_token=reset_token,
            save_token=save_token,
            os_user=os_user,
            replay=ReplaySettings(blocked_after, ready_lag),
            temporal_tls=tls,
            codec_key=Path(os.path.abspath(codec_key)) if codec_key else None,
            scan_timeout=scan_timeout,
        )
        with suppress(KeyboardInterrupt):
            run_service(options)


def agent(
    target: Annotated[str, typer.Option("--target", help="Name of the target this agent serves.")],
    root: Annotated[
        Path | None,
        typer.Option(
            "--root",
            help="PostgreSQL: folder for the target's migrations (one per id). SQL Server: the migrations' "
            "work folder (default DATA/sqlserver).",
        ),
    ] = None,
    mssql: Annotated[
        str | None,
        typer.Option(
            "--mssql",
            help="The target is this SQL Server instance: mssql://USER@HOST:PORT/INSTANCE, port and instance "
            "optional (password: FERRY_MSSQL_PASSWORD..., or a credentials file).",
        ),
    ] = None,
    temporal: Annotated[str, typer.Option("--temporal", help="HOST:PORT of the Temporal server.")] = (
        "127.0.0.1:7233"
    ),
    namespace: Annotated[str, typer.Option(help="Temporal namespace.")] = "default",
    concurrency: Annotated[int, typer.Option(help="Restores run at once on this target.")] = 4,
    os_user: Annotated[
        str | None, typer.Option(help="OS user the target servers run as when Ferry runs as root.")
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            envvar="FERRY_STORE",
            help="The service's state store: file path or postgresql://... URL (or FERRY_STORE).",
        ),
    ] = None,
    blocked_after: BlockedAfter = 60.0,
    ready_lag: ReadyLag = 2,
    backup_path_as: BackupPathAs = None,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_name: TlsName = None,
    tls_on: TlsOn = False,
    codec_key: CodecKeyOpt = None,
    ready_file: Annotated[Path | None, typer.Option("--ready-file", hidden=True)] = None,
) -> None:
    """Serve one target's task queues: restores (at most --concurrency at once), replay and cutover."""
    import asyncio
    import logging
    import socket

    from ferry.agent.worker import run_agent
    from ferry.engines.base import ReplaySettings
    from ferry.serve import backup_path_mappings
    from ferry.service.activities import TargetConfig
    from ferry.service.auth import data_folder
    from ferry.service.codec import KEY_FILE, load_key
    from ferry.service.logs import configure
    from ferry.service.store import SqlStateStore
    from ferry.service.tls import TemporalTls

    with _errors():
        if concurrency < 1:
            raise UsageError("--concurrency must be at least 1", "give the number of restores to run at once")
        if mssql is None and root is None:
            raise UsageError(
                f"agent of target '{target}': give --root DIR (PostgreSQL) or --mssql URL (SQL Server)",
                "e.g. --root /srv/ferry/targets, or --mssql mssql://ferry@sql01:1433",
            )
        replay = ReplaySettings(blocked_after, ready_lag)
        if mssql is not None:
            from ferry.engines.sqlserver.connection import TargetUrl

            url = str(TargetUrl.parse(mssql))
            maps = backup_path_mappings(backup_path_as or [])
            folder = Path(os.path.abspath(root)) if root else data_folder() / "sqlserver"
            cfg = TargetConfig(target, folder, concurrency, None, socket.gethostname(), replay, "sqlserver",
                               url, {"backup_path_as": maps} if maps else {})  # fmt: skip
        else:
            assert root is not None
            cfg = TargetConfig(target, Path(os.path.abspath(root)), concurrency, os_user, replay=replay)
        key = load_key(codec_key or data_folder() / KEY_FILE)
        tls = TemporalTls(tls_ca, tls_cert, tls_key, tls_name, tls_on)
        configure(logging.WARNING)
        state = SqlStateStore(store)
        err.print(
            f"agent of target {target}: {cfg.where}, {concurrency} restores at once; Temporal {temporal}"
        )
        try:
            with suppress(KeyboardInterrupt):
                asyncio.run(
                    run_agent(
                        cfg, temporal, state, key=key, tls=tls, namespace=namespace, ready_file=ready_file
                    )
                )
        finally:
            state.close()
