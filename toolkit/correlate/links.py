"""Small helpers shared by the joins and the rules: row links and safe access.

A *link* names one row of one stored table: ``{"table", "snapshot_id", "row"}``
where ``row`` is the row's position in that snapshot's Parquet file (tables
are written once per snapshot, so positions are stable).
"""

from __future__ import annotations

import pandas as pd


def link(table: str, snapshot_id: str, row: int) -> dict:
    return {"table": table, "snapshot_id": snapshot_id, "row": int(row)}


def hit(entity: str, links: list[dict], confidence: float, explanation: str, **more) -> dict:
    """What a rule yields: the entity it is about, the rows that prove it, how sure, and why.

    ``more`` may set ``severity`` (overriding the rule's), ``attack_id``, ``rule_id`` and ``title``,
    or ``subject``: what, besides the entity, makes a finding distinct (a YARA rule's name), so
    hits are merged per rule, entity and subject.
    Example: ``hit("process:77", [link("memory/processes", sid, 3)], 0.9, "pid 77 runs from a deleted file.")``
    """
    return {"entity": entity, "links": links, "confidence": confidence, "explanation": explanation, **more}


def endpoints(row) -> str:
    """``tcp 10.0.2.15:40000 -> 10.0.2.100:8443`` from a row with proto and the four address columns."""
    return (
        f"{value(row, 'proto')} {value(row, 'src_ip')}:{value(row, 'src_port')} -> "
        f"{value(row, 'dst_ip')}:{value(row, 'dst_port')}"
    )


def frame(tables: dict, name: str) -> pd.DataFrame:
    """The table, or an empty frame when the engine did not produce it."""
    df = tables.get(name)
    return df if df is not None else pd.DataFrame()


def col(df: pd.DataFrame, name: str, default=None) -> pd.Series:
    """A column, or a column of ``default`` when absent (older/optional schemas)."""
    if name in df.columns:
        return df[name]
    return pd.Series([default] * len(df), index=df.index, dtype=object)


def value(row, name: str, default=None):
    """row[name] with pandas' missing values turned into ``default``."""
    try:
        v = row[name]
    except (KeyError, IndexError):
        return default
    if v is None or v is pd.NA or (isinstance(v, float) and v != v) or v is pd.NaT:
        return default
    return v


def pid_of(row, name: str = "pid"):
    """An integer pid or None (frames built from mixed rows may hold 77.0)."""
    v = value(row, name)
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def truthy(v) -> bool:
    return bool(v) if v is not None and v is not pd.NA else False


def exited(row) -> bool:
    """A dead task's leftovers (exit_state EXIT_*), which a memory scan still finds: not running."""
    return str(value(row, "exit_state") or "").startswith("EXIT_")
