"""Strings planted inside the guest (a file and a process named with ANSI escapes and control characters)
never reach a terminal, HTML, CSV or JSON raw, in any command's output.

The case is made by `snapscope demo` itself (the lab's main snapshot), so the demo command is swept too;
tests/unit/cli/test_output_sweep.py sweeps every other command on crafted inputs.
"""

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.case import Case
from toolkit.report.escape import csv_safe, html_safe, terminal_safe

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parents[2]


def _snapscope(*args):
    # wide enough that no table cell is folded: the escaped names must appear whole
    env = {**os.environ, "COLUMNS": "1000", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "toolkit.cli", *map(str, args)], capture_output=True, timeout=1800, env=env
    )


def _json_safe(value: str) -> str:
    return json.dumps(value)[1:-1]


def _shown(hostile: str, data: bytes, escape=terminal_safe):
    """The hostile string is in the output, in its escaped form (a test that cannot pass by omission)."""
    assert escape(hostile).encode() in data, f"{escape(hostile)!r} not in the output"


def _no_raw_controls(data: bytes):
    # ESC, BEL and the C1 CSI must not appear; newline, tab and CR are layout
    bad = [b for b in data if (b < 0x20 and b not in (0x0A, 0x09, 0x0D)) or b == 0x7F]
    assert not bad, f"raw control bytes in output: {sorted(set(bad))}"
    assert "\u009b".encode() not in data and b"Traceback" not in data


@pytest.fixture(scope="module")
def demo_case(lab, tmp_path_factory):
    """`snapscope demo` into a new directory: the lab's snapshot analysed by the command itself."""
    case_dir = tmp_path_factory.mktemp("demo") / "case"
    result = _snapscope("demo", "--case", case_dir)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]
    _no_raw_controls(result.stdout)
    _no_raw_controls(result.stderr)
    assert b"evidence unchanged (sha256 before == after): yes" in result.stdout
    return case_dir


def test_hostile_names_are_in_the_tables_raw(demo_case, ground_truth):
    case = Case.open(demo_case)
    hostile = ground_truth["hostile_name"]
    files = case.table("disk/files")
    assert hostile["file_path"] in set(files["path"]), "the planted file is in disk/files with its raw name"
    procs = case.table("memory/processes")
    assert hostile["process_comm"][:15] in set(procs["process"]), "the planted process name is kept raw"


@pytest.mark.parametrize(("table", "key"), [("disk/files", "file_path"), ("memory/processes", "process_comm")])
def test_table_output_is_escaped(demo_case, ground_truth, table, key):
    hostile = ground_truth["hostile_name"][key][:15] if key == "process_comm" else ground_truth["hostile_name"][key]
    result = _snapscope("table", demo_case, table, "--limit", "100000")
    assert result.returncode == 0, result.stderr
    _no_raw_controls(result.stdout)
    _shown(hostile, result.stdout)
    csv_out = _snapscope("table", demo_case, table, "--format", "csv")
    _no_raw_controls(csv_out.stdout)
    _shown(hostile, csv_out.stdout, csv_safe)
    for row in csv.reader(io.StringIO(csv_out.stdout.decode())):
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@")), cell
    json_out = _snapscope("table", demo_case, table, "--format", "json")
    _no_raw_controls(json_out.stdout)
    _shown(hostile, json_out.stdout, _json_safe)
    assert hostile in {row.get("path") or row.get("process") for row in json.loads(json_out.stdout)}


def test_findings_timeline_sql_and_case_commands_are_escaped(demo_case, ground_truth):
    hostile = ground_truth["hostile_name"]["file_path"]
    comm = ground_truth["hostile_name"]["process_comm"][:15]
    for args, escape, shown in (
        (("findings", demo_case), None, None),
        (("findings", demo_case, "--json"), None, None),
        (("timeline", demo_case, "--limit", "100000", "--format", "csv"), csv_safe, hostile),
        (("timeline", demo_case, "--limit", "100000", "--format", "json"), _json_safe, hostile),
        (("timeline", demo_case, "--limit", "100000"), terminal_safe, hostile),
        (("sql", demo_case, "SELECT path FROM disk_files"), terminal_safe, hostile),
        (("sql", demo_case, "SELECT process FROM memory_processes", "--format", "json"), _json_safe, comm),
        (("case", "info", demo_case), None, None),
        (("case", "verify", demo_case), None, None),
        (("correlate", demo_case), None, None),
    ):
        result = _snapscope(*args)
        assert result.returncode == 0, (args, result.stderr)
        _no_raw_controls(result.stdout)
        _no_raw_controls(result.stderr)
        if shown is not None:  # the hostile file is no finding; it is a file and has timestamps
            _shown(shown, result.stdout, escape)


@pytest.mark.parametrize(
    ("fmt", "escape"), [("html", html_safe), ("timesketch", _json_safe), ("csv", None), ("json", None)]
)
def test_reports_are_escaped(demo_case, tmp_path, ground_truth, fmt, escape):
    out = tmp_path / f"r.{fmt}"
    result = _snapscope("report", demo_case, "--format", fmt, "--out", out)
    assert result.returncode == 0, result.stderr
    data = out.read_bytes()
    _no_raw_controls(data)
    if escape is not None:  # the timeline holds the hostile file's rows; findings (csv, json) do not
        _shown(ground_truth["hostile_name"]["file_path"], data, escape)
