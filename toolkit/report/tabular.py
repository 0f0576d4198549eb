"""Plain-data renderers: CSV, JSON, JSON lines, Parquet — hostile-safe.

Raw values stay raw in tables; these turn a DataFrame into text for a file or
a terminal. Bytes become hex, timestamps ISO-8601 UTC, CSV cells are
formula-safe, JSON is escaped by the encoder.

Example::

    write_frame(df, Path("procs.csv"), "csv")
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pandas as pd

from toolkit.report.escape import csv_safe


def plain_value(value):
    """A JSON-friendly value: bytes -> hex, timestamps -> ISO, NA -> None."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


# UInt64 columns that count or name things rather than locate them
NOT_ADDRESSES = {"inode", "inode_a", "inode_b", "netns"}


def address_columns(table: str | None) -> set[str]:
    """Columns of a declared table that hold addresses or offsets (shown in hex by renderers).

    Example::

        >>> sorted(address_columns("memory/modules"))
        ['base', 'offset']
    """
    from toolkit.schemas import SCHEMAS, UINT

    columns = (SCHEMAS.get(table) or {}).get("columns", {})
    return {c for c, dtype in columns.items() if dtype == UINT and c not in NOT_ADDRESSES}


def display_value(value, address: bool = False):
    """A cell as a responder reads it: plain_value, and an address in hex."""
    plain = plain_value(value)
    if address and isinstance(plain, int) and not isinstance(plain, bool):
        return f"{plain:#x}"
    return plain


def records(df: pd.DataFrame) -> list[dict]:
    return [{col: plain_value(val) for col, val in zip(df.columns, row)} for row in df.itertuples(index=False)]


def to_csv_text(df: pd.DataFrame) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([csv_safe(c) for c in df.columns])
    for row in records(df):
        writer.writerow(["" if v is None else csv_safe(v) for v in row.values()])
    return out.getvalue()


def to_json_text(df: pd.DataFrame) -> str:
    # ensure_ascii keeps control characters as \u escapes: safe in any terminal
    return json.dumps(records(df), indent=2, ensure_ascii=True, default=str)


def write_frame(df: pd.DataFrame, path: Path, fmt: str) -> None:
    from toolkit.case import atomic_write_bytes, atomic_write_parquet

    if fmt == "parquet":
        atomic_write_parquet(path, df)
    elif fmt == "csv":
        atomic_write_bytes(path, to_csv_text(df).encode())
    elif fmt == "json":
        atomic_write_bytes(path, to_json_text(df).encode())
    else:
        raise ValueError(f"unknown format {fmt!r}")
