"""``snapscope diff``: files added, removed and modified between two states of one VM disk;
with ``--memory``, what appeared or went between two analysed snapshots of a case."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import FOLLOW_RECORDED_HELP, console, fail, progress_bar
from toolkit.report.escape import rich_safe


def _spec(arg: str, snapshot: str | None) -> dict:
    """``PATH`` or ``PATH@SNAPSHOT`` (qcow2 internal snapshot name or id) -> disk dict."""
    path = Path(arg)
    if snapshot is None and not path.exists() and "@" in arg:
        head, _, tail = arg.rpartition("@")
        if Path(head).exists():
            path, snapshot = Path(head), tail
    return {"path": path, "snapshot": snapshot}


def diff_command(
    a: str = typer.Argument(
        ...,
        help="Older state: a disk image, or IMAGE@SNAPSHOT for a qcow2 internal snapshot (--memory: a snapshot id).",
    ),
    b: str = typer.Argument(
        ..., help="Newer state: a disk image (an overlay of A), or IMAGE@SNAPSHOT (--memory: an id)."
    ),
    case: Path = typer.Option(..., "--case", help="Case directory; the diff is stored as table disk/diff."),
    memory: bool = typer.Option(
        False,
        "--memory",
        help="A and B are snapshot ids of the case: compare their processes, sockets, modules, kernel checks, "
        "persistence entries and files (table memory/diff).",
    ),
    snapshot_a: str | None = typer.Option(None, "--snapshot-a", help="Internal snapshot (name or id) of A."),
    snapshot_b: str | None = typer.Option(None, "--snapshot-b", help="Internal snapshot (name or id) of B."),
    search_path: list[Path] = typer.Option(
        [], "--search-path", help="Where to look for backing files named by absolute host paths."
    ),
    allow_missing_backing: bool = typer.Option(
        False, "--allow-missing-backing", help="Read a missing backing file as zeros (recorded as a diagnostic)."
    ),
    follow_recorded_paths: bool = typer.Option(False, "--follow-recorded-paths", help=FOLLOW_RECORDED_HELP),
    full_walk: bool = typer.Option(
        False,
        "--full-walk",
        help="Walk and hash both trees in full instead of reading only what the overlay allocated.",
    ),
    max_size: int | None = typer.Option(None, "--max-size", help="Do not hash files larger than this many bytes."),
    limit: int = typer.Option(40, "--limit", help="Rows to print (all are stored)."),
):
    """Diff two states of one VM disk (base vs overlay, internal snapshot vs active, two external snapshots),
    or, with --memory, two analysed snapshots of a case (what appeared or went between them).

    Example: snapscope diff base.qcow2 disk.qcow2 --case cases/web01 --search-path /mnt/images

    Example: snapscope diff --memory web01-monday web01-tuesday --case cases/web01
    """
    from toolkit.case import init_case, write_table
    from toolkit.engines.disk.diff import diff_tables
    from toolkit.errors import SnapscopeError
    from toolkit.references import evidence_roots, reference_policy

    if memory:
        from toolkit.vms import diff_snapshots

        try:
            _print_memory(diff_snapshots(case, a, b), limit)
        except SnapscopeError as e:
            fail(str(e))
        return

    spec_a, spec_b = _spec(a, snapshot_a), _spec(b, snapshot_b)
    # the two disks given are the evidence: what they name is read beside them or in --search-path
    references = reference_policy(
        roots=evidence_roots([spec_a["path"], spec_b["path"]]),
        search_paths=search_path,
        follow_recorded=follow_recorded_paths,
    )
    try:
        init_case(case)
        with progress_bar() as progress:
            tables = diff_tables(
                spec_a,
                spec_b,
                references=references,
                allow_missing_backing=allow_missing_backing,
                full_walk=full_walk,
                max_size=max_size,
                progress=progress,
                snapshot_id=_diff_id(spec_a, spec_b),
            )
    except SnapscopeError as e:
        fail(str(e))
    sid = _diff_id(spec_a, spec_b)
    for name, df in tables.items():
        write_table(case, name, sid, df)
    _print(tables, limit)


def _diff_id(spec_a: dict, spec_b: dict) -> str:
    def part(spec):
        return Path(spec["path"]).name + (f"@{spec['snapshot']}" if spec["snapshot"] else "")

    return "diff_" + "".join(c if c.isalnum() or c in "._@-" else "_" for c in f"{part(spec_a)}__{part(spec_b)}")


def _print(tables: dict, limit: int = 40) -> None:
    import pandas as pd
    from rich.table import Table

    df = tables["disk/diff"]
    counts = df["change"].value_counts().to_dict()
    method = df["method"].iloc[0] if len(df) else "-"
    console.print(
        f"disk diff ({rich_safe(method)}): "
        + ", ".join(f"{counts.get(k, 0)} {k}" for k in ("added", "removed", "modified"))
    )
    table = Table("change", "path", "what", "sha256 a", "sha256 b")

    def text(value, width=None):
        return "" if value is None or pd.isna(value) else rich_safe(str(value)[:width] if width else value)

    for row in df.head(limit).itertuples():
        table.add_row(
            text(row.change), text(row.path), text(row.changed), text(row.sha256_a, 16), text(row.sha256_b, 16)
        )
    console.print(table)
    for diag in tables["diagnostics"].itertuples():
        console.print(f"[dim]{rich_safe(diag.severity)}: {rich_safe(diag.what)}: {rich_safe(diag.why)}[/]")


def _print_memory(df, limit: int = 40) -> None:
    from rich.table import Table

    counts = df.groupby(["kind", "change"]).size().to_dict() if len(df) else {}
    console.print(
        "snapshot diff: "
        + (", ".join(f"{n} {change} {kind}" for (kind, change), n in sorted(counts.items())) or "no changes")
    )
    table = Table("change", "kind", "what", "between")
    for row in df.head(limit).itertuples():
        table.add_row(
            rich_safe(row.change),
            rich_safe(row.kind),
            rich_safe(row.description),
            rich_safe(f"{row.snapshot_a} -> {row.snapshot_b}"),
        )
    console.print(table)
    if len(df) > limit:
        console.print(f"... {len(df) - limit} more rows (table memory/diff)")
