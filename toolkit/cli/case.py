"""``snapscope case``: look after a case directory."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import console, fail
from toolkit.report.escape import rich_safe

app = typer.Typer(
    help="Check and describe a case directory.\n\nExample: snapscope case verify cases/web01", no_args_is_help=True
)


@app.command()
def verify(case_dir: Path = typer.Argument(..., help="The case directory.")):
    """Verify the custody log's hash chain and that evidence hashes did not change.

    Example: snapscope case verify cases/web01
    """
    from toolkit.case import custody, load_manifest
    from toolkit.case.adopt import verify_adopted

    load_manifest(case_dir)
    problems = custody.verify(case_dir) + verify_adopted(case_dir)
    events = custody.read_events(case_dir) if not problems else []
    before = {e["path"]: e["sha256"] for e in events if e["action"] == "evidence.hash.before"}
    after = {e["path"]: e["sha256"] for e in events if e["action"] == "evidence.hash.after"}
    for path, digest in after.items():
        if before.get(path) not in (None, digest):
            problems.append(f"{path}: evidence hash changed during analysis")
    if problems:
        for problem in problems:
            console.print(f"[red]custody:[/] {rich_safe(problem)}")
        fail(f"{case_dir}: custody log does not verify ({len(problems)} problem(s))")
    console.print(f"custody log intact: {len(events)} events, {len(after)} evidence files unchanged")


@app.command()
def info(case_dir: Path = typer.Argument(..., help="The case directory.")):
    """Show the case's snapshots, tables and runs.

    Example: snapscope case info cases/web01
    """
    from toolkit.case import Case

    case = Case.open(case_dir)
    for sid, snap in case.snapshots.items():
        console.print(f"[bold]{rich_safe(sid)}[/] {rich_safe(snap.get('name'))}")
        for name, rows in sorted((snap.get("tables") or {}).items()):
            console.print(f"  {name}: {rows} rows")
    for acq in (case.manifest.get("acquisitions") or {}).values():
        who = acq.get("who") or {}
        console.print(
            f"acquired {rich_safe(acq.get('started'))} on {rich_safe(who.get('host'))} "
            f"by {rich_safe(who.get('user'))}: {rich_safe(acq.get('status'))} ({rich_safe(acq['dir'])})"
        )
        for name, dom in (acq.get("domains") or {}).items():
            pause = (dom.get("pause") or {}).get("seconds")
            console.print(
                f"  {rich_safe(name)}: {rich_safe(dom.get('mode'))}, guest paused {pause} s; "
                f"{rich_safe(dom.get('consistency'))}"
            )
    console.print(f"runs: {len(case.manifest.get('runs', []))}")
