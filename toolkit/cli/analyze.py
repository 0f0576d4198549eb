"""``snapscope analyze`` and ``snapscope demo``."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import FOLLOW_RECORDED_HELP, console, print_custody_repairs, progress_bar
from toolkit.report.escape import rich_safe

RULES_HELP = "YARA rule file or directory, added to the profile's rules (repeatable)."
EVERY_HELP = "Analyse every memory artefact, also those holding the same RAM as another (same moment)."
# why several snapshots are one VM (toolkit/evidence/vms.py)
BASIS = {
    "libvirt domain": "its libvirt domain",
    "disk chain": "its disk",
    "same RAM": "identical RAM",
    "one snapshot": "itself",
}


def _print_snapshots(summary: dict) -> None:
    """Per VM: each snapshot and what became of it (analysed, reused, or the same moment as another)."""
    print_custody_repairs(summary)
    by_id = {s["id"]: s for s in summary["snapshots"]}
    console.print(f"case: [bold]{rich_safe(summary['case'])}[/]")
    for vm_id, vm in sorted(summary.get("vms", {}).items()):
        mine = [by_id[sid] for sid in vm["snapshots"] if sid in by_id]
        if not mine:
            continue
        named = rich_safe(vm["name"] + (f" [id {vm_id}]" if vm_id not in vm["name"] else ""))
        grouped = f", one VM by {BASIS[vm['basis']]}" if len(vm["snapshots"]) > 1 else ""
        console.print(f"VM [bold]{named}[/]: {len(vm['snapshots'])} snapshot(s){grouped}")
        for snap in mine:
            if snap["status"] == "same moment":
                proof = snap.get("proof") or {}
                how = (
                    f": {proof['pages_compared']} pages of RAM compared, {proof['pages_differing']} differ"
                    if "pages_compared" in proof
                    else ""
                )
                state = f"same moment as {rich_safe(snap['same_moment_as'])}{how} — not analysed again"
            else:
                tables = sum(1 for rows in snap["tables"].values() if rows)
                state = f"{snap['status']} ({tables} tables with rows)"
            console.print(f"  {rich_safe(snap['id'])}: {state}")
            for warning in snap.get("warnings") or []:
                console.print(f"    [yellow]warning[/]: {rich_safe(warning)}")
    console.print(
        "evidence unchanged (sha256 before == after): "
        + ("[green]yes[/]" if summary.get("evidence_unchanged") else "[red]NO[/]")
    )


def _print_incident(case_dir: Path) -> None:
    from toolkit.case import Case
    from toolkit.report.story import incident_summary
    from toolkit.report.terminal import render_incident_summary

    console.print("[bold]What happened[/]")
    render_incident_summary(console, incident_summary(Case.open(case_dir)))


def analyze(
    paths: list[Path] = typer.Argument(..., help="Evidence files, snapshot directories or libvirt domain XMLs."),
    case: Path = typer.Option(..., "--case", help="Case directory to create or add to."),
    profile: str | None = typer.Option(None, "--profile", help="Analysis profile: a shipped name or a TOML file."),
    rules: list[Path] = typer.Option([], "--rules", help=RULES_HELP),
    search_path: list[Path] = typer.Option(
        [], "--search-path", help="Where to look for disks/backing files named by absolute host paths."
    ),
    symbols: list[Path] = typer.Option(
        [],
        "--symbols",
        help="ISF symbol files or directories (Linux ISFs, Windows symbol packs); used before any automatic build.",
    ),
    analyse_every_artefact: bool = typer.Option(False, "--analyse-every-artefact", help=EVERY_HELP),
    follow_recorded_paths: bool = typer.Option(False, "--follow-recorded-paths", help=FOLLOW_RECORDED_HELP),
):
    """Analyse VM snapshots into a case: discover, hash, run the engines, store tables,
    then say what happened on each VM.

    Snapshots are grouped into VMs; memory artefacts holding the same RAM (one paused
    moment saved as an ELF dump, a kdump, a savevm...) are analysed once.

    Example: snapscope analyze /evidence/web01/ --case cases/web01 --rules my-rules/ --profile linux-triage
    """
    from toolkit.pipeline import analyze as run_analysis

    with progress_bar() as progress:
        summary = run_analysis(
            paths,
            case,
            profile=profile,
            search_paths=search_path,
            symbols=symbols,
            rule_paths=rules,
            analyse_every_artefact=analyse_every_artefact,
            follow_recorded_paths=follow_recorded_paths,
            progress=progress,
        )
    _print_snapshots(summary)
    _print_incident(case)
    console.print(f"all findings: snapscope findings {rich_safe(case)}")


def demo(
    case: Path = typer.Option(
        Path("snapscope-demo-case"),
        "--case",
        help="Where to write the demo case (replaced only if it is a demo case made by snapscope).",
    ),
    rebuild: bool = typer.Option(False, "--rebuild", help="Rebuild the lab guest even if a cached build exists."),
):
    """Build (or reuse) the lab VM snapshot with its known intrusion, analyse it, and tell what happened.

    The lab boots a small Linux guest under QEMU, plants an implant, and takes
    memory, disk and network snapshots; see fixtures/README.md. The HTML report
    is written to the case's reports/ directory.

    Example: snapscope demo --case /tmp/demo-case
    """
    from toolkit.case import Case, atomic_write_bytes
    from toolkit.lab import build_lab, demo_evidence, prepare_demo_case
    from toolkit.pipeline import analyze as run_analysis
    from toolkit.report.html import render_html

    prepare_demo_case(case, check_only=True)  # refuse a user's case before minutes of lab build
    with progress_bar() as progress:
        lab_dir = build_lab(progress=progress, force=rebuild)
    console.print(f"lab snapshot: {rich_safe(lab_dir)}")
    prepare_demo_case(case)
    with progress_bar() as progress:
        summary = run_analysis(demo_evidence(lab_dir), case, progress=progress)
    _print_snapshots(summary)
    report = Path(case) / "reports" / "report.html"
    atomic_write_bytes(report, render_html(Case.open(case)).encode())
    _print_incident(case)
    console.print(f"HTML report: [bold]{rich_safe(report.resolve())}[/]")
    console.print(f"all findings: snapscope findings {rich_safe(case)}")
