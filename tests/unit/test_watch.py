"""Continuous discovery on a real folder. The second look's pause is where a test plays the backup job
that is still writing: no clock is involved."""

from __future__ import annotations

import threading
from pathlib import Path

from ferry.engines.registry import all_engines
from ferry.pipeline.watch import Changes, Watcher, read_changes
from ferry.stores.base import StoreCapabilities
from ferry.stores.local import LocalStore


class Pauses:
    """A sleep that runs a test's action instead of waiting."""

    def __init__(self) -> None:
        self.actions: list[object] = []
        self.slept: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)
        if self.actions:
            action = self.actions.pop(0)
            assert callable(action)
            action()


def _keys(infos: tuple[object, ...]) -> list[str]:
    return [getattr(i, "key") for i in infos]  # noqa: B009


def test_first_poll_hands_over_finished_files_and_holds_growing_ones(tmp_path: Path) -> None:
    (tmp_path / "db1").mkdir()
    (tmp_path / "db1" / "full.bak").write_bytes(b"f" * 100)
    (tmp_path / "db1" / "log1.trn").write_bytes(b"l" * 10)
    pauses = Pauses()
    watcher = Watcher(LocalStore(tmp_path), sleep=pauses)
    pauses.actions.append(lambda: (tmp_path / "db1" / "log1.trn").write_bytes(b"l" * 20))  # still growing
    first = watcher.poll()
    assert _keys(first.new) == ["db1/full.bak"] and _keys(first.held) == ["db1/log1.trn"]
    # The writer has finished: the next poll hands it over, once.
    second = watcher.poll()
    assert _keys(second.new) == ["db1/log1.trn"] and not second.held
    assert watcher.poll() == Changes()


def test_new_file_reaches_the_next_poll_and_changes_and_removals_are_reported(tmp_path: Path) -> None:
    pauses = Pauses()
    watcher = Watcher(LocalStore(tmp_path), sleep=pauses)
    assert watcher.poll() == Changes()
    (tmp_path / "log2.trn").write_bytes(b"x" * 50)
    assert _keys(watcher.poll().new) == ["log2.trn"], "a finished backup reaches the catalog within one poll"
    (tmp_path / "log2.trn").write_bytes(b"y" * 60)
    assert _keys(watcher.poll().changed) == ["log2.trn"]
    (tmp_path / "log2.trn").unlink()
    assert watcher.poll().removed == ("log2.trn",)
    assert watcher.known == {}


def test_a_file_that_keeps_growing_stays_held(tmp_path: Path) -> None:
    path = tmp_path / "big.bak"
    path.write_bytes(b"a")
    pauses = Pauses()
    watcher = Watcher(LocalStore(tmp_path), sleep=pauses)
    for n in range(2, 6):
        pauses.actions.append(lambda n=n: path.write_bytes(b"a" * n * 10))
        got = watcher.poll()
        assert not got.new and _keys(got.held) == ["big.bak"]
        path.write_bytes(b"a" * (n * 10 + 1))  # and grows again before the next poll
    # It stopped growing: the second look agrees, and it is handed over in this poll.
    assert _keys(watcher.poll().new) == ["big.bak"]


def test_many_new_files_get_one_second_listing(tmp_path: Path) -> None:
    for i in range(40):
        (tmp_path / f"log{i:02d}.trn").write_bytes(b"x" * i)
    store = LocalStore(tmp_path)
    stats: list[str] = []
    original = store.stat
    store.stat = lambda key: stats.append(key) or original(key)  # type: ignore[method-assign]
    changes = Watcher(store, sleep=lambda s: None).poll()
    assert len(changes.new) == 40 and stats == []


def test_interval_follows_the_store() -> None:
    class Remote(LocalStore):
        @property
        def capabilities(self) -> StoreCapabilities:
            return StoreCapabilities(poll_seconds=10.0)

    assert Watcher(LocalStore("/")).interval == 2.0
    assert Watcher(Remote("/")).interval == 10.0
    assert Watcher(Remote("/"), interval=3.0).interval == 3.0


def test_wait_stops_when_asked(tmp_path: Path) -> None:
    watcher = Watcher(LocalStore(tmp_path), interval=3600.0, sleep=lambda s: None)
    watcher.poll()
    stop = threading.Event()
    stop.set()
    assert watcher.wait(stop) == Changes() and watcher.polls == 1


def test_read_changes_reads_new_backups(tmp_path: Path, corpus: Path) -> None:
    watcher = Watcher(LocalStore(tmp_path), sleep=lambda s: None)
    watcher.poll()
    data = (corpus / "sql2008-backups" / "StopAt" / "StopAt_1.trn").read_bytes()
    (tmp_path / "new.trn").write_bytes(data)
    changes = watcher.poll()
    [result] = read_changes(watcher.store, all_engines(), changes)
    assert result.finding is None and result.sets and result.info.key == "new.trn"
