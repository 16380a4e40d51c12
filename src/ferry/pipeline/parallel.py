"""Map CPU-bound work over runs of items on every core, the calling process included, in order.

A scan of a local folder is parsing, which threads cannot spread (one interpreter lock). Forked children
parse runs of files and send their results back pickled; but unpickling them is work for the calling
process alone, about a quarter of what parsing them cost. So the caller does not sit and unpickle: it
takes runs from the same counter as the children and parses them itself, which costs no pickling at all,
and unpickles the children's results between its own runs. Runs are claimed one at a time from a shared
counter, so a core slowed by other work on the machine simply does fewer of them.

A child that dies (killed, out of memory, a bug) leaves runs it claimed without results: the caller parses
them itself once the children are gone, so the results are complete or the caller's own error is raised.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.context import ForkProcess
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_POLL_SECONDS = 0.05


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


class _Counter:
    """The next run to claim, shared by the caller and its children."""

    def __init__(self, ctx: Any) -> None:
        self._value = ctx.Value("q", 0)

    def claim(self) -> int:
        with self._value.get_lock():
            i: int = self._value.value
            self._value.value = i + 1
        return i


class _Mapper(Generic[T, R]):
    def __init__(
        self,
        runs: Sequence[T],
        work: Callable[[T], R],
        dump: Callable[[R], bytes],
        load: Callable[[bytes], R],
        children: int,
        child_init: Callable[[], None] | None,
    ) -> None:
        self.runs, self.work, self.dump, self.load = runs, work, dump, load
        self.child_init = child_init
        # fork: a child starts in a millisecond with everything already imported. It only runs `work` and
        # sends bytes back; it touches no lock or connection of the caller.
        ctx = multiprocessing.get_context("fork")
        self.counter = _Counter(ctx)
        self.results: Any = ctx.Queue()
        self.done: dict[int, R] = {}
        self.procs: list[ForkProcess] = [
            ctx.Process(target=self._child, name=f"ferry-scan-{n}", daemon=True) for n in range(children)
        ]

    def _child(self) -> None:
        if self.child_init is not None:
            self.child_init()
        while (i := self.counter.claim()) < len(self.runs):
            self.results.put((i, self.dump(self.work(self.runs[i]))))
        self.results.close()
        self.results.join_thread()  # everything sent before the process ends

    def _drain(self, timeout: float | None) -> bool:
        """Take the children's results that have arrived; wait up to `timeout` for the first one."""
        try:
            i, payload = self.results.get(timeout=timeout) if timeout else self.results.get_nowait()
        except queue.Empty:
            return False
        self.done[i] = self.load(payload)
        while True:
            try:
                i, payload = self.results.get_nowait()
            except queue.Empty:
                return True
            self.done[i] = self.load(payload)

    def _orphaned(self) -> bool:
        return not any(p.is_alive() for p in self.procs) and not self._drain(_POLL_SECONDS)

    def run(self) -> Iterator[R]:
        for p in self.procs:
            p.start()
        try:
            yielded = 0
            while (i := self.counter.claim()) < len(self.runs):
                self.done[i] = self.work(self.runs[i])
                self._drain(None)
                while yielded in self.done:
                    yield self.done.pop(yielded)
                    yielded += 1
            while yielded < len(self.runs):
                if yielded not in self.done and not self._drain(_POLL_SECONDS) and self._orphaned():
                    # Every child is gone and nothing more is coming: what they left, the caller does.
                    self.done[yielded] = self.work(self.runs[yielded])
                while yielded in self.done:
                    yield self.done.pop(yielded)
                    yielded += 1
        finally:
            for p in self.procs:
                if p.is_alive():
                    p.terminate()
                p.join()
            self.results.close()


def map_runs(
    runs: Sequence[T],
    work: Callable[[T], R],
    dump: Callable[[R], bytes],
    load: Callable[[bytes], R],
    children: int,
    child_init: Callable[[], None] | None = None,
) -> Iterator[R]:
    """`work(run)` for every run, in order, on the caller and `children` forked processes. A child's
    result travels as `dump(result)` and is rebuilt with `load`; the caller's own results are not.
    `child_init` runs first in each child (to open its own connections, say)."""
    if children < 1 or len(runs) < 2:
        return (work(run) for run in runs)
    return _Mapper(runs, work, dump, load, children, child_init).run()
