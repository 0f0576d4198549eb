"""``disk/files`` for linked clones: walk a shared base image once, each overlay only where it changed.

VMs cloned from one base image share most of their disk. For a snapshot whose
disk is a qcow2 overlay over a base image, the base's ``disk/files`` rows are
walked (and hashed) once and kept under ``<cache_dir>/disk/<base key>/``; each
overlay then costs the allocated-cluster diff against the base (qcow2 L1/L2
tables + ext metadata, see ``diff``) and a re-stat/re-hash of only the
paths that diff names. The merged rows equal a full walk of the overlay.

Cache key of a base (the base is evidence: it is only ever opened ``rb`` and
nothing is written beside it):

* its sha256 when the caller passes ``evidence_hashes`` ({resolved
  path: sha256}, what the pipeline hashed before analysis) — portable across
  copies of the base;
* otherwise a cheap stat identity: resolved path, device, inode, size,
  mtime_ns and ctime_ns. ctime cannot be set from user space, so any write to
  the base (or a replaced file) changes the key; a copy is merely a cold miss.

Every key also covers what changes the rows themselves: the hash policy
(``profile["disk"]["hash"]``), the dissect.target version and CACHE_VERSION.

Anything the path mapping cannot prove (no cache dir, several disks, a base
that is not the bottom of a readable chain, a filesystem other than one
whole-disk ext, a layer whose allocation is unknown, a name dissect resolves
differently) falls back to the plain full walk, with an info diagnostic for
overlays. Non-overlay disks take the full walk exactly as before.

Example::

    rows, diags = files_rows(opened, target, hash_cfg, cache_dir=ctx.cache_dir, evidence_hashes=ctx.evidence_hashes)
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

from toolkit.engines.disk.allocation import changed_ranges
from toolkit.engines.disk.changes import changed_blocks, content_may_differ, ext_state, find_ext_offsets, stream_reader
from toolkit.engines.disk.extfs import S_IFDIR, S_IFMT, S_IFREG, NotMappable, itable_blocks, open_ext
from toolkit.engines.disk.images import close_disk, open_disk
from toolkit.engines.disk.target import open_target
from toolkit.engines.disk.walk import entry_row, hash_policy, skipped, ts_ns, walk_tree
from toolkit.errors import DiskError
from toolkit.schemas import diagnostic
from toolkit.versions import distribution_versions

CACHE_VERSION = 2  # 2: rows carry md5
SKIP = ("/proc", "/sys", "/$fs$/")  # same as walk_tree's default: equality with the full walk needs it
TIME_KEYS = ("mtime", "atime", "ctime", "btime")


def _digest(obj) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:32]


def base_key(path: Path, hashes: dict | None = None) -> tuple[str, str]:
    """(key, how) identifying a base image's content; see the module doc for the choice.

    >>> base_key(Path("base.qcow2"))  # doctest: +SKIP
    ('stat-3f2a...', 'stat identity (path, dev, inode, size, mtime_ns, ctime_ns)')
    """
    real = Path(path).resolve()
    sha = (hashes or {}).get(str(real))
    if sha:
        return f"sha256-{sha}", "sha256 of the base (hashed by the pipeline)"
    st = real.stat()
    ident = [str(real), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    return f"stat-{_digest(ident)}", "stat identity (path, dev, inode, size, mtime_ns, ctime_ns)"


def policy_key(hash_cfg: dict | None) -> str:
    """Which rows a walk produces depends on the hash policy and the parser version."""
    dissect_version = distribution_versions(["dissect.target"])["dissect.target"]
    return _digest({"v": CACHE_VERSION, "hash": hash_cfg or {}, "dissect": dissect_version, "skip": SKIP})


def _encode(rows: list[dict]) -> list[dict]:
    # Timestamps as integer ns (exact); names keep their surrogate escapes via json's \\udcxx
    return [{k: (v.value if k in TIME_KEYS and v is not None else v) for k, v in r.items()} for r in rows]


def _decode(rows: list[dict]) -> list[dict]:
    return [{k: (ts_ns(v) if k in TIME_KEYS else v) for k, v in r.items()} for r in rows]


def load_rows(path: Path) -> list[dict] | None:
    """Cached rows, or None when absent or unreadable (a broken cache entry is a miss, not an error)."""
    try:
        with gzip.open(path, "rt", encoding="ascii") as fh:
            return _decode(json.load(fh)["rows"])
    except (OSError, ValueError, KeyError, EOFError):
        return None


def save_rows(path: Path, rows: list[dict], info: dict) -> None:
    """Write atomically: parallel audit workers may fill the same base entry at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with gzip.open(tmp, "wt", encoding="ascii") as fh:
        json.dump({"info": info, "rows": _encode(rows)}, fh)
    os.replace(tmp, path)


def changed_paths(base_disk: dict, overlay_disk: dict) -> tuple[dict | None, str]:
    """{path: state} for every path whose ``disk/files`` row may differ, or (None, why).

    state is "removed", "same-content" (a regular file in both whose bytes are
    proven equal: same block map and size, every changed block reads the same)
    or "changed".

    Wider than ``disk/diff`` on purpose: a read (atime), a rename (ctime) or a
    directory gaining an entry (its size, mtime) changes a row without being a
    diff "modification". So: every path, in either state, of every inode whose
    record differs or whose data may differ (it owns a changed block that does
    not read the same on both sides), plus every path whose path -> inode
    mapping differs.
    """
    try:
        ranges, why = changed_ranges(base_disk, overlay_disk)
    except DiskError as e:
        return None, str(e)
    if ranges is None:
        return None, why
    if find_ext_offsets(overlay_disk["stream"]) != [0]:
        # dissect's "/" is then not necessarily the ext fs the diff maps (partitions, LVM, other fs)
        return None, "the disk is not one whole-disk ext filesystem"
    try:
        fa = open_ext(stream_reader(base_disk["stream"]), 0)
        fb = open_ext(stream_reader(overlay_disk["stream"]), 0)
        if fa["block_size"] != fb["block_size"] or [g["itable"] for g in fa["groups"]] != [
            g["itable"] for g in fb["groups"]
        ]:
            return None, "base and overlay have different inode-table layouts (resized or re-created fs)"
        changed = changed_blocks(ranges, 0, fb["block_size"], max(fa["blocks"], fb["blocks"]))
        sb = ext_state(fb, changed, None)
        sa = ext_state(fa, changed, sb)  # base: unchanged inode-table and directory blocks reused from sb
    except NotMappable as e:
        return None, f"ext mapping impossible: {e}"
    # A qcow2 cluster holds 16+ fs blocks: most inodes "in a changed block" are
    # neighbours of a write, byte-identical on both sides. Only an inode whose
    # record differs, or whose data may differ, can change its rows.
    owners = set(sa["owners"]) | set(sb["owners"])
    cand = set(owners)
    itb = {**itable_blocks(fa), **itable_blocks(fb)}
    for blk in changed:
        if blk in itb:
            first, count = itb[blk]
            cand.update(range(first, first + count))
    out: set = set()
    for ino in cand:
        na, nb = sa["nodes"].get(ino), sb["nodes"].get(ino)
        differs = na != nb or (
            ino in owners
            and nb["mode"] & S_IFMT != S_IFDIR
            and not (ino in sa["maps"] and ino in sb["maps"] and not content_may_differ(sa, sb, ino, ino, changed))
        )
        if differs:  # a directory's data is its entries: those show up as path -> inode changes below
            for st in (sa, sb):
                out.update(st["ino_paths"].get(ino, ()))
    pa, pb = sa["paths"], sb["paths"]
    out.update(p for p in pa.keys() | pb.keys() if pa.get(p) != pb.get(p))
    out.discard("/")

    def state(path):
        ia, ib = pa.get(path), pb.get(path)
        if ib is None:
            return "removed"
        na, nb = sa["nodes"].get(ia), sb["nodes"].get(ib)
        if (
            na is not None
            and nb is not None
            and na["mode"] & S_IFMT == S_IFREG == nb["mode"] & S_IFMT
            and ia in sa["maps"]
            and ib in sb["maps"]
            and not content_may_differ(sa, sb, ia, ib, changed)
        ):
            return "same-content"
        return "changed"

    how = f"{sum(e - s for s, e in ranges)} bytes in {len(ranges)} ranges"
    return {p: state(p) for p in out if not skipped(p, SKIP)}, how


def _base_layer(disk: dict) -> dict | None:
    """The bottom layer when the disk is a qcow2 over a readable backing chain."""
    layers = disk.get("layers") or []
    if len(layers) < 2 or layers[0]["format"] != "qcow2":
        return None
    if any(r.get("resolved_by") == "missing-zeros" for r in disk.get("chain") or []):
        return None
    # The cache is keyed by the base file's own hash: a base whose contents live in other
    # files (a data file, extents) is not covered by it, and is re-opened here alone.
    if layers[-1]["format"] not in ("qcow2", "raw") or any(layer.get("data_file") for layer in layers):
        return None
    return layers[-1]


def _base_rows(
    layer: dict, cache_dir: Path, evidence_hashes: dict, hash_cfg, should_hash, max_size, diags
) -> tuple[list | None, object]:
    """(base rows, opened base disk) from the cache or by walking the base once."""
    key, how = base_key(layer["path"], evidence_hashes)
    entry = Path(cache_dir) / "disk" / key / f"files-{policy_key(hash_cfg)}.json.gz"
    base = open_disk(layer["path"], fmt=layer["format"] if layer["format"] in ("qcow2", "raw") else None)
    rows = load_rows(entry)
    if rows is not None:
        diags.append(
            diagnostic(
                "info",
                "disk/files",
                str(layer["path"]),
                f"{len(rows)} base rows from the cache ({entry.parent.name}, keyed by {how})",
            )
        )
        return rows, base
    rows, problems = walk_tree(
        open_target([base["stream"]], f"base {layer['path']}").fs,
        "/",
        should_hash=should_hash,
        max_size=max_size,
        skip_prefixes=SKIP,
    )
    if problems:  # a half-readable base is walked per snapshot so its warnings stay with each one
        return None, base
    save_rows(entry, rows, {"base": str(layer["path"]), "key": key, "how": how})
    diags.append(
        diagnostic(
            "info",
            "disk/files",
            str(layer["path"]),
            f"base walked once ({len(rows)} rows) and cached as {entry.parent.name} (keyed by {how})",
        )
    )
    return rows, base


def overlay_rows(
    disk: dict, target, hash_cfg, *, cache_dir: Path, evidence_hashes: dict
) -> tuple[list[dict] | None, list[dict], str]:
    """(rows, diagnostics, why) for an overlay from cached base rows; rows None means "walk in full because why"."""
    should_hash, max_size = hash_policy(hash_cfg)
    layer = _base_layer(disk)
    if layer is None:
        return None, [], "not a qcow2 overlay over a readable base"
    diags: list[dict] = []
    base = None
    try:
        rows, base = _base_rows(layer, cache_dir, evidence_hashes, hash_cfg, should_hash, max_size, diags)
        if rows is None:
            return None, [], "the base's own walk reported problems"
        paths, how = changed_paths(base, disk)
    finally:
        if base is not None:
            close_disk(base)
    if paths is None:
        return None, [], how
    merged = {r["path"]: r for r in rows}
    problems: list[dict] = []
    fs = target.fs
    hashes = {r["path"]: r for r in rows if r.get("sha256")}
    reused = 0
    for path, state in sorted(paths.items()):
        merged.pop(path, None)
        if state == "removed":
            continue
        # stat again (times, mode may differ), but read no bytes already hashed in the base
        known = None
        if state == "same-content" and path in hashes:
            known = {k: hashes[path].get(k) for k in ("sha256", "md5", "build_id", "first_page_sha256")}
            reused += 1
        row, _ = entry_row(
            path, lambda p=path: fs.get(p), should_hash=should_hash, max_size=max_size, problems=problems, known=known
        )
        if row is None:
            return None, [], f"{path}: dissect cannot stat a path the diff names ({problems[-1]['why']})"
        merged[path] = row
    if problems:  # unreadable content: the full walk reports it the same way, with its own context
        return None, [], "a changed file could not be read for hashing"
    diags.append(
        diagnostic(
            "info",
            "disk/files",
            str(disk["path"]),
            f"{len(paths)} paths re-stat'ed from the overlay (allocated-cluster diff: {how}), "
            f"{reused} of them with content proven unchanged (base hashes kept); "
            f"the other {len(merged) - sum(s != 'removed' for s in paths.values())} "
            f"rows are the base's",
        )
    )
    return sorted(merged.values(), key=lambda r: r["path"]), diags, "allocated-cluster diff"


def files_rows(
    opened: list[dict], target, hash_cfg, *, cache_dir: Path | None, evidence_hashes: dict | None = None
) -> tuple[list[dict], list[dict]]:
    """``disk/files`` rows for a snapshot's opened disks: base cache + overlay diff when possible.

    ``evidence_hashes`` ({resolved path: sha256}) keys the base cache by content when given.
    Example: ``rows, diags = files_rows(opened, target, profile["disk"]["hash"], cache_dir=ctx.cache_dir)``
    """
    if cache_dir and len(opened) == 1 and _base_layer(opened[0]) is not None:
        try:
            rows, diags, why = overlay_rows(
                opened[0], target, hash_cfg, cache_dir=cache_dir, evidence_hashes=evidence_hashes or {}
            )
        except DiskError as e:  # the base read alone failed: the overlay's own walk still stands
            rows, diags, why = None, [], str(e)
        if rows is not None:
            return rows, diags
        note = [
            diagnostic(
                "info", "disk/files", str(opened[0]["path"]), f"full walk of the overlay, base cache not used: {why}"
            )
        ]
    else:
        note = []
    should_hash, max_size = hash_policy(hash_cfg)
    rows, problems = walk_tree(target.fs, "/", should_hash=should_hash, max_size=max_size)
    return rows, note + problems
