"""Grouping snapshots into VMs and ordering them in time (toolkit/evidence/vms.py)."""

from __future__ import annotations

import os

from toolkit.evidence.vms import capture_time, group_vms, snapshot_times

UUID = "1c6568c0-4570-54d9-9459-17624987d29d"


def _snap(sid, *, domain=None, disks=(), memory=None, times=None, evidence=()):
    return {"id": sid, "domain": domain, "disks": list(disks), "memory": memory, "times": times, "evidence": evidence}


def _disk(path, role="disk", snapshot=None):
    return {"path": str(path), "role": role, "snapshot": snapshot}


def test_one_vm_by_domain_uuid_and_by_name_when_that_is_all_a_snapshot_knows():
    vms = group_vms(
        [
            _snap("web-a", domain={"name": "web", "uuid": UUID}, times={"x": "2026-01-02T00:00:00+00:00"}),
            _snap("web-b", domain={"name": "web", "uuid": UUID.upper()}, times={"x": "2026-01-01T00:00:00+00:00"}),
            _snap("web-c", domain={"name": "web"}, times={}),
            _snap("db-a", domain={"name": "db", "uuid": "0" * 32}),
        ]
    )
    assert [(v["id"], v["basis"], v["snapshots"]) for v in vms] == [
        ("db", "libvirt domain", ["db-a"]),
        ("web", "libvirt domain", ["web-b", "web-a", "web-c"]),  # oldest first; unknown time last
    ]


def test_disk_chain_identity_joins_a_vm_and_a_shared_base_does_not(tmp_path):
    base = tmp_path / "base.qcow2"
    vm1, vm2 = tmp_path / "vm1" / "disk.qcow2", tmp_path / "vm2" / "disk.qcow2"
    snaps = [
        _snap("vm1-elf", disks=[_disk(vm1), _disk(base, "backing")], memory={"path": str(tmp_path / "vm1/m.elf")}),
        _snap("vm1-savevm", disks=[_disk(vm1, snapshot="s1"), _disk(base, "backing")]),
        _snap("vm2-elf", disks=[_disk(vm2), _disk(base, "backing")]),
        # an external snapshot: the disk as it was and the overlay written after; the overlay is
        # the top disk of a later snapshot of the same VM
        _snap("vm2-later", disks=[_disk(tmp_path / "vm2" / "overlay.qcow2"), _disk(vm2, "backing")]),
        _snap("vm2-ext", disks=[_disk(vm2), _disk(tmp_path / "vm2" / "overlay.qcow2", "overlay")]),
        _snap("loose", memory={"path": str(tmp_path / "loose" / "m.elf")}),
    ]
    vms = {v["id"]: v for v in group_vms(snaps)}
    assert sorted(vms) == ["loose", "vm1", "vm2"]
    assert sorted(vms["vm1"]["snapshots"]) == ["vm1-elf", "vm1-savevm"] and vms["vm1"]["basis"] == "disk chain"
    assert sorted(vms["vm2"]["snapshots"]) == ["vm2-elf", "vm2-ext", "vm2-later"]
    assert vms["loose"]["basis"] == "one snapshot"


def test_same_ram_joins_snapshots_nothing_else_ties(tmp_path):
    snaps = [_snap("a", memory={"path": str(tmp_path / "x/a.elf")}), _snap("b", memory={"path": str(tmp_path / "x/b")})]
    assert len(group_vms(snaps)) == 2
    [vm] = group_vms(snaps, same_vm=[("b", "a")])
    assert vm["basis"] == "same RAM" and sorted(vm["snapshots"]) == ["a", "b"]


def test_capture_time_from_the_evidence_else_the_memory_file_mtime(tmp_path):
    xml = {"path": str(tmp_path / "s.xml"), "format": "libvirt-snapshot-xml", "facts": {"creation_time": 1796171459}}
    qcow = {
        "path": str(tmp_path / "d.qcow2"),
        "format": "qcow2",
        "facts": {"snapshots": [{"name": "s1", "id": "1", "date": "2026-12-02T00:30:36.334843+00:00"}]},
    }
    stated = {"id": "s", "evidence": [xml, qcow], "memory": {"path": qcow["path"], "snapshot": "s1"}}
    assert snapshot_times(stated) == {
        "libvirt-snapshot-xml creation time": "2026-12-02T00:30:59+00:00",
        "qcow2 internal snapshot s1 date": "2026-12-02T00:30:36.334843+00:00",
    }
    assert capture_time(stated) == ("2026-12-02T00:30:36.334843+00:00", "qcow2 internal snapshot s1 date")
    elf = tmp_path / "m.elf"
    elf.write_bytes(b"x")
    os.utime(elf, (1796171400, 1796171400))
    assert capture_time({"id": "m", "memory": {"path": str(elf)}, "evidence": []}) == (
        "2026-12-02T00:30:00+00:00",
        "m.elf modification time",
    )
    assert capture_time({"id": "n", "memory": None, "evidence": []}) == (None, None)
