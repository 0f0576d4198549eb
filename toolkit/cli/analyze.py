"""``snapscope analyze`` and ``snapscope demo``."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer

from toolkit.cli.common import FOLLOW_RECORDED_HELP, console, progress_bar
from toolkit.report.escape import rich_safe


def _print_summary(summary: dict) -> None:
    console.print(f"case: [bold]{rich_safe(summary['case'])}[/]")
    for snap in summary["snapshots"]:
        console.print(f"snapshot [bold]{rich_safe(snap['id'])}[/] ({rich_safe(snap['name'])})")
        for warning in snap.get("warnings") or []:
            console.print(f"  [yellow]warning[/]: {rich_safe(warning)}")
        for name, rows in sorted(snap["tables"].items()):
            console.print(f"  {name:<28} {rows:>7} rows")
    console.print(
        "evidence unchanged (sha256 before == after): "
        + ("[green]yes[/]" if summary.get("evidence_unchanged") else "[red]NO[/]")
    )


def analyze(
    paths: list[Path] = typer.Argument(..., help="Evidence files, snapshot directories or libvirt domain XMLs."),
    case: Path = typer.Option(..., "--case", help="Case directory to create or add to."),
    profile: str | None = typer.Option(None, "--profile", help="Analysis profile name or file (see profiles/)."),
    search_path: list[Path] = typer.Option(
        [], "--search-path", help="Where to look for disks/backing files named by absolute host paths."
    ),
    symbols: list[Path] = typer.Option(
        [],
        "--symbols",
        help="ISF symbol files or directories (Linux ISFs, Windows symbol packs); used before any automatic build.",
    ),
    follow_recorded_paths: bool = typer.Option(False, "--follow-recorded-paths", help=FOLLOW_RECORDED_HELP),
):
    """Analyse VM snapshots into a case: discover, hash, run the engines, store tables.

    Example: snapscope analyze /evidence/web01/ --case cases/web01 --profile linux-triage
    """
    from toolkit.pipeline import analyze as run_analysis

    with progress_bar() as progress:
        summary = run_analysis(
            paths,
            case,
            profile=profile,
            search_paths=search_path,
            symbols=symbols,
            follow_recorded_paths=follow_recorded_paths,
            progress=progress,
        )
    _print_summary(summary)


def demo(
    case: Path = typer.Option(
        Path("snapscope-demo-case"), "--case", help="Where to write the demo case (replaced if it is a case)."
    ),
    rebuild: bool = typer.Option(False, "--rebuild", help="Rebuild the lab guest even if a cached build exists."),
):
    """Build (or reuse) the lab VM snapshot with its known intrusion and analyse it.

    The lab boots a small Linux guest under QEMU, plants an implant, and takes
    memory, disk and network snapshots; see fixtures/README.md.

    Example: snapscope demo --case /tmp/demo-case
    """
    from toolkit.case import is_case
    from toolkit.lab import build_lab, demo_evidence
    from toolkit.pipeline import analyze as run_analysis

    with progress_bar() as progress:
        lab_dir = build_lab(progress=progress, force=rebuild)
    console.print(f"lab snapshot: {rich_safe(lab_dir)}")
    if is_case(case):
        shutil.rmtree(case)
    with progress_bar() as progress:
        summary = run_analysis(demo_evidence(lab_dir), case, progress=progress)
    _print_summary(summary)
