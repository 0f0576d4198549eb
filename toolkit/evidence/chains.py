"""Following the files one piece of evidence names: disks of a domain XML,
backing files of a qcow2, parent and extents of a VMDK.

Names come from hostile files: they are only ever looked up as paths
(:mod:`toolkit.references`) and whatever is found is identified by content
like any input.

Example::

    lookup = Lookup(search_paths=["/mnt/images"])
    lookup.find("/var/lib/libvirt/images/base.qcow2", Path("/cases/web01"), "disk.qcow2", "backing file")
"""

from __future__ import annotations

import os
from pathlib import Path

from toolkit.errors import EvidenceError
from toolkit.evidence.identify import identify
from toolkit.references import resolve

# A loop of backing files (a hostile qcow2 naming itself) must end somewhere.
MAX_CHAIN = 64


class Lookup:
    """One discover() call's identification cache and lookup settings."""

    def __init__(self, search_paths=(), hints=None):
        self.search_paths = [Path(p) for p in search_paths]
        self.hints = {os.path.abspath(k): v for k, v in (hints or {}).items()}
        self.ids: dict[str, dict] = {}

    def identify(self, path) -> dict:
        key = os.path.abspath(path)
        if key not in self.ids:
            self.ids[key] = identify(key, hint=self.hints.get(key))
        return self.ids[key]

    def find(self, ref, base: Path, owner, what: str) -> dict:
        """identify() the file ``owner`` names as ``ref``; EvidenceError if not found."""
        found = resolve(ref, base, self.search_paths)
        if found is None:
            looked = ", ".join([str(base)] + [str(p) for p in self.search_paths])
            raise EvidenceError(owner, f"{what} {ref!r} not found (looked as recorded, in {looked})")
        return self.identify(found)

    def find_extent(self, ref, base: Path, owner) -> dict:
        """Like find(), but a flat VMDK extent is raw data with no signature:
        the descriptor naming it is what vouches for its format."""
        found = resolve(ref, base, self.search_paths)
        if found is not None and str(found) not in self.ids:
            try:
                self.identify(found)
            except EvidenceError:
                self.ids[str(found)] = {
                    "path": str(found),
                    "format": "vmdk-extent",
                    "size": found.stat().st_size,
                    "facts": {"descriptor": os.fspath(owner)},
                    "problems": [],
                }
        return self.find(ref, base, owner, "extent")


def entry(ident: dict, role: str = "disk", snapshot: str | None = None) -> dict:
    return {"path": ident["path"], "format": ident["format"], "role": role, "snapshot": snapshot}


def chain(lookup: Lookup, ident: dict, depth: int = 0) -> list[dict]:
    """Disk entries for the files a disk depends on (backing files, extents), in order."""
    if depth > MAX_CHAIN:
        raise EvidenceError(ident["path"], f"backing chain deeper than {MAX_CHAIN} (a loop?)")
    facts, base = ident["facts"], Path(ident["path"]).parent
    out = []
    if ident["format"] == "vmdk":
        out += [
            entry(lookup.find_extent(e["file"], base, ident["path"]), "extent")
            for e in facts.get("extents", [])
            if e.get("file")
        ]
    parent = (
        facts.get("backing_file")
        if ident["format"] == "qcow2"
        else facts.get("parent_file")
        if ident["format"] == "vmdk"
        else None
    )
    if parent:
        sub = lookup.find(parent, base, ident["path"], "backing file")
        out += [entry(sub, "backing")] + chain(lookup, sub, depth + 1)
    return out


def with_chain(lookup: Lookup, ident: dict, snapshot: str | None = None) -> list[dict]:
    return [entry(ident, "disk", snapshot)] + chain(lookup, ident)


def domain_disks(lookup: Lookup, dom: dict) -> list[dict]:
    """Disk entries (with chains) for every file-backed disk a domain XML names."""
    base = Path(dom["path"]).parent
    out = []
    for disk in dom["facts"]["disks"]:
        if not disk.get("source") or disk.get("type") not in (None, "file", "block"):
            continue  # an empty CD drive, or a network/volume disk with no file to read
        out += with_chain(lookup, lookup.find(disk["source"], base, dom["path"], f"disk {disk.get('target')!r}"))
    return merge(out)


def top_disks(lookup: Lookup, disks: list[dict]) -> list[dict]:
    """Disk entries for the disks not in another's chain, each followed by its chain."""
    chains = {d["path"]: chain(lookup, d) for d in disks}
    members = {e["path"] for c in chains.values() for e in c}
    return merge(*([entry(d)] + chains[d["path"]] for d in disks if d["path"] not in members))


def merge(*lists) -> list[dict]:
    """Concatenate entry lists, keeping the first entry per (path, snapshot)."""
    seen, out = set(), []
    for lst in lists:
        for e in lst:
            key = (e["path"], e.get("snapshot"))
            if key not in seen:
                seen.add(key)
                out.append(e)
    return out


def embedded_domain(ident: dict) -> dict | None:
    """{name, uuid, macs} of the domain a libvirt save image or snapshot XML embeds."""
    facts = ident["facts"]
    dom = facts.get("domain")
    if isinstance(dom, dict) and (dom.get("name") or dom.get("uuid")):
        return {"name": dom.get("name"), "uuid": dom.get("uuid"), "macs": list(dom.get("macs") or [])}
    if facts.get("domain_name") or facts.get("domain_uuid"):
        return {
            "name": facts.get("domain_name"),
            "uuid": facts.get("domain_uuid"),
            "macs": list(facts.get("domain_macs") or []),
        }
    return None


def same_domain(a: dict | None, b: dict | None) -> bool:
    """Same libvirt domain: by uuid when both have one, else by name."""
    if not a or not b:
        return False
    if a.get("uuid") and b.get("uuid"):
        return a["uuid"].strip().lower() == b["uuid"].strip().lower()
    return bool(a.get("name")) and a.get("name") == b.get("name")
