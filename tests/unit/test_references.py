"""The one reference policy (toolkit.references) and the readers that follow names with it:
the disk engine's qcow2 chains, VMDK extents and parents, VHDX parents, on real images."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import disk_images as b
from tests.helpers import evidence_files as synth
from toolkit.audit import discover_fleet
from toolkit.engines.disk.images import close_disk, open_disk
from toolkit.errors import DiskError, EvidenceError
from toolkit.evidence import discover
from toolkit.references import evidence_roots, reference_policy, resolve_reference


@pytest.fixture
def tree(tmp_path):
    """root/ (the evidence), root/vm/, search/, elsewhere/ (the rest of the host)."""
    for d in ("root/vm", "search", "elsewhere"):
        (tmp_path / d).mkdir(parents=True)
    for f in ("root/vm/beside.img", "search/found.img", "elsewhere/host.img", "elsewhere/found.img"):
        (tmp_path / f).write_bytes(b"x")
    return tmp_path


def test_resolution_order_and_real_path_confinement(tree):
    vm = tree / "root" / "vm"
    policy = reference_policy(roots=[tree / "root"], search_paths=[tree / "search"])
    found = resolve_reference("/var/lib/libvirt/images/beside.img", vm, policy)
    assert (found["path"], found["how"], found["outside"]) == (vm / "beside.img", "basename-beside", False)
    # a search path wins over the same name as recorded elsewhere on the host
    found = resolve_reference(str(tree / "elsewhere" / "found.img"), vm, policy)
    assert (found["path"], found["how"]) == (tree / "search" / "found.img", f"search-path:{tree / 'search'}")
    # ../.. and an absolute path leave the roots: refused, with the real path named
    for recorded in ("../../elsewhere/host.img", str(tree / "elsewhere" / "host.img")):
        found = resolve_reference(recorded, vm, policy)
        assert (found["path"], found["how"]) == (None, "refused")
        assert found["refused"] == [str((tree / "elsewhere" / "host.img").resolve())]
    # a symlink inside the root counts where it really points
    (vm / "link.img").symlink_to(tree / "elsewhere" / "host.img")
    assert resolve_reference("link.img", vm, policy)["how"] == "refused"
    # nothing existing: missing, every candidate listed
    found = resolve_reference("/x/none.img", vm, policy)
    assert found["how"] == "missing" and found["tried"][0] == str(vm / "none.img")


def test_following_recorded_paths_prefers_evidence_and_marks_the_rest(tree):
    vm = tree / "root" / "vm"
    follow = reference_policy(roots=[tree / "root"], follow_recorded=True)
    found = resolve_reference(str(tree / "elsewhere" / "host.img"), vm, follow)
    assert (found["path"], found["how"], found["outside"]) == (
        tree / "elsewhere" / "host.img",
        "outside:as-recorded",
        True,
    )
    # an inside candidate still wins over one outside, whatever the order
    (tree / "elsewhere" / "beside.img").write_bytes(b"y")
    found = resolve_reference("../../elsewhere/beside.img", vm, follow)
    assert (found["path"], found["outside"]) == (vm / "beside.img", False)


@pytest.mark.parametrize("name", ["", "a\0b", "x" * 5000 + "/y", "/" + "z" * 300])
def test_hostile_names_are_not_usable_and_never_crash(tree, name):
    found = resolve_reference(name, tree / "root", reference_policy(roots=[tree / "root"]))
    assert found["path"] is None and found["how"] in ("invalid", "missing")


def test_a_copied_libvirt_tree_finds_its_disks_inside_itself(tmp_path):
    # /etc/libvirt and /var/lib/libvirt copied from a host: the XML names the disk by its host path
    root = tmp_path / "host1"
    images = root / "var" / "lib" / "libvirt" / "images"
    images.mkdir(parents=True)
    (root / "etc" / "libvirt" / "qemu").mkdir(parents=True)
    synth.write(images / "web01.img", synth.mbr())
    disk = "/var/lib/libvirt/images/web01.img"
    synth.write(root / "etc" / "libvirt" / "qemu" / "web01.xml", synth.domain_xml(disks=[("vda", disk, "raw")]))
    snapshots, failures = discover_fleet([root])
    assert failures == [] and [d["path"] for s in snapshots for d in s["disks"]] == [str(images / "web01.img")]


def test_evidence_roots_are_real_directories(tree):
    (tree / "alias").symlink_to(tree / "root", target_is_directory=True)
    root = str((tree / "root").resolve())
    assert evidence_roots([tree / "alias", tree / "root" / "vm" / "beside.img"]) == (root, os.path.join(root, "vm"))


# ------------------------------------------------------------------ the disk engine


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    d = tmp_path_factory.mktemp("raw")
    return b.make_ext4(b.write_tree(d / "tree", {"etc/hostname": "victim\n"}), d / "disk.raw", 8)


def _content(disk) -> bytes:
    disk["stream"].seek(0)
    return disk["stream"].read(disk["size"])


def test_open_disk_refuses_a_backing_file_outside_and_follows_it_on_request(tmp_path, raw):
    # also what `snapscope diff A B` does: its arguments' directories are the roots
    (tmp_path / "vm").mkdir()
    b.to_qcow2(raw, tmp_path / "base.qcow2")
    top = tmp_path / "vm" / "top.qcow2"
    b._run("qemu-img", "create", "-q", "-f", "qcow2", "-b", tmp_path / "base.qcow2", "-F", "qcow2", top)
    b.rebase(top, "../base.qcow2")
    with pytest.raises(DiskError, match=r"backing file '../base.qcow2' resolves outside .*refused"):
        open_disk(top)
    disk = open_disk(top, references=reference_policy(roots=[top.parent], follow_recorded=True))
    try:
        assert _content(disk) == raw.read_bytes()
        assert [r["resolved_by"] for r in disk["chain"]] == ["given", "outside:relative"]
        [warning] = disk["diagnostics"]
        assert warning["severity"] == "warning" and str(tmp_path / "base.qcow2") in warning["why"]
    finally:
        close_disk(disk)


def test_vmdk_parent_is_found_by_the_policy_not_by_dissect(tmp_path, raw):
    b._run("qemu-img", "convert", "-f", "raw", "-O", "vmdk", raw, tmp_path / "base.vmdk")
    (tmp_path / "vm").mkdir()
    over = tmp_path / "vm" / "over.vmdk"
    b._run("qemu-img", "create", "-q", "-f", "vmdk", "-b", tmp_path / "base.vmdk", "-F", "vmdk", over)
    # the hint records the parent's absolute host path; dissect alone would open it there
    with pytest.raises(DiskError, match=r"parent '.*base.vmdk' resolves outside .*refused"):
        open_disk(over)
    with pytest.raises(EvidenceError, match="resolves outside"):
        discover([over])
    shutil.copyfile(tmp_path / "base.vmdk", tmp_path / "vm" / "base.vmdk")  # shipped beside: used
    disk = open_disk(over)
    try:
        assert _content(disk) == raw.read_bytes()
        assert [(Path(r["path"]).name, r["resolved_by"]) for r in disk["chain"]] == [
            ("over.vmdk", "given"),
            ("base.vmdk", "basename-beside"),
        ]
    finally:
        close_disk(disk)


def test_vmdk_extents_through_the_policy(tmp_path, raw):
    (tmp_path / "vm").mkdir()
    b._run("qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=monolithicFlat", raw, tmp_path / "d.vmdk")
    desc = (tmp_path / "d.vmdk").read_text()
    disk = open_disk(tmp_path / "d.vmdk")
    try:
        assert _content(disk) == raw.read_bytes()
        assert [r["format"] for r in disk["chain"]] == ["vmdk", "vmdk-extent"]
    finally:
        close_disk(disk)
    hostile = tmp_path / "vm" / "d.vmdk"
    hostile.write_text(desc.replace('"d-flat.vmdk"', f'"{tmp_path / "d-flat.vmdk"}"'))
    with pytest.raises(DiskError, match=r"extent '.*d-flat.vmdk' resolves outside .*refused"):
        open_disk(hostile)
    shutil.copyfile(raw, tmp_path / "vm" / "d-flat.vmdk")
    (tmp_path / "vm" / "d-flat.vmdk").write_bytes(raw.read_bytes()[:4096])  # beside, but not the declared size
    with pytest.raises(DiskError, match="is 4096 bytes but the descriptor declares 8388608"):
        open_disk(hostile)


def test_vhdx_parent_outside_the_roots_is_refused(tmp_path):
    (tmp_path / "vm").mkdir()
    (tmp_path / "other").mkdir()
    synth.write(tmp_path / "other" / "parent.vhdx", synth.vhdx())
    child = synth.write(
        tmp_path / "vm" / "child.vhdx",
        synth.vhdx(parent={"relative_path": "..\\other\\parent.vhdx", "absolute_win32_path": "C:\\vm\\parent.vhdx"}),
    )
    with pytest.raises(EvidenceError, match=r"parent '../other/parent.vhdx' resolves outside .*refused"):
        discover([child])
    with pytest.raises(DiskError, match="not at its recorded relative path inside the evidence roots"):
        open_disk(child)
    [snap] = discover([child], search_paths=[tmp_path / "other"])  # the analyst says where parents are
    assert [(Path(d["path"]).name, d["role"]) for d in snap["disks"]] == [
        ("child.vhdx", "disk"),
        ("parent.vhdx", "backing"),
    ]
