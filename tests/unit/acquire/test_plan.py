"""The checks made before any domain is touched: which disks can be captured, flags, space, output."""

import pytest

from tests.helpers.evidence_files import domain_xml, qcow2, write
from toolkit.acquire import plan
from toolkit.acquire.plan import AcquireOptions
from toolkit.errors import AcquireError
from toolkit.evidence.libvirt_xml import parse_domain


def _facts(devices: str) -> dict:
    xml = f"<domain type='kvm'><name>web01</name><memory unit='MiB'>512</memory><devices>{devices}</devices></domain>"
    return parse_domain(xml.encode(), "web01.xml")


QCOW2 = (
    "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/i/top.qcow2'/>"
    "<backingStore type='file'><format type='qcow2'/><source file='/i/base.qcow2'/><backingStore/></backingStore>"
    "<target dev='vda'/></disk>"
)
CDROM = (
    "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='/iso/d.iso'/>"
    "<target dev='hdc'/><readonly/></disk>"
)
RAW = (
    "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/i/r.img'/>"
    "<target dev='vdb'/></disk>"
)
BLOCK = (
    "<disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/vg/lv'/>"
    "<target dev='vdc'/></disk>"
)


def test_a_qcow2_disk_is_captured_with_its_chain_and_media_are_left_out():
    disks, left_out = plan.capture_disks("web01", _facts(QCOW2 + CDROM), "external")
    assert disks == [{"target": "vda", "format": "qcow2", "chain": ["/i/top.qcow2", "/i/base.qcow2"]}]
    assert [d["target"] for d in left_out] == ["hdc"]


@pytest.mark.parametrize(
    "devices, mode, needle",
    [
        (QCOW2 + RAW, "external", "disk vdb (/i/r.img) is raw, not qcow2"),
        (RAW, "copy", "is raw, not qcow2"),
        (BLOCK, "external", "disk vdc is a block disk"),
        ("", "external", "the domain has no disk to capture; use --disk none"),
        (CDROM, "copy", "the domain has no disk to capture"),
    ],
)
def test_disks_that_cannot_be_captured_are_refused(devices, mode, needle):
    with pytest.raises(AcquireError) as err:
        plan.capture_disks("web01", _facts(devices), mode)
    assert needle in str(err.value) and str(err.value).startswith("web01: ")


def test_memory_only_takes_any_disk():
    disks, left_out = plan.capture_disks("web01", _facts(RAW + BLOCK), "none")
    assert disks == [] and {d["target"] for d in left_out} == {"vdb", "vdc"}


@pytest.mark.parametrize(
    "options, needle",
    [
        (AcquireOptions(memory="lime"), "--memory 'lime'"),
        (AcquireOptions(disk="snapshot"), "--disk 'snapshot'"),
        (AcquireOptions(live=True, memory="elf"), "--live saves memory as a libvirt save image"),
        (AcquireOptions(live=True, disk="copy"), "--disk copy copies disks while the guest is paused"),
        (AcquireOptions(disk="copy", merge=True), "--merge commits the external overlay back"),
        (AcquireOptions(io_slots=0), "--io-slots"),
    ],
)
def test_flags_that_do_not_go_together(options, needle):
    with pytest.raises(AcquireError, match=needle.replace("(", r"\(")):
        plan.check_options(options)


def test_memory_format_by_mode():
    assert AcquireOptions().memory_format == "migration"
    assert AcquireOptions(memory="elf").memory_format == "elf"
    assert AcquireOptions(live=True).memory_format == "libvirt-save"


def test_qemu_owner_from_the_dac_label():
    assert plan.qemu_owner(domain_xml().decode()) is None
    xml = "<domain><seclabel type='dynamic' model='dac' relabel='yes'><label>+64055:+994</label></seclabel></domain>"
    assert plan.qemu_owner(xml) == (64055, 994)


def test_space_counts_memory_disks_and_captures(tmp_path):
    image = write(tmp_path / "disk.qcow2", qcow2() + bytes(1 << 20))
    domain = {"memory_bytes": 320 << 20, "disks": [{"chain": [str(image)]}], "netdevs": ["n0", "n1"]}
    need = plan.needed_bytes(domain, AcquireOptions(pcap_seconds=10))
    assert need == (320 << 20) + image.stat().st_size + 10 * plan.PCAP_BYTES_PER_SECOND * 2
    assert plan.check_space([domain], tmp_path / "new" / "out", AcquireOptions())["needed"] > 320 << 20
    with pytest.raises(AcquireError, match="not enough space on the output volume"):
        plan.check_space([{**domain, "memory_bytes": 1 << 62}], tmp_path / "out", AcquireOptions())


def test_output_must_be_new_or_empty(tmp_path):
    plan.check_out_dir(tmp_path / "new")
    plan.check_out_dir(tmp_path)
    (tmp_path / "memory.elf").write_bytes(b"x")
    with pytest.raises(AcquireError, match="never writes over evidence"):
        plan.check_out_dir(tmp_path)


def test_files_that_would_land_under_one_name(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one, two = write(tmp_path / "a" / "disk.qcow2", qcow2()), write(tmp_path / "b" / "disk.qcow2", qcow2())
    disks = [{"target": "vda", "chain": [str(one)]}, {"target": "vdb", "chain": [str(two)]}]
    with pytest.raises(AcquireError, match="share the name 'disk.qcow2'"):
        plan._check_files("web01", disks, {"domain.xml"})
    clash = write(tmp_path / "domain.xml", b"<domain/>")
    with pytest.raises(AcquireError, match="share the name 'domain.xml'"):
        plan._check_files("web01", [{"target": "vda", "chain": [str(clash)]}], {"domain.xml"})
    with pytest.raises(AcquireError, match="is not a file on this host"):
        plan._check_files("web01", [{"target": "vda", "chain": [str(tmp_path / "gone.qcow2")]}], set())
