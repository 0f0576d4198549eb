"""Disk images other than qcow2: raw disks, VMDK, VHDX, VDI.

Identification only: enough of each header to name the format and the facts an
investigator checks first (size, parent/extent files). Reading the disk's
contents is dissect's job. qcow2 is parsed once, in ``toolkit.memory.qcow2``,
because its internal snapshots carry memory too.

A raw disk has no header of its own, so it is recognised by what a disk
starts with: an MBR or GPT partition table, or a filesystem signature at
offset 0. A file with none of these is not called a disk.

Example::

    >>> detect(b"vhdxfile" + bytes(100))
    'vhdx'
"""

from __future__ import annotations

import re
import struct
import uuid

from toolkit.errors import EvidenceError

VDI_SIGNATURE = 0xBEDA107F
_VMDK_TEXT = re.compile(rb"\A(?:\xef\xbb\xbf)?\s*#\s*Disk DescriptorFile", re.I)


def detect(head: bytes) -> str | None:
    """``vmdk`` / ``vhdx`` / ``vdi`` / ``raw-disk`` from the first bytes, else None.

    Must run after every format with a magic of its own: a raw disk is the
    fallback for "looks like the start of a disk".
    """
    if head[:4] in (b"KDMV", b"COWD") or _VMDK_TEXT.match(head):
        return "vmdk"
    if head[:8] == b"vhdxfile":
        return "vhdx"
    if len(head) >= 0x44 and struct.unpack_from("<I", head, 0x40)[0] == VDI_SIGNATURE:
        return "vdi"
    if raw_layout(head):
        return "raw-disk"
    return None


# ---------------------------------------------------------------- raw disks


def _filesystem(block: bytes) -> dict | None:
    """The filesystem whose superblock/boot sector starts ``block``, if any."""
    if len(block) >= 1024 + 264 and block[1024 + 56 : 1024 + 58] == b"\x53\xef":
        sb = block[1024:]
        log_block, rev = struct.unpack_from("<I", sb, 24)[0], struct.unpack_from("<I", sb, 76)[0]
        inodes = struct.unpack_from("<I", sb, 0)[0]
        # the magic alone is two bytes: insist on a sane superblock around it
        if log_block <= 6 and rev <= 1 and inodes > 0:
            compat, incompat = struct.unpack_from("<II", sb, 92)
            name = "ext4" if incompat & 0x2C0 else "ext3" if compat & 0x4 else "ext2"
            blocks = struct.unpack_from("<I", sb, 4)[0]
            if incompat & 0x80:  # 64bit: high half of the block count
                blocks |= struct.unpack_from("<I", sb, 0x150)[0] << 32
            return {
                "filesystem": name,
                "block_size": 1024 << log_block,
                "fs_size": blocks * (1024 << log_block),
                "fs_uuid": str(uuid.UUID(bytes=bytes(sb[104:120]))),
                "fs_label": bytes(sb[120:136]).split(b"\0", 1)[0].decode("utf-8", "replace"),
            }
    if block[:4] == b"XFSB":
        return {"filesystem": "xfs"}
    if len(block) >= 512 and block[510:512] == b"\x55\xaa":
        if block[3:11] == b"NTFS    ":
            return {"filesystem": "ntfs"}
        if block[82:87] == b"FAT32" or block[54:59] in (b"FAT12", b"FAT16"):
            return {"filesystem": "fat"}
    if block[512:520] == b"LABELONE":
        return {"filesystem": "lvm2-pv"}
    return None


def _mbr(head: bytes) -> list[dict] | None:
    if len(head) < 512 or head[510:512] != b"\x55\xaa":
        return None
    parts = []
    for i in range(4):
        status, ptype, start, count = struct.unpack_from("<B3xB3xII", head, 446 + 16 * i)
        if status not in (0, 0x80):
            return None
        if ptype:
            if start == 0 or count == 0:
                return None
            parts.append({"index": i + 1, "type": f"0x{ptype:02x}", "start": start * 512, "size": count * 512})
    return parts or None


def raw_layout(head: bytes) -> dict | None:
    """Partition table and/or filesystem facts if ``head`` starts like a disk."""
    for sector in (512, 4096):
        if head[sector : sector + 8] == b"EFI PART":
            return {"partition_table": "gpt", "sector_size": sector}
    parts = _mbr(head)
    fs = _filesystem(head)
    if parts and not fs:  # a FAT/NTFS boot sector has 55AA too; its fields are not entries
        if any(p["type"] == "0xee" for p in parts):
            return None  # protective MBR without a GPT header: damaged, not a disk we can name
        return {"partition_table": "mbr", "partitions": parts}
    if fs:
        return {"partition_table": None, **fs}
    return None


def _gpt_partitions(f, sector: int) -> list[dict]:
    f.seek(sector)
    hdr = f.read(92)
    entries_lba, count, esize = struct.unpack_from("<QII", hdr, 72)
    if not 128 <= esize <= 4096 or count > 1024:
        return []
    f.seek(entries_lba * sector)
    table = f.read(count * esize)
    parts = []
    for i in range(len(table) // esize):
        e = table[i * esize : (i + 1) * esize]
        if e[:16] == bytes(16):
            continue
        first, last = struct.unpack_from("<QQ", e, 32)
        parts.append(
            {
                "index": i + 1,
                "type": str(uuid.UUID(bytes_le=bytes(e[:16]))),
                "name": e[56:128].decode("utf-16-le", "replace").rstrip("\0"),
                "start": first * sector,
                "size": (last - first + 1) * sector,
            }
        )
    return parts


def probe_raw(path, head: bytes) -> dict:
    """Facts of a raw disk; the first partition's filesystem too when MBR/GPT."""
    facts = dict(raw_layout(head) or {})
    if not facts:
        raise EvidenceError(path, "no partition table or filesystem signature: not a raw disk")
    with open(path, "rb") as f:
        if facts["partition_table"] == "gpt":
            facts["partitions"] = _gpt_partitions(f, facts["sector_size"])
        for part in facts.get("partitions", []):
            f.seek(part["start"])
            fs = _filesystem(f.read(2048))
            part["filesystem"] = fs["filesystem"] if fs else None
    return facts


# ---------------------------------------------------------------- VMDK


def parse_vmdk_descriptor(text: str) -> dict:
    """Facts of VMDK descriptor text (raw strings as found).

    >>> parse_vmdk_descriptor('createType="monolithicFlat"\\nRW 2048 FLAT "d-flat.vmdk" 0\\n')["extents"]
    [{'access': 'RW', 'sectors': 2048, 'type': 'FLAT', 'file': 'd-flat.vmdk', 'offset': 0}]
    """
    keys, extents = {}, []
    for line in text.splitlines():
        line = line.strip()
        # access, size in sectors, type, file name, start offset in the file (sectors; FLAT only)
        m = re.match(r'(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\w+)(?:\s+"([^"]*)")?(?:\s+(\d+))?', line)
        if m:
            extents.append({"access": m[1], "sectors": int(m[2]), "type": m[3], "file": m[4], "offset": int(m[5] or 0)})
        elif "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            keys[k.strip()] = v.strip().strip('"')
    return {
        "create_type": keys.get("createType"),
        "cid": keys.get("CID"),
        "parent_cid": keys.get("parentCID"),
        "parent_file": keys.get("parentFileNameHint"),
        "extents": extents,
        "virtual_size": sum(e["sectors"] for e in extents) * 512,
    }


def probe_vmdk(path, head: bytes) -> dict:
    if head[:4] == b"COWD":
        return {"variant": "esx-cowd"}
    if head[:4] != b"KDMV":
        if len(head) >= 64 << 10 and b"\0" in head:
            raise EvidenceError(path, "VMDK descriptor followed by binary data: not a descriptor file")
        return {"variant": "descriptor", **parse_vmdk_descriptor(head.decode("utf-8", "replace"))}
    if len(head) < 77:
        raise EvidenceError(path, f"truncated VMDK sparse header ({len(head)} of 77 bytes)")
    version, _flags, capacity, grain, desc_off, desc_size = struct.unpack_from("<IIQQQQ", head, 4)
    facts = {"variant": "sparse", "version": version, "virtual_size": capacity * 512, "grain_size": grain * 512}
    if desc_off and desc_size and desc_size < 2048:
        with open(path, "rb") as f:
            f.seek(desc_off * 512)
            desc = parse_vmdk_descriptor(f.read(desc_size * 512).split(b"\0", 1)[0].decode("utf-8", "replace"))
        facts.update({k: desc[k] for k in ("create_type", "cid", "parent_cid", "parent_file")})
    return facts


# ---------------------------------------------------------------- VHDX

_META_REGION = uuid.UUID("8b7ca206-4790-4b9a-b8fe-575f050f886e").bytes_le
_VIRTUAL_SIZE = uuid.UUID("2fa54224-cd1b-4876-b211-5dbed83bf4b8").bytes_le
_FILE_PARAMS = uuid.UUID("caa16737-fa36-4d43-b3b6-33f0aa44e76b").bytes_le
_PARENT_LOCATOR = uuid.UUID("a8d35f2d-b30b-454d-abf7-d3d84834ab0c").bytes_le


def probe_vhdx(path, head: bytes) -> dict:
    facts = {"creator": head[8:520].decode("utf-16-le", "replace").split("\0", 1)[0]}
    with open(path, "rb") as f:
        f.seek(192 << 10)  # region table (a copy at 256 KiB)
        regions = f.read(64 << 10)
        if len(regions) < 16 or regions[:4] != b"regi":
            raise EvidenceError(path, "VHDX without a region table at 192 KiB (truncated or damaged)")
        count = min(struct.unpack_from("<I", regions, 8)[0], 2047)
        meta = None
        for i in range(count):
            guid, off, length = struct.unpack_from("<16sQI", regions, 16 + 32 * i)
            if guid == _META_REGION:
                meta = (off, length)
        if meta is None:
            raise EvidenceError(path, "VHDX region table has no metadata region")
        f.seek(meta[0])
        table = f.read(min(meta[1], 1 << 20))
    if table[:8] != b"metadata":
        raise EvidenceError(path, "VHDX metadata region missing (truncated or damaged)")
    items = {}
    for i in range(min(struct.unpack_from("<H", table, 10)[0], 2047)):
        guid, off, length = struct.unpack_from("<16sII", table, 32 + 32 * i)
        items[guid] = table[off : off + length]
    if len(items.get(_VIRTUAL_SIZE, b"")) >= 8:
        facts["virtual_size"] = struct.unpack_from("<Q", items[_VIRTUAL_SIZE])[0]
    if len(items.get(_FILE_PARAMS, b"")) >= 8:
        block, flags = struct.unpack_from("<II", items[_FILE_PARAMS])
        facts["block_size"], facts["has_parent"] = block, bool(flags & 2)
    if _PARENT_LOCATOR in items:
        facts["parent_paths"] = _vhdx_parent(items[_PARENT_LOCATOR])
    return facts


def _vhdx_parent(loc: bytes) -> dict:
    out = {}
    if len(loc) < 20:
        return out
    for i in range(struct.unpack_from("<H", loc, 18)[0]):
        if 20 + 12 * (i + 1) > len(loc):
            break
        koff, voff, klen, vlen = struct.unpack_from("<IIHH", loc, 20 + 12 * i)
        key = loc[koff : koff + klen].decode("utf-16-le", "replace")
        out[key] = loc[voff : voff + vlen].decode("utf-16-le", "replace")
    return out


# ---------------------------------------------------------------- VDI

_VDI_TYPES = {1: "dynamic", 2: "fixed", 3: "undo", 4: "diff"}


def probe_vdi(path, head: bytes) -> dict:
    if len(head) < 0x1C8:
        raise EvidenceError(path, f"truncated VDI header ({len(head)} of 456 bytes)")
    version = struct.unpack_from("<I", head, 0x44)[0]
    if version >> 16 != 1:
        return {"version": f"{version >> 16}.{version & 0xFFFF}"}  # pre-1.1 layouts differ
    image_type = struct.unpack_from("<I", head, 0x4C)[0]
    parent = bytes(head[0x1A8:0x1B8])
    return {
        "version": f"{version >> 16}.{version & 0xFFFF}",
        "image_type": _VDI_TYPES.get(image_type, image_type),
        "virtual_size": struct.unpack_from("<Q", head, 0x170)[0],
        "block_size": struct.unpack_from("<I", head, 0x178)[0],
        "uuid": str(uuid.UUID(bytes_le=bytes(head[0x188:0x198]))),
        "parent_uuid": str(uuid.UUID(bytes_le=parent)) if any(parent) else None,
    }
