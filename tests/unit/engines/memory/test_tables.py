"""Plugin output -> declared tables.

Windows cannot be booted in the lab, so its plugins' output shapes are recorded
here: the column lists are copied from the plugins' run() methods in the
installed Volatility (a test checks every name still appears in that source),
fed through a real TreeGrid and the same conversion path as a live run. What
this verifies: column mapping, dtypes and merging. What it cannot: that the
plugins run on a real Windows image with an offline symbol pack.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
from pathlib import Path

import pandas as pd
import pytest

from toolkit import schemas
from toolkit.engines.memory import tables as plugin_tables
from toolkit.engines.memory import volatility
from toolkit.schemas import make_table, split_deleted

UTC = dt.UTC


def frame(name, rows, snapshot_id):
    return make_table(name, rows, snapshot_id=snapshot_id, source="volatility")


T0 = dt.datetime(2024, 5, 1, 8, 0, 0)

WINDOWS_PSLIST = [
    ("PID", int),
    ("PPID", int),
    ("ImageFileName", str),
    ("Offset(V)", "hex"),
    ("Threads", int),
    ("Handles", int),
    ("SessionId", int),
    ("Wow64", bool),
    ("CreateTime", dt.datetime),
    ("ExitTime", dt.datetime),
    ("File output", str),
]
WINDOWS_PSSCAN = [("Offset(P)" if n == "Offset(V)" else n, t) for n, t in WINDOWS_PSLIST]
WINDOWS_NETSCAN = [
    ("Offset", "hex"),
    ("Proto", str),
    ("LocalAddr", str),
    ("LocalPort", int),
    ("ForeignAddr", str),
    ("ForeignPort", int),
    ("State", str),
    ("PID", int),
    ("Owner", str),
    ("Created", dt.datetime),
]
WINDOWS_CMDLINE = [("PID", int), ("Process", str), ("Args", str)]
LINUX_SOCKSTAT = [
    ("NetNS", int),
    ("Process Name", str),
    ("PID", int),
    ("TID", int),
    ("FD", int),
    ("Sock Offset", "hex"),
    ("Family", str),
    ("Type", str),
    ("Proto", str),
    ("Source Addr", str),
    ("Source Port", str),
    ("Destination Addr", str),
    ("Destination Port", str),
    ("State", str),
    ("Filter", str),
]
LINUX_ENVARS = [("PID", int), ("PPID", int), ("COMM", str), ("KEY", str), ("VALUE", str)]
LINUX_FTRACE = [
    ("ftrace_ops address", "hex"),
    ("Callback", str),
    ("Callback address", "hex"),
    ("Hooked symbols", str),
    ("Module", str),
    ("Module address", "hex"),
]
SOURCES = {
    "linux/sockstat.py": LINUX_SOCKSTAT,
    "linux/envars.py": LINUX_ENVARS,
    "linux/tracing/ftrace.py": LINUX_FTRACE,
    "windows/pslist.py": WINDOWS_PSLIST,
    "windows/psscan.py": WINDOWS_PSSCAN,
    "windows/netscan.py": WINDOWS_NETSCAN,
    "windows/cmdline.py": WINDOWS_CMDLINE,
}


@pytest.fixture(scope="module")
def vol(tmp_path_factory):
    return volatility._framework(tmp_path_factory.mktemp("volcache"))


def _result(vol, plugin, columns, rows):
    """A plugin result as run_plugin returns it, through a real TreeGrid."""
    hints, renderers = vol["format_hints"], vol["renderers"]
    types = [(n, hints.Hex if t == "hex" else t) for n, t in columns]
    cast = lambda t, v: hints.Hex(v) if t == "hex" and isinstance(v, int) else v  # noqa: E731
    grid = renderers.TreeGrid(types, ((0, tuple(cast(t, v) for (_, t), v in zip(columns, row))) for row in rows))
    names, flat, failure = volatility.grid_rows(grid)
    assert failure is None
    return {"plugin": plugin, "columns": names, "rows": flat, "error": None, "warnings": [], "seconds": 0.0}


def test_recorded_columns_still_match_volatility_source():
    root = Path(importlib.util.find_spec("volatility3").submodule_search_locations[0]) / "framework" / "plugins"
    for rel, columns in SOURCES.items():
        text = (root / rel).read_text()
        for name, _ in columns:
            literal = f'"{name}"' if "(" not in name else '"Offset{offsettype}"'
            assert literal in text or f'"{name}"' in text, f"{rel}: column {name!r} no longer in source"


def test_windows_processes_merge_list_and_scan(vol):
    na = vol["renderers"].NotApplicableValue()
    listed = [
        (4, 0, "System", 0xFFFFA000_00001000, 120, 0, na, False, T0, na, "Disabled"),
        (612, 4, "smss.exe", 0xFFFFA000_00002000, 2, 30, na, False, T0, na, "Disabled"),
    ]
    scanned = [
        (4, 0, "System", 0x1000, 120, 0, na, False, T0, na, "Disabled"),
        (612, 4, "smss.exe", 0x2000, 2, 30, na, False, T0, na, "Disabled"),
        (6666, 612, "evil.exe", 0x3000, 1, 5, 1, False, T0, T0, "Disabled"),
    ]
    outputs = {
        "windows.pslist.PsList": _result(vol, "windows.pslist.PsList", WINDOWS_PSLIST, listed),
        "windows.psscan.PsScan": _result(vol, "windows.psscan.PsScan", WINDOWS_PSSCAN, scanned),
    }
    tables = plugin_tables.build_all(outputs, {}, "windows")
    df = frame("memory/processes", tables["memory/processes"], "win")
    schemas.validate("memory/processes", df)
    assert df["pid"].tolist() == [4, 612, 6666]
    hidden = df[df["pid"] == 6666].iloc[0]
    assert (hidden["in_list"], hidden["in_scan"], hidden["process"]) == (False, True, "evil.exe")
    assert hidden["exit_state"] == "exited" and hidden["start_ts"] == T0.replace(tzinfo=UTC)
    assert df.loc[0, "task_offset"] == 0xFFFFA000_00001000  # a 64-bit address survives intact
    assert df["source"].iloc[0] == "volatility/windows.pslist.PsList+windows.psscan.PsScan"


def test_windows_netscan_to_sockets(vol):
    rows = [
        (0xE0001, "TCPv4", "10.0.0.5", 49712, "203.0.113.9", 443, "ESTABLISHED", 6666, "evil.exe", T0),
        (0xE0002, "UDPv6", "::", 5353, "*", 0, "", 1100, "svchost.exe", T0),
    ]
    outputs = {"windows.netscan.NetScan": _result(vol, "windows.netscan.NetScan", WINDOWS_NETSCAN, rows)}
    df = frame("memory/sockets", plugin_tables.build_all(outputs, {}, "windows")["memory/sockets"], "win")
    first = df.iloc[0]
    assert (first["pid"], first["proto"], first["dst_ip"], first["dst_port"], first["family"]) == (
        6666,
        "tcp",
        "203.0.113.9",
        443,
        "AF_INET",
    )
    assert df.iloc[1]["family"] == "AF_INET6" and str(df["src_port"].dtype) == "Int64"


def test_windows_cmdline(vol):
    outputs = {
        "windows.cmdline.CmdLine": _result(
            vol, "windows.cmdline.CmdLine", WINDOWS_CMDLINE, [(6666, "evil.exe", "C:\\Temp\\evil.exe -c 203.0.113.9")]
        )
    }
    df = frame("memory/cmdlines", plugin_tables.build_all(outputs, {}, "windows")["memory/cmdlines"], "win")
    assert df.iloc[0]["args"].endswith("203.0.113.9")


def test_unmapped_plugin_goes_long_form_with_tree_links(vol):
    hints, renderers = vol["format_hints"], vol["renderers"]
    grid = renderers.TreeGrid(
        [("PID", int), ("Name", str), ("Base", hints.Hex)],
        iter([(0, (1, "a", hints.Hex(16))), (1, (2, "b", renderers.UnreadableValue()))]),
    )
    columns, rows, _ = volatility.grid_rows(grid)
    result = {"columns": columns, "rows": rows, "error": None}
    df = frame(
        "memory/plugin_rows",
        plugin_tables.build_all({"windows.pstree.PsTree": result}, {}, "windows")["memory/plugin_rows"],
        "win",
    )
    assert len(df) == 6
    child = df[(df["row_id"] == 1) & (df["column"] == "Base")].iloc[0]
    assert (child["parent_row_id"], child["kind"]) == (0, "absent") and child["value"] is pd.NA


def test_linux_failed_and_partial_plugins():
    # A failed psscan still leaves pslist's rows, with in_scan unknown rather than False.
    pslist = {
        "columns": [],
        "error": None,
        "rows": [
            {
                "OFFSET (V)": 0xFFFF888000001000,
                "PID": 1,
                "TID": 1,
                "PPID": 0,
                "COMM": "init",
                "UID": 0,
                "GID": 0,
                "CREATION TIME": T0.replace(tzinfo=UTC),
                "row_id": 0,
                "parent_row_id": None,
            }
        ],
    }
    psscan = {"columns": [], "rows": [], "error": "InvalidAddressException: page not present"}
    rows = plugin_tables.processes_rows(
        {"linux.pslist.PsList": pslist, "linux.psscan.PsScan": psscan},
        {1: {"is_kernel_thread": False, "exe_path": "/init", "exe_deleted": False}},
    )
    df = frame("memory/processes", rows, "lab")
    assert df.iloc[0]["in_list"] == True and df.iloc[0]["in_scan"] is pd.NA  # noqa: E712
    assert df.iloc[0]["exe_path"] == "/init"


def _task(pid, tid, comm, ppid=1, offset=0):
    return {
        "OFFSET (V)": offset or 0xFFFF888000000000 + tid * 0x1000,
        "PID": pid,
        "TID": tid,
        "PPID": ppid,
        "COMM": comm,
        "UID": 0,
        "GID": 0,
        "CREATION TIME": T0.replace(tzinfo=UTC),
        "EXIT_STATE": "TASK_RUNNING",
    }


def _linux_outputs(listed, scanned, threads=True):
    def result(rows, options):
        rows = [dict(r, row_id=i, parent_row_id=None) for i, r in enumerate(rows)]
        return {"columns": list(rows[0]) if rows else [], "rows": rows, "error": None, "options": options}

    return {
        "linux.pslist.PsList": result(listed, {"threads": True} if threads else {}),
        "linux.psscan.PsScan": result(scanned, {}),
    }


def test_linux_threads_are_rows_of_their_own():
    """pslist with threads=true: the leader is the process row (with its task count), every task a
    memory/threads row; a thread only the scan found says so."""
    listed = [
        _task(1, 1, "systemd", ppid=0),
        _task(700, 700, "python3"),
        _task(700, 702, "cache-refresh"),
        _task(700, 703, "python3"),
    ]
    scanned = listed[:3] + [_task(700, 777, "worker")]
    tables = plugin_tables.build_all(_linux_outputs(listed, scanned), {}, "linux")
    procs = frame("memory/processes", tables["memory/processes"], "lab")
    assert procs["pid"].tolist() == [1, 700]
    assert procs.set_index("pid")["threads"].to_dict() == {1: 1, 700: 3}
    threads = frame("memory/threads", tables["memory/threads"], "lab")
    schemas.validate("memory/threads", threads)
    got = {(r.pid, r.tid, r.process, r.in_list, r.in_scan) for r in threads.itertuples()}
    assert got == {
        (1, 1, "systemd", True, True),
        (700, 700, "python3", True, True),
        (700, 702, "cache-refresh", True, True),
        (700, 703, "python3", True, False),
        (700, 777, "worker", False, True),
    }
    assert threads["source"].iloc[0] == "volatility/linux.pslist.PsList+linux.psscan.PsScan"


def test_linux_threads_unknown_to_the_list_without_the_option():
    """pslist without threads=true walked leaders only: no thread counts, and the scan's threads
    are not called missing from the list."""
    listed = [_task(1, 1, "systemd", ppid=0), _task(700, 700, "python3")]
    scanned = listed + [_task(700, 702, "cache-refresh")]
    tables = plugin_tables.build_all(_linux_outputs(listed, scanned, threads=False), {}, "linux")
    procs = frame("memory/processes", tables["memory/processes"], "lab")
    assert procs["threads"].isna().all()
    threads = frame("memory/threads", tables["memory/threads"], "lab")
    assert threads["in_list"].isna().all() and threads["in_scan"].all()
    assert threads["tid"].tolist() == [1, 700, 702]


def test_deleted_suffix_split():
    assert split_deleted(" /tmp/.x/kworker (deleted)") == ("/tmp/.x/kworker", True)
    assert split_deleted("/bin/busybox") == ("/bin/busybox", False)
    assert split_deleted(None) == (None, None)


def test_every_memory_table_declared_and_engine_tables_known():
    memory = {n for n in schemas.SCHEMAS if n.startswith("memory/")}
    assert set(plugin_tables.DEDICATED.values()) <= memory
    for name in memory:
        schemas.validate(name, frame(name, [], "x"))


def test_linux_unix_sockets_carry_no_ports(vol):
    """sockstat prints a unix socket's inode and its peer's in the port columns: they must never
    become ports, or a service's journald stdout reads as a connection."""
    na = vol["renderers"].NotAvailableValue()
    rows = [
        (
            1,
            "python3",
            500,
            500,
            1,
            0xFFFF0001,
            "AF_UNIX",
            "STREAM",
            na,
            "/run/systemd/journal/stdout",
            "21007",
            na,
            "21008",
            "ESTABLISHED",
            na,
        ),
        (
            1,
            "python3",
            500,
            500,
            3,
            0xFFFF0002,
            "AF_INET",
            "STREAM",
            "TCP",
            "0.0.0.0",
            "8081",
            "0.0.0.0",
            "0",
            "LISTEN",
            na,
        ),
        (
            1,
            "systemd",
            1,
            1,
            40,
            0xFFFF0003,
            "AF_NETLINK",
            "RAW",
            "NETLINK_KOBJECT_UEVENT",
            "groups:0x00000002",
            "1",
            "group:0x00000000",
            "0",
            "UNCONNECTED",
            na,
        ),
    ]
    outputs = {"linux.sockstat.Sockstat": _result(vol, "linux.sockstat.Sockstat", LINUX_SOCKSTAT, rows)}
    df = frame("memory/sockets", plugin_tables.build_all(outputs, {}, "linux")["memory/sockets"], "lin")
    unix, inet, netlink = (df.iloc[i] for i in range(3))
    assert (unix["path"], unix["inode"], unix["peer_inode"]) == ("/run/systemd/journal/stdout", 21007, 21008)
    assert all(pd.isna(unix[c]) for c in ("src_ip", "src_port", "dst_ip", "dst_port"))
    assert (inet["src_ip"], inet["src_port"], inet["dst_port"], inet["proto"]) == ("0.0.0.0", 8081, 0, "tcp")
    assert pd.isna(netlink["src_port"]) and pd.isna(netlink["dst_port"])


def test_linux_envars_and_ftrace(vol):
    env = [(912, 1, "bash", "LD_PRELOAD", "/var/tmp/.fonts/libgl.so"), (912, 1, "bash", "PATH", "/usr/bin")]
    na = vol["renderers"].NotAvailableValue()
    hooks = [
        (0xFFFF1, "fh_hook", 0xFFFFFFFFC0001000, "__x64_sys_getdents64", "nf_aux", 0xFFFFFFFFC0000000),
        (0xFFFF2, "function_trace_call", 0xFFFFFFFF81000000, "schedule", "kernel", na),
    ]
    outputs = {
        "linux.envars.Envars": _result(vol, "linux.envars.Envars", LINUX_ENVARS, env),
        "linux.tracing.ftrace.CheckFtrace": _result(vol, "linux.tracing.ftrace.CheckFtrace", LINUX_FTRACE, hooks),
    }
    tables = plugin_tables.build_all(outputs, {}, "linux")
    envars = frame("memory/envars", tables["memory/envars"], "lin")
    preload = envars[envars["key"] == "LD_PRELOAD"]
    assert preload[["pid", "value"]].values.tolist() == [[912, "/var/tmp/.fonts/libgl.so"]]
    checks = frame("memory/kernel_checks", tables["memory/kernel_checks"], "lin")
    assert checks[["check", "module", "suspicious"]].values.tolist() == [
        ["ftrace", "nf_aux", True],
        ["ftrace", "kernel", False],
    ]
    assert "__x64_sys_getdents64" in checks.iloc[0]["detail"]
