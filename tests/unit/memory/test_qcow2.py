import subprocess

import pytest

import toolkit.memory as M
from tests.helpers import memory_writers as W
from toolkit.memory import qcow2
from toolkit.references import reference_policy

C = 4096


@pytest.mark.parametrize("compress", [None, "zlib", "zstd"])
@pytest.mark.parametrize("extended", [False, True], ids=["l2", "extended-l2"])
def test_snapshot_vmstate(tmp_path, stream, compress, extended):
    data, expect = stream
    p = tmp_path / "disk.qcow2"
    W.qcow2(
        p,
        snapshots=[
            {"id": "1", "name": "clean", "vmstate": b"junk" * 10},
            {"id": "2", "name": "implant", "vmstate": data, "zero": set()},
        ],
        compress=compress,
        extended_l2=extended,
    )
    hdr = qcow2.read_header(p)
    assert [(s["id"], s["name"], s["vm_state_size"]) for s in hdr["snapshots"]] == [
        ("1", "clean", 40),
        ("2", "implant", len(data)),
    ]
    assert hdr["extended_l2"] is extended and hdr["cluster_bits"] == 12
    with M.open_image(p, snapshot="implant") as img:
        assert img.format == "qcow2-snapshot" and img.info["snapshot"]["id"] == "2"
        assert img.read(0, len(expect)) == expect and img.diagnostics == []
    with M.open_image(p, snapshot="2") as img:
        assert img.read(0, len(expect)) == expect


def test_snapshot_choice_errors(tmp_path, stream):
    p = tmp_path / "disk.qcow2"
    W.qcow2(
        p, snapshots=[{"id": "1", "name": "a", "vmstate": stream[0]}, {"id": "2", "name": "b", "vmstate": stream[0]}]
    )
    with pytest.raises(M.MemoryFormatError, match="several snapshots hold VM state"):
        M.open_image(p)
    with pytest.raises(M.MemoryFormatError, match="no snapshot named or numbered 'zz'"):
        M.open_image(p, snapshot="zz")
    W.qcow2(p)
    with pytest.raises(M.MemoryFormatError, match="no internal snapshot with VM state"):
        M.open_image(p)


def test_writer_output_is_accepted_by_qemu_img(tmp_path, stream):
    p = tmp_path / "disk.qcow2"
    W.qcow2(p, snapshots=[{"id": "1", "name": "implant", "vmstate": stream[0]}])
    out = subprocess.run(["qemu-img", "snapshot", "-l", str(p)], capture_output=True, text=True).stdout
    assert "implant" in out


def test_backing_chain_fallthrough(tmp_path, stream):
    data, expect = stream
    (tmp_path / "images").mkdir()
    overlay = tmp_path / "images" / "overlay.qcow2"
    vm_off = W.qcow2(
        overlay,
        snapshots=[{"id": "1", "name": "s", "vmstate": data, "skip": {1, 3}}],
        backing="/var/lib/libvirt/images/base.qcow2",
    )  # recorded path absent here
    base = tmp_path / "images" / "base.qcow2"
    W.qcow2(base, active={vm_off + k * C: data[k * C : (k + 1) * C] for k in (1, 3)})
    with M.open_image(overlay) as img:
        assert img.read(0, len(expect)) == expect and img.diagnostics == []
    # elsewhere, found through an explicit search path
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    base.rename(moved / "base.qcow2")
    policy = reference_policy(roots=[overlay.parent], search_paths=[moved])
    with M.open_image(overlay, references=policy) as img:
        assert img.read(0, len(expect)) == expect
    with M.open_image(overlay) as img:  # not found: said, and the rest is still read
        assert img.diagnostics[0]["what"] == "backing file not used"
        assert "not found" in img.diagnostics[0]["why"]


def test_backing_file_outside_the_evidence_root_is_not_read(tmp_path, stream):
    # the vmstate's missing clusters would come from ../outside/base.qcow2: another directory of the host
    data, expect = stream
    (tmp_path / "vm").mkdir()
    (tmp_path / "outside").mkdir()
    overlay = tmp_path / "vm" / "overlay.qcow2"
    snaps = [{"id": "1", "name": "s", "vmstate": data, "skip": {1, 3}}]
    vm_off = W.qcow2(overlay, snapshots=snaps, backing="../outside/base.qcow2")
    W.qcow2(tmp_path / "outside" / "base.qcow2", active={vm_off + k * C: data[k * C : (k + 1) * C] for k in (1, 3)})
    with M.open_image(overlay) as img:  # default policy: the overlay's own directory
        diag = img.diagnostics[0]
        assert diag["what"] == "backing file not used" and "resolves outside the evidence roots" in diag["why"]
        assert img.read(0, len(expect)) != expect  # the clusters it would have supplied are zeros
    policy = reference_policy(roots=[overlay.parent], follow_recorded=True)
    with M.open_image(overlay, references=policy) as img:
        assert img.read(0, len(expect)) == expect
        [diag] = img.diagnostics
        assert diag["severity"] == "warning" and str(tmp_path / "outside" / "base.qcow2") in diag["why"]


def test_external_data_file_is_named_and_cannot_hold_vm_state(tmp_path, stream):
    p = tmp_path / "disk.qcow2"
    W.qcow2(p, snapshots=[{"id": "1", "name": "s", "vmstate": stream[0]}])
    raw = bytearray(p.read_bytes())
    raw[72:80] = (4).to_bytes(8, "big")  # incompatible feature bit 2: external data file
    p.write_bytes(raw)
    assert qcow2.read_header(p)["external_data_file"] is True
    with pytest.raises(M.MemoryFormatError, match="external data file cannot hold VM state"):
        M.open_image(p)


def test_bad_qcow2(tmp_path, stream):
    p = tmp_path / "bad.qcow2"
    W.qcow2(p, snapshots=[{"id": "1", "name": "s", "vmstate": stream[0]}])
    raw = bytearray(p.read_bytes())
    raw[60:64] = (10**6).to_bytes(4, "big")
    p.write_bytes(raw)
    with pytest.raises(M.MemoryFormatError, match=r"bad.qcow2: at offset 0x3c: nb_snapshots"):
        qcow2.read_header(p)
    raw[20:24] = (40).to_bytes(4, "big")
    p.write_bytes(raw)
    with pytest.raises(M.MemoryFormatError, match="cluster_bits 40"):
        M.open_image(p)
