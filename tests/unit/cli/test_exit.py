"""How the ``snapscope`` process ends: flushed output, Python's exit handlers run, the exit code kept.

``leave`` ends with ``os._exit`` so that Arrow's C++ teardown cannot abort a finished command
(apache/arrow#34314); these tests prove nothing Python-side is lost on the way.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers.bounded import ROOT

CHILD = r"""
import atexit, sys, tempfile
sys.path.insert(0, ROOT)
from toolkit.cli.app import leave
atexit.register(lambda: open(MARK, "w").write("handler ran"))
kept = tempfile.TemporaryDirectory()  # its finalizer is an exit handler too
open(MARK + ".dir", "w").write(kept.name)
sys.stdout.write("x" * 200_000)  # more than any pipe or stdio buffer holds
sys.stderr.write("last words")
leave(CODE)
"""


def _child(tmp_path, code):
    mark = tmp_path / "mark"
    done = subprocess.run(
        [sys.executable, "-c", f"ROOT = {str(ROOT)!r}\nMARK = {str(mark)!r}\nCODE = {code}\n" + CHILD],
        capture_output=True,
        timeout=120,
    )
    return done, mark


def test_leave_flushes_runs_exit_handlers_and_keeps_the_code(tmp_path):
    done, mark = _child(tmp_path, 3)
    assert done.returncode == 3
    assert done.stdout == b"x" * 200_000
    assert done.stderr == b"last words"
    assert mark.read_text() == "handler ran"
    assert not Path((tmp_path / "mark.dir").read_text()).exists()  # the temporary directory was removed


def test_leave_with_zero(tmp_path):
    done, mark = _child(tmp_path, 0)
    assert done.returncode == 0 and mark.exists()


def test_the_command_line_keeps_its_exit_codes(tmp_path):
    def snapscope(*argv):
        return subprocess.run([sys.executable, "-m", "toolkit.cli", *argv], capture_output=True, cwd=ROOT, timeout=300)

    assert snapscope("--help").returncode == 0
    usage = snapscope("table")  # a missing argument: click's usage error
    assert usage.returncode == 2 and b"Missing argument" in usage.stderr
    refused = snapscope("table", str(tmp_path / "no-such-case"))
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
