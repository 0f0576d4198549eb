"""``snapscope findings``, ``snapscope timeline`` and ``snapscope report``."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import console, fail
from toolkit.report.escape import rich_safe

REPORT_FORMATS = ("html", "json", "csv", "parquet", "timesketch")


def findings(
    case_dir: Path = typer.Argument(..., help="The case directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the findings as JSON."),
    no_chain: bool = typer.Option(False, "--no-chain", help="Do not print the evidence chain under each finding."),
):
    """Show a case's findings by severity, each with the chain of evidence behind it.

    Example: snapscope findings cases/web01
    """
    from toolkit.case import Case
    from toolkit.report.tabular import to_json_text
    from toolkit.report.terminal import render_findings

    df = Case.open(case_dir).findings
    if as_json:
        typer.echo(to_json_text(df))
    else:
        render_findings(console, df, chains=not no_chain)


def timeline(
    case_dir: Path = typer.Argument(..., help="The case directory."),
    fmt: str = typer.Option("table", "--format", help="table, csv or json."),
    limit: int = typer.Option(100, "--limit", help="Rows shown in table format."),
):
    """Show the merged UTC timeline of memory, disk, network and snapshot events.

    Example: snapscope timeline cases/web01 --format csv > timeline.csv
    """
    from toolkit.case import Case
    from toolkit.cli.query import print_frame

    print_frame(Case.open(case_dir).timeline, fmt, limit)


def report(
    case_dir: Path = typer.Argument(..., help="The case directory."),
    fmt: str = typer.Option("html", "--format", help="html, json, csv, parquet or timesketch."),
    out: Path = typer.Option(..., "--out", help="Output file."),
):
    """Render a case's findings (and timeline) as a report file.

    Example: snapscope report cases/web01 --format html --out web01.html
    """
    from toolkit.case import Case, atomic_write_bytes
    from toolkit.report.tabular import write_frame

    if fmt not in REPORT_FORMATS:
        fail(f"--format must be one of {', '.join(REPORT_FORMATS)}")
    case = Case.open(case_dir)
    if fmt == "html":
        from toolkit.report.html import render_html

        atomic_write_bytes(out, render_html(case).encode())
    elif fmt == "timesketch":
        from toolkit.report.timesketch import timesketch_lines

        atomic_write_bytes(out, "".join(line + "\n" for line in timesketch_lines(case.timeline)).encode())
    else:
        write_frame(case.findings, out, fmt)
    console.print(f"wrote {rich_safe(out)}")


def correlate(case_dir: Path = typer.Argument(..., help="The case directory.")):
    """Re-run correlation (findings, timeline) over a case's stored tables, e.g. after a rule change.

    Reads tables only, never evidence.

    Example: snapscope correlate cases/web01
    """
    from toolkit.pipeline import recorrelate

    for sid, n in recorrelate(case_dir).items():
        console.print(f"{rich_safe(sid)}: {n} findings")
