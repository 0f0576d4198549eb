"""Volatility plugin output -> snapscope tables (rows as plain dicts).

Each builder takes ``outputs`` (plugin name -> run_plugin result, see
toolkit.engines.memory.volatility) and returns the rows of one declared table, or None when none of
the plugins it reads ran. Column names of Volatility's TreeGrids are read here
and nowhere else, for Linux and Windows alike, so correlation sees one shape.

Example::

    rows = processes_rows({"linux.pslist.PsList": pslist_result,
                           "linux.psscan.PsScan": psscan_result}, enrich={})
    rows[0]   # {'pid': 1, 'ppid': 0, 'process': 'init', 'in_list': True, 'in_scan': True, ...}
"""

from __future__ import annotations

from toolkit.engines.memory.kernel import MODULE_PLUGINS, kernel_checks_rows, modules_rows
from toolkit.engines.memory.plugin_output import plugin_output, source_of
from toolkit.engines.memory.sockets import sockets_rows
from toolkit.schemas import diagnostic, pick, split_deleted

# --- processes ---------------------------------------------------------------

LIST = {"linux": "linux.pslist.PsList", "windows": "windows.pslist.PsList"}
SCAN = {"linux": "linux.psscan.PsScan", "windows": "windows.psscan.PsScan"}


def _process_fields(row: dict) -> dict:
    """Normalise one pslist/psscan row (Linux or Windows column names)."""
    name = row.get("COMM", row.get("ImageFileName"))
    offset = next((row[k] for k in ("OFFSET (V)", "OFFSET (P)", "Offset(V)", "Offset(P)") if k in row), None)
    return {
        "pid": row.get("PID"),
        "tid": row.get("TID", row.get("PID")),
        "ppid": row.get("PPID"),
        "process": name,
        "uid": row.get("UID"),
        "gid": row.get("GID"),
        "start_ts": row.get("CREATION TIME", row.get("CreateTime")),
        "exit_state": row.get("EXIT_STATE") or ("exited" if row.get("ExitTime") else None),
        "threads": row.get("Threads"),
        "task_offset": offset,
    }


def threads_listed(outputs: dict, os_name: str = "linux") -> bool:
    """Whether the task-list walk included user threads (pslist's own ``threads`` option)."""
    return bool(((outputs.get(LIST.get(os_name, "")) or {}).get("options") or {}).get("threads"))


def processes_rows(outputs: dict, enrich: dict, os_name: str = "linux") -> list[dict] | None:
    """pslist and psscan merged on (pid, name): in_list / in_scan say who saw it.

    ``enrich`` maps pid -> {is_kernel_thread, exe_path, exe_deleted} from the
    snapscope task walk (tasks.task_details); Windows has no such walk. When
    pslist walked threads too, ``threads`` counts each process's tasks (the
    leader included, like /proc/PID/status Threads); the threads themselves
    are rows of ``memory/threads``.
    """
    listed, scanned = plugin_output(outputs, LIST[os_name]), plugin_output(outputs, SCAN[os_name])
    if listed is None and scanned is None:
        return None
    merged: dict[tuple, dict] = {}
    counts: dict[int, int] = {}
    for row in listed or []:
        fields = _process_fields(row)
        counts[fields["pid"]] = counts.get(fields["pid"], 0) + 1
        if fields["tid"] != fields["pid"]:  # a thread (pslist with threads): memory/threads has it
            continue
        fields.update(in_list=True, in_scan=False if scanned is not None else None)
        merged[(fields["pid"], fields["process"])] = fields
    if os_name == "linux" and threads_listed(outputs, os_name):
        for fields in merged.values():
            fields["threads"] = counts.get(fields["pid"])
    # threads: the leader stands for the process
    leaders = (f for f in map(_process_fields, scanned or []) if f["tid"] == f["pid"])
    _merge_scanned(merged, leaders, lambda f: (f["pid"], f["process"]), listed is not None)
    out = []
    plugins = [p for p in (LIST[os_name], SCAN[os_name]) if p in outputs]
    for fields in merged.values():
        extra = enrich.get(fields["pid"], {}) if fields["in_list"] else {}
        fields.pop("tid")
        fields["is_kernel_thread"] = extra.get("is_kernel_thread")
        fields["exe_path"], fields["exe_deleted"] = extra.get("exe_path"), extra.get("exe_deleted")
        fields["source"] = source_of(*plugins)
        out.append(fields)
    return sorted(out, key=lambda r: (r["pid"] is None, r["pid"] or 0))


def _merge_scanned(merged: dict, scanned, key_of, was_listed: bool) -> None:
    """Fold the scan's tasks into the list's: a task in both is marked ``in_scan``; one only the scan
    found is added, ``in_list`` False (or <NA> when the list did not run)."""
    for fields in scanned:
        key = key_of(fields)
        if key in merged:
            merged[key]["in_scan"] = True
            merged[key]["exit_state"] = merged[key]["exit_state"] or fields["exit_state"]
        else:
            fields.update(in_list=False if was_listed else None, in_scan=True)
            merged[key] = fields


def threads_rows(outputs: dict, os_name: str = "linux") -> list[dict] | None:
    """Every task (thread-group leaders and their threads), merged on (pid, tid) from pslist and psscan.

    The task list's side comes from pslist run with ``threads = true``; without it the list's
    threads are unknown (``in_list`` <NA> for every thread the scan found). Linux only: Windows
    pslist prints thread counts, not threads.

    Example::

        rows = threads_rows({"linux.pslist.PsList": {**pslist_result, "options": {"threads": True}}})
        [(r["pid"], r["tid"], r["process"]) for r in rows][:2]   # [(1, 1, 'systemd'), (412, 415, 'gmain')]
    """
    if os_name != "linux":
        return None
    walked = threads_listed(outputs, os_name)
    listed = plugin_output(outputs, LIST[os_name]) if walked else None
    scanned = plugin_output(outputs, SCAN[os_name])
    if listed is None and scanned is None:
        return None
    merged: dict[tuple, dict] = {}
    for row in listed or []:
        fields = _process_fields(row)
        fields.update(in_list=True, in_scan=False if scanned is not None else None)
        merged[(fields["pid"], fields["tid"], fields["process"])] = fields
    _merge_scanned(
        merged, map(_process_fields, scanned or []), lambda f: (f["pid"], f["tid"], f["process"]), listed is not None
    )
    plugins = [p for p in (LIST[os_name], SCAN[os_name]) if p in outputs]
    out = []
    for fields in merged.values():
        fields.pop("threads")
        fields["source"] = source_of(*plugins)
        out.append(fields)
    return sorted(out, key=lambda r: (r["pid"] is None, r["pid"] or 0, r["tid"] is None, r["tid"] or 0))


DEAD_STATES = ("EXIT_DEAD", "EXIT_ZOMBIE", "exited")


def process_cross_view(rows: list[dict] | None) -> list[dict]:
    """Diagnostics when the task list and the scan disagree about live tasks.

    Exited tasks linger in freed memory and are expected to be scan-only; a
    *running* scan-only task means a hidden process or a damaged list, and an
    empty list beside a non-empty scan means the list could not be walked at
    all (then only scan-based facts exist: other plugins walk the same list).
    """
    if not rows:
        return []
    listed = [r for r in rows if r["in_list"]]
    live_scan_only = [
        r for r in rows if r["in_scan"] and r["in_list"] is False and r.get("exit_state") not in DEAD_STATES
    ]
    out = []
    if not listed and any(r["in_scan"] for r in rows):
        out.append(
            diagnostic(
                "error",
                "kernel task list",
                "linux.pslist.PsList",
                f"walking the task list gave no process but scanning found {len(rows)}: "
                "the list is damaged or unreadable; plugins that walk it (cmdlines, maps, "
                "sockets, open files) have nothing to report",
            )
        )
    elif live_scan_only:
        named = ", ".join(f"{r['pid']} {r['process']}" for r in live_scan_only[:10])
        out.append(
            diagnostic(
                "warning",
                "processes missing from the task list",
                "linux.psscan.PsScan",
                f"{len(live_scan_only)} live task(s) found only by scanning ({named}): "
                "hidden processes or a damaged task list",
            )
        )
    return out


def cmdlines_rows(outputs: dict) -> list[dict] | None:
    rows = plugin_output(outputs, "linux.psaux.PsAux", "windows.cmdline.CmdLine")
    return None if rows is None else [pick(r, CMDLINE_COLUMNS) for r in rows]


# Volatility's column for each of ours, per plugin (Linux first, then Windows where they differ);
# a path with " (deleted)" is split on the way
CMDLINE_COLUMNS = {"pid": "PID", "ppid": "PPID", "process": ("COMM", "Process"), "args": ("ARGS", "Args")}
ENVARS_COLUMNS = {"pid": "PID", "ppid": "PPID", "process": "COMM", "key": "KEY", "value": "VALUE"}
MALFIND_COLUMNS = {
    "pid": "PID",
    "process": "Process",
    "start": ("Start", "Start VPN"),
    "end": ("End", "End VPN"),
    "path": ("Path", "Tag"),
    "protection": "Protection",
    "hexdump": "Hexdump",
    "disasm": "Disasm",
}
MAPS_COLUMNS = {
    "pid": "PID",
    "process": "Process",
    "start": "Start",
    "end": "End",
    "flags": "Flags",
    "pgoff": "PgOff",
    "major": "Major",
    "minor": "Minor",
    "inode": "Inode",
}
LSOF_COLUMNS = {
    "pid": "PID",
    "tid": "TID",
    "process": "Process",
    "fd": "FD",
    "device": "Device",
    "inode": "Inode",
    "type": "Type",
    "mode_text": "Mode",
    "ctime": "Changed",
    "mtime": "Modified",
    "atime": "Accessed",
    "size": "Size",
}


def _with_path(row: dict, path_value) -> dict:
    path, deleted = split_deleted(path_value)
    return {**row, "path": path, "deleted": deleted}


def maps_rows(outputs: dict) -> list[dict] | None:
    rows = plugin_output(outputs, "linux.proc.Maps")
    if rows is None:
        return None
    return [_with_path(pick(r, MAPS_COLUMNS), r.get("File Path")) for r in rows]


def open_files_rows(outputs: dict) -> list[dict] | None:
    rows = plugin_output(outputs, "linux.lsof.Lsof")
    if rows is None:
        return None
    return [_with_path(pick(r, LSOF_COLUMNS), r.get("Path")) for r in rows]


def shell_history_rows(outputs: dict) -> list[dict] | None:
    rows = plugin_output(outputs, "linux.bash.Bash")
    if rows is None:
        return None
    return [
        {"pid": r.get("PID"), "process": r.get("Process"), "ts": r.get("CommandTime"), "command": r.get("Command")}
        for r in rows
    ]


def envars_rows(outputs: dict) -> list[dict] | None:
    """Each process's environment, one row per variable (linux.envars.Envars)."""
    rows = plugin_output(outputs, "linux.envars.Envars")
    return None if rows is None else [pick(r, ENVARS_COLUMNS) for r in rows]


def malfind_rows(outputs: dict) -> list[dict] | None:
    rows = plugin_output(outputs, "linux.malware.malfind.Malfind", "windows.malware.malfind.Malfind")
    return None if rows is None else [pick(r, MALFIND_COLUMNS) for r in rows]


def _kind(value) -> str:
    for kind, types in (
        ("absent", type(None)),
        ("bool", bool),
        ("int", int),
        ("float", float),
        ("bytes", bytes),
        ("str", str),
    ):
        if isinstance(value, types):
            return kind
    return "time" if hasattr(value, "isoformat") else "str"


def plugin_rows(plugin: str, result: dict) -> list[dict]:
    """Long form (one row per cell) for plugins without a dedicated table."""
    out = []
    for row in result["rows"]:
        for column in result["columns"]:
            value = row.get(column)
            kind = _kind(value)
            text = (
                value.hex()
                if kind == "bytes"
                else value.isoformat()
                if kind == "time"
                else None
                if kind == "absent"
                else str(value)
            )
            out.append(
                {
                    "plugin": plugin,
                    "row_id": row["row_id"],
                    "parent_row_id": row["parent_row_id"],
                    "column": column,
                    "kind": kind,
                    "value": text,
                }
            )
    return out


# plugin name -> the table its output lands in (anything else: memory/plugin_rows)
DEDICATED = {
    "linux.pslist.PsList": "memory/processes",
    "linux.psscan.PsScan": "memory/processes",
    "windows.pslist.PsList": "memory/processes",
    "windows.psscan.PsScan": "memory/processes",
    "linux.psaux.PsAux": "memory/cmdlines",
    "windows.cmdline.CmdLine": "memory/cmdlines",
    "linux.proc.Maps": "memory/maps",
    "linux.sockstat.Sockstat": "memory/sockets",
    "windows.netscan.NetScan": "memory/sockets",
    "linux.lsof.Lsof": "memory/open_files",
    "linux.bash.Bash": "memory/shell_history",
    "linux.envars.Envars": "memory/envars",
    "linux.malware.malfind.Malfind": "memory/malfind",
    "windows.malware.malfind.Malfind": "memory/malfind",
    **{p: "memory/modules" for p in MODULE_PLUGINS},
    "linux.malware.check_syscall.Check_syscall": "memory/kernel_checks",
    "linux.malware.check_idt.Check_idt": "memory/kernel_checks",
    "linux.malware.tty_check.Tty_Check": "memory/kernel_checks",
    "linux.tracing.ftrace.CheckFtrace": "memory/kernel_checks",
}


def table_sources(outputs: dict) -> dict[str, str]:
    """table -> provenance string naming the plugins whose output built it."""
    sources: dict[str, list[str]] = {}
    for plugin in outputs:
        sources.setdefault(DEDICATED.get(plugin, "memory/plugin_rows"), []).append(plugin)
    return {table: source_of(*plugins) for table, plugins in sources.items()}


def build_all(outputs: dict, enrich: dict, os_name: str) -> dict[str, list[dict]]:
    """Every table the outputs can fill: table name -> rows."""
    modules = modules_rows(outputs)
    tables = {
        "memory/processes": processes_rows(outputs, enrich, os_name),
        "memory/threads": threads_rows(outputs, os_name),
        "memory/cmdlines": cmdlines_rows(outputs),
        "memory/maps": maps_rows(outputs),
        "memory/sockets": sockets_rows(outputs),
        "memory/open_files": open_files_rows(outputs),
        "memory/shell_history": shell_history_rows(outputs),
        "memory/envars": envars_rows(outputs),
        "memory/malfind": malfind_rows(outputs),
        "memory/modules": modules,
        "memory/kernel_checks": kernel_checks_rows(outputs, modules),
    }
    generic = [row for name, result in outputs.items() if name not in DEDICATED for row in plugin_rows(name, result)]
    if generic or any(name not in DEDICATED for name in outputs):
        tables["memory/plugin_rows"] = generic
    return {name: rows for name, rows in tables.items() if rows is not None}
