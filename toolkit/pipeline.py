"""The one run path: discover -> hash -> reuse -> engines -> correlate -> case.

:func:`run_snapshots` is the whole sequence, written once, for ``analyze``,
``audit`` and ``demo``: refuse evidence inside the case, load the profile,
create the case and take its lock, hash the evidence ("before"), reuse every
snapshot whose fingerprint is unchanged, analyse the others (in this process,
or on an executor's workers; each one: toolkit.snapshot), save the manifest after each, write the
combined tables, hash the evidence again ("after") and record the run.
:func:`analyze` is discovery plus that; ``toolkit.audit`` adds fleet
discovery, the executor and the comparison with a previous audit.

Engines plug in through ``toolkit.engines.ENGINES``; this module never needs
to change when one is added.

Example::

    summary = analyze([Path("lab/qemu")], Path("case"), profile="linux-triage")
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd

from toolkit import shipped
from toolkit.case import custody
from toolkit.case.adopt import adopt_acquisitions, check_hashes, read_acquisitions, refuse_unfinished_inputs
from toolkit.case.derived import record_derived
from toolkit.case.hashes import hash_evidence, load_hash_cache, stat_key
from toolkit.case.lock import case_lock
from toolkit.case.store import (
    Case,
    init_case,
    load_manifest,
    now_iso,
    save_manifest,
    write_combined_tables,
    write_table,
)
from toolkit.correlate.findings import correlate_snapshot
from toolkit.correlate.timeline import build_timeline
from toolkit.engines import engine_names, no_progress
from toolkit.engines.yara.rules import include_digest
from toolkit.errors import CaseError, RuleError
from toolkit.evidence import discover
from toolkit.profiles import DEFAULT_PROFILE, load_profile
from toolkit.schemas import empty, make_table
from toolkit.snapshot import RunOptions, analyze_snapshot, warm_up_worker
from toolkit.versions import tool_versions
from toolkit.vms import refresh_vm_tables, skip_same_moments


def refuse_evidence_inside_case(snapshots: list[dict], case_dir: Path) -> None:
    """CaseError when an evidence file lies inside the case directory (analysis would write beside it)."""
    root = case_dir.resolve()
    for snap in snapshots:
        for item in snap["evidence"]:
            path = Path(item["path"]).resolve()
            if path == root or root in path.parents:
                raise CaseError(
                    f"{item['path']}: evidence lies inside the case directory {case_dir}; refusing to analyse it"
                )


def evidence_files(snapshots: list[dict]) -> dict[str, dict]:
    """{resolved path: evidence item} over all snapshots (a shared base image once)."""
    files = {}
    for snap in snapshots:
        for item in snap["evidence"]:
            files[str(Path(item["path"]).resolve())] = item
    return files


def _file_digest(paths) -> str:
    """Content hash of the files under ``paths`` (rules, symbols): an edit means re-analysis."""
    digest = hashlib.sha256()
    for root in paths:
        root = Path(root).expanduser()
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            if path.is_file():
                digest.update(str(path).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def snapshot_fingerprint(snapshot: dict, hashes: dict[str, str], profile: dict, options: RunOptions) -> str:
    """What a snapshot's tables depend on: evidence bytes, profile, rules, symbols, tool versions."""
    evidence = sorted(hashes[str(Path(e["path"]).resolve())] for e in snapshot["evidence"])
    user_rules = list(profile.get("yara", {}).get("rule_dirs") or []) + list(options.rule_paths)
    payload = {
        "evidence": evidence,
        "profile": profile,
        "rules": shipped.content_digest(),
        "user_rules": _file_digest(user_rules),
        "user_rule_includes": include_digest(user_rules),  # files `include` pulls in from outside the rule dirs
        "symbols": _file_digest(options.symbols),
        "tools": tool_versions(),
        "engines": engine_names(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _analyze_in_worker(snap, case_dir, profile, hashes, options):
    # Runs in a child process or on a Dask worker: only this snapshot's tables are written.
    return snap["id"], analyze_snapshot(snap, Path(case_dir), profile, hashes, options)


def may_have_work(case_dir: Path, snapshots: list[dict], manifest: dict, profile: dict, options: RunOptions) -> bool:
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
    return any(
        (manifest["snapshots"].get(s["id"]) or {}).get("fingerprint")
        != snapshot_fingerprint(s, hashes, profile, options)
        for s in snapshots
    )


def _open_case(case_dir: Path) -> None:
    """Create the case layout (or check an existing one); a refused new directory is not left behind."""
    created = not case_dir.exists()
    try:
        init_case(case_dir)
    except BaseException:
        if created:
            shutil.rmtree(case_dir, ignore_errors=True)
        raise


def run_snapshots(
    snapshots: list[dict],
    case_dir: Path,
    options: RunOptions,
    *,
    kind: str,
    inputs,
    progress=no_progress,
    pool=None,
    warm_up: int = 0,
    io_slots: int = 1,
    use_hash_cache: bool = False,
) -> dict:
    """Analyse ``snapshots`` into ``case_dir``: the one run path (see the module doc).

    ``kind`` ("analyze", "audit") names the run in custody and the manifest.
    Without ``pool`` snapshots are analysed in this process and an exception
    stops the run; with ``pool`` (an executor) they run on its workers, biggest
    first, and a snapshot that fails is recorded as "failed" with the reason;
    ``warm_up`` workers then import the engines while this process hashes.
    The case's lock is held for the whole run: a second run into the same
    case stops with a CaseError.
    Snapshots whose memory holds the same RAM as another's are not analysed but recorded
    as the same moment (toolkit.vms; ``options.analyse_every_artefact`` turns it off), and
    the VM tables are refreshed at the end.
    Returns {"case", "profile", "statuses" {id: analysed|partial|reused|same moment|failed},
    "entries" {id: manifest entry}, "failures" [rows], "evidence_unchanged"}.
    """
    case_dir = Path(case_dir)
    refuse_evidence_inside_case(snapshots, case_dir)
    # evidence from `snapscope acquire`: checked now, its custody chain continued by the case (case/adopt.py)
    acquisitions = read_acquisitions(snapshots)
    profile = load_profile(options.profile or DEFAULT_PROFILE)  # an unknown plugin fails here, before any read
    for rules in options.rule_paths:
        if not Path(rules).expanduser().exists():
            raise RuleError(f"{rules}: no such YARA rule file or directory")
    _open_case(case_dir)
    with case_lock(case_dir):
        manifest = load_manifest(case_dir)  # as the previous run left it, now that we hold the lock
        # A run that crashed mid-line must not break this one: its torn bytes are set aside and logged.
        repairs = [_repair_note(event) for event in custody.repair_torn_tail(case_dir)]
        adopt_acquisitions(case_dir, manifest, acquisitions)
        custody.append_event(
            case_dir,
            action=f"{kind}.start",
            detail={
                "inputs": [str(p) for p in inputs],
                "profile": profile["profile"]["name"],
                "snapshots": len(snapshots),
            },
        )
        if pool is not None and warm_up and may_have_work(case_dir, snapshots, manifest, profile, options):
            for _ in range(warm_up):
                pool.submit(warm_up_worker, profile["profile"]["path"])  # imports overlap the hashing
        files = evidence_files(snapshots)
        before = hash_evidence(case_dir, files, "before", progress, io_slots=io_slots, use_cache=use_hash_cache)
        check_hashes(acquisitions, before)
        manifest["tools"] = tool_versions()
        for path, digest in before.items():
            manifest["evidence"][path] = {
                "format": files[path].get("format"),
                "size": Path(path).stat().st_size,
                "sha256": digest,
            }
        statuses, todo = {}, []
        for snap in snapshots:
            snap["fingerprint"] = snapshot_fingerprint(snap, before, profile, options)
            previous = manifest["snapshots"].get(snap["id"])
            if previous and previous.get("fingerprint") == snap["fingerprint"]:
                if previous.get("same_moment_as") and options.analyse_every_artefact:
                    todo.append(snap)  # recorded as another's moment before; now analysed itself
                    continue
                # Same evidence bytes, profile, rules and tool versions: the stored tables stand.
                statuses[snap["id"]] = "same moment" if previous.get("same_moment_as") else "reused"
                custody.append_event(case_dir, action="snapshot.reuse", detail={"snapshot": snap["id"]})
            else:
                todo.append(snap)
        if not options.analyse_every_artefact:
            todo = skip_same_moments(
                snapshots, todo, case_dir, manifest, before, statuses, progress, options.references
            )
        run = {
            "case_dir": case_dir,
            "manifest": manifest,
            "profile": profile,
            "hashes": before,
            "options": options,
            "statuses": statuses,
            "progress": progress,
        }
        failures = _analyse_inline(todo, run) if pool is None else _analyse_on(pool, todo, run)
        write_combined_tables(case_dir)
        refresh_vm_tables(case_dir, manifest)
        after = hash_evidence(case_dir, files, "after", progress, io_slots=io_slots)
        changed = [p for p in before if before[p] != after[p]]
        manifest["runs"].append(
            {
                "at": now_iso(),
                "kind": kind,
                "profile": profile["profile"]["name"],
                "inputs": [str(p) for p in inputs],
                "evidence_unchanged": not changed,
                "custody_repairs": repairs,
            }
        )
        save_manifest(case_dir, manifest)
        record_derived(case_dir, reason=f"{kind} end")
        custody.append_event(case_dir, action=f"{kind}.end", detail={"evidence_unchanged": not changed})
    if changed:
        raise CaseError(f"evidence changed during the {kind}: {', '.join(changed)}")
    entries = {sid: manifest["snapshots"][sid] for sid in statuses if sid in manifest["snapshots"]}
    return {
        "case": str(case_dir),
        "profile": profile,
        "statuses": statuses,
        "failures": failures,
        "entries": entries,
        "evidence_unchanged": True,
        "custody_repairs": repairs,
    }


def _repair_note(event: dict) -> str:
    """One line for the analyst about a custody repair or gap the run found (see toolkit.case.custody)."""
    detail = event.get("detail") or {}
    if event["action"] == custody.REPAIR:
        return f"custody: a torn last line ({detail.get('bytes')} bytes) was moved to {detail.get('quarantined')}"
    head = detail.get("recorded_head") or {}
    return (
        f"custody: lines are missing from the log (case.json's head was line {head.get('seq')}, "
        f"the log ended at line {detail.get('log_ended_at')}); logged as line {event['seq']}"
    )


def _finished(run: dict, snap: dict, entry: dict) -> None:
    """Record one analysed snapshot in the manifest, saved at once so an interrupted run keeps it."""
    entry["fingerprint"] = snap["fingerprint"]
    run["manifest"]["snapshots"][snap["id"]] = entry
    # Readable in part: say what could not be analysed, keep what could.
    run["statuses"][snap["id"]] = "partial" if entry.get("errors") else "analysed"
    save_manifest(run["case_dir"], run["manifest"])
    record_derived(run["case_dir"], reason=f"snapshot {snap['id']}")  # its converted image, streams, ISF copy
    custody.append_event(run["case_dir"], action="snapshot.done", detail={"snapshot": snap["id"]})


def _analyse_inline(todo: list[dict], run: dict) -> list[dict]:
    for snap in todo:
        entry = analyze_snapshot(snap, run["case_dir"], run["profile"], run["hashes"], run["options"], run["progress"])
        _finished(run, snap, entry)
    return []


def _analyse_on(pool, todo: list[dict], run: dict) -> list[dict]:
    """Snapshots on an executor's workers; a snapshot that fails becomes a failure row, the others go on."""
    failures = []
    # Big snapshots first keeps every worker busy to the end instead of one straggler.
    todo = sorted(todo, key=lambda s: -sum(Path(e["path"]).stat().st_size for e in s["evidence"]))
    futures = {
        pool.submit(_analyze_in_worker, snap, str(run["case_dir"]), run["profile"], run["hashes"], run["options"]): snap
        for snap in todo
    }
    for n, future in enumerate(cf.as_completed(futures), start=1):
        snap = futures[future]
        try:
            _sid, entry = future.result()
        except Exception as exc:  # one VM's failure must not stop the fleet: it becomes a fleet row
            run["statuses"][snap["id"]] = "failed"
            failures.append(
                {
                    "vm": snap["id"],
                    "status": "failed",
                    "reason": f"{type(exc).__name__}: {exc}",
                    "source_path": snap.get("source_path"),
                }
            )
            continue
        _finished(run, snap, entry)
        run["progress"]("analysing snapshots", n, len(futures))
    return failures


def analyze(paths: list[Path], case_dir: Path, *, progress=no_progress, **choices) -> dict:
    """Analyse the snapshots found in ``paths`` into ``case_dir``; return a summary dict.

    ``choices`` are :class:`RunOptions` fields (profile, search_paths, symbols, rule_paths,
    engine_names, analyse_every_artefact, follow_recorded_paths).

    Example::

        summary = analyze([Path("lab/qemu")], Path("case"), profile="linux-triage")
        [(s["id"], s["status"], s["same_moment_as"]) for s in summary["snapshots"]]
        # [('qemu-memory.elf', 'analysed', None), ('qemu-memory.kdump', 'same moment', 'qemu-memory.elf'), ...]
    """
    options = RunOptions.of(**choices)
    refuse_unfinished_inputs(paths)  # an interrupted acquisition is named as such, not by a file it lacks
    snapshots = discover(
        [Path(p) for p in paths], search_paths=options.search_paths, follow_recorded=options.follow_recorded_paths
    )
    result = run_snapshots(snapshots, Path(case_dir), options, kind="analyze", inputs=paths, progress=progress)
    manifest = load_manifest(Path(case_dir))
    return {
        "case": result["case"],
        "evidence_unchanged": result["evidence_unchanged"],
        "vms": manifest.get("vms", {}),
        "custody_repairs": result["custody_repairs"],
        "snapshots": [
            {
                "id": s["id"],
                "name": s["name"],
                "tables": result["entries"][s["id"]]["tables"],
                "status": result["statuses"][s["id"]],
                "reused": result["statuses"][s["id"]] == "reused",
                "same_moment_as": result["entries"][s["id"]].get("same_moment_as"),
                "proof": result["entries"][s["id"]].get("same_moment_proof"),
                "warnings": list(s.get("warnings") or []),  # files read outside the evidence roots
            }
            for s in snapshots
        ],
    }


def recorrelate(case_dir: Path) -> dict:
    """Re-run correlation and the timeline over a case's stored tables (after a
    rule change), without touching evidence. Returns {snapshot_id: findings count}."""
    case_dir = Path(case_dir)
    with case_lock(case_dir):
        return _recorrelate(case_dir)


def _recorrelate(case_dir: Path) -> dict:
    case = Case.open(case_dir)
    manifest = case.manifest
    derived = {"findings", "timeline"}
    counts = {}
    for sid, entry in manifest["snapshots"].items():
        if entry.get("same_moment_as"):
            continue  # not analysed: its moment's tables are another snapshot's
        tables = {name: case.table(name, snapshot=sid) for name in case.tables() if name not in derived}
        tables = {name: df.reset_index(drop=True) for name, df in tables.items()}
        # Correlation's own diagnostics from an earlier run are replaced, the engines' kept.
        if "diagnostics" in tables:
            tables["diagnostics"] = tables["diagnostics"][tables["diagnostics"]["source"] != "correlate"]
        findings, problems, _graph = correlate_snapshot(tables, sid)
        timeline = build_timeline(tables, sid, entry.get("times") or {})
        write_table(case_dir, "findings", sid, findings)
        write_table(case_dir, "timeline", sid, timeline)
        if "diagnostics" in tables:
            diags = pd.concat([tables["diagnostics"], problems], ignore_index=True)
            write_table(case_dir, "diagnostics", sid, diags)
        entry["findings"] = findings["severity"].value_counts().to_dict()
        counts[sid] = len(findings)
    write_combined_tables(case_dir)
    refresh_vm_tables(case_dir, manifest)
    save_manifest(case_dir, manifest)
    custody.append_event(case_dir, action="correlate", detail={"findings": counts})
    return counts


def run_sigma(case_dir: Path, rule_paths) -> dict:
    """Run Sigma rules (files or directories) over every snapshot of a case, store their matches
    as ``sigma/matches`` and re-correlate, so each match becomes a finding in the entity graph.

    The rules are read (and any syntax error raised) before the case is touched; the previous
    run's matches and Sigma diagnostics are replaced. Returns {"rules", "matches" {snapshot: n},
    "findings" {snapshot: n}, "skipped" [diagnostic rows]}.

    Example::

        run_sigma(Path("case"), [Path("rules/sigma")])["matches"]   # {'lab-qemu': 3}
    """
    from toolkit.correlate.sigma.load import load_rules
    from toolkit.correlate.sigma.run import compile_rules, run_rules

    case_dir = Path(case_dir)
    compiled = compile_rules(load_rules(rule_paths))
    with case_lock(case_dir):
        case = Case.open(case_dir)
        if not case.snapshots:
            raise CaseError(f"{case_dir}: the case holds no analysed snapshot; run snapscope analyze first")
        matches, skipped = {}, []
        for sid in case.snapshots:
            if case.snapshots[sid].get("same_moment_as"):
                continue  # not analysed: another snapshot holds its moment's tables
            tables = {name: case.table(name, snapshot=sid) for name in case.tables() if name != "sigma/matches"}
            rows, problems = run_rules(compiled, tables, sid)
            write_table(case_dir, "sigma/matches", sid, rows)
            diags = tables.get("diagnostics", empty("diagnostics"))
            kept = diags[diags["source"] != "sigma"]
            new = make_table("diagnostics", problems, snapshot_id=sid, source="sigma")
            write_table(case_dir, "diagnostics", sid, pd.concat([kept, new], ignore_index=True))
            matches[sid], skipped = len(rows), skipped + problems
        custody.append_event(
            case_dir,
            action="sigma",
            detail={"rules": [str(p) for p in rule_paths], "count": len(compiled), "matches": matches},
        )
        findings = _recorrelate(case_dir)
    return {"rules": len(compiled), "matches": matches, "findings": findings, "skipped": skipped}
