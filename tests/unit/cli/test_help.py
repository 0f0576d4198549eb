"""Every command and group has help text with an example (sqlite-utils style)."""

import typer.main
from typer.testing import CliRunner

from toolkit.cli.app import app


def _walk(command, path=()):
    yield path, command
    # typer vendors its own click: duck-type groups by their `commands` mapping
    for name, sub in (getattr(command, "commands", None) or {}).items():
        yield from _walk(sub, path + (name,))


def test_every_command_has_help_with_example():
    root = typer.main.get_command(app)
    runner = CliRunner()
    seen = 0
    for path, _command in _walk(root):
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Example" in result.output, f"{' '.join(path) or 'snapscope'} --help has no example"
        seen += 1
    assert seen >= 5


def test_version_lists_engines():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    for name in ("snapscope", "volatility3", "dissect.target", "yara-python", "pakunoda"):
        assert name in result.output
