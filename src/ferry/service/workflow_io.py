"""What the migration workflow, its activities and the orchestrator pass each other through Temporal.

Stdlib only (the workflow imports it and must stay deterministic): task queue names, activity names,
and small JSON-friendly dataclasses. Changing a field here changes what running workflows replay: add
fields with defaults, never rename or remove one while workflows of the old shape may still run.

What comes in through Temporal is read with `parse` (not the SDK's converter): anything that is not
exactly a value Ferry made (a payload the codec refused, a forged signal, a cutover request of an earlier
run) is turned into a reason to refuse it, never into an exception that would fail the workflow's task.

Task queues:

- `ferry-control`: the workflows themselves and the (local) activities that record state changes and
  events in the state store. Served by `ferry serve` (its in-process worker).
- `ferry-target-<name>`: restore_base, the heavy step. The agent of target <name> serves it with at most
  `--concurrency` activities at once: that is the target's limit of restores in parallel.
- `ferry-target-<name>-ops`: validate (scan + plan + target folder), replay (one long-running activity per
  online migration, mostly waiting on PostgreSQL), cutover and stop_target. Served by the same agent with
  a high limit, so a target holds any number of migrations in replay while only `--concurrency` of them
  unpack base backups.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypeVar

T = TypeVar("T")

CONTROL_QUEUE = "ferry-control"
WORKFLOW_NAME = "ferry.migration"

# Activity names (the workflow refers to them by name: it never imports the activities' code).
A_RECORD_STATE = "ferry.record_state"
A_RECORD_EVENT = "ferry.record_event"
A_VALIDATE = "ferry.validate"
A_RESTORE_BASE = "ferry.restore_base"
A_REPLAY = "ferry.replay"
A_CUTOVER = "ferry.cutover"
A_STOP_TARGET = "ferry.stop_target"

# Signals and queries.
S_CUTOVER = "cutover"
S_CANCEL = "cancel"
S_PROGRESS = "progress"
Q_STATUS = "status"

# The states a step records itself as it starts (StepInput.enter), and the phase it shows then.
ENTRY_PHASES = {"Validating": "reading the source's backups", "CuttingOver": "cutting over"}


def restore_queue(target: str) -> str:
    """Where the restores of `target` run, at most its concurrency at once."""
    return f"ferry-target-{target}"


def ops_queue(target: str) -> str:
    """Where the light, long-running work on `target` runs: validate, replay, cutover, stop."""
    return f"ferry-target-{target}-ops"


@dataclass
class MigrationInput:
    """The workflow's input: one migration, one run (a retry starts a new run with attempt + 1)."""

    id: str
    source: str
    target: str
    mode: str = "online"  # "online" | "offline"
    last_backup: str | None = None
    attempt: int = 1
    database: str | None = None  # which database of the source's store (SQL Server); None: the only one


@dataclass
class CutoverSignal:
    requested_at: float  # time.time() when the cutover was asked for: downtime is measured from here
    final_lsn: str | None = None
    # The run it is for (the migration's attempt): a copy of an earlier run's request is refused.
    attempt: int | None = None
    # What it is ("cutover"): another signal's payload sent under this name is refused.
    signal: str | None = None
    # A log backup to wait for and restore last (a tail-log backup), by file name or store key.
    last_backup: str | None = None


@dataclass
class CancelSignal:
    requested_at: float
    attempt: int | None = None
    signal: str = S_CANCEL
    drop: bool = False  # remove what was restored (SQL Server: DROP DATABASE) instead of leaving it


@dataclass
class ProgressSignal:
    """Sent by the replay activity when the target moves between RestoringLogs and ReadyForCutover."""

    state: str
    status: dict[str, Any] = field(default_factory=dict)


@dataclass
class StateChange:
    migration_id: str
    state: str
    status: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class EventInput:
    migration_id: str
    kind: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prepared:
    """What validate found and set up (engines/base.py: Prepared): the engine, where the migration restores,
    its phase ("new" and "interrupted" need the full backup restored), the full backup's size, and the
    engine's own state, opaque here.

    The fields before `engine` are what workflows started before the execution seam carry in their
    history: a PostgreSQL migration's state at the top level. They stay, empty in new workflows, so those
    histories still decode (activities.prepared_in reads them as the PostgreSQL engine's state)."""

    target_root: str = ""
    port: int = 0
    system_identifier: str = ""
    phase: str = ""
    base_tar: str = ""
    base_archives: list[str] = field(default_factory=list)
    base_manifest: str | None = None
    base_size: int = 0
    base_start_lsn: int = 0
    timeline: int = 0
    segment_size: int = 0
    archive_end_lsn: int = 0
    until_lsn: int | None = None
    engine: str = ""
    target: str = ""
    size: int = 0
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def full_size(self) -> int:
        return self.size or self.base_size


# The fields of Prepared that are a PostgreSQL migration's state in histories from before the seam.
LEGACY_STATE = (
    "target_root",
    "port",
    "system_identifier",
    "base_tar",
    "base_archives",
    "base_manifest",
    "base_size",
    "base_start_lsn",
    "timeline",
    "segment_size",
    "archive_end_lsn",
    "until_lsn",
)


@dataclass
class StepInput:
    migration: MigrationInput
    prepared: Prepared | None = None
    # The state the step records as it starts (Validating, CuttingOver), when the workflow leaves that to
    # it: one round trip less between a request and the step that serves it.
    enter: str | None = None
    drop: bool = False  # stop_target: the cancel asked to remove what was restored


@dataclass
class RestoreDone:
    skipped: bool
    archive_bytes: int = 0
    data_bytes: int = 0
    files: int = 0
    seconds: float = 0.0


@dataclass
class ReplayDone:
    """How a replay activity ended (offline: at the end of the archive or the last backup)."""

    started_at: float | None
    started_lsn: int | None
    requested_at: float
    final_lsn: str | None = None


@dataclass
class CutoverInput:
    step: StepInput
    requested_at: float
    final_lsn: str | None = None
    restored_bytes: int = 0
    restore_seconds: float = 0.0
    replay_started_at: float | None = None
    replay_started_lsn: int | None = None
    last_backup: str | None = None  # wait for this log backup and restore it last


# Types each field of a parsed value may have, by the field's annotation (dataclass annotations are
# strings here: `from __future__ import annotations`).
_ACCEPTS: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "str | None": (str, type(None)),
    "int | None": (int, type(None)),
    "float | None": (int, float, type(None)),
    "dict[str, Any]": (dict,),
    "dict[str, Any] | None": (dict, type(None)),
}


def parse(cls: type[T], raw: Any) -> T | str:
    """`raw` (a decoded JSON value) as a `cls`, or why it is not one: not an object, a field missing, one
    too many, or of the wrong type. Flat dataclasses of this module only."""
    if isinstance(raw, dict) and set(raw) == {"ferry_refused"}:
        return f"its payload was refused: {raw['ferry_refused']}"
    if not isinstance(raw, dict):
        return f"it carries {type(raw).__name__}, not Ferry's {cls.__name__}"
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    extra = sorted(set(raw) - set(known))
    if extra:
        return f"it has fields Ferry's {cls.__name__} does not: {', '.join(extra)[:200]}"
    for name, f in known.items():
        if name not in raw:
            if f.default is MISSING and f.default_factory is MISSING:
                return f"it lacks the field '{name}'"
            continue
        accepted = _ACCEPTS.get(str(f.type))
        value = raw[name]
        if (
            accepted is None
            or not isinstance(value, accepted)
            or (isinstance(value, bool) and bool not in accepted)
        ):
            return f"its field '{name}' is not a {f.type}"
    return cls(**raw)
