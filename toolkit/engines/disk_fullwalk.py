"""Full-walk diff: both trees walked through dissect and every regular file hashed.

The fallback when the allocated-cluster diff cannot map changes to files
(other filesystems, LVM, unrelated images) and the baseline the benchmark
compares against. Correct for any filesystem dissect reads, and slow: it reads
every byte of every file on both sides.

Example::

    rows, diags = full_walk_rows(stream_a, stream_b)
"""
from __future__ import annotations

from toolkit.engines.disk_qcow2 import DiskError
from toolkit.engines.disk_walk import walk_tree


def open_target(streams: list, where: str):
    """A dissect Target over already-opened disk streams (no loader, no paths)."""
    from dissect.target import Target
    from dissect.target.containers.raw import RawContainer

    t = Target()
    for s in streams:
        t.disks.add(RawContainer(s))
    try:
        t.apply()
    except Exception as e:
        raise DiskError(f"{where}: no readable volume or filesystem ({type(e).__name__}: {e})") from None
    if not len(t.filesystems):
        raise DiskError(f"{where}: no known filesystem found on the disk (unknown or encrypted filesystem)")
    return t


def _tree(stream, where: str, max_size):
    t = open_target([stream], where)
    rows, problems = walk_tree(t.fs, "/", should_hash=lambda p, st: True, max_size=max_size,
                               skip_prefixes=())
    return {r["path"]: r for r in rows}, problems


def full_walk_rows(stream_a, stream_b, *, max_size=None, progress=None) -> tuple[list[dict], list[dict]]:
    """Diff rows (same columns as the allocated-cluster diff) from two full walks."""
    if progress:
        progress("disk diff: full walk of a", 0, 2)
    ta, pa = _tree(stream_a, "disk a", max_size)
    if progress:
        progress("disk diff: full walk of b", 1, 2)
    tb, pb = _tree(stream_b, "disk b", max_size)
    rows = []
    for path in sorted(set(ta) | set(tb)):
        ra, rb = ta.get(path), tb.get(path)
        row = {"path": path, "method": "full-walk"}
        for side, r in (("a", ra), ("b", rb)):
            if r:
                row.update({f"size_{side}": r["size"], f"mode_{side}": r["mode"], f"uid_{side}": r["uid"],
                            f"gid_{side}": r["gid"], f"mtime_{side}": r["mtime"], f"inode_{side}": r["inode"],
                            f"sha256_{side}": r.get("sha256")})
        row["type"] = "/".join(sorted({r["type"] for r in (ra, rb) if r}))
        if ra is None or rb is None:
            row["change"] = "added" if ra is None else "removed"
            rows.append(row)
            continue
        what = [k for k in ("type", "mode", "uid", "gid") if ra[k] != rb[k]]
        if rb["type"] != "dir":
            what += [k for k in ("size", "mtime") if ra[k] != rb[k]]
            if rb["type"] == "file" and ra.get("sha256") != rb.get("sha256"):
                what.append("content")
            if rb["type"] == "symlink" and ra.get("link_target") != rb.get("link_target"):
                what.append("target")
        if what:
            row.update({"change": "modified", "changed": ",".join(what)})
            rows.append(row)
    if progress:
        progress("disk diff: full walk", 2, 2)
    return rows, pa + pb
