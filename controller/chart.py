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
TICKS = [(0.01, "10ms"), (0.1, "0.1s"), (1, "1s"), (10, "10s"), (60, "1m"), (600, "10m"),
         (3600, "1h"), (7200, "2h"), (14400, "4h"), (86400, "1d")]


def _span(report: dict[str, Any]) -> tuple[float, float]:
    values = [0.01]
    for s in report["steps"]:
        values += [v for v in (s["sinceDetectionSeconds"], s["targetSeconds"]) if v]
    return 0.01, max(values) * 1.3


def timeline_svg(report: dict[str, Any]) -> str:
    lo, hi = _span(report)
    plot = WIDTH - LEFT - RIGHT

    def x(seconds: float) -> float:
        seconds = min(max(seconds, lo), hi)
        return LEFT + plot * (math.log10(seconds) - math.log10(lo)) / (
            math.log10(hi) - math.log10(lo))

    run, steps = report["run"], report["steps"]
    height = TOP + ROW * len(steps) + 50
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
           f'<text x="{LEFT}" y="20" font-size="14" font-weight="bold">'
           f'{escape(run["plan"])} {escape(run["kind"])}: steps against targets '
           f'(time since detection, log scale)</text>']
    axis_y = TOP + ROW * len(steps) + 8
    for value, label in TICKS:
        if lo <= value <= hi:
            out.append(f'<line x1="{x(value):.1f}" y1="{TOP - 8}" x2="{x(value):.1f}" '
                       f'y2="{axis_y}" stroke="#ddd"/>')
            out.append(f'<text x="{x(value):.1f}" y="{axis_y + 16}" text-anchor="middle" '
                       f'fill="#555">{label}</text>')
    trip = run["startedAt"] - run["detectedAt"]
    if trip > 0:
        out.append(f'<line x1="{x(trip):.1f}" y1="{TOP - 14}" x2="{x(trip):.1f}" y2="{axis_y}" '
                   f'stroke="#ef6c00" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{x(trip) + 4:.1f}" y="{TOP - 16}" fill="#ef6c00">trip '
                   f'{trip:.2f} s</text>')
    out.append(f'<text x="{LEFT - 4}" y="{TOP - 16}" text-anchor="end" fill="#555">'
               f'detection</text>')
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
                       f'{escape(s["status"])}, done {done:.3f} s after detection</title></rect>')
            out.append(f'<text x="{x1 + 4:.1f}" y="{y + 14}" fill="{COLORS[key]}">'
                       f'{done:.2f} s</text>')
        if s["targetSeconds"]:
            tx = x(s["targetSeconds"])
            out.append(f'<line x1="{tx:.1f}" y1="{y + 1}" x2="{tx:.1f}" y2="{y + ROW - 3}" '
                       f'stroke="{COLORS["target"]}" stroke-width="3"><title>target '
                       f'{s["targetSeconds"]:g} s</title></line>')
    legend_y = height - 12
    out.append(f'<text x="{LEFT}" y="{legend_y}" fill="#555">bar: step (green met, red '
               f'missed, grey no target) — black tick: target — dashed: trip decision</text>')
    out.append("</svg>")
    return "\n".join(out)
