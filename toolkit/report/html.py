"""Single-file HTML report, readable offline (no scripts, no external assets).

The first screen is the incident summary (toolkit/report/html_summary.py): per
VM, the entities that carry the high findings as short stories and a timeline
chart. The findings follow, once per VM (``vm/findings``), highest severity on
top, each a <details> that expands to its explanation, the snapshots it was
seen in, the exact evidence rows (addresses in hex) and — for high and
critical — an SVG picture of its entity chain. Then the snapshots and their
moments, the fleet stacking of an audit, and the timeline. Every guest string
goes through html_safe.
"""

from __future__ import annotations

import json

import pandas as pd

from toolkit.report.escape import html_safe
from toolkit.report.html_summary import SUMMARY_STYLE, moments_section, stacking_section, summary_section
from toolkit.report.story import incident_summary
from toolkit.report.tabular import address_columns, display_value

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1200px}
h1{margin:0 0 .2em}.meta{color:#666;margin-bottom:1em}
.sev{display:inline-block;min-width:5.5em;text-align:center;border-radius:3px;padding:1px 4px;
font-weight:bold;color:#fff}
.critical{background:#7b0000}.high{background:#c62828}.medium{background:#ef8f00}.low{background:#1565c0}
.info{background:#777}
details{border:1px solid #ddd;border-radius:4px;margin:.4em 0;padding:.3em .6em}
summary{cursor:pointer;font-size:1.05em}
table{border-collapse:collapse;font-size:.85em;margin:.4em 0}
td,th{border:1px solid #ccc;padding:2px 5px;text-align:left;vertical-align:top}
th{background:#f3f3f3}.expl{margin:.4em 0 .2em}.mono{font-family:monospace;word-break:break-all}
svg text{font-family:monospace;font-size:11px}
"""


def _row_table(df: pd.DataFrame, max_cols: int = 14, table: str | None = None) -> str:
    if df is None or not len(df):
        return "<p><i>no rows</i></p>"
    cols = [c for c in df.columns if c not in ("source",)][:max_cols]
    hex_cols = address_columns(table)
    head = "".join(f"<th>{html_safe(c)}</th>" for c in cols)
    body = []
    for _, row in df.iterrows():
        cells = []
        for c in cols:
            v = display_value(row[c], c in hex_cols)
            text = "" if v is None else str(v)
            if len(text) > 200:
                text = text[:200] + "…"
            cells.append(f"<td class=mono>{html_safe(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def chain_svg(steps: list[dict]) -> str:
    """A picture of the entity chain as a tree: each entity under the one it was
    reached from, the connector labelled with the relation."""
    if len(steps) < 2:
        return ""
    children: dict[str, list[dict]] = {}
    for step in steps[1:]:
        children.setdefault(step["from"], []).append(step)
    ordered: list[tuple[dict, int]] = []

    def visit(step, depth):
        ordered.append((step, depth))
        for child in children.get(step["node"], []):
            visit(child, depth + 1)

    visit(steps[0], 0)
    row_h, box_h, indent, width = 44, 24, 36, 900
    height = len(ordered) * row_h
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="entity chain">'
    ]
    y_of: dict[str, tuple[float, int]] = {}
    for n, (step, depth) in enumerate(ordered):
        x, y = 10 + depth * indent, n * row_h + 16
        y_of[step["node"]] = (y, depth)
        label = step["label"] if len(step["label"]) < 90 else step["label"][:87] + "..."
        fill = "#ffe0e0" if depth == 0 else "#eef3ff"
        if depth:
            py, pdepth = y_of[step["from"]]
            px = 10 + pdepth * indent + 12
            parts.append(f'<path d="M{px},{py + box_h} V{y + box_h / 2} H{x}" fill="none" stroke="#345"/>')
            parts.append(f'<text x="{x}" y="{y - 3}" fill="#456">{html_safe(step["via"])}</text>')
        parts.append(
            f'<rect x="{x}" y="{y}" width="{width - x - 10}" height="{box_h}" rx="4" fill="{fill}" stroke="#567"/>'
        )
        parts.append(f'<text x="{x + 8}" y="{y + 16}">{html_safe(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _evidence_rows(case, links: list[dict], cache: dict) -> str:
    by_table: dict[str, list] = {}
    for lk in links:
        by_table.setdefault(lk["table"], []).append(lk)
    out = []
    for table, ls in by_table.items():
        if table not in cache:
            try:
                df = case.table(table)
            except KeyError:
                df = None
            # row links are positions within a snapshot's file
            cache[table] = None if df is None else df.assign(_row=df.groupby("snapshot_id").cumcount())
        df = cache[table]
        if df is None:
            continue
        wanted = {(lk["snapshot_id"], lk["row"]) for lk in ls}
        picked = df[[(s, r) in wanted for s, r in zip(df["snapshot_id"], df["_row"])]].drop(columns="_row")
        out.append(f"<h4>{html_safe(table)}</h4>{_row_table(picked, table=table)}")
    return "".join(out)


def _seen(row) -> str:
    seen = json.loads(row.seen_in or "[]")
    when = ""
    if pd.notna(row.first_seen_ts):
        when = f" · first seen {row.first_seen_ts:%Y-%m-%d %H:%M:%S}"
        if row.last_seen != row.first_seen and pd.notna(row.last_seen_ts):
            when += f", last seen {row.last_seen_ts:%Y-%m-%d %H:%M:%S} UTC"
    return f"seen in {len(seen)} snapshot(s), {row.moments} moment(s): {', '.join(seen)}{when}"


def _finding(case, row, n: int, cache: dict) -> list[str]:
    links = json.loads(row.evidence or "[]")
    steps = json.loads(row.chain or "[]")
    chain_links = [lk for s in steps for lk in s.get("links", [])]
    open_attr = " open" if n == 0 else ""
    attack = " · " + html_safe(row.attack_id) if isinstance(row.attack_id, str) else ""
    parts = [
        f"<details{open_attr}><summary>"
        f"<span class='sev {html_safe(row.severity)}'>{html_safe(row.severity.upper())}</span> "
        f"<b>{html_safe(row.title)}</b> — {html_safe(row.entity_label)} "
        f"<small>({html_safe(row.rule_id)}{attack}"
        f" · {html_safe(row.vm)} · {len(json.loads(row.seen_in or '[]'))} snapshot(s)"
        f" · confidence {row.confidence:.0%})</small></summary>"
        f"<p class=expl>{html_safe(row.explanation)}</p>"
        f"<p class=meta>{html_safe(_seen(row))}</p>"
    ]
    if isinstance(row.fleet_note, str):
        parts.append(f"<p class=meta>{html_safe(row.fleet_note)}</p>")
    if row.severity_rank >= 3:
        parts.append(chain_svg(steps))
    parts.append("<h3>Evidence rows</h3>" + _evidence_rows(case, links, cache))
    if len(steps) > 1:
        parts.append(
            "<details><summary>rows behind the chain</summary>"
            + _evidence_rows(case, chain_links, cache)
            + "</details>"
        )
    parts.append("</details>")
    return parts


def render_html(case) -> str:
    """The whole report as one HTML string.

    Example::

        Path("web01.html").write_text(render_html(Case.open("cases/web01")))
    """
    if "vm/findings" not in case.tables() and case.snapshots:
        from toolkit.errors import CaseError

        raise CaseError(f"{case.path}: no VM view yet (a case from an older snapscope): run `snapscope correlate`")
    findings = case.table("vm/findings") if "vm/findings" in case.tables() else pd.DataFrame()
    timeline = case.timeline
    summary = incident_summary(case)
    names = [vm["name"] for vm in summary]
    title = f"snapscope report — {', '.join(names[:3]) + (' …' if len(names) > 3 else '') or case.path.name}"
    snapshots = len(case.snapshots)
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html_safe(title)}</title>"
        f"<style>{STYLE}{SUMMARY_STYLE}</style></head><body>",
        f"<h1>{html_safe(title)}</h1>",
        f"<div class=meta>{len(summary)} VM(s) · {snapshots} snapshot(s) · {len(findings)} findings · "
        f"case {html_safe(case.path)} · sections: <a href='#findings'>findings</a> · "
        f"<a href='#moments'>snapshots</a> · <a href='#timeline'>timeline</a></div>",
        summary_section(case, summary, findings) if summary else "",
        "<h2 id=findings>Findings</h2>",
    ]
    if not len(findings):
        parts.append("<p>No findings.</p>")
    cache: dict = {}
    ordered = (
        findings.sort_values(["severity_rank", "confidence"], ascending=False, kind="stable")
        if len(findings)
        else findings
    )
    for n, row in enumerate(ordered.itertuples(index=False)):
        parts += _finding(case, row, n, cache)
    parts.append(moments_section(case))
    parts.append(stacking_section(case))
    parts.append("<h2 id=timeline>Timeline</h2>")
    shown = timeline.head(2000)
    parts.append(
        _row_table(
            shown[["ts", "kind", "description", "table", "row", "pid", "path", "snapshot_id"]] if len(shown) else shown
        )
    )
    if len(timeline) > len(shown):
        parts.append(f"<p>{len(timeline) - len(shown)} more events: see the timesketch or CSV export.</p>")
    parts.append("</body></html>")
    return "".join(parts)
