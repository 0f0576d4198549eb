"""identify() and discover() on the real lab artefacts, checked against the
facts the lab builder recorded from other tools (qemu-img, its own header
readers, the guest) in ground_truth.json — never against copied numbers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from toolkit.evidence import discover, identify

pytestmark = pytest.mark.lab

MEMORY = {"elf-core", "kdump", "kdump-flattened", "qemu-migration", "libvirt-save", "lime"}


@pytest.fixture(scope="module")
def identified(lab, ground_truth) -> dict:
    return {a["path"]: identify(lab / a["path"]) for a in ground_truth["artefacts"]}


def of_format(ground_truth, *formats):
    return [a for a in ground_truth["artefacts"] if a["format"] in formats]


def test_every_artefact_is_identified_by_content(ground_truth, identified):
    assert ground_truth["artefacts"], "the lab lists no artefacts"
    for a in ground_truth["artefacts"]:
        info = identified[a["path"]]
        assert info["format"] == a["format"], a["path"]
        assert info["size"] == a["size"], a["path"]


def test_no_unexpected_problems(ground_truth, identified):
    # every lab artefact is complete and consistent: a problem here is a false alarm
    assert {p: i["problems"] for p, i in identified.items() if i["problems"]} == {}


def test_qcow2_facts(ground_truth, identified):
    for a in of_format(ground_truth, "qcow2"):
        f, want = identified[a["path"]]["facts"], a["facts"]
        assert f["virtual_size"] == want["virtual_size"], a["path"]
        assert f["cluster_size"] == want["cluster_size"], a["path"]
        assert f["backing_file"] == want["backing_file"], a["path"]  # raw, as written
        assert f["backing_format"] == want["backing_format"], a["path"]
        assert f["version"] == {"0.10": 2, "1.1": 3}[want["compat"]], a["path"]
        assert [(s["name"], s["id"], s["vm_state_size"], s["has_vm_state"]) for s in f["snapshots"]] == [
            (s["name"], s["id"], s["vm_state_size"], s["has_vm_state"]) for s in want["snapshots"]
        ], a["path"]


def test_elf_core_facts(ground_truth, identified):
    for a in of_format(ground_truth, "elf-core"):
        f, want = identified[a["path"]]["facts"], a["facts"]
        assert f["vcpus"] == want["vcpus"] == want["qemu_cpu_notes"], a["path"]
        assert f["loads"] == len(want["pt_load"]), a["path"]
        assert f["ram_bytes"] == sum(p["size"] for p in want["pt_load"]), a["path"]
        assert f["has_vmcoreinfo"] == want["has_vmcoreinfo"], a["path"]


def test_kdump_facts(ground_truth, identified):
    for a in of_format(ground_truth, "kdump", "kdump-flattened"):
        f, want = identified[a["path"]]["facts"], a["facts"]
        assert f["flattened"] == want["flattened"], a["path"]
        assert f["compression"] == want["compression"], a["path"]
        # every guest RAM page has a PFN below max_mapnr
        assert f["max_mapnr"] * f["block_size"] >= want["ram_mib"] << 20, a["path"]


def test_migration_stream_facts(ground_truth, identified):
    for a in of_format(ground_truth, "qemu-migration"):
        f, want = identified[a["path"]]["facts"], a["facts"]
        assert f["machine"] == want["machine"], a["path"]
        assert f["ram_bytes"] == want["ram_mib"] << 20, a["path"]  # pc.ram used_length
        assert f.get("compression") in (None, "raw"), a["path"]  # the lab's streams are bare


def test_libvirt_save_facts(ground_truth, identified):
    for a in of_format(ground_truth, "libvirt-save"):
        f, want = identified[a["path"]]["facts"], a["facts"]
        assert f["version"] == want["version"], a["path"]
        assert f["complete"] == (want["magic"] == "LibvirtQemudSave"), a["path"]
        assert f["was_running"] == bool(want["was_running"]), a["path"]
        assert f["compression"] == want["compression"], a["path"]
        assert f["stream_offset"] == want["stream_offset"], a["path"]
        assert f["domain"]["uuid"] == want["domain_uuid"], a["path"]
        assert f["domain"]["name"] == ground_truth["runs"][a["run"]]["domain"], a["path"]
        if want.get("stream", {}).get("machine"):
            assert f["machine"] == want["stream"]["machine"], a["path"]
            assert f["ram_bytes"] == want["ram_mib"] << 20, a["path"]


def test_snapshot_xml_facts(ground_truth, identified):
    for a in of_format(ground_truth, "libvirt-snapshot-xml"):
        f, want = identified[a["path"]]["facts"], a["facts"]
        assert f["name"] == want["snapshot"], a["path"]
        assert (f["domain"]["name"], f["domain"]["uuid"]) == (want["domain"], want["domain_uuid"]), a["path"]
        if "state" in want:
            assert f["state"] == want["state"], a["path"]
        if "parent" in want:
            assert f["parent"] == want["parent"], a["path"]
        assert f["memory"]["snapshot"] == want["kind"], a["path"]
        if want["kind"] == "external":
            assert f["memory"]["file"] == want["memory_file"], a["path"]
            assert [d["source"] for d in f["disks"] if d["snapshot"] == "external"] == [want["disk_overlay"]], a["path"]
        else:
            assert {d["snapshot"] for d in f["disks"]} == {"internal"}, a["path"]


def test_domain_xml_facts(ground_truth, identified):
    for a in of_format(ground_truth, "libvirt-domain-xml"):
        f, want = identified[a["path"]]["facts"], a["facts"]
        assert (f["name"], f["uuid"]) == (want["domain"], want["domain_uuid"]), a["path"]
        assert f["memory_bytes"] == ground_truth["guest"]["ram_mib"] << 20, a["path"]
        assert f["disks"] and all(d["source"].startswith(want["paths_refer_to"]) for d in f["disks"]), a["path"]
        # the NIC the guest reported (ip link) is in the definition, even when
        # it was added through <qemu:commandline>
        guest_macs = set(re.findall(r"link/ether (\S+)", ground_truth["runs"][a["run"]]["netinfo"]))
        assert guest_macs and guest_macs <= set(f["macs"]), a["path"]


def test_pcap_facts(ground_truth, identified):
    for a in of_format(ground_truth, "pcap"):
        f, want = identified[a["path"]]["facts"], a["facts"]
        assert f["packets"] == want["packets"], a["path"]
        assert f["link_type"] == want["linktype"], a["path"]
        assert (f["ts_resolution"] == "ns") == want["nanosecond"], a["path"]
        assert f["packets"] == 0 or f["first_ts_ns"] <= f["last_ts_ns"]


# ---------------------------------------------------------------- discover


def _names(paths):
    return {Path(p).name for p in paths}


def test_discover_qemu_dir_finds_every_memory_artefact_with_the_disk_chain_and_pcap(lab, ground_truth):
    snaps = discover([lab / "qemu"])
    run = [a for a in ground_truth["artefacts"] if a["run"] == "qemu"]
    memory_files = {a["path"] for a in run if a["format"] in MEMORY}
    internal = {
        (a["path"], s["name"])
        for a in run
        if a["format"] == "qcow2"
        for s in a["facts"]["snapshots"]
        if s["has_vm_state"]
    }
    got_files = {str(Path(s["memory"]["path"]).relative_to(lab)) for s in snaps if s["memory"]["snapshot"] is None}
    got_internal = {
        (str(Path(s["memory"]["path"]).relative_to(lab)), s["memory"]["snapshot"])
        for s in snaps
        if s["memory"]["snapshot"]
    }
    assert (got_files, got_internal) == (memory_files, internal)
    assert len(snaps) == len(memory_files) + len(internal)
    assert len({s["id"] for s in snaps}) == len(snaps)
    disk = next(a for a in run if a["format"] == "qcow2")
    for s in snaps:
        top = [d for d in s["disks"] if d["role"] == "disk"]
        assert [str(Path(d["path"]).relative_to(lab)) for d in top] == [disk["path"]], s["id"]
        backing = [d for d in s["disks"] if d["role"] == "backing"]
        assert [Path(d["path"]).name for d in backing] == [Path(disk["facts"]["backing_file"]).name], s["id"]
        assert _names(p["path"] for p in s["pcaps"]) == {"net.pcap"}, s["id"]
        assert s["domain"] is None
    # skipped files (serial log, stderr) are never lab artefacts
    artefacts = {a["path"] for a in ground_truth["artefacts"]}
    assert not {str(Path(x["path"]).relative_to(lab)) for x in snaps[0]["skipped"]} & artefacts


def test_discover_from_libvirt_domain_xml_finds_the_runs_parts(lab, ground_truth):
    dom_art = of_format(ground_truth, "libvirt-domain-xml")[0]
    run = [a for a in ground_truth["artefacts"] if a["run"] == dom_art["run"]]
    snaps = discover([lab / dom_art["path"]])
    assert all(s["domain"]["uuid"] == dom_art["facts"]["domain_uuid"] for s in snaps)
    assert all(s["domain"]["name"] == dom_art["facts"]["domain"] for s in snaps)

    by_xml = {Path(s["snapshot_xml"]).name: s for s in snaps if s["snapshot_xml"]}
    for a in of_format(ground_truth, "libvirt-snapshot-xml"):
        snap = by_xml[Path(a["path"]).name]
        if a["facts"]["kind"] == "external":
            assert Path(snap["memory"]["path"]).name == Path(a["facts"]["memory_file"]).name
            assert snap["memory"]["format"] == "libvirt-save"
            overlay = [d for d in snap["disks"] if d["role"] == "overlay"]
            assert [Path(d["path"]).name for d in overlay] == [Path(a["facts"]["disk_overlay"]).name]
        else:
            assert (snap["memory"]["format"], snap["memory"]["snapshot"]) == ("qcow2", a["facts"]["snapshot"])
            assert [d["snapshot"] for d in snap["disks"] if d["role"] == "disk"] == [a["facts"]["snapshot"]]

    # every memory artefact of the run is some snapshot's memory; every file of the run is used
    used = {str(Path(e["path"]).relative_to(lab)) for s in snaps for e in s["evidence"]}
    memories = {str(Path(s["memory"]["path"]).relative_to(lab)) for s in snaps if s["memory"]}
    assert {a["path"] for a in run if a["format"] in MEMORY} <= memories
    assert {a["path"] for a in run} <= used
    assert len({s["id"] for s in snaps}) == len(snaps)
    # the recorded absolute host paths are gone: disks were found beside the XML
    for s in snaps:
        assert all(Path(d["path"]).parent == (lab / dom_art["path"]).parent for d in s["disks"]), s["id"]
