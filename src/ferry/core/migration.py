"""Migration states, the transitions allowed between them, and the status snapshot a migration reports.

The states follow the ones DBAs know from Azure DMS database migrations. A migration moves only along
`TRANSITIONS`; anything else is a bug, raised as InvalidTransition rather than recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from ferry.core.errors import FerryError


class State(StrEnum):
    QUEUED = "Queued"
    VALIDATING = "Validating"
    RESTORING_FULL = "RestoringFull"
    RESTORING_LOGS = "RestoringLogs"
    READY_FOR_CUTOVER = "ReadyForCutover"
    CUTTING_OVER = "CuttingOver"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELED = "Canceled"

    @property
    def terminal(self) -> bool:
        return self in (State.SUCCEEDED, State.FAILED, State.CANCELED)


# From each state, where a migration may go. Failed can be retried (back to Queued); Canceled and
# Succeeded are final. RestoringLogs and ReadyForCutover alternate as the target falls behind and catches
# up; an offline migration goes from RestoringFull or RestoringLogs straight to CuttingOver.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.VALIDATING, State.CANCELED, State.FAILED}),
    State.VALIDATING: frozenset({State.RESTORING_FULL, State.RESTORING_LOGS, State.FAILED, State.CANCELED}),
    State.RESTORING_FULL: frozenset({State.RESTORING_LOGS, State.CUTTING_OVER, State.FAILED, State.CANCELED}),
    State.RESTORING_LOGS: frozenset(
        {State.READY_FOR_CUTOVER, State.CUTTING_OVER, State.FAILED, State.CANCELED}
    ),
    State.READY_FOR_CUTOVER: frozenset(
        {State.RESTORING_LOGS, State.CUTTING_OVER, State.FAILED, State.CANCELED}
    ),
    State.CUTTING_OVER: frozenset({State.SUCCEEDED, State.FAILED}),
    State.SUCCEEDED: frozenset(),
    State.FAILED: frozenset({State.QUEUED}),
    State.CANCELED: frozenset(),
}


class InvalidTransition(FerryError):
    retryable = False

    def __init__(self, current: State, wanted: State) -> None:
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[current])) or "none (final)"
        super().__init__(
            f"a migration in state {current.value} cannot move to {wanted.value}",
            f"from {current.value} it may move to: {allowed}",
        )


def transition(current: State, wanted: State) -> State:
    """`wanted`, if the table allows it from `current` (staying put is always allowed)."""
    if wanted is current or wanted in TRANSITIONS[current]:
        return wanted
    raise InvalidTransition(current, wanted)


@dataclass(frozen=True)
class MigrationStatus:
    """What a migration shows while it runs: its state, where the target is, what is left."""

    state: State
    phase: str  # a human word for what happens now: "unpacking base backup", "replaying WAL"...
    source_position: str | None = None  # newest position known in the source's backups
    target_position: str | None = None  # read from the target itself
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    pending_files: int = 0
    pending_bytes: int = 0
    bytes_done: int = 0
    bytes_total: int | None = None
    throughput: float | None = None  # bytes per second, of the current phase
    current_file: str | None = None
    last_file: str | None = None
    blocked_reason: str | None = None
    cutover_estimate_seconds: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "phase": self.phase,
            "source_position": self.source_position,
            "target_position": self.target_position,
            "lag_bytes": self.lag_bytes,
            "lag_seconds": self.lag_seconds,
            "pending_files": self.pending_files,
            "pending_bytes": self.pending_bytes,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "throughput": self.throughput,
            "current_file": self.current_file,
            "last_file": self.last_file,
            "blocked_reason": self.blocked_reason,
            "cutover_estimate_seconds": self.cutover_estimate_seconds,
            "details": self.details,
        }


class StatusReporter:
    """The latest MigrationStatus of one migration: moves its state along TRANSITIONS and hands every
    change to `sink` (the terminal view, or the service's store and heartbeats)."""

    def __init__(self, sink: Callable[[MigrationStatus], None], state: State = State.QUEUED,
                 phase: str = "queued", details: dict[str, Any] | None = None) -> None:  # fmt: skip
        self.sink = sink
        self.status = MigrationStatus(state, phase, details=dict(details or {}))

    @property
    def state(self) -> State:
        return self.status.state

    def emit(self, state: State | None = None, **changes: Any) -> MigrationStatus:
        new = transition(self.status.state, state) if state is not None else self.status.state
        self.status = replace(self.status, state=new, **changes)
        self.sink(self.status)
        return self.status


# What a status stops showing once the migration succeeded: there is nothing left to restore.
AFTER_CUTOVER: dict[str, Any] = {
    "lag_bytes": None,
    "lag_seconds": None,
    "pending_files": 0,
    "pending_bytes": 0,
    "blocked_reason": None,
    "cutover_estimate_seconds": None,
    "throughput": None,
    "current_file": None,
}
