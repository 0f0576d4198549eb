"""Shared CLI plumbing: the console, progress bars, error exits."""
from __future__ import annotations

import contextlib

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2):
    """Print one clear line and exit non-zero (no traceback)."""
    from toolkit.report.escape import rich_safe

    err_console.print(f"[bold red]error:[/] {rich_safe(message)}")
    raise typer.Exit(code)


@contextlib.contextmanager
def progress_bar():
    """Yield a ``progress(description, completed, total)`` callback backed by rich.

    One task per description, so hashing, conversion and each engine get
    their own line. Quiet when stderr is not a terminal.
    """
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                   console=err_console, transient=True, disable=not err_console.is_terminal)
    tasks: dict[str, int] = {}

    def update(description, completed=None, total=None):
        if description not in tasks:
            tasks[description] = bar.add_task(description, total=total)
        bar.update(tasks[description], completed=completed, total=total)

    with bar:
        yield update
