"""What the pages show, shaped from the API's answers: pure functions of JSON, no I/O.

Everything here reads the API's documented fields and tolerates the ones a given engine or server
version does not send (a target without `concurrency`, a backup set without `files`), so one console
serves PostgreSQL and SQL Server migrations alike.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

STATES = (
    "Queued",
    "Validating",
    "RestoringFull",
    "RestoringLogs",
    "ReadyForCutover",
    "CuttingOver",
    "Succeeded",
    "Failed",
    "Canceled",
)
FINAL = frozenset({"Succeeded", "Failed", "Canceled"})
CUTOVER_STATES = frozenset({"RestoringLogs", "ReadyForCutover"})  # what the API accepts a cutover in
CANCEL_STATES = frozenset({"Queued", "Validating", "RestoringFull", "RestoringLogs", "ReadyForCutover"})

# Each state in words, with a sign that does not depend on colour (pages show both).
STATE_WORDS = {
    "Queued": ("Queued", "○"),
    "Validating": ("Validating", "◔"),
    "RestoringFull": ("Restoring full backup", "◑"),
    "RestoringLogs": ("Restoring logs", "◕"),
    "ReadyForCutover": ("Ready for cutover", "●"),
    "CuttingOver": ("Cutting over", "⇢"),
    "Succeeded": ("Succeeded", "✓"),
    "Failed": ("Failed", "✗"),
    "Canceled": ("Canceled", "–"),
}
ENGINE_WORDS = {"postgres": "PostgreSQL", "sqlserver": "SQL Server"}
FILE_WORDS = {
    "arrived": "arrived",
    "queued": "queued",
    "restoring": "restoring",
    "restored": "restored",
    "skipped": "skipped",
    "missing": "missing",
}


def state_words(state: str) -> str:
    return STATE_WORDS.get(state, (state, "?"))[0]


def state_sign(state: str) -> str:
    return STATE_WORDS.get(state, (state, "?"))[1]


def engine_words(engine: str | None) -> str:
    return ENGINE_WORDS.get(engine or "", engine or "unknown")


# -- numbers in words --------------------------------------------------------------------------------


def duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "unknown"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms" if seconds > 0 else "0 s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def size(value: Any) -> str:
    if not isinstance(value, int | float):
        return "unknown"
    amount = float(value)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            return f"{amount:.0f} {unit}" if unit == "bytes" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} TiB"


def when(stamp: Any) -> str:
    """An ISO 8601 time as `YYYY-MM-DD HH:MM:SS` (the API's times are UTC)."""
    text = str(stamp or "")
    match = re.match(r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)", text)
    return f"{match.group(1)} {match.group(2)}" if match else text


# -- the targets and the dashboard ---------------------------------------------------------------------


def engine_of(migration: Mapping[str, Any], targets: Mapping[str, Mapping[str, Any]]) -> str:
    """A migration's engine: its own field when the API sends one, else its target's."""
    own = migration.get("engine")
    if isinstance(own, str) and own:
        return own
    target = targets.get(str(migration.get("target")), {})
    return str(target.get("engine") or "unknown")


def counts(migrations: Iterable[Mapping[str, Any]]) -> list[tuple[str, int]]:
    seen = Counter(str(m.get("state")) for m in migrations)
    return [(s, seen.get(s, 0)) for s in STATES]


@dataclass(frozen=True)
class TargetLoad:
    name: str
    engine: str
    host: str
    concurrency: int | None
    load: str  # what the API says about its load, in words ("" when it says nothing)
    active: int  # migrations on it that are not final
    restoring_full: int
    ready: int
    total: int


def target_loads(
    targets: Sequence[Mapping[str, Any]], migrations: Sequence[Mapping[str, Any]]
) -> list[TargetLoad]:
    by_target: dict[str, Counter[str]] = {}
    for m in migrations:
        by_target.setdefault(str(m.get("target")), Counter())[str(m.get("state"))] += 1
    names = [str(t.get("name")) for t in targets]
    extra = sorted(set(by_target) - set(names))  # a target the API no longer lists still has migrations
    info = {str(t.get("name")): t for t in targets}
    loads = []
    for name in [*names, *extra]:
        seen = by_target.get(name, Counter())
        t = info.get(name, {})
        concurrency = t.get("concurrency")
        loads.append(
            TargetLoad(
                name=name,
                engine=engine_words(t.get("engine")) if t else "not registered",
                host=str(t.get("host") or ""),
                concurrency=concurrency if isinstance(concurrency, int) else None,
                load=_target_words(t),
                active=sum(n for s, n in seen.items() if s not in FINAL),
                restoring_full=seen.get("RestoringFull", 0),
                ready=seen.get("ReadyForCutover", 0),
                total=sum(seen.values()),
            )
        )
    return loads


def _target_words(target: Mapping[str, Any]) -> str:
    """What the target's agent says of it: served or not, and the facts it read from the target (its
    version, the free space of its data volume, or why it could not read them)."""
    if not target:
        return ""
    words = ["agent serving" if target.get("agent") else "no agent serving it"]
    facts = target.get("facts")
    if isinstance(facts, Mapping):
        if facts.get("version"):
            words.append(" ".join(str(facts[k]) for k in ("edition", "version") if facts.get(k)))
        if isinstance(facts.get("free_bytes"), int):
            words.append(f"{size(facts['free_bytes'])} free")
        if facts.get("error"):
            words.append(f"facts not read: {facts['error']}")
    return ", ".join(words)


@dataclass(frozen=True)
class Attention:
    migration: Mapping[str, Any]
    why: str  # "failed", "blocked", "findings"
    reason: str


def attention(migrations: Iterable[Mapping[str, Any]]) -> list[Attention]:
    """Failed migrations, blocked ones, and those with findings: each with its reason, failures first."""
    found: list[Attention] = []
    for m in migrations:
        status = m.get("status") or {}
        state = m.get("state")
        if state == "Failed":
            found.append(Attention(m, "failed", str(m.get("error") or "failed; see its events")))
            continue
        if state in FINAL:
            continue
        if status.get("blocked_reason"):
            found.append(Attention(m, "blocked", str(status["blocked_reason"])))
        elif issues := migration_findings(m):
            worst = issues[0]
            more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
            found.append(Attention(m, "findings", f"{worst.severity}: {worst.message}{more}"))
    order = {"failed": 0, "blocked": 1, "findings": 2}
    return sorted(found, key=lambda a: (order[a.why], str(a.migration.get("name"))))


# -- one migration -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    severity: str
    code: str
    message: str
    hint: str
    files: tuple[str, ...] = ()


_SEVERITY = {"error": 0, "warning": 1, "info": 2}


def _finding(raw: Any) -> Finding | None:
    if isinstance(raw, str):
        return Finding("warning", "", raw, "")
    if not isinstance(raw, Mapping):
        return None
    files = raw.get("files") or ()
    return Finding(
        str(raw.get("severity") or "warning"),
        str(raw.get("code") or ""),
        str(raw.get("message") or ""),
        str(raw.get("hint") or ""),
        tuple(str(f) for f in files) if isinstance(files, list | tuple) else (),
    )


def migration_findings(
    migration: Mapping[str, Any], events: Sequence[Mapping[str, Any]] = ()
) -> list[Finding]:
    """What the migration's status and validate step say about its backups, worst first."""
    status = migration.get("status") or {}
    details = status.get("details") or {}
    raw: list[Any] = [*(status.get("findings") or ()), *(details.get("findings") or ())]
    for e in events:
        data = e.get("data") or {}
        if e.get("kind") == "step":
            raw += [*(data.get("findings") or ()), *(data.get("warnings") or ())]
    unique: dict[tuple[str, str], Finding] = {}
    for item in raw:
        f = _finding(item)
        if f is not None and f.message:
            unique.setdefault((f.code, f.message), f)
    return sorted(unique.values(), key=lambda f: _SEVERITY.get(f.severity, 3))


@dataclass(frozen=True)
class FileRow:
    name: str
    status: str
    reason: str
    size: str


@dataclass(frozen=True)
class BackupSet:
    name: str
    kind: str
    files: list[FileRow]
    counts: dict[str, int]
    total: int
    done: int  # restored or skipped: no longer waited for
    shown: int

    @property
    def percent(self) -> int:
        return round(100 * self.done / self.total) if self.total else 0


GROUPS = {"full": "Full and differential backups", "diff": "Full and differential backups"}


def backup_sets(status: Mapping[str, Any]) -> list[BackupSet]:
    """status.details.backup_sets, one shape for every engine. A set with its files (PostgreSQL: the base
    backup, the WAL of a timeline) stays a set; rows that are each one backup (SQL Server) are gathered
    into the full and differential backups and the log backups, so each group has one progress bar."""
    details = status.get("details") or {}
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for raw in details.get("backup_sets") or ():
        if isinstance(raw, Mapping) and not isinstance(raw.get("files"), list):
            kind = str(raw.get("kind") or "log")
            grouped.setdefault(GROUPS.get(kind, "Log backups"), []).append(raw)
    sets = []
    for raw in details.get("backup_sets") or ():
        if isinstance(raw, Mapping) and isinstance(raw.get("files"), list):
            sets.append(
                _backup_set(str(raw.get("name") or ""), str(raw.get("kind") or "log"), raw["files"], raw)
            )
    for name, rows in grouped.items():
        sets.append(_backup_set(name, "log" if name == "Log backups" else "full", rows, {}))
    return sets


def _backup_set(name: str, kind: str, files_raw: list[Any], raw: Mapping[str, Any]) -> BackupSet:
    files = [
        FileRow(
            str(f.get("name") or ""),
            str(f.get("status") or "unknown").lower(),
            str(f.get("reason") or ""),
            size(f.get("size")) if f.get("size") is not None else "",
        )
        for f in files_raw
        if isinstance(f, Mapping)
    ]
    given = raw.get("counts")
    tally = (
        {str(k).lower(): int(v) for k, v in given.items() if isinstance(v, int)}
        if isinstance(given, Mapping)
        else dict(Counter(f.status for f in files))
    )
    total = sum(tally.values()) or len(files)
    done = tally.get("restored", 0) + tally.get("skipped", 0)
    return BackupSet(name, kind, files, tally, total, done, len(files))


def estimate_words(migration: Mapping[str, Any]) -> str:
    """The cutover's estimated downtime in words: the API's estimate when it sends one; else, for a
    migration that has nothing left to restore, that only the recovery is left; else unknown."""
    status = migration.get("status") or {}
    estimate = status.get("cutover_estimate_seconds")
    if isinstance(estimate, int | float):
        return duration(estimate)
    caught_up = not status.get("pending_files") and not status.get("lag_bytes")
    if migration.get("state") in CUTOVER_STATES and caught_up:
        return "short: nothing left to restore, only recovery"
    return "unknown"


@dataclass(frozen=True)
class TimelineEntry:
    at: str
    kind: str  # "state", "step", "error", "info"
    title: str
    detail: str = ""


def timeline(events: Sequence[Mapping[str, Any]]) -> list[TimelineEntry]:
    """The states a migration went through and the steps it ran, oldest first."""
    entries = []
    for e in events:
        data = e.get("data") or {}
        kind = str(e.get("kind"))
        if kind == "state":
            to = str(data.get("to") or "")
            entries.append(
                TimelineEntry(when(e.get("at")), "state", state_words(to) if to else str(e.get("message")))
            )
        elif kind == "step":
            bits = []
            if isinstance(data.get("seconds"), int | float):
                bits.append(duration(data["seconds"]))
            if isinstance(data.get("bytes"), int | float) and data["bytes"]:
                bits.append(size(data["bytes"]))
            if data.get("attempt") not in (None, 1):
                bits.append(f"attempt {data['attempt']}")
            step = str(data.get("step") or "step")
            entries.append(TimelineEntry(when(e.get("at")), "step", step.replace("_", " "), ", ".join(bits)))
        elif kind == "error":
            entries.append(TimelineEntry(when(e.get("at")), "error", "error", str(e.get("message") or "")))
    return entries


@dataclass(frozen=True)
class Proof:
    label: str
    text: str
    holds: bool | None = None  # None: nothing to judge


@dataclass
class ResultView:
    downtime: str
    proofs: list[Proof] = field(default_factory=list)
    other: list[tuple[str, str]] = field(default_factory=list)


_SHOWN_AS_PROOF = {
    "downtime_seconds", "lsn_proof", "expected_last_lsn", "restored_last_lsn", "final_lsn", "promoted_at_lsn",
    "row_checks", "rows", "state",
}  # fmt: skip


def result_view(status: Mapping[str, Any]) -> ResultView | None:
    """After the cutover: the measured downtime and the proof that nothing was lost."""
    result = status.get("result")
    if not isinstance(result, Mapping):
        return None
    view = ResultView(duration(result.get("downtime_seconds")))
    if "lsn_proof" in result:
        holds = bool(result.get("lsn_proof"))
        view.proofs.append(
            Proof(
                "LSN match",
                f"{'holds' if holds else 'does not hold'}: the target's restore history ends at "
                f"{result.get('restored_last_lsn') or 'unknown'}, the last backup ends at "
                f"{result.get('expected_last_lsn') or 'unknown'}",
                holds,
            )
        )
    if result.get("promoted_at_lsn") or result.get("final_lsn"):
        final, promoted = result.get("final_lsn"), result.get("promoted_at_lsn")
        view.proofs.append(
            Proof(
                "LSN reached",
                f"replayed to {final or 'the end of the archive'}, promoted at {promoted or 'unknown'}",
                bool(promoted) if final is None else _lsn_at_least(promoted, final),
            )
        )
    checks = result.get("row_checks") or result.get("rows")
    if isinstance(checks, Mapping):
        checks = [{"table": k, **(v if isinstance(v, Mapping) else {"rows": v})} for k, v in checks.items()]
    for check in checks if isinstance(checks, list) else ():
        if isinstance(check, Mapping):
            src, dst = check.get("source"), check.get("target", check.get("rows"))
            same = None if src is None else src == dst
            text = f"{dst} rows" + ("" if src is None else f" on the target, {src} on the source")
            view.proofs.append(Proof(f"rows of {check.get('table', '?')}", text, same))
    for key, value in result.items():
        if key in _SHOWN_AS_PROOF or value is None or isinstance(value, Mapping | list):
            continue
        shown = (
            duration(value) if key.endswith("_seconds") else size(value) if key.endswith("_bytes") else value
        )
        view.other.append((key.replace("_", " "), str(shown)))
    return view


def _lsn_at_least(got: Any, wanted: Any) -> bool | None:
    def number(lsn: Any) -> int | None:
        text = str(lsn or "")
        if re.fullmatch(r"[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}", text):
            high, low = text.split("/")
            return (int(high, 16) << 32) | int(low, 16)
        return int(text) if text.isdigit() else None

    a, b = number(got), number(wanted)
    return None if a is None or b is None else a >= b


def cutover_refusal(migration: Mapping[str, Any]) -> str | None:
    """Why the API would refuse to cut it over now (the same rule as the API's), None when it would not."""
    state = str(migration.get("state"))
    if state in CUTOVER_STATES:
        return None
    if state in ("Queued", "Validating", "RestoringFull"):
        return f"{state_words(state)}: a cutover is possible once its full backup is restored"
    if state == "CuttingOver":
        return "already cutting over"
    if state == "Failed":
        return "failed; retry it first"
    return f"{state_words(state)}, which is final"


def cancel_refusal(migration: Mapping[str, Any]) -> str | None:
    state = str(migration.get("state"))
    if state in CANCEL_STATES:
        return None
    if state == "CuttingOver":
        return "cutting over, which cannot be stopped half way"
    return f"{state_words(state)}: nothing to cancel"
