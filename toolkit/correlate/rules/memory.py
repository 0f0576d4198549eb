"""Memory rules: code that is in a process but came from nowhere on disk, and libraries forced into processes.

Example::

    hits = list(injected_code(tables, build_graph(tables, "s1"), "s1"))
"""

from __future__ import annotations

from toolkit.correlate.links import frame, hit, link, pid_of, value
from toolkit.correlate.vocabulary import files_by_path, is_hidden_or_temp, package_owner, process_index, user_writable
from toolkit.programs import basename
from toolkit.schemas import split_deleted

ELF_MAGIC = b"\x7fELF"
# Runtimes that compile code at run time and so map writable+executable memory by design.
JIT_RUNTIMES = ("java", "node", "nodejs", "pwsh", "dotnet", "mono", "qemu-system-x86_64", "chrome", "firefox")
PRELOAD_KEYS = ("LD_PRELOAD", "LD_AUDIT")


def _bytes(v) -> bytes:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    return b""


def injected_code(tables, graph, sid):
    """Executable memory no file backs (malfind): anonymous or written-then-executable regions in a
    process that does not compile code at run time; high when the region holds an ELF image."""
    procs = process_index(tables)
    regions: dict[int, list[int]] = {}
    mal = frame(tables, "memory/malfind")
    for i, r in mal.iterrows():
        if pid_of(r) is not None:
            regions.setdefault(pid_of(r), []).append(i)
    for pid, rows in regions.items():
        proc = procs.get(pid) or {}
        exe = split_deleted(value(proc, "exe_path") or None)[0]
        name = basename(exe) or value(mal.loc[rows[0]], "process") or ""
        jit = name.startswith(JIT_RUNTIMES)
        elf = [i for i in rows if _bytes(value(mal.loc[i], "hexdump")).startswith(ELF_MAGIC)]
        first = mal.loc[(elf or rows)[0]]
        why = (
            f"pid {pid} ({name!r}) has {len(rows)} executable memory region(s) no file backs"
            f" (first at {int(value(first, 'start') or 0):#x}, {value(first, 'protection')})"
            + (f", {len(elf)} holding an ELF image loaded by hand" if elf else "")
            + (", in a runtime that compiles code as it runs" if jit else "")
            + "."
        )
        severity = "low" if jit and not elf else ("high" if elf else "medium")
        links = [link("memory/malfind", sid, i) for i in rows[:20]]
        links += [link("memory/processes", sid, proc["_row"])] if proc else []
        yield hit(f"process:{pid}", links, 0.8 if elf else 0.6, why, severity=severity)


def _library_judgement(lib: str, owned: dict, files: dict) -> tuple[str, str]:
    """(severity, reason) for a preloaded library path."""
    if is_hidden_or_temp(lib):
        return "high", "from a hidden or temporary location"
    if writer := user_writable(files, lib):
        return "high", f"that a non-root user can replace ({writer})"
    if owned and lib not in owned:
        return "high", "that no installed package provides"
    return "medium", "from a package" if lib in owned else "of unknown origin"


def preload_environment(tables, graph, sid):
    """LD_PRELOAD (or LD_AUDIT) in a process's environment: a library injected into every program
    that process starts. One finding per process that set it (its parent did not have it)."""
    env = frame(tables, "memory/envars")
    if not len(env):
        return
    procs = process_index(tables)
    owned, files = package_owner(tables), files_by_path(tables)
    preload: dict[int, tuple[int, str, str]] = {}
    for i, r in env.iterrows():
        if value(r, "key") in PRELOAD_KEYS and value(r, "value") and pid_of(r) is not None:
            preload.setdefault(pid_of(r), (i, value(r, "key"), value(r, "value")))
    for pid, (i, key, libs) in preload.items():
        parent = pid_of(procs.get(pid) or {}, "ppid")
        if parent in preload and preload[parent][2] == libs:
            continue  # inherited: the finding is about the process that set it
        heirs = [p for p, (_, _, v) in preload.items() if v == libs and p != pid]
        judged = [_library_judgement(lib, owned, files) for lib in libs.replace(":", " ").split()]
        severity = "high" if any(s == "high" for s, _ in judged) else "medium"
        why = (
            f"pid {pid} ({value(env.loc[i], 'process')!r}) has {key}={libs!r} in its environment: "
            + "; ".join(f"{lib!r} is a library {reason}" for lib, (_, reason) in zip(libs.split(), judged))
            + (f"; {len(heirs)} other process(es) carry the same value" if heirs else "")
            + "."
        )
        yield hit(f"process:{pid}", [link("memory/envars", sid, i)], 0.9, why, severity=severity)


def preload_config_mapped(tables, graph, sid):
    """A library that /etc/ld.so.preload names, mapped into running processes: the disk's
    preload configuration at work in memory."""
    pers = frame(tables, "disk/persistence")
    maps = frame(tables, "memory/maps")
    if not len(pers) or not len(maps):
        return
    for i, r in pers.iterrows():
        if value(r, "kind") != "ld_preload":
            continue
        names = {value(r, "program"), value(r, "program_path")} - {None}
        mapped = maps[maps["path"].isin(names)] if "path" in maps else maps.iloc[0:0]
        pids = sorted({pid_of(m) for _, m in mapped.iterrows() if pid_of(m) is not None})
        if not pids:
            continue
        lib = value(r, "program_path") or value(r, "program")
        why = (
            f"{value(r, 'path')!r} names {value(r, 'program')!r}, and {len(pids)} running process(es) map it "
            f"(pids {', '.join(map(str, pids[:12]))}{'...' if len(pids) > 12 else ''}): it is loaded into every "
            f"dynamically linked program."
        )
        links = [link("disk/persistence", sid, i)] + [link("memory/maps", sid, j) for j in mapped.index[:12]]
        yield hit(f"file:{lib}", links, 0.95, why)


def library_from_unusual_path(tables, graph, sid):
    """An executable mapping of a shared object that lies in a hidden or temporary location or was
    deleted after it was loaded (and is not the process's own program)."""
    maps = frame(tables, "memory/maps")
    procs = process_index(tables)
    found: dict[tuple, list[int]] = {}
    for i, r in maps.iterrows():
        path, deleted = value(r, "path"), bool(value(r, "deleted"))
        if not path or "x" not in str(value(r, "flags") or "") or path.startswith(("[", "/memfd:", "memfd:")):
            continue
        exe = split_deleted(value(procs.get(pid_of(r)) or {}, "exe_path") or None)[0]
        if path == exe or not (is_hidden_or_temp(path) or (deleted and ".so" in basename(path))):
            continue
        found.setdefault((pid_of(r), path, deleted), []).append(i)
    for (pid, path, deleted), rows in found.items():
        why = (
            f"pid {pid} ({value(maps.loc[rows[0]], 'process')!r}) maps {path!r} executable"
            + (", a file deleted after it was loaded" if deleted else ", from a hidden or temporary location")
            + "."
        )
        yield hit(f"process:{pid}", [link("memory/maps", sid, i) for i in rows[:8]], 0.75, why)


RULES: dict[str, dict] = {
    "mem.injected_code": {
        "title": "Executable memory no file backs (injected code)",
        "attack_id": "T1055",
        "severity": "medium",
        "confidence": 0.6,
        "keys_on": "malfind regions (anonymous or written-then-executable memory) in a process; an ELF header "
        "at the start of such a region (a program loaded by hand) makes it high; in a runtime that compiles "
        "code as it runs (java, node, ...) only low",
        "joins": ["memory/malfind", "memory/processes"],
        "grading": "medium (0.6): shellcode and reflective loaders live there, so do a few JITs and trampolines; "
        "high (0.8) with an ELF image inside",
        "chain": "the process -> its executable, sockets and flows; YARA hits in the same process",
        "fn": injected_code,
    },
    "mem.preload_environment": {
        "title": "LD_PRELOAD in a process environment",
        "attack_id": "T1574.006",
        "severity": "high",
        "confidence": 0.9,
        "keys_on": "an LD_PRELOAD or LD_AUDIT variable in a process's environment (Volatility envars); reported "
        "once, at the process that set it rather than every heir; high when the library is hidden, temporary, "
        "user-writable or in no package, else medium",
        "joins": ["memory/envars", "memory/processes", "disk/package_files", "disk/files"],
        "grading": "high: the preloaded library runs inside every program that process starts; 0.9",
        "chain": "the process -> its children (which inherit it) -> its sockets",
        "fn": preload_environment,
    },
    "mem.preload_config_mapped": {
        "title": "Library from /etc/ld.so.preload mapped in processes",
        "attack_id": "T1574.006",
        "severity": "high",
        "confidence": 0.95,
        "keys_on": "a library the disk's /etc/ld.so.preload names that process memory maps show loaded",
        "joins": ["disk/persistence", "memory/maps"],
        "grading": "high: the system-wide preload hook is live, not just configured; 0.95",
        "chain": "the library file -> the preload entry that names it -> processes mapping it",
        "fn": preload_config_mapped,
    },
    "mem.library_from_unusual_path": {
        "title": "Shared object loaded from a hidden, temporary or deleted file",
        "attack_id": "T1574.006",
        "severity": "high",
        "confidence": 0.75,
        "keys_on": "an executable memory mapping of a file in a temporary or hidden location, or of a shared "
        "object deleted after loading, other than the process's own program",
        "joins": ["memory/maps", "memory/processes"],
        "grading": "high: libraries come from library directories; a loaded-then-deleted .so hides its code; 0.75",
        "chain": "the process -> its executable -> its sockets",
        "fn": library_from_unusual_path,
    },
}
