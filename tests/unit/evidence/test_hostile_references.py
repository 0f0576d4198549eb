"""Evidence that names files outside itself (toolkit.references), on crafted files.

Each image or XML below names a file outside the evidence roots (the directory
given): a qcow2 external data file (relative ``../`` and absolute), a backing
file ``../../x``, a VMDK flat extent ``/etc/passwd``, a domain XML disk and a
snapshot XML memory file in another directory, symlinks to a host directory
and a host file. The outside
file is a real ext4 disk holding a unique marker. Without
``--follow-recorded-paths`` the run stops with exit 2 and one line and writes
no case (a symlink is skipped instead: the rest of the directory is still
evidence); the outside file appears in no evidence list, no custody line and
no table. With the flag it is read, hashed, logged in custody and named by a
warning diagnostic.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import disk_images as b
from tests.helpers import evidence_files as synth
from toolkit.audit import discover_fleet
from toolkit.case import Case, custody
from toolkit.errors import EvidenceError
from toolkit.evidence import discover
from toolkit.hashing import sha256_file
from toolkit.pipeline import analyze

MARK = "OUTSIDE-EVIDENCE-MARK-5c7e1d93"
SNAPSCOPE = [sys.executable, "-m", "toolkit.cli"]


@pytest.fixture(scope="module")
def disks(tmp_path_factory):
    """Two small ext4 disks: the marked one an attacker wants read, and the VM's own."""
    d = tmp_path_factory.mktemp("disks")
    marked = b.write_tree(d / "marked", {"etc/hostname": "outside\n", "root/marker.txt": MARK + "\n"})
    own = b.write_tree(d / "own", {"etc/hostname": "victim\n", "etc/motd": "hello\n"})
    return {"marked": b.make_ext4(marked, d / "marked.raw", 8), "own": b.make_ext4(own, d / "own.raw", 8)}


@pytest.fixture
def layout(tmp_path, disks):
    """tmp/evidence/vm is what the analyst names; tmp/host stands for the rest of their machine."""
    vm, host = tmp_path / "evidence" / "vm", tmp_path / "host"
    vm.mkdir(parents=True)
    host.mkdir()
    marked = host / "outside.raw"
    shutil.copyfile(disks["marked"], marked)
    return {"vm": vm, "host": host, "marked": marked, "own": disks["own"], "case": tmp_path / "case"}


def cli(*args):
    return subprocess.run([*SNAPSCOPE, *map(str, args)], capture_output=True, text=True, timeout=300)


def assert_refused(result, *needles):
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def assert_never_read(case_dir: Path, outside: Path):
    """The outside file is in no evidence list, no custody line, no chain; its marker in no table.
    (A skipped symlink's diagnostic may quote the link's own text, which names it.)"""
    outside = str(outside.resolve())
    case = Case.open(case_dir)
    assert outside not in case.manifest["evidence"]
    assert outside not in (case_dir / "custody.jsonl").read_text()
    for name in case.tables():
        text = case.table(name).astype(str).to_csv()
        assert MARK not in text, name
        if name in ("evidence", "disk/chain", "disk/files"):
            assert outside not in text, name


def assert_read_with_warning(case_dir: Path, outside: Path):
    """Followed on request: hashed in the manifest and in custody (before and after), warned about,
    and its contents analysed (the marker file is listed in disk/files)."""
    real, digest = str(outside.resolve()), sha256_file(outside)
    case = Case.open(case_dir)
    assert case.manifest["evidence"][real]["sha256"] == digest
    for phase in ("before", "after"):
        events = [e for e in custody.read_events(case_dir) if e["action"] == f"evidence.hash.{phase}"]
        assert (real, digest) in [(e["path"], e["sha256"]) for e in events]
    diags = case.table("diagnostics")
    warned = diags[(diags["severity"] == "warning") & (diags["what"] == "evidence outside the roots")]
    assert warned["why"].str.contains(real, regex=False).any(), diags[["severity", "what", "why"]]
    assert "/root/marker.txt" in set(case.table("disk/files")["path"])


# ------------------------------------------------------------------ qcow2 external data file


@pytest.mark.parametrize("style", ["relative", "absolute"])
def test_qcow2_external_data_file_outside_the_root(layout, style):
    vm, marked = layout["vm"], layout["marked"]
    if style == "relative":  # ../outside.raw from evidence/vm: a sibling of the evidence directory
        outside = vm.parent / "outside.raw"
        shutil.copyfile(marked, outside)
        recorded = "../outside.raw"
    else:  # an absolute host path, as /etc/hostname would be
        outside, recorded = marked, str(marked)
    b.qcow2_over_data_file(outside, vm / "disk.qcow2", recorded)

    assert_refused(cli("analyze", vm, "--case", layout["case"]), "external data file", recorded, "refused")
    assert not layout["case"].exists()

    analyze([vm], layout["case"], engine_names=["disk"], follow_recorded_paths=True)
    assert_read_with_warning(layout["case"], outside)
    [snap] = Case.open(layout["case"]).manifest["snapshots"].values()
    assert [d["role"] for d in snap["disks"]] == ["disk", "data-file"]


def test_qcow2_data_file_beside_the_image_is_evidence(layout):
    data = layout["vm"] / "disk.data"
    shutil.copyfile(layout["marked"], data)
    b.qcow2_over_data_file(data, layout["vm"] / "disk.qcow2", "disk.data")
    analyze([layout["vm"]], layout["case"], engine_names=["disk"])
    case = Case.open(layout["case"])
    real = str(data.resolve())
    # discovery followed it from the image (not as a disk of its own, though it holds a filesystem),
    # so it was hashed and logged like the image, and read through it
    [snap] = case.manifest["snapshots"].values()
    assert [(Path(d["path"]).name, d["role"]) for d in snap["disks"]] == [
        ("disk.qcow2", "disk"),
        ("disk.data", "data-file"),
    ]
    assert case.manifest["evidence"][real]["sha256"] == sha256_file(data)
    assert real in (layout["case"] / "custody.jsonl").read_text()
    assert "/root/marker.txt" in set(case.table("disk/files")["path"])
    assert not (case.table("diagnostics")["severity"] == "warning").any()


def test_qcow2_naming_a_host_file_as_data_file_is_refused_without_reading_it(layout):
    b.qcow2_over_data_file(layout["marked"], layout["vm"] / "disk.qcow2", "/etc/hostname")
    with pytest.raises(EvidenceError, match=r"external data file '/etc/hostname' resolves outside .*refused"):
        discover([layout["vm"]])


# ------------------------------------------------------------------ backing file


def test_backing_file_escaping_the_root(layout):
    vm = layout["vm"]
    base = vm.parent.parent / "x.qcow2"  # ../../x.qcow2 from evidence/vm
    b.to_qcow2(layout["marked"], base)
    b._run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", vm / "disk.qcow2")
    b.rebase(vm / "disk.qcow2", "../../x.qcow2")

    assert_refused(cli("analyze", vm, "--case", layout["case"]), "backing file '../../x.qcow2'", "refused")
    assert not layout["case"].exists()
    # --search-path names where such files may be: inside it, no flag is needed and nothing is warned
    [snap] = discover([vm], search_paths=[vm.parent.parent])
    assert [(Path(d["path"]).name, d["role"]) for d in snap["disks"]] == [
        ("disk.qcow2", "disk"),
        ("x.qcow2", "backing"),
    ]
    assert snap["warnings"] == []

    followed = cli("analyze", vm, "--case", layout["case"], "--follow-recorded-paths")
    assert followed.returncode == 0, followed.stderr
    assert f"warning: read {base}" in followed.stdout  # said on the terminal too, not only in the case
    assert_read_with_warning(layout["case"], base)


def test_backing_file_through_a_symlink_beside_the_image_is_checked_on_its_real_path(layout):
    vm = layout["vm"]
    b.to_qcow2(layout["marked"], layout["host"] / "base.qcow2")
    (vm / "base.qcow2").symlink_to(layout["host"] / "base.qcow2")  # beside by name, outside for real
    b._run("qemu-img", "create", "-q", "-f", "qcow2", "-b", vm / "base.qcow2", "-F", "qcow2", vm / "disk.qcow2")
    b.rebase(vm / "disk.qcow2", "/var/lib/libvirt/images/base.qcow2")
    with pytest.raises(EvidenceError, match=r"backing file '/var/lib/libvirt/images/base.qcow2' resolves outside"):
        discover([vm / "disk.qcow2"])


# ------------------------------------------------------------------ VMDK extents


def _vmdk(path: Path, extent: str, sectors: int) -> Path:
    return synth.write(
        path, synth.VMDK_DESCRIPTOR.replace('RW 2048 FLAT "disk-flat.vmdk"', f'RW {sectors} FLAT "{extent}"').encode()
    )


def test_vmdk_flat_extent_naming_a_host_file_is_refused(layout):
    desc = _vmdk(layout["vm"] / "disk.vmdk", "/etc/passwd", 2048)
    assert_refused(cli("analyze", desc, "--case", layout["case"]), "extent '/etc/passwd'", "refused")
    assert not layout["case"].exists()
    # even when told to follow recorded paths, a file that is not the extent's size is not the extent
    with pytest.raises(EvidenceError, match=r"extent '/etc/passwd' \(/etc/passwd\) is \d+ bytes but the descriptor"):
        discover([desc], follow_recorded=True)


def test_vmdk_flat_extent_must_have_the_declared_size(layout):
    vm = layout["vm"]
    shutil.copyfile(layout["own"], vm / "disk-flat.vmdk")
    sectors = (vm / "disk-flat.vmdk").stat().st_size // 512
    [snap] = discover([_vmdk(vm / "disk.vmdk", "disk-flat.vmdk", sectors)])
    assert [(Path(d["path"]).name, d["role"]) for d in snap["disks"]] == [
        ("disk.vmdk", "disk"),
        ("disk-flat.vmdk", "extent"),
    ]
    with pytest.raises(EvidenceError, match="is 8388608 bytes but the descriptor declares 4096"):
        discover([_vmdk(vm / "disk.vmdk", "disk-flat.vmdk", 8)])


def test_vmdk_flat_extent_outside_read_only_with_the_flag(layout):
    sectors = layout["marked"].stat().st_size // 512
    desc = _vmdk(layout["vm"] / "disk.vmdk", str(layout["marked"]), sectors)
    analyze([desc], layout["case"], engine_names=["disk"], follow_recorded_paths=True)
    assert_read_with_warning(layout["case"], layout["marked"])


# ------------------------------------------------------------------ symlinks in an evidence directory


def test_symlinks_in_an_evidence_directory_are_skipped_not_followed(layout):
    vm, host = layout["vm"], layout["host"]
    b.to_qcow2(layout["own"], vm / "disk.qcow2")
    b.to_qcow2(layout["marked"], host / "other-vm.qcow2")
    (vm / "hostdir").symlink_to(host, target_is_directory=True)  # a directory of another VM's disks
    (vm / "stolen.raw").symlink_to(layout["marked"])  # a host file
    (vm / "sub").mkdir()
    (vm / "sub" / "deeper.raw").symlink_to(layout["marked"])  # one level down, where the scan also looks

    summary = analyze([vm], layout["case"], engine_names=["disk"])
    assert [s["id"] for s in summary["snapshots"]] == ["vm"]
    case = Case.open(layout["case"])
    assert list(case.manifest["evidence"]) == [str((vm / "disk.qcow2").resolve())]
    for outside in (layout["marked"], host / "other-vm.qcow2"):
        assert_never_read(layout["case"], outside)
    diags = case.table("diagnostics")
    skipped = diags[diags["why"].str.startswith("symbolic link")]
    assert sorted(zip(skipped["severity"], skipped["where"].map(lambda p: Path(p).name))) == [
        ("warning", "deeper.raw"),
        ("warning", "hostdir"),
        ("warning", "stolen.raw"),
    ]
    assert "/etc/motd" in set(case.table("disk/files")["path"])  # the evidence itself was analysed


def test_a_directory_of_symlinks_only_is_no_evidence(layout):
    (layout["vm"] / "stolen.raw").symlink_to(layout["marked"])
    result = cli("inspect", layout["vm"])
    assert_refused(result, "holds no recognisable evidence (1 files skipped)")


def test_audit_does_not_follow_a_symlinked_vm_directory(layout):
    fleet = layout["vm"].parent
    b.to_qcow2(layout["own"], layout["vm"] / "disk.qcow2")
    (layout["host"] / "vm9").mkdir()
    b.to_qcow2(layout["marked"], layout["host"] / "vm9" / "disk.qcow2")
    (fleet / "vm9").symlink_to(layout["host"] / "vm9", target_is_directory=True)
    snapshots, rows = discover_fleet([fleet])
    assert [s["id"] for s in snapshots] == ["vm"]
    assert [(r["vm"], r["status"]) for r in rows] == [("vm9", "skipped")]
    assert "symbolic link" in rows[0]["reason"]


# ------------------------------------------------------------------ libvirt domain XML


def test_domain_xml_disk_in_another_directory(layout):
    vm, host = layout["vm"], layout["host"]
    b.to_qcow2(layout["marked"], host / "other-vm.qcow2")
    xml = synth.write(vm / "web01.xml", synth.domain_xml(disks=[("vda", str(host / "other-vm.qcow2"), "qcow2")]))

    for command in ("inspect", "analyze"):
        args = (command, xml) + (("--case", layout["case"]) if command == "analyze" else ())
        assert_refused(cli(*args), "disk 'vda'", "other-vm.qcow2", "refused")
    assert not layout["case"].exists()
    # a search path is the analyst saying "disks may be here": read, and no warning
    [snap] = discover([xml], search_paths=[host])
    assert [Path(d["path"]).name for d in snap["disks"]] == ["other-vm.qcow2"] and snap["warnings"] == []

    analyze([xml], layout["case"], engine_names=["disk"], follow_recorded_paths=True)
    assert_read_with_warning(layout["case"], host / "other-vm.qcow2")


def test_snapshot_xml_memory_file_in_another_directory(layout):
    vm, host = layout["vm"], layout["host"]
    memory = synth.write(host / "snap1.mem", synth.lime())
    xml = synth.write(vm / "snap1.xml", synth.snapshot_xml(memory=("external", str(memory)), disks=()))
    with pytest.raises(EvidenceError, match=r"memory file '.*snap1.mem' resolves outside .*refused"):
        discover([xml])
    [snap] = discover([xml], follow_recorded=True)
    assert snap["memory"]["path"] == str(memory) and [e["path"] for e in snap["evidence"]] == [str(xml), str(memory)]
    assert snap["warnings"] == [
        f"read {memory} outside the evidence roots: memory file {str(memory)!r} of {xml} "
        "(as-recorded, --follow-recorded-paths)"
    ]


def test_inspect_json_names_what_was_read_outside(layout):
    b.qcow2_over_data_file(layout["marked"], layout["vm"] / "disk.qcow2")
    result = cli("inspect", layout["vm"], "--json", "--follow-recorded-paths")
    assert result.returncode == 0, result.stderr
    [snap] = json.loads(result.stdout)["snapshots"]
    assert [os.path.basename(w.split()[1]) for w in snap["warnings"]] == ["outside.raw"]
    assert snap["roots"] == [str(layout["vm"].resolve())]
