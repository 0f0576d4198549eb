"""SQL over a case's tables (DuckDB), unable to write files or read the host's.

Each declared table (``toolkit.schemas``) becomes a view named with ``_``
for ``/`` (``memory/processes`` -> ``memory_processes``), over its Parquet
files handed to DuckDB as an Arrow dataset: no path or name is ever spliced
into SQL, and a directory under ``tables/`` whose name is not a declared
table is not exposed (a copied case may hold anything).

Once the views exist DuckDB's external access is switched off and its
configuration locked, so ``COPY ... TO``, ``read_csv('/etc/passwd')``,
``ATTACH`` and extension loading fail inside DuckDB; and only read-only
statements (SELECT, EXPLAIN) are run at all. ``allow_files=True`` (the CLI's
``--allow-files``) lifts both, for an analyst who wants to export a query.

Example::

    run_sql(Path("case"), "SELECT pid, process FROM memory_processes WHERE exe_deleted")
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from toolkit.errors import QueryError
from toolkit.schemas import SCHEMAS

READ_ONLY_STATEMENTS = ("SELECT", "EXPLAIN")


def view_name(table: str) -> str:
    """SQL view name for a table: ``memory/processes`` -> ``memory_processes``."""
    return table.replace("/", "_")


def sql_views(case_dir: Path) -> tuple[dict[str, list[Path]], list[str]]:
    """({view name: Parquet files} for every declared table in the case, [table directories left out])."""
    root = Path(case_dir) / "tables"
    tables: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*.parquet")):
        if path.is_file() and not path.is_symlink():
            tables.setdefault(path.parent.relative_to(root).as_posix(), []).append(path)
    views = {view_name(name): files for name, files in tables.items() if name in SCHEMAS}
    return views, sorted(name for name in tables if name not in SCHEMAS)


def _dataset(files: list[Path]):
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    # One schema over every snapshot's file, as read_parquet(union_by_name=true) would make it.
    schema = pa.unify_schemas([pq.read_schema(f) for f in files], promote_options="permissive")
    return ds.dataset([str(f) for f in files], schema=schema, format="parquet")


def _refuse_writes(con, query: str) -> None:
    kinds = [statement.type.name for statement in con.extract_statements(query)]
    refused = sorted({kind for kind in kinds if kind not in READ_ONLY_STATEMENTS})
    if refused:
        raise QueryError(
            f"only SELECT and EXPLAIN run over a case (this query has {', '.join(refused)}); "
            "--allow-files lets a query read and write files"
        )


def run_sql(case_dir: Path, query: str, *, allow_files: bool = False) -> pd.DataFrame:
    """Run ``query`` over the case's tables; see the module doc for what is refused.

    Raises QueryError for a statement that is not read-only and duckdb.Error
    for SQL DuckDB rejects (a syntax error, a file access it refuses).
    """
    import duckdb

    con = duckdb.connect()
    try:
        views, _skipped = sql_views(case_dir)
        for name, files in views.items():
            con.register(name, _dataset(files))
        if not allow_files:
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            _refuse_writes(con, query)
        return con.execute(query).df()
    finally:
        con.close()
