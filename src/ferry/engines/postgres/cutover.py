"""Asking a running migration to cut over: a small request file in the target folder.

`ferry migrate` runs in the foreground and polls for it; `ferry cutover TARGET` (another shell, a script,
a scheduler) writes it. A file is what survives the migrating process being killed and restarted: the
request stands until the cutover is done.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ferry.engines.base import CutoverRequest

__all__ = ["CutoverRequest", "clear_cutover", "pending_cutover", "request_cutover"]

REQUEST_FILE = "cutover.request"


def request_cutover(
    root: Path, final_lsn: str | None = None, source_dsn: str | None = None
) -> CutoverRequest:
    req = CutoverRequest(time.time(), final_lsn, source_dsn)
    tmp = root / f".{REQUEST_FILE}.tmp"
    tmp.write_text(json.dumps(req.__dict__))
    os.replace(tmp, root / REQUEST_FILE)
    return req


def pending_cutover(root: Path) -> CutoverRequest | None:
    try:
        raw = json.loads((root / REQUEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    return CutoverRequest(
        requested_at=float(raw.get("requested_at") or time.time()),
        final_lsn=raw.get("final_lsn"),
        source_dsn=raw.get("source_dsn"),
    )


def clear_cutover(root: Path) -> None:
    (root / REQUEST_FILE).unlink(missing_ok=True)
