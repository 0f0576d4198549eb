"""Every table's name, columns, dtypes and version, declared once.

Engines build rows as plain dicts and call :func:`make_table`, which adds the
provenance columns (``snapshot_id``, ``source``), coerces every column to its
declared dtype and refuses unknown columns. Correlation joins on column names,
so a name means the same thing, with the same dtype, in every table.

Example::

    df = make_table("diagnostics", [{"severity": "warning", "what": "page",
                                     "where": "memory.elf@0x1000", "why": "truncated"}],
                    snapshot_id="lab", source="memory/elf")
"""
from __future__ import annotations

import pandas as pd

# dtype vocabulary: pandas extension dtypes so that missing values stay missing
# (an absent ppid is <NA>, never 0) and strings are never objects of mixed type.
STRING = "string"
INT = "Int64"
UINT = "UInt64"   # addresses and inodes can exceed int64's positive range
FLOAT = "float64"
BOOL = "boolean"
TIME = "datetime64[ns, UTC]"
BYTES = "object"  # raw bytes; renderers decide how they look

PROVENANCE = {"snapshot_id": STRING, "source": STRING}

SCHEMAS: dict[str, dict] = {}


def declare(name: str, columns: dict[str, str], *, version: int = 1, doc: str) -> None:
    """Register a table schema; provenance columns are appended automatically."""
    if name in SCHEMAS:
        raise ValueError(f"table {name!r} declared twice")
    cols = dict(columns)
    for col, dtype in PROVENANCE.items():
        cols.setdefault(col, dtype)
    SCHEMAS[name] = {
        "name": name,
        "version": version,
        "doc": doc,
        "columns": cols,
        "timestamps": [c for c, d in cols.items() if d == TIME],
    }


def empty(name: str) -> pd.DataFrame:
    """An empty frame with the table's columns and dtypes."""
    cols = SCHEMAS[name]["columns"]
    return pd.DataFrame({c: pd.Series([], dtype=d) for c, d in cols.items()})


def _coerce(series: pd.Series, dtype: str) -> pd.Series:
    if dtype == TIME:
        return pd.to_datetime(series, utc=True, errors="coerce").astype(TIME)
    if dtype == BYTES:
        return series.astype(object)
    if dtype in (INT, UINT):
        return pd.to_numeric(series, errors="coerce").astype(dtype)
    if dtype == BOOL:
        return series.astype(BOOL)
    return series.astype(dtype)


def make_table(name: str, rows, *, snapshot_id: str, source: str) -> pd.DataFrame:
    """Build a validated table from dict rows (or a DataFrame) plus provenance.

    Unknown columns are an error (a typo must not silently vanish); missing
    columns are filled with <NA>.
    """
    schema = SCHEMAS[name]
    cols = schema["columns"]
    df = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    unknown = [c for c in df.columns if c not in cols]
    if unknown:
        raise ValueError(f"table {name}: columns not in schema: {unknown}")
    df["snapshot_id"] = snapshot_id
    df["source"] = df["source"] if "source" in df and df["source"].notna().all() else source
    out = {}
    for col, dtype in cols.items():
        series = df[col] if col in df else pd.Series([pd.NA] * len(df), index=df.index)
        out[col] = _coerce(series, dtype)
    return pd.DataFrame(out).reset_index(drop=True)


def validate(name: str, df: pd.DataFrame) -> None:
    """Raise ValueError if df does not match the declared schema exactly."""
    cols = SCHEMAS[name]["columns"]
    if list(df.columns) != list(cols):
        raise ValueError(f"table {name}: columns {list(df.columns)} != declared {list(cols)}")
    for col, dtype in cols.items():
        if str(df[col].dtype) != str(pd.Series([], dtype=dtype).dtype):
            raise ValueError(f"table {name}: column {col} has dtype {df[col].dtype}, declared {dtype}")


# --- shared tables -----------------------------------------------------------
declare("diagnostics", {
    "severity": STRING,   # info | warning | error
    "what": STRING,       # the thing that could not be read or was skipped
    "where": STRING,      # file, offset, plugin, table
    "why": STRING,
}, doc="Warnings are data: everything an engine could not read, with where and why.")

declare("evidence", {
    "path": STRING, "format": STRING, "size": INT, "sha256": STRING, "role": STRING,
}, doc="Every evidence file of a snapshot, as identified and hashed at intake.")

# --- memory tables (toolkit/engines/volatility*.py) ---------------------------

# --- disk tables (toolkit/engines/dissect*.py) --------------------------------

# --- network tables (toolkit/engines/network.py) ------------------------------

# --- yara tables (toolkit/engines/yara.py) ------------------------------------

# --- correlation tables (toolkit/correlate/) ----------------------------------
