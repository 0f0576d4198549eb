"""Shared CLI plumbing: the consoles, progress bars, error exits.

Every error is one line, ``error: <message>`` on stderr, never wrapped:
a script that greps it or a log that records it must not depend on the
width of a terminal that may not be there. Messages pass through
``terminal_safe`` (they may quote guest strings).
"""

from __future__ import annotations

import contextlib
import sys

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from toolkit.errors import one_line
from toolkit.report.escape import rich_safe, terminal_safe

# soft_wrap: a long line stays one line (the terminal, if any, folds it); tables still fit the width.
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


# --follow-recorded-paths, the same on every command that follows names found inside evidence
FOLLOW_RECORDED_HELP = (
    "Read a file that evidence names (backing or data file, disk, extent, memory file) where it is "
    "recorded even outside the evidence directories and --search-path; each one is hashed, logged "
    "and reported as a warning. Without it such a file is refused."
)


def error_line(message) -> str:
    """``error: <message>`` on one line, control characters made visible."""
    return f"error: {terminal_safe(one_line(message))}"


def fail(message: str, code: int = 2):
    """Print one clear line on stderr and exit non-zero (no traceback)."""
    print(error_line(message), file=sys.stderr, flush=True)
    raise typer.Exit(code)


def print_custody_repairs(summary: dict) -> None:
    """The custody repairs a run made (a torn line set aside, missing lines logged), one warning each."""
    for note in summary.get("custody_repairs") or []:
        err_console.print(f"[yellow]warning:[/] {rich_safe(note)}")


@contextlib.contextmanager
def progress_bar():
    """Yield a ``progress(description, completed, total)`` callback backed by rich.

    One task per description, so hashing, conversion and each engine get
    their own line. Quiet when stderr is not a terminal.
    """
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )
    tasks: dict[str, int] = {}

    def update(description, completed=None, total=None):
        if description not in tasks:
            # descriptions may name evidence files: escaped like every other value on a terminal
            tasks[description] = bar.add_task(rich_safe(description), total=total)
        bar.update(tasks[description], completed=completed, total=total)

    with bar:
        yield update
