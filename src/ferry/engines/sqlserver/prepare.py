"""`prepare` of a SQL Server migration: plan the source's database from the scanned backups (engine.py,
chain.py), read the target's facts, run every preflight check (preflight.py), choose where each file goes,
render the full and differential RESTORE statements, and claim the database in the work folder.

Nothing here writes to the target but the credentials its devices need (access.py): the checks run before
the first byte moves. A database this migration already owns (its claim, and the files it put there) is
reopened instead: the phase says where it stands, read from the target.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ferry.core.catalog import RecoveryTarget
from ferry.core.errors import UsageError
from ferry.core.findings import Finding, MigrationBlocked, Severity
from ferry.core.lsn import parse_sqlserver_lsn
from ferry.core.migration import MigrationStatus, State
from ferry.core.plan import DatabasePlan, StepKind
from ferry.engines.base import MigrationJob, Prepared, SourceFiles, StepContext, StepReport
from ferry.engines.sqlserver import access as acc
from ferry.engines.sqlserver import devices as dv
from ferry.engines.sqlserver import preflight as pf
from ferry.engines.sqlserver.chain import ChainStep, StopPoint
from ferry.engines.sqlserver.engine import ENGINE, SqlServerEngine
from ferry.engines.sqlserver.facts import DatabaseRow, Position, TargetFacts
from ferry.engines.sqlserver.follow import Identity
from ferry.engines.sqlserver.headers import BackupSet, DatabaseFile
from ferry.engines.sqlserver.restore_script import chain_step
from ferry.engines.sqlserver.settings import BaseStep, Settings, SqlState
from ferry.engines.sqlserver.target import PROBE_ROUNDS, Target, wait_backoff
from ferry.engines.sqlserver.tsql import Device, Recovery, RestoreOptions, ScriptError, quote_ident
from ferry.engines.sqlserver.tsql import restore_statement as render
from ferry.engines.sqlserver.workdir import WorkFolder


@dataclass(frozen=True)
class SourcePlan:
    plan: DatabasePlan
    steps: list[ChainStep]  # with the headers the scan read: full, differential, logs
    sets: list[BackupSet]
    root: str  # the source's location, as the job gives it (devices.py maps its keys)

    @property
    def identity(self) -> Identity:
        return Identity(self.plan.server, self.plan.name, self.plan.family_guid)


def recovery_target(stop_at: str | None) -> RecoveryTarget | None:
    if not stop_at:
        return None
    if stop_at.startswith("lsn:"):
        return RecoveryTarget(lsn=stop_at[4:])
    try:
        return RecoveryTarget(time=datetime.fromisoformat(stop_at))
    except ValueError:
        raise UsageError(
            f"stop point '{stop_at}' is not an ISO 8601 time", "e.g. 2017-06-01T13:20:00"
        ) from None


def stop_point(stop_at: str | None) -> StopPoint | None:
    """The job's stop point (an ISO time, or "lsn:<n>") as the chain planner takes it."""
    target = recovery_target(stop_at)
    if target is None:
        return None
    if target.lsn is not None:
        try:
            return StopPoint(lsn=parse_sqlserver_lsn(target.lsn))
        except ValueError as exc:
            raise UsageError(str(exc), "give the LSN as RESTORE HEADERONLY prints it") from None
    return StopPoint(time=target.time)


def plan_source(job: MigrationJob, files: SourceFiles) -> SourcePlan:
    sets = [s for s in files.sets if isinstance(s, BackupSet)]
    plans, _ = SqlServerEngine().plan(sets, recovery_target(job.stop_at))
    if not plans:
        raise UsageError(
            f"no SQL Server backup found in '{job.source}'",
            "give the folder that holds the database's .bak and .trn files",
        )
    wanted = job.database
    chosen = [p for p in plans if wanted is None or p.name.casefold() == wanted.casefold()]
    names = ", ".join(sorted({f"[{p.name}]" for p in plans}))
    if not chosen:
        raise UsageError(f"'{job.source}' holds no backup of database [{wanted}]", f"it holds {names}")
    if len(chosen) > 1:
        servers = ", ".join(f"[{p.name}] from '{p.server}'" for p in chosen)
        raise UsageError(
            f"'{job.source}' holds backups of several databases ({servers})",
            "name the one to migrate with --database; Ferry migrates one database per run",
        )
    plan = chosen[0]
    if not plan.executable:
        raise MigrationBlocked(f"database [{plan.name}] from '{job.source}'", plan.findings)
    return SourcePlan(plan, [chain_step(s, sets) for s in plan.steps], sets, job.source)


def restore_options(
    database: str, s: Settings, moves: dict[str, str], major: int, credential: str | None = None
) -> RestoreOptions:
    return RestoreOptions(
        database=database,
        moves=moves,
        stats=s.stats,
        checksum=s.checksum,
        buffer_count=s.buffer_count,
        max_transfer_size=s.max_transfer_size,
        credential=credential,
        target_version=major,
        recovery=Recovery.STANDBY if s.standby else Recovery.NORECOVERY,
        standby_file=s.standby,
    )


def ours(work: WorkFolder, pos: Position, plan: DatabasePlan) -> bool:
    """The database of that name is this migration's: its claim names the same source, and the database
    holds no file the claim did not put there."""
    claim = work.claim()
    if claim is None or not pos.exists or claim.get("family_guid") != plan.family_guid:
        return False
    if claim.get("source_database", "").casefold() != plan.name.casefold():
        return False
    placed = {str(p).casefold() for p in dict(claim.get("moves") or {}).values()}
    return all(f.physical_name.casefold() in placed for f in pos.files)


def base_done(state: SqlState, pos: Position) -> tuple[bool, bool]:
    """Whether the target holds the full and the differential backups: the latest full restore of this
    name is newer than the migration's start and of its database, and the redo point is past the diff."""
    full = pos.last_full
    full_done = (
        pos.restoring
        and pos.redo_lsn is not None
        and full is not None
        and full.history_id > state.history_floor
        and (state.family_guid is None or full.family_guid == state.family_guid)
    )
    diff = state.diff
    diff_done = full_done and (diff is None or (pos.redo_lsn or 0) >= diff.last_lsn)
    return full_done, diff_done


def phase(state: SqlState, pos: Position, work: WorkFolder) -> str:
    if not pos.exists:
        return "new"
    if pos.online and work.claim() is not None:
        return "recovered"
    full_done, diff_done = base_done(state, pos)
    return "restored" if full_done and diff_done else "interrupted"


def wait_until_clear(target: Target, database: str, ctx: StepContext, settings: Settings) -> TargetFacts:
    """Single-user or restricted: wait with backoff, showing why, until it clears."""
    attempt = 0
    while True:
        facts = target.facts()
        # A database of that name matters only when it is to be replaced: otherwise preflight refuses it
        # (or it is this migration's own, RESTORING), and waiting for it would only delay that answer.
        replaced = facts.database(database) if settings.replace else None
        reason = pf.single_user_reason(facts, replaced, target.name)
        if reason is None or not settings.wait_single_user:
            return facts
        ctx.report(MigrationStatus(State.VALIDATING, "waiting for the target", blocked_reason=reason))
        ctx.check()
        time.sleep(wait_backoff(attempt))
        attempt += 1


def prepare(
    job: MigrationJob, files: SourceFiles, ctx: StepContext, target: Target, work_for: type[WorkFolder]
) -> tuple[Prepared, StepReport]:
    s = Settings.of(job)
    src = plan_source(job, files)
    plan = src.plan
    database = job.target_database or plan.name
    quote_ident(database)  # a name SQL Server cannot hold fails here, before anything else
    url = target.conn.url
    work = work_for.of(s.options, url, database)
    facts = wait_until_clear(target, database, ctx, s)
    pos = target.position(database)
    mine = ours(work, pos, plan)
    existing = facts.database(database)
    findings: list[Finding] = []
    findings += pf.check_server(facts, target.name, url.instance)
    findings += pf.check_rights(facts, target.name, None if mine else existing)
    findings += pf.check_backups(plan, [st.backup for st in src.steps], facts)
    wanted = pf.Wanted(database, s.replace, s.yes, s.force, s.data_dir, s.log_dir, url.instance, bool(s.sas))
    exist_findings, close = pf.check_existing(existing, wanted, target.name, mine)
    findings += exist_findings
    base = [st for st in src.steps if st.kind is not StepKind.LOG]
    logs = [st for st in src.steps if st.kind is StepKind.LOG]
    if mine:
        moves = {str(k): str(v) for k, v in dict((work.claim() or {}).get("moves") or {}).items()}
    else:
        with work.placing() as claimed:
            moves = _place_files(target, facts, s, base, database, existing, findings, frozenset(claimed))
            work.place(moves)
    source = acc.open_source(job.source, s, base[0].backup.size if base else 0)
    view = acc.target_view(facts, target.device_facts(facts.major))
    mapped = _map_steps(source, src.steps, view, s)
    devices = {g: acc.devices(m) for g, m in mapped.items()}
    every = [m for ms in mapped.values() for m in ms]
    findings += dv.findings_of(every)
    options = restore_options(database, s, moves, facts.major)
    statements = _render(base, devices, options, s.replace and not mine, findings, mapped)
    if logs and s.standby:
        _render(logs[:1], devices, options, False, findings, mapped)  # STANDBY may be refused (an upgrade)
    if not pf.Result(tuple(findings)).blocked:
        creds = acc.Credentials(source, dv.credentials_of(every))
        if view.can_alter_credentials:  # otherwise the read probe says whether what is there works
            creds.ensure(target, facts.credentials)
        probes = [mapped[guid(st)] for st in (*base, *logs[:1])]
        failed = _probe_reads(target, probes, s)
        if (
            failed
            and view.can_alter_credentials
            and creds.ensure(target, [c.name for c in creds.needed], alter=True)
        ):
            failed = _probe_reads(target, probes, s)  # an existing credential held another secret
        findings += failed
    label = f"database [{plan.name}] from '{job.source}' onto [{database}] on {target.name}"
    if pf.Result(tuple(findings)).blocked:
        raise MigrationBlocked(label, findings)
    floor = int((work.claim() or {}).get("history_floor", 0)) if mine else _floor(pos)
    state = SqlState(
        url=str(url),
        database=database,
        source_server=plan.server,
        source_database=plan.name,
        family_guid=plan.family_guid,
        base=[_base_step(st, devices[guid(st)], stmt) for st, stmt in zip(base, statements, strict=True)],
        moves=moves,
        plan_end_lsn=src.steps[-1].backup.last_lsn,
        last_log=logs[-1].backup.files[0] if logs else None,
        history_floor=floor,
        target_major=facts.major,
        stop_at=job.stop_at,
        close_sessions=close,
        replace=s.replace and not mine,
        target_platform=view.platform.value if view.platform else None,
    )
    if not mine:
        work.forget()
        work.write_claim(
            {
                "migration_id": job.id,
                "source": job.source,
                "source_server": plan.server,
                "source_database": plan.name,
                "family_guid": plan.family_guid,
                "moves": moves,
                "history_floor": floor,
            }
        )
    where = phase(state, pos, work)
    if where == "interrupted":
        ctx.note(f"[{database}] on {target.name} is RESTORING from an earlier attempt: resuming it")
    notes = [f.message for f in findings if f.severity is not Severity.ERROR]
    report = StepReport(
        f"validated {label}: {len(src.steps)} backup(s) planned, restores to "
        f"{plan.restores_to or plan.restores_to_lsn}; target SQL Server {facts.product_version} ({where})",
        "; ".join(st.statement.split("\n", 1)[0] for st in state.base),
        data={
            "bytes": state.full.size,
            "phase": where,
            "findings": [f.to_json() for f in findings][:40],
            "notes": notes[:20],
            "moves": moves,
        },
    )
    return Prepared(ENGINE, f"[{database}] on {target.name}", where, state.full.size, state.to_json()), report


def _place_files(
    target: Target,
    facts: TargetFacts,
    s: Settings,
    base: Sequence[ChainStep],
    database: str,
    existing: DatabaseRow | None,
    findings: list[Finding],
    claimed: frozenset[str] = frozenset(),
) -> dict[str, str]:
    """Where each file goes (MOVE), and whether the volumes have room for them."""
    sizes = pf.file_sizes([st.backup for st in base])
    replaced = facts.files_of(existing.database_id) if existing else []
    own = frozenset(f.physical_name for f in replaced)
    moves, move_plan = _moves(target, facts, s, [f for f, _ in sizes.values()], own, claimed)
    findings += pf.move_findings(move_plan, target.name, database)
    freed = [(f.physical_name, f.size) for f in replaced]
    findings += pf.check_space({k: v for k, (_, v) in sizes.items()}, moves, facts, target.name, freed)
    return moves


def _map_steps(
    source: acc.Source, steps: Sequence[ChainStep], view: dv.TargetView, s: Settings
) -> dict[str, list[dv.Mapped]]:
    """Every step's devices. The blob types of the full, the differential and the first log are asked of
    the store; later logs are taken to be of the first log's type (each is asked again when applied)."""
    maps = s.path_map
    out: dict[str, list[dv.Mapped]] = {}
    first_log: str | None = None
    for st in steps:
        keys = list(st.backup.files)
        stand_in = None
        if st.kind is StepKind.LOG:
            first_log = first_log or keys[0]
            stand_in = first_log if keys[0] != first_log else None
        out[guid(st)] = acc.step_devices(source, keys, view, maps, stand_in)
    return out


def _probe_reads(target: Target, probes: Sequence[list[dv.Mapped]], s: Settings) -> list[Finding]:
    """RESTORE LABELONLY of each backup, with the restore's own CREDENTIAL and MEDIAPASSWORD."""
    out = []
    for mapped in probes:
        devices = acc.devices(mapped)
        why = target.readable(devices, s.media_password, acc.credential_name(mapped))
        if why is not None:
            cred = next((m.credential for m in mapped if m.credential is not None), None)
            out.append(acc.unreadable_finding(devices[0].path, why, target.name, cred))
    return out


def guid(step: ChainStep) -> str:
    return str(step.backup.backup_set_guid).upper()


def _base_step(st: ChainStep, devices: list[Device], statement: str) -> BaseStep:
    b = st.backup
    paths = [d.path for d in devices]
    return BaseStep(st.kind.value, list(b.files), paths, guid(st), b.first_lsn, b.last_lsn, b.size, statement)


def _floor(pos: Position) -> int:
    rows = [r.history_id for r in pos.recent] + ([pos.last_full.history_id] if pos.last_full else [])
    return max(rows, default=0)


def _moves(
    target: Target,
    facts: TargetFacts,
    s: Settings,
    files: list[DatabaseFile],
    own: frozenset[str],
    claimed: frozenset[str] = frozenset(),
) -> tuple[dict[str, str], pf.MovePlan]:
    data = s.data_dir or facts.default_data_dir
    log = s.log_dir or facts.default_log_dir
    if data is None or log is None:
        raise MigrationBlocked(
            f"a restore onto {target.name}",
            [Finding("no-default-paths", Severity.ERROR,
                     f"{target.name} reports no default data or log folder",
                     "give --data-dir and --log-dir: folders on the target for the database's files")],
        )  # fmt: skip
    probes = dict(facts.probes)
    plan = pf.plan_moves(files, data, log, facts, probes, own, claimed)
    for _ in range(PROBE_ROUNDS):
        if not plan.unprobed:
            break
        answers = target.probe(plan.unprobed)
        if not answers:  # xp_fileexist refused: the names stand; RESTORE itself refuses an existing file
            break
        probes.update(answers)
        plan = pf.plan_moves(files, data, log, facts, probes, own, claimed)
    return plan.moves, plan


def _render(
    steps: Sequence[ChainStep],
    devices: dict[str, list[Device]],
    options: RestoreOptions,
    replace: bool,
    findings: list[Finding],
    mapped: dict[str, list[dv.Mapped]],
) -> list[str]:
    out = []
    for st in steps:
        credential = acc.credential_name(mapped[guid(st)])
        opts = RestoreOptions(**{**options.__dict__, "replace": replace, "credential": credential})
        if st.kind is not StepKind.LOG:
            opts = RestoreOptions(**{**opts.__dict__, "recovery": Recovery.NORECOVERY, "standby_file": None})
        try:
            out.append(render(st, devices[guid(st)], opts))
        except ScriptError as exc:
            findings.append(Finding("not-scriptable", Severity.ERROR, exc.message, exc.hint, st.backup.files))
            out.append("")
    return out
