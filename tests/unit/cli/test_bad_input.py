"""Bad input: one clear line naming the file, exit code 2, no traceback, no case left behind."""

import os
import subprocess
import sys

import pytest

SNAPSCOPE = [sys.executable, "-m", "toolkit.cli"]


def run(*args, cwd=None):
    # a narrow "terminal" that is not one: an error line must not be folded to fit it
    env = {**os.environ, "COLUMNS": "40"}
    return subprocess.run([*SNAPSCOPE, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120, env=env)


def _assert_clean_failure(result, needle):
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # one line, whatever the width
    assert lines[0].startswith("error: ") and needle in lines[0], result.stderr


def _cases(tmp_path):
    # 200+ characters of path: longer than any console line
    tmp_path = tmp_path / ("a-long-directory-name-" * 9)
    tmp_path.mkdir()
    (tmp_path / "empty.bin").write_bytes(b"")
    (tmp_path / "random.bin").write_bytes(os.urandom(8192))
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "truncated.qcow2").write_bytes(b"QFI\xfb\x00\x00\x00\x03" + b"\x00" * 20)
    (tmp_path / "truncated.save").write_bytes(b"LibvirtQemudSave\x02\x00")
    (tmp_path / "truncated.elf").write_bytes(b"\x7fELF\x02\x01\x01" + b"\x00" * 9)
    (tmp_path / "domain.xml").write_text(
        "<domain type='qemu'><name>web01</name><uuid>1b4e28ba-2fa1-11d2-883f-0016d3cca427</uuid>"
        "<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        "<source file='/var/lib/libvirt/images/web01-missing.qcow2'/><target dev='vda'/></disk></devices></domain>"
    )
    return {
        "missing": (tmp_path / "nope.elf", "nope.elf"),
        "empty file": (tmp_path / "empty.bin", "empty.bin"),
        "random bytes": (tmp_path / "random.bin", "random.bin"),
        "empty dir": (tmp_path / "emptydir", "emptydir"),
        "truncated qcow2": (tmp_path / "truncated.qcow2", "truncated.qcow2"),
        "truncated save": (tmp_path / "truncated.save", "truncated.save"),
        "truncated elf": (tmp_path / "truncated.elf", "truncated.elf"),
        "xml with missing disk": (tmp_path / "domain.xml", "web01-missing.qcow2"),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "missing",
        "empty file",
        "random bytes",
        "empty dir",
        "truncated qcow2",
        "truncated save",
        "truncated elf",
        "xml with missing disk",
    ],
)
def test_inspect_and_analyze_refuse_cleanly(tmp_path, kind):
    path, needle = _cases(tmp_path)[kind]
    assert len(str(path)) >= 200
    _assert_clean_failure(run("inspect", path), needle)
    case = path.parent / "case"
    _assert_clean_failure(run("analyze", path, "--case", case), needle)
    assert not case.exists(), "a refused analysis must not leave a case directory"


def test_evidence_inside_case_is_refused(tmp_path):
    from toolkit.case import init_case

    case = tmp_path / "case"
    init_case(case)
    (case / "derived" / "x.pcap").write_bytes(bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000"))
    result = run("analyze", case / "derived" / "x.pcap", "--case", case)
    _assert_clean_failure(result, "inside the case directory")


@pytest.mark.parametrize(
    "args",
    [
        ("symbols", "build", "{long}/nope.elf"),
        ("memory", "info", "{long}/nope.elf"),
        ("case", "verify", "{long}"),
        ("table", "{long}", "memory/processes"),
        ("report", "{long}", "--format", "stix", "--out", "{long}/r"),
    ],
)
def test_every_command_keeps_its_error_on_one_line(tmp_path, args):
    long = tmp_path / ("a-long-directory-name-" * 9)
    result = run(*(a.format(long=long) for a in args))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
