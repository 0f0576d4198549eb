"""Discover snapshots — one VM at one moment — from files, directories or XMLs.

Grouping rules (in this order):

1. Inputs. A file is identified (any problem is fatal: the caller named it).
   A directory is scanned non-recursively plus one level of subdirectories;
   files there that are not evidence are listed in each snapshot's
   ``skipped`` and are not fatal, but a directory with nothing recognisable
   is. Symbolic links (to files or directories) met while scanning are not
   followed: they are listed in ``skipped`` with the reason. Files are
   grouped by the directory they sit in; files named explicitly form one
   group together. The inputs' directories (a directory given, the directory
   of a file given) are the evidence roots.
2. Disk chains. A qcow2's backing file and external data file, a VMDK's
   parent and extents, a VHDX's parent are followed under one policy
   (:mod:`toolkit.references`): relative to the image's directory, then by
   base name there, then in ``search_paths``, then an absolute path under
   each root (a copied host tree), last as recorded; only a file whose real
   path lies inside the evidence roots or search paths is used. A link that
   cannot be found, or is refused because it lies outside them, is fatal,
   unless ``follow_recorded``: then it is read and the snapshot's
   ``warnings`` name it. A flat VMDK extent must have the size its
   descriptor declares. Chain members get role ``backing``/``extent``/
   ``data-file`` and do not count as disks of their own.
3. Domain XML. Its disks are resolved the same way (a recorded absolute host
   path is looked up beside the XML and in ``search_paths``); a disk it
   names that cannot be found or is refused is fatal. Given explicitly, it
   brings the recognised files of its own directory, as if that had been
   given, except other domain XMLs and snapshot XMLs or save images that
   embed a different domain (by uuid, else name).
4. Snapshot XML: one snapshot. Its external memory file (fatal if missing)
   or, for an internal one, its qcow2 carries the memory; disks with an
   internal snapshot are that qcow2 at that snapshot; an external disk
   snapshot lists the disk as it was (the embedded domain's source, role
   ``disk``) and the overlay created at that moment (role ``overlay``).
5. Every other memory artefact is one snapshot; a qcow2 of the group or of
   its chains (also one that has since become a backing file) with internal
   snapshots carrying VM state gives one snapshot per such internal snapshot,
   read at that snapshot. The group's disks (a domain XML's disks if there
   is one) and pcaps attach to each memory file's snapshot. A libvirt save image is tied to
   the domain XML it embeds; otherwise a group's only domain XML is used.
6. A group with disks, pcaps or a domain but no memory gives one snapshot
   without memory.
7. Ids: slug of the VM (domain name, else the directory the artefact sits
   in) and of the snapshot name (snapshot XML name, internal snapshot name
   or memory file name); a repeat gets ``-2``, ``-3``... in input order.

Roles: ``disk`` is what to analyse (at ``snapshot`` if set); ``backing``,
``extent`` and ``data-file`` are read through it, never on their own;
``overlay`` holds writes made after the moment (external snapshots) and is
listed for custody.

Snapshot dict (paths are absolute strings)::

    {"id": "web01-before-upgrade",            # stable, safe in a file name
     "name": "before-upgrade",
     "domain": {"name", "uuid", "macs", "xml_path"} or None,
     "memory": {"path", "format", "snapshot"} or None,   # snapshot: qcow2 internal name
     "disks": [{"path", "format", "role", "snapshot"}],  # role: disk|backing|overlay|extent|data-file
     "pcaps": [{"path", "format"}],
     "snapshot_xml": path or None,
     "evidence": [identify() dict of every file used],
     "skipped": [{"path", "reason"}],                     # unrecognised files, symlinks of scanned dirs
     "problems": [str],                                   # discovery's and the files' own, named
     "warnings": [str],                                   # files read outside the roots (follow_recorded)
     "roots": [str]}                                      # the evidence roots (real paths)

Example::

    >>> [s["id"] for s in discover([Path("/evidence/web01")])]   # doctest: +SKIP
    ['web01-before-upgrade', 'web01-memory.elf']
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from toolkit.errors import EvidenceError
from toolkit.evidence.chains import (
    Lookup,
    domain_disks,
    embedded_domain,
    entry,
    merge,
    same_domain,
    top_disks,
    with_chain,
)
from toolkit.evidence.identify import memory_format_names
from toolkit.evidence.scan import regular_files, scan_directory
from toolkit.references import evidence_roots, reference_policy, unresolved_message

DISK_FORMATS = {"qcow2", "raw-disk", "vmdk", "vhdx", "vdi"}
PCAP_FORMATS = {"pcap", "pcapng"}


def slug(text: str | None) -> str:
    """A file-name-safe, stable form of a (hostile) name.

    >>> slug("../Web 01/évil\\n")
    'web-01-vil'
    """
    s = re.sub(r"[^a-z0-9._-]+", "-", (text or "").lower())
    s = re.sub(r"-{2,}", "-", s).strip("-.")
    return s[:80].strip("-.") or "unnamed"


# ------------------------------------------------------------------ grouping


def _collect(ctx: Lookup, paths) -> tuple[dict[str, list[dict]], list[dict], set[str]]:
    """Identify inputs: ({group: [ident]}, skipped, explicit domain XML paths)."""
    groups: dict[str, list[dict]] = {}
    skipped: list[dict] = []
    explicit_domains: set[str] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = 0
            files, links = scan_directory(path)
            skipped += links
            for f in files:
                try:
                    ident = ctx.identify(f)
                except EvidenceError as exc:
                    skipped.append({"path": os.path.abspath(f), "reason": exc.message})
                    continue
                groups.setdefault(str(Path(ident["path"]).parent), []).append(ident)
                found += 1
            if not found:
                raise EvidenceError(
                    path,
                    "directory holds no recognisable evidence"
                    + (f" ({len(skipped)} files skipped)" if skipped else ""),
                )
        else:
            ident = ctx.identify(path)
            groups.setdefault("<explicit>", []).append(ident)
            if ident["format"] == "libvirt-domain-xml":
                explicit_domains.add(ident["path"])
    return groups, skipped, explicit_domains


def _beside_domain_xml(ctx: Lookup, dom: dict) -> tuple[list[dict], list[dict]]:
    """What an explicitly named domain XML brings from its own directory: every
    recognised file there, as if the directory had been given, except other
    domain XMLs and artefacts that embed a different domain; and the symlinks
    there, skipped as in a scan."""
    out = []
    files, _dirs, links = regular_files(Path(dom["path"]).parent)
    for f in files:
        try:
            ident = ctx.identify(f)
        except EvidenceError:
            continue
        if ident["format"] == "libvirt-domain-xml":
            continue
        embedded = embedded_domain(ident) if ident["format"] in ("libvirt-snapshot-xml", "libvirt-save") else None
        if embedded is None or same_domain(embedded, dom["facts"]):
            out.append(ident)
    return out, links


def _domain_ref(ident: dict, facts: dict) -> dict:
    return {
        "name": facts.get("name"),
        "uuid": facts.get("uuid"),
        "macs": list(facts.get("macs") or []),
        "xml_path": ident["path"],
    }


def _group_snapshots(ctx: Lookup, idents: list[dict], name_hint: str) -> list[dict]:
    by = lambda formats: [i for i in idents if i["format"] in formats]  # noqa: E731
    domains = by({"libvirt-domain-xml"})
    pcaps = [{"path": i["path"], "format": i["format"]} for i in by(PCAP_FORMATS)]
    dom_disks = {d["path"]: domain_disks(ctx, d) for d in domains}
    group_disks = top_disks(ctx, by(DISK_FORMATS))
    used_paths = {e["path"] for chain in dom_disks.values() for e in chain}
    shared_disks = merge(*dom_disks.values(), [e for e in group_disks if e["path"] not in used_paths])

    def domain_for(embedded: dict | None):
        """(domain ref, that domain's disks) for an artefact, by embedded identity or the group's only domain."""
        match = [d for d in domains if same_domain(embedded, d["facts"])]
        if not match and len(domains) == 1 and embedded is None:
            match = domains
        if match:
            return _domain_ref(match[0], match[0]["facts"]), dom_disks[match[0]["path"]]
        return None, None

    snaps, consumed, internal_done = [], set(), set()

    for sx in by({"libvirt-snapshot-xml"}):
        snap = _from_snapshot_xml(ctx, sx, domains, dom_disks)
        if snap["memory"]:
            consumed.add(snap["memory"]["path"])
            if snap["memory"]["snapshot"]:
                internal_done.add((snap["memory"]["path"], snap["memory"]["snapshot"]))
        snap["pcaps"] = pcaps
        snaps.append(snap)

    for mem in by(memory_format_names()):
        if mem["path"] in consumed:
            continue
        embedded = embedded_domain(mem) if mem["format"] == "libvirt-save" else None
        dom, disks = domain_for(embedded)
        if dom is None and embedded:
            dom = {**embedded, "xml_path": None}  # the save image names its VM; no XML beside it
        snaps.append(
            _snapshot(
                Path(mem["path"]).name,
                dom,
                {"path": mem["path"], "format": mem["format"], "snapshot": None},
                disks if disks is not None else shared_disks,
                pcaps,
                [mem],
            )
        )

    # any qcow2 of the group or its chains, whatever its role now: a disk that
    # became an overlay's backing file still holds its internal snapshots
    for ident in [ctx.ids[p] for p in dict.fromkeys(e["path"] for e in shared_disks)]:
        if ident["format"] != "qcow2":
            continue
        for name in ident["facts"].get("vm_state_snapshots", []):
            if (ident["path"], name) in internal_done:
                continue
            dom, disks = domain_for(None)
            # the disks as they were: this qcow2 at that snapshot, and any other
            # disk of the VM that has an internal snapshot of the same name
            # (libvirt snapshots every qcow2 disk under one name)
            at = [with_chain(ctx, ident, snapshot=name)]
            at += [
                with_chain(ctx, ctx.ids[e["path"]], snapshot=name)
                for e in (disks or shared_disks)
                if e["role"] == "disk" and e["path"] != ident["path"] and name in _internal_names(ctx, e)
            ]
            snaps.append(
                _snapshot(
                    name, dom, {"path": ident["path"], "format": "qcow2", "snapshot": name}, merge(*at), pcaps, []
                )
            )

    if not snaps and (shared_disks or pcaps or domains):
        if domains:
            for d in domains:
                snaps.append(
                    _snapshot(
                        d["facts"].get("name") or name_hint,
                        _domain_ref(d, d["facts"]),
                        None,
                        dom_disks[d["path"]],
                        pcaps,
                        [],
                    )
                )
        else:
            snaps.append(_snapshot(name_hint, None, None, shared_disks, pcaps, []))
    for snap in snaps:
        snap["evidence"] = _evidence(ctx, snap)
        # the files' own problems, named, so a snapshot summary shows them
        snap["problems"] += [f"{Path(e['path']).name}: {p}" for e in snap["evidence"] for p in e["problems"]]
        snap["warnings"] = [ctx.outside[e["path"]] for e in snap["evidence"] if e["path"] in ctx.outside]
        snap["roots"] = list(ctx.references.roots)
    return snaps


def _internal_names(ctx: Lookup, entry: dict) -> set[str]:
    ident = ctx.ids[entry["path"]]
    return {s.get("name") for s in ident["facts"].get("snapshots", [])} if ident["format"] == "qcow2" else set()


def _snapshot(name, domain, memory, disks, pcaps, extra_evidence) -> dict:
    return {
        "id": None,
        "name": name,
        "domain": domain,
        "memory": memory,
        "disks": list(disks),
        "pcaps": list(pcaps),
        "snapshot_xml": None,
        "evidence": list(extra_evidence),
        "skipped": [],
        "problems": [],
        "warnings": [],
        "roots": [],
    }


def _from_snapshot_xml(ctx: Lookup, sx: dict, domains: list[dict], dom_disks: dict) -> dict:
    facts, base = sx["facts"], Path(sx["path"]).parent
    embedded = facts.get("domain") or {}
    match = [d for d in domains if same_domain(embedded, d["facts"])]
    domain = _domain_ref(match[0], match[0]["facts"]) if match else (_domain_ref(sx, embedded) if embedded else None)
    sources = {d.get("target"): d for d in embedded.get("disks", [])}
    disks, memory, internal_disk, problems = [], None, None, []
    for d in facts.get("disks", []):
        was = sources.get(d.get("name"), {})
        if d.get("snapshot") == "internal":
            ident = ctx.find(d.get("source") or was.get("source"), base, sx["path"], f"disk {d.get('name')!r}")
            disks += with_chain(ctx, ident, snapshot=facts.get("name"))
            internal_disk = internal_disk or ident
        elif d.get("snapshot") == "external":
            if was.get("source"):
                disks += with_chain(ctx, ctx.find(was["source"], base, sx["path"], f"disk {d.get('name')!r}"))
            what = f"overlay of disk {d.get('name')!r}"
            found = ctx.resolve(d.get("source"), base, sx["path"], what)
            if found["path"] is not None or not was.get("source"):
                disks.append(entry(ctx.find(d.get("source"), base, sx["path"], what), "overlay"))
            else:
                # the disk as it was is here; what was written after the moment is not (or is refused)
                problems.append(unresolved_message(what, d.get("source"), found))
    mem = facts.get("memory") or {}
    if mem.get("snapshot") == "external" and mem.get("file"):
        ident = ctx.find(mem["file"], base, sx["path"], "memory file")
        memory = {"path": ident["path"], "format": ident["format"], "snapshot": None}
    elif mem.get("snapshot") == "internal" and internal_disk is not None:
        memory = {"path": internal_disk["path"], "format": "qcow2", "snapshot": facts.get("name")}
    if not disks and match:
        disks = dom_disks[match[0]["path"]]
    snap = _snapshot(facts.get("name") or Path(sx["path"]).stem, domain, memory, merge(disks), [], [sx])
    snap["snapshot_xml"] = sx["path"]
    snap["problems"] = problems
    return snap


def _evidence(ctx: Lookup, snap: dict) -> list[dict]:
    paths = [e["path"] for e in snap["evidence"]]
    if snap["domain"] and snap["domain"].get("xml_path"):
        paths.append(snap["domain"]["xml_path"])
    if snap["memory"]:
        paths.append(snap["memory"]["path"])
    paths += [d["path"] for d in snap["disks"]] + [p["path"] for p in snap["pcaps"]]
    seen, out = set(), []
    for p in paths:
        if p not in seen:
            seen.add(p)
            out.append(ctx.ids[p])
    return out


def discover(paths, *, search_paths=(), hints=None, follow_recorded: bool = False, roots=()) -> list[dict]:
    """Find the snapshots in ``paths`` (files, directories, libvirt XMLs).

    ``search_paths``: extra directories where disks and memory files that an
    XML or image names are looked up by base name. ``hints``: {path: format}
    for files without a signature (raw memory). ``follow_recorded``: a file
    named inside evidence that lies outside the evidence roots and search paths
    is read (and named in the snapshot's ``warnings``) instead of refused.
    ``roots``: evidence roots besides the inputs' own directories (an audit's
    sources). See the module docstring for the grouping rules and the dict shape.

    Example::

        >>> snaps = discover([Path("lab/libvirt/web01.xml")], search_paths=[Path("lab/images")])  # doctest: +SKIP
        >>> snaps[0]["memory"]["format"], [d["role"] for d in snaps[0]["disks"]]                  # doctest: +SKIP
        ('libvirt-save', ['disk', 'backing'])
    """
    policy = reference_policy(
        roots=evidence_roots(list(roots) + list(paths)), search_paths=search_paths, follow_recorded=follow_recorded
    )
    ctx = Lookup(policy, hints)
    groups, skipped, explicit_domains = _collect(ctx, paths)
    snaps = []
    for key, idents in groups.items():
        related = []
        for dom in (d for d in idents if d["path"] in explicit_domains):
            beside, links = _beside_domain_xml(ctx, dom)
            related += beside
            skipped += links
        members = {i["path"]: i for i in idents + related}
        name_hint = Path(key).name if key != "<explicit>" else "evidence"
        snaps += _group_snapshots(ctx, list(members.values()), name_hint)
    taken: set[str] = set()
    for snap in snaps:
        # prefixed by the VM: its domain name, else the directory it was found in
        owner = snap["domain"].get("name") if snap["domain"] else None
        owner = slug(owner or Path(snap["evidence"][0]["path"]).parent.name)
        base = slug(snap["name"])
        base = base if base == owner else f"{owner}-{base}"
        sid, n = base, 1
        while sid in taken:  # inputs are sorted, so the suffixes are stable too
            n += 1
            sid = f"{base}-{n}"
        taken.add(sid)
        snap["id"] = sid
    # a file without a signature may still be used (a flat VMDK extent): not skipped then
    used = {e["path"] for snap in snaps for e in snap["evidence"]}
    for snap in snaps:
        snap["skipped"] = [s for s in skipped if s["path"] not in used]
    return snaps
