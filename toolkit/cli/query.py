"""``snapscope table`` and ``snapscope sql``: read a case's tables."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from toolkit.cli.common import console, err_console, fail
from toolkit.report.escape import rich_safe
from toolkit.report.tabular import records, to_csv_text, to_json_text

FORMATS = ("table", "csv", "json")


def print_frame(df, fmt: str, limit: int | None = None) -> None:
    if fmt == "csv":
        typer.echo(to_csv_text(df), nl=False)
    elif fmt == "json":
        typer.echo(to_json_text(df))
    else:
        shown = df if limit is None else df.head(limit)
        table = Table(show_lines=False)
        for col in shown.columns:
            table.add_column(rich_safe(col))
        for row in records(shown):
            table.add_row(*[rich_safe("" if v is None else v) for v in row.values()])
        console.print(table)
        if limit is not None and len(df) > limit:
            console.print(f"... {len(df) - limit} more rows (use --format csv or --limit)")


def table(
    case_dir: Path = typer.Argument(..., help="The case directory."),
    name: str | None = typer.Argument(None, help="Table name, e.g. memory/processes. Omit to list tables."),
    fmt: str = typer.Option("table", "--format", help="table, csv or json."),
    snapshot: str | None = typer.Option(None, "--snapshot", help="Only this snapshot id."),
    limit: int = typer.Option(50, "--limit", help="Rows shown in table format."),
):
    """Print one table of a case (or list the tables).

    Example: snapscope table cases/web01 memory/processes --format csv
    """
    from toolkit.case import Case

    if fmt not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}")
    case = Case.open(case_dir)
    if name is None:
        for table_name in case.tables():
            console.print(rich_safe(table_name))
        return
    try:
        df = case.table(name, snapshot=snapshot)
    except KeyError as exc:
        fail(str(exc.args[0]))
    print_frame(df, fmt, limit)


def sql(
    case_dir: Path = typer.Argument(..., help="The case directory."),
    query: str = typer.Argument(..., help="DuckDB SQL; tables are views named with '_' for '/'."),
    fmt: str = typer.Option("table", "--format", help="table, csv or json."),
    allow_files: bool = typer.Option(
        False, "--allow-files", help="Let the query read and write files (COPY ... TO, read_csv, ATTACH)."
    ),
):
    """Run SQL (DuckDB) over a case's Parquet tables: read-only, no file access unless --allow-files.

    Example: snapscope sql cases/web01 "SELECT pid, process FROM memory_processes WHERE exe_deleted"
    """
    import duckdb

    from toolkit.case import Case
    from toolkit.case.query import sql_views

    if fmt not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}")
    case = Case.open(case_dir)
    for name in sql_views(case.path)[1]:
        err_console.print(f"[dim]note:[/] tables/{rich_safe(name)} is not a declared table; it is not a SQL view")
    try:
        df = case.sql(query, allow_files=allow_files)
    except duckdb.Error as exc:
        fail(f"SQL error: {str(exc).splitlines()[0]}")
    print_frame(df, fmt, None)
