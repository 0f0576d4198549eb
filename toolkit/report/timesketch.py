"""Timesketch-compatible JSON lines: message, datetime, timestamp (µs), timestamp_desc."""

from __future__ import annotations

import json

import pandas as pd

from toolkit.report.tabular import plain_value


def timesketch_lines(timeline: pd.DataFrame):
    for row in timeline.itertuples(index=False):
        ts = row.ts
        if ts is None or ts is pd.NaT:
            continue
        event = {
            "message": str(row.description),
            "datetime": ts.isoformat(),
            "timestamp": int(ts.value // 1000),
            "timestamp_desc": str(row.kind),
            "data_type": f"snapscope:{row.table or 'snapshot'}",
            "snapshot_id": row.snapshot_id,
            "source_table": row.table,
            "source_row": plain_value(row.row),
            "pid": plain_value(row.pid),
            "path": plain_value(row.path),
        }
        # ensure_ascii: guest strings cannot smuggle raw control characters
        yield json.dumps(event, ensure_ascii=True)
