"""``snapscope findings``, ``snapscope timeline`` and ``snapscope report``."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import console, fail
from toolkit.report.escape import rich_safe

REPORT_FORMATS = ("html", "json", "csv", "parquet", "timesketch", "stix", "misp")
PASSWORD_ENV = "TIMESKETCH_PASSWORD"


def _vm_findings(case):
    """The case's findings once per VM; a case from before the VM view is told how to get one."""
    if "vm/findings" not in case.tables() and case.snapshots:
        fail(f"{case.path}: no VM view yet (a case from an older snapscope): run `snapscope correlate {case.path}`")
    return case.table("vm/findings")


def findings(
    case_dir: Path = typer.Argument(..., help="The case directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the findings as JSON."),
    no_chain: bool = typer.Option(False, "--no-chain", help="Do not print the evidence chain under each finding."),
):
    """Say what happened on each VM of a case, then every finding once per VM: by severity,
    with the snapshots it was seen in and the chain of evidence behind it.

    Example: snapscope findings cases/web01
    """
    from toolkit.case import Case
    from toolkit.report.story import incident_summary
    from toolkit.report.tabular import to_json_text
    from toolkit.report.terminal import render_findings, render_incident_summary

    case = Case.open(case_dir)
    df = _vm_findings(case)
    if as_json:
        typer.echo(to_json_text(df))
        return
    render_incident_summary(console, incident_summary(case))
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
    fmt: str = typer.Option("html", "--format", help="html, json, csv, parquet, timesketch, stix or misp."),
    out: Path = typer.Option(..., "--out", help="Output file."),
    timesketch_url: str | None = typer.Option(
        None, "--timesketch-url", help=f"With --format timesketch: also upload to this server ({PASSWORD_ENV})."
    ),
    timesketch_user: str | None = typer.Option(None, "--timesketch-user", help="Timesketch user name."),
    sketch: int | None = typer.Option(None, "--sketch", help="Add to this sketch id (default: a new sketch)."),
):
    """Render a case as a report file: the HTML report (incident summary first), or its
    findings, once per VM, as JSON, CSV or Parquet, or its timeline for Timesketch.

    stix: a STIX 2.1 bundle of the indicators the medium-or-worse findings implicate; misp: the same
    as a MISP event; timesketch: the timeline as JSON lines, uploaded when --timesketch-url is given
    (password from the TIMESKETCH_PASSWORD environment variable).

    Example: snapscope report cases/web01 --format stix --out web01.stix.json
    """
    import os

    from toolkit.case import Case, atomic_write_bytes
    from toolkit.case.store import refuse_output_over_case
    from toolkit.report.tabular import write_frame

    if fmt not in REPORT_FORMATS:
        fail(f"--format must be one of {', '.join(REPORT_FORMATS)}")
    if timesketch_url and fmt != "timesketch":
        fail("--timesketch-url goes with --format timesketch")
    if timesketch_url and not (timesketch_user and os.environ.get(PASSWORD_ENV)):
        fail(f"--timesketch-url needs --timesketch-user and the password in ${PASSWORD_ENV}")
    case = Case.open(case_dir)
    refuse_output_over_case(case.path, out)  # a report never replaces evidence or the case's records
    if fmt == "html":
        from toolkit.report.html import render_html

        atomic_write_bytes(out, render_html(case).encode())
    elif fmt == "timesketch":
        from toolkit.report.timesketch import timesketch_lines, upload_timeline

        lines = list(timesketch_lines(case.timeline))
        atomic_write_bytes(out, "".join(line + "\n" for line in lines).encode())
        if timesketch_url:
            name = case.path.resolve().name
            sent = upload_timeline(
                lines, timesketch_url, timesketch_user, os.environ[PASSWORD_ENV], timeline_name=name, sketch_id=sketch
            )
            console.print(f"uploaded {sent['events']} events to sketch {sent['sketch_id']} as {rich_safe(repr(name))}")
    elif fmt == "stix":
        from toolkit.report.stix import stix_bundle_json

        atomic_write_bytes(out, stix_bundle_json(case).encode())
    elif fmt == "misp":
        from toolkit.report.misp import misp_event_json

        atomic_write_bytes(out, misp_event_json(case).encode())
    else:
        write_frame(_vm_findings(case), out, fmt)
    console.print(f"wrote {rich_safe(out)}")


def correlate(case_dir: Path = typer.Argument(..., help="The case directory.")):
    """Re-run correlation (findings, timeline) over a case's stored tables, e.g. after a rule change.

    Reads tables only, never evidence.

    Example: snapscope correlate cases/web01
    """
    from toolkit.pipeline import recorrelate

    for sid, n in recorrelate(case_dir).items():
        console.print(f"{rich_safe(sid)}: {n} findings")
    console.print(f"findings once per VM: snapscope findings {rich_safe(case_dir)}")
