"""``snapscope sigma``: run Sigma rules over a case's tables; matches become findings."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import console
from toolkit.report.escape import rich_safe

SHOWN_PROBLEMS = 20


def sigma(
    case_dir: Path = typer.Argument(..., help="The case directory."),
    rules: list[Path] | None = typer.Argument(
        None, help="Sigma rule files or directories (searched for *.yml, *.yaml). Default: the shipped rules."
    ),
):
    """Run Sigma rules over a case: process_creation over memory processes and shell history,
    file_event over files commands wrote, network_connection over sockets and flows, dns over the
    capture's DNS, Linux auth/syslog/service rules over disk logs. Matches are stored as
    sigma/matches and become findings (rule id sigma:<id>) in the evidence graph.

    Example: snapscope sigma cases/web01 ~/sigma/rules/linux rules/sigma
    """
    from toolkit.pipeline import run_sigma
    from toolkit.shipped import SIGMA_RULES

    result = run_sigma(case_dir, rules or [SIGMA_RULES])
    console.print(f"{result['rules']} Sigma rules")
    for sid, n in result["matches"].items():
        console.print(f"{rich_safe(sid)}: {n} matches, {result['findings'].get(sid, 0)} findings")
    problems = [p for p in result["skipped"] if p["severity"] != "info"]
    for p in problems[:SHOWN_PROBLEMS]:
        console.print(f"[yellow]skipped[/] {rich_safe(p['what'])}: {rich_safe(p['why'])}")
    notes = [p for p in result["skipped"] if p["severity"] == "info"]
    for p in notes[:SHOWN_PROBLEMS]:
        console.print(f"[dim]{rich_safe(p['where'])}: {rich_safe(p['why'])}[/]")
    hidden = len(problems) + len(notes) - min(len(problems), SHOWN_PROBLEMS) - min(len(notes), SHOWN_PROBLEMS)
    if hidden:
        console.print(f"... {hidden} more in: snapscope table {rich_safe(case_dir)} diagnostics")
