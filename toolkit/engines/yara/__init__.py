"""YARA engine: one rule set, compiled once per run, over every kind of evidence.

:func:`run` is the engine adapter: it scans whatever the snapshot and earlier
engines made available (``ctx.readers``: physical memory, process regions,
disk files; ``ctx.tables["network/flows"]``: reassembled streams). The
primitives are plain functions over readers, for notebooks and benchmarks:
``rules.compile_rules``; in ``scan``, ``scan_regions`` (process/kernel
memory) and ``scan_physical`` (guest-physical memory); in ``files``,
``scan_file(s)`` and ``scan_streams``; each returns ``(match_rows, diagnostic_rows)``.

Example::

    from toolkit.engines.yara.rules import compile_rules
    from toolkit.engines.yara.files import scan_files
    rules = compile_rules(cache_dir="~/.cache/snapscope")
    rows, diags = scan_files(rules, ["/tmp/suspect.elf"])
    tables = to_tables(rows, diags + rules["diagnostics"], snapshot_id="s1", source="yara/files")
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from toolkit.engines import EngineContext
from toolkit.engines.yara.files import scan_files, scan_streams
from toolkit.engines.yara.rules import DEFAULT_RULES_DIR, compile_rules
from toolkit.engines.yara.scan import CHUNK_SIZE, MAX_FILE_SIZE, OVERLAP, scan_physical, scan_regions
from toolkit.schemas import make_table


def to_tables(rows, diagnostics, *, snapshot_id: str, source: str) -> dict[str, pd.DataFrame]:
    """``{"yara/matches", "diagnostics"}`` frames from scan rows. Example: see the module doc."""
    return {
        "yara/matches": make_table("yara/matches", rows, snapshot_id=snapshot_id, source=source),
        "diagnostics": make_table("diagnostics", diagnostics, snapshot_id=snapshot_id, source=source),
    }


def iter_streams(flows: pd.DataFrame):
    """Stream dicts for ``scan_streams`` from a ``network/flows`` table's spool files.

    Example: ``scan_streams(rules, iter_streams(ctx.tables["network/flows"]))``
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


def _settings(ctx: EngineContext) -> dict:
    profile = ctx.profile.get("yara") or {}
    return {
        "rule_dirs": [DEFAULT_RULES_DIR]
        + [Path(p).expanduser() for p in list(profile.get("rule_dirs") or []) + list(ctx.rule_paths)],
        "prefer": profile.get("engine", "yara-x"),
        "chunk_size": int(profile.get("chunk_size", CHUNK_SIZE)),
        "overlap": int(profile.get("overlap", OVERLAP)),
        "max_file_size": profile.get("max_file_size", MAX_FILE_SIZE),
    }


def run(snapshot: dict, ctx: EngineContext) -> dict[str, pd.DataFrame]:
    """Engine adapter: scan what this snapshot offers with one compiled rule set.

    Sources, each optional: reassembled streams listed in
    ``ctx.tables["network/flows"]``; ``ctx.readers.memory_image`` (physical
    memory: ``.runs``, ``.read``); ``ctx.readers.memory_regions`` (process/kernel
    regions, see ``scan.scan_regions``); ``ctx.readers.disk_files`` (paths or
    ``{"path", "size", "open"}`` dicts). Settings come from the profile's
    ``yara`` section (rule_dirs, engine, chunk_size, overlap, max_file_size)
    and ``ctx.rule_paths``. A rule file that does not compile raises
    ``RuleError`` before anything is scanned.

    Example: ``run(snapshot, EngineContext(..., tables={"network/flows": flows}))``
    """
    sid = ctx.snapshot_id
    cfg = _settings(ctx)
    progress = ctx.progress
    rules = compile_rules(cfg["rule_dirs"], cache_dir=ctx.cache_dir, prefer=cfg["prefer"], overlap=cfg["overlap"])
    sizes = {"chunk_size": cfg["chunk_size"], "overlap": cfg["overlap"]}
    frames, diagnostics = [], list(rules["diagnostics"])

    def collect(label, rows_diags):
        rows, diags = rows_diags
        frames.append(make_table("yara/matches", rows, snapshot_id=sid, source=f"yara/{label}"))
        diagnostics.extend(diags)

    tables, readers = ctx.tables, ctx.readers
    if "network/flows" in tables:
        progress("yara: network streams", None, None)
        collect("streams", scan_streams(rules, iter_streams(tables["network/flows"]), **sizes))
    if readers.memory_image is not None:
        progress("yara: physical memory", None, None)
        collect("physical", scan_physical(rules, readers.memory_image, **sizes))
    if readers.memory_regions is not None:
        progress("yara: process memory", None, None)
        collect("regions", scan_regions(rules, readers.memory_regions, **sizes))
    if readers.disk_files is not None:
        progress("yara: disk files", None, None)
        # cache_dir: a file's matches are reused across clones by (content sha256, rule set)
        collect(
            "files",
            scan_files(rules, readers.disk_files, max_file_size=cfg["max_file_size"], cache_dir=ctx.cache_dir, **sizes),
        )

    frames = [f for f in frames if len(f)]
    matches = (
        pd.concat(frames, ignore_index=True)
        if frames
        else make_table("yara/matches", [], snapshot_id=sid, source="yara")
    )
    rule_rows = [{k: f[k] for k in ("path", "namespace", "sha256", "engine")} for f in rules["files"]]
    return {
        "yara/matches": matches,
        "yara/rules": make_table("yara/rules", rule_rows, snapshot_id=sid, source="yara/compile"),
        "diagnostics": make_table("diagnostics", diagnostics, snapshot_id=sid, source="yara"),
    }
