"""All of the CLI's output, in one place: tables for catalogs, plans, headers, findings and migrations, the
live view's panels, errors with their hints, and JSON. Commands stay thin: they call the layers and hand
what they get to a function here.

What Ferry prints comes partly from others: file names from a backup folder, a source a user typed, a
message a store or a server sent. All of it is shown through `clean` (secrets masked, control characters
as visible escapes, so `\x1b[2J` in a file name cannot clear the terminal) and as plain Text, never as
Rich markup (a `[/x]` in a name would be taken for a tag). The consoles from `console()` escape control
characters in any string that reaches them all the same, and JSON output escapes them too."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ferry.core.catalog import Catalog
from ferry.core.findings import Finding, Severity
from ferry.core.migration import MigrationStatus
from ferry.core.plan import Plan
from ferry.core.redact import escape_controls, redact_text, redact_value

if TYPE_CHECKING:
    from ferry.engines.postgres.migration import MigrationResult


def clean(value: object) -> str:
    """Text from elsewhere as the CLI shows it: secrets masked, control characters as escapes."""
    return escape_controls(redact_text(str(value)))


def plain(value: object, style: str = "") -> Text:
    """`clean(value)` as a Text: shown as it is, never read as markup."""
    return Text(clean(value), style=style)


class SafeConsole(Console):
    """A console that escapes control characters in every string it is given to render (Ferry's own
    markup is kept): the last line of defence behind `clean`."""

    def render_str(self, text: str, *args: Any, **kwargs: Any) -> Text:
        return super().render_str(escape_controls(text, keep_newlines=True), *args, **kwargs)


def console(*, stderr: bool = False, **options: Any) -> Console:
    return SafeConsole(stderr=stderr, **options)


def error(console: Console, message: str, hint: str) -> None:
    # Messages may quote a location or what a server said: never a password, SAS or key, nor a raw control
    # character. Not wrapped: a URL must stay one piece to be copied.
    console.print(Text.assemble(("error: ", "bold red"), clean(message)), soft_wrap=True)
    if hint:
        console.print(Text(f"hint: {clean(hint)}", style="dim"), soft_wrap=True)


def internal_error(console: Console, exc: BaseException) -> None:
    console.print(
        Text.assemble(("internal error: ", "bold red"), clean(f"{type(exc).__name__}: {exc}")), soft_wrap=True
    )
    console.print("[dim]hint: this is a bug in Ferry; please report it with the command you ran[/]")


_C1 = re.compile("[\x7f-\x9f]")  # json.dumps escapes C0 controls but not DEL and C1 (CSI is \x9b)


def emit_json(value: Any, lines: bool = False) -> None:
    """JSON on stdout: indented, or one object per line (`lines`, for streams of events). Secrets in its
    strings are masked, and no control character reaches the terminal raw."""
    value = redact_value(value)
    text = json.dumps(value, ensure_ascii=False) if lines else json.dumps(value, indent=2, ensure_ascii=False)
    text = _C1.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


_SEVERITY_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


def when(value: datetime | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.strftime("%Y-%m-%d %H:%M:%S %z")


def size(n: int) -> str:
    step = 1024.0
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < step or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= step
    return f"{n} B"


def findings(console: Console, items: Iterable[Finding], title: str = "Findings") -> None:
    rows = list(items)
    if not rows:
        return
    order = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}
    console.print(Text(title, style="bold"))
    for f in sorted(rows, key=lambda f: order[f.severity]):
        label = Text(f"{f.severity.value:<7} ", style=_SEVERITY_STYLE[f.severity])
        label.append(f"[{f.code}] ", style="dim")
        label.append(clean(f.message))
        console.print(label)
        console.print(Text(f"        hint: {clean(f.hint)}", style="dim"))


def catalog(console: Console, cat: Catalog) -> None:
    table = Table(title=plain(f"Backups in {cat.source}"), title_justify="left")
    table.add_column("Database", min_width=10, overflow="fold")
    table.add_column("Server", min_width=8, overflow="fold")
    for col in ("Full", "Diff", "Log"):
        table.add_column(col, justify="right")
    table.add_column("Restorable", no_wrap=True)
    for db in cat.databases:
        counts = {"full": 0, "diff": 0, "log": 0}
        for b in db.backups:
            counts[b.kind] = counts.get(b.kind, 0) + 1
        span = Text("no full backup", style="red")
        if db.restorable_from:
            span = Text(f"from {when(db.restorable_from)}\nto   {when(db.restorable_to)}")
        table.add_row(
            plain(db.name),
            plain(db.server),
            str(counts["full"]),
            str(counts["diff"]),
            str(counts["log"]),
            span,
        )
    console.print(table)
    console.print(
        f"{len(cat.databases)} database(s) in {cat.files_scanned} file(s); "
        f"{size(cat.bytes_read)} of headers read"
    )
    findings(console, cat.findings)


def plan(console: Console, p: Plan) -> None:
    for db in p.databases:
        status = Text("ready", style="green") if db.executable else Text("blocked", style="bold red")
        head = plain(db.name, style="bold")
        head.append(f" on {clean(db.server)}  ")
        head.append(status)
        if db.restores_to or db.restores_to_lsn:
            head.append(f"  restores to {when(db.restores_to) if db.restores_to else ''}")
            if db.restores_to_lsn:
                head.append(f" (LSN {db.restores_to_lsn})")
        console.print(head)
        # One row per step, the details on a second line: readable on an 80-column terminal, where a
        # wide table of LSNs and dates would fold every cell.
        table = Table(show_header=False, box=None, padding=(0, 1, 0, 2))
        table.add_column(justify="right", style="dim")
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for i, s in enumerate(db.steps, 1):
            detail = Text("\n".join(clean(f) for f in s.files))
            detail.append(f"\nLSN {s.first_lsn} to {s.last_lsn}, finished {when(s.backup_finish)}", "dim")
            if s.stop_at:
                detail.append(f"\nstop at {clean(s.stop_at)}", "bold yellow")
            table.add_row(str(i), s.kind.value, detail)
        if db.steps:
            console.print(table)
        findings(console, db.findings, title="  findings")
        console.print()
    findings(console, p.findings, title="Files")
    ready = sum(1 for d in p.databases if d.executable)
    console.print(f"{ready} of {len(p.databases)} database(s) ready to restore")


def _finding_of(doc: dict[str, Any]) -> Finding:
    return Finding(
        str(doc["code"]), Severity(doc["severity"]), str(doc["message"]), str(doc["hint"]),
        tuple(str(f) for f in doc.get("files") or ()),
    )  # fmt: skip


def plan_json(console: Console, doc: dict[str, Any]) -> None:
    """A plan as the service sends it (the contract of `ferry plan --json`): one line per database, then
    what blocks or concerns each, then the findings about files."""
    table = Table(box=None, padding=(0, 2, 0, 0), header_style="bold")
    for col in ("Database", "Server", "Engine", "Status", "Steps", "Restores to"):
        table.add_column(col, overflow="fold")
    for d in doc["databases"]:
        kinds: dict[str, int] = {}
        for step in d["steps"]:
            kinds[step["kind"]] = kinds.get(step["kind"], 0) + 1
        steps = ", ".join(f"{n} {k}" if n > 1 else k for k, n in kinds.items()) or "-"
        point = when(d["restores_to"]) if d.get("restores_to") else "-"
        if d.get("restores_to_lsn"):
            point += f" (LSN {d['restores_to_lsn']})"
        status = Text("ready", style="green") if d["executable"] else Text("blocked", style="bold red")
        table.add_row(plain(d["name"]), plain(d["server"]), plain(d["engine"]), status, steps, plain(point))
    console.print(table)
    for d in doc["databases"]:
        if d["findings"]:
            findings(console, [_finding_of(f) for f in d["findings"]], title=f"{clean(d['name'])}: findings")
    findings(console, [_finding_of(f) for f in doc["findings"]], title="Files")
    ready = sum(1 for d in doc["databases"] if d["executable"])
    console.print(
        f"{ready} of {len(doc['databases'])} database(s) ready to restore, in {clean(doc['source'])}"
    )


def rate(bytes_per_second: float | None) -> str:
    return "-" if not bytes_per_second else f"{size(int(bytes_per_second))}/s"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def migration_panel(title: str, status: MigrationStatus, hint: str = "") -> Panel:
    """The live view of one migration: state, phase, bytes, throughput, replay position and lag, ETA."""
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column(style="dim", no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("state", Text(status.state.value, style="bold"))
    table.add_row("phase", plain(status.phase))
    if status.bytes_total:
        pct = 100 * status.bytes_done / status.bytes_total if status.bytes_total else 0
        table.add_row("progress", f"{size(status.bytes_done)} of {size(status.bytes_total)} ({pct:.0f}%)")
    elif status.bytes_done:
        table.add_row("progress", size(status.bytes_done))
    table.add_row("throughput", rate(status.throughput))
    if status.current_file:
        table.add_row("file", plain(status.current_file))
    table.add_row("source at", plain(status.source_position or "-"))
    table.add_row("target at", plain(status.target_position or "-"))
    lag = "-"
    if status.lag_bytes is not None:
        lag = f"{size(status.lag_bytes)}, {duration(status.lag_seconds)}"
    table.add_row("lag", lag)
    table.add_row("pending", f"{status.pending_files} file(s), {size(status.pending_bytes)}")
    table.add_row("cutover would take", duration(status.cutover_estimate_seconds))
    if status.blocked_reason:
        table.add_row("blocked", plain(status.blocked_reason, style="bold red"))
    subtitle = plain(hint, style="dim") if hint else None
    return Panel(table, title=plain(title), title_align="left", subtitle=subtitle, subtitle_align="left")


def migration_result(console: Console, result: MigrationResult) -> None:
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column(style="dim")
    table.add_column()
    table.add_row("result", Text(result.state, style="bold green"))
    table.add_row("target", plain(f"{result.target} (port {result.port})"))
    table.add_row("connect", plain(f"psql -h {result.target}/run -p {result.port} -U postgres"))
    speed = result.restored_bytes / result.restore_seconds if result.restore_seconds else None
    table.add_row(
        "base backup", f"{size(result.restored_bytes)} in {duration(result.restore_seconds)} ({rate(speed)})"
    )
    table.add_row("WAL replayed", f"{size(result.replayed_bytes)} in {duration(result.replay_seconds)}")
    table.add_row("final LSN", plain(result.final_lsn or "end of the archive"))
    table.add_row("downtime", duration(result.downtime_seconds))
    console.print(table)


def sqlserver_result(console: Console, result: dict[str, Any]) -> None:
    """A SQL Server migration's result: where the database is, the LSN proof, what to look at next."""
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column(style="dim")
    table.add_column(overflow="fold")
    table.add_row("result", Text(str(result.get("state")), style="bold green"))
    table.add_row("database", f"[{result.get('database')}] on {result.get('target')}")
    proof = "holds" if result.get("lsn_proof") else "FAILED"
    table.add_row(
        "LSN proof",
        f"{proof}: restore history ends at {result.get('restored_last_lsn')}, "
        f"LastLSN of '{result.get('last_backup')}' is {result.get('expected_last_lsn')}",
    )
    if result.get("stop_at"):
        table.add_row("stopped at", str(result["stop_at"]))
    table.add_row("downtime", duration(result.get("downtime_seconds")))
    table.add_row("compatibility level", str(result.get("compatibility_level") or "-"))
    table.add_row("owner", str(result.get("owner") or "-"))
    orphans = result.get("orphaned_users")
    table.add_row(
        "orphaned users",
        "not checked (the target did not answer)" if orphans is None else (", ".join(orphans) or "none"),
    )
    checkdb = result.get("checkdb")
    table.add_row(
        "DBCC CHECKDB", "not run" if checkdb is None else ("clean" if checkdb == "clean" else str(checkdb))
    )
    for logical, path in (result.get("moves") or {}).items():
        table.add_row("file", f"{logical} -> {path}")
    console.print(table)


def inspect(out: Console, rows: list[dict[str, Any]]) -> None:
    """RESTORE HEADERONLY and FILELISTONLY of each backup set, as `ferry inspect` prints them."""
    keys = (
        "DatabaseName", "ServerName", "MachineName", "BackupTypeDescription", "Position", "FirstLSN",
        "LastLSN", "CheckpointLSN", "DatabaseBackupLSN", "DifferentialBaseLSN", "BackupStartDate",
        "BackupFinishDate", "SoftwareVersionMajor", "DatabaseVersion", "RecoveryModel", "Compressed",
        "FamilyCount", "FamilySequenceNumber", "BackupSize", "BackupSetGUID", "HasMediaPassword",
    )  # fmt: skip
    for row in rows:
        table = Table(title=plain(row["path"]), title_justify="left", show_header=False, box=None)
        table.add_column(style="dim")
        table.add_column()
        for k in keys:
            table.add_row(k, plain("" if row.get(k) is None else row[k]))
        out.print(table)
        files = Table(show_edge=False, box=None, padding=(0, 2, 0, 2))
        for col in ("LogicalName", "Type", "FileGroupName", "Size", "PhysicalName"):
            files.add_column(col)
        for f in row["files"]:
            files.add_row(
                plain(f["LogicalName"]),
                plain(f["Type"]),
                plain(f["FileGroupName"] or ""),
                size(f["Size"]),
                plain(f["PhysicalName"]),
            )
        out.print(files)
        out.print()


# -- migrations of the service (`ferry migrations ...`) ---------------------------------------------------


def local_time(value: str | None, short: bool = False) -> str:
    """An API timestamp in local time; `short` leaves out the year."""
    if not value:
        return "-"
    return (
        datetime.fromisoformat(value)
        .astimezone()
        .strftime("%m-%d %H:%M:%S" if short else "%Y-%m-%d %H:%M:%S")
    )


def state_text(state: str) -> Text:
    style = {
        "Succeeded": "bold green",
        "Failed": "bold red",
        "Canceled": "yellow",
        "ReadyForCutover": "bold cyan",
        "CuttingOver": "bold magenta",
    }.get(state, "")
    return plain(state, style=style)


def lag(status: dict[str, Any], short: bool = False) -> str:
    """The lag in time and in LSN (bytes of log); `short`: the time alone when there is one."""
    seconds, lsn = status.get("lag_seconds"), status.get("lag_bytes")
    parts = [duration(seconds)] if seconds is not None else []
    if lsn is not None and not (short and parts):
        parts.append(f"{size(int(lsn))} of LSN")
    return ", ".join(parts) or "-"


def migrations_table(items: list[dict[str, Any]]) -> Table:
    # No borders and a short time: one line per migration on a 90-column terminal (the mode is in `show`).
    table = Table(box=None, padding=(0, 2, 0, 0), header_style="bold")
    table.add_column("ID", no_wrap=True)
    table.add_column("Name", overflow="fold", min_width=8)
    table.add_column("State", no_wrap=True)
    table.add_column("Target", no_wrap=True)
    table.add_column("Pending", justify="right")
    table.add_column("Lag", no_wrap=True)
    table.add_column("Updated", no_wrap=True)
    for m in items:
        status = m.get("status") or {}
        pending = status.get("pending_files")
        table.add_row(
            plain(m["id"]),
            plain(m["name"]),
            state_text(m["state"]),
            plain(m["target"]),
            "-" if pending is None else str(pending),
            lag(status, short=True),
            local_time(m.get("updated_at"), short=True),
        )
    return table


def full_restored(m: dict[str, Any]) -> str:
    details = (m.get("status") or {}).get("details") or {}
    if details.get("full_backup_restored") is not None:
        return "yes" if details["full_backup_restored"] else "no"
    # Not reported: the state says it, since logs are restored only on top of the full backup.
    after = {"RestoringLogs", "ReadyForCutover", "CuttingOver", "Succeeded"}
    return "yes" if m["state"] in after else "no"


def migration_detail(m: dict[str, Any]) -> RenderableType:
    """One migration: what it is, where it is, what is left, what blocks it, and its backup sets."""
    status: dict[str, Any] = m.get("status") or {}
    kv = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    kv.add_column(style="dim", no_wrap=True)
    kv.add_column(overflow="fold")
    kv.add_row("state", state_text(m["state"]))
    kv.add_row("phase", plain(status.get("phase") or "-"))
    kv.add_row("source", plain(m["source"]))
    details = status.get("details") or {}
    if m.get("database") or details.get("database"):
        kv.add_row("database", plain(m.get("database") or details.get("database")))
    kv.add_row("target", plain(f"{m['target']} ({m['mode']})"))
    if m.get("last_backup"):
        kv.add_row("last backup", plain(m["last_backup"]))
    if m.get("attempt", 1) > 1:
        kv.add_row("attempt", str(m["attempt"]))
    if m.get("error"):
        kv.add_row("error", plain(m["error"], style="bold red"))
    kv.add_row("full backup restored", full_restored(m))
    kv.add_row("restoring", plain(status.get("current_file") or "-"))
    last = status.get("last_file") or "-"
    if details.get("last_restored_lsn"):
        last += f" (LSN {details['last_restored_lsn']})"
    kv.add_row("last restored", plain(last))
    pending_size = size(status.get("pending_bytes") or 0)
    kv.add_row("pending", f"{status.get('pending_files') or 0} log backup(s), {pending_size}")
    if status.get("bytes_total"):
        done, total = status.get("bytes_done") or 0, status["bytes_total"]
        kv.add_row("progress", f"{size(done)} of {size(total)} ({100 * done / total:.0f}%)")
    kv.add_row("throughput", rate(status.get("throughput")))
    kv.add_row(
        "positions",
        plain(
            f"source {status.get('source_position') or '-'}, target {status.get('target_position') or '-'}"
        ),
    )
    kv.add_row("lag", lag(status))
    kv.add_row("cutover would take", duration(status.get("cutover_estimate_seconds")))
    if status.get("blocked_reason"):
        kv.add_row("blocked", plain(status["blocked_reason"], style="bold red"))
    kv.add_row("created", local_time(m.get("created_at")))
    kv.add_row("updated", local_time(m.get("updated_at")))
    parts: list[RenderableType] = [kv]
    sets = details.get("backup_sets") or []
    if sets:
        parts.append(backup_sets(sets))
    return Panel(Group(*parts), title=plain(f"{m['name']} ({m['id']})"), title_align="left")


def backup_sets(sets: list[dict[str, Any]]) -> Table:
    table = Table(title="Backup sets", title_justify="left", box=None, padding=(0, 2, 0, 0))
    for col in ("Set", "Kind", "File", "Status", "Reason"):
        table.add_column(col, overflow="fold")
    style = {
        "restored": "green",
        "restoring": "bold",
        "queued": "cyan",
        "skipped": "yellow",
        "arrived": "dim",
        "held": "yellow",
    }
    for s in sets:
        files = s.get("files") or [{}]
        for i, f in enumerate(files):
            file_status = str(f.get("status") or "")
            table.add_row(
                plain(s.get("name", "")) if i == 0 else "",
                plain(s.get("kind", "")) if i == 0 else "",
                plain(f.get("name") or ""),
                plain(file_status, style=style.get(file_status.lower(), "")),
                plain(f.get("reason") or ""),
            )
    return table


def event_line(e: dict[str, Any]) -> Text:
    style = {"state": "bold", "error": "bold red", "step": "", "info": "dim"}.get(e["kind"], "")
    line = Text(f"{e['seq']:>5}  {local_time(e['at'])}  ", style="dim")
    line.append(f"{clean(e['kind']):<5}  ", style=style)
    line.append(clean(e["message"]), style=style)
    data = e.get("data") or {}
    if data.get("seconds") is not None:
        line.append(f"  ({duration(float(data['seconds']))})", style="dim")
    if data.get("command"):
        line.append(f"\n{'':>7}{clean(data['command'])}", style="cyan")
    if data.get("error") and e["kind"] != "error":
        line.append(f"\n{'':>7}{clean(data['error'])}", style="red")
    return line


def cutover_answer(out: Console, answer: dict[str, Any], all_ready: bool) -> None:
    accepted, rejected = answer["accepted"], answer["rejected"]
    if not accepted and not rejected and all_ready:
        out.print("no migration is ReadyForCutover")
    for a in accepted:
        lsn = f", final LSN {a['final_lsn']}" if a.get("final_lsn") else ""
        out.print(
            Text.assemble(
                ("cutover requested ", "green"), clean(f"{a['name']} ({a['id']}, {a['state']}{lsn})")
            )
        )
    for r in rejected:
        out.print(Text.assemble(("refused ", "red"), clean(f"{r['name']} ({r['id']}): {r['reason']}")))
    if accepted:
        out.print("each moves to CuttingOver, then Succeeded; follow with `ferry migrations show ID --watch`")


def events(out: Console, answer: dict[str, Any], as_json: bool, lines: bool) -> None:
    if as_json and not lines:
        emit_json(answer)
        return
    for e in answer["events"]:
        if as_json:
            emit_json(e, lines=True)
        else:
            out.print(event_line(e), highlight=False)
