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

Both work per distinct L2 table, never per guest cluster: an image may point
every L1 entry at one L2 table (320 KiB of L1 describing 21 TB of allocated
clusters). Each table is read and checked once, what a diff finds is built as
byte ranges an L1 entry at a time (equal tables computed once), and at most
``limits.max_changed_ranges`` ranges are listed before the diff falls back
to walking both trees.

Example::

    n = validate_tables(qcow2, qcow2.l1_table, file_size, "disk.qcow2")
    ranges, how = changed_ranges(disk_a, disk_b)
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from toolkit.errors import DiskError
from toolkit.limits import env_name, limit

L1E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
OFLAG_COPIED = 1 << 63
OFLAG_COMPRESSED = 1 << 62
# COPIED only says "refcount is 1"; it changes when a snapshot shares a cluster
# without the data changing, so comparisons ignore it.
ENTRY_COMPARE_MASK = (1 << 63) - 1
QCOW_MAX_L1_SIZE = 32 << 20  # bytes: QEMU refuses larger L1 tables (block/qcow2.h)
PLAIN_ZERO = 1  # QCOW_OFLAG_ZERO, no host offset, no subcluster bitmap
_TABLE_CACHE = 64  # L2 tables kept decoded while a diff walks the L1 entries


def _geometry(q) -> dict:
    guest_clusters = (q.header.size + q.cluster_size - 1) >> q.cluster_bits
    return {
        "l2_size": q.l2_size,
        "l2_bits": q.l2_bits,
        "l2_bytes": q.l2_size * q._l2_entry_size,
        "words": q._l2_entry_size // 8,
        "guest_clusters": guest_clusters,
    }


def _l1_view(q, l1_table, file_size: int, where: str) -> dict[int, int]:
    """{L1 index: L2 table offset} for the allocated L1 entries inside the disk."""
    g = _geometry(q)
    l1 = np.asarray(l1_table, dtype=np.uint64) & np.uint64(L1E_OFFSET_MASK)
    outside = np.flatnonzero((l1 != 0) & (l1 + np.uint64(g["l2_bytes"]) > np.uint64(file_size)))
    if len(outside):
        i = int(outside[0])
        raise DiskError(
            f"{where}: L1 entry {i} points to an L2 table at 0x{int(l1[i]):x}, "
            f"outside the file (size {file_size}): the image is corrupt or truncated"
        )
    inside = -(-g["guest_clusters"] // g["l2_size"])  # L1 entries past the disk map the vmstate
    idx = np.flatnonzero(l1[:inside])
    return dict(zip(idx.tolist(), l1[idx].tolist()))


def _keep(g: dict, l1_index: int) -> int:
    """Entries of the table at ``l1_index`` that map clusters inside the disk."""
    return min(g["l2_size"], g["guest_clusters"] - (l1_index << g["l2_bits"]))


def _read_table(q, offset: int, keep: int):
    """(entries, bitmaps) of the L2 table at ``offset``, its first ``keep`` entries."""
    g = _geometry(q)
    q.fh.seek(offset)
    words = np.frombuffer(q.fh.read(g["l2_bytes"]), dtype=">u8").astype(np.uint64)
    if g["words"] == 2:
        entries, bitmaps = words[0::2], words[1::2]
    else:
        entries, bitmaps = words, np.zeros_like(words)
    return entries[:keep], bitmaps[:keep]


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


def _values(entries, bitmaps):
    """(allocated mask, comparable value) of L2 entries.

    With extended L2 a cluster can be unallocated but carry per-subcluster zero
    flags in its bitmap; that still shadows the backing file. The bitmap is
    mixed into the value so two layouts with equal offsets but different
    subcluster states compare unequal.
    """
    masked = entries & np.uint64(ENTRY_COMPARE_MASK)
    return (masked != 0) | (bitmaps != 0), masked ^ (bitmaps << np.uint64(1))


def check_header(q, file_size: int, where: str) -> None:
    """Refuse headers whose tables lie outside the file (before any read trusts them)."""
    h = q.header
    if h.l1_size * 8 > QCOW_MAX_L1_SIZE:
        raise DiskError(f"{where}: L1 table of {h.l1_size} entries is larger than QEMU allows: corrupt qcow2 header")
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


def validate_tables(q, l1_table, file_size: int, where: str, data_size: int | None = None) -> int:
    """Check every L2 pointer of one L1 table; return the count of allocated clusters.

    Each distinct L2 table is read and checked once, however many L1 entries
    share it. Raises DiskError when a pointer leaves the file (data clusters:
    the external data file, of ``data_size`` bytes, when the image has one). Example::

        n = validate_tables(q, q.l1_table, os.path.getsize(p), p)
    """
    g = _geometry(q)
    users: dict[int, list] = {}  # L2 offset -> [first L1 index, full uses, (index, keep) of a partial use]
    for i, off in _l1_view(q, l1_table, file_size, where).items():
        use = users.setdefault(off, [i, 0, None])
        keep = _keep(g, i)
        if keep == g["l2_size"]:
            use[1] += 1
        else:
            use[2] = keep
    total = 0
    for off, (first_index, full, partial) in users.items():
        entries, bitmaps = _read_table(q, off, g["l2_size"] if full else partial)
        _check_entries(q, first_index << g["l2_bits"], entries, file_size if data_size is None else data_size, where)
        allocated, _ = _values(entries, bitmaps)
        total += full * int(allocated.sum()) + (int(allocated[:partial].sum()) if partial else 0)
    return total


def changed_ranges(da: dict, db: dict) -> tuple[list[tuple[int, int]] | None, str]:
    """Guest byte ranges where two opened disks may differ, or (None, why not).

    Layers common to both chains (same file, same L1) are skipped; a file on
    both sides with different L1 tables (internal snapshot vs active) counts
    only clusters whose L2 entries differ; any other layer counts everything it
    allocated. Clusters every layer of both chains leaves unallocated or marks
    plain-zero are left out (``qemu-img convert -B`` and QEMU's discard write
    plain zero entries over regions the backing file never allocated).
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
    groups: list[tuple[dict, dict | None]] = []
    paired_b = set()
    for la in excl_a:
        partner = next((i for i, lb in enumerate(excl_b) if lb["path"] == la["path"] and i not in paired_b), None)
        if partner is not None:
            paired_b.add(partner)
        groups.append((la, excl_b[partner] if partner is not None else None))
    groups += [(lb, None) for i, lb in enumerate(excl_b) if i not in paired_b]
    every = list({id(layer): layer for layer in da["layers"] + db["layers"]}.values())
    sizes = {layer["qcow2"].cluster_size for layer in every if layer["qcow2"] is not None}
    zero_filter = every if all(layer["qcow2"] is not None for layer in every) and len(sizes) == 1 else None
    ranges: list[tuple[int, int]] = []
    cap = limit("max_changed_ranges")
    views: dict[int, dict] = {}
    tables: OrderedDict = OrderedDict()
    for x, y in groups:
        ranges += _group_ranges(x, y, zero_filter, views, tables, cap - len(ranges))
        if len(ranges) > cap:
            return None, f"more than {cap} changed ranges (raise {env_name('max_changed_ranges')} to map them)"
    merged: list[tuple[int, int]] = []
    for s, e in sorted(ranges):
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(e, merged[-1][1]))
        else:
            merged.append((s, e))
    return merged, "allocated clusters"


def _view(layer: dict, views: dict) -> dict[int, int]:
    if id(layer) not in views:
        views[id(layer)] = _l1_view(layer["qcow2"], layer["l1"], layer["file_size"], str(layer["path"]))
    return views[id(layer)]


def _table_values(layer: dict, offset: int | None, keep: int, tables: OrderedDict):
    """(allocated, value) arrays of one layer's L2 table; an unallocated L1 entry reads as nothing allocated."""
    if offset is None:
        return np.zeros(keep, dtype=bool), np.zeros(keep, dtype=np.uint64)
    key = (id(layer), offset, keep)
    if key not in tables:
        tables[key] = _values(*_read_table(layer["qcow2"], offset, keep))
        if len(tables) > _TABLE_CACHE:
            tables.popitem(last=False)
    return tables[key]


def _group_ranges(x: dict, y: dict | None, zero_filter, views: dict, tables: OrderedDict, room: int):
    """Guest byte ranges one layer allocated (``y`` None) or where it differs
    from ``y``, the same file through another L1 table. One L1 entry at a time;
    L1 entries whose tables (and the zero filter's tables) are the same give the
    same relative ranges, computed once. Stops once more than ``room`` ranges."""
    q = x["qcow2"]
    g = _geometry(q)
    vx, vy = _view(x, views), (_view(y, views) if y is not None else {})
    zviews = [_view(layer, views) for layer in zero_filter] if zero_filter else []
    memo: dict[tuple, list[tuple[int, int]]] = {}
    out: list[tuple[int, int]] = []
    for i in sorted(set(vx) | set(vy)):
        ox, oy = vx.get(i), vy.get(i)
        if y is not None and ox == oy:
            continue  # the same L2 table under both L1 tables: nothing differs
        keep = _keep(g, i)
        key = (ox, oy, keep, tuple(v.get(i) for v in zviews))
        if key not in memo:
            ax, wx = _table_values(x, ox, keep, tables)
            if y is None:
                mask = ax
            else:
                ay, wy = _table_values(y, oy, keep, tables)
                mask = (ax != ay) | (ax & ay & (wx != wy))
            if zero_filter:
                somewhere = np.zeros(keep, dtype=bool)
                for layer, view in zip(zero_filter, zviews):
                    al, wl = _table_values(layer, view.get(i), keep, tables)
                    somewhere |= al & (wl != np.uint64(PLAIN_ZERO))
                mask = mask & somewhere
            memo[key] = _mask_runs(mask)
        base = i << g["l2_bits"]
        for s, e in memo[key]:
            start, end = (base + s) << q.cluster_bits, (base + e) << q.cluster_bits
            if out and out[-1][1] == start:
                out[-1] = (out[-1][0], end)
            else:
                out.append((start, end))
        if len(out) > room:
            break
    return out


def _mask_runs(mask) -> list[tuple[int, int]]:
    """[start, end) index runs of True in a boolean array.

    >>> _mask_runs(np.array([True, True, False, True]))
    [(0, 2), (3, 4)]
    """
    edges = np.flatnonzero(np.diff(np.concatenate(([False], mask, [False])).astype(np.int8)))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))
