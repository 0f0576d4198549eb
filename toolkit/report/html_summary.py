"""The first screen of the HTML report: per VM, the incident summary (stories and the
timeline chart), then what the report holds below. Also the VM's moments and the
fleet stacking section. Every guest string goes through html_safe.

Example::

    parts = summary_section(case, incident_summary(case), vm_findings)
"""

from __future__ import annotations

import json

import pandas as pd

from toolkit.report.escape import html_safe
from toolkit.report.story import HIGH
from toolkit.report.timeline_svg import timeline_svg

SUMMARY_STYLE = """
.summary{border:2px solid #c62828;border-radius:6px;padding:.4em .8em;margin:.4em 0 1em}
.summary h2{margin:.1em 0 .2em;font-size:1.2em}.vmline{color:#444;font-size:.9em;margin-bottom:.3em}
.story{margin:.35em 0;line-height:1.35}.story .who{font-weight:bold}.story .why{color:#555;font-size:.88em}
.steps{margin:.1em 0 0 1.2em;font-size:.88em}.steps b{color:#345;font-weight:600}
.quiet{color:#2e7d32}.timeline text{font-family:monospace;font-size:10px}
"""


def finding_marks(vm_findings: pd.DataFrame) -> dict:
    """{(table, snapshot, row): (severity, label)}: the rows behind each finding, in its colour;
    for high and critical ones also the rows of their chain (the file, the flow, the history)."""
    marks: dict = {}
    ranked = vm_findings.sort_values("severity_rank", kind="stable") if len(vm_findings) else vm_findings
    for r in ranked.itertuples(index=False):  # most severe last, so it wins a shared row
        links = json.loads(r.evidence or "[]")
        if r.severity_rank >= HIGH:
            links += [lk for step in json.loads(r.chain or "[]") for lk in step.get("links", [])]
        for lk in links:
            marks[(lk["table"], lk["snapshot_id"], lk["row"])] = (r.severity, f"{r.entity_label}: {r.title}")
    return marks


def _vm_events(case, snapshots: list[str]) -> pd.DataFrame:
    timeline = case.timeline
    if not len(timeline):
        return timeline
    mine = timeline[timeline["snapshot_id"].isin(snapshots)]
    # two moments of one VM repeat most events (the same process started once): keep one of each
    return mine.drop_duplicates(["ts", "kind", "description"])


def _story_html(story: dict) -> str:
    steps = "".join(f"<li><b>{html_safe(part)}</b> {html_safe(text)}</li>" for part, text in story["parts"])
    note = f"<div class=why>{html_safe(story['fleet_note'])}</div>" if story.get("fleet_note") else ""
    return (
        f"<div class=story><span class='sev {html_safe(story['severity'])}'>{html_safe(story['severity'].upper())}"
        f"</span> <span class=who>{html_safe(story['label'])}</span> "
        f"<span class=why>— {html_safe(' · '.join(story['why']))}</span>"
        f"<ul class=steps>{steps}</ul>{note}</div>"
    )


def summary_section(case, summary: list[dict], vm_findings: pd.DataFrame) -> str:
    """<section id=summary>: one block per VM, its stories and its timeline chart."""
    parts = ["<section id=summary class=summary><h2>What happened</h2>"]
    moments = case.table("vm/moments") if "vm/moments" in case.tables() else pd.DataFrame()
    quiet = [vm for vm in summary if not vm["stories"]]
    for vm in summary if len(quiet) < 2 else [vm for vm in summary if vm["stories"]]:
        counts = " ".join(
            f"<span class='sev {sev}'>{n} {sev}</span>" for sev, n in vm["counts"].items() if n and sev != "info"
        )
        span = ""
        if vm["first_capture"] is not None and pd.notna(vm["first_capture"]):
            span = f" · captured {vm['first_capture']:%Y-%m-%d %H:%M:%S}"
            if vm["last_capture"] != vm["first_capture"]:
                span += f" to {vm['last_capture']:%Y-%m-%d %H:%M:%S} UTC"
            else:
                span += " UTC"
        parts.append(
            f"<div class=vmline><b>VM {html_safe(vm['name'])}</b> · {len(vm['snapshots'])} snapshot(s), "
            f"{vm['moments']} moment(s){span} · {counts or 'no findings'}</div>"
        )
        if not vm["stories"]:
            parts.append("<p class=quiet>Nothing of high severity: see the findings below.</p>")
        parts += [_story_html(s) for s in vm["stories"]]
        if vm["high_not_told"]:
            parts.append(f"<p class=why>{vm['high_not_told']} more high findings on other entities below.</p>")
        mine = vm_findings[vm_findings["vm"] == vm["vm"]] if len(vm_findings) else vm_findings
        analysed = [s for s in vm["snapshots"] if s in case.snapshots and not case.snapshots[s].get("same_moment_as")]
        vm_moments = moments[moments["vm"] == vm["vm"]] if len(moments) else moments
        captures = [
            (r.same_moment_as, r.captured_at) for r in vm_moments.drop_duplicates("moment").itertuples(index=False)
        ]
        parts.append(timeline_svg(_vm_events(case, analysed), finding_marks(mine), captures))
    if len(quiet) >= 2:  # a fleet: the VMs where nothing is high take one line, not a block each
        names = ", ".join(html_safe(vm["name"]) for vm in quiet)
        parts.append(f"<p class=quiet>Nothing of high severity on {len(quiet)} VMs: {names}.</p>")
    parts.append("</section>")
    return "".join(parts)


def _text(value) -> str:
    return "" if value is None or value is pd.NA or (isinstance(value, float) and value != value) else str(value)


def moments_section(case) -> str:
    """Every snapshot of every VM, its moment, and the proof when it was not analysed itself."""
    if "vm/moments" not in case.tables():
        return ""
    moments = case.table("vm/moments")
    rows = []
    for r in moments.itertuples(index=False):
        proof = ""
        if r.status == "same moment" and pd.notna(r.pages_compared):
            proof = (
                f"same RAM as {r.same_moment_as}: {int(r.pages_compared)} pages compared, "
                f"{int(r.pages_differing)} differ"
            )
        when = f"{r.captured_at:%Y-%m-%d %H:%M:%S}" if pd.notna(r.captured_at) else ""
        cells = (r.vm, r.moment, r.snapshot, r.status, r.memory_format, when, r.captured_at_source, proof)
        rows.append("<tr>" + "".join(f"<td>{html_safe(_text(c))}</td>" for c in cells) + "</tr>")
    head = "".join(
        f"<th>{h}</th>" for h in ("VM", "moment", "snapshot", "status", "memory", "captured", "time from", "proof")
    )
    return f"<h2 id=moments>Snapshots and moments</h2><table><tr>{head}</tr>{''.join(rows)}</table>"


def stacking_section(case, limit: int = 25) -> str:
    """The fleet stacking table of an audit: the rarest items first."""
    if "audit/stacking" not in case.tables():
        return ""
    stacking = case.table("audit/stacking")
    rare = stacking[stacking["rare"].fillna(False)]
    shown = (rare if len(rare) else stacking).head(limit)
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{html_safe(c)}</td>"
            for c in (r.category, r.detail, f"{r.vms} of {r.fleet_size}", ", ".join(json.loads(r.vm_ids or "[]")))
        )
        + "</tr>"
        for r in shown.itertuples(index=False)
    )
    return (
        f"<h2 id=stacking>Fleet stacking</h2><p>{len(rare)} of {len(stacking)} items are rare (on fewer than "
        f"most of the VMs); rarest first.</p><table><tr><th>category</th><th>item</th><th>on</th><th>VMs</th></tr>"
        f"{rows}</table>"
    )


def high_count(vm_findings: pd.DataFrame) -> int:
    return int((vm_findings["severity_rank"] >= HIGH).sum()) if len(vm_findings) else 0
