"""The analyze pipeline: discover -> hash -> engines -> tables -> hash again.

The CLI's ``analyze`` and ``demo`` are thin shells over :func:`analyze`.
Engines plug in through ``toolkit.engines.ENGINES``; this module never needs
to change when one is added.

Example::

    summary = analyze([Path("lab/qemu")], Path("case"), profile="linux-triage")
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import importlib
import json
import os
import shutil
import threading
from pathlib import Path

import pandas as pd

from toolkit import case as case_store, custody
from toolkit.engines import ENGINES
from toolkit.correlate.findings import correlate_snapshot
from toolkit.correlate.timeline import build_timeline
from toolkit.errors import CaseError
from toolkit.evidence import discover
from toolkit.hashing import sha256_file
from toolkit.schemas import make_table
from toolkit.versions import tool_versions


def _noop_progress(description, completed=None, total=None):
    pass


def refuse_evidence_inside_case(snapshots: list[dict], case_dir: Path) -> None:
    root = case_dir.resolve()
    for snap in snapshots:
        for item in snap["evidence"]:
            path = Path(item["path"]).resolve()
            if path == root or root in path.parents:
                raise CaseError(f"{item['path']}: evidence lies inside the case directory {case_dir}; refusing to analyse it")


def evidence_files(snapshots: list[dict]) -> dict[str, dict]:
    files = {}
    for snap in snapshots:
        for item in snap["evidence"]:
            files[str(Path(item["path"]).resolve())] = item
    return files


def stat_key(path: str) -> str:
    """A file's identity for the hash cache: device, inode, size, mtime."""
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def hash_cache_path(case_dir: Path) -> Path:
    return case_dir / "derived" / "cache" / "evidence-hashes.json"


def load_hash_cache(case_dir: Path) -> dict:
    """{resolved path: {"key": stat_key, "sha256": ...}} from the case's hash cache ({} if none)."""
    cache_file = hash_cache_path(case_dir)
    return json.loads(cache_file.read_text()) if cache_file.exists() else {}


def hash_evidence(case_dir: Path, files: dict[str, dict], phase: str, progress=_noop_progress, *,
                  io_slots: int = 1, use_cache: bool = False) -> dict[str, str]:
    """Hash every evidence file once and log each hash in custody; returns {path: sha256}.

    ``io_slots`` bounds how many files are read at once (a host's storage is
    shared). With ``use_cache`` (audits, phase "before" only) a file whose
    device, inode, size and mtime match the case's hash cache is not re-read;
    the "after" hashes are always read from the bytes.
    """
    cache_file = hash_cache_path(case_dir)
    cache = load_hash_cache(case_dir) if use_cache else {}
    total = sum(Path(p).stat().st_size for p in files)
    done, lock = 0, threading.Lock()

    def tick(n):
        nonlocal done
        with lock:
            done += n
            progress(f"hashing evidence ({phase})", done, total)

    def work(path):
        st = os.stat(path)
        key = stat_key(path)
        if use_cache and cache.get(path, {}).get("key") == key:
            tick(st.st_size)
            return path, cache[path]["sha256"], st.st_size, True, key
        return path, sha256_file(path, tick), st.st_size, False, key

    hashes = {}
    with cf.ThreadPoolExecutor(max_workers=max(1, io_slots)) as pool:
        for path, digest, size, cached, key in pool.map(work, list(files)):
            hashes[path] = digest
            cache[path] = {"key": key, "sha256": digest}
            custody.append_event(case_dir, action=f"evidence.hash.{phase}", path=path, sha256=digest, size=size,
                                 detail={"format": files[path].get("format"), "cached": cached})
    case_store.atomic_write_bytes(cache_file, json.dumps(cache, indent=1).encode())
    return hashes


DEFAULT_PROFILE = "linux-triage"


def load_profile_for(profile: str | None) -> dict:
    """The parsed profile; the memory engine's loader owns the format."""
    try:
        profiles = importlib.import_module("toolkit.profiles")
    except ModuleNotFoundError:
        return {"name": profile or "default"}
    profile_dict = profiles.load_profile(profile or DEFAULT_PROFILE)
    # An unknown plugin or function fails here, before any evidence is read.
    profiles.validate_profile(profile_dict)
    return profile_dict


def snapshot_times(snapshot: dict) -> dict:
    """Capture times the evidence itself states (memory dump, snapshot XML), for the timeline."""
    times = {}
    for item in snapshot.get("evidence", []):
        facts = item.get("facts") or {}
        for key in ("creation_time", "captured_at", "snapshot_time"):
            if facts.get(key):
                times[f"{item.get('format')} {key.replace('_', ' ')}"] = facts[key]
    return times


def run_engines(snapshot: dict, ctx: dict, engine_names=None) -> dict[str, pd.DataFrame]:
    """Run every applicable engine for one snapshot; an engine crash becomes a diagnostic."""
    produced: dict[str, list[pd.DataFrame]] = {}
    shared: dict = {}
    for name, entry in ENGINES.items():
        if engine_names is not None and name not in engine_names:
            continue
        if entry.get("applies") and not entry["applies"](snapshot):
            continue
        module = importlib.import_module(entry["module"])
        ctx = {**ctx, **shared, "shared": shared,
               "tables": {k: pd.concat(v, ignore_index=True) for k, v in produced.items()}}
        try:
            tables = module.run(snapshot, ctx)
        except Exception as exc:  # one engine failing must not lose the others' tables
            tables = {"diagnostics": make_table("diagnostics", [{
                "severity": "error", "what": f"engine {name}", "where": snapshot["id"],
                "why": f"{type(exc).__name__}: {exc}"}], snapshot_id=snapshot["id"], source=f"engine/{name}")}
        for table, df in tables.items():
            produced.setdefault(table, []).append(df)
    for reader in shared.values():
        close = getattr(reader, "close", None)
        if callable(close):
            close()
    return {k: pd.concat(v, ignore_index=True) for k, v in produced.items()}


def snapshot_fingerprint(snapshot: dict, hashes: dict[str, str], profile: dict) -> str:
    """What a snapshot's tables depend on: evidence bytes, profile, rules, tool versions."""

    evidence = sorted(hashes[str(Path(e["path"]).resolve())] for e in snapshot["evidence"])
    payload = json.dumps({"evidence": evidence, "profile": profile, "rules": rules_digest(),
                          "tools": tool_versions(), "engines": sorted(ENGINES)}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def rules_digest() -> str:
    """Content hash of the shipped rules and profiles (a rule change means re-analysis)."""

    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for folder in ("rules", "profiles"):
        for path in sorted((root / folder).rglob("*")):
            if path.is_file() and path.suffix not in (".pyc",):
                digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def analyze_snapshot(snap: dict, case_dir: Path, profile_dict: dict, hashes: dict[str, str], *,
                     engine_names=None, search_paths=(), symbols=(), progress=_noop_progress) -> dict:
    """Engines, correlation and table writes for one snapshot; returns its manifest entry.

    Writes only this snapshot's table files, so several can run in parallel
    processes; the caller owns case.json.
    """
    ctx = {"case_dir": case_dir, "derived_dir": case_dir / "derived" / snap["id"],
           "cache_dir": case_dir / "derived" / "cache", "profile": profile_dict, "progress": progress,
           "search_paths": [Path(p) for p in search_paths], "symbols": [Path(p) for p in symbols],
           # content keys for caches shared between snapshots (a linked clones' base image)
           "evidence_hashes": hashes}
    ctx["derived_dir"].mkdir(parents=True, exist_ok=True)
    ctx["cache_dir"].mkdir(parents=True, exist_ok=True)
    tables = run_engines(snap, ctx, engine_names)
    # What discovery could not use is data too: a damaged file it set aside, a file it did not recognise.
    intake = [{"severity": "error", "what": "evidence problem", "where": snap["id"], "why": p}
              for p in snap.get("problems") or []]
    for skipped in snap.get("skipped") or []:
        # a recognised format that could not be read is lost evidence; an unknown file is just noted
        damaged = str(skipped.get("reason", "")).startswith("unreadable")
        intake.append({"severity": "error" if damaged else "info",
                       "what": f"{Path(skipped.get('path', '')).name} unreadable" if damaged else "file not used",
                       "where": skipped.get("path"), "why": skipped.get("reason")})
    if intake:
        tables["diagnostics"] = pd.concat([df for df in (tables.get("diagnostics"),
                                           make_table("diagnostics", intake, snapshot_id=snap["id"], source="intake"))
                                           if df is not None], ignore_index=True)
    evidence_rows = [{"path": str(Path(e["path"]).resolve()), "format": e.get("format"),
                      "size": Path(e["path"]).stat().st_size, "sha256": hashes[str(Path(e["path"]).resolve())],
                      "role": e.get("role")} for e in snap["evidence"]]
    tables["evidence"] = make_table("evidence", evidence_rows, snapshot_id=snap["id"], source="intake")
    # Correlation reads the engines' tables only, never the evidence.
    findings, problems, _graph = correlate_snapshot(tables, snap["id"])
    tables["findings"] = findings
    times = snapshot_times(snap)
    tables["timeline"] = build_timeline(tables, snap["id"], times)
    tables["diagnostics"] = pd.concat([df for df in (tables.get("diagnostics"), problems) if df is not None],
                                      ignore_index=True)
    # A table this run no longer produces must not survive from an earlier run.
    for stale in (case_dir / "tables").rglob(f"{snap['id']}.parquet"):
        if str(stale.parent.relative_to(case_dir / "tables")) not in tables:
            stale.unlink()
    for name, df in tables.items():
        case_store.write_table(case_dir, name, snap["id"], df)
    return {
        "name": snap["name"], "domain": snap.get("domain"),
        "memory": snap.get("memory"), "disks": snap.get("disks"), "pcaps": snap.get("pcaps"),
        "evidence": [str(Path(e["path"]).resolve()) for e in snap["evidence"]],
        "tables": {name: len(df) for name, df in tables.items()},
        "findings": findings["severity"].value_counts().to_dict(),
        "times": times,  # capture times the evidence states, kept for re-correlation
        "errors": [f"{r.what}: {r.why}" for r in tables["diagnostics"].itertuples() if r.severity == "error"],
    }


def analyze(paths: list[Path], case_dir: Path, *, profile: str | None = None, search_paths=(), symbols=(),
            engine_names=None, progress=_noop_progress) -> dict:
    """Analyse the snapshots found in ``paths`` into ``case_dir``; return a summary dict."""
    case_dir = Path(case_dir)
    snapshots = discover([Path(p) for p in paths], search_paths=search_paths)
    refuse_evidence_inside_case(snapshots, case_dir)
    profile_dict = load_profile_for(profile)
    created = not case_dir.exists()
    try:
        manifest = case_store.init_case(case_dir)
    except BaseException:
        if created:
            shutil.rmtree(case_dir, ignore_errors=True)
        raise
    custody.append_event(case_dir, action="analyze.start", detail={"paths": [str(p) for p in paths],
                                                                   "profile": profile_dict.get("name")})
    files = evidence_files(snapshots)
    before = hash_evidence(case_dir, files, "before", progress)
    manifest["tools"] = tool_versions()
    for path, digest in before.items():
        manifest["evidence"][path] = {"format": files[path].get("format"), "size": Path(path).stat().st_size,
                                      "sha256": digest}
    summary = {"case": str(case_dir), "snapshots": []}
    for snap in snapshots:
        fingerprint = snapshot_fingerprint(snap, before, profile_dict)
        previous = manifest["snapshots"].get(snap["id"])
        if previous and previous.get("fingerprint") == fingerprint:
            # Same evidence bytes, profile, rules and tool versions: the stored tables stand.
            custody.append_event(case_dir, action="snapshot.reuse", detail={"snapshot": snap["id"]})
            entry = previous
        else:
            entry = analyze_snapshot(snap, case_dir, profile_dict, before, engine_names=engine_names,
                                     search_paths=search_paths, symbols=symbols, progress=progress)
            entry["fingerprint"] = fingerprint
            manifest["snapshots"][snap["id"]] = entry
            # Saved per snapshot so an interrupted run keeps what it finished.
            case_store.save_manifest(case_dir, manifest)
        summary["snapshots"].append({"id": snap["id"], "name": snap["name"], "tables": entry["tables"],
                                     "reused": entry is previous})
    case_store.write_combined_tables(case_dir)
    after = hash_evidence(case_dir, files, "after", progress)
    changed = [p for p in before if before[p] != after[p]]
    manifest["runs"].append({"at": case_store.now_iso(), "profile": profile_dict.get("name"),
                             "paths": [str(p) for p in paths], "evidence_unchanged": not changed})
    case_store.save_manifest(case_dir, manifest)
    custody.append_event(case_dir, action="analyze.end", detail={"evidence_unchanged": not changed})
    if changed:
        raise CaseError(f"evidence changed during analysis: {', '.join(changed)}")
    summary["evidence_unchanged"] = True
    return summary


def recorrelate(case_dir: Path) -> dict:
    """Re-run correlation and the timeline over a case's stored tables (after a
    rule change), without touching evidence. Returns {snapshot_id: findings count}."""
    case_dir = Path(case_dir)
    case = case_store.Case.open(case_dir)
    manifest = case.manifest
    derived = {"findings", "timeline"}
    counts = {}
    for sid, entry in manifest["snapshots"].items():
        tables = {name: case.table(name, snapshot=sid) for name in case.tables() if name not in derived}
        tables = {name: df.reset_index(drop=True) for name, df in tables.items()}
        # Correlation's own diagnostics from an earlier run are replaced, the engines' kept.
        if "diagnostics" in tables:
            tables["diagnostics"] = tables["diagnostics"][tables["diagnostics"]["source"] != "correlate"]
        findings, problems, _graph = correlate_snapshot(tables, sid)
        timeline = build_timeline(tables, sid, entry.get("times") or {})
        case_store.write_table(case_dir, "findings", sid, findings)
        case_store.write_table(case_dir, "timeline", sid, timeline)
        if "diagnostics" in tables:
            diags = pd.concat([tables["diagnostics"], problems], ignore_index=True)
            case_store.write_table(case_dir, "diagnostics", sid, diags)
        entry["findings"] = findings["severity"].value_counts().to_dict()
        counts[sid] = len(findings)
    case_store.save_manifest(case_dir, manifest)
    case_store.write_combined_tables(case_dir)
    custody.append_event(case_dir, action="correlate", detail={"findings": counts})
    return counts
