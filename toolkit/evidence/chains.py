"""Following the files one piece of evidence names: disks of a domain XML,
backing and data files of a qcow2, parent and extents of a VMDK, parent of a VHDX.

Names come from hostile files: they are only ever looked up as paths, under
the run's one policy (:mod:`toolkit.references`: inside the evidence roots and
search paths, checked on real paths), and whatever is found is identified by
content like any input.

Example::

    lookup = Lookup(reference_policy(roots=["/cases/web01"], search_paths=["/mnt/images"]))
    lookup.find("/var/lib/libvirt/images/base.qcow2", Path("/cases/web01"), "disk.qcow2", "backing file")
"""

from __future__ import annotations

import os
from pathlib import Path

from toolkit.errors import EvidenceError
from toolkit.evidence.identify import identify
from toolkit.references import (
    ReferencePolicy,
    outside_message,
    resolve_reference,
    unresolved_message,
    wrong_size_message,
)

# A loop of backing files (a hostile qcow2 naming itself) must end somewhere.
MAX_CHAIN = 64


class Lookup:
    """One discover() call's identification cache, reference policy and the files it read
    outside the evidence roots (only with ``policy.follow_recorded``)."""

    def __init__(self, references: ReferencePolicy, hints=None):
        self.references = references
        self.hints = {os.path.abspath(k): v for k, v in (hints or {}).items()}
        self.ids: dict[str, dict] = {}
        self.outside: dict[str, str] = {}  # {path: warning naming who named it}

    def identify(self, path) -> dict:
        key = os.path.abspath(path)
        if key not in self.ids:
            self.ids[key] = identify(key, hint=self.hints.get(key))
        return self.ids[key]

    def resolve(self, ref, base: Path, owner, what: str) -> dict:
        """:func:`toolkit.references.resolve_reference` under this lookup's policy; a file
        followed outside the roots is remembered with its warning."""
        found = resolve_reference(ref, base, self.references)
        if found["outside"]:
            self.outside.setdefault(str(found["path"]), outside_message(what, ref, found, owner))
        return found

    def locate(self, ref, base: Path, owner, what: str) -> Path:
        """The path of the file ``owner`` names as ``ref``; EvidenceError (one line) if it is
        missing or refused by the policy."""
        found = self.resolve(ref, base, owner, what)
        if found["path"] is None:
            raise EvidenceError(owner, unresolved_message(what, ref, found))
        return found["path"]

    def find(self, ref, base: Path, owner, what: str) -> dict:
        """identify() the file ``owner`` names as ``ref``; EvidenceError if not found or refused."""
        return self.identify(self.locate(ref, base, owner, what))

    def find_unsigned(self, ref, base: Path, owner, what: str, fmt: str, size: int | None = None) -> dict:
        """Like find(), for raw data with no signature of its own (a flat VMDK extent, a
        qcow2 external data file): the file naming it vouches for its format, and
        ``size`` (bytes the descriptor declares), when given, must match exactly — a
        host file named as an extent is refused, not read as a disk."""
        path = self.locate(ref, base, owner, what)
        actual = path.stat().st_size
        if size is not None and actual != size:
            raise EvidenceError(owner, wrong_size_message(what, ref, path, actual, size))
        key = os.path.abspath(path)
        if key not in self.ids:
            try:
                self.identify(path)
            except EvidenceError:
                self.ids[key] = {
                    "path": key,
                    "format": fmt,
                    "size": actual,
                    "facts": {"named_by": os.fspath(owner)},
                    "problems": [],
                }
        return self.ids[key]


def entry(ident: dict, role: str = "disk", snapshot: str | None = None) -> dict:
    return {"path": ident["path"], "format": ident["format"], "role": role, "snapshot": snapshot}


def _vmdk_extents(lookup: Lookup, ident: dict, base: Path) -> list[dict]:
    out = []
    for ext in ident["facts"].get("extents", []):
        if not ext.get("file"):
            continue
        if ext.get("type") in ("FLAT", "VMFS"):
            # raw data: the descriptor's sector count (past its start offset) is the file's size
            size = (ext.get("offset", 0) + ext["sectors"]) * 512
            found = lookup.find_unsigned(ext["file"], base, ident["path"], "extent", "vmdk-extent", size)
        else:
            found = lookup.find(ext["file"], base, ident["path"], "extent")
        out.append(entry(found, "extent"))
    return out


def _parent_ref(ident: dict) -> tuple[str | None, str]:
    """(recorded name of the layer below, what to call it) for a disk format."""
    facts = ident["facts"]
    if ident["format"] == "qcow2":
        return facts.get("backing_file"), "backing file"
    if ident["format"] == "vmdk" and facts.get("parent_cid") not in (None, "ffffffff"):
        return facts.get("parent_file"), "parent"
    if ident["format"] == "vhdx" and facts.get("has_parent"):
        locator = facts.get("parent_paths") or {}
        name = locator.get("relative_path") or locator.get("absolute_win32_path")
        return (name.replace("\\", "/") if name else None), "parent"
    return None, ""


def chain(lookup: Lookup, ident: dict, depth: int = 0) -> list[dict]:
    """Disk entries for the files a disk depends on (data file, extents, backing files), in order."""
    if depth > MAX_CHAIN:
        raise EvidenceError(ident["path"], f"backing chain deeper than {MAX_CHAIN} (a loop?)")
    facts, base = ident["facts"], Path(ident["path"]).parent
    out = []
    if ident["format"] == "qcow2" and facts.get("external_data_file"):
        if not facts.get("data_file"):
            raise EvidenceError(ident["path"], "qcow2 needs an external data file but does not name one")
        data = lookup.find_unsigned(facts["data_file"], base, ident["path"], "external data file", "qcow2-data-file")
        out.append(entry(data, "data-file"))
    if ident["format"] == "vmdk":
        out += _vmdk_extents(lookup, ident, base)
    parent, what = _parent_ref(ident)
    if ident["format"] in ("vmdk", "vhdx") and what and not parent:
        raise EvidenceError(ident["path"], f"differencing {ident['format']} names no {what} file")
    if parent:
        sub = lookup.find(parent, base, ident["path"], what)
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
