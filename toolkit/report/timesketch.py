"""Timesketch-compatible JSON lines, and their upload with ``timesketch-import-client``.

Each line carries the fields Timesketch requires — ``message``, ``datetime``
(ISO 8601), ``timestamp_desc`` — plus ``timestamp`` (µs) and the row it came
from. :func:`upload_timeline` streams the same events to a Timesketch server.

Example::

    lines = list(timesketch_lines(case.timeline))
    upload_timeline(lines, "https://timesketch.example", "analyst", password, timeline_name="web01")
"""

from __future__ import annotations

import json

import pandas as pd

from toolkit.errors import ExportError, one_line
from toolkit.report.tabular import plain_value

REQUIRED_FIELDS = ("message", "datetime", "timestamp_desc")


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


def upload_timeline(
    lines, url: str, username: str, password: str, *, timeline_name: str, sketch_id: int | None = None
) -> dict:
    """Stream the JSON lines to a Timesketch server (a new sketch named ``timeline_name`` unless
    ``sketch_id`` names one); ExportError when the server cannot be reached or refuses.

    Returns {"sketch_id", "timeline_name", "events"}.
    """
    from timesketch_api_client import client
    from timesketch_import_client import importer

    try:
        api = client.TimesketchApi(url, username, password)
        sketch = api.get_sketch(sketch_id) if sketch_id else api.create_sketch(timeline_name)
        events = 0
        with importer.ImportStreamer() as streamer:
            streamer.set_sketch(sketch)
            streamer.set_timeline_name(timeline_name)
            for line in lines:
                streamer.add_dict(json.loads(line))
                events += 1
    except (OSError, RuntimeError, ValueError) as exc:  # requests' errors are OSErrors
        raise ExportError(f"Timesketch upload to {url} failed: {one_line(exc)}") from None
    return {"sketch_id": sketch.id, "timeline_name": timeline_name, "events": events}
