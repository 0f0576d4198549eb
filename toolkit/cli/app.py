"""The ``snapscope`` command: a thin shell over the library.

Each command group lives in its own module and is registered here. Expected
failures (bad evidence, unusable case) print one line and exit 2; nothing
prints a traceback unless SNAPSCOPE_DEBUG=1.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from toolkit.allocator import reuse_large_buffers

app = typer.Typer(
    name="snapscope",
    help="Offline forensics for libvirt/QEMU VM snapshots: memory, disk and network, correlated.\n\n"
    "Example: snapscope analyze /evidence/web01/ --case cases/web01",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version_callback(value: bool):
    if value:
        from toolkit.versions import tool_versions

        for name, version in tool_versions().items():
            typer.echo(f"{name} {version or 'not installed'}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_version_callback,
        is_eager=True,
        help="Print snapscope's version and its engines' versions.",
    ),
):
    """Offline forensics for libvirt/QEMU VM snapshots."""


# (module, attribute, how to register): plain commands and sub-apps.
COMMANDS = [
    ("toolkit.cli.evidence", "inspect", "command"),
    ("toolkit.cli.analyze", "analyze", "command"),
    ("toolkit.cli.analyze", "demo", "command"),
    ("toolkit.cli.query", "table", "command"),
    ("toolkit.cli.query", "sql", "command"),
    ("toolkit.cli.report", "findings", "command"),
    ("toolkit.cli.report", "timeline", "command"),
    ("toolkit.cli.report", "report", "command"),
    ("toolkit.cli.report", "correlate", "command"),
    ("toolkit.cli.sigma", "sigma", "command"),
    ("toolkit.cli.audit", "audit", "command"),
    ("toolkit.cli.acquire", "acquire", "command"),
]
GROUPS = [
    ("toolkit.cli.case", "app", "case"),
    ("toolkit.cli.memory", "app", "memory"),
    ("toolkit.cli.symbols", "app", "symbols"),
]
EXTRA_COMMANDS = [("toolkit.cli.disk", "diff_command", "diff")]


def _register():
    for module_name, attr, _ in COMMANDS:
        app.command()(getattr(importlib.import_module(module_name), attr))
    for module_name, attr, name in GROUPS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # group not built yet
        app.add_typer(getattr(module, attr), name=name)
    for module_name, attr, name in EXTRA_COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        app.command(name=name)(getattr(module, attr))


_register()


def leave(code: int) -> None:
    """End the process with ``code`` once output is flushed and Python's exit handlers have run.

    Why not a plain ``sys.exit``: Arrow's (pyarrow's) worker threads race with the C++ static
    destructors that run after Python has finished, and now and then the process aborts with
    "terminate called without an active exception" (SIGABRT, exit -6) after every byte of a
    correct answer was written (apache/arrow#34314, #39862). Python's own exit handlers (temporary
    directories, logging, multiprocessing) still run here; only the C++ teardown is skipped.
    """
    import atexit
    import logging

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # the reader left (| head) or the stream is closed
            pass
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):
            pass
    os._exit(code)


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)  # sys.exit("message") prints the message and exits 1
    return 1


def run() -> int:
    """Run the command line in ``sys.argv`` and return its exit code (tests run many in one process)."""
    try:
        app()
    except SystemExit as exc:
        return _exit_code(exc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("SNAPSCOPE_DEBUG"):
            raise
        from toolkit.cli.common import error_line
        from toolkit.errors import SnapscopeError

        if isinstance(exc, SnapscopeError):
            print(error_line(exc), file=sys.stderr)
            return 2
        print(error_line(f"internal error ({type(exc).__name__}): {exc}"), file=sys.stderr)
        print("This is a snapscope bug; re-run with SNAPSCOPE_DEBUG=1 for the traceback.", file=sys.stderr)
        return 1
    return 0


def main():
    reuse_large_buffers()  # every pass over a dump reads it in large windows (toolkit.allocator)
    leave(run())
