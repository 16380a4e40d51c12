"""The local work folder of a SQL Server migration: what Ferry keeps beside the target, on the host that
drives it, one folder per target instance and database:

    <work root>/<HOST_PORT_INSTANCE>/<database>-<hash>/
        claim.json        written before the first RESTORE: this migration owns the database of that name
                          (source, family GUID, where its files go); a resumed run recognises its own
                          RESTORING database by it, and never takes over someone else's
        cutover.request   `ferry cutover` asks the running `ferry migrate` to cut over (it survives a kill)
        result.json       the cutover's result, returned again by a cutover run on a database already online
        canceled          written by a cancel: later attempts apply no more logs
        placed.json       where this migration's files go, written as it chooses (before claim.json): the
                          migrations of one instance prepared at once never choose the same file name,
                          which neither sees on the target until its RESTORE DATABASE starts

The work root is the target's `work_dir` option, else FERRY_HOME/sqlserver, else
$XDG_DATA_HOME/ferry/sqlserver (~/.local/share/ferry/sqlserver). Everything else is asked of the target.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ferry.engines.base import CutoverRequest
from ferry.engines.sqlserver.connection import TargetUrl

CLAIM, REQUEST, RESULT, CANCELED = "claim.json", "cutover.request", "result.json", "canceled"
PLACED, PLACING_LOCK = "placed.json", ".placing.lock"


def work_root(options: Mapping[str, Any] | None = None) -> Path:
    opts = options or {}
    if opts.get("work_dir"):
        return Path(str(opts["work_dir"])).expanduser()
    home = os.environ.get("FERRY_HOME")
    if home:
        return Path(home).expanduser() / "sqlserver"
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "ferry" / "sqlserver"


def folder_name(database: str) -> str:
    """A file name for any database name (brackets, quotes, spaces, unicode): its safe characters and a
    hash of the whole, so two names that differ only in unsafe characters never share a folder."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", database).strip("._")[:40] or "db"
    digest = hashlib.sha256(database.casefold().encode("utf-8")).hexdigest()[:10]
    return f"{safe}-{digest}"


class WorkFolder:
    def __init__(self, root: Path, url: TargetUrl, database: str) -> None:
        self.path = root / url.key / folder_name(database)
        self.database = database

    @staticmethod
    def of(options: Mapping[str, Any] | None, url: TargetUrl, database: str) -> WorkFolder:
        return WorkFolder(work_root(options), url, database)

    def _write(self, name: str, doc: Mapping[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(json.dumps(dict(doc), indent=1, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, self.path / name)

    def _read(self, name: str) -> dict[str, Any] | None:
        with contextlib.suppress(OSError, ValueError):
            doc = json.loads((self.path / name).read_text(encoding="utf-8"))
            return doc if isinstance(doc, dict) else None
        return None

    # -- the claim -------------------------------------------------------------------------------------
    def claim(self) -> dict[str, Any] | None:
        return self._read(CLAIM)

    def write_claim(self, doc: Mapping[str, Any]) -> None:
        self._write(CLAIM, {**doc, "database": self.database, "claimed_at": time.time()})

    def forget(self) -> None:
        """The migration is over or replaced: a new one of the same database starts from scratch."""
        # Not placed.json: a new migration of the database forgets the old one just before it claims the
        # files it has placed, and in between the others must still see them as taken.
        for name in (CLAIM, REQUEST, RESULT, CANCELED):
            (self.path / name).unlink(missing_ok=True)

    # -- file placement ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def placing(self) -> Iterator[set[str]]:
        """One migration of this instance at a time chooses where its files go. Yields the paths the other
        migrations of the instance chose (in their placed.json or claim.json); `place` records this one's
        choice before the lock is let go."""
        instance = self.path.parent
        instance.mkdir(parents=True, exist_ok=True)
        with open(instance / PLACING_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # across the agents sharing this work root too
            taken: set[str] = set()
            for doc_path in (*instance.glob(f"*/{PLACED}"), *instance.glob(f"*/{CLAIM}")):
                if doc_path.parent == self.path:
                    continue
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    doc = json.loads(doc_path.read_text(encoding="utf-8"))
                    taken.update(str(p) for p in dict(doc.get("moves") or {}).values())
            yield taken

    def place(self, moves: Mapping[str, str]) -> None:
        self._write(PLACED, {"moves": dict(moves)})

    # -- the cutover request -----------------------------------------------------------------------------
    def request_cutover(self, last_backup: str | None = None) -> CutoverRequest:
        req = CutoverRequest(time.time(), last_backup=last_backup)
        self._write(REQUEST, {"requested_at": req.requested_at, "last_backup": last_backup})
        return req

    def pending_cutover(self) -> CutoverRequest | None:
        doc = self._read(REQUEST)
        if doc is None:
            return None
        try:
            at = float(doc.get("requested_at") or time.time())
        except (TypeError, ValueError):
            at = time.time()
        last = doc.get("last_backup")
        return CutoverRequest(at, last_backup=str(last) if last else None)

    def clear_cutover(self) -> None:
        (self.path / REQUEST).unlink(missing_ok=True)

    # -- the result and the cancel ----------------------------------------------------------------------
    def result(self) -> dict[str, Any] | None:
        return self._read(RESULT)

    def write_result(self, doc: Mapping[str, Any]) -> None:
        self._write(RESULT, doc)

    def cancel(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / CANCELED).write_text(f"{time.time()}\n")

    @property
    def canceled(self) -> bool:
        return (self.path / CANCELED).exists()
