"""What the source stores hold now, kept up to date incrementally for every migration that reads them.

Many migrations read one store: a SQL Server store of 200 databases has 200 migrations, each of which
validates against it and, online, looks at it again every second for new log backups. Scanning the whole
store for each of them, each time, would cost 200 full scans per second. A `SourceCache` keeps one view
per store location instead: a `Watcher` (watch.py) that lists the store and reads only the files that
are new or changed since the last poll (each once it is stable), and the backup sets read so far, grouped
by database. A migration asks for its database's sets; a poll happens only when the last one is older
than what the caller accepts (`fresh`), so new log backups reach every migration of the store within one
poll, and one listing serves them all.

Files the watcher holds back (still changing between two looks) are reported as `file-changing`
findings, which engines show as held; files that went away are dropped from the view.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ferry.core.findings import Finding, Severity
from ferry.engines.base import Engine, SourceFiles
from ferry.engines.registry import engine as engine_named
from ferry.pipeline.discover import FileResult
from ferry.pipeline.watch import Watcher, read_changes
from ferry.stores.base import BackupStore
from ferry.stores.registry import open_location

IDLE_SECONDS = 600.0  # a view no migration asked for in this long is dropped (its store closed)


def shares_stores(engine_name: str) -> bool:
    """Whether the engine's stores hold many databases (SQL Server), so that many migrations read one."""
    return callable(getattr(engine_named(engine_name), "database_of", None))


def database_of(engine: Engine, backup_set: object) -> str | None:
    """The database a backup set belongs to, for engines whose stores hold many (SQL Server); None for
    engines that hold one per store (PostgreSQL's cluster) or a set it cannot tell."""
    of: Callable[[object], str | None] | None = getattr(engine, "database_of", None)
    return of(backup_set) if of is not None else None


@dataclass
class _View:
    store: BackupStore
    watcher: Watcher
    engine: Engine
    lock: threading.Lock = field(default_factory=threading.Lock)
    files: dict[str, FileResult] = field(default_factory=dict)
    held: tuple[Finding, ...] = ()
    polled_at: float | None = None
    used_at: float = 0.0
    # Built once per poll: every set, the sets of each database (casefolded name), every finding.
    every: tuple[object, ...] = ()
    by_database: dict[str, tuple[object, ...]] = field(default_factory=dict)
    findings: tuple[Finding, ...] = ()

    def poll(self) -> None:
        changes = self.watcher.poll()
        for key in changes.removed:
            self.files.pop(key, None)
        for result in read_changes(self.store, [self.engine], changes):
            self.files[result.info.key] = result
        self.held = tuple(_held(info.key) for info in changes.held)
        every: list[object] = []
        groups: dict[str, list[object]] = {}
        findings: list[Finding] = []
        for key in sorted(self.files):
            result = self.files[key]
            if result.finding is not None:
                findings.append(result.finding)
            if result.engine != self.engine.name:
                continue
            for s in result.sets:
                every.append(s)
                name = database_of(self.engine, s)
                if name is not None:
                    groups.setdefault(name.casefold(), []).append(s)
        self.every = tuple(every)
        self.by_database = {name: tuple(sets) for name, sets in groups.items()}
        self.findings = tuple(findings) + self.held
        self.polled_at = time.monotonic()


def _held(key: str) -> Finding:
    return Finding(
        code="file-changing",
        severity=Severity.WARNING,
        message=f"'{key}' is still changing between two looks: it is still being written",
        hint="Ferry reads it once it stops changing",
        files=(key,),
    )


class SourceCache:
    """One incremental view per (location, engine), shared by the threads of one process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, **watcher: Any) -> None:
        self._lock = threading.Lock()
        self._views: dict[tuple[str, str], _View] = {}
        self._clock = clock
        self._watcher = watcher  # Watcher's settings (interval, settle) for every view: tests shorten them

    def files(
        self, location: str, engine_name: str, database: str | None = None, *, fresh: float = 1.0
    ) -> SourceFiles:
        """The sets of `database` (all of the engine's sets when None or when the engine has one database
        per store) and every finding about the location's files, read at most `fresh` seconds ago."""
        view = self._view(location, engine_name)
        with view.lock:
            now = self._clock()
            view.used_at = now
            if view.polled_at is None or now - view.polled_at >= fresh:
                view.poll()
            sets: Sequence[object] = view.every
            if database is not None and view.by_database:
                sets = view.by_database.get(database.casefold(), ())
            return SourceFiles(location, tuple(sets), view.findings)

    def _view(self, location: str, engine_name: str) -> _View:
        key = (location, engine_name)
        with self._lock:
            self._evict()
            view = self._views.get(key)
            if view is None:
                store, prefix = open_location(location)
                watcher = Watcher(store, prefix, **self._watcher)
                view = _View(store, watcher, engine_named(engine_name), used_at=self._clock())
                self._views[key] = view
            return view

    def _evict(self) -> None:
        now = self._clock()
        for key in [k for k, v in self._views.items() if now - v.used_at > IDLE_SECONDS]:
            self._close(self._views.pop(key))

    @staticmethod
    def _close(view: _View) -> None:
        close = getattr(view.store, "close", None)
        if callable(close):
            try:
                close()
            except Exception:  # a store that cannot close cleanly is dropped anyway
                return
