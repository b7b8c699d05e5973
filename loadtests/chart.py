"""The benchmark's charts: one self-contained HTML page with inline SVGs.

Latency percentiles and server CPU per request (log scales) against the offered
rate, one colour per target (``/score`` at one and two workers, the echo baseline),
one dash per percentile, hollow marks where the target was saturated; the headline
figures sit in a table under them.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

WIDTH, HEIGHT = 860, 480
LEFT, RIGHT, TOP, BOTTOM = 70, 200, 30, 50
DASHES = {"p50": "", "p95": "6 4", "p99": "2 3"}


@dataclass(frozen=True)
class Series:
    """One line: a target's percentile at each offered rate."""

    target: str
    percentile: str
    colour: str
    points: Sequence[tuple[float, float]]
    saturated: frozenset[float] = frozenset()
    """Rates at which the target was saturated (drawn hollow)."""


def _ticks(low: float, high: float) -> list[float]:
    """1-2-5 ticks between two positive bounds (log axis)."""
    ticks = []
    for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        for mantissa in (1, 2, 5):
            value = mantissa * 10.0**exponent
            if low <= value <= high:
                ticks.append(value)
    return ticks


def _nice_step(span: float) -> float:
    raw = span / 8
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)


def svg(series: Sequence[Series], title: str, y_label: str) -> str:
    """One chart as an SVG element."""
    points = [p for s in series for p in s.points if p[1] > 0]
    if not points:
        return "<p>no data</p>"
    x_max = max(x for x, _ in points) * 1.05
    y_low = min(y for _, y in points) / 1.5
    y_high = max(y for _, y in points) * 1.5
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x_at(rate: float) -> float:
        return LEFT + rate / x_max * plot_w

    def y_at(ms: float) -> float:
        share = (math.log10(ms) - math.log10(y_low)) / (math.log10(y_high) - math.log10(y_low))
        return TOP + plot_h * (1 - share)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}"'
        ' font-family="sans-serif" font-size="12">',
        f'<text x="{LEFT}" y="18" font-size="14" font-weight="bold">{html.escape(title)}</text>',
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none"'
        ' stroke="#999"/>',
    ]
    for tick in _ticks(y_low, y_high):
        y = y_at(tick)
        label = f"{tick:g}"
        out.append(
            f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>'
        )
    step = _nice_step(x_max)
    tick = 0.0
    while tick <= x_max:
        x = x_at(tick)
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{TOP + plot_h}" stroke="#eee"/>'
            f'<text x="{x:.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">{tick:g}</text>'
        )
        tick += step
    out.append(
        f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 10}" text-anchor="middle">'
        "offered rate (requests/s, open loop)</text>"
        f'<text x="16" y="{TOP + plot_h / 2}" text-anchor="middle"'
        f' transform="rotate(-90 16 {TOP + plot_h / 2})">{html.escape(y_label)}</text>'
    )
    for index, line in enumerate(series):
        drawn = [(x_at(x), y_at(y), x in line.saturated) for x, y in line.points if y > 0]
        if not drawn:
            continue
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in drawn)
        dash = DASHES.get(line.percentile, "")
        out.append(
            f'<polyline points="{path}" fill="none" stroke="{line.colour}" stroke-width="2"'
            f' stroke-dasharray="{dash}"/>'
        )
        out.extend(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" stroke="{line.colour}"'
            f' fill="{"white" if hollow else line.colour}"/>'
            for x, y, hollow in drawn
        )
        legend_y = TOP + 10 + index * 18
        legend_x = LEFT + plot_w + 14
        out.append(
            f'<line x1="{legend_x}" x2="{legend_x + 28}" y1="{legend_y}" y2="{legend_y}"'
            f' stroke="{line.colour}" stroke-width="2" stroke-dasharray="{dash}"/>'
            f'<text x="{legend_x + 34}" y="{legend_y + 4}">'
            f"{html.escape(line.target)} {line.percentile}</text>"
        )
    out.append("</svg>")
    return "\n".join(out)


def page(
    charts: Sequence[tuple[str, str, Sequence[Series]]], title: str, headline: Mapping[str, str]
) -> str:
    """A whole HTML page: the charts (title, y label, lines) and the headline figures."""
    drawn = "\n".join(svg(lines, name, y_label) for name, y_label, lines in charts)
    rows = "\n".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in headline.items()
    )
    return (
        "<!doctype html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:24px}"
        "th{text-align:left;padding-right:16px;font-weight:normal;color:#555}"
        "td{font-family:monospace}</style></head><body>\n"
        f"<h3>{html.escape(title)}</h3>\n{drawn}\n<table>\n{rows}\n</table>\n</body></html>\n"
    )
