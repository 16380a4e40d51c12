"""Continuous discovery: what arrived in a store since the last look, for online migrations of any engine.

A migration polls a Watcher: each `poll()` lists the store once and returns what is new, what changed,
what is held back and what went away since the previous poll. A file is handed over only once it is
stable: backup jobs write for minutes and copy tools upload piece by piece, and a half-written file
read now would only be read again. Stable means unchanged (size, and etag or modification time) between two
looks:

- a file already seen at the previous poll with the same signature is stable at once;
- a file seen for the first time (or changed since the last poll) gets a second look within the same
  poll, `settle` seconds later: unchanged, it is handed over in this poll, so a finished backup reaches
  the catalog within one poll; still moving, it is `held` until a later poll sees it unchanged.

The default interval is the store's own (`StoreCapabilities.poll_seconds`): 2 s for a local folder,
10 s for shares and object stores, where a listing costs requests. Engines do not poll stores themselves.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ferry.core.errors import ObjectNotFound
from ferry.engines.base import Engine
from ferry.pipeline.discover import FileResult, read_object
from ferry.stores.base import BackupStore, ObjectInfo

# With more fresh files than this, the second look is one listing rather than a stat per file.
RELIST_ABOVE = 16

Signature = tuple[int, str | float | None]


def signature(info: ObjectInfo) -> Signature:
    """What says an object changed: its size and etag, or its modification time where it has no etag (a
    listing and a stat may report the time at different precisions; an etag is the same everywhere)."""
    return (info.size, info.etag if info.etag is not None else info.modified)


@dataclass(frozen=True)
class Changes:
    """One poll's news. `new` and `changed` are stable and ready to read; `held` are still moving;
    `removed` are keys handed over before that the store no longer lists."""

    new: tuple[ObjectInfo, ...] = ()
    changed: tuple[ObjectInfo, ...] = ()
    held: tuple[ObjectInfo, ...] = ()
    removed: tuple[str, ...] = ()

    @property
    def ready(self) -> tuple[ObjectInfo, ...]:
        return self.new + self.changed

    def __bool__(self) -> bool:
        return bool(self.new or self.changed or self.held or self.removed)


class Watcher:
    def __init__(
        self,
        store: BackupStore,
        prefix: str = "",
        *,
        interval: float | None = None,
        settle: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.interval = interval if interval is not None else store.capabilities.poll_seconds
        self.settle = settle if settle is not None else min(1.0, self.interval / 4)
        self._sleep = sleep
        self._clock = clock
        self._seen: dict[str, Signature] = {}  # the last look at every listed key
        self._handed: dict[str, Signature] = {}  # what each handed-over key was when handed over
        self._last_poll: float | None = None
        self.polls = 0

    @property
    def known(self) -> dict[str, Signature]:
        """Every key handed over so far, with the signature it had then."""
        return dict(self._handed)

    def poll(self) -> Changes:
        self._last_poll = self._clock()
        self.polls += 1
        listing = {o.key: o for o in self.store.iter_objects(self.prefix)}
        moving = {k: o for k, o in listing.items() if self._handed.get(k) != signature(o)}
        stable = {k: o for k, o in moving.items() if self._seen.get(k) == signature(o)}
        fresh = {k: o for k, o in moving.items() if k not in stable}
        held: list[ObjectInfo] = []
        if fresh:
            second = self._second_look(fresh) if self.settle > 0 else {}
            for key, first in fresh.items():
                again = second.get(key)
                if again is not None and signature(again) == signature(first):
                    stable[key] = again
                elif again is not None:
                    held.append(again)
                    listing[key] = again
                elif self.settle <= 0:
                    held.append(first)  # no second look: a later poll decides
                else:
                    del listing[key]  # gone since the listing
        self._seen = {k: signature(o) for k, o in listing.items()}
        new = tuple(o for k, o in sorted(stable.items()) if k not in self._handed)
        changed = tuple(o for k, o in sorted(stable.items()) if k in self._handed)
        removed = tuple(sorted(k for k in self._handed if k not in listing))
        for k in removed:
            del self._handed[k]
        for k, o in stable.items():
            self._handed[k] = signature(o)
        return Changes(new, changed, tuple(sorted(held, key=lambda o: o.key)), removed)

    def _second_look(self, fresh: dict[str, ObjectInfo]) -> dict[str, ObjectInfo]:
        self._sleep(self.settle)
        if len(fresh) > RELIST_ABOVE:
            return {o.key: o for o in self.store.iter_objects(self.prefix) if o.key in fresh}
        out = {}
        for key in fresh:
            try:
                out[key] = self.store.stat(key)
            except ObjectNotFound:
                continue  # gone again: a temp file renamed away, say
        return out

    def wait(self, stop: threading.Event | None = None) -> Changes:
        """Sleep until the next poll is due (one interval after the previous one started), then poll.
        Returns no changes, without listing, when `stop` is set meanwhile."""
        if self._last_poll is not None:
            delay = self._last_poll + self.interval - self._clock()
            if delay > 0:
                if stop is not None:
                    if stop.wait(delay):
                        return Changes()
                else:
                    self._sleep(delay)
        if stop is not None and stop.is_set():
            return Changes()
        return self.poll()


def read_changes(
    store: BackupStore, engines: Sequence[Engine], changes: Changes, *, workers: int | None = None
) -> list[FileResult]:
    """Read the backup headers of a poll's new and changed files, as a scan would, several at a time on
    stores that answer with latency. The results go to the engine's catalog like a scan's."""
    ready = changes.ready
    count = workers if workers is not None else store.capabilities.parallel_reads
    if count <= 1 or len(ready) <= 1:
        return [read_object(store, engines, info) for info in ready]
    with ThreadPoolExecutor(max_workers=min(count, len(ready)), thread_name_prefix="ferry-watch") as pool:
        return list(pool.map(lambda info: read_object(store, engines, info), ready))
