"""Opening a snapshot's memory for Volatility: the image, its symbols, its kernel.

:func:`open_memory` normalises the memory artefact to a file Volatility
opens (an ELF core), resolves Linux symbols (user ISF, shipped symbols, the
host cache, else a pakunoda build from the dump), finds the kernel once and
keeps the session for the process, so the memory and YARA engines of one
snapshot share it. Parallel audit workers coordinate through file locks:
one builds a kernel's ISF and fills Volatility's cache, the others wait.

Example::

    session, info, diagnostics = open_memory(snapshot, ctx)
    session["kernel"], info["isf_origin"]
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import threading
import time
from pathlib import Path

from toolkit.case import custody
from toolkit.case.lock import file_lock
from toolkit.engines import EngineContext
from toolkit.engines.memory import symbols, volatility
from toolkit.engines.memory.images import shared_image
from toolkit.errors import MemoryFormatError, SymbolsError, VolatilityError
from toolkit.hashing import sha256_file
from toolkit.schemas import diagnostic
from toolkit.versions import distribution_versions

_SESSIONS: dict[tuple, dict] = {}
KEEP_SESSIONS = 2
_OPEN_LOCK = threading.Lock()


def _memory_entry(snapshot: dict) -> tuple[str | None, str | None, str | None]:
    """(path, format, qcow2 internal snapshot name) of the snapshot's memory.

    discover() gives {"path", "format", "snapshot"}; a bare path is accepted
    too, for notebooks.
    """
    memory = snapshot.get("memory")
    if isinstance(memory, dict):
        return memory.get("path"), memory.get("format"), memory.get("snapshot")
    return memory, None, None


def memory_source(snapshot: dict, ctx: EngineContext, diagnostics: list) -> dict | None:
    """The snapshot's memory artefact as it will be read, in place: {"path", "format", "snapshot", "image"}.

    snapscope's reader opens the artefact once here (a damaged file is reported
    now, as a diagnostic); the image is shared with Volatility's layer
    (``layer.SnapscopeLayer``) and with the YARA engine. Nothing is converted:
    the case holds no copy of the guest's RAM.
    """
    path, fmt, internal = _memory_entry(snapshot)
    if not path:
        diagnostics.append(
            diagnostic("info", "memory image", snapshot.get("id", "?"), "snapshot has no memory artefact")
        )
        return None
    path = Path(path)
    if not path.is_file():
        diagnostics.append(diagnostic("error", "memory image", path, "file not found"))
        return None
    try:
        image = shared_image(path, internal, str(Path(ctx.derived_dir) / "memory"), references=ctx.references)
    except MemoryFormatError as excp:
        diagnostics.append(diagnostic("error", "memory image", path, str(excp)))
        return None
    for d in image.diagnostics:
        diagnostics.append(
            diagnostic(d.get("severity", "warning"), d.get("what", "memory image"), d.get("where"), d.get("why"))
        )
    return {"path": path, "format": image.format or fmt, "snapshot": internal, "image": image}


def _memory_key(ctx: EngineContext, source: dict) -> str:
    """What a built ISF is cached under besides its banner: the memory file's sha256 (known from
    intake), with the internal snapshot read from it when a qcow2 holds several VM states."""
    digest = ctx.evidence_hashes.get(str(Path(source["path"]).resolve())) or sha256_file(source["path"])
    if not source["snapshot"]:
        return digest
    return hashlib.sha256(f"{digest}\0{source['snapshot']}".encode()).hexdigest()


def _isf_dir(isf_path: str, sha256: str, ctx: EngineContext) -> Path:
    """A directory holding only the chosen ISF (linked into the case).

    Volatility indexes every file under a symbol dir; one file keeps that
    index instant, and the case keeps the exact ISF it was analysed with.
    One dir per ISF for the whole case, not per snapshot: Volatility parses
    and hashes every ISF at a location new to its identifier cache (~2 s for
    a kernel ISF), so the clones of an audit share the first one's entry.
    """
    isf = Path(isf_path)
    target_dir = ctx.derived_root / "isf" / sha256[:16]
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


def _log_isf(ctx: EngineContext, found: dict, copy_dir: Path) -> None:
    """Custody records which ISF the snapshot was analysed with: its sha256, origin and what it was built from."""
    if not ctx.case_dir:
        return
    custody.append_event(
        ctx.case_dir,
        action="symbols.isf",
        path=found["isf_path"],
        sha256=found["sha256"],
        detail={
            "snapshot": ctx.snapshot_id,
            "origin": found["origin"],
            "banner": found["banner"],
            "built_from_image_sha256": found.get("built_from"),
            "case_copy": str(copy_dir / Path(found["isf_path"]).name),
        },
    )


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
    key = hashlib.sha256("\0".join(sorted(str(Path(d).resolve()) for d in symbol_dirs)).encode()).hexdigest()[:16]
    return Path(cache_dir) / "volatility" / key


def open_memory(snapshot: dict, ctx: EngineContext) -> tuple[dict | None, dict, list]:
    """Normalise, resolve symbols and find the kernel; cached per process.

    Returns (session or None, info row, diagnostics). The YARA engine calls
    this (through process_regions) and gets the memory engine's session.
    """
    diagnostics: list[dict] = []
    profile = ctx.profile
    os_name = profile.get("profile", {}).get("os", "linux")
    info = {
        "os": os_name,
        "profile": profile.get("profile", {}).get("name"),
        "volatility_version": volatility.volatility_version(),
        "pakunoda_version": distribution_versions(["pakunoda"])["pakunoda"],
    }
    source = memory_source(snapshot, ctx, diagnostics)
    if source is None:
        return None, info, diagnostics
    image = source["path"]
    info.update(image_path=str(image), image_format=source["format"])
    cache_dir = Path(ctx.cache_dir or symbols.default_cache_dir())
    user_symbols = [Path(p) for p in ctx.symbols]
    progress = ctx.progress
    vmcoreinfo = None  # the kernel's VMCOREINFO, when the banner search found it (Linux)
    if os_name == "linux":
        try:
            # ISFs are cached across cases (keyed by banner) and validated once per host;
            # Volatility's own caches live in the case, one per symbol set.
            symbols_cache = Path(ctx.symbols_cache or symbols.default_cache_dir())
            # Parallel audit workers share the cache: one builds a banner's ISF, the others wait for it.
            with file_lock(symbols_cache / "symbols.lock"):
                found = symbols.resolve_isf(
                    source["image"],
                    user_paths=user_symbols,
                    cache_dir=symbols_cache,
                    build=ctx.build_symbols,
                    progress=progress,
                    scratch_dir=Path(ctx.derived_dir) / "memory",
                    # asked for only if no user or shipped ISF matches (hashing 8 GB costs 5-20 s)
                    image_sha256=functools.partial(_memory_key, ctx, source),
                )
        except SymbolsError as excp:
            diagnostics.extend(excp.diagnostics)
            diagnostics.append(diagnostic("error", "linux symbols", image, str(excp)))
            return None, info, diagnostics
        diagnostics.extend(found["diagnostics"])
        vmcoreinfo = found.get("vmcoreinfo")
        info.update(
            banner=found["banner"], isf_path=found["isf_path"], isf_sha256=found["sha256"], isf_origin=found["origin"]
        )
        symbol_dirs = [_isf_dir(found["isf_path"], found["sha256"], ctx)]
        _log_isf(ctx, found, symbol_dirs[0])
        vol_cache = _volatility_cache(cache_dir, symbol_dirs)
        with file_lock(vol_cache.with_suffix(".lock")):
            problem = volatility.prevalidate_isf(
                found["isf_path"], found["sha256"], vol_cache, host_cache=symbols_cache
            )
        if problem:
            diagnostics.append(diagnostic("error", "linux symbols", found["isf_path"], problem))
            return None, info, diagnostics
    else:
        symbol_dirs = user_symbols + [symbols.PROFILE_SYMBOLS]
        vol_cache = _volatility_cache(cache_dir, symbol_dirs)
        info.update(isf_path=";".join(map(str, symbol_dirs)), isf_origin="user" if user_symbols else "profiles")
    key = (str(image), source["snapshot"], tuple(map(str, symbol_dirs)), os_name)
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
                _SESSIONS[key] = volatility.open_session(
                    image,
                    os_name=os_name,
                    symbol_dirs=symbol_dirs,
                    cache_dir=vol_cache,
                    progress=progress,
                    snapshot=source["snapshot"],
                    derived_dir=Path(ctx.derived_dir) / "memory",
                    vmcoreinfo=vmcoreinfo,
                )
                if not ready:
                    filled.write_text(listing)
        except VolatilityError as excp:
            diagnostics.append(diagnostic("error", f"{os_name} kernel", image, str(excp)))
            diagnostics.extend(diagnostic("error", "volatility", image, d) for d in excp.details)
            return None, info, diagnostics
    session = _SESSIONS[key]
    session["memory_image"] = source["image"]
    info.update(dtb=session["dtb"], kernel_virtual_offset=session["kernel_virtual_offset"])
    info["banner"] = info.get("banner") or session["banner"]
    diagnostics.extend(diagnostic("warning", "volatility", "kernel discovery", w) for w in session["warnings"])
    return session, info, diagnostics
