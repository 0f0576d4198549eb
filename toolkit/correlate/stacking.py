"""Fleet stacking: least frequency of occurrence across the VMs of an audit.

Linked clones of one image run the same binaries, services and modules; what
sets one VM apart is what few of them have. For each VM, :func:`vm_items`
lists what it runs and exposes, in six categories, each keyed so that the same
thing on two VMs has the same key:

- ``executable``: a running process's image by hash (the disk file's sha256,
  else its build-id or first-page hash for an image deleted from disk);
- ``process``: name and executable path of a user-space process;
- ``persistence``: kind, defining file and program of a persistence entry;
- ``listening port``: protocol, port and owning process name;
- ``outbound``: protocol, destination address and port of a connection;
- ``kernel module``: module name.

:func:`stack` counts on how many VMs each item is, out of the VMs analysed
for that category (a VM whose memory could not be read says nothing about
its processes). An item is *rare* on a fleet of at least :data:`MIN_FLEET`
VMs when it is on fewer than :data:`COMMON_SHARE` of them: on a fleet of
clones the baseline is on (nearly) every VM. :func:`rare_notes` says, per VM
and entity, which rare items the entity carries, so its findings can be
raised in confidence.

Example::

    per_vm = {vm: vm_items([tables_of_snapshot, ...]) for vm in fleet}
    rows = stack(per_vm)        # audit/stacking rows, rarest first
"""

from __future__ import annotations

import json

from toolkit.correlate.links import exited, frame, pid_of, truthy, value
from toolkit.schemas import split_deleted

COMMON_SHARE = 0.8
MIN_FLEET = 3
# How much a finding's confidence rises when its entity is rare in the fleet (capped below 1).
RARE_BOOST = 0.1

CATEGORY_TABLES = {
    "executable": "memory/processes",
    "process": "memory/processes",
    "persistence": "disk/persistence",
    "listening port": "memory/sockets",
    "outbound": "memory/sockets",
    "kernel module": "memory/modules",
}
LISTENING = ("LISTEN", "UNCONNECTED")
CONNECTED = ("ESTABLISHED", "SYN_SENT")
LOOPBACK = ("127.", "::1", "0.0.0.0", "::")


def _file_hashes(tables: dict):
    """Lookups from disk/files: sha256 by path, by build-id and by first-page hash."""
    files = frame(tables, "disk/files")
    by_path, by_build, by_page = {}, {}, {}
    for r in files.to_dict("records") if len(files) else []:
        sha = value(r, "sha256")
        if not sha:
            continue
        by_path[value(r, "path")] = sha
        if value(r, "build_id"):
            by_build.setdefault(value(r, "build_id"), sha)
        if value(r, "first_page_sha256"):
            by_page.setdefault(value(r, "first_page_sha256"), sha)
    return by_path, by_build, by_page


def _executable_key(row, image, lookups) -> str | None:
    """sha256 of the process's image (on disk, or the file with its build-id/first page), else those ids."""
    by_path, by_build, by_page = lookups
    exe, deleted = split_deleted(value(row, "exe_path") or None)
    deleted = deleted or truthy(value(row, "exe_deleted"))
    if exe and not deleted and exe in by_path:
        return f"sha256:{by_path[exe]}"
    build, page = (value(image, "build_id"), value(image, "first_page_sha256")) if image is not None else (None, None)
    if build and build in by_build:
        return f"sha256:{by_build[build]}"
    if page and page in by_page:
        return f"sha256:{by_page[page]}"
    if build:
        return f"build-id:{build}"
    if page:
        return f"first-page:{page}"
    return None


def _add(items, by_entity, category, key, detail, entity=None):
    items.setdefault((category, key), detail)
    if entity:
        by_entity.setdefault(entity, set()).add((category, key))


def vm_items(snapshots: list[dict]) -> tuple[dict, dict, set]:
    """What one VM runs and exposes, over its analysed snapshots' tables.

    Returns (items {(category, key): detail}, {entity: {(category, key)}}, categories analysed).
    """
    items: dict = {}
    by_entity: dict = {}
    covered: set = set()
    for tables in snapshots:
        covered |= {cat for cat, table in CATEGORY_TABLES.items() if table in tables}
        lookups = _file_hashes(tables)
        images = {pid_of(r): r for r in frame(tables, "memory/executables").to_dict("records")}
        names = {}
        for r in frame(tables, "memory/processes").to_dict("records"):
            pid = pid_of(r)
            names[pid] = value(r, "process")
            if truthy(value(r, "is_kernel_thread")) or pid is None or exited(r):
                continue  # what runs: not kernel threads, not a dead task's leftovers
            exe, _ = split_deleted(value(r, "exe_path") or None)
            entity = f"process:{pid}"
            _add(
                items,
                by_entity,
                "process",
                f"{value(r, 'process')} {exe or '-'}",
                f"{value(r, 'process')!r} {exe or ''}",
                entity,
            )
            key = _executable_key(r, images.get(pid), lookups)
            if key:
                _add(items, by_entity, "executable", key, exe or value(r, "process"), entity)
                if exe:
                    by_entity.setdefault(f"file:{exe}", set()).add(("executable", key))
        for r in frame(tables, "disk/persistence").to_dict("records"):
            target = value(r, "program_path") or value(r, "program")
            key = f"{value(r, 'kind')} {value(r, 'path')} -> {target} {value(r, 'program_sha256') or ''}".strip()
            _add(items, by_entity, "persistence", key, f"{value(r, 'kind')} {value(r, 'path')}", f"file:{target}")
        for r in frame(tables, "memory/sockets").to_dict("records"):
            state = str(value(r, "state") or "").upper()
            pid = pid_of(r)
            entity = f"process:{pid}" if pid is not None else None
            owner = names.get(pid) or value(r, "process")
            if state in LISTENING and value(r, "dst_port") in (None, 0):
                key = f"{value(r, 'proto')}/{value(r, 'src_port')} {owner}"
                _add(items, by_entity, "listening port", key, key, entity)
            elif state in CONNECTED and not str(value(r, "dst_ip") or "").startswith(LOOPBACK):
                key = f"{value(r, 'proto')} {value(r, 'dst_ip')}:{value(r, 'dst_port')}"
                _add(items, by_entity, "outbound", key, f"{key} ({owner})", entity)
        for r in frame(tables, "memory/modules").to_dict("records"):
            _add(
                items,
                by_entity,
                "kernel module",
                str(value(r, "name")),
                str(value(r, "name")),
                f"module:{value(r, 'name')}",
            )
    return items, by_entity, covered


def stack(per_vm: dict[str, tuple]) -> list[dict]:
    """``audit/stacking`` rows from {vm id: vm_items(...)}, rarest first."""
    on: dict[tuple, list[str]] = {}
    detail: dict[tuple, str] = {}
    for vm, (items, _by_entity, _covered) in per_vm.items():
        for key, text in items.items():
            on.setdefault(key, []).append(vm)
            detail.setdefault(key, text)
    rows = []
    for (category, item), vms in on.items():
        fleet = sum(1 for _i, _e, covered in per_vm.values() if category in covered)
        share = len(vms) / fleet if fleet else 1.0
        rows.append(
            {
                "category": category,
                "item": item,
                "detail": detail[(category, item)],
                "vms": len(vms),
                "fleet_size": fleet,
                "share": round(share, 4),
                "rare": fleet >= MIN_FLEET and share < COMMON_SHARE,
                "vm_ids": json.dumps(sorted(vms)),
            }
        )
    rows.sort(key=lambda r: (r["share"], r["category"], r["item"]))
    return rows


def rare_notes(stacking: list[dict], per_vm: dict[str, tuple]) -> dict[str, dict[str, str]]:
    """{vm: {entity: "rare in the fleet: ..."}} for entities that carry a rare item."""
    rare = {(r["category"], r["item"]): r for r in stacking if r["rare"]}
    notes: dict[str, dict[str, str]] = {}
    for vm, (_items, by_entity, _covered) in per_vm.items():
        for entity, keys in by_entity.items():
            hits = [rare[k] for k in sorted(keys) if k in rare]
            if hits:
                notes.setdefault(vm, {})[entity] = "rare in the fleet: " + "; ".join(
                    f"{r['category']} {r['detail']} on {r['vms']} of {r['fleet_size']} VMs" for r in hits
                )
    return notes


def raise_rare(rows: list[dict], notes: dict[str, str]) -> list[dict]:
    """Findings of an entity that is rare in the fleet: confidence up by RARE_BOOST, the reason noted."""
    for row in rows:
        note = notes.get(row["entity"])
        if note:
            row["confidence"] = round(min(0.99, float(row["confidence"]) + RARE_BOOST), 4)
            row["fleet_note"] = note
    return rows
