"""snapscope as a user installs it: a wheel, a fresh virtualenv outside the checkout.

The shipped rules and profiles must travel inside the package: the installed
``snapscope analyze`` on the lab's ELF dump finds its default profile and
YARA rules and matches the lab's beacon marker with them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parents[2]


def _run(cmd, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=1800, **kw)
    assert proc.returncode == 0, f"{cmd}: {proc.stderr[-3000:]}"
    return proc


def test_wheel_outside_the_checkout_finds_its_profile_and_rules(lab, tmp_path):
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, REPO])
    wheel = next(wheels.glob("snapscope-*.whl"))
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv])
    _run([venv / "bin" / "python", "-m", "pip", "install", "-q", wheel])
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = _run(
        [
            venv / "bin" / "python",
            "-c",
            "import toolkit, toolkit.shipped as s; print(toolkit.__file__); print(s.PROFILES)",
        ],
        cwd=outside,
        env=env,
    ).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where), where  # the installed copy, not the checkout

    case = tmp_path / "case"
    _run([venv / "bin" / "snapscope", "analyze", lab / "qemu" / "memory.elf", "--case", case], cwd=outside, env=env)
    manifest = json.loads((case / "case.json").read_text())
    assert [run["profile"] for run in manifest["runs"]] == ["linux-triage"]
    rules = pd.concat(pd.read_parquet(p) for p in (case / "tables" / "yara" / "rules").glob("*.parquet"))
    shipped = sorted(p.name for p in (REPO / "rules" / "yara").glob("*.yar"))
    assert sorted(Path(p).name for p in rules["path"].unique()) == shipped
    assert all(Path(p).is_relative_to(venv) for p in rules["path"]), "rules read from the checkout"
    matches = pd.concat(pd.read_parquet(p) for p in (case / "tables" / "yara" / "matches").glob("*.parquet"))
    assert "SnapscopeLab_Beacon_Marker" in set(matches["rule"])
