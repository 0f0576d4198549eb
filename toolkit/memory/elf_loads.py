"""An ELF core's PT_LOAD segments as one address-space segment over numpy arrays.

A core may have millions of PT_LOADs (QEMU's paging dumps need PN_XNUM for
more than 65535), and a hostile one as many as its file holds program
headers. A segment dict and two closures per PT_LOAD cost ~1.3 KiB each (a
53 MiB core took 1.3 GiB), so the loads stay in arrays: reads and the bulk
copier's extents find their loads with ``searchsorted``.

Each load: ``gpa`` (p_paddr), ``have`` bytes of file data at ``off`` (p_filesz
cut at the end of the file: the rest is missing), then zeros up to p_memsz.

>>> import numpy as np
>>> t = {"gpa": np.array([0, 8192]), "have": np.array([4, 4]), "filesz": np.array([4, 4]),
...      "memsz": np.array([4, 8]), "off": np.array([100, 104])}
>>> runs_of(t)
[(0, 4), (8192, 8)]
"""

from __future__ import annotations

import numpy as np

from toolkit.errors import MemoryFormatError
from toolkit.limits import env_name, limit
from toolkit.memory.pages import EXT_ZERO
from toolkit.schemas import diagnostic

PT_LOAD = 1
MAX_ADDRESS = 1 << 52  # x86-64's physical address width: a load beyond it is not memory


def load_table(phdrs, file_size, path):
    """Arrays of the PT_LOADs with memory (sorted by address), and diagnostics.

    Refuses overlapping loads; loads beyond the physical address space and
    file data past the end of the file become diagnostics (one row each kind,
    the first ranges listed).
    """
    loads = phdrs[(phdrs["type"] == PT_LOAD) & ((phdrs["memsz"] > 0) | (phdrs["filesz"] > 0))]
    gpa, filesz, memsz, off = (loads[k].astype(np.uint64) for k in ("paddr", "filesz", "memsz", "offset"))
    diags = []
    span = np.maximum(filesz, memsz)
    wild = (gpa >= MAX_ADDRESS) | (span >= MAX_ADDRESS) | (gpa + span >= MAX_ADDRESS) | (off >= MAX_ADDRESS)
    if wild.any():
        diags.append(
            diagnostic(
                "error",
                "PT_LOAD outside physical memory",
                path,
                f"{int(wild.sum())} program headers map beyond 2^52 or from beyond any file; ignored",
            )
        )
    keep = ~wild
    t = {k: v[keep].astype(np.int64) for k, v in (("gpa", gpa), ("filesz", filesz), ("memsz", memsz), ("off", off))}
    t["memsz"] = np.maximum(t["memsz"], t["filesz"])
    t["have"] = np.clip(np.minimum(t["filesz"], file_size - t["off"]), 0, None)
    order = np.argsort(t["gpa"], kind="stable")
    t = {k: v[order] for k, v in t.items()}
    ends = t["gpa"] + t["memsz"]
    clash = np.flatnonzero(t["gpa"][1:] < ends[:-1])
    if len(clash):
        raise MemoryFormatError(path, "segment table", f"overlapping ranges at gpa {int(t['gpa'][clash[0] + 1]):#x}")
    short = np.flatnonzero(t["have"] < t["filesz"])
    if len(short):
        missing = [(int(t["gpa"][i] + t["have"][i]), int(t["filesz"][i] - t["have"][i])) for i in short[:64]]
        diags.append(
            diagnostic(
                "error",
                "memory range missing",
                f"{path}@{file_size:#x}",
                "file truncated inside a PT_LOAD segment"
                + (f" ({len(short)} segments, the first 64 listed)" if len(short) > 64 else ""),
                missing=missing,
            )
        )
    return t, diags


def runs_of(t):
    """Known ranges: file data present, and the zeros past p_filesz; merged."""
    starts = np.concatenate([t["gpa"], t["gpa"] + t["filesz"]])
    lengths = np.concatenate([t["have"], t["memsz"] - t["filesz"]])
    keep = lengths > 0
    starts, lengths = starts[keep], lengths[keep]
    order = np.argsort(starts, kind="stable")
    starts, stops = starts[order], starts[order] + lengths[order]
    if not len(starts):
        return []
    new = np.r_[True, starts[1:] > np.maximum.accumulate(stops)[:-1]]
    groups = np.flatnonzero(new)
    merged = np.stack([starts[groups], np.maximum.reduceat(stops, groups)], axis=1)
    cap = limit("max_runs")
    if len(merged) > cap:
        raise MemoryFormatError(
            "ELF core",
            "program headers",
            f"more than {cap} separate ranges of memory (raise {env_name('max_runs')} if this is real)",
        )
    return list(zip(merged[:, 0].tolist(), (merged[:, 1] - merged[:, 0]).tolist()))


def data_runs_of(t):
    """The file data of the loads (not their zero tails), merged: what a scanner reads."""
    keep = t["have"] > 0
    starts, stops = t["gpa"][keep], t["gpa"][keep] + t["have"][keep]
    if not len(starts):
        return []
    new = np.r_[True, starts[1:] > stops[:-1]]  # loads are sorted and apart
    groups = np.flatnonzero(new)
    merged_stops = np.maximum.reduceat(stops, groups)
    return list(zip(starts[groups].tolist(), (merged_stops - starts[groups]).tolist()))


def segment(t, src, path):
    """The one MemoryImage segment (see toolkit.memory.image) over load table ``t``."""
    if not len(t["gpa"]):
        return None
    base = int(t["gpa"][0])
    ends = t["gpa"] + t["memsz"]
    runs = runs_of(t)
    if base:
        runs = [(s - base, n) for s, n in runs]

    def _overlapping(lo, hi):
        first = int(np.searchsorted(ends, lo, side="right"))
        last = int(np.searchsorted(t["gpa"], hi, side="left"))
        return range(first, last)

    def read(offset, n):
        lo, hi = base + offset, base + offset + n
        loads = _overlapping(lo, hi)
        if len(loads) == 1:
            i = loads[0]
            g, have, off = int(t["gpa"][i]), int(t["have"][i]), int(t["off"][i])
            if g <= lo and hi <= g + have:
                # all of it file data of one load (nearly every read): the file's bytes as
                # they come, not zero-filled and copied twice (that was 23 s of 8 GiB scans)
                data = src.pread(off + lo - g, n)
                if len(data) == n:
                    return data
        out = bytearray(n)
        for i in loads:
            g, have, off = int(t["gpa"][i]), int(t["have"][i]), int(t["off"][i])
            a, b = max(lo, g), min(hi, g + have)
            if a < b:
                data = src.pread(off + a - g, b - a)
                out[a - lo : a - lo + len(data)] = data
        return bytes(out)

    def extents(offset, n):
        """(rel, n, file offset or EXT_ZERO) rows covering [offset, offset+n) in order."""
        lo, hi = base + offset, base + offset + n
        rows, pos = [], lo
        for i in _overlapping(lo, hi):
            g, have, off = int(t["gpa"][i]), int(t["have"][i]), int(t["off"][i])
            a, b = max(lo, g), min(hi, g + have)
            if a < b:
                if a > pos:
                    rows.append((pos - lo, a - pos, EXT_ZERO))
                rows.append((a - lo, b - a, off + a - g))
                pos = b
        if pos < hi:
            rows.append((pos - lo, hi - pos, EXT_ZERO))
        return np.array(rows, dtype=np.int64).reshape(-1, 3)

    return {
        "gpa": base,
        "length": int(ends.max()) - base,
        "runs": runs,
        "runs_merged": True,
        # zero tails (p_memsz past p_filesz) hold nothing to scan; computed when a scanner asks
        "data_runs": lambda: [(s - base, n) for s, n in data_runs_of(t)],
        "read": read,
        # "extents"/"source": where the bytes lie, so a bulk copier
        # (convert.to_elf) reads straight from the file.
        "extents": extents,
        "source": src,
    }
