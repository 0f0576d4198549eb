"""Engine adapters: one module per engine, each a plain ``run`` function.

Contract (what ``analyze`` calls, so new engines plug in without changing it)::

    run(snapshot: dict, ctx: dict) -> dict[str, pandas.DataFrame]

``snapshot`` is one entry of ``toolkit.evidence.discover`` (id, name, memory,
disks, pcaps, domain); ``ctx`` carries ``case_dir``, ``derived_dir``,
``cache_dir``, ``profile`` (the parsed profile dict), ``progress`` (a callable
taking (description, completed, total)) and ``tables`` (tables already produced
by earlier engines for this snapshot, read-only). The result maps table names
from ``toolkit.schemas`` to frames built with ``make_table``; problems go to a
``diagnostics`` frame, never to an exception, unless nothing at all was readable.
"""

# name -> {"module": dotted module path, "needs": evidence kind, "doc": ...}
# Filled in as engines land; analyze imports modules lazily so a missing
# optional engine never breaks start-up.
ENGINES: dict[str, dict] = {}
