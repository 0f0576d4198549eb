"""VMs, not snapshots: which snapshots belong to one VM, and in what order they were taken.

A snapshot is one VM at one moment; a responder asks about the VM. Snapshots
are grouped by what identifies a VM, strongest first:

1. the libvirt domain uuid (a domain XML, a snapshot XML or a save image names
   it), else the domain name when no uuid is known;
2. disk chain identity: two snapshots that analyse the same top disk or the
   same external-snapshot overlay (role ``disk``/``overlay``) are one VM. A
   shared *backing* file is not: linked clones share their base image and are
   different VMs;
3. otherwise one VM per snapshot.

Snapshots of a VM are ordered by capture time: the time the evidence itself
states (snapshot XML creation time, qcow2 internal snapshot date, kdump
timestamp), else the memory (or disk) file's modification time, which the
order records as a weaker source.

Works on discovery's snapshot dicts and on a case manifest's snapshot entries
alike (both carry ``domain``, ``memory``, ``disks`` and ``evidence``/``times``).

Example::

    vms = group_vms(discover([Path("/evidence/web01")]))
    [(vm["id"], vm["snapshots"]) for vm in vms]     # [('web01', ['web01-before', 'web01-after'])]
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

# Roles whose file is this VM's own disk; a backing file may be shared by clones.
OWN_DISK_ROLES = ("disk", "overlay")


def _iso(value) -> str | None:
    """An evidence-stated time as ISO-8601 UTC: epoch seconds (snapshot XML) or an ISO string."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, dt.UTC).isoformat()
    try:
        parsed = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).astimezone(dt.UTC).isoformat()


def snapshot_times(snapshot: dict) -> dict:
    """Capture times the evidence itself states (memory dump, snapshot XML, qcow2 internal
    snapshot), as {what: ISO-8601 UTC}, for the timeline and for ordering a VM's snapshots.

    Example::

        snapshot_times(snap)   # {'libvirt-snapshot-xml creation time': '2026-12-02T00:30:59+00:00'}
    """
    times = {}
    memory = snapshot.get("memory") or {}
    for item in snapshot.get("evidence", []):
        facts = item.get("facts") or {}
        for key in ("creation_time", "captured_at", "snapshot_time"):
            stamp = _iso(facts.get(key))
            if stamp:
                times[f"{item.get('format')} {key.replace('_', ' ')}"] = stamp
        if item.get("format") == "qcow2" and memory.get("snapshot") and item.get("path") == memory.get("path"):
            for snap in facts.get("snapshots") or []:
                if memory["snapshot"] in (snap.get("name"), snap.get("id")) and _iso(snap.get("date")):
                    times[f"qcow2 internal snapshot {snap.get('name')} date"] = _iso(snap.get("date"))
    return times


def _mtime(path) -> str | None:
    try:
        return dt.datetime.fromtimestamp(os.stat(path).st_mtime, dt.UTC).isoformat()
    except (OSError, TypeError, ValueError):
        return None


def capture_time(snapshot: dict) -> tuple[str | None, str | None]:
    """(ISO time, where it comes from) of the moment a snapshot holds.

    The evidence's own statement wins; else the memory file's (or first disk's)
    modification time, which is when the host finished writing it.

    Example::

        capture_time(snap)   # ('2026-12-02T00:30:36.334843+00:00', 'qcow2 internal snapshot lab-savevm date')
    """
    if snapshot.get("captured_at") and snapshot["captured_at"][0]:
        return tuple(snapshot["captured_at"])  # as recorded when the snapshot was analysed
    stated = snapshot.get("times") if snapshot.get("times") is not None else snapshot_times(snapshot)
    stated = {what: _iso(stamp) for what, stamp in (stated or {}).items() if _iso(stamp)}
    if stated:
        what, stamp = min(stated.items(), key=lambda kv: dt.datetime.fromisoformat(kv[1]))
        return stamp, what
    memory = snapshot.get("memory") or {}
    if memory.get("path") and not memory.get("snapshot"):
        stamp = _mtime(memory["path"])
        if stamp:
            return stamp, f"{Path(memory['path']).name} modification time"
    for disk in snapshot.get("disks") or []:
        if disk.get("role") in OWN_DISK_ROLES and not disk.get("snapshot"):
            stamp = _mtime(disk["path"])
            if stamp:
                return stamp, f"{Path(disk['path']).name} modification time"
    return None, None


def _sort_time(stamp: str | None) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp) if stamp else dt.datetime.max.replace(tzinfo=dt.UTC)


def identity_keys(snapshot: dict) -> list[str]:
    """What ties a snapshot to a VM: its domain (uuid, else name) and its own disks."""
    keys = []
    domain = snapshot.get("domain") or {}
    if domain.get("uuid"):
        keys.append(f"uuid:{str(domain['uuid']).lower()}")
    elif domain.get("name"):
        keys.append(f"domain:{domain['name']}")
    for disk in snapshot.get("disks") or []:
        if disk.get("role") in OWN_DISK_ROLES and disk.get("path"):
            keys.append(f"disk:{os.path.realpath(disk['path'])}")
    return keys


def _slug(text: str | None) -> str:
    s = re.sub(r"[^a-z0-9._-]+", "-", (text or "").lower())
    return re.sub(r"-{2,}", "-", s).strip("-.")[:80].strip("-.") or "vm"


def _vm_label(members: list[dict]) -> tuple[str, str | None, str]:
    """(name, uuid, basis) of a VM from its snapshots."""
    for snap in members:
        domain = snap.get("domain") or {}
        if domain.get("name") or domain.get("uuid"):
            return domain.get("name") or domain["uuid"], domain.get("uuid"), "libvirt domain"
    own = [d for s in members for d in s.get("disks") or [] if d.get("role") in OWN_DISK_ROLES]
    if own:
        # the directory holding the VM's disk names it (a VM's files usually live together)
        return Path(own[0]["path"]).resolve().parent.name or Path(own[0]["path"]).name, None, "disk chain"
    memory = members[0].get("memory") or {}
    # discovery lists evidence as dicts, a case manifest as paths
    evidence = [e if isinstance(e, str) else e.get("path") for e in members[0].get("evidence") or []]
    anchor = memory.get("path") or next(iter(evidence), None)
    return (Path(anchor).resolve().parent.name if anchor else members[0]["id"]), None, "one snapshot"


def group_vms(snapshots: list[dict], same_vm: list[tuple[str, str]] = ()) -> list[dict]:
    """Group snapshots into VMs (see the module doc), each VM's snapshots in capture order.

    ``same_vm`` adds pairs of snapshot ids known to be one VM for another reason
    (their memory holds the same RAM). Returns, sorted by VM id::

        [{"id": "snapscope-lab", "name": "snapscope-lab", "uuid": "1c65...", "basis": "libvirt domain",
          "snapshots": ["snapscope-lab-memory.elf", ...],              # oldest first
          "times": {snapshot id: [ISO time or None, its source]}}]

    Example::

        group_vms([{"id": "a", "disks": [{"path": "/vm/disk.qcow2", "role": "disk"}]},
                   {"id": "b", "disks": [{"path": "/vm/disk.qcow2", "role": "disk", "snapshot": "s1"}]}])
    """
    parent = {s["id"]: s["id"] for s in snapshots}

    def root(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def join(a, b):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    owner: dict[str, str] = {}
    for snap in snapshots:
        for key in identity_keys(snap):
            if key in owner:
                join(owner[key], snap["id"])
            else:
                owner[key] = snap["id"]
    # a snapshot that knows only its domain's name joins the one VM of that name known by uuid
    by_name: dict[str, set] = {}
    for snap in snapshots:
        domain = snap.get("domain") or {}
        if domain.get("name") and domain.get("uuid"):
            by_name.setdefault(domain["name"], set()).add(root(snap["id"]))
    for snap in snapshots:
        domain = snap.get("domain") or {}
        if domain.get("name") and not domain.get("uuid") and len(by_name.get(domain["name"], ())) == 1:
            join(next(iter(by_name[domain["name"]])), snap["id"])
    for a, b in same_vm:
        if a in parent and b in parent:
            join(a, b)
    groups: dict[str, list[dict]] = {}
    for snap in snapshots:
        groups.setdefault(root(snap["id"]), []).append(snap)
    vms, taken = [], set()
    for members in sorted(groups.values(), key=lambda m: min(s["id"] for s in m)):
        name, uuid, basis = _vm_label(members)
        if len(members) > 1 and basis == "one snapshot":
            basis = "same RAM"
        times = {s["id"]: list(capture_time(s)) for s in members}
        # Unknown times last; same time (one moment in several artefacts): by id, stable.
        order = sorted(members, key=lambda s: (_sort_time(times[s["id"]][0]), s["id"]))
        vm_id, n = _slug(name), 1
        while vm_id in taken:
            n += 1
            vm_id = f"{_slug(name)}-{n}"
        taken.add(vm_id)
        vms.append(
            {
                "id": vm_id,
                "name": name,
                "uuid": uuid,
                "basis": basis,
                "snapshots": [s["id"] for s in order],
                "times": times,
            }
        )
    return sorted(vms, key=lambda v: v["id"])
