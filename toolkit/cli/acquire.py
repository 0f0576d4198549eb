"""``snapscope acquire``: memory, disks and traffic of running libvirt domains, at one moment."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from toolkit.cli.common import console, fail, progress_bar
from toolkit.report.escape import rich_safe


def print_acquisition(summary: dict, out: Path) -> None:
    """The acquisition's outcome per domain: status, guest pause, files, the disk chain left behind."""
    table = Table(title=f"acquired into {rich_safe(out)}")
    for col in ("domain", "status", "pause (s)", "mode", "memory", "files", "disk afterwards"):
        table.add_column(col)
    for name, dom in summary["domains"].items():
        pause = (dom.get("pause") or {}).get("seconds")
        before, now = dom.get("chain_before") or {}, dom.get("chain_after") or {}
        changed = [t for t in now if now[t] != before.get(t)]
        after = "as before" if not changed else ", ".join(f"{t} on {Path(now[t][0]).name}" for t in changed)
        table.add_row(
            rich_safe(name),
            rich_safe(dom.get("status")),
            "" if pause is None else f"{pause:.3f}",
            rich_safe(dom.get("mode")),
            rich_safe(dom.get("memory_format")),
            str(len(dom.get("files") or [])),
            rich_safe(after) if dom.get("status") != "not started" else "",
        )
    console.print(table)
    for name, dom in summary["domains"].items():
        if dom.get("consistency"):
            console.print(f"[bold]{rich_safe(name)}[/]: {rich_safe(dom['consistency'])}")
        source = (dom.get("pause") or {}).get("source")
        if source:
            console.print(f"  pause measured from {rich_safe(source)}")
        tops = {chain[0] for chain in (dom.get("chain_after") or {}).values() if chain}
        for overlay in dom.get("overlays") or []:
            if overlay["path"] in tops:
                console.print(
                    f"  {rich_safe(overlay['target'])} runs on {rich_safe(overlay['path'])}; "
                    f"{rich_safe(overlay['base'])} is read-only evidence until "
                    f"'virsh blockcommit {rich_safe(name)} {rich_safe(overlay['target'])} --active --shallow --pivot'"
                )
        for diag in dom.get("diagnostics") or []:
            what = f"{rich_safe(diag['what'])} ({rich_safe(diag['where'])})"
            console.print(f"  [yellow]{rich_safe(diag['severity'])}[/] {what}: {rich_safe(diag['why'])}")
    console.print(f"custody log: {rich_safe(out / 'custody.jsonl')}; status: {rich_safe(summary['status'])}")


def acquire(
    domains: list[str] = typer.Argument(None, help="Domain names (or use --all)."),
    out: Path = typer.Option(..., "--out", help="New (or empty) directory for the evidence and its custody log."),
    connect: str = typer.Option("qemu:///system", "--connect", "-c", help="libvirt URI."),
    all_running: bool = typer.Option(False, "--all", help="Every running domain on the host."),
    memory: str | None = typer.Option(
        None,
        "--memory",
        help="Memory format with --pause: migration (default: the shortest pause), elf, kdump-zlib, kdump-lzo, "
        "kdump-snappy. --live always writes a libvirt save image.",
    ),
    disk: str = typer.Option(
        "external",
        "--disk",
        help="external: an overlay at the moment, the frozen image copied afterwards; copy: copied while "
        "paused; none: memory only.",
    ),
    merge: bool = typer.Option(False, "--merge", help="Commit the external overlay back when done (blockcommit)."),
    pcap: int = typer.Option(0, "--pcap", min=0, help="Record each network backend for SECONDS before the moment."),
    live: bool = typer.Option(
        False, "--live/--pause", help="Save memory while the guest runs (short final stop) or pause for the moment."
    ),
    io_slots: int = typer.Option(1, "--io-slots", min=1, help="Domains acquired at once (host I/O streams)."),
):
    """Acquire running libvirt domains: memory, disks and traffic at one moment, hashed as written.

    Each domain is paused once: memory dumped, disks switched to an external overlay, then resumed.

    With --live, the guest stops only for the last pages of a live migration.

    The frozen disk images are copied with the guest running; the guest's pause is measured and reported.

    Ctrl-C resumes the guest and marks the output incomplete. The output is ordinary evidence.

    Example: snapscope acquire web01 --out /evidence/web01-live --pcap 10 --merge
    """
    from toolkit.acquire import AcquireOptions
    from toolkit.acquire import acquire as run_acquire

    options = AcquireOptions(
        uri=connect, memory=memory, disk=disk, merge=merge, pcap_seconds=pcap, live=live, io_slots=io_slots
    )
    try:
        with progress_bar() as progress:
            summary = run_acquire(list(domains or []), out, options, all_running=all_running, progress=progress)
    except KeyboardInterrupt:
        fail(f"interrupted: domains resumed and restored; the partial output in {out} is marked incomplete", 130)
    print_acquisition(summary, out)
    if summary["status"] != "complete":
        fail(f"acquisition incomplete: {summary.get('reason')}")
