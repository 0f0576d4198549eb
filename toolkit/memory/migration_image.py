"""Turn an indexed migration stream into a MemoryImage, and read bare QEVM files.

Shared by every container of a QEVM stream: a bare file (``migrate`` to a
file, ``virsh dump`` full), a libvirt save image, a compressed wrapper, a
qcow2 snapshot's vmstate.

>>> from toolkit.memory import migration_image
>>> migration_image.detect(b"QEVM\\0\\0\\0\\3")
True
"""

from __future__ import annotations

import functools

from toolkit.errors import MemoryFormatError
from toolkit.memory import guest_layout, migration
from toolkit.memory.cursor import Cursor
from toolkit.memory.image import FileSource, MemoryImage
from toolkit.memory.pages import KIND_SPILL, KIND_SRC
from toolkit.schemas import diagnostic

detect = migration.detect


def stream_facts(st):
    """JSON-able facts of an indexed stream."""
    blocks = [(n, b["length"]) for n, b in st["blocks"].items()]
    pieces = guest_layout.guest_ram_pieces(st["machine"], blocks)
    ram = guest_layout.ram_blocks(blocks)
    return {
        "machine": st["machine"],
        "chipset": guest_layout.chipset(st["machine"]),
        "page_size": st["page_size"],
        "capabilities": st["capabilities"],
        "uuid": st.get("uuid"),
        "mapped_ram": st["mapped_ram"],
        "ram_bytes": sum(dict(blocks)[n] for n in ram),
        "ram_blocks": [{"name": n, "length": length, "guest_ram": n in ram} for n, length in blocks],
        "gpa_map": [{"gpa": g, "block": b, "offset": o, "length": length} for g, b, o, length in pieces],
        "complete": st["complete"],
    }


def _within(runs, off, length):
    """``runs`` (block offsets) cut to [off, off+length), relative to ``off``."""
    return [
        (max(o, off) - off, min(o + n, off + length) - max(o, off)) for o, n in runs if o < off + length and o + n > off
    ]


def _data_within(pm, off, length):
    return _within(pm.data_runs(), off, length)


def _shifted(fn, base):
    """``fn(offset, n)`` seen from ``base``: a segment's reads in its RAM block's offsets."""
    return lambda offset, n: fn(base + offset, n)


def build_image(path, st, *, fmt, info=None, diagnostics=(), closers=(), source=None):
    """MemoryImage over the guest-RAM blocks of an indexed stream."""
    spill = st.get("spill_obj")

    def fetch(kind, value, page_no, n=1):
        ps = st["page_size"]
        if kind == KIND_SRC:
            return source.pread(value, n * ps).ljust(n * ps, b"\0")
        if kind == KIND_SPILL:
            return spill.pread(value, ps)
        raise MemoryFormatError(path, value, f"unexpected page kind {kind}")

    facts = stream_facts(st)
    diags = list(diagnostics) + st["diagnostics"]
    if not facts["gpa_map"] and st["blocks"]:
        diags.append(
            diagnostic(
                "error",
                "no guest RAM block",
                path,
                f"none of the RAM blocks {list(st['blocks'])} is pc.ram or ram-nodeN",
            )
        )
    if facts["chipset"] == "other" and st["blocks"]:
        diags.append(
            diagnostic(
                "warning", "unknown machine type", path, f"{st['machine']!r}: RAM mapped linearly from 0, no PCI hole"
            )
        )
    segs = []
    for gpa, name, off, length in guest_layout.guest_ram_pieces(
        st["machine"], [(n, b["length"]) for n, b in st["blocks"].items()]
    ):
        pm = st["blocks"][name]["map"]
        read = pm.reader(fetch, read_source=source.pread if source is not None else None)
        runs = _within(pm.runs(), off, length)
        missing = [
            (gpa + max(o, off) - off, min(o + n, off + length) - max(o, off))
            for o, n in pm.missing()
            if o < off + length and o + n > off
        ]
        if missing:
            diags.append(
                diagnostic(
                    "error",
                    "memory range missing",
                    path,
                    f"block {name!r}: pages never present in the stream",
                    missing=missing[:256],
                )
            )
        segs.append(
            {
                "gpa": gpa,
                "length": length,
                "runs": runs,
                # what is not known to be zero, for scanners (computed when one asks)
                "data_runs": functools.partial(_data_within, pm, off, length),
                "read": _shifted(read, off),
                # For bulk copiers (convert.to_elf): see PageMap.extents.
                "source": source,
                "extents": _shifted(pm.extents, off),
            }
        )
    merged = dict(facts)
    merged.update(info or {})
    closers = list(closers) + ([spill.close] if spill else [])
    return MemoryImage(format=fmt, path=path, info=merged, segments=segs, diagnostics=diags, closers=closers)


def probe_preamble(cur, source=None):
    """Machine type and RAM block list from the head of a stream, no page pass."""
    st = {
        "machine": None,
        "page_size": 4096,
        "capabilities": [],
        "blocks": {},
        "diagnostics": [],
        "source": source,
        "mapped_ram": False,
    }
    if cur.read(4) != migration.MAGIC:
        raise MemoryFormatError(cur.path, cur.tell() - 4, "QEVM magic missing")
    version = cur.be32()
    if version != 3:
        raise MemoryFormatError(cur.path, cur.tell() - 4, f"stream version {version} unsupported")
    if cur.peek(1) == bytes([migration.CONFIG]):
        cur.u8()
        migration._config(cur, st)
        st["mapped_ram"] = "mapped-ram" in st["capabilities"]
    at = cur.tell()
    if cur.u8() != migration.START:
        raise MemoryFormatError(cur.path, at, "no START section after the configuration")
    cur.be32()
    name = cur.read(cur.u8())
    cur.read(8)
    word = cur.be64()
    if name != b"ram" or not word & migration.F_MEM_SIZE:
        raise MemoryFormatError(cur.path, at, "first section is not ram with a MEM_SIZE list")
    if not st["mapped_ram"]:
        migration._mem_size(cur, st, word & ~0xFFF)
    blocks = [(n, b["length"]) for n, b in st["blocks"].items()]
    ram = guest_layout.ram_blocks(blocks)
    return {
        "machine": st["machine"],
        "capabilities": st["capabilities"],
        "mapped_ram": st["mapped_ram"],
        "ram_bytes": sum(dict(blocks)[n] for n in ram),
        "ram_blocks": [{"name": n, "length": length} for n, length in blocks],
    }


def probe(path):
    src = FileSource(path)
    try:
        facts = {"format": "qemu-migration"}
        facts.update(probe_preamble(Cursor(path, source=src), src))
        return facts
    finally:
        src.close()


def open(path, **_opts):
    """Open a bare QEVM stream file (``migrate`` to file, ``virsh dump`` full).

    >>> with open("guest.qevm") as img:  # doctest: +SKIP
    ...     img.info["machine"]
    'pc-i440fx-7.2'
    """
    src = FileSource(path)
    try:
        st = migration.index_stream(Cursor(path, source=src), source=src, spill_factory=_temp_spill)
        return build_image(path, st, fmt="qemu-migration", closers=[src.close], source=src)
    except BaseException:
        src.close()
        raise


def _temp_spill():
    # XBZRLE/COMPRESS_PAGE records in a seekable stream: few pages, an
    # anonymous temporary file is enough (deleted on close).
    import tempfile

    return migration.Spill(tempfile.TemporaryFile())
