"""Human output: tables for catalogs, plans, headers and findings. JSON output bypasses all of this."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ferry.core.catalog import Catalog
from ferry.core.findings import Finding, Severity
from ferry.core.migration import MigrationStatus
from ferry.core.plan import Plan

if TYPE_CHECKING:
    from ferry.engines.postgres.migration import MigrationResult

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
        label.append(f.message)
        console.print(label)
        console.print(Text(f"        hint: {f.hint}", style="dim"))


def catalog(console: Console, cat: Catalog) -> None:
    table = Table(title=f"Backups in {cat.source}", title_justify="left")
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
        table.add_row(db.name, db.server, str(counts["full"]), str(counts["diff"]), str(counts["log"]), span)
    console.print(table)
    console.print(
        f"{len(cat.databases)} database(s) in {cat.files_scanned} file(s); "
        f"{size(cat.bytes_read)} of headers read"
    )
    findings(console, cat.findings)


def plan(console: Console, p: Plan) -> None:
    for db in p.databases:
        status = Text("ready", style="green") if db.executable else Text("blocked", style="bold red")
        head = Text(db.name, style="bold")
        head.append(f" on {db.server}  ")
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
            detail = Text("\n".join(s.files))
            detail.append(f"\nLSN {s.first_lsn} to {s.last_lsn}, finished {when(s.backup_finish)}", "dim")
            if s.stop_at:
                detail.append(f"\nstop at {s.stop_at}", "bold yellow")
            table.add_row(str(i), s.kind.value, detail)
        if db.steps:
            console.print(table)
        findings(console, db.findings, title="  findings")
        console.print()
    findings(console, p.findings, title="Files")
    ready = sum(1 for d in p.databases if d.executable)
    console.print(f"{ready} of {len(p.databases)} database(s) ready to restore")


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
    table.add_row("phase", status.phase)
    if status.bytes_total:
        pct = 100 * status.bytes_done / status.bytes_total if status.bytes_total else 0
        table.add_row("progress", f"{size(status.bytes_done)} of {size(status.bytes_total)} ({pct:.0f}%)")
    elif status.bytes_done:
        table.add_row("progress", size(status.bytes_done))
    table.add_row("throughput", rate(status.throughput))
    if status.current_file:
        table.add_row("file", status.current_file)
    table.add_row("source at", status.source_position or "-")
    table.add_row("target at", status.target_position or "-")
    lag = "-"
    if status.lag_bytes is not None:
        lag = f"{size(status.lag_bytes)}, {duration(status.lag_seconds)}"
    table.add_row("lag", lag)
    table.add_row("pending", f"{status.pending_files} WAL file(s), {size(status.pending_bytes)}")
    table.add_row("cutover would take", duration(status.cutover_estimate_seconds))
    if status.blocked_reason:
        table.add_row("blocked", Text(status.blocked_reason, style="bold red"))
    subtitle = Text(hint, style="dim") if hint else None
    return Panel(table, title=title, title_align="left", subtitle=subtitle, subtitle_align="left")


def migration_result(console: Console, result: MigrationResult) -> None:
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column(style="dim")
    table.add_column()
    table.add_row("result", Text(result.state, style="bold green"))
    table.add_row("target", f"{result.target} (port {result.port})")
    table.add_row("connect", f"psql -h {result.target}/run -p {result.port} -U postgres")
    speed = result.restored_bytes / result.restore_seconds if result.restore_seconds else None
    table.add_row(
        "base backup", f"{size(result.restored_bytes)} in {duration(result.restore_seconds)} ({rate(speed)})"
    )
    table.add_row("WAL replayed", f"{size(result.replayed_bytes)} in {duration(result.replay_seconds)}")
    table.add_row("final LSN", result.final_lsn or "end of the archive")
    table.add_row("downtime", duration(result.downtime_seconds))
    console.print(table)
