"""Terminal summary: findings by severity, then the chain behind each (rich)."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from toolkit.report.escape import rich_safe
from toolkit.schemas import SEVERITIES

SEVERITY_STYLE = {"critical": "bold white on red", "high": "bold red", "medium": "yellow", "low": "cyan", "info": "dim"}


def render_findings(console: Console, findings, *, chains: bool = True, min_rank: int = 0) -> None:
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
        head = (
            f"[{style}]{rich_safe(str(row.severity).upper())}[/] [bold]{rich_safe(row.title)}[/] "
            f"({rich_safe(row.rule_id)}{', ' + rich_safe(row.attack_id) if isinstance(row.attack_id, str) else ''}) "
            f"[dim]{rich_safe(row.snapshot_id)}[/]"
        )
        tree = Tree(head)
        tree.add(rich_safe(row.explanation))
        if chains:
            steps = json.loads(row.chain or "[]")
            if len(steps) > 1:
                branch = tree.add("[dim]evidence chain[/]")
                for step in steps[1:]:
                    tables = sorted({f"{lk['table']}#{lk['row']}" for lk in step.get("links", [])})
                    branch.add(
                        f"{rich_safe(step['via'])} → {rich_safe(step['label'])} [dim]{rich_safe(' '.join(tables))}[/]"
                    )
        console.print(tree)
