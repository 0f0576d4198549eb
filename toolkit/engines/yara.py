"""YARA engine: one rule set, compiled once per run, over every kind of evidence.

The scanning primitives (re-exported here) are plain functions that other
engines call with their own readers:

- ``compile_rules(paths=None, *, cache_dir=None, prefer="yara-x") -> rules``
- ``scan_regions(rules, regions)``  process / kernel memory, region by region
- ``scan_physical(rules, image)``   guest-physical memory (``.runs``, ``.read``)
- ``scan_file(rules, item)`` / ``scan_files(rules, items, max_file_size=...)``
- ``scan_streams(rules, streams)``  reassembled network payloads
- ``to_tables(rows, diagnostics, snapshot_id=..., source=...)``

each returning ``(match_rows, diagnostic_rows)``. :func:`run` is the engine
adapter: it scans whatever the snapshot and earlier engines made available.

Example::

    rules = compile_rules(cache_dir="~/.cache/snapscope")
    rows, diags = scan_files(rules, ["/tmp/suspect.elf"])
    tables = to_tables(rows, diags + rules["diagnostics"], snapshot_id="s1", source="yara/files")
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from toolkit.engines.yara_rules import DEFAULT_RULES_DIR, RuleError, compile_rules, find_rule_files
from toolkit.engines.yara_scan import (CHUNK_SIZE, MATCH_DATA_CAP, MAX_FILE_SIZE, OVERLAP, merge_runs,
                                       scan_buffer, scan_file, scan_files, scan_physical, scan_range,
                                       scan_regions, scan_streams)
from toolkit.schemas import make_table

__all__ = ["DEFAULT_RULES_DIR", "RuleError", "compile_rules", "find_rule_files", "CHUNK_SIZE", "OVERLAP",
           "MATCH_DATA_CAP", "MAX_FILE_SIZE", "merge_runs", "scan_buffer", "scan_range", "scan_regions",
           "scan_physical", "scan_file", "scan_files", "scan_streams", "iter_streams", "to_tables", "run"]


def to_tables(rows, diagnostics, *, snapshot_id: str, source: str) -> dict[str, pd.DataFrame]:
    """``{"yara/matches", "diagnostics"}`` frames from scan rows. Example: see the module doc."""
    return {"yara/matches": make_table("yara/matches", rows, snapshot_id=snapshot_id, source=source),
            "diagnostics": make_table("diagnostics", diagnostics, snapshot_id=snapshot_id, source=source)}


def iter_streams(flows: pd.DataFrame):
    """Stream dicts for :func:`scan_streams` from a ``network/flows`` table's spool files.

    Example: ``scan_streams(rules, iter_streams(ctx["tables"]["network/flows"]))``
    """
    if flows is None or flows.empty:
        return
    keys = ["flow_id", "src_ip", "src_port", "dst_ip", "dst_port", "proto"]
    for rec in flows.to_dict("records"):
        base = {k: (None if pd.isna(rec.get(k)) else rec.get(k)) for k in keys}
        for column, direction in (("src_stream_file", "src_to_dst"), ("dst_stream_file", "dst_to_src")):
            spool = rec.get(column)
            if isinstance(spool, str) and spool:
                yield {**base, "path": spool, "direction": direction}


def _settings(ctx: dict) -> dict:
    profile = (ctx.get("profile") or {}).get("yara") or {}
    return {"rule_dirs": [DEFAULT_RULES_DIR] + [Path(p).expanduser() for p in
                                                list(profile.get("rule_dirs") or []) + list(ctx.get("yara_rule_dirs") or [])],
            "prefer": profile.get("engine", "yara-x"),
            "chunk_size": int(profile.get("chunk_size", CHUNK_SIZE)),
            "overlap": int(profile.get("overlap", OVERLAP)),
            "max_file_size": profile.get("max_file_size", MAX_FILE_SIZE)}


def run(snapshot: dict, ctx: dict) -> dict[str, pd.DataFrame]:
    """Engine adapter: scan what this snapshot offers with one compiled rule set.

    Sources, each optional: reassembled streams listed in
    ``ctx["tables"]["network/flows"]``; ``ctx["memory_image"]`` (physical
    memory: ``.runs``, ``.read``); ``ctx["memory_regions"]`` (process/kernel
    regions, see :func:`scan_regions`); ``ctx["disk_files"]`` (paths or
    ``{"path", "size", "open"}`` dicts). Settings come from the profile's
    ``yara`` section (rule_dirs, engine, chunk_size, overlap, max_file_size)
    and ``ctx["yara_rule_dirs"]``. A rule file that does not compile raises
    :class:`RuleError` before anything is scanned.

    Example: ``run(snapshot, {"cache_dir": cache, "tables": {"network/flows": flows}})``
    """
    sid = snapshot.get("id") or snapshot.get("name") or "snapshot"
    cfg = _settings(ctx)
    progress = ctx.get("progress") or (lambda *a, **k: None)
    rules = compile_rules(cfg["rule_dirs"], cache_dir=ctx.get("cache_dir"), prefer=cfg["prefer"],
                          overlap=cfg["overlap"])
    sizes = {"chunk_size": cfg["chunk_size"], "overlap": cfg["overlap"]}
    frames, diagnostics = [], list(rules["diagnostics"])

    def collect(label, rows_diags):
        rows, diags = rows_diags
        frames.append(make_table("yara/matches", rows, snapshot_id=sid, source=f"yara/{label}"))
        diagnostics.extend(diags)

    tables = ctx.get("tables") or {}
    if "network/flows" in tables:
        progress("yara: network streams", None, None)
        collect("streams", scan_streams(rules, iter_streams(tables["network/flows"]), **sizes))
    if ctx.get("memory_image") is not None:
        progress("yara: physical memory", None, None)
        collect("physical", scan_physical(rules, ctx["memory_image"], **sizes))
    if ctx.get("memory_regions") is not None:
        progress("yara: process memory", None, None)
        collect("regions", scan_regions(rules, ctx["memory_regions"], **sizes))
    if ctx.get("disk_files") is not None:
        progress("yara: disk files", None, None)
        # cache_dir: a file's matches are reused across clones by (content sha256, rule set)
        collect("files", scan_files(rules, ctx["disk_files"], max_file_size=cfg["max_file_size"],
                                    cache_dir=ctx.get("cache_dir"), **sizes))

    frames = [f for f in frames if len(f)]
    matches = pd.concat(frames, ignore_index=True) if frames else make_table("yara/matches", [], snapshot_id=sid, source="yara")
    rule_rows = [{k: f[k] for k in ("path", "namespace", "sha256", "engine")} for f in rules["files"]]
    return {"yara/matches": matches,
            "yara/rules": make_table("yara/rules", rule_rows, snapshot_id=sid, source="yara/compile"),
            "diagnostics": make_table("diagnostics", diagnostics, snapshot_id=sid, source="yara")}
