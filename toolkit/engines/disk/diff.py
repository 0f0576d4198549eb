"""Snapshot diff of two states of one VM disk, driven by what the overlay allocated.

For states that share a backing chain (base vs overlay, internal snapshot vs
active layer, two external snapshots), only guest clusters that one state's
own qcow2 layers define can differ: those come from the L1/L2 tables
(``allocation``), and ``changes`` maps them to the ext files they touch.

When the mapping is impossible (no shared layer, raw or vmdk layers, a
filesystem other than ext, LVM), both trees are walked through dissect and
every regular file hashed (correct for any filesystem dissect reads, and
slow), and a diagnostic says why. The full walk is also the baseline the
benchmark compares against.

Example::

    df = diff_disks("base.qcow2", "overlay.qcow2")
    df[df.change == "added"].path.tolist()
"""

from __future__ import annotations

from toolkit.engines.disk.allocation import changed_ranges
from toolkit.engines.disk.changes import ext_diff, find_ext_offsets, stream_reader
from toolkit.engines.disk.extfs import NotMappable
from toolkit.engines.disk.images import close_disk, open_disk
from toolkit.engines.disk.target import open_target
from toolkit.engines.disk.walk import walk_tree
from toolkit.errors import DiskError
from toolkit.references import ReferencePolicy, default_policy
from toolkit.schemas import diagnostic, make_table


def _tree(stream, where: str, max_size):
    t = open_target([stream], where)
    rows, problems = walk_tree(t.fs, "/", should_hash=lambda p, st: True, max_size=max_size, skip_prefixes=())
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
                row.update(
                    {
                        f"size_{side}": r["size"],
                        f"mode_{side}": r["mode"],
                        f"uid_{side}": r["uid"],
                        f"gid_{side}": r["gid"],
                        f"mtime_{side}": r["mtime"],
                        f"inode_{side}": r["inode"],
                        f"sha256_{side}": r.get("sha256"),
                    }
                )
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


def _open(spec, references, allow_missing_backing):
    if isinstance(spec, dict):
        return open_disk(
            spec["path"],
            fmt=spec.get("format"),
            snapshot=spec.get("snapshot"),
            references=references,
            allow_missing_backing=allow_missing_backing,
        )
    return open_disk(spec, references=references, allow_missing_backing=allow_missing_backing)


def _path_of(spec):
    return spec["path"] if isinstance(spec, dict) else spec


def diff_tables(
    a,
    b,
    *,
    references: ReferencePolicy | None = None,
    allow_missing_backing: bool = False,
    full_walk: bool = False,
    max_size: int | None = None,
    snapshot_id: str = "diff",
    progress=None,
) -> dict:
    """``disk/diff``, ``disk/chain`` and ``diagnostics`` for two disk states.

    ``a`` and ``b`` are paths or dicts {path, format, snapshot}; ``references`` says where
    their backing files may be read from (default: the directories of ``a`` and ``b``). Example::

        tables = diff_tables("base.qcow2", {"path": "disk.qcow2", "snapshot": "lab-savevm"})
    """
    references = references or default_policy([_path_of(a), _path_of(b)])
    da = _open(a, references, allow_missing_backing)
    try:
        db = _open(b, references, allow_missing_backing)
    except DiskError:
        close_disk(da)
        raise
    diags = da["diagnostics"] + db["diagnostics"]
    rows: list[dict] = []
    try:
        ranges, why = (None, "full walk requested") if full_walk else changed_ranges(da, db)
        offsets = find_ext_offsets(db["stream"]) if ranges is not None else []
        if ranges is not None and not offsets:
            why = "no ext filesystem at a fixed offset on the disk (other filesystem, or LVM)"
            ranges = None
        if ranges is not None:
            try:
                for off in offsets:
                    prefix = "" if len(offsets) == 1 else f"/$part@{off}"
                    r, p = ext_diff(
                        stream_reader(da["stream"]),
                        stream_reader(db["stream"]),
                        off,
                        ranges,
                        prefix=prefix,
                        max_size=max_size,
                    )
                    rows += r
                    diags += p
                diags.append(
                    diagnostic(
                        "info",
                        "disk diff",
                        f"{da['path']} -> {db['path']}",
                        f"allocated-cluster diff: {sum(e - s for s, e in ranges)} bytes of "
                        f"{len(ranges)} guest ranges mapped to files via ext metadata",
                    )
                )
            except NotMappable as e:
                why, ranges, rows = f"ext mapping impossible: {e}", None, []
        if ranges is None:
            if not full_walk:
                diags.append(
                    diagnostic(
                        "warning",
                        "disk diff",
                        f"{da['path']} -> {db['path']}",
                        f"fell back to walking and hashing both trees in full: {why}",
                    )
                )
            r, p = full_walk_rows(da["stream"], db["stream"], max_size=max_size, progress=progress)
            rows, diags = r, diags + p
    finally:
        close_disk(da)
        close_disk(db)
    return {
        "disk/diff": make_table("disk/diff", rows, snapshot_id=snapshot_id, source="disk/diff"),
        "disk/chain": make_table("disk/chain", da["chain"] + db["chain"], snapshot_id=snapshot_id, source="disk/open"),
        "diagnostics": make_table("diagnostics", diags, snapshot_id=snapshot_id, source="disk/diff"),
    }


def diff_disks(a, b, **kwargs):
    """Files added, removed and modified between two states of one disk (``disk/diff``).

    Diagnostics ride along in ``df.attrs["diagnostics"]``. Example::

        df = diff_disks("base.qcow2", "overlay.qcow2", references=reference_policy(roots=["vm"], search_paths=["/mnt"]))
    """
    tables = diff_tables(a, b, **kwargs)
    df = tables["disk/diff"]
    df.attrs["diagnostics"] = tables["diagnostics"]
    df.attrs["chain"] = tables["disk/chain"]
    return df
