"""A chain's stored and changed bytes per backup over time, drawn on the server as an SVG: no script, no
front-end framework; one point per backup and series (``class="point stored"`` / ``"point changed"``, with the
backup's id in ``data-id`` and a tooltip), joined by a line, time across and bytes up."""

from __future__ import annotations

import html
from collections.abc import Sequence

from cbtbackup.access.status_view import BackupRow
from cbtbackup.model.durations import format_when
from cbtbackup.model.sizes import format_size

WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 80, 20, 20, 40  # margins for the axes' labels
SERIES = (("stored", "bytes_stored", "#1f77b4"), ("changed", "bytes_changed", "#ff7f0e"))


def _scale(value: float, low: float, high: float, out_low: float, out_high: float) -> float:
    if high == low:
        return (out_low + out_high) / 2
    return out_low + (value - low) * (out_high - out_low) / (high - low)


def plot_svg(backups: Sequence[BackupRow]) -> str:
    if not backups:
        return '<svg xmlns="http://www.w3.org/2000/svg" width="720" height="40"><text x="10" y="25">no backups' \
               '</text></svg>'
    times = [b.created for b in backups]
    top = max(max(b.bytes_stored, b.bytes_changed) for b in backups) or 1
    t0, t1 = min(times), max(times)
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP

    def x(t: float) -> float:
        return round(_scale(t, t0, t1, x0, x1), 1)

    def y(v: float) -> float:
        return round(_scale(v, 0, top, y0, y1), 1)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="stored and changed bytes per backup">',
             f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#888"/>',
             f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#888"/>']
    for i in range(5):  # bytes up the left
        value = top * i / 4
        parts.append(f'<text x="{x0 - 6}" y="{y(value) + 4}" text-anchor="end" font-size="11">'
                     f'{html.escape(format_size(int(value)))}</text>')
    parts.append(f'<text x="{x0}" y="{HEIGHT - 12}" font-size="11">{html.escape(format_when(t0))}</text>')
    if t1 != t0:
        parts.append(f'<text x="{x1}" y="{HEIGHT - 12}" font-size="11" text-anchor="end">'
                     f'{html.escape(format_when(t1))}</text>')
    for label, attribute, colour in SERIES:
        points = [(x(b.created), y(getattr(b, attribute)), b) for b in backups]
        path = " ".join(f"{px},{py}" for px, py, _ in points)
        parts.append(f'<polyline class="line {label}" fill="none" stroke="{colour}" points="{path}"/>')
        for px, py, b in points:
            tip = f"{b.id} {format_when(b.created)}: {label} {format_size(getattr(b, attribute))}"
            parts.append(f'<circle class="point {label}" data-id="{b.id}" cx="{px}" cy="{py}" r="3.5" '
                         f'fill="{colour}"><title>{html.escape(tip)}</title></circle>')
    legend_x = x0 + 10
    for i, (label, _, colour) in enumerate(SERIES):
        parts.append(f'<rect x="{legend_x + i * 90}" y="{TOP - 14}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{legend_x + i * 90 + 14}" y="{TOP - 5}" font-size="11">{label}</text>')
    parts.append("</svg>")
    return "".join(parts)
