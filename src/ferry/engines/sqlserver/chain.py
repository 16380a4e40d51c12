"""Restore chain selection for one SQL Server database: which full, differential and log backups to restore,
in which order, up to which point, and what stands in the way (as findings).

LSN rules (format doc §4, RESTORE's own checks): a log backup applies at restore position P when
FirstLSN <= P < LastLSN. If P < FirstLSN, SQL Server refuses it as "too recent" (log is missing in between);
if LastLSN <= P, as "too early" (it holds nothing new). The position after restoring any backup is its
LastLSN. Choosing logs is therefore interval covering: at P take the log reaching furthest, which also copes
with copy-only logs and duplicates that overlap the regular chain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from ferry.core.findings import Finding, Severity
from ferry.core.plan import StepKind
from ferry.engines.sqlserver.headers import BackupType
from ferry.engines.sqlserver.recovery import Goal, StopPoint, as_utc, resolve_stop_point
from ferry.engines.sqlserver.stripes import (
    DatabaseKey,
    LogicalBackup,
    describe_database,
    group_by_database,
    merge_stripes,
    quote_files,
)

__all__ = [
    "Chain",
    "ChainStep",
    "Continuation",
    "DatabaseKey",
    "LogicalBackup",
    "RestorableRange",
    "StopPoint",
    "continue_chain",
    "group_by_database",
    "merge_stripes",
    "restorable_range",
    "select_chain",
]

_HINT_STRIPES = (
    "a striped backup needs every one of its files: find the missing stripe files "
    "and add their folder to the scan"
)


@dataclass(frozen=True)
class ChainStep:
    kind: StepKind
    backup: LogicalBackup
    stop_at: str | None = None  # ISO 8601 time with the source's UTC offset, or "lsn:<n>" (STOPATMARK)


@dataclass(frozen=True)
class Chain:
    steps: tuple[ChainStep, ...] = ()
    findings: tuple[Finding, ...] = ()
    restores_to: datetime | None = None
    restores_to_lsn: int | None = None


@dataclass(frozen=True)
class RestorableRange:
    """The points a database can be restored to: its earliest full backup to the end of its best chain."""

    earliest: datetime | None = None
    latest: datetime | None = None
    earliest_lsn: int | None = None
    latest_lsn: int | None = None


@dataclass(frozen=True)
class _Attempt:
    steps: tuple[ChainStep, ...]
    findings: tuple[Finding, ...]
    reached: bool  # the goal was met (always False without a goal)

    @property
    def end(self) -> LogicalBackup:
        return self.steps[-1].backup


def _on_path(log: LogicalBackup, pos: int, forks: frozenset[UUID]) -> bool:
    """Can `log` follow a restore that stands at `pos` on `forks`? The log's fork at `pos` decides, not the
    fork it starts on: a log applies from `pos` on, and what it holds below `pos` is not replayed. Unknown
    forks never block."""
    here = log.forks_at(pos)
    return not forks or not here or bool(forks & here)


def _same_line(log: LogicalBackup, forks: frozenset[UUID]) -> bool:
    """Could `log` continue this fork at some position? Tells a gap (a log missing on our line) apart from
    logs that only exist on another fork (reported as `chain-fork`)."""
    covered = log.forks_covered
    return not forks or not covered or bool(forks & covered)


def _based_on(diff: LogicalBackup, full: LogicalBackup) -> bool:
    # Format doc §4: a differential's DatabaseBackupLSN is its base's CheckpointLSN and its
    # DifferentialBaseGUID the base's BackupSetGUID. The GUID may be unknown; the LSN then decides alone.
    if diff.database_backup_lsn != full.checkpoint_lsn:
        return False
    return diff.differential_base_guid is None or diff.differential_base_guid == full.backup_set_guid


def _stripes_text(b: LogicalBackup) -> str:
    missing = ", ".join(str(n) for n in b.missing_stripes)
    return f"has {quote_files(b.files)} but misses stripe(s) {missing} of {b.head.family_count}"


def _pick_diff(
    full: LogicalBackup, diffs: Sequence[LogicalBackup], goal: Goal | None, label: str
) -> tuple[LogicalBackup | None, list[Finding]]:
    # A copy-only full leaves the differential base where it was, so no differential can build on it.
    if full.is_copy_only:
        return None, []
    based = [
        d
        for d in diffs
        if _based_on(d, full) and d.last_lsn > full.last_lsn and (goal is None or goal.allows_base(d))
    ]
    based.sort(key=lambda d: (d.last_lsn, d.sort_key), reverse=True)
    chosen = next((d for d in based if d.complete), None)
    # An incomplete differential is skipped, not fatal: an older one or the logs usually cover the same
    # range at the cost of replay time. If nothing covers it, the chain ends earlier and says so.
    findings = [
        Finding(
            "stripes-incomplete",
            Severity.WARNING,
            f"differential backup of database {label} {_stripes_text(d)}; Ferry restores "
            + (f"the older differential {quote_files(chosen.files)} instead" if chosen else "without it"),
            _HINT_STRIPES,
            d.files,
        )
        for d in based
        if not d.complete and (chosen is None or d.last_lsn > chosen.last_lsn)
    ]
    return chosen, findings


def _walk(
    full: LogicalBackup,
    diffs: Sequence[LogicalBackup],
    logs: Sequence[LogicalBackup],
    goal: Goal | None,
    label: str,
) -> _Attempt:
    """The chain that starts at `full`: its best differential, then logs by interval covering.
    `logs` holds the non-empty log backups sorted by FirstLSN."""
    steps = [ChainStep(StepKind.FULL, full)]
    if goal is not None and goal.done_at(full):
        return _Attempt(tuple(steps), (), True)
    diff, findings = _pick_diff(full, diffs, goal, label)
    if diff is not None:
        steps.append(ChainStep(StepKind.DIFF, diff))
        if goal is not None and goal.done_at(diff):
            return _Attempt(tuple(steps), tuple(findings), True)
    # The fork a data backup leaves the restore on is read like a log's: at its LastLSN. A database created
    # by RESTORE carries the old fork in every header, but its backups lie beyond the fork point.
    pos = steps[-1].backup.last_lsn
    more = continue_chain(logs, pos, steps[-1].backup.forks_at(pos), goal)
    steps.extend(more.steps)
    if more.incomplete is not None:
        findings.append(
            Finding(
                "stripes-incomplete",
                Severity.ERROR,
                f"log backup of database {label} {_stripes_text(more.incomplete)}; the restore stops "
                f"before it, at LSN {more.position}",
                _HINT_STRIPES,
                more.incomplete.files,
            )
        )
    elif more.after_gap is not None:
        findings.append(_gap(label, steps[-1].backup, more.after_gap))
    return _Attempt(tuple(steps), tuple(findings), more.reached)


@dataclass(frozen=True)
class Continuation:
    """The logs that follow a restore standing at `start`: `steps` to apply in order, and why they end."""

    steps: tuple[ChainStep, ...]
    position: int  # where the restore stands after the steps
    forks: frozenset[UUID]
    reached: bool = False  # the goal was met (always False without a goal)
    incomplete: LogicalBackup | None = None  # the next log misses stripes: the chain stops before it
    after_gap: LogicalBackup | None = None  # the next log on this fork, beyond missing LSNs


def continue_chain(
    logs: Sequence[LogicalBackup], start: int, forks: frozenset[UUID], goal: Goal | None = None
) -> Continuation:
    """The log backups a restore standing at LSN `start` on recovery fork(s) `forks` applies next, by
    interval covering (module docstring). `logs` holds non-empty log backups sorted by FirstLSN. Used by
    the planner after a full or differential backup, and by a migration following new logs from where
    the target stands."""
    pos = start
    steps: list[ChainStep] = []
    # Positions only grow, so a log once behind stays behind: keep a small window of live candidates.
    active: list[LogicalBackup] = []
    i = 0
    while True:
        while i < len(logs) and logs[i].first_lsn <= pos:
            active.append(logs[i])
            i += 1
        active = [log for log in active if log.last_lsn > pos]
        usable = [log for log in active if _on_path(log, pos, forks)]
        if not usable:
            break
        # Reach furthest; on ties prefer the regular log (a copy-only one is the spare) and the fork the
        # restore stands on (the base's, until a log crosses a fork point). Complete sets come first.
        log = min(
            usable,
            key=lambda c: (
                not c.complete,
                -c.last_lsn,
                c.is_copy_only,
                c.recovery_fork_id not in forks,
                c.sort_key,
            ),
        )
        if not log.complete:
            return Continuation(tuple(steps), pos, forks, incomplete=log)
        stop = goal.stop_in(log) if goal is not None else None
        steps.append(ChainStep(StepKind.LOG, log, stop))
        if goal is not None and (stop is not None or goal.done_at(log)):
            return Continuation(tuple(steps), log.last_lsn, forks, reached=True)
        pos, forks = log.last_lsn, log.forks_at(log.last_lsn) or forks
    after = next((log for log in logs[i:] if _same_line(log, forks)), None)
    return Continuation(tuple(steps), pos, forks, after_gap=after)


def _gap(label: str, before: LogicalBackup, after: LogicalBackup) -> Finding:
    return Finding(
        "chain-gap",
        Severity.ERROR,
        f"log chain of database {label} breaks after '{before.files[0]}' (LastLSN {before.last_lsn}): "
        f"the next log backup '{after.files[0]}' starts at {after.first_lsn}; "
        f"LSNs {before.last_lsn} to {after.first_lsn} are missing",
        "find the missing log backup (check the backup job's history in msdb.dbo.backupset) "
        "or take a new full backup",
        before.files + after.files,
    )


def select_chain(backups: Sequence[LogicalBackup], stop: StopPoint | None = None) -> Chain:
    """The restore chain of ONE database (see `group_by_database`), up to `stop` or as far as it goes."""
    ordered = sorted(backups, key=lambda b: b.sort_key)  # the answer must not depend on listing order
    if not ordered:
        return Chain()
    label = describe_database(ordered[0])
    findings: list[Finding] = []
    restorable = (BackupType.DATABASE, BackupType.DIFFERENTIAL, BackupType.LOG)
    other = [b for b in ordered if b.backup_type not in restorable]
    if other:
        kinds = sorted({b.backup_type.description if b.backup_type else "unknown type" for b in other})
        skipped = [f for b in other for f in b.files]
        findings.append(
            Finding(
                "unsupported-backup-type",
                Severity.WARNING,
                f"{len(other)} backup set(s) of database {label} are of a type Ferry does not restore "
                f"({', '.join(kinds)}): {quote_files(skipped)}; they are left out",
                "restore them by hand if needed; Ferry plans from full, differential and log backups",
                tuple(skipped),
            )
        )
    fulls = [b for b in ordered if b.backup_type is BackupType.DATABASE]
    diffs = [b for b in ordered if b.backup_type is BackupType.DIFFERENTIAL]
    logs = [b for b in ordered if b.backup_type is BackupType.LOG and not b.is_empty_log]
    if not fulls:
        rest = [f for b in ordered if b.backup_type is not BackupType.DATABASE for f in b.files]
        findings.append(
            Finding(
                "no-full-backup",
                Severity.ERROR,
                f"database {label} has no full backup among the scanned files, only {len(diffs)} "
                f"differential, {len(ordered) - len(diffs) - len(other)} log and {len(other)} other "
                f"backup(s): {quote_files(rest)}",
                "add the folder that holds its full backup to the scan, or take a new full backup",
                tuple(rest),
            )
        )
        return Chain(findings=tuple(findings))
    findings.extend(_missing_bases(label, diffs, fulls))
    goal = resolve_stop_point(stop, ordered)
    eligible = [f for f in fulls if goal is None or goal.allows_base(f)]
    eligible.sort(key=lambda f: (f.last_lsn, f.sort_key), reverse=True)  # latest first
    usable = [f for f in eligible if f.complete]
    if not usable:
        if goal is not None and not eligible:
            findings.append(_unreachable(label, goal, ordered))
        for f in eligible:
            findings.append(
                Finding(
                    "stripes-incomplete",
                    Severity.ERROR,
                    f"full backup of database {label} {_stripes_text(f)}; no complete full backup is left "
                    "to start the restore",
                    _HINT_STRIPES,
                    f.files,
                )
            )
        return Chain(findings=tuple(findings))

    chosen: _Attempt | None = None
    attempts: list[_Attempt] = []
    for full in usable:
        attempts.append(_walk(full, diffs, logs, goal, label))
        if attempts[-1].reached:
            chosen = attempts[-1]  # the latest full that reaches the stop point: fewest logs to replay
            break
    if chosen is None:
        # Without a stop point (or when none is reached) take the chain that gets furthest; `max` keeps the
        # first, i.e. latest, full on ties. Usually that is the latest full, but not when a copy-only full
        # is newer than the base of a differential that goes further.
        chosen = max(attempts, key=lambda a: a.end.last_lsn)
    start = chosen.steps[0].backup
    for f in eligible:
        if not f.complete and f.last_lsn > start.last_lsn:
            findings.append(
                Finding(
                    "stripes-incomplete",
                    Severity.WARNING,
                    f"full backup of database {label} {_stripes_text(f)}; Ferry restores the older full "
                    f"{quote_files(start.files)} instead",
                    _HINT_STRIPES,
                    f.files,
                )
            )
    findings.extend(chosen.findings)
    findings.extend(_after_checks(label, chosen.steps, logs))
    if goal is not None and not chosen.reached:
        findings.append(_unreachable(label, goal, ordered))
    last = chosen.end
    restores_to: datetime | None = last.backup_finish
    restores_to_lsn: int | None = last.last_lsn
    if goal is not None and chosen.reached and chosen.steps[-1].stop_at is not None:
        # The restore stops inside the last log. Only the coordinate that was asked for is known; the
        # other one is learnt from the server after the restore, so none is printed rather than the
        # log's end, which the restore does not reach.
        restores_to = goal.time
        restores_to_lsn = goal.lsn
    return Chain(
        steps=chosen.steps,
        findings=tuple(findings),
        restores_to=restores_to,
        restores_to_lsn=restores_to_lsn,
    )


def _missing_bases(
    label: str, diffs: Sequence[LogicalBackup], fulls: Sequence[LogicalBackup]
) -> list[Finding]:
    orphans: dict[str, list[LogicalBackup]] = {}
    for d in diffs:
        if not any(_based_on(d, f) for f in fulls):
            base = str(d.differential_base_guid).upper() if d.differential_base_guid else "?"
            orphans.setdefault(f"{base} (CheckpointLSN {d.database_backup_lsn})", []).append(d)
    return [
        Finding(
            "diff-base-missing",
            Severity.WARNING,
            f"differential backup(s) {quote_files([f for d in group for f in d.files])} of database {label} "
            f"are based on full backup {base}, which is not among the scanned files; they cannot be used",
            "add the folder that holds that full backup to the scan; until then Ferry restores without them",
            tuple(f for d in group for f in d.files),
        )
        for base, group in orphans.items()
    ]


def _after_checks(label: str, steps: Sequence[ChainStep], logs: Sequence[LogicalBackup]) -> list[Finding]:
    findings: list[Finding] = []
    locked = [f for s in steps if s.backup.has_media_password for f in s.backup.files]
    if locked:
        findings.append(
            Finding(
                "media-password",
                Severity.WARNING,
                f"the restore of database {label} reads password-protected media: {quote_files(locked)}",
                "the restore needs WITH MEDIAPASSWORD: for ferry migrate export FERRY_MSSQL_MEDIA_PASSWORD "
                "(or the variable named by --media-password-env NAME); a ferry script reads the sqlcmd "
                "variable FERRY_MEDIA_PASSWORD (sqlcmd -v FERRY_MEDIA_PASSWORD=...). Never on the command "
                "line; Ferry cannot check it in advance",
                tuple(locked),
            )
        )
    used = {s.backup for s in steps}
    # The forks the restore passes through: a log crossing a fork point touches two. FirstRecoveryForkID
    # alone says nothing: a database created by RESTORE carries its source's fork in every header.
    forks = frozenset().union(*(s.backup.forks_covered for s in steps))
    start = steps[0].backup.last_lsn
    # Logs older than the chosen full are history; only those after it on another fork are worth a look.
    astray = [
        log
        for log in logs
        if log not in used
        and log.recovery_fork_id is not None
        and log.recovery_fork_id not in forks
        and log.last_lsn > start
    ]
    if astray:
        files = tuple(f for log in astray for f in log.files)
        ids = ", ".join(sorted({str(log.recovery_fork_id).upper() for log in astray}))
        findings.append(
            Finding(
                "chain-fork",
                Severity.WARNING,
                f"{len(astray)} log backup(s) of database {label} belong to another recovery fork ({ids}) "
                f"that the chain from {quote_files(steps[0].backup.files)} cannot reach: "
                f"{quote_files(files)}",
                "a restore on the source started a new recovery fork; if that branch is the one to migrate, "
                "add a full backup taken on it to the scan",
                files,
            )
        )
    return findings


def _unreachable(label: str, goal: Goal, backups: Sequence[LogicalBackup]) -> Finding:
    span = restorable_range(backups)
    if goal.lsn is not None:
        early = span.earliest_lsn is not None and goal.lsn < span.earliest_lsn
    else:
        early = goal.time is not None and span.earliest is not None and goal.time < as_utc(span.earliest)
    if early:
        hint = "choose a point inside that range, or add the folder that holds older full backups to the scan"
    elif max(backups, key=lambda b: b.last_lsn).recovery_model == "SIMPLE":
        hint = (
            "the database uses the SIMPLE recovery model, so only its full and differential backups "
            "are restore points: choose one of those"
        )
    else:
        hint = "choose a point inside that range, or scan again once the next log backup exists"
    reachable = (
        f"its backups restore it to points from {_point(span.earliest, span.earliest_lsn)} "
        f"to {_point(span.latest, span.latest_lsn)}"
        if span.latest_lsn is not None
        else "no complete chain of its backups can be restored"
    )
    return Finding(
        "stop-at-unreachable",
        Severity.ERROR,
        f"cannot restore database {label} to {goal.describe()}: {reachable}",
        hint,
        (),
    )


def _point(when: datetime | None, lsn: int | None) -> str:
    return f"{when.isoformat() if when else 'an unknown time'} (LSN {lsn})"


def restorable_range(backups: Sequence[LogicalBackup]) -> RestorableRange:
    """Earliest: the earliest complete full backup. Latest: the end of the best chain (it stops at a gap)."""
    chain = select_chain(backups)
    fulls = [b for b in backups if b.backup_type is BackupType.DATABASE and b.complete]
    if not fulls or not chain.steps:
        return RestorableRange()
    first = min(fulls, key=lambda f: (f.last_lsn, f.sort_key))
    return RestorableRange(first.backup_finish, chain.restores_to, first.last_lsn, chain.restores_to_lsn)
