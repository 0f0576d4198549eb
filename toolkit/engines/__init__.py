"""Engine adapters: one module per engine, each a plain ``run`` function.

Contract (what ``analyze`` calls, so new engines plug in without changing it)::

    run(snapshot: dict, ctx: dict) -> dict[str, pandas.DataFrame]

``snapshot`` is one entry of ``toolkit.evidence.discover`` (id, name, memory,
disks, pcaps, domain); ``ctx`` carries ``case_dir``, ``derived_dir``,
``cache_dir``, ``profile`` (the parsed profile dict), ``progress`` (a callable
taking (description, completed, total)) and ``tables`` (tables already produced
by earlier engines for this snapshot, read-only) and ``shared`` (a dict where
an engine may leave *readers* of its evidence for later engines of the same
snapshot: the memory engine leaves ``memory_image`` and ``memory_regions``,
the disk engine ``disk_files``; YARA scans them. Readers, not results: an
engine never calls another engine). The result maps table names
from ``toolkit.schemas`` to frames built with ``make_table``; problems go to a
``diagnostics`` frame, never to an exception, unless nothing at all was readable.
"""

# name -> {"module": dotted module path, "needs": evidence kind, "doc": ...}
# Filled in as engines land; analyze imports modules lazily so a missing
# optional engine never breaks start-up.
ENGINES: dict[str, dict] = {
    "memory": {"module": "toolkit.engines.volatility", "applies": lambda s: bool(s.get("memory")),
               "doc": "Volatility 3 in one context per snapshot: processes, sockets, maps, modules, kernel checks"},
    "disk": {"module": "toolkit.engines.dissect", "applies": lambda s: bool(s.get("disks")),
             "doc": "dissect.target over the disk chain: system, users, persistence, history, logs, files"},
    "network": {"module": "toolkit.engines.network", "applies": lambda s: bool(s.get("pcaps")),
                "doc": "pcap/pcapng flows with TCP reassembly, DNS, HTTP, TLS"},
    "yara": {"module": "toolkit.engines.yara", "applies": lambda s: True,
             "doc": "YARA over process and physical memory, disk files and network streams"},
}
