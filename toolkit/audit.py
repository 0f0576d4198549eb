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
- compares with a previous audit's case: new and resolved findings per VM;
- stacks the fleet (``audit/stacking``, :mod:`toolkit.correlate.stacking`): what
  runs, listens, persists or is loaded on few of the VMs, and raises the
  confidence of findings whose entity is rare in the fleet.

:func:`audit_live` first acquires every running domain of a libvirt host
(:mod:`toolkit.acquire`), then audits what it acquired like any evidence;
the case's custody chain continues the acquisition's.

Example::

    summary = audit([Path("/var/lib/libvirt")], Path("fleet-case"), jobs=2)
    summary = audit_live("qemu:///system", Path("fleet-case"), Path("fleet-evidence"), jobs=2)
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
from pathlib import Path

from toolkit.acquire import AcquireOptions, acquire
from toolkit.allocator import reuse_large_buffers
from toolkit.case.lock import case_lock
from toolkit.case.store import Case, load_manifest, save_manifest, write_table
from toolkit.engines import no_progress
from toolkit.errors import AcquireError, SnapscopeError
from toolkit.evidence import discover
from toolkit.evidence.scan import symlink_skip
from toolkit.pipeline import run_snapshots
from toolkit.schemas import SEVERITIES, make_table
from toolkit.snapshot import RunOptions
from toolkit.vms import stack_fleet


def _libvirt_tree_inputs(root: Path) -> list[list[Path]] | None:
    """A copied /etc/libvirt + /var/lib/libvirt tree: one input per domain XML and snapshot XML."""
    domain_xmls = sorted(p for p in root.rglob("qemu/*.xml") if p.is_file() and not p.is_symlink())
    if not domain_xmls:
        return None
    inputs = []
    for xml in domain_xmls:
        snaps = sorted(p for p in (xml.parent / "snapshot" / xml.stem).glob("*.xml") if not p.is_symlink())
        snaps += sorted(
            p for p in root.rglob(f"qemu/snapshot/{xml.stem}/*.xml") if p not in snaps and not p.is_symlink()
        )
        inputs.append([xml])
        inputs.extend([s] for s in snaps)
    return inputs


def collect_inputs(sources: list[Path]) -> tuple[list[list[Path]], list[dict]]:
    """Split sources into independent discovery inputs (one VM each where the layout says so);
    also fleet rows for symlinked subdirectories, which are not followed (they may lead
    anywhere on the analyst's host: name the target to audit it)."""
    inputs, skipped = [], []
    for source in sources:
        source = Path(source)
        if source.is_dir():
            tree = _libvirt_tree_inputs(source)
            if tree is not None:
                inputs.extend(tree)
                continue
            subdirs = sorted(p for p in source.iterdir() if p.is_dir() and not p.is_symlink())
            skipped += [
                {"vm": p.name, "status": "skipped", "reason": symlink_skip(p)["reason"], "source_path": str(p)}
                for p in sorted(source.iterdir())
                if subdirs and p.is_symlink()  # without subdirectories discover() scans (and reports) them
            ]
            inputs.extend([[d] for d in subdirs] if subdirs else [[source]])
        else:
            inputs.append([source])
    return inputs, skipped


def discover_fleet(sources, search_paths=(), follow_recorded: bool = False) -> tuple[list[dict], list[dict]]:
    """(snapshots, failures): a source that cannot be read is a failure row, never fatal.

    Every source is an evidence root of every VM (a copied libvirt tree names its
    disks inside itself); a file outside them is refused unless ``follow_recorded``.
    """
    groups, failures = collect_inputs(sources)
    snapshots, seen = [], set()
    for group in groups:
        try:
            found = discover(group, search_paths=search_paths, follow_recorded=follow_recorded, roots=sources)
        except Exception as exc:  # one unreadable or hostile VM must not stop the fleet
            failures.append({"vm": group[0].name, "status": "failed", "reason": str(exc), "source_path": str(group[0])})
            continue
        for snap in found:
            if snap["id"] in seen:
                continue  # the same snapshot reached through a domain XML and its snapshot XML
            seen.add(snap["id"])
            snap["source_path"] = str(group[0])
            snapshots.append(snap)
    return snapshots, failures


def _executor(spec: str, jobs: int):
    if spec == "local":
        spawn = multiprocessing.get_context("spawn")
        return cf.ProcessPoolExecutor(max_workers=jobs, mp_context=spawn, initializer=reuse_large_buffers), None
    if spec.startswith("dask://"):
        try:
            from distributed import Client
        except ImportError:
            raise SnapscopeError("the dask executor needs the 'dask' extra: pip install 'snapscope[dask]'") from None
        client = Client(spec[len("dask://") :], timeout="30s")
        return client.get_executor(pure=False), client
    raise SnapscopeError(f"unknown executor {spec!r}: use 'local' or 'dask://HOST:PORT'")


def compare_with_previous(case: Case, snapshot_ids: list[str], previous_case: Path) -> list[dict]:
    """Per VM audited now and before: new and resolved findings (matched on rule,
    entity and explanation) and files added, removed or modified on its disk
    (from the two cases' disk/files tables: tables only, never evidence)."""
    prev = Case.open(previous_case)
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
                rows.append(
                    {
                        "vm": sid,
                        "change": "new finding",
                        "rule_id": r.rule_id,
                        "severity": r.severity,
                        "entity_label": r.entity_label,
                        "explanation": r.explanation,
                    }
                )
        for key, r in before.items():
            if key not in now:
                rows.append(
                    {
                        "vm": sid,
                        "change": "resolved finding",
                        "rule_id": r.rule_id,
                        "severity": r.severity,
                        "entity_label": r.entity_label,
                        "explanation": r.explanation,
                    }
                )
        files_now, files_before = file_hashes(case, sid), file_hashes(prev, sid)
        for path in sorted(set(files_now) | set(files_before)):
            if path not in files_before:
                rows.append({"vm": sid, "change": "file added", "path": path})
            elif path not in files_now:
                rows.append({"vm": sid, "change": "file removed", "path": path})
            elif files_now[path] != files_before[path] and files_now[path] and files_before[path]:
                rows.append({"vm": sid, "change": "file modified", "path": path})
    return rows


def audit(
    sources: list[Path],
    case_dir: Path,
    *,
    jobs: int = 2,
    executor: str = "local",
    io_slots: int = 1,
    previous: Path | None = None,
    progress=no_progress,
    **choices,
) -> dict:
    """Audit every VM snapshot in ``sources`` into ``case_dir``; returns the fleet summary.

    ``choices`` are :class:`toolkit.snapshot.RunOptions` fields (profile, search_paths, symbols, rule_paths).
    Returns {"case", "fleet" (audit/fleet), "changes" (audit/changes or None), "stacking" (audit/stacking)}.
    """
    case_dir = Path(case_dir)
    options = RunOptions.of(**choices)
    snapshots, failures = discover_fleet(
        [Path(s) for s in sources], options.search_paths, follow_recorded=options.follow_recorded_paths
    )
    pool, client = _executor(executor, jobs)
    try:
        result = run_snapshots(
            snapshots,
            case_dir,
            options,
            kind="audit",
            inputs=sources,
            progress=progress,
            pool=pool,
            warm_up=jobs if executor == "local" else 0,
            io_slots=io_slots,
            use_hash_cache=True,
        )
    finally:
        pool.shutdown(wait=True)
        if client is not None:
            client.close()
    statuses = result["statuses"]
    case = Case.open(case_dir)
    findings = case.findings
    fleet_rows = []
    for snap in snapshots:
        sid = snap["id"]
        if statuses.get(sid) in (None, "failed"):
            continue
        counts = findings[findings["snapshot_id"] == sid]["severity"].value_counts().to_dict() if len(findings) else {}
        errors = (result["entries"].get(sid) or {}).get("errors") or []
        fleet_rows.append(
            {
                "vm": sid,
                "status": statuses[sid],
                "source_path": snap.get("source_path"),
                "reason": "; ".join(errors[:3]) or None,
                **{sev: int(counts.get(sev, 0)) for sev in SEVERITIES},
            }
        )
    fleet_rows += result["failures"] + failures
    fleet = make_table("audit/fleet", fleet_rows, snapshot_id="fleet", source="audit")
    with case_lock(case_dir):
        write_table(case_dir, "audit/fleet", "fleet", fleet)
        manifest = load_manifest(case_dir)
        stacking = stack_fleet(case_dir, manifest)
        save_manifest(case_dir, manifest)
        changes = None
        if previous is not None:
            analysed = [sid for sid, status in statuses.items() if status != "failed"]
            changes = make_table(
                "audit/changes",
                compare_with_previous(case, analysed, Path(previous)),
                snapshot_id="fleet",
                source="audit",
            )
            write_table(case_dir, "audit/changes", "fleet", changes)
    return {
        "case": str(case_dir),
        "fleet": fleet,
        "changes": changes,
        "stacking": stacking,
        "custody_repairs": result["custody_repairs"],
    }


def audit_live(
    uri: str,
    case_dir: Path,
    out_dir: Path,
    *,
    acquire_options: dict | None = None,
    progress=no_progress,
    **audit_choices,
) -> dict:
    """Acquire every running domain on ``uri`` into ``out_dir``, then audit that evidence into ``case_dir``.

    ``acquire_options``: :class:`toolkit.acquire.AcquireOptions` fields (merge, pcap_seconds, ...);
    ``audit_choices``: :func:`audit`'s keyword arguments. The summary is audit's, plus ``acquisition``
    (the acquisition's manifest).

    Example: ``audit_live("qemu:///system", Path("case"), Path("evidence"), acquire_options={"merge": True})``
    """
    case_dir, out_dir = Path(case_dir).absolute(), Path(out_dir).absolute()
    if case_dir == out_dir or case_dir in out_dir.parents or out_dir in case_dir.parents:
        raise AcquireError(f"{out_dir}: the acquired evidence and the case {case_dir} must not lie inside each other")
    options = AcquireOptions(uri=uri, **(acquire_options or {}))
    acquisition = acquire([], out_dir, options, all_running=True, progress=progress)
    summary = audit([out_dir], case_dir, progress=progress, **audit_choices)
    return {**summary, "acquisition": acquisition}
