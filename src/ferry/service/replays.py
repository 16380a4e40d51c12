"""The replays a worker runs, so that the step taking a target over (the cutover, a cancel's stop) stops
its migration's replay in-process, at once, instead of waiting for Temporal to carry a cancel to it with
a heartbeat (activities.py)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from ferry.core.errors import FerryError

REPLAY_STOP_WAIT = 120.0  # seconds the cutover waits for this worker's replay of the migration to stop


class ReplayStillRunning(FerryError):
    """The replay did not stop for the step that takes the target over: retried."""

    def __init__(self, migration_id: str, timeout: float) -> None:
        super().__init__(
            f"the replay of {migration_id} did not stop within {timeout:.0f} s",
            "the step is retried; if it keeps failing, look at the agent's log",
        )


class LocalReplays:
    """The replays this worker runs, by migration id.

    The cutover step stops its migration's replay here, in-process, instead of waiting for Temporal to
    carry a cancel to it through a heartbeat: the cutover does not wait on the heartbeat interval, and
    heartbeats can be rare (hundreds of migrations wait in ReadyForCutover, each with a replay running).
    One agent serves a target, so the replay and the cutover of a migration run in the same worker."""

    @dataclass
    class _Run:
        stop: threading.Event
        done: threading.Event
        handed: object | None = None  # what the replay hands the cutover (the engine keeps the rest)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, LocalReplays._Run] = {}
        self._taken: set[str] = set()

    @contextlib.contextmanager
    def run(self, migration_id: str) -> Iterator[threading.Event | None]:
        """Register a replay; yields its stop event, or None when the migration's cutover is running (the
        replay must not start then: the cutover has its own)."""
        run = self._Run(threading.Event(), threading.Event())
        with self._lock:
            blocked = migration_id in self._taken
            if not blocked:
                earlier = self._runs.get(migration_id)
                if earlier is not None:
                    earlier.stop.set()  # a retry replaces an attempt Temporal gave up on
                self._runs[migration_id] = run
        if blocked:
            yield None
            return
        try:
            yield run.stop
        finally:
            with self._lock:
                if self._runs.get(migration_id) is run:
                    del self._runs[migration_id]
            run.done.set()

    def offer(self, migration_id: str, replay: object) -> bool:
        """A replay stopped for the cutover offers what it runs to it; True if the cutover waits for it
        (the engine then leaves it running for the cutover: Until.taking_over)."""
        with self._lock:
            run = self._runs.get(migration_id)
            if run is None or migration_id not in self._taken or not run.stop.is_set():
                return False
            run.handed = replay
            return True

    @contextlib.contextmanager
    def taking_over(self, migration_id: str, timeout: float = REPLAY_STOP_WAIT) -> Iterator[object | None]:
        """For a step that takes the target over (the cutover; stop_target on cancel): stop the
        migration's replay (if this worker runs one) and keep new ones from starting while the block runs.
        Yields what the stopped replay handed over, else None."""
        with self._lock:
            self._taken.add(migration_id)
            run = self._runs.get(migration_id)
        try:
            if run is not None:
                run.stop.set()
                if not run.done.wait(timeout):
                    raise ReplayStillRunning(migration_id, timeout)
            yield run.handed if run is not None else None
        finally:
            with self._lock:
                self._taken.discard(migration_id)
