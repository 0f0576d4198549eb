"""Opening qcow2 chains, internal snapshots and other formats read-only, on real images."""

from __future__ import annotations

import hashlib
import shutil
import struct

import pytest

from tests.helpers import disk_images as b
from toolkit.engines.disk.images import close_disk, detect_format, open_disk
from toolkit.errors import DiskError
from toolkit.hashing import sha256_file
from toolkit.references import reference_policy

ABS_BACKING = "/var/lib/libvirt/images/base.qcow2"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("open")
    tree = b.write_tree(d / "tree", b.sample_linux_files())
    base_raw = b.make_ext4(tree, d / "base.raw", 32)
    b.to_qcow2(base_raw, d / "base.qcow2")
    new_raw = b.edit_ext4(base_raw, d / "new.raw", ["write /etc/hostname /etc/motd"])
    b.overlay_from(new_raw, d / "base.qcow2", d / "overlay.qcow2", recorded_backing=ABS_BACKING, base_raw=base_raw)
    # the same overlay, but shipped in a different directory than its base
    (d / "elsewhere").mkdir()
    shutil.copy(d / "overlay.qcow2", d / "elsewhere" / "overlay.qcow2")
    evidence = [d / "base.qcow2", d / "overlay.qcow2", d / "elsewhere" / "overlay.qcow2"]
    before = {p: sha256_file(p) for p in evidence}
    yield {"dir": d, "base_raw": base_raw, "new_raw": new_raw}
    assert {p: sha256_file(p) for p in evidence} == before, "evidence files changed"


def read_all(disk) -> bytes:
    disk["stream"].seek(0)
    return disk["stream"].read(disk["size"])


def test_absolute_backing_path_resolved_beside_the_overlay(images):
    disk = open_disk(images["dir"] / "overlay.qcow2")
    try:
        assert [r["resolved_by"] for r in disk["chain"]] == ["given", "basename-beside"]
        assert disk["chain"][1]["recorded_path"] == ABS_BACKING
        assert disk["chain"][1]["path"] == str(images["dir"] / "base.qcow2")
        assert hashlib.sha256(read_all(disk)).digest() == hashlib.sha256(images["new_raw"].read_bytes()).digest()
    finally:
        close_disk(disk)


def test_backing_found_through_search_path(images):
    with pytest.raises(DiskError, match=r"backing file '/var/lib/libvirt/images/base.qcow2' not found"):
        open_disk(images["dir"] / "elsewhere" / "overlay.qcow2")
    elsewhere = images["dir"] / "elsewhere"
    policy = reference_policy(roots=[elsewhere], search_paths=[images["dir"]])
    disk = open_disk(elsewhere / "overlay.qcow2", references=policy)
    assert disk["chain"][1]["resolved_by"] == f"search-path:{images['dir']}"
    close_disk(disk)


def test_missing_backing_read_as_zeros_when_allowed(images):
    disk = open_disk(images["dir"] / "elsewhere" / "overlay.qcow2", allow_missing_backing=True)
    try:
        assert disk["chain"][-1]["resolved_by"] == "missing-zeros"
        assert any("read as zeros" in d["why"] for d in disk["diagnostics"])
        data = read_all(disk)
        raw = images["new_raw"].read_bytes()
        assert len(data) == len(raw) and data != raw  # only the overlay's clusters are present
    finally:
        close_disk(disk)


def test_internal_snapshot_by_name_and_id(images, tmp_path):
    q = tmp_path / "standalone.qcow2"
    b.to_qcow2(images["base_raw"], q)
    b.snapshot(q, "before")
    b.write_changes(q, images["base_raw"], images["new_raw"])
    for wanted in ("before", "1"):
        disk = open_disk(q, snapshot=wanted)
        assert read_all(disk) == images["base_raw"].read_bytes()
        assert disk["chain"][0]["snapshot"] == "1:before"
        close_disk(disk)
    active = open_disk(q)
    assert read_all(active) == images["new_raw"].read_bytes()
    close_disk(active)
    with pytest.raises(DiskError, match=r"no internal snapshot named or numbered 'nope' \(has: 1:before\)"):
        open_disk(q, snapshot="nope")


@pytest.mark.parametrize("fmt", ["vmdk", "vhdx", "vdi", "raw"])
def test_other_formats_read_through_dissect(images, tmp_path, fmt):
    out = tmp_path / f"disk.{fmt}"
    b._run("qemu-img", "convert", "-f", "raw", "-O", fmt, images["base_raw"], out)
    assert detect_format(out) == fmt
    disk = open_disk(out)
    try:
        assert read_all(disk)[: 1 << 20] == images["base_raw"].read_bytes()[: 1 << 20]
    finally:
        close_disk(disk)


def _patched(src, dst, offset, data):
    shutil.copy(src, dst)
    with open(dst, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)
    return dst


def test_corrupt_header(images, tmp_path):
    src = images["dir"] / "base.qcow2"
    with pytest.raises(DiskError, match="corrupt qcow2 header"):
        open_disk(_patched(src, tmp_path / "v9.qcow2", 4, struct.pack(">I", 9)))
    with pytest.raises(DiskError, match="corrupt qcow2 header"):
        open_disk(_patched(src, tmp_path / "cb.qcow2", 20, struct.pack(">I", 40)))
    trunc = tmp_path / "trunc.qcow2"
    trunc.write_bytes(src.read_bytes()[:300])
    with pytest.raises(DiskError, match=r"corrupt qcow2 header \(file truncated\)"):
        open_disk(trunc)
    l1_offset = struct.unpack(">Q", src.read_bytes()[40:48])[0]
    trunc.write_bytes(src.read_bytes()[: l1_offset + 4])
    with pytest.raises(DiskError, match="L1 table .* lies outside the file"):
        open_disk(trunc)
    garbage = tmp_path / "garbage.qcow2"
    garbage.write_bytes(b"QFI\xfb" + bytes(range(256)) * 4)
    with pytest.raises(DiskError, match="corrupt qcow2 header"):
        open_disk(garbage)


def test_l1_and_l2_entries_pointing_outside_the_file(images, tmp_path):
    src = images["dir"] / "base.qcow2"
    l1_offset = struct.unpack(">Q", src.read_bytes()[40:48])[0]
    bad_l1 = _patched(src, tmp_path / "l1.qcow2", l1_offset, struct.pack(">Q", (1 << 63) | (1 << 40)))
    with pytest.raises(DiskError, match=r"L1 entry 0 points to an L2 table at 0x10000000000, outside the file"):
        open_disk(bad_l1)
    l2_offset = struct.unpack(">Q", src.read_bytes()[l1_offset : l1_offset + 8])[0] & 0x00FFFFFFFFFFFE00
    bad_l2 = _patched(src, tmp_path / "l2.qcow2", l2_offset, struct.pack(">Q", (1 << 63) | (1 << 41)))
    with pytest.raises(DiskError, match=r"L2 entry for guest offset 0x0 points to host offset 0x20000000000"):
        open_disk(bad_l2)


def test_backing_loop_and_missing_file(images, tmp_path):
    loop = tmp_path / "loop.qcow2"
    b._run("qemu-img", "create", "-f", "qcow2", loop, "1M")
    b.rebase(loop, "loop.qcow2")
    with pytest.raises(DiskError, match="loops back"):
        open_disk(loop)
    with pytest.raises(DiskError, match="disk image not found"):
        open_disk(tmp_path / "absent.qcow2")
