"""The case directory: the single store of an investigation.

Layout::

    case/
      case.json          manifest: snapshots, evidence, tool versions, runs
      custody.jsonl      hash-chained log (custody.py)
      tables/<engine>/<table>/<snapshot_id>.parquet
      findings.parquet, timeline.parquet
      derived/           normalised memory images, streams, ISF files, caches
      reports/           rendered reports

Modules: ``store`` (manifest, tables, atomic writes, the read API),
``custody`` (the hash-chained log and its head in case.json), ``derived``
(custody for every file under derived/), ``hashes`` (evidence hashes and
their cache), ``lock`` (one run per case), ``query`` (read-only SQL),
``verify`` (what ``case verify`` checks), ``seal`` (signed manifests).

Notebook use::

    import toolkit
    case = toolkit.Case.open("case/")
    procs = case.table("memory/processes")
    case.sql("SELECT pid, process FROM memory_processes WHERE exe_deleted")
"""

from toolkit.case.store import (
    Case,
    atomic_write_bytes,
    atomic_write_parquet,
    init_case,
    is_case,
    load_manifest,
    now_iso,
    save_manifest,
    write_combined_tables,
    write_table,
)

__all__ = [
    "Case",
    "atomic_write_bytes",
    "atomic_write_parquet",
    "init_case",
    "is_case",
    "load_manifest",
    "now_iso",
    "save_manifest",
    "write_combined_tables",
    "write_table",
]
