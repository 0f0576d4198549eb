"""Disk engine: a snapshot's disks through dissect.target -> disk tables.

Opens every disk of the snapshot (qcow2 chains resolved beside the evidence
and through ``ctx["search_paths"]``; an internal snapshot when the disk entry
names one), puts them in one dissect Target, runs the profile's functions and
returns ``disk/chain``, ``disk/system``, ``disk/users``, ``disk/persistence``,
``disk/shell_history``, ``disk/logs``, ``disk/packages``, ``disk/files``,
``disk/records`` and ``diagnostics``.

Example::

    tables = run({"id": "web01", "disks": [{"path": "disk.qcow2", "format": "qcow2",
                                            "role": "disk", "snapshot": None}]},
                 {"profile": {"disk": {"functions": ["users", "cronjobs"]}}})
"""
from __future__ import annotations

from pathlib import Path

from toolkit.engines.disk_open import DiskError, close_disk, open_disk, resolve_reference
from toolkit.engines.disk_persistence import persistence_rows
from toolkit.engines.disk_tables import (expand_functions, history_rows, log_rows, missing_group_members,
                                         other_rows, package_rows, run_functions, system_row, user_rows)
from toolkit.engines.disk_cache import files_rows
from toolkit.engines.disk_walk import hash_policy
from toolkit.schemas import make_table

DEFAULT_FUNCTIONS = ["users", "cronjobs", "services", "ssh.authorized_keys", "history", "logs", "packages"]


def _disk_path(disk: dict, search_paths, evidence_dir: Path | None) -> tuple[Path, list[dict]]:
    """The file a disk entry means here; XML-named absolute paths are resolved like backing files."""
    path = Path(disk["path"])
    if path.is_file():
        return path, []
    found, how, tried = resolve_reference(str(path), evidence_dir or path.parent, search_paths)
    if found is None:
        raise DiskError(f"disk {str(path)!r} not found (tried: {', '.join(tried)}); pass --search-path DIR")
    return found, [{"severity": "info", "what": f"disk {path}", "where": str(found),
                    "why": f"recorded path does not exist here; used {found} ({how})"}]


def open_snapshot_disks(snapshot: dict, ctx: dict) -> tuple[list[dict], list[dict]]:
    """Open every disk of a snapshot; unreadable ones become error diagnostics."""
    search = list(ctx.get("search_paths") or [])
    evidence_dir = Path(ctx["evidence_dir"]) if ctx.get("evidence_dir") else None
    opened, diags = [], []
    for disk in snapshot.get("disks") or []:
        # Backing files and extents are read through the disk above them; an
        # external snapshot's overlay is listed for custody, not opened twice.
        if disk.get("role", "disk") != "disk":
            continue
        try:
            path, notes = _disk_path(disk, search, evidence_dir)
            diags += notes
            fmt = disk.get("format")
            opened.append(open_disk(path, fmt=fmt if fmt in ("qcow2", "raw") else None,
                                    snapshot=disk.get("snapshot"), search_paths=search,
                                    allow_missing_backing=bool(ctx.get("allow_missing_backing"))))
            diags += opened[-1]["diagnostics"]
        except DiskError as e:
            diags.append({"severity": "error", "what": f"disk {disk.get('path')}", "where": "disk/open",
                          "why": str(e)})
    return opened, diags


def run(snapshot: dict, ctx: dict) -> dict:
    """Engine entry point (see toolkit.engines): tables for one snapshot's disks."""
    from toolkit.engines.disk_fullwalk import open_target

    sid = snapshot.get("id") or snapshot.get("name") or "snapshot"
    profile = (ctx.get("profile") or {}).get("disk") or {}
    functions = expand_functions(profile.get("functions") or DEFAULT_FUNCTIONS)  # before any work
    _, max_size = hash_policy(profile.get("hash"))
    progress = ctx.get("progress") or (lambda *a, **k: None)

    def table(name, rows, source):
        return make_table(name, rows, snapshot_id=sid, source=f"dissect/{source}")

    progress("disk: open", 0, 4)
    opened, diags = open_snapshot_disks(snapshot, ctx)
    chain = [row for d in opened for row in d["chain"]]
    for fn in missing_group_members():
        diags.append({"severity": "info", "what": f"dissect function {fn}", "where": "dissect",
                      "why": "not available in this dissect install (journal needs backports.zstd)"})
    out = {"disk/chain": table("disk/chain", chain, "open")}
    try:
        if not opened:
            raise DiskError(f"snapshot {sid}: no disk could be opened")
        try:
            target = open_target([d["stream"] for d in opened], f"snapshot {sid}")
        except DiskError as e:
            diags.append({"severity": "error", "what": "disks", "where": "dissect", "why": str(e)})
            raise
        progress("disk: dissect functions", 1, 4)
        records, d2 = run_functions(target, functions)
        diags += d2
        out["disk/system"] = table("disk/system", [system_row(target)], "os")
        out["disk/users"] = table("disk/users", user_rows(records), "users")
        progress("disk: persistence", 2, 4)
        out["disk/persistence"] = table("disk/persistence", persistence_rows(target, records, max_size),
                                        "persistence")
        out["disk/shell_history"] = table("disk/shell_history", history_rows(records), "commandhistory")
        out["disk/logs"] = table("disk/logs", log_rows(records), "logs")
        out["disk/packages"] = table("disk/packages", package_rows(records), "packages")
        out["disk/records"] = table("disk/records", other_rows(records), "records")
        progress("disk: files", 3, 4)
        # linked clones: the base's rows from the cache, only the overlay's changes re-walked
        rows, d3 = files_rows(opened, target, ctx, profile.get("hash"))
        diags += d3
        out["disk/files"] = table("disk/files", rows, "files")
        progress("disk: done", 4, 4)
        _offer_files_for_scanning(ctx, target, rows, opened)
        opened = []  # now owned by the reader left in ctx["shared"]
    except DiskError:
        if not chain:
            raise
    finally:
        for d in opened:
            close_disk(d)
    out["diagnostics"] = make_table("diagnostics", diags, snapshot_id=sid, source="dissect")
    return out


class _OpenDisks:
    """Keeps the snapshot's disks open until the pipeline closes its shared readers."""

    def __init__(self, opened):
        self.opened = opened

    def close(self):
        for d in self.opened:
            close_disk(d)
        self.opened = []


def _offer_files_for_scanning(ctx: dict, target, rows: list[dict], opened: list[dict]) -> None:
    """Leave a reader of the files worth scanning (those the hash policy picked:
    executables, writable and hidden locations) for the YARA engine."""
    shared = ctx.get("shared")
    if shared is None:
        for d in opened:
            close_disk(d)
        return
    fs = target.fs
    # sha256 lets YARA reuse matches for content it already scanned (another clone, the base)
    shared["disk_files"] = [{"path": r["path"], "size": r.get("size"), "sha256": r["sha256"],
                             "open": (lambda p=r["path"]: fs.get(p).open())}
                            for r in rows if r.get("sha256")]
    shared["disk_handles"] = _OpenDisks(opened)
