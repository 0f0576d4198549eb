"""Strings planted inside the guest (a file and a process named with ANSI escapes and
control characters) never reach a terminal, HTML or CSV raw."""

import csv
import io
import os
import subprocess
import sys

import pytest

from toolkit.case import Case
from toolkit.report.escape import html_safe, terminal_safe

pytestmark = pytest.mark.lab


def _snapscope(*args):
    # wide enough that no table cell is folded: the escaped names must appear whole
    env = {**os.environ, "COLUMNS": "1000"}
    return subprocess.run(
        [sys.executable, "-m", "toolkit.cli", *map(str, args)], capture_output=True, timeout=600, env=env
    )


def _shown(hostile: str, data: bytes, escape=terminal_safe):
    """The hostile string is in the output, in its escaped form (a test that cannot pass by omission)."""
    assert escape(hostile).encode() in data, f"{escape(hostile)!r} not in the output"


def _no_raw_controls(data: bytes):
    # ESC, BEL and the C1 CSI must not appear; newline, tab and CR are layout
    bad = [b for b in data if (b < 0x20 and b not in (0x0A, 0x09, 0x0D)) or b == 0x7F]
    assert not bad, f"raw control bytes in output: {sorted(set(bad))}"
    assert "\u009b".encode() not in data


def test_hostile_names_are_in_the_tables_raw(lab_case, ground_truth):
    case = Case.open(lab_case[0])
    hostile = ground_truth["hostile_name"]
    files = case.table("disk/files")
    assert hostile["file_path"] in set(files["path"]), "the planted file is in disk/files with its raw name"
    procs = case.table("memory/processes")
    assert hostile["process_comm"][:15] in set(procs["process"]), "the planted process name is kept raw"


@pytest.mark.parametrize(("table", "key"), [("disk/files", "file_path"), ("memory/processes", "process_comm")])
def test_terminal_output_is_escaped(lab_case, ground_truth, table, key):
    hostile = ground_truth["hostile_name"][key][:15] if key == "process_comm" else ground_truth["hostile_name"][key]
    result = _snapscope("table", lab_case[0], table, "--limit", "100000")
    assert result.returncode == 0, result.stderr
    _no_raw_controls(result.stdout)
    _shown(hostile, result.stdout)
    csv_out = _snapscope("table", lab_case[0], table, "--format", "csv")
    _no_raw_controls(csv_out.stdout)
    _shown(hostile, csv_out.stdout)
    for row in csv.reader(io.StringIO(csv_out.stdout.decode())):
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@")), cell


def test_findings_and_timeline_are_escaped(lab_case, ground_truth):
    hostile = ground_truth["hostile_name"]["file_path"]
    for args in (
        ("findings", lab_case[0]),
        ("timeline", lab_case[0], "--limit", "100000", "--format", "csv"),
        ("sql", lab_case[0], "SELECT path FROM disk_files"),
    ):
        result = _snapscope(*args)
        assert result.returncode == 0, result.stderr
        _no_raw_controls(result.stdout)
        if args[0] != "findings":  # the hostile file is no finding; it is a file and has timestamps
            _shown(hostile, result.stdout)


def test_html_is_escaped(lab_case, tmp_path, ground_truth):
    out = tmp_path / "r.html"
    assert _snapscope("report", lab_case[0], "--format", "html", "--out", out).returncode == 0
    data = out.read_bytes()
    _no_raw_controls(data)
    _shown(ground_truth["hostile_name"]["file_path"], data, html_safe)  # its timeline rows are in the report
