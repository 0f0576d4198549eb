"""Disk engine: a snapshot's disks through dissect.target -> disk tables.

Opens every disk of the snapshot (qcow2 chains resolved under ``ctx.references``,
the run's policy: beside the evidence and in search paths; an internal snapshot when the disk entry
names one), puts them in one dissect Target, runs the profile's functions and
returns ``disk/chain``, ``disk/system``, ``disk/users``, ``disk/persistence``,
``disk/shell_history``, ``disk/logs``, ``disk/packages``, ``disk/package_files``, ``disk/files``,
``disk/records`` and ``diagnostics``. It leaves a reader of the files worth
scanning in ``ctx.readers`` for the YARA engine.

Modules: ``images`` (open qcow2 chains, internal snapshots, raw/vmdk/vhdx),
``target`` (a dissect Target over them), ``functions`` (dissect functions ->
rows), ``persistence``, ``walk`` (``disk/files``), ``files`` (linked clones:
a base walked once), ``diff`` with ``changes``, ``allocation`` and ``extfs``
(what changed between two states of a disk).

Example::

    ctx = EngineContext(snapshot_id="web01", derived_dir=d, cache_dir=c, profile=load_profile("linux-triage"))
    tables = run({"id": "web01", "disks": [{"path": "disk.qcow2", "format": "qcow2",
                                            "role": "disk", "snapshot": None}]}, ctx)
"""

from __future__ import annotations

from pathlib import Path

from toolkit.engines import EngineContext
from toolkit.engines.disk.files import files_rows
from toolkit.engines.disk.functions import (
    DEFAULT_FUNCTIONS,
    expand_functions,
    history_rows,
    log_rows,
    missing_group_members,
    other_rows,
    package_rows,
    run_functions,
    system_row,
    user_rows,
)
from toolkit.engines.disk.images import close_disk, open_disk
from toolkit.engines.disk.package_files import package_file_rows
from toolkit.engines.disk.persistence import persistence_rows
from toolkit.engines.disk.target import open_target
from toolkit.engines.disk.walk import hash_policy
from toolkit.errors import DiskError
from toolkit.references import ReferencePolicy, default_policy, resolve_reference, unresolved_message
from toolkit.schemas import diagnostic, make_table


def _disk_path(disk: dict, references: ReferencePolicy) -> tuple[Path, list[dict]]:
    """The file a disk entry means here; XML-named absolute paths are resolved like backing files."""
    path = Path(disk["path"])
    if path.is_file():
        return path, []
    found = resolve_reference(str(path), path.parent, references)
    if found["path"] is None:
        raise DiskError(f"{unresolved_message('disk', str(path), found)}; pass --search-path DIR")
    how = found["how"]
    return found["path"], [
        diagnostic(
            "warning" if found["outside"] else "info",
            f"disk {path}",
            str(found["path"]),
            f"recorded path does not exist here; used {found['path']} ({how})",
        )
    ]


def open_snapshot_disks(snapshot: dict, ctx: EngineContext) -> tuple[list[dict], list[dict]]:
    """Open every disk of a snapshot; unreadable ones become error diagnostics."""
    opened, diags = [], []
    for disk in snapshot.get("disks") or []:
        # Backing files, extents and data files are read through the disk above them; an
        # external snapshot's overlay is listed for custody, not opened twice.
        if disk.get("role", "disk") != "disk":
            continue
        try:
            # the run's policy, the one discovery used; alone, the disk's own directory
            references = ctx.references or default_policy([disk["path"]])
            path, notes = _disk_path(disk, references)
            diags += notes
            fmt = disk.get("format")
            opened.append(
                open_disk(
                    path,
                    fmt=fmt if fmt in ("qcow2", "raw") else None,
                    snapshot=disk.get("snapshot"),
                    references=references,
                    allow_missing_backing=ctx.allow_missing_backing,
                )
            )
            diags += opened[-1]["diagnostics"]
        except DiskError as e:
            diags.append(diagnostic("error", f"disk {disk.get('path')}", "disk/open", str(e)))
    return opened, diags


def run(snapshot: dict, ctx: EngineContext) -> dict:
    """Engine entry point (see toolkit.engines): tables for one snapshot's disks."""
    sid = ctx.snapshot_id
    profile = ctx.profile.get("disk") or {}
    functions = expand_functions(profile.get("functions") or DEFAULT_FUNCTIONS)  # before any work
    _, max_size = hash_policy(profile.get("hash"))
    progress = ctx.progress

    def table(name, rows, source):
        return make_table(name, rows, snapshot_id=sid, source=f"dissect/{source}")

    progress("disk: open", 0, 4)
    opened, diags = open_snapshot_disks(snapshot, ctx)
    chain = [row for d in opened for row in d["chain"]]
    for fn in missing_group_members():
        diags.append(
            diagnostic(
                "info",
                f"dissect function {fn}",
                "dissect",
                "not available in this dissect install (journal needs backports.zstd)",
            )
        )
    out = {"disk/chain": table("disk/chain", chain, "open")}
    try:
        if not opened:
            raise DiskError(f"snapshot {sid}: no disk could be opened")
        try:
            target = open_target([d["stream"] for d in opened], f"snapshot {sid}")
        except DiskError as e:
            diags.append(diagnostic("error", "disks", "dissect", str(e)))
            raise
        progress("disk: dissect functions", 1, 4)
        records, d2 = run_functions(target, functions)
        diags += d2
        out["disk/system"] = table("disk/system", [system_row(target)], "os")
        out["disk/users"] = table("disk/users", user_rows(records), "users")
        progress("disk: persistence", 2, 4)
        rows, problems = persistence_rows(target, records, max_size)
        diags += problems
        out["disk/persistence"] = table("disk/persistence", rows, "persistence")
        out["disk/shell_history"] = table("disk/shell_history", history_rows(records), "commandhistory")
        out["disk/logs"] = table("disk/logs", log_rows(records), "logs")
        out["disk/packages"] = table("disk/packages", package_rows(records), "packages")
        rows, problems = package_file_rows(target)
        diags += problems
        out["disk/package_files"] = table("disk/package_files", rows, "dpkg-info")
        out["disk/records"] = table("disk/records", other_rows(records), "records")
        progress("disk: files", 3, 4)
        # linked clones: the base's rows from the cache, only the overlay's changes re-walked
        rows, d3 = files_rows(
            opened, target, profile.get("hash"), cache_dir=ctx.cache_dir, evidence_hashes=ctx.evidence_hashes
        )
        diags += d3
        out["disk/files"] = table("disk/files", rows, "files")
        progress("disk: done", 4, 4)
        _offer_files_for_scanning(ctx, target, rows, opened)
        opened = []  # now owned by the reader left in ctx.readers
    except DiskError:
        if not chain:
            raise
    finally:
        for d in opened:
            close_disk(d)
    out["diagnostics"] = make_table("diagnostics", diags, snapshot_id=sid, source="dissect")
    return out


def _offer_files_for_scanning(ctx: EngineContext, target, rows: list[dict], opened: list[dict]) -> None:
    """Leave a reader of the files worth scanning (those the hash policy picked:
    executables, writable and hidden locations) for the YARA engine; the disks
    stay open until the pipeline closes the snapshot's readers."""
    fs = target.fs
    # sha256 lets YARA reuse matches for content it already scanned (another clone, the base)
    ctx.readers.disk_files = [
        {
            "path": r["path"],
            "size": r.get("size"),
            "sha256": r["sha256"],
            "open": (lambda p=r["path"]: fs.get(p).open()),
        }
        for r in rows
        if r.get("sha256")
    ]
    ctx.readers.closers.extend(lambda d=d: close_disk(d) for d in opened)
