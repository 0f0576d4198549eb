"""The CLI on every crafted file of issue 13: ``inspect`` and ``analyze`` finish
within 60 s and 512 MiB peak RSS, or stop with exit 2 and one line naming the file.

All commands run in one child interpreter through the CLI's own ``run`` (one
Python and Volatility start-up instead of twenty); its peak RSS, a high-water
mark over every command, bounds each one. Each command's time, exit code and
stderr are checked on their own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import hostile_memory as H
from tests.helpers.bounded import ADDRESS_SPACE, ROOT

CHILD = r"""
import contextlib, io, json, sys, time
sys.path.insert(0, ROOT)
from toolkit.cli.app import run
out = []
for name, argv in COMMANDS:
    err = io.StringIO()
    sys.argv = ["snapscope", *argv]
    t0 = time.monotonic()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = run()
    out.append({"name": name, "code": code, "seconds": time.monotonic() - t0, "stderr": err.getvalue()})
# VmHWM, not ru_maxrss: ru_maxrss keeps the parent's (pytest's) resident size across fork and exec
with open("/proc/self/status") as fh:
    peak_kb = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
print("@@" + json.dumps({"runs": out, "peak_mb": peak_kb / 1024}))
"""


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    files = {
        "qcow2 zstd cluster of 1 GiB": H.qcow2_zstd_bomb(d / "bomb.qcow2")["path"],
        "kdump zlib page of 130 MiB": H.kdump_zlib_bomb(d / "bomb.kdump")["path"],
        "ELF with 18000 PT_NOTEs": H.elf_repeated_notes(d / "notes.elf")["path"],
        "ELF with 200000 PT_LOADs": H.elf_many_loads(d / "loads.elf")["path"],
        "stream declaring 1 TiB": H.qevm_huge_ram(d / "huge.qevm")["path"],
        "flattened kdump declaring 1 TiB": H.kdump_flat_huge(d / "huge.kdump")["path"],
        "flattened kdump of overlapping records": H.flattened_tiny_records(d / "tiny.kdump", overlapping=True)["path"],
        "zstd save resending one page": H.zstd_save_resending_one_page(d / "resend.save")["path"],
        "qcow2 with one L2 table under 40960 L1 entries": H.qcow2_shared_l2(d / "shared.qcow2")["path"],
    }
    commands = []
    for i, (name, path) in enumerate(files.items()):
        commands.append((f"inspect {name}", ["inspect", str(path)]))
        commands.append((f"analyze {name}", ["analyze", str(path), "--case", str(d / f"case{i}")]))
    proc = subprocess.run(
        [sys.executable, "-c", f"ROOT = {str(ROOT)!r}\nCOMMANDS = {commands!r}\n" + CHILD],
        capture_output=True,
        text=True,
        timeout=1200,
        env=dict(os.environ, COLUMNS="40", SNAPSCOPE_CACHE=str(d / "cache")),
        preexec_fn=lambda: __import__("resource").setrlimit(
            __import__("resource").RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE)
        ),
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("@@")), None)
    assert line, proc.stderr[-3000:]
    result = json.loads(line[2:])
    return {"files": files, "runs": {r["name"]: r for r in result["runs"]}, "peak_mb": result["peak_mb"]}


def test_peak_rss_of_every_command_below_512_mib(hostile):
    assert hostile["peak_mb"] < 512, hostile["peak_mb"]


@pytest.mark.parametrize("command", ["inspect", "analyze"])
@pytest.mark.parametrize(
    "name",
    [
        "qcow2 zstd cluster of 1 GiB",
        "kdump zlib page of 130 MiB",
        "ELF with 18000 PT_NOTEs",
        "ELF with 200000 PT_LOADs",
        "stream declaring 1 TiB",
        "flattened kdump declaring 1 TiB",
        "flattened kdump of overlapping records",
        "zstd save resending one page",
        "qcow2 with one L2 table under 40960 L1 entries",
    ],
)
def test_finishes_in_time_or_stops_with_one_line(hostile, command, name):
    run = hostile["runs"][f"{command} {name}"]
    assert run["seconds"] < 60, run
    assert run["code"] in (0, 2), run
    if run["code"] == 2:
        lines = run["stderr"].strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), run
        assert hostile["files"][name].name in lines[0], run
    else:
        assert "Traceback" not in run["stderr"], run
