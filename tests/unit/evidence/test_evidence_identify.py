"""identify(): formats owned by toolkit.evidence, on synthetic files, and the
one-line EvidenceError for every kind of bad input."""

from __future__ import annotations

import os
import struct

import pytest

from tests.helpers import evidence_files as synth
from toolkit.errors import EvidenceError, SnapscopeError
from toolkit.evidence import identify


def only_line(exc: EvidenceError, path) -> str:
    text = str(exc)
    assert "\n" not in text
    assert text.startswith(f"{path}: ") or text.startswith(f"{os.path.abspath(path)}: ")
    return text


# ---------------------------------------------------------------- pcap / pcapng


def test_pcap_counts_packets_and_keeps_first_and_last_time(tmp_path):
    path = synth.write(
        tmp_path / "capture.bin",
        synth.pcap([(1700000000, 250000, b"a" * 60), (1700000001, 0, b"b" * 1500), (1700000005, 999999, b"c" * 42)]),
    )
    info = identify(path)
    assert info["format"] == "pcap"
    assert info["size"] == path.stat().st_size
    assert info["path"] == str(path)
    f = info["facts"]
    assert (f["link_type"], f["link_type_name"], f["packets"]) == (1, "ethernet", 3)
    assert f["first_ts_ns"] == 1700000000_250000000
    assert f["last_ts_ns"] == 1700000005_999999000
    assert info["problems"] == []


def test_pcap_big_endian_nanosecond(tmp_path):
    path = synth.write(tmp_path / "x", synth.pcap([(10, 7, b"z" * 20)], order=">", nanos=True, link=113))
    f = identify(path)["facts"]
    assert (f["link_type"], f["link_type_name"], f["packets"], f["first_ts_ns"]) == (113, "linux_sll", 1, 10_000000007)
    assert f["ts_resolution"] == "ns"


def test_pcap_truncated_last_packet_is_a_problem_not_an_error(tmp_path):
    data = synth.pcap([(1, 0, b"a" * 100), (2, 0, b"b" * 100)])
    info = identify(synth.write(tmp_path / "cut.pcap", data[:-30]))
    assert info["facts"]["packets"] == 1
    assert len(info["problems"]) == 1 and "truncated" in info["problems"][0]


def test_pcap_with_header_only_has_no_packets(tmp_path):
    info = identify(synth.write(tmp_path / "empty.pcap", synth.pcap([])))
    assert info["facts"]["packets"] == 0 and info["facts"]["first_ts_ns"] is None


def test_pcap_truncated_global_header(tmp_path):
    path = synth.write(tmp_path / "short.pcap", synth.pcap([])[:10])
    with pytest.raises(EvidenceError) as exc:
        identify(path)
    assert "truncated pcap header" in only_line(exc.value, path)


def test_pcapng_default_and_explicit_resolution(tmp_path):
    us = identify(synth.write(tmp_path / "a", synth.pcapng([(1700000000_000001, b"x" * 60)], simple=2)))
    assert us["format"] == "pcapng"
    assert (us["facts"]["packets"], us["facts"]["link_type"]) == (3, 1)  # simple packets count too
    assert us["facts"]["first_ts_ns"] == 1700000000_000001000
    ns = identify(synth.write(tmp_path / "b", synth.pcapng([(5_000000009, b"x"), (6_000000000, b"y")], tsresol=9)))
    assert (ns["facts"]["first_ts_ns"], ns["facts"]["last_ts_ns"]) == (5_000000009, 6_000000000)


def test_pcapng_truncated_block(tmp_path):
    data = synth.pcapng([(1, b"x" * 64), (2, b"y" * 64)])
    info = identify(synth.write(tmp_path / "cut.pcapng", data[:-20]))
    assert info["facts"]["packets"] == 1
    assert "truncated" in info["problems"][0]


# ---------------------------------------------------------------- disks


def test_raw_disk_with_mbr(tmp_path):
    info = identify(synth.write(tmp_path / "disk.img", synth.mbr()))
    assert info["format"] == "raw-disk"
    assert info["facts"]["partition_table"] == "mbr"
    assert info["facts"]["partitions"] == [
        {"index": 1, "type": "0x83", "start": 2048 * 512, "size": 4096 * 512, "filesystem": None}
    ]


def test_raw_disk_with_gpt(tmp_path):
    f = identify(synth.write(tmp_path / "gpt.img", synth.gpt()))["facts"]
    assert f["partition_table"] == "gpt"
    assert [(p["name"], p["start"], p["size"]) for p in f["partitions"]] == [("root", 2048 * 512, 1024 * 512)]
    assert f["partitions"][0]["type"] == "0fc63daf-8483-4772-8e79-3d69d8477de4"


def test_raw_disk_with_ext4_at_offset_zero(tmp_path):
    info = identify(synth.write(tmp_path / "fs.img", synth.ext4_superblock() + bytes(8192)))
    f = info["facts"]
    assert info["format"] == "raw-disk"
    assert (f["partition_table"], f["filesystem"], f["block_size"], f["fs_label"]) == (None, "ext4", 4096, "rootfs")
    assert f["fs_size"] == 1024 * 4096


def test_ext_magic_alone_is_not_a_disk(tmp_path):
    data = bytearray(os.urandom(8192))
    struct.pack_into("<H", data, 1080, 0xEF53)
    struct.pack_into("<I", data, 1024 + 24, 99)  # absurd block size: not a superblock
    with pytest.raises(EvidenceError, match="not a recognised evidence format"):
        identify(synth.write(tmp_path / "noise", bytes(data)))


def test_vmdk_descriptor_and_sparse(tmp_path):
    desc = identify(synth.write(tmp_path / "d.vmdk", synth.VMDK_DESCRIPTOR.encode()))
    assert desc["format"] == "vmdk"
    assert desc["facts"]["create_type"] == "monolithicFlat"
    assert desc["facts"]["extents"] == [
        {"access": "RW", "sectors": 2048, "type": "FLAT", "file": "disk-flat.vmdk", "offset": 0}
    ]
    assert desc["facts"]["virtual_size"] == 2048 * 512
    sparse = identify(synth.write(tmp_path / "s.bin", synth.vmdk_sparse(4096)))
    assert (sparse["format"], sparse["facts"]["variant"], sparse["facts"]["virtual_size"]) == (
        "vmdk",
        "sparse",
        4096 * 512,
    )


def test_vhdx(tmp_path):
    info = identify(synth.write(tmp_path / "d.vhdx", synth.vhdx(virtual_size=10 << 20)))
    assert info["format"] == "vhdx"
    assert info["facts"] == {"creator": "synth", "virtual_size": 10 << 20, "block_size": 32 << 20, "has_parent": False}


def test_vdi(tmp_path):
    info = identify(synth.write(tmp_path / "d.vdi", synth.vdi(8 << 20)))
    assert info["format"] == "vdi"
    f = info["facts"]
    assert (f["version"], f["image_type"], f["virtual_size"], f["parent_uuid"]) == ("1.1", "dynamic", 8 << 20, None)
    assert f["uuid"] == "11111111-2222-3333-4444-555555555555"


@pytest.mark.parametrize(
    "name,data,message",
    [
        ("vhdx", b"vhdxfile" + bytes(100), "region table"),
        ("vdi", synth.vdi()[:0x60], "truncated VDI header"),
        ("vmdk", synth.vmdk_sparse()[:40], "truncated VMDK sparse header"),
    ],
)
def test_truncated_disk_headers(tmp_path, name, data, message):
    path = synth.write(tmp_path / name, data)
    with pytest.raises(EvidenceError) as exc:
        identify(path)
    assert message in only_line(exc.value, path)


# ---------------------------------------------------------------- libvirt XML


def test_domain_xml(tmp_path):
    info = identify(synth.write(tmp_path / "web01.conf", synth.domain_xml()))
    assert info["format"] == "libvirt-domain-xml"
    f = info["facts"]
    assert (f["name"], f["uuid"], f["memory_bytes"], f["machine"]) == (
        "web01",
        "c7a5fdbd-cdaf-9455-926a-d65c16db1809",
        320 << 20,
        "pc-i440fx-7.2",
    )
    assert f["macs"] == ["52:54:00:12:34:56"]
    assert [(d["target"], d["source"], d["driver_type"]) for d in f["disks"]] == [
        ("vda", "/var/lib/libvirt/images/web01.qcow2", "qcow2")
    ]


def test_snapshot_xml(tmp_path):
    info = identify(synth.write(tmp_path / "snap", synth.snapshot_xml()))
    assert info["format"] == "libvirt-snapshot-xml"
    f = info["facts"]
    assert (f["name"], f["state"], f["creation_time"]) == ("snap1", "paused", 1700000000)
    assert f["memory"] == {"snapshot": "external", "file": "/var/lib/libvirt/qemu/snap1.mem"}
    assert f["disks"] == [
        {"name": "vda", "snapshot": "external", "source": "/var/lib/libvirt/images/web01.snap1", "driver_type": "qcow2"}
    ]
    assert (f["domain"]["name"], f["domain"]["uuid"]) == ("web01", "c7a5fdbd-cdaf-9455-926a-d65c16db1809")


@pytest.mark.parametrize(
    "data,message",
    [
        (b"<domain type='kvm'><name>x</na", "malformed XML"),
        (b"<?xml version='1.0'?><!DOCTYPE d [<!ENTITY a 'aaaa'>]><domain>&a;</domain>", "DOCTYPE"),
    ],
)
def test_bad_xml(tmp_path, data, message):
    path = synth.write(tmp_path / "bad.xml", data)
    with pytest.raises(EvidenceError) as exc:
        identify(path)
    assert message in only_line(exc.value, path)


def test_other_xml_is_not_evidence(tmp_path):
    with pytest.raises(EvidenceError, match="not a recognised evidence format"):
        identify(synth.write(tmp_path / "pom.xml", b"<project><name>x</name></project>"))


# ---------------------------------------------------------------- bad input


def test_empty_file(tmp_path):
    path = synth.write(tmp_path / "empty", b"")
    with pytest.raises(EvidenceError) as exc:
        identify(path)
    assert only_line(exc.value, path).endswith("empty file")


def test_random_bytes(tmp_path):
    path = synth.write(tmp_path / "random.elf", os.urandom(70000))  # the name says nothing
    with pytest.raises(EvidenceError) as exc:
        identify(path)
    assert "not a recognised evidence format" in only_line(exc.value, path)


def test_directory_and_missing_file(tmp_path):
    with pytest.raises(EvidenceError, match="is a directory"):
        identify(tmp_path)
    with pytest.raises(EvidenceError, match="no such file"):
        identify(tmp_path / "nope")


def test_unknown_hint(tmp_path):
    with pytest.raises(EvidenceError, match="unknown format hint"):
        identify(synth.write(tmp_path / "x", b"data"), hint="floppy")


def test_evidence_error_is_a_snapscope_error_the_cli_reports():
    assert issubclass(EvidenceError, SnapscopeError)
    assert str(EvidenceError("/e/x", "bad\nthing")) == "/e/x: bad thing"


def test_identify_never_writes(tmp_path):
    path = synth.write(tmp_path / "net.pcap", synth.pcap([(1, 0, b"x")]))
    os.chmod(path, 0o400)
    before = path.stat().st_mtime_ns, path.read_bytes()
    identify(path)
    assert (path.stat().st_mtime_ns, path.read_bytes()) == before


def test_domain_xml_macs_include_qemu_commandline_nics(tmp_path):
    xml = (
        b"<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><name>x</name>"
        b"<devices><interface type='user'><mac address='52:54:00:00:00:01'/></interface></devices>"
        b"<qemu:commandline><qemu:arg value='-device'/>"
        b"<qemu:arg value='virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,bus=pci.0'/>"
        b"</qemu:commandline></domain>"
    )
    f = identify(synth.write(tmp_path / "d.xml", xml))["facts"]
    assert f["macs"] == ["52:54:00:00:00:01", "52:54:00:12:34:56"]
    assert f["nics"][1] == {"mac": "52:54:00:12:34:56", "type": "qemu-commandline", "model": None}
