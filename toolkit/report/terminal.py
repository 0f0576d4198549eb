"""Terminal output (rich): the incident summary first, then every finding once per VM with
the snapshots it was seen in and the chain behind it. Guest strings go through rich_safe.

Example::

    render_incident_summary(console, incident_summary(case))
    render_findings(console, case.table("vm/findings"))
"""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from toolkit.report.escape import rich_safe
from toolkit.schemas import SEVERITIES

SEVERITY_STYLE = {"critical": "bold white on red", "high": "bold red", "medium": "yellow", "low": "cyan", "info": "dim"}


def render_incident_summary(console: Console, summary: list[dict]) -> None:
    """Per VM: what was captured, counts by severity, and each high entity's story; on a fleet,
    the VMs where nothing is high share one line."""
    quiet = [vm for vm in summary if not vm["stories"]]
    for vm in summary if len(quiet) < 2 else [vm for vm in summary if vm["stories"]]:
        counts = ", ".join(
            f"[{SEVERITY_STYLE.get(s, 'none')}]{n} {rich_safe(s)}[/]"
            for s, n in vm["counts"].items()
            if n and s != "info"
        )
        when = ""
        if vm["first_capture"] is not None and vm["first_capture"] == vm["first_capture"]:
            when = f", captured {vm['first_capture']:%Y-%m-%d %H:%M:%S} UTC"
        tree = Tree(
            f"[bold]VM {rich_safe(vm['name'])}[/]: {len(vm['snapshots'])} snapshot(s), "
            f"{vm['moments']} moment(s){when} — {counts or 'no findings'}"
        )
        if not vm["stories"]:
            tree.add("[green]nothing of high severity[/]")
        for story in vm["stories"]:
            style = SEVERITY_STYLE.get(story["severity"], "none")  # a severity from a crafted case is text
            severity = rich_safe(str(story["severity"]).upper())
            branch = tree.add(f"[{style}]{severity}[/] [bold]{rich_safe(story['label'])}[/]")
            branch.add(f"[dim]why[/] {rich_safe('; '.join(story['why']))}")
            for part, text in story["parts"]:
                branch.add(f"[dim]{rich_safe(part)}[/] {rich_safe(text)}")
            if story.get("fleet_note"):
                branch.add(f"[dim]{rich_safe(story['fleet_note'])}[/]")
        if vm["high_not_told"]:
            tree.add(f"[dim]{vm['high_not_told']} more high findings on other entities below[/]")
        console.print(tree, soft_wrap=False)  # a long step wraps under its branch, never cut off
    if len(quiet) >= 2:
        names = ", ".join(rich_safe(vm["name"]) for vm in quiet)
        console.print(f"[green]nothing of high severity on {len(quiet)} VMs[/]: {names}", soft_wrap=False)


def render_findings(console: Console, findings, *, chains: bool = True, min_rank: int = 0) -> None:
    """Every finding (``vm/findings`` rows: one per rule and entity per VM), most severe first."""
    if not len(findings):
        console.print("[green]no findings[/]")
        return
    counts = findings["severity"].value_counts().to_dict()
    summary = Table(title="findings by severity")
    summary.add_column("severity")
    summary.add_column("count", justify="right")
    for sev in SEVERITIES:
        if counts.get(sev):
            summary.add_row(f"[{SEVERITY_STYLE[sev]}]{sev}[/]", str(counts[sev]))
    console.print(summary)
    ordered = findings.sort_values(["severity_rank", "confidence"], ascending=False, kind="stable")
    for row in ordered.itertuples(index=False):
        if row.severity_rank < min_rank:
            continue
        style = SEVERITY_STYLE.get(row.severity, "none")  # a severity from a crafted case is text, not a style
        seen = json.loads(row.seen_in or "[]")
        head = (
            f"[{style}]{rich_safe(str(row.severity).upper())}[/] [bold]{rich_safe(row.title)}[/] "
            f"({rich_safe(row.rule_id)}{', ' + rich_safe(row.attack_id) if isinstance(row.attack_id, str) else ''}) "
            f"[dim]VM {rich_safe(row.vm)}[/]"
        )
        tree = Tree(head)
        tree.add(rich_safe(row.explanation))
        tree.add(f"[dim]seen in {len(seen)} snapshot(s), {row.moments} moment(s): {rich_safe(', '.join(seen))}[/]")
        if isinstance(row.fleet_note, str):
            tree.add(f"[dim]{rich_safe(row.fleet_note)}[/]")
        if chains:
            steps = json.loads(row.chain or "[]")
            if len(steps) > 1:
                branch = tree.add("[dim]evidence chain[/]")
                for step in steps[1:]:
                    tables = sorted({f"{lk['table']}#{lk['row']}" for lk in step.get("links", [])})
                    branch.add(
                        f"{rich_safe(step['via'])} → {rich_safe(step['label'])} [dim]{rich_safe(' '.join(tables))}[/]"
                    )
        console.print(tree, soft_wrap=False)  # a long step wraps under its branch, never cut off
