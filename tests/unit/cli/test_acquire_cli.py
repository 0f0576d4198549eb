"""`snapscope acquire` and `audit --live` refuse what cannot work with one line and exit 2, before libvirt
is asked anything (flags that do not go together, an output that holds evidence already)."""

import subprocess
import sys

import pytest

SNAPSCOPE = [sys.executable, "-m", "toolkit.cli"]


def _fails_cleanly(args, needle, cwd=None):
    proc = subprocess.run([*SNAPSCOPE, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert needle in lines[0], proc.stderr


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--live", "--memory", "elf"], "--live saves memory as a libvirt save image"),
        (["--live", "--disk", "copy"], "--disk copy copies disks while the guest is paused"),
        (["--disk", "none", "--merge"], "--merge commits the external overlay back"),
        (["--memory", "vmss"], "--memory 'vmss': use one of migration, elf"),
    ],
)
def test_flags_that_do_not_go_together(flags, needle, tmp_path):
    _fails_cleanly(["acquire", "web01", "--out", tmp_path / "out", *flags], needle)
    assert not (tmp_path / "out").exists()


def test_an_output_that_holds_evidence_is_never_written_over(tmp_path):
    (tmp_path / "memory.elf").write_bytes(b"\x7fELF earlier evidence")
    _fails_cleanly(["acquire", "web01", "--out", tmp_path], "exists and is not an empty directory")
    assert [p.name for p in tmp_path.iterdir()] == ["memory.elf"]


def test_audit_needs_sources_or_a_live_host(tmp_path):
    _fails_cleanly(["audit", "--case", tmp_path / "case"], "give SOURCES to audit, or --live URI")
    assert not (tmp_path / "case").exists()
