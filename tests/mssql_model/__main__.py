"""`python -m tests.mssql_model --state DIR ...`: run the SQL Server restore model until killed.

Prints one line `ready <port>` once it listens. It is a test model of SQL Server, never a SQL Server.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from tests.mssql_model.instance import DEFAULT_LOGIN
from tests.mssql_model.server import ModelServer


def _free_bytes(values: list[str]) -> dict[str, int]:
    out = {}
    for value in values:
        path, sep, size = value.rpartition("=")
        if not sep or not size.isdigit():
            raise SystemExit(f"--free-bytes wants PATH=BYTES, got {value!r}")
        out[path] = int(size)
    return out


def _pairs(values: list[str], usage: str) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, target = value.partition("=")
        if not sep or not name or not target:
            raise SystemExit(f"{usage}, got {value!r}")
        out[name] = target
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mssql_model", description=__doc__)
    parser.add_argument("--state", required=True, type=Path, help="state folder (kept across restarts)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--version", default="15.0.2000.5", help="product version the model reports")
    parser.add_argument("--edition", default="Developer Edition (64-bit)")
    parser.add_argument("--instance", default=None, help="instance name (default instance if absent)")
    parser.add_argument("--login", action="append", default=[], help="USER:PASSWORD[:ROLE,ROLE]")
    parser.add_argument("--restore-mbps", type=float, default=200.0, help="simulated restore rate, MB/s")
    parser.add_argument("--min-restore-seconds", type=float, default=0.05)
    parser.add_argument("--free-bytes", action="append", default=[], help="PATH=BYTES: a volume's size")
    parser.add_argument("--root", type=Path, default=None, help="the model's file system (default STATE/fs)")
    parser.add_argument("--data-path", default="/var/opt/mssql/data/")
    parser.add_argument("--log-path", default="/var/opt/mssql/data/")
    parser.add_argument("--backup-path", default="/var/opt/mssql/backup/")
    parser.add_argument(
        "--platform",
        choices=("linux", "windows"),
        default="linux",
        help="the host OS the instance reports; UNC devices are read on windows only",
    )
    parser.add_argument(
        "--smb-login", default=None, help="USER:PASSWORD of the service account on SMB shares"
    )
    parser.add_argument("--smb-server", action="append", default=[],
                        help="NAME=ADDRESS:PORT: where the UNC host NAME is served")  # fmt: skip
    parser.add_argument(
        "--lazy-state",
        action="store_true",
        help="write the state file twice a second instead of after every change (benchmarks)",
    )
    args = parser.parse_args(argv)
    server = ModelServer(
        args.state,
        port=args.port,
        host=args.host,
        version=args.version,
        edition=args.edition,
        instance=args.instance,
        logins=args.login or [DEFAULT_LOGIN],
        restore_mbps=args.restore_mbps,
        min_restore_seconds=args.min_restore_seconds,
        free_bytes=_free_bytes(args.free_bytes),
        fs_root=args.root,
        data_path=args.data_path,
        log_path=args.log_path,
        backup_path=args.backup_path,
        durable=not args.lazy_state,
        platform=args.platform,
        smb_login=args.smb_login,
        smb_servers=_pairs(args.smb_server, "--smb-server wants NAME=ADDRESS:PORT"),
    ).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"ready {server.port}", flush=True)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
