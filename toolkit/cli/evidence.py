"""``snapscope inspect``: identify evidence by content."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

import typer
from rich.table import Table

from toolkit.cli.common import console
from toolkit.report.escape import rich_safe


def _facts_text(facts: dict) -> str:
    parts = []
    for key, value in facts.items():
        if isinstance(value, (list, dict)):
            value = json.dumps(value, default=str)
            if len(value) > 160:
                value = value[:157] + "..."
        parts.append(f"{key}={value}")
    return "\n".join(parts)


def inspect(
    paths: List[Path] = typer.Argument(..., help="Evidence files, directories or libvirt domain XMLs."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
    search_path: List[Path] = typer.Option([], "--search-path", help="Where to look for disks a domain XML names."),
):
    """Identify every piece of evidence by its content and show its key facts.

    Given a directory or a domain XML, also shows the snapshots discovered.

    Example: snapscope inspect /evidence/web01/memory.elf /evidence/web01/disk.qcow2 --json
    """
    from toolkit.evidence import discover, identify

    items, snapshots = [], []
    for path in paths:
        if path.is_dir() or _looks_like_xml(path):
            found = discover([path], search_paths=search_path)
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
    for col in ("path", "format", "size", "facts"):
        table.add_column(col)
    for item in unique:
        problems = item.get("problems") or []
        facts = _facts_text(item.get("facts", {})) + ("\nproblems: " + "; ".join(problems) if problems else "")
        table.add_row(rich_safe(item["path"]), rich_safe(item["format"]), f"{item.get('size', 0):,}", rich_safe(facts))
    console.print(table)
    for snap in snapshots:
        memory = snap.get("memory") or {}
        console.print(f"snapshot [bold]{rich_safe(snap['id'])}[/]: memory={rich_safe(memory.get('path'))} "
                      f"disks={len(snap.get('disks') or [])} pcaps={len(snap.get('pcaps') or [])}")


def _looks_like_xml(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(64).lstrip().startswith(b"<")
    except OSError:
        return False
