"""qcow2 metadata read directly: L1/L2 tables as guest-cluster allocation maps.

dissect.hypervisor reads qcow2 data; this module reads what dissect does not
expose as data: which guest clusters a layer (or an internal snapshot's L1
table) actually holds. Two uses:

* validation before anything trusts a table: every L1/L2 pointer must land
  inside the file (a corrupt or truncated image gives a one-line DiskError,
  not an EOFError deep inside a parser);
* the snapshot diff: the guest ranges an overlay allocated, or where an
  internal snapshot's L2 entries differ from the active layer's, are the only
  places two states of a disk can differ.

Example::

    alloc = allocation_map(qcow2, qcow2.l1_table, file_size, "disk.qcow2")
    ranges = clusters_to_ranges(alloc.keys(), qcow2.cluster_size)
"""

from __future__ import annotations

import numpy as np

from toolkit.errors import DiskError

L1E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
OFLAG_COPIED = 1 << 63
OFLAG_COMPRESSED = 1 << 62
# COPIED only says "refcount is 1"; it changes when a snapshot shares a cluster
# without the data changing, so comparisons ignore it.
ENTRY_COMPARE_MASK = (1 << 63) - 1


def _l2_tables(q, l1_table, file_size: int, where: str):
    """Yield (first guest cluster index, entries, bitmaps) per allocated L2 table."""
    entry_words = q._l2_entry_size // 8
    l2_bytes = q.l2_size * q._l2_entry_size
    guest_clusters = (q.header.size + q.cluster_size - 1) >> q.cluster_bits
    for l1_index, l1_entry in enumerate(l1_table):
        l2_offset = int(l1_entry) & L1E_OFFSET_MASK
        if not l2_offset:
            continue
        if l2_offset + l2_bytes > file_size:
            raise DiskError(
                f"{where}: L1 entry {l1_index} points to an L2 table at 0x{l2_offset:x}, "
                f"outside the file (size {file_size}): the image is corrupt or truncated"
            )
        first = l1_index << q.l2_bits
        if first >= guest_clusters:
            continue
        q.fh.seek(l2_offset)
        raw = q.fh.read(l2_bytes)
        words = np.frombuffer(raw, dtype=">u8").astype(np.uint64)
        if entry_words == 2:
            entries, bitmaps = words[0::2], words[1::2]
        else:
            entries, bitmaps = words, np.zeros_like(words)
        keep = min(q.l2_size, guest_clusters - first)
        yield first, entries[:keep], bitmaps[:keep]


def _check_entries(q, first: int, entries, file_size: int, where: str) -> None:
    compressed = (entries & np.uint64(OFLAG_COMPRESSED)) != 0
    csize_mask = np.uint64((1 << q.csize_shift) - 1)
    host = np.where(compressed, entries & csize_mask, entries & np.uint64(L2E_OFFSET_MASK))
    bad = np.nonzero(host >= np.uint64(file_size))[0]
    if len(bad):
        i = int(bad[0])
        raise DiskError(
            f"{where}: L2 entry for guest offset 0x{(first + i) << q.cluster_bits:x} points to host "
            f"offset 0x{int(host[i]):x}, outside the file (size {file_size}): the image is corrupt"
        )


def check_header(q, file_size: int, where: str) -> None:
    """Refuse headers whose tables lie outside the file (before any read trusts them)."""
    h = q.header
    if h.l1_table_offset + h.l1_size * 8 > file_size:
        raise DiskError(
            f"{where}: L1 table (0x{h.l1_table_offset:x}, {h.l1_size} entries) lies outside "
            f"the file (size {file_size}): corrupt or truncated qcow2"
        )
    needed_l1 = -(-h.size // (q.cluster_size << q.l2_bits))
    if h.l1_size < needed_l1:
        raise DiskError(
            f"{where}: L1 table has {h.l1_size} entries but the disk size {h.size} "
            f"needs {needed_l1}: corrupt qcow2 header"
        )
    if h.nb_snapshots and h.snapshots_offset >= file_size:
        raise DiskError(f"{where}: snapshot table at 0x{h.snapshots_offset:x} lies outside the file")


def allocation_map(q, l1_table, file_size: int, where: str, data_size: int | None = None) -> dict[int, int]:
    """Guest cluster index -> L2 entry (COPIED bit cleared) for every cluster this
    layer defines (data, compressed or zero); unallocated clusters are absent.

    Raises DiskError when a pointer leaves the file (data clusters: the
    external data file, of ``data_size`` bytes, when the image has one). Example::

        alloc = allocation_map(q, q.l1_table, os.path.getsize(p), p)
    """
    out: dict[int, int] = {}
    for first, entries, bitmaps in _l2_tables(q, l1_table, file_size, where):
        _check_entries(q, first, entries, file_size if data_size is None else data_size, where)
        masked = entries & np.uint64(ENTRY_COMPARE_MASK)
        # With extended L2 a cluster can be unallocated but carry per-subcluster
        # zero flags in its bitmap; that still shadows the backing file.
        idx = np.nonzero((masked != 0) | (bitmaps != 0))[0]
        # Mix the bitmap into the value so two layouts with equal offsets but
        # different subcluster states compare unequal.
        values = masked[idx] ^ (bitmaps[idx] << np.uint64(1))
        out.update(zip((idx + first).tolist(), values.tolist()))
    return out


def validate_tables(q, l1_table, file_size: int, where: str, data_size: int | None = None) -> int:
    """Check every L2 pointer of one L1 table; return the count of allocated clusters."""
    return len(allocation_map(q, l1_table, file_size, where, data_size))


def differing_clusters(map_a: dict[int, int], map_b: dict[int, int]) -> set[int]:
    """Clusters whose L2 entries differ between two L1 tables of one file.

    A cluster with the same host offset in both holds the same bytes: qcow2
    copies a shared cluster before writing to it (refcount > 1).
    """
    keys = set(map_a) | set(map_b)
    return {k for k in keys if map_a.get(k) != map_b.get(k)}


def clusters_to_ranges(clusters, cluster_size: int) -> list[tuple[int, int]]:
    """Sorted guest byte ranges [start, end) covering the given cluster indexes.

    >>> clusters_to_ranges([0, 1, 5], 65536)
    [(0, 131072), (327680, 393216)]
    """
    ranges: list[tuple[int, int]] = []
    for c in sorted(clusters):
        start = c * cluster_size
        if ranges and ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], start + cluster_size)
        else:
            ranges.append((start, start + cluster_size))
    return ranges


def changed_ranges(da: dict, db: dict) -> tuple[list[tuple[int, int]] | None, str]:
    """Guest byte ranges where two opened disks may differ, or (None, why not).

    Layers common to both chains (same file, same L1) are skipped; a file on
    both sides with different L1 tables (internal snapshot vs active) counts
    only clusters whose L2 entries differ; any other layer counts everything it
    allocated.
    """
    if da["size"] != db["size"]:
        return None, f"virtual sizes differ ({da['size']} vs {db['size']})"
    if any(layer.get("data_file") for layer in da["layers"] + db["layers"]):
        return None, "a layer keeps its clusters in an external data file"
    ida = [(str(layer["path"]), layer["snapshot"]) for layer in da["layers"]]
    idb = [(str(layer["path"]), layer["snapshot"]) for layer in db["layers"]]
    common = 0
    while common < min(len(ida), len(idb)) and ida[-1 - common] == idb[-1 - common]:
        common += 1
    if common == 0 and not (da["layers"] and db["layers"] and ida[-1][0] == idb[-1][0]):
        return None, "the two disks share no backing layer"
    excl_a = da["layers"][: len(ida) - common]
    excl_b = db["layers"][: len(idb) - common]
    for la in excl_a + excl_b:
        if la["format"] != "qcow2":
            return None, f"{la['path']} is {la['format']}: its allocation is unknown"
    amap = {}

    def alloc(layer):
        key = id(layer)
        if key not in amap:
            amap[key] = allocation_map(layer["qcow2"], layer["l1"], layer["file_size"], str(layer["path"]))
        return amap[key]

    found: list[tuple[set, int]] = []
    paired_b = set()
    for la in excl_a:
        partner = next((i for i, lb in enumerate(excl_b) if lb["path"] == la["path"] and i not in paired_b), None)
        if partner is not None:
            paired_b.add(partner)
            found.append((differing_clusters(alloc(la), alloc(excl_b[partner])), la["qcow2"].cluster_size))
        else:
            found.append((set(alloc(la)), la["qcow2"].cluster_size))
    for i, lb in enumerate(excl_b):
        if i not in paired_b:
            found.append((set(alloc(lb)), lb["qcow2"].cluster_size))
    found = _drop_zero_everywhere(found, da["layers"] + db["layers"], alloc)
    ranges: list[tuple[int, int]] = []
    for clusters, csize in found:
        ranges += clusters_to_ranges(clusters, csize)
    merged: list[tuple[int, int]] = []
    for s, e in sorted(ranges):
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(e, merged[-1][1]))
        else:
            merged.append((s, e))
    return merged, "allocated clusters"


def _drop_zero_everywhere(found, layers, alloc):
    """Leave out clusters every layer of both chains leaves unallocated or marks plain-zero.

    ``qemu-img convert -B`` (and QEMU's discard) write plain zero entries over
    regions the backing file never allocated: both states read zeros there.
    Needs every layer to be qcow2 with one cluster size, else nothing is dropped.
    """
    sizes = {layer["qcow2"].cluster_size for layer in layers if layer["qcow2"] is not None}
    if any(layer["qcow2"] is None for layer in layers) or len(sizes) != 1:
        return found
    maps = [alloc(layer) for layer in {id(layer): layer for layer in layers}.values()]
    plain_zero = 1  # QCOW_OFLAG_ZERO, no host offset, no subcluster bitmap
    out = []
    for clusters, csize in found:
        out.append(({c for c in clusters if any(m.get(c, plain_zero) != plain_zero for m in maps)}, csize))
    return out
