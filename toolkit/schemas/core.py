"""The mechanism of every table: dtypes, ``declare``, ``make_table``, ``validate``, and the shared vocabulary.

Example::

    df = make_table("diagnostics", [diagnostic("warning", "page", "memory.elf@0x1000", "truncated")],
                    snapshot_id="lab", source="memory/elf")
"""

from __future__ import annotations

import pandas as pd

# dtype vocabulary: pandas extension dtypes so that missing values stay missing
# (an absent ppid is <NA>, never 0) and strings are never objects of mixed type.
STRING = "string"
INT = "Int64"
UINT = "UInt64"  # addresses and inodes can exceed int64's positive range
FLOAT = "float64"
BOOL = "boolean"
TIME = "datetime64[ns, UTC]"
BYTES = "object"  # raw bytes; renderers decide how they look

PROVENANCE = {"snapshot_id": STRING, "source": STRING}

# The one severity scale of findings (and of YARA rule meta), most severe first.
SEVERITIES = ("critical", "high", "medium", "low", "info")
SEVERITY_RANK = {name: rank for rank, name in enumerate(reversed(SEVERITIES))}  # info 0 .. critical 4
# How bad a diagnostic is: error = evidence lost, warning = partly read, info = a note.
DIAGNOSTIC_SEVERITIES = ("error", "warning", "info")


DELETED = " (deleted)"  # what Linux appends to the path of an unlinked file (proc maps, exe links)


def split_deleted(path):
    """(' /tmp/x (deleted)') -> ('/tmp/x', True): engines split the suffix off on intake,
    so tables carry a clean path and a flag. Volatility pads such paths with a space.

    Example::

        >>> split_deleted(" /tmp/.x/kworker (deleted)")
        ('/tmp/.x/kworker', True)
    """
    if not isinstance(path, str):
        return path, None
    path = path.strip()
    if path.endswith(DELETED.strip()):
        return path[: -len(DELETED.strip())].rstrip(), True
    return path, False


def pick(record, columns: dict[str, str | tuple[str, ...]]) -> dict:
    """A row of declared columns from a tool's record: ``columns`` maps our column -> the record's key,
    or a tuple of keys when tools name it differently (the first the record has wins).

    Example::

        >>> pick({"PID": 7, "Process": "sshd"}, {"pid": "PID", "process": ("COMM", "Process")})
        {'pid': 7, 'process': 'sshd'}
    """
    row = {}
    for ours, theirs in columns.items():
        keys = (theirs,) if isinstance(theirs, str) else theirs
        row[ours] = record.get(next((k for k in keys if k in record), keys[0]))
    return row


def diagnostic(severity: str, what: str, where, why, **extra) -> dict:
    """One ``diagnostics`` row (design.md: "warnings are data").

    Example::

        >>> diagnostic("warning", "page", "memory.elf@0x1000", "truncated")
        {'severity': 'warning', 'what': 'page', 'where': 'memory.elf@0x1000', 'why': 'truncated'}
    """
    if severity not in DIAGNOSTIC_SEVERITIES:
        raise ValueError(f"diagnostic severity {severity!r}: expected one of {DIAGNOSTIC_SEVERITIES}")
    row = {
        "severity": severity,
        "what": what,
        "where": None if where is None else str(where),
        "why": None if why is None else str(why),
    }
    row.update(extra)
    return row


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
        if series.dtype == object:
            # Python ints straight into the nullable array: to_numeric would route a
            # column holding None through float64 and round 64-bit addresses.
            values = [None if (v is None or v is pd.NA or (isinstance(v, float) and v != v)) else v for v in series]
            if all(v is None or isinstance(v, int) for v in values):
                return pd.Series(pd.array(values, dtype=dtype), index=series.index)
        return pd.to_numeric(series, errors="coerce").astype(dtype)
    if dtype == FLOAT and series.dtype == object:  # a missing column arrives as <NA> objects
        return pd.to_numeric(series, errors="coerce").astype(FLOAT)
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
    if isinstance(rows, pd.DataFrame):
        df = rows.copy()
    else:
        rows = list(rows)
        keys = list(dict.fromkeys(k for r in rows for k in r))
        # Column by column as objects, so no value is coerced before its declared dtype applies.
        df = pd.DataFrame({k: pd.Series([r.get(k) for r in rows], dtype=object) for k in keys}, index=range(len(rows)))
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
