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

from toolkit.schemas import disk, memory, network, shared, sigma, vm  # noqa: F401  (each module declares its tables)
from toolkit.schemas.core import (
    BOOL,
    BYTES,
    DELETED,
    DIAGNOSTIC_SEVERITIES,
    FLOAT,
    INT,
    PROVENANCE,
    SCHEMAS,
    SEVERITIES,
    SEVERITY_RANK,
    STRING,
    TIME,
    UINT,
    declare,
    diagnostic,
    empty,
    make_table,
    pick,
    split_deleted,
    validate,
)

__all__ = [
    "BOOL",
    "BYTES",
    "DELETED",
    "DIAGNOSTIC_SEVERITIES",
    "FLOAT",
    "INT",
    "PROVENANCE",
    "SCHEMAS",
    "SEVERITIES",
    "SEVERITY_RANK",
    "STRING",
    "TIME",
    "UINT",
    "declare",
    "diagnostic",
    "empty",
    "make_table",
    "pick",
    "split_deleted",
    "validate",
]
