"""The report's timeline chart: each step as a bar from detection, against its target.

Plain SVG written by hand: no plotting dependency, renders in any browser and in GitHub
Markdown. The time axis is logarithmic because a drill's steps take fractions of a second
while their targets are hours; a linear axis would show nothing but the targets.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

WIDTH, LEFT, RIGHT, ROW, TOP = 900, 190, 30, 26, 50
COLORS = {"met": "#2e7d32", "missed": "#c62828", "none": "#607d8b", "target": "#111"}
TICKS = [(0.001, "1ms"), (0.002, "2ms"), (0.005, "5ms"), (0.01, "10ms"), (0.02, "20ms"),
         (0.05, "50ms"), (0.1, "0.1s"), (0.2, "0.2s"), (0.5, "0.5s"), (1, "1s"), (2, "2s"),
         (5, "5s"), (10, "10s"), (20, "20s"), (30, "30s"), (60, "1m"), (120, "2m"),
         (300, "5m"), (600, "10m"), (1200, "20m"), (1800, "30m"), (3600, "1h"),
         (7200, "2h"), (14400, "4h"), (28800, "8h"), (43200, "12h"), (86400, "1d"),
         (172800, "2d"), (604800, "1w")]
TICK_GAP = 34  # pixels between two labelled ticks, so labels never run into each other


def _span(report: dict[str, Any]) -> tuple[float, float]:
    """From a tick below half the earliest bar start, trip or target to a tick past the
    latest end or target, so nothing sits on the plot's edge and no decade is empty."""
    starts, ends = [], [0.01]
    trip = report["run"]["startedAt"] - report["run"]["detectedAt"]
    if trip > 0:
        starts.append(trip)
    for s in report["steps"]:
        done, elapsed = s["sinceDetectionSeconds"], s["elapsedSeconds"]
        if done is not None and elapsed is not None and done - elapsed > 0:
            starts.append(done - elapsed)
        ends += [v for v in (done, s["targetSeconds"]) if v]
        if s["targetSeconds"]:
            starts.append(s["targetSeconds"])
    first = max(min(starts, default=0.01) / 2, 0.001)
    lo = max((t for t, _ in TICKS if t <= first), default=0.001)
    hi = next((t for t, _ in TICKS if t >= max(ends) * 1.15), max(ends) * 1.3)
    return lo, hi


MAJOR = {0.001, 0.01, 0.1, 1, 10, 60, 600, 3600, 7200, 86400, 604800}


def _ticks(lo: float, hi: float, x: Any) -> list[tuple[float, str]]:
    """The ticks inside the span: the major ones (decades, 1m, 10m, 1h, 2h, 1d) first,
    then the others wherever they keep TICK_GAP pixels from every kept label."""
    kept: list[tuple[float, str]] = []
    for major in (True, False):
        for value, label in TICKS:
            if (value in MAJOR) == major and lo <= value <= hi and all(
                    abs(x(value) - x(k)) >= TICK_GAP for k, _ in kept):
                kept.append((value, label))
    return sorted(kept)


def timeline_svg(report: dict[str, Any]) -> str:
    lo, hi = _span(report)
    plot = WIDTH - LEFT - RIGHT

    def x(seconds: float) -> float:
        seconds = min(max(seconds, lo), hi)
        return LEFT + plot * (math.log10(seconds) - math.log10(lo)) / (
            math.log10(hi) - math.log10(lo))

    run, steps = report["run"], report["steps"]
    failover = run["kind"] == "failover"
    origin = "detection" if failover else "the request"
    height = TOP + ROW * max(len(steps), 1) + 50
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
           f'<text x="12" y="20" font-size="14" font-weight="bold">'
           f'{escape(run["plan"])} {escape(run["kind"])}: steps against targets '
           f'(time since {origin}, log scale)</text>']
    axis_y = TOP + ROW * max(len(steps), 1) + 8
    out.append(f'<line x1="{LEFT}" y1="{axis_y}" x2="{WIDTH - RIGHT}" y2="{axis_y}" '
               'stroke="#999"/>')
    for value, label in _ticks(lo, hi, x):
        out.append(f'<line x1="{x(value):.1f}" y1="{TOP - 8}" x2="{x(value):.1f}" '
                   f'y2="{axis_y}" stroke="#ddd"/>')
        out.append(f'<text x="{x(value):.1f}" y="{axis_y + 16}" text-anchor="middle" '
                   f'fill="#555">{label}</text>')
    trip = run["startedAt"] - run["detectedAt"]
    if trip > 0:
        what = "trip" if failover else "started"
        out.append(f'<line x1="{x(trip):.1f}" y1="{TOP - 14}" x2="{x(trip):.1f}" y2="{axis_y}" '
                   f'stroke="#ef6c00" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{x(trip) + 4:.1f}" y="{TOP - 16}" fill="#ef6c00">{what} '
                   f'{trip:.2f} s</text>')
    if not steps:
        out.append(f'<text x="{LEFT}" y="{TOP + 14}" fill="#555">no steps in this run</text>')
    for i, s in enumerate(steps):
        y = TOP + i * ROW
        out.append(f'<text x="{LEFT - 8}" y="{y + 14}" text-anchor="end">'
                   f'{escape(s["name"])}</text>')
        key = {True: "met", False: "missed"}.get(s["met"], "none")
        done = s["sinceDetectionSeconds"]
        if done is not None and s["elapsedSeconds"] is not None:
            start = max(done - s["elapsedSeconds"], lo)
            x0, x1 = x(start), max(x(done), x(start) + 2)
            out.append(f'<rect x="{x0:.1f}" y="{y + 3}" width="{x1 - x0:.1f}" height="{ROW - 8}" '
                       f'fill="{COLORS[key]}" rx="2"><title>{escape(s["name"])}: '
                       f'{escape(s["status"])}, done {done:.3f} s after {origin}</title></rect>')
            status = "" if s["status"] == "succeeded" else f' {escape(s["status"])}'
            out.append(f'<text x="{x1 + 4:.1f}" y="{y + 14}" fill="{COLORS[key]}">'
                       f'{done:.2f} s{status}</text>')
        else:
            out.append(f'<text x="{LEFT + 6}" y="{y + 14}" fill="#999">'
                       f'{escape(s["status"])}: not run</text>')
        if s["targetSeconds"]:
            tx = x(s["targetSeconds"])
            out.append(f'<line x1="{tx:.1f}" y1="{y + 1}" x2="{tx:.1f}" y2="{y + ROW - 3}" '
                       f'stroke="{COLORS["target"]}" stroke-width="3"><title>target '
                       f'{s["targetSeconds"]:g} s</title></line>')
    legend_y = height - 12
    out.append(f'<text x="{LEFT}" y="{legend_y}" fill="#555">bar: step (green met, red '
               f'missed, grey no target) — black tick: its target — dashed: '
               f'{"trip decision" if failover else "run started"}</text>')
    out.append("</svg>")
    return "\n".join(out)
