"""Memory engine: Volatility 3 in one process, one context per snapshot.

``run(snapshot, ctx)`` follows the engine contract (toolkit/engines/__init__):
it opens the snapshot's memory (:mod:`toolkit.engines.memory.session`: the
image as an ELF core, Linux symbols, the kernel, found once), runs every
plugin of the profile in that one context and returns the memory/* tables
plus diagnostics. A plugin that fails becomes diagnostics rows; the others
still run. It leaves the physical address space and the process regions in
``ctx.readers`` for the YARA engine.

Modules: ``session`` (open and cache per process), ``volatility`` (the only
place that spells Volatility's configuration), ``symbols`` (ISF find/build),
``tables`` and ``kernel`` (plugin output -> rows, read through
``plugin_output``), ``tasks`` (what snapscope reads from task_structs itself),
``speedups`` (Volatility hot spots).

Example::

    ctx = EngineContext(snapshot_id="lab", derived_dir=Path("/tmp/d"), cache_dir=Path("/tmp/c"),
                        profile=load_profile("linux-triage"))
    tables = run({"id": "lab", "memory": "memory.elf"}, ctx)
    tables["memory/processes"][["pid", "process", "exe_deleted"]].head()
"""

from __future__ import annotations

import time

import pandas as pd

from toolkit.engines import EngineContext
from toolkit.engines.memory import kernel, tasks, volatility
from toolkit.engines.memory import tables as plugin_tables
from toolkit.engines.memory.session import open_memory
from toolkit.schemas import diagnostic, make_table


def warm_up() -> None:
    """Import Volatility and its plugin tree now (~5 s): an audit worker warming up while the parent hashes."""
    volatility.preload()


def run_plugins(session: dict, plugins: list[dict], progress=None) -> tuple[dict, list, list]:
    """Run profile plugin entries in the session; returns (outputs, runs, diagnostics)."""
    outputs, runs, diagnostics = {}, [], []
    volatility_plugins = [p for p in plugins if not p["name"].startswith("snapscope.")]
    for i, entry in enumerate(volatility_plugins):
        name = entry["name"]
        if progress:
            progress(f"memory: {name}", i, len(volatility_plugins))
        result = volatility.run_plugin(session, name, entry.get("options") or {})
        result["options"] = dict(entry.get("options") or {})  # what the table builders were asked for
        outputs[name] = result
        status = "ok" if not result["error"] else ("partial" if result["rows"] else "failed")
        runs.append(
            {
                "plugin": name,
                "status": status,
                "rows": len(result["rows"]),
                "seconds": result["seconds"],
                "error": result["error"],
            }
        )
        if result["error"]:
            diagnostics.append(
                diagnostic(
                    "warning" if result["rows"] else "error",
                    f"plugin {name}",
                    name,
                    result["error"] + (" (rows before the failure kept)" if result["rows"] else ""),
                )
            )
        diagnostics.extend(diagnostic("warning", f"plugin {name}", name, w) for w in dict.fromkeys(result["warnings"]))
    return outputs, runs, diagnostics


def _settle_idt(session: dict, checks: list[dict] | None) -> None:
    if any(r.get("check") == "check_idt" and r.get("suspicious") for r in checks or []):
        kernel.settle_idt(checks, volatility.early_idt_stubs(session))


def run(snapshot: dict, ctx: EngineContext) -> dict[str, pd.DataFrame]:
    """Engine entry point: the memory/* tables of one snapshot, plus diagnostics."""
    started = time.monotonic()
    sid = ctx.snapshot_id
    profile = ctx.profile
    session, info, diagnostics = open_memory(snapshot, ctx)
    tables: dict[str, list[dict]] = {}
    runs: list[dict] = []
    outputs: dict = {}
    if session is not None:
        plugins = profile["memory"]["plugins"]
        outputs, runs, more = run_plugins(session, plugins, ctx.progress)
        diagnostics += more
        os_name = session["os"]
        wants_processes = any(p in outputs for p in (plugin_tables.LIST.get(os_name), plugin_tables.SCAN.get(os_name)))
        enrich = tasks.task_details(session, diagnostics) if os_name == "linux" and wants_processes else {}
        tables = plugin_tables.build_all(outputs, enrich, os_name)
        if os_name == "linux":
            _settle_idt(session, tables.get("memory/kernel_checks"))
        diagnostics += plugin_tables.process_cross_view(tables.get("memory/processes"))
        if any(p["name"] == "snapscope.executables" for p in plugins) and os_name == "linux":
            t0 = time.monotonic()
            tables["memory/executables"] = tasks.executables(session, diagnostics)
            runs.append(
                {
                    "plugin": "snapscope.executables",
                    "status": "ok",
                    "rows": len(tables["memory/executables"]),
                    "seconds": time.monotonic() - t0,
                }
            )
        _leave_readers(ctx, session)
        if "memory/shell_history" in tables and not tables["memory/shell_history"]:
            diagnostics.append(
                diagnostic(
                    "info",
                    "shell history",
                    "linux.bash.Bash",
                    "no bash history in memory (shells such as busybox sh keep none)",
                )
            )
    info.update(
        plugins_ok=sum(r["status"] == "ok" for r in runs),
        plugins_failed=sum(r["status"] != "ok" for r in runs),
        seconds=time.monotonic() - started,
    )
    sources = plugin_tables.table_sources(outputs)
    sources["memory/executables"] = "snapscope/executables"
    out = {
        name: make_table(name, rows, snapshot_id=sid, source=sources.get(name) or "volatility")
        for name, rows in tables.items()
    }
    out["memory/info"] = make_table("memory/info", [info], snapshot_id=sid, source="volatility")
    out["memory/plugin_runs"] = make_table("memory/plugin_runs", runs, snapshot_id=sid, source="volatility")
    out["diagnostics"] = make_table("diagnostics", diagnostics, snapshot_id=sid, source="volatility")
    return out


def _leave_readers(ctx: EngineContext, session: dict) -> None:
    """Readers for later engines of this snapshot (YARA): the physical address
    space (the image this session reads, shared) and the process regions.
    Readers, not results (engines/__init__)."""
    if session["os"] == "linux":
        ctx.readers.memory_regions = list(tasks.process_regions(session))
    ctx.readers.memory_image = session["memory_image"]


def process_regions(snapshot: dict, ctx: EngineContext, pids=None):
    """Per-process VMA regions for YARA (see tasks.process_regions).

    Example::

        for region in process_regions(snapshot, ctx):
            data = region["read"](region["start"], min(region["end"] - region["start"], 1 << 20))
    """
    session, _info, _diagnostics = open_memory(snapshot, ctx)
    if session is None or session["os"] != "linux":
        return iter(())
    return tasks.process_regions(session, pids)
