"""ext2/3/4 metadata read straight from a guest disk stream: inodes, extents, directories.

The snapshot diff needs what dissect.extfs does not offer in bulk: which inode
owns a given block, and a cheap name map. This module parses only metadata
(superblock, group descriptors, inode tables, extent trees, directory blocks)
from a ``read(offset, length)`` function, so one state of a disk can reuse
another's parsed inode tables wherever the overlay did not touch them.

Example::

    fs = open_ext(read, fs_offset=0)
    node = read_inode(fs, 2)      # the root directory
    entries = read_dir(fs, node)  # [(name_bytes, inode, file_type), ...]
"""

from __future__ import annotations

import struct

EXT_MAGIC = 0xEF53
INCOMPAT_FILETYPE = 0x2
INCOMPAT_META_BG = 0x10
INCOMPAT_EXTENTS = 0x40
INCOMPAT_64BIT = 0x80
INCOMPAT_INLINE_DATA = 0x8000
RO_COMPAT_BIGALLOC = 0x200
FL_EXTENTS = 0x80000
FL_INLINE = 0x10000000
EXTENT_MAGIC = 0xF30A
S_IFMT, S_IFDIR, S_IFREG, S_IFLNK = 0o170000, 0o040000, 0o100000, 0o120000


class NotMappable(Exception):
    """This filesystem cannot be mapped block-to-inode here (caller falls back to a full walk)."""


def probe_ext(read, fs_offset: int) -> bool:
    """True when an ext superblock magic sits at fs_offset + 1024."""
    raw = read(fs_offset + 1024 + 56, 2)
    return len(raw) == 2 and struct.unpack("<H", raw)[0] == EXT_MAGIC


def open_ext(read, fs_offset: int = 0) -> dict:
    """Parse the superblock and group descriptors; raise NotMappable for layouts not handled."""
    sb = read(fs_offset + 1024, 1024)
    if len(sb) < 1024 or struct.unpack_from("<H", sb, 56)[0] != EXT_MAGIC:
        raise NotMappable("no ext superblock")
    (inodes_count, blocks_lo, _, _, _, first_data_block, log_bs, log_cs, blocks_per_group, _, inodes_per_group) = (
        struct.unpack_from("<11I", sb, 0)
    )
    rev = struct.unpack_from("<I", sb, 76)[0]
    first_ino, inode_size = struct.unpack_from("<IH", sb, 84) if rev else (11, 128)
    compat, incompat, ro_compat = struct.unpack_from("<3I", sb, 92)
    desc_size = struct.unpack_from("<H", sb, 254)[0] if incompat & INCOMPAT_64BIT else 32
    blocks_hi = struct.unpack_from("<I", sb, 336)[0] if incompat & INCOMPAT_64BIT else 0
    if incompat & INCOMPAT_META_BG:
        raise NotMappable("meta_bg group descriptor layout")
    if incompat & INCOMPAT_INLINE_DATA:
        raise NotMappable("inline_data (file data inside inodes)")
    if ro_compat & RO_COMPAT_BIGALLOC or log_bs != log_cs:
        raise NotMappable("bigalloc clusters")
    if not inodes_per_group or not blocks_per_group or log_bs > 6:
        raise NotMappable("implausible superblock")
    bs = 1024 << log_bs
    blocks = (blocks_hi << 32) | blocks_lo
    ngroups = -(-(blocks - first_data_block) // blocks_per_group)
    gdt = read(fs_offset + (first_data_block + 1) * bs, ngroups * desc_size)
    groups = []
    for g in range(ngroups):
        o = g * desc_size
        itable = struct.unpack_from("<I", gdt, o + 8)[0]
        unused = struct.unpack_from("<H", gdt, o + 28)[0]
        flags = struct.unpack_from("<H", gdt, o + 18)[0]
        if desc_size >= 64:
            itable |= struct.unpack_from("<I", gdt, o + 0x28)[0] << 32
            unused |= struct.unpack_from("<H", gdt, o + 0x32)[0] << 16
        used = 0 if flags & 0x1 else inodes_per_group - (unused if ro_compat & 0x410 else 0)
        groups.append({"itable": itable, "used": max(0, min(used, inodes_per_group))})
    return {
        "read": read,
        "offset": fs_offset,
        "block_size": bs,
        "blocks": blocks,
        "inodes_per_group": inodes_per_group,
        "inode_size": inode_size,
        "first_ino": first_ino,
        "inodes_count": inodes_count,
        "filetype": bool(incompat & INCOMPAT_FILETYPE),
        "groups": groups,
        "inodes_per_block": bs // inode_size,
    }


def itable_blocks(fs: dict) -> dict[int, tuple[int, int]]:
    """Inode-table block -> (first inode number in it, inodes in it), used part only."""
    out = {}
    ipb = fs["inodes_per_block"]
    for g, grp in enumerate(fs["groups"]):
        for k in range(-(-grp["used"] // ipb)):
            first = g * fs["inodes_per_group"] + k * ipb + 1
            out[grp["itable"] + k] = (first, min(ipb, grp["used"] - k * ipb))
    return out


def _ts(sec: int, extra: int | None) -> int:
    """Nanoseconds since the epoch from ext4's 32-bit seconds plus the extra word."""
    if extra is None:
        return struct.unpack("<i", struct.pack("<I", sec))[0] * 10**9
    return (struct.unpack("<i", struct.pack("<I", sec))[0] + ((extra & 3) << 32)) * 10**9 + (extra >> 2)


def parse_inode(fs: dict, ino: int, raw: bytes) -> dict | None:
    """One raw inode record -> dict, or None when the slot is unused."""
    mode, uid_lo, size_lo, atime, ctime, mtime, dtime, gid_lo, links = struct.unpack_from("<HHIIIIIHH", raw, 0)
    if not mode or not links:
        return None
    flags = struct.unpack_from("<I", raw, 32)[0]
    acl_lo, size_hi = struct.unpack_from("<II", raw, 104)
    acl_hi, uid_hi, gid_hi = struct.unpack_from("<HHH", raw, 118)
    extra = struct.unpack_from("<H", raw, 128)[0] if len(raw) > 128 else 0

    def ex(off: int) -> int | None:
        # fields past 128 bytes exist only when i_extra_isize covers them
        return struct.unpack_from("<I", raw, off)[0] if len(raw) >= off + 4 and 128 + extra >= off + 4 else None

    return {
        "ino": ino,
        "mode": mode,
        "uid": uid_lo | uid_hi << 16,
        "gid": gid_lo | gid_hi << 16,
        "size": size_lo | size_hi << 32,
        "links": links,
        "flags": flags,
        "atime": _ts(atime, ex(140)),
        "ctime": _ts(ctime, ex(132)),
        "mtime": _ts(mtime, ex(136)),
        "btime": _ts(struct.unpack_from("<I", raw, 144)[0], ex(148)) if ex(144) is not None else None,
        "xattr_block": acl_lo | acl_hi << 32,
        "i_block": bytes(raw[40:100]),
        "raw": bytes(raw[:128]),
    }


def read_itable_block(fs: dict, block: int, first: int, count: int) -> dict[int, dict]:
    """Every in-use inode of one inode-table block."""
    isz = fs["inode_size"]
    buf = fs["read"](fs["offset"] + block * fs["block_size"], count * isz)
    out = {}
    for k in range(count):
        node = parse_inode(fs, first + k, buf[k * isz : (k + 1) * isz])
        if node:
            out[first + k] = node
    return out


def read_inode(fs: dict, ino: int) -> dict | None:
    g, idx = divmod(ino - 1, fs["inodes_per_group"])
    isz = fs["inode_size"]
    block = fs["groups"][g]["itable"] + idx * isz // fs["block_size"]
    off = fs["offset"] + block * fs["block_size"] + (idx * isz) % fs["block_size"]
    return parse_inode(fs, ino, fs["read"](off, isz))


def _extent_node(fs: dict, buf: bytes, runs: list, meta: list, depth_left: int) -> None:
    magic, entries, _, depth = struct.unpack_from("<HHHH", buf, 0)
    if magic != EXTENT_MAGIC or depth_left < 0:
        raise NotMappable("bad extent header")
    for k in range(entries):
        o = 12 + 12 * k
        if depth == 0:
            lblock, length, start_hi, start_lo = struct.unpack_from("<IHHI", buf, o)
            unwritten = length > 32768
            runs.append((lblock, (start_hi << 32) | start_lo, length - 32768 if unwritten else length, unwritten))
        else:
            _, leaf_lo, leaf_hi = struct.unpack_from("<IIH", buf, o)
            child = (leaf_hi << 32) | leaf_lo
            meta.append(child)
            _extent_node(
                fs, fs["read"](fs["offset"] + child * fs["block_size"], fs["block_size"]), runs, meta, depth_left - 1
            )


def _indirect(fs: dict, block: int, level: int, runs: list, meta: list, lblock: int, remaining: int) -> int:
    per = fs["block_size"] // 4
    span = per**level
    if block == 0:
        return lblock + span
    meta.append(block)
    ptrs = struct.unpack(f"<{per}I", fs["read"](fs["offset"] + block * fs["block_size"], fs["block_size"]))
    for p in ptrs:
        if lblock >= remaining:
            break
        if level == 1:
            if p:
                runs.append((lblock, p, 1, False))
            lblock += 1
        else:
            lblock = _indirect(fs, p, level - 1, runs, meta, lblock, remaining)
    return lblock


def block_map(fs: dict, node: dict) -> tuple[list, list]:
    """(data runs [(logical, physical, count, unwritten)], metadata blocks) of one inode."""
    runs: list = []
    meta: list = [node["xattr_block"]] if node["xattr_block"] else []
    kind = node["mode"] & S_IFMT
    if node["flags"] & FL_INLINE or (kind == S_IFLNK and node["size"] < 60 and not node["flags"] & FL_EXTENTS):
        return runs, meta
    if kind not in (S_IFREG, S_IFDIR, S_IFLNK):
        return runs, meta  # devices, fifos, sockets own no data blocks
    if node["flags"] & FL_EXTENTS:
        _extent_node(fs, node["i_block"], runs, meta, 5)
    else:
        nblocks = -(-node["size"] // fs["block_size"])
        ptrs = struct.unpack("<15I", node["i_block"])
        for k in range(min(12, nblocks)):
            if ptrs[k]:
                runs.append((k, ptrs[k], 1, False))
        lblock = 12
        for level, p in enumerate(ptrs[12:], start=1):
            if lblock >= nblocks:
                break
            lblock = _indirect(fs, p, level, runs, meta, lblock, nblocks)
    return runs, meta


def read_content(fs: dict, node: dict, runs: list, chunk_cb) -> None:
    """Feed a file's bytes, in order, to chunk_cb (holes and unwritten extents as zeros)."""
    size, bs = node["size"], fs["block_size"]
    if node["flags"] & FL_INLINE or ((node["mode"] & S_IFMT) == S_IFLNK and not runs):
        chunk_cb(node["i_block"][:size])
        return
    pos = 0
    for lblock, pblock, count, unwritten in sorted(runs):
        start = lblock * bs
        if start >= size:
            break
        if start > pos:
            chunk_cb(b"\0" * (start - pos))
            pos = start
        want = min(count * bs, size - start)
        if unwritten:
            chunk_cb(b"\0" * want)
        else:
            step = 8 << 20
            for o in range(0, want, step):
                chunk_cb(fs["read"](fs["offset"] + pblock * bs + o, min(step, want - o)))
        pos = start + want
    if pos < size:
        chunk_cb(b"\0" * (size - pos))


def read_dir(fs: dict, node: dict, runs: list) -> list[tuple[bytes, int, int]]:
    """Directory entries (raw name bytes, inode, file_type); '.' and '..' left out."""
    out = []
    bs = fs["block_size"]
    for _, pblock, count, unwritten in sorted(runs):
        if unwritten:
            continue
        buf = fs["read"](fs["offset"] + pblock * bs, count * bs)
        for base in range(0, len(buf), bs):
            o = 0
            while o + 8 <= bs:
                ino, rec_len, name_len, ftype = struct.unpack_from("<IHBB", buf, base + o)
                if rec_len < 8 or o + rec_len > bs:
                    break  # corrupt entry: stop reading this block rather than guessing
                if not fs["filetype"]:
                    name_len |= ftype << 8
                    ftype = 0
                name = buf[base + o + 8 : base + o + 8 + name_len]
                if ino and name not in (b".", b"..") and 0 < ino <= fs["inodes_count"]:
                    out.append((name, ino, ftype))
                o += rec_len
    return out
