"""``snapscope memory``: look at and convert guest memory artefacts."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import typer

from toolkit.cli.common import FOLLOW_RECORDED_HELP, console, fail, progress_bar
from toolkit.report.escape import rich_safe

app = typer.Typer(
    help="Guest memory artefacts (ELF, kdump, migration streams, libvirt saves, "
    "qcow2 snapshots) as one physical address space.\n\n"
    "Example: snapscope memory info /var/lib/libvirt/qemu/save/web01.save",
    no_args_is_help=True,
)


@app.command()
def info(
    path: Path = typer.Argument(..., help="A memory artefact."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
):
    """Detect the format by content and print what the file says about itself.

    Example: snapscope memory info /evidence/web01/disk.qcow2 --json
    """
    from toolkit.errors import MemoryFormatError
    from toolkit.memory import detect, probe

    try:
        entry = detect(path)
        facts = probe(path) or {"format": "raw", "note": "no known header: read as a raw physical image"}
    except MemoryFormatError as exc:
        fail(str(exc))
    facts.setdefault("format", entry["name"])
    facts.pop("domain_xml", None) if not as_json else None
    if as_json:
        typer.echo(json.dumps(facts, indent=2, default=str))
        return
    from rich.table import Table

    table = Table(title=rich_safe(str(path)), show_header=False)
    for key, value in facts.items():
        text = json.dumps(value, default=str) if isinstance(value, (list, dict)) else str(value)
        table.add_row(rich_safe(key), rich_safe(text if len(text) < 400 else text[:397] + "..."))
    console.print(table)


@app.command()
def convert(
    src: Path = typer.Argument(..., help="Memory artefact to convert."),
    dst: Path = typer.Argument(..., help="ELF core to write."),
    snapshot: str | None = typer.Option(None, "--snapshot", help="qcow2 internal snapshot name or id."),
    case: Path | None = typer.Option(
        None, "--case", help="Case directory: derived files go to its derived/ and hashes to its custody log."
    ),
    search_path: list[Path] = typer.Option([], "--search-path", help="Directories to look for qcow2 backing files in."),
    follow_recorded_paths: bool = typer.Option(False, "--follow-recorded-paths", help=FOLLOW_RECORDED_HELP),
):
    """Convert any supported memory artefact into an ELF core Volatility opens.

    Example: snapscope memory convert web01.save web01.elf --case cases/web01
    """
    from toolkit.errors import MemoryFormatError
    from toolkit.memory import open_image
    from toolkit.memory.convert import to_elf
    from toolkit.references import evidence_roots, reference_policy

    with contextlib.ExitStack() as held:
        derived, protect = None, ()
        if case is not None:
            from toolkit.case import init_case
            from toolkit.case.lock import case_lock
            from toolkit.case.store import refuse_output_over_case

            manifest = init_case(case)  # a new or empty directory becomes a case; anything else is refused
            held.enter_context(case_lock(case))  # no run changes the case while this adds to it
            refuse_output_over_case(case, dst, allowed="derived")  # never over case.json, custody or a table
            derived = case / "derived"
            protect = tuple(manifest.get("evidence") or ())  # the case's evidence is never a destination
        try:
            references = reference_policy(
                roots=evidence_roots([src]), search_paths=search_path, follow_recorded=follow_recorded_paths
            )
            img = open_image(src, snapshot=snapshot, derived_dir=derived, references=references)
        except MemoryFormatError as exc:
            fail(str(exc))
        with img, progress_bar() as progress:
            try:
                result = to_elf(
                    src,
                    dst,
                    image=img,
                    protect=protect,
                    progress=lambda done, total: progress("converting", done, total),
                )
            except MemoryFormatError as exc:
                fail(str(exc))
        if case is not None:
            # Custody before any output: nothing printed can stop the line that records the conversion.
            from toolkit.case.custody import append_event
            from toolkit.case.derived import record_derived

            record_derived(case, reason="memory convert")  # decompressed stream spills and indexes
            append_event(
                case,
                action="memory.convert",
                path=str(src),
                sha256=result["src_sha256"],
                detail={
                    "output": str(dst),
                    "output_sha256": result["dst_sha256"],
                    "format": result["format"],
                    "snapshot": snapshot,
                    "runs": result["runs"],
                    "bytes": result["bytes"],
                    "diagnostics": len(result["diagnostics"]),
                },
            )
    for d in result["diagnostics"]:
        console.print(
            f"[yellow]{rich_safe(d.get('severity'))}[/]: {rich_safe(d.get('what'))} ({rich_safe(d.get('where'))}): "
            f"{rich_safe(d.get('why'))}"
        )
    console.print(
        f"{rich_safe(src)} ({rich_safe(result['format'])}) -> {rich_safe(dst)}: {result['runs']} ranges, "
        f"{result['bytes'] / 2**20:.1f} MiB of guest memory; sha256 {result['dst_sha256']}"
    )
