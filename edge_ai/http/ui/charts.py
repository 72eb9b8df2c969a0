"""Small inline SVG line charts, rendered on the server (no script, nothing loaded from anywhere).

Colours come from classes in dashboard.css (the page's Content-Security-Policy allows no inline style);
each chart has a title and a text summary for screen readers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

W, H = 320, 120
_PAD_L, _PAD_R, _PAD_T, _PAD_B = 38, 6, 8, 18


@dataclass(frozen=True)
class Line:
    label: str
    points: Sequence[tuple[float, float | None]]  # (time, value); None breaks the line
    css: str = "s1"


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.2g}" if abs(v) < 1 else f"{v:.1f}".rstrip("0").rstrip(".")


def line_chart(title: str, lines: Sequence[Line], t0: float, t1: float, unit: str = "",
               threshold: float | None = None) -> Markup:
    """A chart of `lines` between times t0 and t1, y from 0 to the largest value (or the threshold)."""
    values = [v for ln in lines for _, v in ln.points if v is not None and math.isfinite(v)]
    top = max([*values, threshold or 0.0, 1e-9])
    top = top * 1.1
    span = max(t1 - t0, 1.0)

    def x(t: float) -> float:
        return _PAD_L + (W - _PAD_L - _PAD_R) * (t - t0) / span

    def y(v: float) -> float:
        return _PAD_T + (H - _PAD_T - _PAD_B) * (1 - v / top)

    parts = [f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}">',
             f"<title>{escape(title)}</title>",
             f'<line class="axis" x1="{_PAD_L}" y1="{y(0):.1f}" x2="{W - _PAD_R}" y2="{y(0):.1f}"/>',
             f'<text class="tick" x="{_PAD_L - 4}" y="{y(0):.1f}" text-anchor="end">0</text>',
             f'<text class="tick" x="{_PAD_L - 4}" y="{_PAD_T + 8}" text-anchor="end">{_fmt(top)}{escape(unit)}</text>',
             f'<text class="tick" x="{_PAD_L}" y="{H - 4}">-{_ago(span)}</text>',
             f'<text class="tick" x="{W - _PAD_R}" y="{H - 4}" text-anchor="end">now</text>']
    if threshold is not None:
        parts.append(f'<line class="threshold" x1="{_PAD_L}" y1="{y(threshold):.1f}" x2="{W - _PAD_R}"'
                     f' y2="{y(threshold):.1f}"/>')
    for ln in lines:
        for run in _runs(ln.points):
            if len(run) == 1:
                t, v = run[0]
                parts.append(f'<circle class="{ln.css}" cx="{x(t):.1f}" cy="{y(v):.1f}" r="2"/>')
            else:
                d = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in run)
                parts.append(f'<polyline class="{ln.css}" points="{d}"/>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 (built from numbers and escaped labels only)


def _runs(points: Sequence[tuple[float, float | None]]) -> list[list[tuple[float, float]]]:
    runs: list[list[tuple[float, float]]] = [[]]
    for t, v in points:
        if v is None or not math.isfinite(v):
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((t, v))
    return [r for r in runs if r]


def _ago(seconds: float) -> str:
    if seconds >= 5400:
        return f"{seconds / 3600:.0f} h"
    return f"{max(1.0, seconds / 60):.0f} min"
