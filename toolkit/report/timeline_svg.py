"""The incident timeline as one inline SVG (no scripts): memory, disk and network lanes,
the events that prove a finding marked in the finding's severity colour, and the
moments the VM was captured as dashed lines.

The window is the span of the events behind the most severe findings and of the
captures (a little margin around):
a guest disk holds files from the day its image was built, which would squash the
incident into one pixel. Events outside the window are counted, not drawn.

Example::

    svg = timeline_svg(events, marks={("memory/processes", "s1", 3): ("high", "kworker/0:2H (pid 122)")},
                       captures=[("s1", pd.Timestamp("2026-12-02T00:30:33Z"))])
"""

from __future__ import annotations

import pandas as pd

from toolkit.report.escape import html_safe
from toolkit.schemas import SEVERITY_RANK

LANES = (("memory", "memory/"), ("disk", "disk/"), ("network", "network/"))
COLOURS = {"critical": "#7b0000", "high": "#c62828", "medium": "#ef8f00", "low": "#1565c0", "info": "#777"}
WIDTH, LEFT, RIGHT, LANE_H, TOP = 1100, 80, 20, 34, 22
MAX_LABELS = 6


def _lane(table) -> int | None:
    for n, (_name, prefix) in enumerate(LANES):
        if isinstance(table, str) and table.startswith(prefix):
            return n
    return None


def _ticks(lo: pd.Timestamp, hi: pd.Timestamp) -> tuple[list[pd.Timestamp], str]:
    """Round tick times across [lo, hi] (at most 8) and the strftime format that fits their step."""
    span = (hi - lo).total_seconds() or 1
    steps = (1, 2, 5, 10, 30, 60, 300, 600, 1800, 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400, 365 * 86400)
    step = next((s for s in steps if span / s <= 8), steps[-1])
    out, t = [], pd.Timestamp(lo).floor(f"{min(step, 86400)}s")
    while t <= hi:
        if t >= lo:
            out.append(t)
        t += pd.Timedelta(seconds=step)
    return out[:9], ("%H:%M:%S" if step < 86400 else "%Y-%m-%d")


def timeline_svg(events: pd.DataFrame, marks: dict, captures: list[tuple[str, pd.Timestamp]]) -> str:
    """SVG of ``events`` (timeline rows: ts, table, row, snapshot_id) with ``marks``
    {(table, snapshot_id, row): (severity, label)} and ``captures`` [(snapshot id, time)]."""
    events = events[events["ts"].notna() & events["table"].notna()] if len(events) else events
    marked = []
    for r in events.itertuples(index=False):
        mark = marks.get((r.table, r.snapshot_id, int(r.row) if pd.notna(r.row) else None))
        if mark and _lane(r.table) is not None:
            # the event says what happened then; the finding's colour says why it matters
            marked.append((r.ts, _lane(r.table), (mark[0], f"{r.kind}: {r.description}")))
    # the window: the events behind the most severe findings, and the captures
    top = max((SEVERITY_RANK.get(m[0], 2) for _t, _l, m in marked), default=0)
    anchors = [t for t, _l, m in marked if SEVERITY_RANK.get(m[0], 2) == top]
    anchors += [t for _s, t in captures if t is not None and pd.notna(t)]
    if not anchors:
        return ""
    lo, hi = min(anchors), max(anchors)
    pad = max((hi - lo) * 0.06, pd.Timedelta(seconds=1))
    lo, hi = lo - pad, hi + pad
    span = (hi - lo).total_seconds()

    def x(t) -> float:
        return LEFT + (WIDTH - LEFT - RIGHT) * ((t - lo).total_seconds() / span)

    height = TOP + LANE_H * len(LANES) + 40
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" role="img" '
        f'aria-label="incident timeline" class="timeline">'
    ]
    for n, (name, _prefix) in enumerate(LANES):
        y = TOP + n * LANE_H
        parts.append(f'<rect x="{LEFT}" y="{y}" width="{WIDTH - LEFT - RIGHT}" height="{LANE_H - 4}" fill="#f5f7fa"/>')
        parts.append(f'<text x="4" y="{y + LANE_H / 2 + 2}">{name}</text>')
    inside = events[(events["ts"] >= lo) & (events["ts"] <= hi)] if len(events) else events
    drawn = set()
    for r in inside.itertuples(index=False):
        lane = _lane(r.table)
        if lane is None:
            continue
        px = round(x(r.ts))
        if (px, lane) in drawn:
            continue  # one tick per pixel column and lane is all the eye can tell apart
        drawn.add((px, lane))
        y = TOP + lane * LANE_H
        parts.append(f'<line x1="{px}" y1="{y + 6}" x2="{px}" y2="{y + LANE_H - 10}" stroke="#9aa5b1"/>')
    base = TOP + LANE_H * len(LANES)
    for sid, t in captures:
        if t is None or pd.isna(t):
            continue
        parts.append(
            f'<line x1="{x(t):.1f}" y1="{TOP - 4}" x2="{x(t):.1f}" y2="{base}" stroke="#345" stroke-dasharray="4 3"/>'
            f'<text x="{min(x(t) + 3, WIDTH - 230):.1f}" y="{TOP - 8}" fill="#345">captured {html_safe(sid)}</text>'
        )
    labelled, label_end, labels = 0, {}, []
    marked = [m for m in marked if lo <= m[0] <= hi]
    for t, lane, (severity, label) in sorted(marked, key=lambda m: (-SEVERITY_RANK.get(m[2][0], 2), m[0])):
        y = TOP + lane * LANE_H + (LANE_H - 4) / 2
        colour = COLOURS.get(severity, "#777")
        parts.append(f'<circle cx="{x(t):.1f}" cy="{y:.1f}" r="5" fill="{colour}" stroke="#fff"/>')
        short = label if len(label) <= 44 else label[:41] + "..."
        # a label only where the lane has room: no two overprint
        if labelled < MAX_LABELS and x(t) > label_end.get(lane, 0) and x(t) + 7 + 6 * len(short) < WIDTH:
            labels.append(
                f'<text x="{x(t) + 7:.1f}" y="{y + 4:.1f}" fill="{colour}" stroke="#fff" stroke-width="3" '
                f'paint-order="stroke">{html_safe(short)}</text>'
            )
            label_end[lane] = x(t) + 14 + 6 * len(short)
            labelled += 1
    parts += labels  # after every marker, on a white halo: a later marker never covers a label
    ticks, fmt = _ticks(lo, hi)
    for t in ticks:
        parts.append(
            f'<line x1="{x(t):.1f}" y1="{base}" x2="{x(t):.1f}" y2="{base + 5}" stroke="#345"/>'
            f'<text x="{x(t) - 24:.1f}" y="{base + 18}">{t.strftime(fmt)}</text>'
        )
    outside = len(events) - len(inside) if len(events) else 0
    parts.append(
        f'<text x="{LEFT}" y="{base + 34}" fill="#666">{lo.strftime("%Y-%m-%d %H:%M:%S")} to '
        f"{hi.strftime('%H:%M:%S')} UTC · {len(marked)} events behind findings marked"
        + (f" · {outside} events outside this window not drawn" if outside else "")
        + "</text>"
    )
    parts.append("</svg>")
    return "".join(parts)
