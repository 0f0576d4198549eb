"""The engines: one package per evidence domain, each with one ``run`` function.

Contract (what the pipeline calls, so a new engine plugs in without changing it)::

    run(snapshot: dict, ctx: EngineContext) -> dict[str, pandas.DataFrame]

``snapshot`` is one entry of ``toolkit.evidence.discover`` (id, name, memory,
disks, pcaps, domain); ``ctx`` (:class:`EngineContext`) names everything an
engine may read. The result maps table names from ``toolkit.schemas`` to frames
built with ``make_table``; problems go to a ``diagnostics`` frame, never to an
exception, unless nothing at all was readable.

Engines run in the order of :data:`ENGINES`. An engine never calls another
engine; a later engine may read the *tables* earlier ones produced
(``ctx.tables``) and the *readers* they left open (``ctx.readers``: the
memory engine leaves the physical address space and the process regions, the
disk engine the files worth scanning). Each entry says what it reads and what
it leaves, and tests/unit/test_registries.py checks that every read comes
from an engine earlier in the order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from toolkit.references import ReferencePolicy


def no_progress(description, completed=None, total=None) -> None:
    """The progress callback when nobody watches: ``progress(description, completed, total)``."""


@dataclass
class Readers:
    """Readers of one snapshot's evidence, left by an engine for later engines.

    Readers, not results: YARA scans the bytes behind them. The pipeline calls
    :meth:`close` once every engine of the snapshot has run.
    """

    memory_image: object | None = None  # guest-physical address space: .runs, .read(gpa, length) (shared)
    memory_regions: list[dict] | None = None  # process VMAs: {pid, process, start, end, path, read(addr, n)}
    disk_files: list[dict] | None = None  # files worth scanning: {path, size, sha256, open()}
    closers: list[Callable[[], None]] = field(default_factory=list)  # what the engine that left a reader closes

    def close(self) -> None:
        while self.closers:
            self.closers.pop()()


@dataclass
class EngineContext:
    """Everything an engine may read besides the snapshot itself.

    Example::

        ctx = EngineContext(snapshot_id="lab", derived_dir=Path("case/derived/lab"),
                            profile=load_profile("linux-triage"), cache_dir=Path("case/derived/cache"))
        tables = toolkit.engines.memory.run(snapshot, ctx)
    """

    snapshot_id: str
    derived_dir: Path  # this snapshot's derived artefacts (converted images, spooled streams)
    profile: dict  # the parsed, validated profile (toolkit.profiles.load_profile)
    # The case's caches shared between its snapshots (Volatility, disk base images, YARA results);
    # None: no shared caches (every disk walked in full, Volatility's cache under the host cache).
    cache_dir: Path | None = None
    case_dir: Path | None = None  # the case (per-case ISF copies); None outside a case
    progress: Callable = no_progress
    # Where files that evidence names (backing/data files, extents) may be read from: the run's one
    # policy (toolkit.references). None: beside the file that names them only.
    references: ReferencePolicy | None = None
    symbols: tuple[Path, ...] = ()  # user ISF files/dirs (Linux) or symbol packs (Windows)
    symbols_cache: Path | None = None  # host-wide ISF cache; None: $SNAPSCOPE_CACHE or ~/.cache/snapscope
    build_symbols: bool = True  # build a Linux ISF from the dump when none matches
    allow_missing_backing: bool = False  # read a missing qcow2 backing file as zeros (a diagnostic says so)
    evidence_hashes: dict[str, str] = field(default_factory=dict)  # {resolved path: sha256}, content cache keys
    rule_paths: tuple[Path, ...] = ()  # YARA rule files/dirs added to the profile's
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # earlier engines' tables (read-only)
    readers: Readers = field(default_factory=Readers)

    @property
    def derived_root(self) -> Path:
        """The case's derived/ directory (outside a case: the parent of this snapshot's derived dir)."""
        return Path(self.case_dir) / "derived" if self.case_dir else Path(self.derived_dir).parent


# Run in this order: an engine reads only tables and readers that engines before it leave.
ENGINES: tuple[dict, ...] = (
    {
        "name": "memory",
        "module": "toolkit.engines.memory",
        "applies": lambda s: bool(s.get("memory")),
        "reads": (),
        "leaves": ("memory_image", "memory_regions"),
        "doc": "Volatility 3 in one context per snapshot: processes, sockets, maps, modules, kernel checks",
    },
    {
        "name": "disk",
        "module": "toolkit.engines.disk",
        "applies": lambda s: bool(s.get("disks")),
        "reads": (),
        "leaves": ("disk_files",),
        "doc": "dissect.target over the disk chain: system, users, persistence, history, logs, files",
    },
    {
        "name": "network",
        "module": "toolkit.engines.network",
        "applies": lambda s: bool(s.get("pcaps")),
        "reads": (),
        "leaves": ("network/flows",),
        "doc": "pcap/pcapng flows with TCP reassembly, DNS, HTTP, TLS",
    },
    {
        "name": "yara",
        "module": "toolkit.engines.yara",
        "applies": lambda s: True,
        "reads": ("memory_image", "memory_regions", "disk_files", "network/flows"),
        "leaves": (),
        "doc": "YARA over process and physical memory, disk files and network streams",
    },
)


def engine_names() -> list[str]:
    """The engines' names in run order: ['memory', 'disk', 'network', 'yara']."""
    return [entry["name"] for entry in ENGINES]
