"""``snapscope audit``: every VM on a host, scanned once from outside."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import typer
from rich.table import Table

from toolkit.cli.acquire import print_acquisition
from toolkit.cli.common import FOLLOW_RECORDED_HELP, console, fail, print_custody_repairs, progress_bar
from toolkit.report.escape import rich_safe
from toolkit.schemas import SEVERITIES


def audit(
    sources: list[Path] = typer.Argument(
        None, help="Snapshot directories (one VM per subdirectory), domain XMLs, or a copied libvirt tree."
    ),
    case: Path = typer.Option(..., "--case", help="Case directory (re-running resumes it)."),
    live: str | None = typer.Option(
        None, "--live", help="A libvirt URI: acquire every running domain there first, then audit it."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="With --live: where the acquired evidence goes (default: <case>-evidence beside the case)."
    ),
    merge: bool = typer.Option(False, "--merge", help="With --live: commit each domain's overlay back when done."),
    pcap: int = typer.Option(0, "--pcap", min=0, help="With --live: record each domain's traffic for SECONDS."),
    profile: str | None = typer.Option(None, "--profile", help="Analysis profile: a shipped name or a TOML file."),
    rules: list[Path] = typer.Option(
        [], "--rules", help="YARA rule file or directory, added to the profile's rules (repeatable)."
    ),
    jobs: int = typer.Option(2, "--jobs", min=1, help="Snapshots analysed at once."),
    executor: str = typer.Option("local", "--executor", help="local, or dask://HOST:PORT for a Dask cluster."),
    io_slots: int = typer.Option(1, "--io-slots", min=1, help="Evidence files read at once while hashing."),
    previous: Path | None = typer.Option(None, "--previous", help="An earlier audit's case: report what changed."),
    search_path: list[Path] = typer.Option(
        [], "--search-path", help="Where to look for disks named by absolute host paths."
    ),
    symbols: list[Path] = typer.Option(
        [], "--symbols", help="ISF symbol files or directories, used before any automatic build."
    ),
    follow_recorded_paths: bool = typer.Option(False, "--follow-recorded-paths", help=FOLLOW_RECORDED_HELP),
):
    """Audit every VM snapshot found in SOURCES into one case, with a fleet summary.

    Killed mid-run, the same command resumes: finished snapshots are not redone.
    The fleet is stacked: what runs, listens, persists or is loaded on few of the
    VMs is listed (table audit/stacking), and findings on such rare entities rise.

    With --live URI, every running domain there is acquired first (see: snapscope acquire --help).

    Example: snapscope audit /srv/host1-libvirt/ --case fleet --jobs 2 --rules my-rules/ --previous fleet-last-week

    Example: snapscope audit --live qemu:///system --case fleet --merge
    """
    from toolkit.audit import audit as run_audit
    from toolkit.audit import audit_live

    if bool(sources) == bool(live):
        fail("give SOURCES to audit, or --live URI to acquire a host's running domains and audit them")
    choices = {
        "jobs": jobs,
        "executor": executor,
        "io_slots": io_slots,
        "previous": previous,
        "profile": profile,
        "search_paths": search_path,
        "symbols": symbols,
        "rule_paths": rules,
        "follow_recorded_paths": follow_recorded_paths,
    }
    try:
        with progress_bar() as progress:
            if live:
                out = out or case.absolute().with_name(f"{case.absolute().name}-evidence")
                acquire = {"merge": merge, "pcap_seconds": pcap, "io_slots": io_slots}
                summary = audit_live(live, case, out, acquire_options=acquire, progress=progress, **choices)
            else:
                summary = run_audit(sources, case, progress=progress, **choices)
    except KeyboardInterrupt:
        fail("interrupted: domains resumed and restored; any partial acquisition is marked incomplete", 130)
    if live:
        print_acquisition(summary["acquisition"], out)
    print_custody_repairs(summary)
    columns = ("vm", "status", *SEVERITIES[:-1], "reason")  # info counts stay in the table, not on screen
    table = Table(title="fleet")
    for col in columns:
        table.add_column(col)

    def cell(value) -> str:
        # table cells come from pandas: a missing count or reason is NA, not None
        return "" if value is None or pd.isna(value) else rich_safe(str(value))

    for row in summary["fleet"].itertuples(index=False):
        table.add_row(*[cell(getattr(row, col)) for col in columns])
    console.print(table)
    _print_rare(summary["stacking"])
    changes = summary.get("changes")
    if changes is not None:
        counts = changes["change"].value_counts() if len(changes) else {}
        console.print(
            f"since the previous audit: {int(counts.get('new finding', 0))} new, "
            f"{int(counts.get('resolved finding', 0))} resolved findings, "
            f"{sum(int(counts.get(k, 0)) for k in ('file added', 'file removed', 'file modified'))} file changes"
        )


def _print_rare(stacking, limit: int = 15) -> None:
    """The rarest items of the fleet: what few VMs have."""
    rare = stacking[stacking["rare"].fillna(False)] if len(stacking) else stacking
    if not len(rare):
        console.print("fleet stacking: nothing rare (or fewer than 3 VMs to compare)")
        return
    table = Table(title=f"rare in the fleet ({len(rare)} items; all in table audit/stacking)")
    for col in ("category", "item", "on VMs", "which"):
        table.add_column(col)
    for row in rare.head(limit).itertuples(index=False):
        which = ", ".join(json.loads(row.vm_ids or "[]"))
        table.add_row(
            rich_safe(row.category), rich_safe(row.detail), f"{row.vms} of {row.fleet_size}", rich_safe(which)
        )
    console.print(table)
