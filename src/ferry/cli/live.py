"""Running a migration in the foreground: a live view on a terminal, plain progress lines elsewhere, and
the `c` key to ask for the cutover."""

from __future__ import annotations

import contextlib
import os
import select
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.console import Console
from rich.live import Live

from ferry.cli import render
from ferry.core.migration import MigrationStatus
from ferry.engines.base import MigrationJob
from ferry.engines.postgres.cutover import CutoverRequest, pending_cutover, request_cutover
from ferry.engines.postgres.migration import MigrationResult, MigrationSpec
from ferry.pipeline.migrate import HasJob, Migration, Outcome


class _Keys:
    """Reads single key presses from a terminal without waiting for Enter (restored on exit)."""

    def __init__(self, on_key: Callable[[str], None]) -> None:
        self.on_key = on_key
        self.stop = threading.Event()

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        if not sys.stdin.isatty():
            yield
            return
        import termios
        import tty

        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        thread = threading.Thread(target=self._loop, args=(fd,), daemon=True, name="ferry-keys")
        thread.start()
        try:
            yield
        finally:
            self.stop.set()
            thread.join(timeout=1)
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)

    def _loop(self, fd: int) -> None:
        while not self.stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                self.on_key(os.read(fd, 1).decode(errors="ignore"))


def run_migration(
    spec: MigrationSpec,
    console: Console,
    title: str,
    cutover: Callable[[], CutoverRequest | None] | None = None,
    hint: str | None = None,
    on_status: Callable[[MigrationStatus], None] | None = None,
) -> MigrationResult:
    """Run `spec` in the foreground until it succeeds, showing its progress. Without `cutover`, the
    cutover is asked for with the `c` key or `ferry cutover` (a request file in the target folder)."""
    if hint is None:
        hint = "press c to cut over · Ctrl-C stops Ferry (the target keeps running; run again to resume)"
        if not spec.online:
            hint = "offline: restores to the end of the archive, then promotes · Ctrl-C stops Ferry"

    def on_key(key: str) -> None:
        if key.lower() == "c" and spec.online and pending_cutover(spec.target) is None:
            request_cutover(spec.target)

    def from_file() -> CutoverRequest | None:
        return pending_cutover(spec.target)

    ask = cutover or from_file
    outcome = run_job(spec, console, title, ask, on_key, hint, on_status)
    return MigrationResult(**outcome.result)


def run_job(
    spec: MigrationJob | HasJob,
    console: Console,
    title: str,
    ask: Callable[[], CutoverRequest | None],
    on_key: Callable[[str], None],
    hint: str,
    on_status: Callable[[MigrationStatus], None] | None = None,
) -> Outcome:
    """Run one migration of any engine in the foreground: the live panel on a terminal (keys go to
    `on_key`), progress lines elsewhere. `ask` is polled for the cutover request."""
    if console.is_terminal:
        with Live(console=console, refresh_per_second=4, transient=False) as live:

            def report(status: MigrationStatus) -> None:
                if on_status:
                    on_status(status)
                live.update(render.migration_panel(title, status, hint))

            with _Keys(on_key).running():
                return Migration(spec, report, ask).run()
    printer = _LinePrinter(console)

    def report_lines(status: MigrationStatus) -> None:
        if on_status:
            on_status(status)
        printer.report(status)

    return Migration(spec, report_lines, ask).run()


class _LinePrinter:
    """Without a terminal (a log, CI): a line on every state or phase change, and every 10 s."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.last: tuple[str, str] | None = None
        self.last_time = 0.0

    def report(self, status: MigrationStatus) -> None:
        key = (status.state.value, status.phase)
        now = time.monotonic()
        if key == self.last and now - self.last_time < 10:
            return
        self.last, self.last_time = key, now
        parts = [f"{status.state.value}: {status.phase}"]
        if status.bytes_total:
            parts.append(f"{render.size(status.bytes_done)} of {render.size(status.bytes_total)}")
        if status.target_position:
            parts.append(f"target at {status.target_position}")
        if status.lag_bytes is not None:
            parts.append(f"lag {render.size(status.lag_bytes)}")
        if status.blocked_reason:
            parts.append(f"BLOCKED: {status.blocked_reason}")
        self.console.print(render.plain(" · ".join(parts)))


def target_path(value: str) -> Path:
    return Path(os.path.abspath(value))
