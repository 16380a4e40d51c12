"""`ferry wal-push` and `ferry wal-fetch`: what PostgreSQL's archive_command and restore_command run.

PostgreSQL starts these once per WAL segment, so they skip the rest of the CLI (typer, rich, the
engines): a plain argparse front that imports only the archive module keeps each call cheap.
Exit codes follow PostgreSQL's expectations: 0 done; for wal-fetch 1 means "no such file yet" (PostgreSQL
then waits or ends recovery); 2 is an error PostgreSQL logs and retries.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferry", description="WAL archive commands for PostgreSQL")
    sub = parser.add_subparsers(dest="command", required=True)
    push = sub.add_parser("wal-push", help="archive_command: copy a WAL file into a store, atomically")
    push.add_argument("path", help="the WAL file (%%p in archive_command)")
    push.add_argument("store", help="the source's folder in the backup store")
    fetch = sub.add_parser("wal-fetch", help="restore_command: fetch a WAL file from the spool or store")
    fetch.add_argument("name", help="the WAL file name (%%f in restore_command)")
    fetch.add_argument("dest", help="where PostgreSQL wants it (%%p in restore_command)")
    fetch.add_argument("--store", required=True, help="the source's folder in the backup store")
    fetch.add_argument("--spool", help="the local prefetch spool")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from ferry.core.errors import FerryError
    from ferry.core.redact import safe
    from ferry.engines.postgres import archive

    try:
        if args.command == "wal-push":
            archive.wal_push(Path(args.path), args.store)
            return 0
        found = archive.wal_fetch(
            args.name, Path(args.dest), args.store, Path(args.spool) if args.spool else None
        )
        return 0 if found else 1
    except FerryError as exc:
        # PostgreSQL puts these lines in its log: no secret of the store's location, one line each.
        print(f"ferry {args.command}: error: {safe(exc.message)}", file=sys.stderr)
        if exc.hint:
            print(f"ferry {args.command}: hint: {safe(exc.hint)}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ferry {args.command}: error: {safe(str(exc))}", file=sys.stderr)
        return 2
