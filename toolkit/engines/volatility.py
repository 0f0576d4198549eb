"""Memory engine: Volatility 3 in one process, one context per snapshot.

``run(snapshot, ctx)`` follows the engine contract (toolkit/engines/__init__):
it normalises the memory artefact to an ELF core if needed, resolves Linux
symbols (user ISF, profiles/symbols, cache, else a pakunoda build from the
dump), finds the kernel once, runs every plugin of the profile in that one
context and returns the memory/* tables plus diagnostics. A plugin that fails
becomes diagnostics rows; the others still run.

ctx keys read: ``cache_dir`` (Volatility's caches go in ``<cache_dir>/volatility/<symbol set>``),
``derived_dir`` (converted images, the ISF used), ``profile``, ``progress``,
``symbols`` (user ISF files/dirs, or Windows symbol packs), ``symbols_cache``
(ISF cache shared across cases; default $SNAPSCOPE_CACHE or
~/.cache/snapscope), ``build_symbols`` (default True).

Example::

    from toolkit.profiles import load_profile
    tables = run({"id": "lab", "memory": "memory.elf"},
                 {"cache_dir": "/tmp/c", "derived_dir": "/tmp/d", "profile": load_profile("linux-triage")})
    tables["memory/processes"][["pid", "process", "exe_deleted"]].head()
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import threading
import time
from pathlib import Path

import pandas as pd

from toolkit import schemas
from toolkit.engines import vol_context, vol_process, vol_symbols, vol_tables

_SESSIONS: dict[tuple, dict] = {}
KEEP_SESSIONS = 2
_OPEN_LOCK = threading.Lock()


def _diag(severity, what, where, why):
    return {"severity": severity, "what": what, "where": str(where), "why": str(why)}


def _memory_entry(snapshot: dict) -> tuple[str | None, str | None, str | None]:
    """(path, format, qcow2 internal snapshot name) of the snapshot's memory.

    discover() gives {"path", "format", "snapshot"}; a bare path is accepted
    too, for notebooks.
    """
    memory = snapshot.get("memory")
    if isinstance(memory, dict):
        return memory.get("path"), memory.get("format"), memory.get("snapshot")
    return memory, None, None


def _is_elf(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == b"\x7fELF"


def normalise_image(snapshot: dict, ctx: dict, diagnostics: list) -> tuple[Path | None, str | None]:
    """The memory artefact as a file Volatility opens natively (an ELF core).

    Non-ELF artefacts (kdump, QEMU stream, libvirt save, savevm) are converted
    once into the case's derived dir by toolkit.memory.convert.to_elf.
    """
    path, fmt, internal = _memory_entry(snapshot)
    if not path:
        diagnostics.append(_diag("info", "memory image", snapshot.get("id", "?"), "snapshot has no memory artefact"))
        return None, None
    path = Path(path)
    if not path.is_file():
        diagnostics.append(_diag("error", "memory image", path, "file not found"))
        return None, fmt
    if _is_elf(path):
        return path, fmt or "elf"
    derived = Path(ctx.get("derived_dir") or Path(ctx.get("case_dir", ".")) / "derived") / "memory"
    target = derived / (f"{path.name}.{internal}.elf" if internal else f"{path.name}.elf")
    if target.is_file() and target.stat().st_mtime >= path.stat().st_mtime:
        return target, fmt
    try:
        from toolkit.memory.convert import to_elf
    except ImportError as excp:
        diagnostics.append(_diag("error", "memory image", path,
                                 f"format {fmt or 'unknown'} needs toolkit.memory.convert, unavailable: {excp}"))
        return None, fmt
    derived.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")   # never reuse a half-written image
    try:
        result = to_elf(path, partial, snapshot=internal, derived_dir=derived) or {}
    except Exception as excp:  # a converter failure is this image's problem, not the run's
        partial.unlink(missing_ok=True)
        diagnostics.append(_diag("error", "memory image conversion", path, f"{type(excp).__name__}: {excp}"))
        return None, fmt
    os.replace(partial, target)
    for d in result.get("diagnostics", []) or []:
        diagnostics.append({k: str(d.get(k, "")) for k in ("severity", "what", "where", "why")})
    diagnostics.append(_diag("info", "memory image", path, f"converted {result.get('format') or fmt} to ELF "
                             f"{target} (sha256 {result.get('dst_sha256')})"))
    return target, result.get("format") or fmt


def _isf_dir(isf_path: str, sha256: str, ctx: dict) -> Path:
    """A directory holding only the chosen ISF (linked into the case).

    Volatility indexes every file under a symbol dir; one file keeps that
    index instant, and the case keeps the exact ISF it was analysed with.
    One dir per ISF for the whole case, not per snapshot: Volatility parses
    and hashes every ISF at a location new to its identifier cache (~2 s for
    a kernel ISF), so the clones of an audit share the first one's entry.
    """
    isf = Path(isf_path)
    target_dir = _case_derived(ctx) / "isf" / sha256[:16]
    target = target_dir / isf.name
    if not target.exists():
        target_dir.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.{os.getpid()}-{time.monotonic_ns()}.part")
        try:
            os.link(isf, partial)
        except OSError:
            shutil.copy2(isf, partial)
        os.replace(partial, target)  # parallel workers: the file appears whole or not at all
    return target_dir


def _case_derived(ctx: dict) -> Path:
    """The case's derived/ dir (the pipeline's cache_dir is derived/cache)."""
    if ctx.get("case_dir"):
        return Path(ctx["case_dir"]) / "derived"
    return Path(ctx["cache_dir"]) / "derived"


def _symbol_set_listing(symbol_dirs) -> str:
    """Every file under the symbol dirs with size and mtime: Volatility re-indexes
    (writes its cache) when this changes, so the unlocked fast path must not run."""
    lines = []
    for d in symbol_dirs:
        for path in [Path(d)] if Path(d).is_file() else sorted(Path(d).rglob("*")):
            if path.is_file():
                st = path.stat()
                lines.append(f"{path}\t{st.st_size}\t{st.st_mtime_ns}")
    return "\n".join(lines) + "\n"


def _volatility_cache(cache_dir: Path, symbol_dirs) -> Path:
    """Volatility's cache dir for one set of symbol dirs.

    Volatility's identifier cache drops every location not on the current
    symbol path; one cache per symbol set means snapshots of different
    kernels never rewrite each other's entries, and once a set's cache is
    filled later sessions only read it.
    """
    import hashlib

    key = hashlib.sha256("\0".join(sorted(str(Path(d).resolve()) for d in symbol_dirs)).encode()).hexdigest()[:16]
    return Path(cache_dir) / "volatility" / key


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock between processes (parallel audit workers, Dask workers on one host)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def open_memory(snapshot: dict, ctx: dict) -> tuple[dict | None, dict, list]:
    """Normalise, resolve symbols and find the kernel; cached per process.

    Returns (session or None, info row, diagnostics). The YARA engine calls
    this (through process_regions) and gets the memory engine's session.
    """
    diagnostics: list[dict] = []
    profile = ctx.get("profile") or {}
    os_name = profile.get("profile", {}).get("os", "linux")
    info = {"os": os_name, "profile": profile.get("profile", {}).get("name"),
            "volatility_version": vol_context.volatility_version(), "pakunoda_version": _pakunoda_version()}
    image, fmt = normalise_image(snapshot, ctx, diagnostics)
    info.update(image_path=str(image) if image else None, image_format=fmt)
    if image is None:
        return None, info, diagnostics
    cache_dir = Path(ctx.get("cache_dir") or vol_symbols.default_cache_dir())
    user_symbols = [Path(p) for p in (ctx.get("symbols") or [])]
    progress = ctx.get("progress")
    if os_name == "linux":
        try:
            # ISFs are cached across cases (keyed by banner) and validated once per host;
            # Volatility's own caches live in the case, one per symbol set.
            symbols_cache = Path(ctx.get("symbols_cache") or vol_symbols.default_cache_dir())
            # Parallel audit workers share the cache: one builds a banner's ISF, the others wait for it.
            with file_lock(symbols_cache / "symbols.lock"):
                found = vol_symbols.resolve_isf(image, user_paths=user_symbols, cache_dir=symbols_cache,
                                                build=ctx.get("build_symbols", True), progress=progress)
        except vol_symbols.SymbolsError as excp:
            diagnostics.extend(excp.diagnostics)
            diagnostics.append(_diag("error", "linux symbols", image, str(excp)))
            return None, info, diagnostics
        diagnostics.extend(found["diagnostics"])
        info.update(banner=found["banner"], isf_path=found["isf_path"], isf_sha256=found["sha256"],
                    isf_origin=found["origin"])
        symbol_dirs = [_isf_dir(found["isf_path"], found["sha256"], ctx)]
        vol_cache = _volatility_cache(cache_dir, symbol_dirs)
        with file_lock(vol_cache.with_suffix(".lock")):
            problem = vol_context.prevalidate_isf(found["isf_path"], found["sha256"], vol_cache,
                                                  host_cache=symbols_cache)
        if problem:
            diagnostics.append(_diag("error", "linux symbols", found["isf_path"], problem))
            return None, info, diagnostics
    else:
        symbol_dirs = user_symbols + [vol_symbols.PROFILE_SYMBOLS]
        vol_cache = _volatility_cache(cache_dir, symbol_dirs)
        info.update(isf_path=";".join(map(str, symbol_dirs)), isf_origin="user" if user_symbols else "profiles")
    key = (str(image), tuple(map(str, symbol_dirs)), os_name)
    if key not in _SESSIONS:
        # The memory and YARA engines of one snapshot share a session; a batch
        # of many snapshots must not keep every context alive.
        while len(_SESSIONS) >= KEEP_SESSIONS:
            _SESSIONS.pop(next(iter(_SESSIONS)))
        # Volatility fills its identifier cache on the first session of a symbol set; two
        # processes doing that at once made one of them find no kernel. Later sessions of
        # the set, with the same files in it, only read the filled cache, so they run in
        # parallel unlocked. Threads of one process (a Dask worker) always take turns:
        # opening a session re-points Volatility's process-wide symbol path and caches.
        filled = vol_cache / "snapscope-identifiers-filled"
        listing = _symbol_set_listing(symbol_dirs)
        ready = filled.is_file() and filled.read_text() == listing
        lock = contextlib.nullcontext() if ready else file_lock(vol_cache.with_suffix(".lock"))
        try:
            with _OPEN_LOCK, lock:
                _SESSIONS[key] = vol_context.open_session(image, os_name=os_name, symbol_dirs=symbol_dirs,
                                                          cache_dir=vol_cache, progress=progress)
                if not ready:
                    filled.write_text(listing)
        except vol_context.VolatilityError as excp:
            diagnostics.append(_diag("error", f"{os_name} kernel", image, str(excp)))
            diagnostics.extend(_diag("error", "volatility", image, d) for d in excp.details)
            return None, info, diagnostics
    session = _SESSIONS[key]
    info.update(dtb=session["dtb"], kernel_virtual_offset=session["kernel_virtual_offset"])
    info["banner"] = info.get("banner") or session["banner"]
    diagnostics.extend(_diag("warning", "volatility", "kernel discovery", w) for w in session["warnings"])
    return session, info, diagnostics


def _pakunoda_version():
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("pakunoda")
    except PackageNotFoundError:
        return None


def run_plugins(session: dict, plugins: list[dict], progress=None) -> tuple[dict, list, list]:
    """Run profile plugin entries in the session; returns (outputs, runs, diagnostics)."""
    outputs, runs, diagnostics = {}, [], []
    volatility_plugins = [p for p in plugins if not p["name"].startswith("snapscope.")]
    for i, entry in enumerate(volatility_plugins):
        name = entry["name"]
        if progress:
            progress(f"memory: {name}", i, len(volatility_plugins))
        result = vol_context.run_plugin(session, name, entry.get("options") or {})
        outputs[name] = result
        status = "ok" if not result["error"] else ("partial" if result["rows"] else "failed")
        runs.append({"plugin": name, "status": status, "rows": len(result["rows"]),
                     "seconds": result["seconds"], "error": result["error"]})
        if result["error"]:
            diagnostics.append(_diag("warning" if result["rows"] else "error", f"plugin {name}", name,
                                     result["error"] + (" (rows before the failure kept)" if result["rows"] else "")))
        diagnostics.extend(_diag("warning", f"plugin {name}", name, w) for w in dict.fromkeys(result["warnings"]))
    return outputs, runs, diagnostics


def run(snapshot: dict, ctx: dict) -> dict[str, pd.DataFrame]:
    """Engine entry point: the memory/* tables of one snapshot, plus diagnostics."""
    started = time.monotonic()
    sid = str(snapshot.get("id", snapshot.get("name", "snapshot")))
    profile = ctx.get("profile")
    if profile is None:
        from toolkit.profiles import load_profile
        profile = ctx["profile"] = load_profile("linux-triage")
    session, info, diagnostics = open_memory(snapshot, ctx)
    tables: dict[str, list[dict]] = {}
    runs: list[dict] = []
    outputs: dict = {}
    if session is not None:
        plugins = profile["memory"]["plugins"]
        outputs, runs, more = run_plugins(session, plugins, ctx.get("progress"))
        diagnostics += more
        os_name = session["os"]
        wants_processes = any(p in outputs for p in (vol_tables.LIST.get(os_name), vol_tables.SCAN.get(os_name)))
        enrich = vol_process.task_details(session, diagnostics) if os_name == "linux" and wants_processes else {}
        tables = vol_tables.build_all(outputs, enrich, os_name)
        diagnostics += vol_tables.process_cross_view(tables.get("memory/processes"))
        if any(p["name"] == "snapscope.executables" for p in plugins) and os_name == "linux":
            t0 = time.monotonic()
            tables["memory/executables"] = vol_process.executables(session, diagnostics)
            runs.append({"plugin": "snapscope.executables", "status": "ok",
                         "rows": len(tables["memory/executables"]), "seconds": time.monotonic() - t0})
        _leave_readers(ctx, session, diagnostics)
        if "memory/shell_history" in tables and not tables["memory/shell_history"]:
            diagnostics.append(_diag("info", "shell history", "linux.bash.Bash",
                                     "no bash history in memory (shells such as busybox sh keep none)"))
    info.update(plugins_ok=sum(r["status"] == "ok" for r in runs),
                plugins_failed=sum(r["status"] != "ok" for r in runs), seconds=time.monotonic() - started)
    sources = vol_tables.table_sources(outputs)
    sources["memory/executables"] = "snapscope/executables"
    out = {name: frame(name, rows, sid, sources.get(name)) for name, rows in tables.items()}
    out["memory/info"] = frame("memory/info", [info], sid)
    out["memory/plugin_runs"] = frame("memory/plugin_runs", runs, sid)
    out["diagnostics"] = schemas.make_table("diagnostics", diagnostics, snapshot_id=sid, source="volatility")
    return out


def _leave_readers(ctx: dict, session: dict, diagnostics: list) -> None:
    """Readers for later engines of this snapshot (YARA): the physical address
    space and the process regions. Readers, not results (engines/__init__)."""
    shared = ctx.get("shared")
    if not isinstance(shared, dict):
        return
    if session["os"] == "linux":
        shared["memory_regions"] = list(vol_process.process_regions(session))
    try:
        from toolkit.memory import open_image
        shared["memory_image"] = open_image(session["image"])
    except Exception as excp:  # YARA then scans processes only; the memory tables stand regardless
        diagnostics.append(_diag("warning", "physical memory reader for YARA", session["image"],
                                 f"{type(excp).__name__}: {excp}"))


def frame(name: str, rows: list[dict], snapshot_id: str, source: str | None = None) -> pd.DataFrame:
    """make_table with integer columns typed up front, so a 64-bit kernel
    address next to a missing value is not rounded through float64."""
    columns = schemas.SCHEMAS[name]["columns"]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    data = {}
    for col in keys:
        values = [r.get(col) for r in rows]
        if columns.get(col) in (schemas.INT, schemas.UINT):
            data[col] = pd.array([None if v is None else int(v) for v in values], dtype=columns[col])
        else:
            data[col] = pd.Series(values, dtype=object)
    df = pd.DataFrame(data, index=range(len(rows)))
    table = schemas.make_table(name, df, snapshot_id=snapshot_id, source=source or "volatility")
    schemas.validate(name, table)
    return table


def process_regions(snapshot: dict, ctx: dict, pids=None):
    """Per-process VMA regions for YARA (see vol_process.process_regions).

    Example::

        for region in process_regions(snapshot, ctx):
            data = region["read"](region["start"], min(region["end"] - region["start"], 1 << 20))
    """
    session, _info, _diagnostics = open_memory(snapshot, ctx)
    if session is None or session["os"] != "linux":
        return iter(())
    return vol_process.process_regions(session, pids)
