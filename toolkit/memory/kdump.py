"""kdump-compressed dumps (``virsh dump --memory-only --format kdump-*``).

Two containers, one content:

* raw: ``KDUMP   `` disk_dump_header (block 0), kdump sub-header (block 1),
  two page bitmaps, then 24-byte page descriptors (u64 offset, u32 size,
  u32 flags: zlib 0x1, lzo 0x2, snappy 0x4; u64 page flags), one per set bit
  of the second bitmap, in PFN order. All zero pages share one data page.
* flattened (what QEMU writes): a 4096-byte ``makedumpfile`` header, then
  records of be64 offset, be64 size and data that *would* land at that offset
  of the raw file, ending with offset = size = -1, read through an index of
  the records (``toolkit.memory.flattened``) instead of a reassembled copy.

PFN = guest-physical address >> 12 for QEMU-written dumps.

>>> detect(b"KDUMP   "), detect(b"makedumpfile\\0\\0\\0\\0")
(True, True)
"""

from __future__ import annotations

import datetime as dt
import struct

import numpy as np

from toolkit.errors import MemoryFormatError
from toolkit.limits import env_name, human, limit
from toolkit.memory.elf_core import note_facts, parse_notes, vmcoreinfo_table
from toolkit.memory.flattened import FLAT_MAGIC, FlatFile
from toolkit.memory.image import FileSource, MemoryImage
from toolkit.memory.inflate import inflate
from toolkit.memory.pages import KIND_DESC, KIND_FILL, KIND_SRC, IndexBudget, PageMap, enc
from toolkit.schemas import diagnostic

ZLIB, LZO, SNAPPY = 0x1, 0x2, 0x4
DESC = np.dtype([("offset", "<i8"), ("size", "<u4"), ("flags", "<u4"), ("pflags", "<u8")])


def detect(head):
    return head[:8] in (b"KDUMP   ", b"DISKDUMP") or head[:12] == FLAT_MAGIC


def _container(path, scan_limit=None):
    src = FileSource(path)
    if src.pread(0, 12) == FLAT_MAGIC:
        try:
            return FlatFile(path, src, scan_limit), True
        except BaseException:
            src.close()
            raise
    return src, False


def _header(f, path):
    h = f.pread(0, 464)
    if len(h) < 464 or h[:8] not in (b"KDUMP   ", b"DISKDUMP"):
        raise MemoryFormatError(path, 0, "no KDUMP disk_dump_header")
    uts = [h[12 + 65 * i : 12 + 65 * (i + 1)].split(b"\0")[0].decode("ascii", "replace") for i in range(6)]
    (version,) = struct.unpack_from("<i", h, 8)
    block_size, sub_blocks, bitmap_blocks, mapnr32 = struct.unpack_from("<IIII", h, 428)
    (nr_cpus,) = struct.unpack_from("<I", h, 460)
    # struct timeval timestamp at 408 (after the 390-byte utsname, 8-aligned), status flags at 424
    tv_sec, _tv_usec, status = struct.unpack_from("<qqI", h, 408)
    if block_size not in (4096, 8192, 16384, 65536) or bitmap_blocks == 0:
        raise MemoryFormatError(path, 428, f"block_size {block_size} / bitmap_blocks {bitmap_blocks} are not plausible")
    sub = f.pread(block_size, 104)
    if len(sub) < 104:
        raise MemoryFormatError(path, block_size, "kdump sub-header missing")
    phys_base, dump_level = struct.unpack_from("<QI", sub, 0)
    off_vmci, size_vmci, off_note, size_note = struct.unpack_from("<QQQQ", sub, 32)
    (mapnr64,) = struct.unpack_from("<Q", sub, 96)
    max_mapnr = mapnr64 if version >= 6 and mapnr64 else mapnr32
    bitmap_at = block_size * (1 + sub_blocks)
    half = bitmap_blocks * block_size // 2
    if bitmap_at + 2 * half > f.size:
        raise MemoryFormatError(path, 436, f"bitmap_blocks {bitmap_blocks} run past the end of the dump")
    if max_mapnr > half * 8:
        raise MemoryFormatError(path, 440, f"max_mapnr {max_mapnr} exceeds the bitmap ({half * 8} bits)")
    if max_mapnr * block_size > limit("max_guest_ram"):
        raise MemoryFormatError(
            path,
            440,
            f"max_mapnr {max_mapnr} declares {human(max_mapnr * block_size)} of RAM, above "
            f"{human(limit('max_guest_ram'))} (raise {env_name('max_guest_ram')} if this is real)",
        )
    return {
        "version": version,
        "utsname": dict(zip(("sysname", "nodename", "release", "version", "machine", "domainname"), uts)),
        "block_size": block_size,
        "max_mapnr": max_mapnr,
        "nr_cpus": nr_cpus,
        "status": status,
        "timestamp": tv_sec,
        "phys_base": phys_base,
        "dump_level": dump_level,
        "vmcoreinfo_at": (off_vmci, size_vmci),
        "notes_at": (off_note, size_note),
        "bitmap2_at": bitmap_at + half,
        "bitmap_half": half,
        "desc_at": bitmap_at + bitmap_blocks * block_size,
    }


EXTRA_MOST = 16 << 20  # bytes of notes or VMCOREINFO a header may point at and be read


def _extra_range(at):
    """(offset, length) of the notes or VMCOREINFO a header points at, or None (absent, or too long)."""
    off, n = at
    return (off, n) if off and 0 < n <= EXTRA_MOST else None


def _read_extra(f, at):
    where = _extra_range(at)
    return f.pread(*where) if where else b""


# disk_dump_header.status bits (makedumpfile diskdump_mod.h)
STATUS_NAMES = ((0x1, "zlib"), (0x2, "lzo"), (0x4, "snappy"), (0x20, "zstd"))
STATUS_INCOMPLETE = 0x8


def status_compression(status: int) -> str:
    """The compression the header declares for its pages ('none' when no bit is set)."""
    names = [name for bit, name in STATUS_NAMES if status & bit]
    return ",".join(names) or "none"


PROBE_SCAN = 64 << 20  # bytes of a flattened file indexed for a probe: its headers and notes come first


class _NotCovered(Exception):
    pass


def probe(path):
    """Facts from the headers and notes. A flattened file's records are indexed only as far as
    needed to read them (its first ``PROBE_SCAN`` bytes; all of it if they are not there):
    indexing the whole of an 8 GiB guest's dump took 11 s, for a probe."""
    try:
        return _probe(path, PROBE_SCAN)
    except (_NotCovered, MemoryFormatError):
        return _probe(path, None)


def _probe(path, scan_limit):
    f, flat = _container(path, scan_limit)
    try:
        partial = flat and scan_limit is not None and f.src.size > scan_limit

        def need(offset, length):
            # a range the probe reads must have been written by an indexed record (a later record
            # may still overwrite it: the open, which indexes every record, is what analysis reads)
            if partial and length > 0 and f.covered(offset, length) != [(offset, length)]:
                raise _NotCovered

        need(0, 464)
        h = _header(f, path)
        need(h["block_size"], 104)
        if notes := _extra_range(h["notes_at"]):
            need(*notes)
        facts = {
            "format": "kdump",
            "flattened": flat,
            "header_version": h["version"],
            "utsname": h["utsname"],
            "block_size": h["block_size"],
            "max_mapnr": h["max_mapnr"],
            "nr_cpus": h["nr_cpus"],
            "compression": status_compression(h["status"]),
            "incomplete": bool(h["status"] & STATUS_INCOMPLETE),
        }
        if h["timestamp"] > 0:
            facts["captured_at"] = dt.datetime.fromtimestamp(h["timestamp"], dt.UTC).isoformat()
        notes = parse_notes(_read_extra(f, h["notes_at"]), path)
        facts.update(note_facts(notes))
        return facts
    finally:
        f.close()


def _codec(flags):
    for bit, name in ((ZLIB, "zlib"), (LZO, "lzo"), (SNAPPY, "snappy")):
        if flags & bit:
            return name
    return None


def _present(f, offset, length):
    """(offset, length) pieces of [offset, offset+length) that the file holds:
    a flattened file's records may leave most of the raw layout empty."""
    if isinstance(f, FlatFile):
        return f.covered(offset, length)
    return [(offset, min(length, f.size - offset))] if offset < f.size and length > 0 else []


def _bitmap_pieces(f, h, chunk_bytes=1 << 17):
    """(first pfn, bitmap bytes) over the second bitmap, only where the file has
    bytes (absent bitmap bytes are zero: no page), ``chunk_bytes`` at a time."""
    start, nbytes = h["bitmap2_at"], (h["max_mapnr"] + 7) // 8
    for off, n in _present(f, start, nbytes):
        for at in range(off, off + n, chunk_bytes):
            yield (at - start) * 8, f.pread(at, min(chunk_bytes, off + n - at))


def _build_index(f, h, path, diags):
    bs, nmap = h["block_size"], h["max_mapnr"]
    real_size = f.src.size if isinstance(f, FlatFile) else f.size
    pm = PageMap(nmap, bs, budget=IndexBudget(path, lambda: real_size))
    rank, zero_offs, seen_flags = 0, {}, set()
    for first, raw in _bitmap_pieces(f, h):
        nbits = min(len(raw) * 8, nmap - first)
        bits = np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")[:nbits]
        pfns = np.flatnonzero(bits).astype(np.int64) + first
        if not len(pfns):
            continue
        desc_raw = f.pread(h["desc_at"] + rank * 24, len(pfns) * 24)
        got = len(desc_raw) // 24
        d = np.frombuffer(desc_raw[: got * 24], DESC)
        if got < len(pfns):
            lost = pfns[got:]
            diags.append(
                diagnostic(
                    "error",
                    "memory range missing",
                    f"{path}@{h['desc_at'] + (rank + got) * 24:#x}",
                    "page descriptor table ends early",
                    missing=_pfn_ranges(lost, bs),
                )
            )
            pfns = pfns[:got]
        # Compressed data may exceed a page only in theory (writers store such
        # pages raw); allow some slack, refuse what cannot be a page.
        bad = (
            (d["offset"] < 0)
            | (d["size"] == 0)
            | (d["size"] > 2 * bs)
            | (d["offset"] + d["size"].astype(np.int64) > f.size)
        )
        if bad.any():
            diags.append(
                diagnostic(
                    "error",
                    "memory range missing",
                    f"{path}@{h['desc_at'] + rank * 24:#x}",
                    "page descriptors point outside the file or have impossible sizes",
                    missing=_pfn_ranges(pfns[bad], bs),
                )
            )
        ranks = np.arange(rank, rank + len(pfns), dtype=np.int64)
        plain = ~bad & (d["flags"] == 0) & (d["size"] == bs)
        packed = ~bad & ~plain
        at = h["desc_at"] + rank * 24
        pm.set(pfns[~bad], np.where(plain, enc(KIND_SRC, 0) | d["offset"], enc(KIND_DESC, 0) | ranks)[~bad], at)
        seen_flags.update(int(x) for x in np.unique(d["flags"][packed]))
        # The shared zero page: a data offset used by more than one descriptor.
        offs, counts = np.unique(d["offset"][~bad], return_counts=True)
        for off in offs[counts > 1][:4]:
            off = int(off)
            if off not in zero_offs:
                j = int(np.flatnonzero(d["offset"] == off)[0])
                try:
                    zero_offs[off] = _page(f, off, int(d["size"][j]), int(d["flags"][j]), bs) == bytes(bs)
                except ValueError:  # a corrupt shared page: read (and reported) page by page
                    zero_offs[off] = False
            if zero_offs[off]:
                pm.set(pfns[~bad & (d["offset"] == off)], enc(KIND_FILL, 0), at)
        rank += len(pfns)
    names = [n for bit, n in ((ZLIB, "zlib"), (LZO, "lzo"), (SNAPPY, "snappy")) if any(fl & bit for fl in seen_flags)]
    return pm, names


def _pfn_ranges(pfns, bs, most=64):
    out = []
    for p in (int(x) for x in pfns):
        if out and out[-1][0] + out[-1][1] == p * bs:
            out[-1] = (out[-1][0], out[-1][1] + bs)
        elif len(out) < most:
            out.append((p * bs, bs))
    return out


def _page(f, offset, size, flags, bs):
    return _unpack(f.pread(offset, size), flags, bs)


def _unpack(data, flags, bs):
    codec = _codec(flags)
    if codec is not None:
        return inflate(codec, data, bs)  # a page inflates to one block, never more
    if len(data) != bs:
        raise ValueError(f"page holds {len(data)} bytes, not {bs}")
    return data


def open(path, **_opts):
    """Open a kdump (flattened or raw) as a MemoryImage.

    >>> with open("guest.kdump") as img:  # doctest: +SKIP
    ...     img.info["compression"]
    ['zlib']
    """
    f, flat = _container(path)
    try:
        diags = list(getattr(f, "diagnostics", []))
        h = _header(f, path)
        pm, comp = _build_index(f, h, path, diags)
        notes_raw = _read_extra(f, h["notes_at"])
        vmci = _read_extra(f, h["vmcoreinfo_at"])
    except BaseException:
        f.close()
        raise
    bs = h["block_size"]

    def fetch(kind, value, page_no, n=1):
        if kind == KIND_SRC:
            return f.pread(value, n * bs).ljust(n * bs, b"\0")
        # n pages of consecutive descriptors (checked in the index): their records in one read,
        # and their data in one more when it lies together, as makedumpfile writes it
        recs = np.frombuffer(f.pread(h["desc_at"] + value * 24, n * 24), DESC)
        starts, sizes = recs["offset"], recs["size"].astype(np.int64)
        lo, hi = int(starts.min()), int((starts + sizes).max())
        together = hi - lo <= n * 2 * bs  # a hostile table may scatter them: then page by page
        blob = f.pread(lo, hi - lo) if together else None
        pages = []
        for k, (where, size, flags) in enumerate(zip(starts.tolist(), sizes.tolist(), recs["flags"].tolist())):
            try:
                if blob is None:
                    pages.append(_page(f, where, size, flags, bs))
                else:
                    pages.append(_unpack(blob[where - lo : where - lo + size], flags, bs))
            except Exception as exc:  # any codec error: the page is lost, the rest is not
                diags.append(
                    diagnostic(
                        "error",
                        "corrupt compressed page",
                        f"{path}@{where:#x}",
                        f"pfn {page_no + k:#x}: {exc}",
                        missing=[((page_no + k) * bs, bs)],
                    )
                )
                pages.append(bytes(bs))
        return b"".join(pages).ljust(n * bs, b"\0")  # the index holds only descriptors the file has

    info = {
        "flattened": flat,
        "header_version": h["version"],
        "utsname": h["utsname"],
        "block_size": bs,
        "max_mapnr": h["max_mapnr"],
        "nr_cpus": h["nr_cpus"],
        "phys_base": h["phys_base"],
        "dump_level": h["dump_level"],
        "compression": comp,
    }
    info.update(note_facts(parse_notes(notes_raw, path)))
    if vmci and "vmcoreinfo" not in info:
        info["vmcoreinfo"] = vmcoreinfo_table(vmci)
    read = pm.reader(fetch, batched_records=True)
    seg = {"gpa": 0, "length": pm.npages * bs, "read": read, "runs": pm.runs(), "data_runs": pm.data_runs}
    return MemoryImage(
        format="kdump", path=path, info=info, segments=[seg], diagnostics=diags, notes=notes_raw, closers=[f.close]
    )
