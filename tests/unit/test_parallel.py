"""pipeline/parallel.py: runs mapped over the caller and forked children come back complete and in order."""

from __future__ import annotations

import os
import pickle
import time

import pytest

from ferry.pipeline import parallel

pytestmark = pytest.mark.skipif(not parallel.can_fork(), reason="needs the fork start method")


def _slow_square(run: list[int]) -> list[tuple[int, int]]:
    time.sleep(0.002)  # long enough that the children get runs too
    return [(x * x, os.getpid()) for x in run]


def test_results_come_back_in_order_from_every_process() -> None:
    runs = [list(range(i, i + 3)) for i in range(0, 300, 3)]
    out = list(parallel.map_runs(runs, _slow_square, pickle.dumps, pickle.loads, children=2))
    assert [x for run in out for x, _pid in run] == [x * x for x in range(300)]
    pids = {pid for run in out for _x, pid in run}
    assert os.getpid() in pids and len(pids) > 1


def test_runs_of_a_child_that_dies_are_done_by_the_caller() -> None:
    caller = os.getpid()

    def work(run: list[int]) -> list[int]:
        if os.getpid() != caller:
            os._exit(3)  # a child killed in the middle of its first run
        return [x + 1 for x in run]

    runs = [[i] for i in range(50)]
    out = list(parallel.map_runs(runs, work, pickle.dumps, pickle.loads, children=2))
    assert out == [[i + 1] for i in range(50)]


def test_an_error_in_the_callers_work_is_raised_and_the_children_stopped() -> None:
    def work(run: list[int]) -> list[int]:
        if run == [7]:
            raise ValueError("bad run")
        return run

    with pytest.raises(ValueError, match="bad run"):
        list(parallel.map_runs([[i] for i in range(20)], work, pickle.dumps, pickle.loads, children=1))


def test_without_children_the_caller_does_everything() -> None:
    runs = [[1], [2]]
    assert list(parallel.map_runs(runs, lambda r: r, pickle.dumps, pickle.loads, children=0)) == runs
