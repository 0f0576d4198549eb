"""Which files differ between two states of one ext filesystem, from the blocks that may differ.

For two states of a disk that share a backing chain, only the guest ranges
one state's own qcow2 layers define can differ (``allocation``). Here they
become filesystem block numbers; the ext metadata (``extfs``) says which
inodes live in changed inode-table blocks and which inodes own changed data or
extent blocks. Only those files are compared and hashed; every unchanged
inode-table and directory block of one state is reused for the other without
reading it again. Used by the disk diff and by the linked-clone file cache.

Example::

    rows, problems = ext_diff(stream_reader(a), stream_reader(b), 0, ranges)
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left

from toolkit.engines.disk.extfs import (
    S_IFDIR,
    S_IFLNK,
    S_IFMT,
    S_IFREG,
    NotMappable,
    block_map,
    itable_blocks,
    open_ext,
    probe_ext,
    read_content,
    read_dir,
    read_itable_block,
)
from toolkit.engines.disk.walk import file_type, ts_ns
from toolkit.schemas import diagnostic


def stream_reader(stream):
    def read(offset: int, length: int) -> bytes:
        stream.seek(offset)
        return stream.read(length)

    return read


def find_ext_offsets(stream) -> list[int]:
    """Byte offsets of ext filesystems: the whole disk, or MBR/GPT partitions."""
    read = stream_reader(stream)
    if probe_ext(read, 0):
        return [0]
    try:
        from dissect.volume.disk import Disk

        parts = Disk(stream).partitions
    except Exception:  # no partition table dissect knows: no ext filesystem at a fixed offset (a probe, not a failure)
        return []
    return [p.offset for p in parts if p.offset and probe_ext(read, p.offset)]


def changed_blocks(ranges, fs_offset: int, block_size: int, nblocks: int) -> list[int]:
    out: set[int] = set()
    for s, e in ranges:
        s, e = max(s - fs_offset, 0), min(e - fs_offset, nblocks * block_size)
        if s < e:
            out.update(range(s // block_size, (e - 1) // block_size + 1))
    return sorted(out)


def _hits(sorted_blocks: list[int], start: int, count: int) -> bool:
    i = bisect_left(sorted_blocks, start)
    return i < len(sorted_blocks) and sorted_blocks[i] < start + count


def _inodes(fs: dict, changed: list[int], reuse: dict | None, reuse_fs: dict | None) -> dict:
    """All in-use inodes; blocks unchanged since ``reuse_fs`` come from ``reuse``."""
    out = {}
    reuse_blocks = itable_blocks(reuse_fs) if reuse_fs else {}
    for blk, (first, count) in itable_blocks(fs).items():
        if reuse is not None and blk in reuse_blocks and not _hits(changed, blk, 1):
            out.update({i: reuse[i] for i in range(first, first + count) if i in reuse})
        else:
            out.update(read_itable_block(fs, blk, first, count))
    return out


def ext_state(fs: dict, changed: list[int], other: dict | None) -> dict:
    """Inodes, block maps, directory listings and path maps of one state."""
    nodes = _inodes(fs, changed, other["nodes"] if other else None, other["fs"] if other else None)
    maps, listings = {}, {}
    for ino, node in nodes.items():
        if ino < fs["first_ino"] and ino not in (2, 8):
            continue  # reserved inodes (resize, quota...) are no files; 8 is the journal
        prev = other["nodes"].get(ino) if other else None
        if (
            prev is not None
            and prev == node
            and ino in other["maps"]
            and not _hits_any(changed, other["maps"][ino][1], [])
        ):
            maps[ino] = other["maps"][ino]
        else:
            try:
                maps[ino] = block_map(fs, node)
            except NotMappable:
                maps[ino] = ([], [])
    owners = set()
    for ino, (runs, meta) in maps.items():
        if _hits_any(changed, meta, runs):
            owners.add(ino)
    for ino, node in nodes.items():
        if node["mode"] & S_IFMT != S_IFDIR or ino not in maps:
            continue
        if other and ino in other["listings"] and ino not in owners and other["nodes"].get(ino) == node:
            listings[ino] = other["listings"][ino]
        else:
            listings[ino] = read_dir(fs, node, maps[ino][0])
    paths, ino_paths = {"/": 2}, {2: ["/"]}
    todo, seen = [(2, "")], {2}
    while todo:
        dino, prefix = todo.pop()
        for name, child, _ in listings.get(dino, []):
            path = prefix + "/" + name.decode("utf-8", "surrogateescape")
            paths[path] = child
            ino_paths.setdefault(child, []).append(path)
            if child in listings and child not in seen:
                seen.add(child)
                todo.append((child, path))
    return {
        "fs": fs,
        "nodes": nodes,
        "maps": maps,
        "listings": listings,
        "paths": paths,
        "ino_paths": ino_paths,
        "owners": owners,
    }


def _hits_any(changed: list[int], meta: list[int], runs: list) -> bool:
    return any(_hits(changed, b, 1) for b in meta) or any(_hits(changed, p, n) for _, p, n, _ in runs)


def _sha(state: dict, ino: int, max_size: int | None) -> str | None:
    node = state["nodes"][ino]
    if node["mode"] & S_IFMT != S_IFREG or (max_size is not None and node["size"] > max_size):
        return None
    h = hashlib.sha256()
    read_content(state["fs"], node, state["maps"][ino][0], h.update)
    return h.hexdigest()


def _link(state: dict, ino: int) -> bytes:
    chunks: list[bytes] = []
    read_content(state["fs"], state["nodes"][ino], state["maps"][ino][0], chunks.append)
    return b"".join(chunks)


def content_may_differ(sa: dict, sb: dict, ia: int, ib: int, changed: list[int]) -> bool:
    """False when the file provably has the same bytes in both states.

    Same block map and size, and every block of it that lies in a changed
    cluster reads the same on both sides: a neighbour's write that shares a
    qcow2 cluster with this file then costs two block reads, not two hashes.
    """
    na, nb = sa["nodes"][ia], sb["nodes"][ib]
    runs_a, runs_b = sa["maps"][ia][0], sb["maps"][ib][0]
    if na["size"] != nb["size"] or runs_a != runs_b or na["flags"] != nb["flags"]:
        return True
    fs_a, fs_b, bs = sa["fs"], sb["fs"], sb["fs"]["block_size"]
    for _, pblock, count, unwritten in runs_b:
        if unwritten:
            continue
        i = bisect_left(changed, pblock)
        while i < len(changed) and changed[i] < pblock + count:
            off = fs_b["offset"] + changed[i] * bs
            if fs_a["read"](off, bs) != fs_b["read"](off, bs):
                return True
            i += 1
    return False


def ext_diff(
    read_a,
    read_b,
    fs_offset: int,
    ranges,
    *,
    prefix: str = "",
    max_size: int | None = None,
    method: str = "allocated-clusters",
) -> tuple[list[dict], list[dict]]:
    """Diff rows for one ext filesystem given the guest ranges that may differ."""
    fa, fb = open_ext(read_a, fs_offset), open_ext(read_b, fs_offset)
    if fa["block_size"] != fb["block_size"] or [g["itable"] for g in fa["groups"]] != [
        g["itable"] for g in fb["groups"]
    ]:
        raise NotMappable("the two states have different inode-table layouts (resized or re-created fs)")
    changed = changed_blocks(ranges, fs_offset, fb["block_size"], max(fa["blocks"], fb["blocks"]))
    sb = ext_state(fb, changed, None)
    sa = ext_state(fa, changed, sb)
    itb = {**itable_blocks(fa), **itable_blocks(fb)}
    cand = set(sa["owners"]) | set(sb["owners"])
    for blk in changed:
        if blk in itb:
            first, count = itb[blk]
            cand.update(range(first, first + count))
    cand = {i for i in cand if i == 2 or i >= fb["first_ino"]}
    affected: set[str] = set()
    moved_dirs = []
    for ino in cand:
        pa, pb = sa["ino_paths"].get(ino, []), sb["ino_paths"].get(ino, [])
        affected.update(pa, pb)
        if ino in sa["listings"] or ino in sb["listings"]:
            if sorted(pa) != sorted(pb):
                moved_dirs += pa + pb
    for d in moved_dirs:  # a moved directory moves every path beneath it
        for paths in (sa["paths"], sb["paths"]):
            affected.update(p for p in paths if p.startswith(d.rstrip("/") + "/"))
    rows = []
    for path in sorted(affected):
        ia, ib = sa["paths"].get(path), sb["paths"].get(path)
        na = sa["nodes"].get(ia) if ia else None
        nb = sb["nodes"].get(ib) if ib else None
        if na is None and nb is None:
            continue
        row = {"path": prefix + path if prefix else path, "method": method}
        for side, ino, node in (("a", ia, na), ("b", ib, nb)):
            if node is not None:
                row.update(
                    {
                        f"inode_{side}": ino,
                        f"size_{side}": node["size"],
                        f"mode_{side}": node["mode"] & 0o7777,
                        f"uid_{side}": node["uid"],
                        f"gid_{side}": node["gid"],
                        f"mtime_{side}": ts_ns(node["mtime"]),
                    }
                )
        kinds = {file_type(n["mode"]) for n in (na, nb) if n is not None}
        row["type"] = "/".join(sorted(kinds))
        if na is None or nb is None:
            row["change"] = "added" if na is None else "removed"
            side, st, ino = ("b", sb, ib) if na is None else ("a", sa, ia)
            row[f"sha256_{side}"] = _sha(st, ino, max_size)
            rows.append(row)
            continue
        what = []
        if na["mode"] & S_IFMT != nb["mode"] & S_IFMT:
            what.append("type")
        for key in ("mode", "uid", "gid"):
            if na[key] != nb[key]:
                what.append(key)
        is_dir = nb["mode"] & S_IFMT == S_IFDIR
        if not is_dir:  # a directory's own size/mtime changes are its entries, reported as paths
            if na["size"] != nb["size"]:
                what.append("size")
            if na["mtime"] != nb["mtime"]:
                what.append("mtime")
            if nb["mode"] & S_IFMT == S_IFREG and "type" not in what:
                if content_may_differ(sa, sb, ia, ib, changed):
                    row["sha256_a"], row["sha256_b"] = _sha(sa, ia, max_size), _sha(sb, ib, max_size)
                    if row["sha256_a"] != row["sha256_b"] or row["sha256_a"] is None:
                        what.append("content")
            elif nb["mode"] & S_IFMT == S_IFLNK and "type" not in what and _link(sa, ia) != _link(sb, ib):
                what.append("target")
        if what and nb["mode"] & S_IFMT == S_IFREG and "sha256_b" not in row:
            row["sha256_a"], row["sha256_b"] = _sha(sa, ia, max_size), _sha(sb, ib, max_size)
        if what:
            row["change"] = "modified"
            row["changed"] = ",".join(what)
            rows.append(row)
    owned = {b for b in changed if b in itb}
    for st in (sa, sb):
        for ino in st["owners"]:
            runs, meta = st["maps"][ino]
            owned.update(b for b in meta if _hits(changed, b, 1))
            for _, p, n, _ in runs:
                i = bisect_left(changed, p)
                while i < len(changed) and changed[i] < p + n:
                    owned.add(changed[i])
                    i += 1
    problems = []
    if len(changed) > len(owned):
        # Tampering with free space or slack shows up here, not as a file.
        problems.append(
            diagnostic(
                "info",
                f"{len(changed) - len(owned)} changed fs blocks",
                f"ext filesystem at disk offset {fs_offset}",
                "belong to no inode in either state (superblock, descriptors, bitmaps, or unallocated space)",
            )
        )
    return rows, problems
