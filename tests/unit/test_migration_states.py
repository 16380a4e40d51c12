from __future__ import annotations

import itertools

import pytest

from ferry.core.migration import TRANSITIONS, InvalidTransition, State, transition


def test_every_state_has_a_row() -> None:
    assert set(TRANSITIONS) == set(State)


def test_final_states_go_nowhere() -> None:
    assert TRANSITIONS[State.SUCCEEDED] == frozenset()
    assert TRANSITIONS[State.CANCELED] == frozenset()


def test_online_path_is_allowed() -> None:
    path = [State.QUEUED, State.VALIDATING, State.RESTORING_FULL, State.RESTORING_LOGS,
            State.READY_FOR_CUTOVER, State.CUTTING_OVER, State.SUCCEEDED]  # fmt: skip
    for a, b in itertools.pairwise(path):
        assert transition(a, b) is b


def test_forbidden_move_names_both_states_and_the_allowed_ones() -> None:
    with pytest.raises(InvalidTransition) as info:
        transition(State.SUCCEEDED, State.RESTORING_LOGS)
    assert "Succeeded" in str(info.value) and "RestoringLogs" in str(info.value)
    assert "final" in info.value.hint
    with pytest.raises(InvalidTransition):
        transition(State.CUTTING_OVER, State.CANCELED)
