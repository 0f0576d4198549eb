"""One snapshot through the engines and correlation into its table files.

:func:`analyze_snapshot` builds the snapshot's :class:`EngineContext`, runs
the engines in ``ENGINES`` order (:func:`run_engines`: an engine crash
becomes a diagnostic, readers are closed at the end), correlates the tables
into findings and a timeline and writes this snapshot's table files only, so
several snapshots can run in parallel processes. ``toolkit.pipeline`` owns
the case around it (hashing, reuse, the manifest).

Example::

    entry = analyze_snapshot(snapshot, Path("case"), load_profile("linux-triage"), hashes, {})
    entry["tables"]["memory/processes"]
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from toolkit.case.store import write_table
from toolkit.correlate.findings import correlate_snapshot
from toolkit.correlate.timeline import build_timeline
from toolkit.engines import ENGINES, EngineContext, no_progress
from toolkit.evidence.vms import capture_time, snapshot_times
from toolkit.profiles import DEFAULT_PROFILE, load_profile
from toolkit.references import ReferencePolicy, reference_policy
from toolkit.schemas import diagnostic, make_table


@dataclass(frozen=True)
class RunOptions:
    """What the user chose for a run, the same for every snapshot of it (picklable for workers).

    Example: ``RunOptions.of(profile="linux-full", search_paths=["/mnt/images"])``
    """

    profile: str | None = None  # a shipped profile's name or a profile file
    search_paths: tuple[str, ...] = ()  # where files that evidence names may be found
    symbols: tuple[str, ...] = ()  # ISF files or directories, used before any automatic build
    rule_paths: tuple[str, ...] = ()  # YARA rule files or directories added to the profile's
    engine_names: tuple[str, ...] | None = None  # only these engines (None: every applicable one)
    # analyse every memory artefact, even one holding the same RAM as another (toolkit.vms)
    analyse_every_artefact: bool = False
    # --follow-recorded-paths: a file evidence names outside the evidence roots and search
    # paths is read where recorded (with a warning) instead of refused
    follow_recorded_paths: bool = False

    @classmethod
    def of(
        cls,
        *,
        profile=None,
        search_paths=(),
        symbols=(),
        rule_paths=(),
        engine_names=None,
        analyse_every_artefact=False,
        follow_recorded_paths=False,
    ) -> RunOptions:
        """RunOptions from CLI-style values (paths as Path or str, lists or tuples)."""
        return cls(
            profile=None if profile is None else str(profile),
            search_paths=tuple(str(p) for p in search_paths),
            symbols=tuple(str(p) for p in symbols),
            rule_paths=tuple(str(p) for p in rule_paths),
            engine_names=None if engine_names is None else tuple(engine_names),
            analyse_every_artefact=bool(analyse_every_artefact),
            follow_recorded_paths=bool(follow_recorded_paths),
        )

    def references(self, roots) -> ReferencePolicy:
        """The run's reference policy for evidence found under ``roots`` (toolkit.references)."""
        return reference_policy(roots=roots, search_paths=self.search_paths, follow_recorded=self.follow_recorded_paths)


def run_engines(snapshot: dict, ctx: EngineContext, only=None, seconds: dict | None = None) -> dict[str, pd.DataFrame]:
    """Run every applicable engine for one snapshot, in ENGINES order; an engine crash becomes a diagnostic.
    ``seconds``, if given, receives each engine's wall time by name (the case manifest keeps it)."""
    produced: dict[str, list[pd.DataFrame]] = {}
    try:
        for entry in ENGINES:
            if (only is not None and entry["name"] not in only) or not entry["applies"](snapshot):
                continue
            module = importlib.import_module(entry["module"])
            ctx.tables = {k: pd.concat(v, ignore_index=True) for k, v in produced.items()}
            started = time.monotonic()
            try:
                tables = module.run(snapshot, ctx)
            except Exception as exc:  # one engine failing must not lose the others' tables
                tables = {
                    "diagnostics": make_table(
                        "diagnostics",
                        [
                            diagnostic(
                                "error", f"engine {entry['name']}", snapshot["id"], f"{type(exc).__name__}: {exc}"
                            )
                        ],
                        snapshot_id=snapshot["id"],
                        source=f"engine/{entry['name']}",
                    )
                }
            if seconds is not None:
                seconds[entry["name"]] = round(time.monotonic() - started, 2)
            for table, df in tables.items():
                produced.setdefault(table, []).append(df)
    finally:
        ctx.readers.close()
    return {k: pd.concat(v, ignore_index=True) for k, v in produced.items()}


def _intake_diagnostics(snap: dict) -> list[dict]:
    """What discovery could not use is data too: a damaged file it set aside, a file it did not
    recognise, a symlink it did not follow; and what it read outside the evidence roots."""
    rows = [diagnostic("error", "evidence problem", snap["id"], p) for p in snap.get("problems") or []]
    rows += [diagnostic("warning", "evidence outside the roots", snap["id"], w) for w in snap.get("warnings") or []]
    for skipped in snap.get("skipped") or []:
        # a recognised format that could not be read is lost evidence; a symlink may point at
        # evidence the analyst meant (name it to use it); an unknown file is just noted
        reason = str(skipped.get("reason", ""))
        damaged, link = reason.startswith("unreadable"), reason.startswith("symbolic link")
        rows.append(
            diagnostic(
                "error" if damaged else "warning" if link else "info",
                f"{Path(skipped.get('path', '')).name} unreadable" if damaged else "file not used",
                skipped.get("path"),
                reason,
            )
        )
    return rows


def analyze_snapshot(
    snap: dict, case_dir: Path, profile: dict, hashes: dict[str, str], options: RunOptions, progress=no_progress
) -> dict:
    """Engines, correlation and table writes for one snapshot; returns its manifest entry.

    Writes only this snapshot's table files, so several can run in parallel
    processes; the caller owns case.json.
    """
    ctx = EngineContext(
        snapshot_id=snap["id"],
        case_dir=case_dir,
        derived_dir=case_dir / "derived" / snap["id"],
        cache_dir=case_dir / "derived" / "cache",
        profile=profile,
        progress=progress,
        # the same policy discovery resolved this snapshot's files with
        references=options.references(snap.get("roots") or ()),
        symbols=tuple(map(Path, options.symbols)),
        rule_paths=tuple(map(Path, options.rule_paths)),
        # content keys for caches shared between snapshots (a linked clones' base image)
        evidence_hashes=hashes,
    )
    ctx.derived_dir.mkdir(parents=True, exist_ok=True)
    ctx.cache_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    tables = run_engines(snap, ctx, options.engine_names, seconds)
    intake = _intake_diagnostics(snap)
    if intake:
        tables["diagnostics"] = pd.concat(
            [
                df
                for df in (
                    tables.get("diagnostics"),
                    make_table("diagnostics", intake, snapshot_id=snap["id"], source="intake"),
                )
                if df is not None
            ],
            ignore_index=True,
        )
    evidence_rows = [
        {
            "path": str(Path(e["path"]).resolve()),
            "format": e.get("format"),
            "size": Path(e["path"]).stat().st_size,
            "sha256": hashes[str(Path(e["path"]).resolve())],
            "role": e.get("role"),
        }
        for e in snap["evidence"]
    ]
    tables["evidence"] = make_table("evidence", evidence_rows, snapshot_id=snap["id"], source="intake")
    # Correlation reads the engines' tables only, never the evidence.
    started = time.monotonic()
    findings, problems, _graph = correlate_snapshot(tables, snap["id"])
    tables["findings"] = findings
    times = snapshot_times(snap)
    tables["timeline"] = build_timeline(tables, snap["id"], times)
    seconds["correlate"] = round(time.monotonic() - started, 2)
    tables["diagnostics"] = pd.concat(
        [df for df in (tables.get("diagnostics"), problems) if df is not None], ignore_index=True
    )
    # A table this run no longer produces must not survive from an earlier run.
    for stale in (case_dir / "tables").rglob(f"{snap['id']}.parquet"):
        if str(stale.parent.relative_to(case_dir / "tables")) not in tables:
            stale.unlink()
    for name, df in tables.items():
        write_table(case_dir, name, snap["id"], df)
    return manifest_entry(
        snap,
        tables={name: len(df) for name, df in tables.items()},
        findings=findings["severity"].value_counts().to_dict(),
        engine_seconds=seconds,  # wall time per engine and for correlation (benchmarks read it)
        errors=[f"{r.what}: {r.why}" for r in tables["diagnostics"].itertuples() if r.severity == "error"],
    )


def manifest_entry(snap: dict, **more) -> dict:
    """A snapshot's entry in case.json: what it is made of and when it was taken, plus ``more``
    (tables, findings, errors of its analysis; or the moment it shares with another).

    Example: ``manifest_entry(snap, tables={}, findings={}, errors=[])["captured_at"]``
    """
    return {
        "name": snap["name"],
        "domain": snap.get("domain"),
        "memory": snap.get("memory"),
        "disks": snap.get("disks"),
        "pcaps": snap.get("pcaps"),
        "evidence": [str(Path(e["path"]).resolve()) for e in snap["evidence"]],
        "times": snapshot_times(snap),  # capture times the evidence states, kept for re-correlation
        "captured_at": list(capture_time(snap)),  # [ISO time, its source]: orders the VM's snapshots
        **more,
    }


def warm_up_worker(profile_name: str | None) -> None:
    """Import the engines and let each warm up (Volatility's plugin tree: ~10 s of CPU) in a
    fresh worker while the parent still hashes the evidence, instead of after it."""
    for entry in ENGINES:
        warm_up = getattr(importlib.import_module(entry["module"]), "warm_up", None)
        if callable(warm_up):
            warm_up()
    load_profile(profile_name or DEFAULT_PROFILE)
