"""``snapscope inspect``: identify evidence by content."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from toolkit.cli.common import FOLLOW_RECORDED_HELP, console
from toolkit.report.escape import rich_safe


def _facts_lines(facts: dict) -> list[str]:
    """One short line per fact; long values (an embedded domain XML, block lists) are
    summarised here and shown whole by --json."""
    parts = []
    for key, value in facts.items():
        if isinstance(value, list):
            short = json.dumps(value, default=str)
            value = short if len(short) <= 100 else f"[{len(value)} items: see --json]"
        elif isinstance(value, dict):
            short = json.dumps(value, default=str)
            value = (
                short if len(short) <= 100 else f"{{{', '.join(list(value)[:6])}{', ...' if len(value) > 6 else ''}}}"
            )
        elif isinstance(value, str) and len(value) > 100:
            value = f"<{len(value)} characters: see --json>"
        parts.append(f"{key}={value}")
    return parts


def inspect(
    paths: list[Path] = typer.Argument(..., help="Evidence files, directories or libvirt domain XMLs."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
    search_path: list[Path] = typer.Option([], "--search-path", help="Where to look for disks a domain XML names."),
    follow_recorded_paths: bool = typer.Option(False, "--follow-recorded-paths", help=FOLLOW_RECORDED_HELP),
):
    """Identify every piece of evidence by its content and show its key facts.

    Given a directory or a domain XML, also shows the snapshots discovered.

    Example: snapscope inspect /evidence/web01/memory.elf /evidence/web01/disk.qcow2 --json
    """
    from toolkit.evidence import discover, identify

    items, snapshots = [], []
    for path in paths:
        if path.is_dir() or _looks_like_xml(path):
            found = discover([path], search_paths=search_path, follow_recorded=follow_recorded_paths)
            snapshots.extend(found)
            for snap in found:
                items.extend(snap["evidence"])
        else:
            items.append(identify(path))
    seen, unique = set(), []
    for item in items:
        if item["path"] not in seen:
            seen.add(item["path"])
            unique.append(item)
    if as_json:
        typer.echo(json.dumps({"evidence": unique, "snapshots": snapshots}, indent=2, default=str))
        return
    table = Table(title="evidence", show_lines=True)
    table.add_column("path", overflow="fold", ratio=2)
    table.add_column("format")
    table.add_column("size", justify="right")
    table.add_column("facts", overflow="fold", ratio=3)
    for item in unique:
        lines = _facts_lines(item.get("facts", {}))
        lines += [f"problem: {p}" for p in item.get("problems") or []]
        # each line escaped on its own: guest strings never carry a raw newline or escape
        facts = "\n".join(rich_safe(line) for line in lines)
        table.add_row(rich_safe(item["path"]), rich_safe(item["format"]), f"{item.get('size', 0):,}", facts)
    console.print(table)
    for snap in snapshots:
        memory = snap.get("memory") or {}
        console.print(
            f"snapshot [bold]{rich_safe(snap['id'])}[/]: memory={rich_safe(memory.get('path'))} "
            f"disks={len(snap.get('disks') or [])} pcaps={len(snap.get('pcaps') or [])}"
        )
        for warning in snap.get("warnings") or []:
            console.print(f"  [yellow]warning[/]: {rich_safe(warning)}")
        for skipped in snap.get("skipped") or []:
            console.print(f"  skipped {rich_safe(skipped['path'])}: {rich_safe(skipped['reason'])}")


def _looks_like_xml(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(64).lstrip().startswith(b"<")
    except OSError:
        return False
