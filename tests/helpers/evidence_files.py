"""Small synthetic evidence files for the evidence unit tests, built byte by byte
from the published layouts (no external tools, no real guest).

Example::

    path = write(tmp_path / "net.pcap", pcap([(1700000000, 5, b"x" * 60)]))
"""

from __future__ import annotations

import struct
import uuid
from pathlib import Path


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- captures


def pcap(packets, *, order="<", nanos=False, link=1) -> bytes:
    """packets: [(seconds, fraction, payload)]."""
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, link)
    for sec, frac, data in packets:
        out += struct.pack(order + "IIII", sec, frac, len(data), len(data)) + data
    return out


def _block(btype: int, body: bytes, order="<") -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(order + "II", btype, n) + body + struct.pack(order + "I", n)


def pcapng(packets, *, tsresol: int | None = None, link=1, simple=0) -> bytes:
    """packets: [raw timestamp ticks, payload]; one interface."""
    shb = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    opts = b""
    if tsresol is not None:
        opts = struct.pack("<HH", 9, 1) + bytes([tsresol]) + b"\0\0\0" + struct.pack("<HH", 0, 0)
    idb = _block(1, struct.pack("<HHI", link, 0, 65535) + opts)
    out = shb + idb
    for ticks, data in packets:
        out += _block(6, struct.pack("<IIIII", 0, ticks >> 32, ticks & 0xFFFFFFFF, len(data), len(data)) + data)
    for _ in range(simple):
        out += _block(3, struct.pack("<I", 4) + b"abcd")
    return out


# ---------------------------------------------------------------- disks


def mbr(partitions=((0x83, 2048, 4096),), size=1 << 20) -> bytes:
    disk = bytearray(size)
    for i, (ptype, start, count) in enumerate(partitions):
        struct.pack_into("<B3xB3xII", disk, 446 + 16 * i, 0x80 if i == 0 else 0, ptype, start, count)
    disk[510:512] = b"\x55\xaa"
    return bytes(disk)


def ext4_superblock(block_count=1024, label=b"rootfs") -> bytes:
    """1024 bytes of boot block + a superblock that passes the sanity checks."""
    sb = bytearray(1024)
    struct.pack_into("<II", sb, 0, 256, block_count)  # inodes, blocks
    struct.pack_into("<I", sb, 24, 2)  # 4 KiB blocks
    struct.pack_into("<H", sb, 56, 0xEF53)
    struct.pack_into("<I", sb, 76, 1)  # dynamic revision
    struct.pack_into("<II", sb, 92, 0x4, 0x40)  # has_journal, extents
    sb[104:120] = uuid.UUID("12345678-1234-5678-1234-567812345678").bytes
    sb[120 : 120 + len(label)] = label
    return bytes(1024) + bytes(sb)


def gpt(size=1 << 20) -> bytes:
    disk = bytearray(mbr(((0xEE, 1, (size // 512) - 1),), size))
    hdr = bytearray(92)
    hdr[:8] = b"EFI PART"
    struct.pack_into("<QII", hdr, 72, 2, 128, 128)  # entries at LBA 2, 128 of 128 bytes
    disk[512:604] = hdr
    entry = bytearray(128)
    entry[:16] = uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4").bytes_le  # Linux filesystem
    entry[16:32] = uuid.uuid4().bytes
    struct.pack_into("<QQ", entry, 32, 2048, 2047 + 1024)
    name = "root".encode("utf-16-le")
    entry[56 : 56 + len(name)] = name
    disk[1024:1152] = entry
    return bytes(disk)


VMDK_DESCRIPTOR = """# Disk DescriptorFile
version=1
CID=fffffffe
parentCID=ffffffff
createType="monolithicFlat"

# Extent description
RW 2048 FLAT "disk-flat.vmdk" 0

ddb.virtualHWVersion = "4"
"""


def vmdk_sparse(capacity_sectors=2048) -> bytes:
    hdr = b"KDMV" + struct.pack("<IIQQQQ", 1, 3, capacity_sectors, 128, 0, 0) + bytes(512)
    return hdr


def _vhdx_parent_locator(entries: dict) -> bytes:
    """MS-VHDX parent locator: type GUID, key/value count, then (key, value) UTF-16LE pairs."""
    kind = uuid.UUID("b04aefb7-d19e-4a81-b789-25b8e9445913").bytes_le
    table, blob = b"", b""
    base = 20 + 12 * len(entries)
    for key, value in entries.items():
        k, v = key.encode("utf-16-le"), value.encode("utf-16-le")
        table += struct.pack("<IIHH", base + len(blob), base + len(blob) + len(k), len(k), len(v))
        blob += k + v
    return kind + struct.pack("<HH", 0, len(entries)) + table + blob


def vhdx(virtual_size=10 << 20, block_size=32 << 20, parent: dict | None = None) -> bytes:
    """File identifier, region table at 192 KiB, metadata region at 1 MiB; ``parent``: a
    differencing disk's parent locator entries (relative_path, absolute_win32_path, ...)."""
    data = bytearray(1 << 20 | 64 << 10)
    data[:8] = b"vhdxfile"
    creator = "synth".encode("utf-16-le")
    data[8 : 8 + len(creator)] = creator
    meta_region = uuid.UUID("8b7ca206-4790-4b9a-b8fe-575f050f886e").bytes_le
    struct.pack_into("<4sII4x", data, 192 << 10, b"regi", 0, 1)
    struct.pack_into("<16sQII", data, (192 << 10) + 16, meta_region, 1 << 20, 64 << 10, 1)
    meta = 1 << 20
    items = [
        (uuid.UUID("2fa54224-cd1b-4876-b211-5dbed83bf4b8").bytes_le, struct.pack("<Q", virtual_size)),
        (uuid.UUID("caa16737-fa36-4d43-b3b6-33f0aa44e76b").bytes_le, struct.pack("<II", block_size, 2 * bool(parent))),
    ]
    if parent:
        items.append((uuid.UUID("a8d35f2d-b30b-454d-abf7-d3d84834ab0c").bytes_le, _vhdx_parent_locator(parent)))
    struct.pack_into("<8sHH", data, meta, b"metadata", 0, len(items))
    off = 64 << 10 >> 1
    for i, (guid, value) in enumerate(items):
        struct.pack_into("<16sIII4x", data, meta + 32 + 32 * i, guid, off, len(value), 0)
        data[meta + off : meta + off + len(value)] = value
        off += -(-len(value) // 64) * 64
    return bytes(data)


def vdi(virtual_size=8 << 20) -> bytes:
    h = bytearray(512)
    text = b"<<< Oracle VM VirtualBox Disk Image >>>\n"
    h[: len(text)] = text
    struct.pack_into("<III", h, 0x40, 0xBEDA107F, 0x00010001, 0x190)
    struct.pack_into("<I", h, 0x4C, 1)
    struct.pack_into("<Q", h, 0x170, virtual_size)
    struct.pack_into("<I", h, 0x178, 1 << 20)
    h[0x188:0x198] = uuid.UUID("11111111-2222-3333-4444-555555555555").bytes_le
    return bytes(h)


def qcow2(virtual_size=64 << 20, backing: str | None = None, backing_format: str | None = None, snapshots=()) -> bytes:
    """A qcow2 v3 header (no data clusters) with optional backing file and
    snapshot table entries ``(id, name, vm_state_size)``."""
    cluster_bits = 16
    ext = b""
    if backing_format:
        fmt = backing_format.encode()
        ext += struct.pack(">II", 0xE2792ACA, len(fmt)) + fmt + b"\0" * (-len(fmt) % 8)
    ext += struct.pack(">II", 0, 0)
    backing_bytes = backing.encode() if backing else b""
    backing_off = 104 + len(ext) if backing else 0
    snap_off = 1 << cluster_bits if snapshots else 0
    hdr = struct.pack(
        ">4sIQIIQIIQQIIQQQQII",
        b"QFI\xfb",
        3,
        backing_off,
        len(backing_bytes),
        cluster_bits,
        virtual_size,
        0,
        1,
        3 << cluster_bits,
        2 << cluster_bits,
        1,
        len(snapshots),
        snap_off,
        0,
        0,
        0,
        4,
        104,
    )
    body = bytearray(hdr + ext + backing_bytes)
    body += bytes((4 << cluster_bits) - len(body))
    table = b""
    for sid, name, vm_state in snapshots:
        sid_b, name_b = sid.encode(), name.encode()
        extra = struct.pack(">QQ", vm_state, virtual_size)
        entry = (
            struct.pack(
                ">QIHHIIQII",
                3 << cluster_bits,
                1,
                len(sid_b),
                len(name_b),
                1700000000,
                0,
                0,
                vm_state & 0xFFFFFFFF,
                len(extra),
            )
            + extra
            + sid_b
            + name_b
        )
        table += entry + b"\0" * (-len(entry) % 8)
    if snapshots:
        body[snap_off : snap_off + len(table)] = table
    return bytes(body)


def lime(ranges=((0, 0x2000),)) -> bytes:
    out = b""
    for start, length in ranges:
        out += struct.pack("<IIQQQ", 0x4C694D45, 1, start, start + length - 1, 0) + b"\xab" * length
    return out


# ---------------------------------------------------------------- libvirt XML


def domain_xml(
    name="web01",
    uuid_="c7a5fdbd-cdaf-9455-926a-d65c16db1809",
    disks=(("vda", "/var/lib/libvirt/images/web01.qcow2", "qcow2"),),
    macs=("52:54:00:12:34:56",),
    memory=("MiB", 320),
) -> bytes:
    disk_xml = "".join(
        f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/><source file='{src}'/>"
        f"<target dev='{dev}' bus='virtio'/></disk>"
        for dev, src, fmt in disks
    )
    nic_xml = "".join(f"<interface type='user'><mac address='{m}'/><model type='virtio'/></interface>" for m in macs)
    return (
        f"<domain type='qemu'><name>{name}</name><uuid>{uuid_}</uuid>"
        f"<memory unit='{memory[0]}'>{memory[1]}</memory><vcpu placement='static'>1</vcpu>"
        f"<os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type></os>"
        f"<devices>{disk_xml}{nic_xml}</devices></domain>"
    ).encode()


def snapshot_xml(
    name="snap1",
    state="paused",
    memory=("external", "/var/lib/libvirt/qemu/snap1.mem"),
    disks=(("vda", "external", "/var/lib/libvirt/images/web01.snap1"),),
    domain: bytes | None = None,
) -> bytes:
    mem = f"<memory snapshot='{memory[0]}'" + (f" file='{memory[1]}'/>" if memory[1] else "/>")
    disk_xml = "".join(
        f"<disk name='{n}' snapshot='{mode}' type='file'><driver type='qcow2'/>"
        + (f"<source file='{src}'/>" if src else "")
        + "</disk>"
        for n, mode, src in disks
    )
    return (
        (
            f"<?xml version='1.0'?>\n<!-- written by virsh -->\n"
            f"<domainsnapshot><name>{name}</name><state>{state}</state>"
            f"<creationTime>1700000000</creationTime>{mem}<disks>{disk_xml}</disks>"
        ).encode()
        + (domain or domain_xml())
        + b"</domainsnapshot>"
    )


# ---------------------------------------------------------------- memory containers


def libvirt_save(xml: bytes, *, compression=1, complete=True, was_running=1, stream=b"\x1f\x8b" + bytes(30)) -> bytes:
    """A libvirt save image header + domain XML; the stream is opaque here."""
    area = xml + b"\0" + bytes(-(len(xml) + 1) % 64)
    magic = b"LibvirtQemudSave" if complete else b"LibvirtQemudPart"
    hdr = magic + struct.pack("<5I", 2, len(area), was_running, compression, 0) + bytes(0x5C - 36)
    return hdr + area + stream
