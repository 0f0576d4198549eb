"""One UTC timeline per snapshot from every timestamped row of every table.

Which columns become events is declared here, per table, so a new table's
times join the timeline by adding one line. Each event links back to its row.
"""

from __future__ import annotations

import pandas as pd

from toolkit.correlate.links import value
from toolkit.schemas import make_table

# table -> [(timestamp column, event kind, function(row) -> description)]
EVENT_SOURCES = {
    "memory/processes": [
        (
            "start_ts",
            "process start",
            lambda r: (
                f"{value(r, 'process')} pid {value(r, 'pid')} started"
                + (f" ({value(r, 'exe_path')})" if value(r, "exe_path") else "")
            ),
        )
    ],
    "memory/sockets": [
        (
            "created_ts",
            "socket",
            lambda r: (
                f"{value(r, 'proto')} {value(r, 'src_ip')}:{value(r, 'src_port')}"
                f" -> {value(r, 'dst_ip')}:{value(r, 'dst_port')} pid {value(r, 'pid')}"
            ),
        )
    ],
    "disk/files": [
        (c, f"file {c[0]}time", lambda r: str(value(r, "path"))) for c in ("mtime", "atime", "ctime", "btime")
    ],
    "disk/logs": [("ts", "log line", lambda r: str(value(r, "message") or value(r, "line")))],
    "disk/shell_history": [("ts", "shell command", lambda r: str(value(r, "command")))],
    "network/flows": [
        (
            "first_ts",
            "flow start",
            lambda r: (
                f"{value(r, 'proto')} {value(r, 'src_ip')}:{value(r, 'src_port')}"
                f" -> {value(r, 'dst_ip')}:{value(r, 'dst_port')}"
            ),
        ),
        (
            "last_ts",
            "flow end",
            lambda r: (
                f"{value(r, 'proto')} {value(r, 'src_ip')}:{value(r, 'src_port')}"
                f" -> {value(r, 'dst_ip')}:{value(r, 'dst_port')}"
            ),
        ),
    ],
    "network/dns": [
        ("ts", "dns", lambda r: f"{value(r, 'qname')} {value(r, 'qtype') or ''} {value(r, 'answers') or ''}".strip())
    ],
}


def build_timeline(tables: dict, snapshot_id: str, snapshot_times: dict | None = None) -> pd.DataFrame:
    """Events sorted by time; ``snapshot_times`` adds e.g. {'memory captured': ts}."""
    rows = []
    for table, sources in EVENT_SOURCES.items():
        df = tables.get(table)
        if df is None or not len(df):
            continue
        for column, kind, describe in sources:
            if column not in df.columns:
                continue
            present = df[df[column].notna()]
            for i, r in present.iterrows():
                rows.append(
                    {
                        "ts": r[column],
                        "kind": kind,
                        "description": describe(r),
                        "table": table,
                        "row": int(i),
                        "pid": value(r, "pid"),
                        "path": value(r, "path"),
                    }
                )
    for kind, ts in (snapshot_times or {}).items():
        # a Timestamp: ISO strings of different precision in one column would not all parse
        rows.append({"ts": pd.Timestamp(ts), "kind": kind, "description": kind, "table": None, "row": None})
    df = make_table("timeline", rows, snapshot_id=snapshot_id, source="correlate/timeline")
    return df.sort_values("ts", kind="stable").reset_index(drop=True)
