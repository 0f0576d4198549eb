"""Fleet audits: every VM snapshot of a host into one case, from outside.

Sources are snapshot directories (each subdirectory one VM), libvirt domain
XMLs, or a libvirt state/config tree copied from a host. The audit:

- discovers every VM snapshot; a source that cannot be read becomes a
  ``audit/fleet`` row with the reason, the others go on;
- hashes evidence once per file (a base image shared by linked clones is
  read once, and a hash cache keyed by device, inode, size and mtime spares
  re-reading unchanged files on a later audit), with a bound on concurrent
  evidence reads so the host's storage is not flooded;
- analyses snapshots in parallel (local processes, or a Dask cluster), each
  worker writing only its own tables; the parent alone writes case.json,
  after each snapshot, so a killed audit resumes where it stopped and a
  finished snapshot (same fingerprint) is never redone;
- compares with a previous audit's case: new and resolved findings per VM.

Example::

    summary = audit([Path("/var/lib/libvirt")], Path("fleet-case"), jobs=2)
"""
from __future__ import annotations

import concurrent.futures as cf
from pathlib import Path

from toolkit import case as case_store, custody
from toolkit.evidence import discover
from toolkit.pipeline import (analyze_snapshot, evidence_files, hash_evidence, load_hash_cache, load_profile_for,
                              refuse_evidence_inside_case, snapshot_fingerprint, stat_key)
from toolkit.schemas import make_table

def _libvirt_tree_inputs(root: Path) -> list[list[Path]] | None:
    """A copied /etc/libvirt + /var/lib/libvirt tree: one input per domain XML and snapshot XML."""
    domain_xmls = sorted(p for p in root.rglob("qemu/*.xml") if p.is_file())
    if not domain_xmls:
        return None
    inputs = []
    for xml in domain_xmls:
        snaps = sorted((xml.parent / "snapshot" / xml.stem).glob("*.xml"))
        snaps += sorted(p for p in root.rglob(f"qemu/snapshot/{xml.stem}/*.xml") if p not in snaps)
        inputs.append([xml])
        inputs.extend([s] for s in snaps)
    return inputs


def collect_inputs(sources: list[Path]) -> list[list[Path]]:
    """Split sources into independent discovery inputs (one VM each where the layout says so)."""
    inputs = []
    for source in sources:
        source = Path(source)
        if source.is_dir():
            tree = _libvirt_tree_inputs(source)
            if tree is not None:
                inputs.extend(tree)
                continue
            subdirs = sorted(p for p in source.iterdir() if p.is_dir())
            inputs.extend([[d] for d in subdirs] if subdirs else [[source]])
        else:
            inputs.append([source])
    return inputs


def discover_fleet(sources, search_paths=()) -> tuple[list[dict], list[dict]]:
    """(snapshots, failures): a source that cannot be read is a failure row, never fatal."""
    snapshots, failures, seen = [], [], set()
    for group in collect_inputs(sources):
        try:
            found = discover(group, search_paths=search_paths)
        except Exception as exc:  # one unreadable or hostile VM must not stop the fleet
            failures.append({"vm": group[0].name, "status": "failed", "reason": str(exc),
                             "source_path": str(group[0])})
            continue
        for snap in found:
            if snap["id"] in seen:
                continue  # the same snapshot reached through a domain XML and its snapshot XML
            seen.add(snap["id"])
            snap["source_path"] = str(group[0])
            snapshots.append(snap)
    return snapshots, failures


def _worker(snap, case_dir, profile, hashes, search_paths=(), symbols=()):
    # Runs in a child process or on a Dask worker: only this snapshot's tables are written.
    return snap["id"], analyze_snapshot(snap, Path(case_dir), profile, hashes, search_paths=search_paths,
                                        symbols=symbols)


def _warm_up(profile: str | None) -> None:
    """Import the engines, Volatility's plugin tree and dissect's OS plugins in
    a fresh worker (~10 s of CPU) while the parent still hashes the evidence,
    instead of after it, on the way to the first snapshot."""
    import importlib

    from toolkit.engines import ENGINES, vol_context
    from toolkit.pipeline import load_profile_for

    for entry in ENGINES.values():
        importlib.import_module(entry["module"])
    vol_context.preload()
    load_profile_for(profile)


def _may_have_work(case_dir: Path, snapshots: list[dict], manifest: dict, profile_dict: dict) -> bool:
    """False only when every snapshot is sure to be reused: its files unchanged
    since their cached hashes (stat identity) and its fingerprint as recorded."""
    try:
        cache = load_hash_cache(case_dir)
        hashes = {}
        for path in evidence_files(snapshots):
            entry = cache.get(path) or {}
            if entry.get("key") != stat_key(path):
                return True
            hashes[path] = entry["sha256"]
    except (OSError, ValueError, TypeError, KeyError):
        return True  # only a guess: hashing (which reports real problems) comes next
    return any((manifest["snapshots"].get(s["id"]) or {}).get("fingerprint")
               != snapshot_fingerprint(s, hashes, profile_dict) for s in snapshots)


def _executor(spec: str, jobs: int):
    if spec == "local":
        import multiprocessing

        return cf.ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")), None
    if spec.startswith("dask://"):
        try:
            from distributed import Client
        except ImportError:
            from toolkit.errors import SnapscopeError

            raise SnapscopeError("the dask executor needs the 'dask' extra: pip install 'snapscope[dask]'") from None
        client = Client(spec[len("dask://"):], timeout="30s")
        return client.get_executor(pure=False), client
    from toolkit.errors import SnapscopeError

    raise SnapscopeError(f"unknown executor {spec!r}: use 'local' or 'dask://HOST:PORT'")


def compare_with_previous(case: "case_store.Case", snapshot_ids: list[str], previous_case: Path) -> list[dict]:
    """Per VM audited now and before: new and resolved findings (matched on rule,
    entity and explanation) and files added, removed or modified on its disk
    (from the two cases' disk/files tables: tables only, never evidence)."""
    prev = case_store.Case.open(previous_case)
    rows = []

    def finding_keys(df, sid):
        df = df[df["snapshot_id"] == sid] if len(df) else df
        return {(r.rule_id, r.entity_label, r.explanation): r for r in df.itertuples(index=False)}

    def file_hashes(c, sid):
        try:
            df = c.table("disk/files", snapshot=sid)
        except KeyError:
            return {}
        return dict(zip(df["path"], df["sha256"].astype(object).where(df["sha256"].notna(), None)))

    now_findings, before_findings = case.findings, prev.findings
    for sid in snapshot_ids:
        if sid not in prev.snapshots:
            continue  # a VM new to this audit has no history to compare
        now, before = finding_keys(now_findings, sid), finding_keys(before_findings, sid)
        for key, r in now.items():
            if key not in before:
                rows.append({"vm": sid, "change": "new finding", "rule_id": r.rule_id, "severity": r.severity,
                             "entity_label": r.entity_label, "explanation": r.explanation})
        for key, r in before.items():
            if key not in now:
                rows.append({"vm": sid, "change": "resolved finding", "rule_id": r.rule_id, "severity": r.severity,
                             "entity_label": r.entity_label, "explanation": r.explanation})
        files_now, files_before = file_hashes(case, sid), file_hashes(prev, sid)
        for path in sorted(set(files_now) | set(files_before)):
            if path not in files_before:
                rows.append({"vm": sid, "change": "file added", "path": path})
            elif path not in files_now:
                rows.append({"vm": sid, "change": "file removed", "path": path})
            elif files_now[path] != files_before[path] and files_now[path] and files_before[path]:
                rows.append({"vm": sid, "change": "file modified", "path": path})
    return rows


def _analyse_fleet(pool, snapshots, case_dir, manifest, profile_dict, failures, *, io_slots, search_paths, symbols,
                   progress) -> tuple[dict, dict, dict]:
    """Hash the evidence, reuse finished snapshots, analyse the rest on ``pool``;
    returns ({snapshot id: status}, evidence files, "before" hashes).
    case.json is saved after every snapshot."""
    files = evidence_files(snapshots)  # keyed by resolved path: a shared base image is hashed once
    before = hash_evidence(case_dir, files, "before", progress, io_slots=io_slots, use_cache=True)
    statuses = {}
    todo = []
    for snap in snapshots:
        snap["fingerprint"] = snapshot_fingerprint(snap, before, profile_dict)
        prev = manifest["snapshots"].get(snap["id"])
        if prev and prev.get("fingerprint") == snap["fingerprint"]:
            statuses[snap["id"]] = "reused"
            custody.append_event(case_dir, action="snapshot.reuse", detail={"snapshot": snap["id"]})
        else:
            todo.append(snap)
    # Big snapshots first keeps both cores busy to the end instead of one straggler.
    todo.sort(key=lambda s: -sum(Path(e["path"]).stat().st_size for e in s["evidence"]))
    futures = {pool.submit(_worker, snap, str(case_dir), profile_dict, before, [str(p) for p in search_paths],
                           [str(p) for p in symbols]): snap for snap in todo}
    for n, future in enumerate(cf.as_completed(futures), start=1):
        snap = futures[future]
        try:
            sid, entry = future.result()
        except Exception as exc:
            failures.append({"vm": snap["id"], "status": "failed", "reason": f"{type(exc).__name__}: {exc}",
                             "source_path": snap.get("source_path")})
            continue
        entry["fingerprint"] = snap["fingerprint"]
        manifest["snapshots"][sid] = entry
        # Readable in part: say what could not be analysed, keep what could.
        statuses[sid] = "partial" if entry.get("errors") else "analysed"
        case_store.save_manifest(case_dir, manifest)  # resumable: this snapshot is done
        custody.append_event(case_dir, action="snapshot.done", detail={"snapshot": sid})
        progress("analysing snapshots", n, len(futures))
    return statuses, files, before


def audit(sources: list[Path], case_dir: Path, *, profile: str | None = None, jobs: int = 2,
          executor: str = "local", io_slots: int = 1, previous: Path | None = None, search_paths=(),
          symbols=(), progress=lambda *a, **k: None) -> dict:
    """Audit every VM snapshot in ``sources`` into ``case_dir``; returns the fleet summary."""
    case_dir = Path(case_dir)
    snapshots, failures = discover_fleet([Path(s) for s in sources], search_paths)
    refuse_evidence_inside_case(snapshots, case_dir)
    profile_dict = load_profile_for(profile)
    manifest = case_store.init_case(case_dir)
    custody.append_event(case_dir, action="audit.start", detail={"sources": [str(s) for s in sources],
                                                                 "snapshots": len(snapshots), "jobs": jobs,
                                                                 "executor": executor})
    pool, client = _executor(executor, jobs)
    try:
        if executor == "local" and _may_have_work(case_dir, snapshots, manifest, profile_dict):
            for _ in range(jobs):
                pool.submit(_warm_up, profile)  # starts the workers now: their imports overlap the hashing
        statuses, files, before = _analyse_fleet(pool, snapshots, case_dir, manifest, profile_dict, failures, io_slots=io_slots,
                                  search_paths=search_paths, symbols=symbols, progress=progress)
    finally:
        pool.shutdown(wait=True)
        if client is not None:
            client.close()
    after = hash_evidence(case_dir, files, "after", progress, io_slots=io_slots)
    changed = [p for p in files if before[p] != after[p]]
    case_store.write_combined_tables(case_dir)
    case = case_store.Case.open(case_dir)
    findings = case.findings
    fleet_rows = []
    for snap in snapshots:
        sid = snap["id"]
        if sid not in statuses:
            continue
        counts = findings[findings["snapshot_id"] == sid]["severity"].value_counts().to_dict() if len(findings) else {}
        errors = (manifest["snapshots"].get(sid) or {}).get("errors") or []
        fleet_rows.append({"vm": sid, "status": statuses[sid], "source_path": snap.get("source_path"),
                           "reason": "; ".join(errors[:3]) or None,
                           **{sev: int(counts.get(sev, 0)) for sev in ("critical", "high", "medium", "low", "info")}})
    fleet_rows += failures
    fleet = make_table("audit/fleet", fleet_rows, snapshot_id="fleet", source="audit")
    case_store.write_table(case_dir, "audit/fleet", "fleet", fleet)
    changes = None
    if previous is not None:
        changes = make_table("audit/changes", compare_with_previous(case, list(statuses), Path(previous)),
                             snapshot_id="fleet", source="audit")
        case_store.write_table(case_dir, "audit/changes", "fleet", changes)
    manifest["runs"].append({"at": case_store.now_iso(), "kind": "audit", "profile": profile_dict.get("name"),
                             "sources": [str(s) for s in sources], "evidence_unchanged": not changed})
    case_store.save_manifest(case_dir, manifest)
    custody.append_event(case_dir, action="audit.end", detail={"evidence_unchanged": not changed})
    if changed:
        from toolkit.errors import CaseError

        raise CaseError(f"evidence changed during the audit: {', '.join(changed)}")
    return {"case": str(case_dir), "fleet": fleet, "changes": changes}
