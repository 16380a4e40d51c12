"""Human output: tables for catalogs, plans, headers and findings. JSON output bypasses all of this."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ferry.core.catalog import Catalog
from ferry.core.findings import Finding, Severity
from ferry.core.plan import Plan

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
    for col in ("Database", "Server", "Full", "Diff", "Log", "Restorable from", "Restorable to", "To LSN"):
        table.add_column(col, no_wrap=col not in ("Database", "Server"))
    for db in cat.databases:
        counts = {"full": 0, "diff": 0, "log": 0}
        for b in db.backups:
            counts[b.kind] = counts.get(b.kind, 0) + 1
        table.add_row(
            db.name,
            db.server,
            str(counts["full"]),
            str(counts["diff"]),
            str(counts["log"]),
            when(db.restorable_from),
            when(db.restorable_to),
            db.restorable_to_lsn or "-",
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
        head = Text(f"{db.name}", style="bold")
        head.append(f" on {db.server}  ", style="")
        head.append(status)
        if db.restores_to:
            head.append(f"  restores to {when(db.restores_to)}")
        if db.restores_to_lsn:
            head.append(f" (LSN {db.restores_to_lsn})")
        console.print(head)
        if db.steps:
            table = Table(show_edge=False, pad_edge=False, box=None, padding=(0, 2, 0, 2))
            for col in ("#", "Step", "Files", "First LSN", "Last LSN", "Finished", "Stop at"):
                table.add_column(col, overflow="fold")
            for i, s in enumerate(db.steps, 1):
                table.add_row(
                    str(i),
                    s.kind.value,
                    "\n".join(s.files),
                    s.first_lsn,
                    s.last_lsn,
                    when(s.backup_finish),
                    s.stop_at or "",
                )
            console.print(table)
        findings(console, db.findings, title="  findings")
        console.print()
    findings(console, p.findings, title="Files")
    ready = sum(1 for d in p.databases if d.executable)
    console.print(f"{ready} of {len(p.databases)} database(s) ready to restore")
