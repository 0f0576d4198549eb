"""The VM view of a case: one moment analysed once, one answer per VM.

Two steps around the per-snapshot analysis of :mod:`toolkit.pipeline`:

- before it, :func:`settle_same_moments`: among the snapshots of one VM (and
  among snapshots nothing ties to a VM), memory artefacts holding the same RAM
  are recognised by content (:mod:`toolkit.memory.same_ram`: sampled page
  hashes, then every page compared). One of them is analysed, the others are
  recorded as "same moment as" it with the comparison as proof. Signatures and
  comparisons are cached in the manifest by the artefacts' sha256, so a re-run
  opens nothing;
- after it, :func:`refresh_vm_tables`: snapshots are grouped into VMs
  (:mod:`toolkit.evidence.vms`) and ordered in time, and three tables are
  written per VM: ``vm/moments`` (every snapshot, its moment and the proof),
  ``vm/changes`` (what appeared or went between consecutive moments) and
  ``vm/findings`` (each finding once, with the snapshots it was seen in, plus
  the changes that matter). An audit's fleet stacking (``audit/stacking``)
  raises the confidence of findings whose entity is rare in the fleet.

Example::

    same = settle_same_moments(snapshots, todo, Path("case"), manifest, hashes)
    vms = refresh_vm_tables(Path("case"), manifest)
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from toolkit.case import custody
from toolkit.case.lock import case_lock
from toolkit.case.store import load_manifest, save_manifest, table_path, write_table
from toolkit.correlate.changes import KINDS, change_findings, diff_tables
from toolkit.correlate.stacking import CATEGORY_TABLES, raise_rare, rare_notes, stack, vm_items
from toolkit.correlate.vm_findings import vm_findings
from toolkit.engines import no_progress
from toolkit.errors import CaseError, MemoryFormatError
from toolkit.evidence.vms import group_vms
from toolkit.memory import open_image
from toolkit.memory.same_ram import compare_ram, ram_signature
from toolkit.schemas import empty, make_table
from toolkit.snapshot import manifest_entry

# Which artefact of a moment is analysed: the cheapest to open (an ELF needs no conversion).
FORMAT_PREFERENCE = (
    "elf-core",
    "elf",
    "kdump",
    "kdump-flattened",
    "libvirt-save",
    "qemu-migration",
    "compressed-qemu-migration",
    "qcow2",
)
VM_TABLES = ("vm/moments", "vm/changes", "vm/findings")


def _rank(snap: dict) -> int:
    fmt = (snap.get("memory") or {}).get("format")
    return FORMAT_PREFERENCE.index(fmt) if fmt in FORMAT_PREFERENCE else len(FORMAT_PREFERENCE)


def _memory_key(snap: dict, hashes: dict[str, str]) -> str:
    """The memory artefact by content: file sha256 plus the internal snapshot read from it."""
    memory = snap["memory"]
    return f"{hashes[str(Path(memory['path']).resolve())]}@{memory.get('snapshot') or ''}"


class _Images:
    """Memory images opened on demand for the comparison, all closed at the end."""

    def __init__(self, case_dir: Path, references=None):
        # references: a callable (roots -> ReferencePolicy), the run's policy for a qcow2's backing files
        self.case_dir, self.references, self.open, self.failed = case_dir, references, {}, {}

    def get(self, snap):
        sid = snap["id"]
        if sid not in self.open and sid not in self.failed:
            memory = snap["memory"]
            try:
                policy = self.references(snap.get("roots") or ()) if self.references else None
                self.open[sid] = open_image(
                    memory["path"],
                    snapshot=memory.get("snapshot"),
                    derived_dir=self.case_dir / "derived" / sid,
                    references=policy,
                )
            except MemoryFormatError as exc:
                # the snapshot is analysed on its own; its memory engine reports the same problem
                self.failed[sid] = str(exc)
        return self.open.get(sid)

    def close(self):
        for image in self.open.values():
            image.close()


def _pools(snapshots: list[dict]) -> list[list[dict]]:
    """Snapshots with memory, by VM; those nothing ties to a VM are compared with each other."""
    with_memory = [s for s in snapshots if s.get("memory")]
    by_id = {s["id"]: s for s in with_memory}
    pools: dict[str, list[dict]] = {}
    for vm in group_vms(with_memory):
        key = "\0unidentified" if vm["basis"] == "one snapshot" else vm["id"]
        pools.setdefault(key, []).extend(by_id[sid] for sid in vm["snapshots"])
    return [p for p in pools.values() if len(p) > 1]


def settle_same_moments(
    snapshots: list[dict],
    todo: list[dict],
    case_dir: Path,
    manifest: dict,
    hashes: dict[str, str],
    analysed: set[str] = frozenset(),
    progress=no_progress,
    references=None,
) -> dict[str, dict]:
    """{snapshot id: {"same_moment_as": id, "proof": {...}}} for snapshots of ``todo`` whose
    memory holds the same RAM as another snapshot's, which is (or will be) analysed.

    The snapshot analysed for a moment is one already analysed (``analysed``), else the
    artefact in the cheapest format (:data:`FORMAT_PREFERENCE`), else the first given.
    ``references`` (roots -> ReferencePolicy, e.g. ``RunOptions.references``) is the run's policy
    for files a memory artefact names (a qcow2's backing files).
    """
    todo_ids = {s["id"] for s in todo}
    order = {s["id"]: n for n, s in enumerate(snapshots)}
    signatures = manifest.setdefault("ram_signatures", {})
    comparisons = manifest.setdefault("ram_comparisons", {})
    decided: dict[str, dict] = {}
    images = _Images(case_dir, references)
    pools = [p for p in _pools(snapshots) if any(s["id"] in todo_ids for s in p)]
    total, done = sum(len(p) for p in pools), 0
    try:
        for pool in pools:
            pool = [s for s in pool if s["id"] in todo_ids or s["id"] in analysed]
            pool.sort(key=lambda s: (s["id"] in todo_ids, _rank(s), order[s["id"]]))
            leaders: dict[tuple, list[dict]] = {}
            for snap in pool:
                done += 1
                progress("comparing memory artefacts", done, total)
                key = _memory_key(snap, hashes)
                if key not in signatures:
                    image = images.get(snap)
                    signatures[key] = (
                        ram_signature(image) if image is not None else {"error": images.failed[snap["id"]]}
                    )
                signature = signatures[key]
                if "error" in signature:
                    continue
                bucket = leaders.setdefault((signature["low_ram_end"], signature["digest"]), [])
                for leader in bucket if snap["id"] in todo_ids else ():
                    pair = f"{_memory_key(leader, hashes)}|{key}"
                    if pair not in comparisons:
                        a, b = images.get(leader), images.get(snap)
                        if a is None or b is None:
                            continue
                        comparisons[pair] = compare_ram(a, b)
                    if comparisons[pair]["same"]:
                        proof = {
                            **comparisons[pair],
                            "compared_with": leader["memory"]["path"],
                            "sampled_pages": signature["pages"],
                            "sampled_nonzero": signature["nonzero"],
                        }
                        decided[snap["id"]] = {"same_moment_as": leader["id"], "proof": proof}
                        break
                else:
                    bucket.append(snap)
    finally:
        images.close()
    return decided


def same_moment_entry(snap: dict, decision: dict, fingerprint: str) -> dict:
    """The manifest entry of a snapshot not analysed because another holds its moment."""
    return manifest_entry(
        snap,
        tables={},
        findings={},
        errors=[],
        same_moment_as=decision["same_moment_as"],
        same_moment_proof=decision["proof"],
        fingerprint=fingerprint,
    )


def skip_same_moments(snapshots, todo, case_dir, manifest, hashes, statuses, progress, references=None) -> list[dict]:
    """The snapshots of ``todo`` still to analyse once those holding the same RAM as another are
    recorded as "same moment as" it, with the comparison as proof (manifest, custody), not analysed.

    Example::

        todo = skip_same_moments(snapshots, todo, case_dir, manifest, hashes, statuses)
    """
    analysed = {sid for sid, status in statuses.items() if status == "reused"}
    decisions = settle_same_moments(snapshots, todo, case_dir, manifest, hashes, analysed, progress, references)
    for snap in todo:
        decision = decisions.get(snap["id"])
        if decision is None:
            continue
        for stale in (case_dir / "tables").rglob(f"{snap['id']}.parquet"):
            stale.unlink()  # tables of an earlier run in which it was analysed
        manifest["snapshots"][snap["id"]] = same_moment_entry(snap, decision, snap["fingerprint"])
        statuses[snap["id"]] = "same moment"
        custody.append_event(
            case_dir,
            action="snapshot.same_moment",
            detail={"snapshot": snap["id"], "same_moment_as": decision["same_moment_as"], "proof": decision["proof"]},
        )
    save_manifest(case_dir, manifest)
    return [snap for snap in todo if snap["id"] not in decisions]


def snapshot_tables(case_dir: Path, snapshot_id: str, names) -> dict[str, pd.DataFrame]:
    """The named tables of one snapshot that the case holds, read from their own files."""
    out = {}
    for name in names:
        path = table_path(Path(case_dir), name, snapshot_id)
        if path.is_file():
            out[name] = pd.read_parquet(path)
    return out


def _vms(manifest: dict) -> tuple[list[dict], dict[str, str]]:
    entries = [{"id": sid, **entry} for sid, entry in manifest["snapshots"].items()]
    same = {sid: e["same_moment_as"] for sid, e in manifest["snapshots"].items() if e.get("same_moment_as")}
    return group_vms(entries, same_vm=list(same.items())), same


def _moment_rows(vm: dict, manifest: dict, same: dict[str, str]) -> tuple[list[dict], list[str], dict]:
    """(vm/moments rows, analysed snapshots in moment order, {snapshot: moment time})."""
    members: dict[str, list[str]] = {}
    for sid in vm["snapshots"]:
        members.setdefault(same.get(sid, sid), []).append(sid)

    def best(rep):
        # the moment's time: an evidence-stated time of any of its artefacts beats a file mtime
        stamps = [vm["times"][s] for s in members[rep] if vm["times"][s][0]]
        stated = [t for t in stamps if "modification time" not in str(t[1])]
        return min(stated or stamps, key=lambda t: pd.Timestamp(t[0])) if stamps else (None, None)

    moment_time = {rep: best(rep) for rep in members}
    reps = sorted(members, key=lambda r: (moment_time[r][0] is None, pd.Timestamp(moment_time[r][0] or 0), r))
    rows = []
    for n, rep in enumerate(reps, start=1):
        for sid in members[rep]:
            entry = manifest["snapshots"][sid]
            proof = entry.get("same_moment_proof") or {}
            status = "same moment" if sid in same else ("partial" if entry.get("errors") else "analysed")
            stamp, source = moment_time[rep]  # one moment, one time, whichever artefact states it best
            stamp = pd.Timestamp(stamp) if stamp else None  # (ISO strings of mixed precision coerce badly)
            rows.append(
                {
                    "vm": vm["id"],
                    "snapshot": sid,
                    "moment": n,
                    "status": status,
                    "same_moment_as": rep,
                    "captured_at": stamp,
                    "captured_at_source": source,
                    "memory_path": (entry.get("memory") or {}).get("path"),
                    "memory_format": (entry.get("memory") or {}).get("format"),
                    "pages_compared": proof.get("pages_compared"),
                    "pages_differing": proof.get("pages_differing"),
                    "proof": json.dumps(proof) if proof else None,
                }
            )
    times = {sid: moment_time[same.get(sid, sid)][0] for sid in vm["snapshots"]}
    times = {sid: pd.Timestamp(t) if t else None for sid, t in times.items()}
    return rows, reps, times


def _hostname(case_dir: Path, snapshots: list[str]) -> str | None:
    """The hostname the guest's disk states (disk/system), from the latest snapshot that has one."""
    for sid in reversed(snapshots):
        system = snapshot_tables(case_dir, sid, ["disk/system"]).get("disk/system")
        if system is not None and len(system) and isinstance(system["hostname"].iloc[0], str):
            return system["hostname"].iloc[0]
    return None


def _stacking_notes(case_dir: Path, vms: list[dict], same: dict[str, str]) -> dict[str, dict[str, str]]:
    path = table_path(case_dir, "audit/stacking", "fleet")
    if not path.is_file():
        return {}
    return rare_notes(pd.read_parquet(path).to_dict("records"), _per_vm_items(case_dir, vms, same))


def _per_vm_items(case_dir: Path, vms: list[dict], same: dict[str, str]) -> dict[str, tuple]:
    names = set(CATEGORY_TABLES.values()) | {"disk/files", "memory/executables"}
    return {
        vm["id"]: vm_items([snapshot_tables(case_dir, sid, names) for sid in vm["snapshots"] if sid not in same])
        for vm in vms
    }


def refresh_vm_tables(case_dir: Path, manifest: dict) -> list[dict]:
    """Group the case's snapshots into VMs and (re)write vm/moments, vm/changes and vm/findings.

    Records the VMs in ``manifest["vms"]`` (the caller saves it) and returns them.
    """
    case_dir = Path(case_dir)
    vms, same = _vms(manifest)
    findings_files = sorted((case_dir / "tables" / "findings").glob("*.parquet"))
    findings = (
        pd.concat([pd.read_parquet(f) for f in findings_files], ignore_index=True)
        if findings_files
        else empty("findings")
    )
    notes = _stacking_notes(case_dir, vms, same)
    change_tables = {table for table, *_ in KINDS.values()}
    for vm in vms:
        moments, reps, times = _moment_rows(vm, manifest, same)
        vm["hostname"] = _hostname(case_dir, reps)
        tables = {sid: snapshot_tables(case_dir, sid, change_tables) for sid in reps}
        changes = []
        for a, b in zip(reps, reps[1:]):
            changes += diff_tables(tables[a], tables[b], a, b, vm["id"])
        rows = vm_findings(vm, findings, same, times, change_findings(changes, tables, times))
        rows = raise_rare(rows, notes.get(vm["id"], {}))
        for name, data in (("vm/moments", moments), ("vm/changes", changes), ("vm/findings", rows)):
            write_table(case_dir, name, vm["id"], make_table(name, data, snapshot_id=vm["id"], source="vm"))
    current = {vm["id"] for vm in vms}
    for name in VM_TABLES:
        for stale in (case_dir / "tables" / name).glob("*.parquet"):
            if stale.stem not in current:
                stale.unlink()  # a VM regrouped under another id must not leave its old answer behind
    manifest["vms"] = {
        vm["id"]: {
            # a libvirt domain's name; else what the guest calls itself, beside where its files are
            "name": vm["name"]
            if vm["basis"] == "libvirt domain" or not vm["hostname"]
            else f"{vm['hostname']} ({vm['name']})",
            "uuid": vm["uuid"],
            "hostname": vm["hostname"],
            "basis": vm["basis"],
            "snapshots": vm["snapshots"],
        }
        for vm in vms
    }
    return vms


def stack_fleet(case_dir: Path, manifest: dict) -> pd.DataFrame:
    """Least-frequency-of-occurrence over the case's VMs -> ``audit/stacking`` (written), then the
    VM findings again, with the confidence of findings on rare entities raised."""
    case_dir = Path(case_dir)
    vms, same = _vms(manifest)
    table = make_table("audit/stacking", stack(_per_vm_items(case_dir, vms, same)), snapshot_id="fleet", source="audit")
    write_table(case_dir, "audit/stacking", "fleet", table)
    refresh_vm_tables(case_dir, manifest)
    return table


def diff_snapshots(case_dir: Path, snapshot_a: str, snapshot_b: str) -> pd.DataFrame:
    """``memory/diff`` rows between two snapshots of a case, from their tables: processes,
    sockets, modules, kernel checks, persistence entries and files that are new, gone or changed
    in B. A snapshot recorded as the same moment as another is compared through that one.

    Example::

        diff_snapshots(Path("case"), "web01-monday", "web01-tuesday")   # also written as table memory/diff
    """
    case_dir = Path(case_dir)
    manifest = load_manifest(case_dir)
    analysed = []
    for sid in (snapshot_a, snapshot_b):
        entry = manifest["snapshots"].get(sid)
        if entry is None:
            known = ", ".join(sorted(manifest["snapshots"])) or "none"
            raise CaseError(f"{case_dir}: no snapshot {sid!r} in this case (snapshots: {known})")
        analysed.append(entry.get("same_moment_as") or sid)
    vms, _same = _vms(manifest)
    vm = next((v["id"] for v in vms if snapshot_a in v["snapshots"] and snapshot_b in v["snapshots"]), None)
    names = {table for table, *_ in KINDS.values()}
    rows = diff_tables(
        snapshot_tables(case_dir, analysed[0], names),
        snapshot_tables(case_dir, analysed[1], names),
        analysed[0],
        analysed[1],
        vm,
    )
    diff_id = f"diff_{snapshot_a}__{snapshot_b}"
    table = make_table("memory/diff", rows, snapshot_id=diff_id, source="vm/diff")
    with case_lock(case_dir):
        write_table(case_dir, "memory/diff", diff_id, table)
    return table
