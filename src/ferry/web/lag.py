"""Replay lag over time: samples the console sees, kept bounded, drawn as an SVG on the server.

The API reports a migration's current lag only (`status.lag_seconds`, `status.lag_bytes`). Each time the
console reads a migration (a page, or its live refresh) it keeps a sample, so the chart covers the time
since a console page first showed that migration after `ferry serve` started.

Bounded whatever runs for weeks: at most MAX_SAMPLES per migration (when full, neighbours are merged two
by two, keeping the larger lag, so the chart keeps the whole span at half the resolution and never loses
a peak), samples closer than MIN_GAP seconds are not kept, and at most MAX_MIGRATIONS migrations are
followed (the one seen least recently is dropped).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from markupsafe import Markup, escape

N = TypeVar("N", int, float)

MAX_SAMPLES = 240
MIN_GAP = 2.0
MAX_MIGRATIONS = 1000

WIDTH, HEIGHT = 640, 200
LEFT, RIGHT, TOP, BOTTOM = 70, 12, 12, 34  # room for the axis labels


@dataclass(frozen=True)
class Sample:
    at: float  # seconds since the epoch
    seconds: float | None
    bytes: int | None


class LagHistory:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._by_id: OrderedDict[str, list[Sample]] = OrderedDict()

    def record(self, migration: dict[str, object]) -> None:
        """A sample of a migration as the API just showed it, while it replays."""
        status = migration.get("status")
        if not isinstance(status, dict) or migration.get("state") not in ("RestoringLogs", "ReadyForCutover"):
            return
        seconds, size = status.get("lag_seconds"), status.get("lag_bytes")
        lag_s = float(seconds) if isinstance(seconds, int | float) else None
        lag_b = int(size) if isinstance(size, int | float) else None
        if lag_s is None and lag_b is None:
            return
        key, now = str(migration.get("id")), self._clock()
        with self._lock:
            samples = self._by_id.setdefault(key, [])
            self._by_id.move_to_end(key)
            if samples and now - samples[-1].at < MIN_GAP:
                return
            samples.append(Sample(now, lag_s, lag_b))
            if len(samples) > MAX_SAMPLES:
                self._by_id[key] = _halve(samples)
            while len(self._by_id) > MAX_MIGRATIONS:
                self._by_id.popitem(last=False)

    def samples(self, migration_id: str) -> list[Sample]:
        with self._lock:
            return list(self._by_id.get(migration_id, ()))


def _halve(samples: list[Sample]) -> list[Sample]:
    merged = []
    for i in range(0, len(samples) - 1, 2):
        a, b = samples[i], samples[i + 1]
        merged.append(Sample(b.at, _larger(a.seconds, b.seconds), _larger(a.bytes, b.bytes)))
    if len(samples) % 2:
        merged.append(samples[-1])
    return merged


def _larger(a: N | None, b: N | None) -> N | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


@dataclass(frozen=True)
class Chart:
    svg: Markup  # empty when there is nothing to draw
    summary: str  # the same in words, for everyone and for screen readers


def chart(samples: Sequence[Sample], label: str) -> Chart:
    """The lag as a line over time: in seconds when the engine reports them, else in bytes."""
    use_seconds = any(s.seconds is not None for s in samples)
    points = [
        (s.at, float(s.seconds if use_seconds else s.bytes))  # type: ignore[arg-type]
        for s in samples
        if (s.seconds if use_seconds else s.bytes) is not None
    ]
    if len(points) < 2:
        return Chart(
            Markup(""), "Not enough samples yet: the chart starts once replay has been watched for a while."
        )
    unit = "seconds" if use_seconds else "bytes"
    fmt = _seconds if use_seconds else _bytes
    t0, t1 = points[0][0], points[-1][0]
    top = _nice(max(v for _, v in points))
    span = max(t1 - t0, 1e-9)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def xy(t: float, v: float) -> str:
        return f"{LEFT + (t - t0) / span * plot_w:.1f},{TOP + plot_h - v / top * plot_h:.1f}"

    line = " ".join(xy(t, v) for t, v in points)
    now = points[-1][1]
    peak = max(v for _, v in points)
    summary = (
        f"Replay lag in {unit} from {_clock(t0)} to {_clock(t1)} UTC ({len(points)} samples): "
        f"now {fmt(now)}, at most {fmt(peak)}."
    )
    grid = []
    for i in range(5):
        value = top * i / 4
        y = TOP + plot_h - plot_h * i / 4
        grid.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(fmt(value))}</text>'
        )
    svg = (
        f'<svg class="lag-chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img"'
        f' aria-labelledby="lag-title lag-desc" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="lag-title">{escape(label)}</title>'
        f'<desc id="lag-desc">{escape(summary)}</desc>{"".join(grid)}'
        f'<line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + plot_h}"/>'
        f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h}" y2="{TOP + plot_h}"/>'
        f'<polyline class="lag-line" fill="none" points="{line}"/>'
        f'<text class="tick" x="{LEFT}" y="{HEIGHT - 10}">{_clock(t0)}</text>'
        f'<text class="tick" x="{WIDTH - RIGHT}" y="{HEIGHT - 10}" text-anchor="end">{_clock(t1)} UTC</text>'
        "</svg>"
    )
    return Chart(Markup(svg), summary)


def _nice(peak: float) -> float:
    """A round top for the axis at or above `peak` (1, 2 or 5 times a power of ten)."""
    if peak <= 0:
        return 1.0
    power = 1.0
    while power * 10 <= peak:
        power *= 10
    while power > peak:
        power /= 10
    for step in (1, 2, 5, 10):
        if step * power >= peak:
            return step * power
    return 10 * power


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S")


def _seconds(value: float) -> str:
    if value < 1:  # the axis' quarter ticks: 0.25 s, not a rounded 0.2 s
        return f"{value:.2f}".rstrip("0").rstrip(".") + " s"
    if value < 10:
        return f"{value:.1f} s"
    if value < 120:
        return f"{value:.0f} s"
    return f"{value / 60:.1f} min"


def _bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
