"""discover(): grouping files into snapshots, following what XMLs and images
name, and failing with one clear line when a named part is missing."""

from __future__ import annotations

import pytest

from tests.helpers import evidence_files as synth
from toolkit.errors import EvidenceError
from toolkit.evidence import discover
from toolkit.evidence.discover import slug

UUID = "c7a5fdbd-cdaf-9455-926a-d65c16db1809"


def roles(snap):
    return [(d["path"].rsplit("/", 1)[-1], d["role"], d["snapshot"]) for d in snap["disks"]]


def names(items):
    return sorted(i["path"].rsplit("/", 1)[-1] for i in items)


def test_directory_without_memory_gives_one_disk_snapshot_and_lists_skipped(tmp_path):
    synth.write(tmp_path / "disk.img", synth.mbr())
    synth.write(tmp_path / "net.pcap", synth.pcap([(1, 0, b"x")]))
    synth.write(tmp_path / "notes.txt", b"analyst notes")
    [snap] = discover([tmp_path])
    assert snap["memory"] is None and snap["domain"] is None
    assert roles(snap) == [("disk.img", "disk", None)]
    assert snap["pcaps"] == [{"path": str(tmp_path / "net.pcap"), "format": "pcap"}]
    assert [s["path"] for s in snap["skipped"]] == [str(tmp_path / "notes.txt")]
    assert "not a recognised evidence format" in snap["skipped"][0]["reason"]
    assert names(snap["evidence"]) == ["disk.img", "net.pcap"]
    assert snap["id"] == slug(tmp_path.name)


def test_directory_with_nothing_recognisable_is_an_error(tmp_path):
    synth.write(tmp_path / "a.txt", b"hello")
    with pytest.raises(EvidenceError, match="no recognisable evidence"):
        discover([tmp_path])


def test_one_level_of_subdirectories_each_its_own_group(tmp_path):
    for sub in ("vm1", "vm2"):
        (tmp_path / sub).mkdir()
        synth.write(tmp_path / sub / "disk.img", synth.mbr())
    (tmp_path / "vm1" / "deeper").mkdir()
    synth.write(tmp_path / "vm1" / "deeper" / "other.img", synth.mbr())  # two levels down: not scanned
    snaps = discover([tmp_path])
    assert sorted(s["id"] for s in snaps) == ["vm1", "vm2"]
    assert all(roles(s) == [("disk.img", "disk", None)] for s in snaps)


def test_domain_xml_resolves_recorded_host_paths_beside_the_xml(tmp_path):
    synth.write(tmp_path / "web01.img", synth.mbr())
    xml = synth.write(
        tmp_path / "web01.xml", synth.domain_xml(disks=[("vda", "/var/lib/libvirt/images/web01.img", "raw")])
    )
    [snap] = discover([xml])
    assert snap["domain"] == {"name": "web01", "uuid": UUID, "macs": ["52:54:00:12:34:56"], "xml_path": str(xml)}
    assert roles(snap) == [("web01.img", "disk", None)]
    assert snap["id"] == "web01"  # a disk-only snapshot is named after its domain
    assert names(snap["evidence"]) == ["web01.img", "web01.xml"]


def test_domain_xml_disk_found_through_search_paths(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    synth.write(images / "web01.img", synth.mbr())
    (tmp_path / "xml").mkdir()
    xml = synth.write(
        tmp_path / "xml" / "web01.xml", synth.domain_xml(disks=[("vda", "/var/lib/libvirt/images/web01.img", "raw")])
    )
    [snap] = discover([xml], search_paths=[images])
    assert snap["disks"][0]["path"] == str(images / "web01.img")


def test_domain_xml_naming_a_missing_disk_is_an_error_naming_it(tmp_path):
    xml = synth.write(tmp_path / "web01.xml", synth.domain_xml(disks=[("vda", "/srv/gone/web01.qcow2", "qcow2")]))
    with pytest.raises(EvidenceError) as exc:
        discover([xml])
    text = str(exc.value)
    assert text.startswith(f"{xml}: ") and "'/srv/gone/web01.qcow2' not found" in text and "\n" not in text


def test_hostile_domain_name_is_kept_raw_but_the_id_is_safe(tmp_path):
    synth.write(tmp_path / "d.img", synth.mbr())
    xml = synth.write(
        tmp_path / "d.xml", synth.domain_xml(name="../../etc/pass wd&#10;x", disks=[("vda", "d.img", "raw")])
    )
    [snap] = discover([xml])
    assert snap["domain"]["name"] == "../../etc/pass wd\nx"
    assert snap["id"] == "etc-pass-wd-x"
    assert "/" not in snap["id"]


def test_slug():
    assert slug("Web 01") == "web-01"
    assert slug("..") == "unnamed"
    assert slug(None) == "unnamed"
    assert len(slug("x" * 500)) == 80


def test_explicit_files_form_one_group(tmp_path):
    disk = synth.write(tmp_path / "a.img", synth.mbr())
    cap = synth.write(tmp_path / "b.pcapng", synth.pcapng([(1, b"x")]))
    [snap] = discover([disk, cap])
    assert roles(snap) == [("a.img", "disk", None)]
    assert snap["pcaps"][0]["format"] == "pcapng"
    assert snap["skipped"] == []


def test_explicit_unrecognised_file_is_fatal(tmp_path):
    junk = synth.write(tmp_path / "junk", b"junk")
    with pytest.raises(EvidenceError, match="not a recognised"):
        discover([junk])


def test_vmdk_descriptor_brings_its_flat_extent(tmp_path):
    synth.write(tmp_path / "disk.vmdk", synth.VMDK_DESCRIPTOR.encode())
    synth.write(tmp_path / "disk-flat.vmdk", bytes(2048 * 512))  # raw data: no signature
    [snap] = discover([tmp_path])
    assert roles(snap) == [("disk.vmdk", "disk", None), ("disk-flat.vmdk", "extent", None)]
    assert snap["skipped"] == []  # the extent has no signature, but it is used, so not skipped


# ---------------------------------------------------------------- with qcow2 and memory formats


def test_qcow2_chain_follows_absolute_backing_by_base_name(tmp_path):
    synth.write(tmp_path / "base.qcow2", synth.qcow2())
    synth.write(
        tmp_path / "top.qcow2", synth.qcow2(backing="/var/lib/libvirt/images/base.qcow2", backing_format="qcow2")
    )
    [snap] = discover([tmp_path])
    assert roles(snap) == [("top.qcow2", "disk", None), ("base.qcow2", "backing", None)]


def test_qcow2_missing_backing_file_is_an_error(tmp_path):
    top = synth.write(tmp_path / "top.qcow2", synth.qcow2(backing="/nowhere/base.qcow2"))
    with pytest.raises(EvidenceError) as exc:
        discover([top])
    assert str(exc.value).startswith(f"{top}: backing file '/nowhere/base.qcow2' not found")


def test_qcow2_internal_snapshots_with_vm_state_are_snapshots(tmp_path):
    synth.write(
        tmp_path / "vm.qcow2",
        synth.qcow2(snapshots=[("1", "before", 123456), ("2", "disk-only", 0), ("3", "after", 654321)]),
    )
    snaps = discover([tmp_path])
    assert [s["name"] for s in snaps] == ["before", "after"]
    assert snaps[0]["memory"] == {"path": str(tmp_path / "vm.qcow2"), "format": "qcow2", "snapshot": "before"}
    assert roles(snaps[1]) == [("vm.qcow2", "disk", "after")]


def test_each_memory_artefact_is_a_snapshot_sharing_the_dirs_disks_and_pcaps(tmp_path):
    synth.write(tmp_path / "a.lime", synth.lime())
    synth.write(tmp_path / "b.lime", synth.lime(((0x1000, 0x1000),)))
    synth.write(tmp_path / "disk.img", synth.mbr())
    synth.write(tmp_path / "net.pcap", synth.pcap([(1, 0, b"x")]))
    snaps = discover([tmp_path])
    # no domain: the directory stands for the VM in the id
    assert [s["id"] for s in snaps] == [f"{slug(tmp_path.name)}-a.lime", f"{slug(tmp_path.name)}-b.lime"]
    for s in snaps:
        assert s["memory"]["format"] == "lime"
        assert roles(s) == [("disk.img", "disk", None)]
        assert names(s["pcaps"]) == ["net.pcap"]


def test_snapshot_xml_names_memory_file_and_overlay(tmp_path):
    synth.write(tmp_path / "web01.qcow2", synth.qcow2())
    synth.write(tmp_path / "web01.snap1", synth.qcow2(backing="/var/lib/libvirt/images/web01.qcow2"))
    synth.write(tmp_path / "snap1.mem", synth.lime())
    sx = synth.write(tmp_path / "snap1.xml", synth.snapshot_xml())
    snaps = discover([tmp_path])
    [snap] = snaps  # the memory file and the overlay belong to the snapshot XML, not to a snapshot of their own
    assert snap["snapshot_xml"] == str(sx)
    assert snap["memory"] == {"path": str(tmp_path / "snap1.mem"), "format": "lime", "snapshot": None}
    assert roles(snap) == [("web01.qcow2", "disk", None), ("web01.snap1", "overlay", None)]
    assert snap["domain"]["name"] == "web01" and snap["domain"]["xml_path"] == str(sx)
    assert snap["id"] == "web01-snap1"


def test_snapshot_xml_missing_memory_file_is_an_error(tmp_path):
    synth.write(tmp_path / "web01.qcow2", synth.qcow2())
    sx = synth.write(tmp_path / "snap1.xml", synth.snapshot_xml(disks=[("vda", "internal", None)]))
    with pytest.raises(EvidenceError, match="memory file '/var/lib/libvirt/qemu/snap1.mem' not found"):
        discover([sx])


def test_raw_memory_by_hint(tmp_path):
    mem = synth.write(tmp_path / "guest.ram", bytes(1 << 16))
    [snap] = discover([mem], hints={mem: "raw"})
    assert snap["memory"]["format"] == "raw"


def test_internal_snapshot_xml_is_one_snapshot_of_the_qcow2(tmp_path):
    synth.write(tmp_path / "web01.qcow2", synth.qcow2(snapshots=[("1", "snap1", 4096)]))
    sx = synth.write(
        tmp_path / "snap1.xml", synth.snapshot_xml(memory=("internal", None), disks=[("vda", "internal", None)])
    )
    [snap] = discover([tmp_path])  # not a second snapshot from the qcow2's own table
    assert snap["memory"] == {"path": str(tmp_path / "web01.qcow2"), "format": "qcow2", "snapshot": "snap1"}
    assert roles(snap) == [("web01.qcow2", "disk", "snap1")]
    assert snap["snapshot_xml"] == str(sx)


def test_internal_vm_state_in_a_backing_file_is_still_found(tmp_path):
    # after an external snapshot, the disk that holds the internal one is the overlay's backing file
    synth.write(tmp_path / "web01.qcow2", synth.qcow2(snapshots=[("1", "early", 4096)]))
    synth.write(tmp_path / "web01.ext", synth.qcow2(backing="/var/lib/libvirt/images/web01.qcow2"))
    synth.write(tmp_path / "web01.xml", synth.domain_xml(disks=[("vda", "/var/lib/libvirt/images/web01.ext", "qcow2")]))
    snaps = discover([tmp_path])
    internal = [s for s in snaps if s["memory"]]
    assert [(s["name"], s["memory"]["snapshot"]) for s in internal] == [("early", "early")]
    assert roles(internal[0]) == [("web01.qcow2", "disk", "early")]
    assert internal[0]["domain"]["name"] == "web01"


def test_external_snapshot_whose_overlay_is_gone_keeps_the_disk_as_it_was(tmp_path):
    synth.write(tmp_path / "web01.qcow2", synth.qcow2())
    synth.write(tmp_path / "snap1.mem", synth.lime())
    synth.write(tmp_path / "snap1.xml", synth.snapshot_xml())
    [snap] = discover([tmp_path])
    assert roles(snap) == [("web01.qcow2", "disk", None)]
    [problem] = snap["problems"]
    assert problem.startswith("overlay of disk 'vda' '/var/lib/libvirt/images/web01.snap1' not found (tried: ")


def test_save_image_is_tied_to_the_domain_it_embeds(tmp_path):
    synth.write(tmp_path / "web01.img", synth.mbr())
    synth.write(tmp_path / "web01.xml", synth.domain_xml(disks=[("vda", "/x/web01.img", "raw")]))
    synth.write(
        tmp_path / "other.xml", synth.domain_xml(name="other", uuid_="00000000-0000-0000-0000-000000000001", disks=[])
    )
    synth.write(tmp_path / "web01.save", synth.libvirt_save(synth.domain_xml()))
    snaps = discover([tmp_path])
    save = next(s for s in snaps if s["memory"])
    assert save["domain"]["name"] == "web01" and save["domain"]["xml_path"] == str(tmp_path / "web01.xml")
    assert roles(save) == [("web01.img", "disk", None)]
    assert save["id"] == "web01-web01.save"


def test_explicit_domain_xml_brings_its_directory_but_not_other_domains_artefacts(tmp_path):
    synth.write(tmp_path / "web01.img", synth.mbr())
    xml = synth.write(tmp_path / "web01.xml", synth.domain_xml(disks=[("vda", "/x/web01.img", "raw")]))
    synth.write(tmp_path / "web01.save", synth.libvirt_save(synth.domain_xml()))
    synth.write(
        tmp_path / "db.save",
        synth.libvirt_save(synth.domain_xml(name="db", uuid_="00000000-0000-0000-0000-000000000002")),
    )
    synth.write(tmp_path / "dump.lime", synth.lime())
    synth.write(tmp_path / "net.pcap", synth.pcap([(1, 0, b"x")]))
    snaps = discover([xml])
    assert sorted(s["id"] for s in snaps) == ["web01-dump.lime", "web01-web01.save"]
    assert all(names(s["pcaps"]) == ["net.pcap"] for s in snaps)
