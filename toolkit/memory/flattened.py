"""makedumpfile's flattened format (what QEMU writes for kdump-compressed dumps).

A 4096-byte ``makedumpfile`` header, then records of be64 offset, be64 size
and data that *would* land at that offset of the raw kdump file, ending with
offset = size = -1. The records are indexed once (24 bytes a record, in
arrays) and the raw layout is read through that index instead of
reassembling a temporary copy; later records overwrite earlier ones.

>>> FLAT_MAGIC
b'makedumpfile'
"""

from __future__ import annotations

import bisect
import heapq
import struct
from array import array

import numpy as np

from toolkit.errors import MemoryFormatError
from toolkit.limits import env_name, limit
from toolkit.schemas import diagnostic

FLAT_MAGIC = b"makedumpfile"
FLAT_HEADER_SIZE = 4096
MAX_RAW_OFFSET = 1 << 62  # a record's raw offset: far beyond any dump, inside int64


class FlatFile:
    """The raw kdump layout, read through the records of a flattened file.

    The visible pieces (raw offset, length, file position) are kept in three
    int64 arrays: 24 bytes a record, whatever number of records the file holds.
    """

    def __init__(self, path, src, scan_limit=None):
        """``scan_limit``: index only the records that start in the file's first ``scan_limit``
        bytes (a probe needs the headers, which come first), not the whole file."""
        self.path = path
        self.src = src
        self.diagnostics = []
        starts, lens, fpos = _paint(*self._index(scan_limit), path)
        self.size = int((starts + lens).max()) if len(starts) else 0
        # array('q'), not numpy, for the reads: 8 bytes an entry still, but an
        # item is a Python int at once and bisect runs on it in C.
        self._starts, self._lens, self._fpos = (array("q", a.tobytes()) for a in (starts, lens, fpos))

    def _index(self, scan_limit=None):
        head = self.src.pread(0, 32)
        if head[:12] != FLAT_MAGIC:
            raise MemoryFormatError(self.path, 0, "not a makedumpfile flattened file")
        ftype, version = struct.unpack_from(">qq", head, 16)
        if ftype != 1:
            raise MemoryFormatError(self.path, 16, f"flattened header type {ftype} is not 1")
        offs, lens, fposs = array("q"), array("q"), array("q")
        pos, buf, buf_at = FLAT_HEADER_SIZE, b"", 0
        while scan_limit is None or pos < scan_limit:
            if not buf_at <= pos <= buf_at + len(buf) - 16:  # record headers read 1 MiB at a time
                buf, buf_at = self.src.pread(pos, 1 << 20), pos
            rec = buf[pos - buf_at : pos - buf_at + 16]
            if len(rec) < 16:
                self.diagnostics.append(
                    diagnostic(
                        "error",
                        "flattened stream truncated",
                        f"{self.path}@{pos:#x}",
                        "file ends before the end marker (offset = size = -1)",
                    )
                )
                break
            off, size = struct.unpack(">qq", rec)
            if off == -1 and size == -1:
                break
            if off < 0 or size < 0:
                raise MemoryFormatError(self.path, pos, f"record offset {off} / size {size} is negative")
            if off + size > MAX_RAW_OFFSET:
                raise MemoryFormatError(self.path, pos, f"record at raw offset {off:#x} lies beyond any dump")
            have = min(size, self.src.size - pos - 16)
            if have < size:
                self.diagnostics.append(
                    diagnostic(
                        "error",
                        "flattened stream truncated",
                        f"{self.path}@{self.src.size:#x}",
                        f"record at {pos:#x} announces {size} bytes, {have} present",
                    )
                )
            if have > 0:  # an empty record writes nothing
                offs.append(off)
                lens.append(have)
                fposs.append(pos + 16)
            if have < size:
                break
            pos += 16 + size
        return np.frombuffer(offs, np.int64), np.frombuffer(lens, np.int64), np.frombuffer(fposs, np.int64)

    def _pieces_in(self, offset, end):
        starts, lens, fpos = self._starts, self._lens, self._fpos
        out, i = [], max(bisect.bisect_right(starts, offset) - 1, 0)
        while i < len(starts) and starts[i] < end:
            vstart = starts[i]
            lo, hi = max(offset, vstart), min(end, vstart + lens[i])
            if lo < hi:
                out.append((lo, hi, fpos[i] + lo - vstart))
            i += 1
        return out

    def covered(self, offset, length):
        """(offset, length) pieces of [offset, offset+length) that some record wrote."""
        out = []
        for lo, hi, _ in self._pieces_in(offset, offset + length):
            if out and out[-1][0] + out[-1][1] == lo:
                out[-1] = (out[-1][0], out[-1][1] + hi - lo)
            else:
                out.append((lo, hi - lo))
        return out

    def pread(self, offset, length):
        out = bytearray(length)
        for lo, hi, fpos in self._pieces_in(offset, offset + length):
            out[lo - offset : hi - offset] = self.src.pread(fpos, hi - lo)
        return bytes(out)

    def close(self):
        self.src.close()


def _paint(offs, lens, fposs, path):
    """Later records overwrite earlier ones: the visible pieces, sorted, as
    (raw offsets, lengths, file positions) arrays.

    Records that overlap no other (what QEMU writes, but for a few header
    rewrites) pass through as they are; only overlapping ones go through a
    sweep over their boundaries with a heap keyed on write order.
    """
    order = np.argsort(offs, kind="stable")
    starts, ends = offs[order], offs[order] + lens[order]
    reach = np.maximum.accumulate(ends)  # the furthest any earlier record goes
    alone = np.ones(len(order), dtype=bool)
    if len(order) > 1:
        hit = starts[1:] < reach[:-1]  # record i+1 overlaps something before it
        alone[1:] &= ~hit
        alone[:-1] &= ~hit
    del starts, ends, reach
    if alone.all():
        return offs[order], lens[order], fposs[order]
    tangled = np.sort(order[~alone])  # write order
    cap = limit("max_overlapping_records")
    if len(tangled) > cap:
        raise MemoryFormatError(
            path,
            FLAT_HEADER_SIZE,
            f"{len(tangled)} flattened records overwrite one another, more than {cap} "
            f"(raise {env_name('max_overlapping_records')} if this is real)",
        )
    keep = order[alone]
    lo, n, fp = _sweep(offs[tangled].tolist(), lens[tangled].tolist(), fposs[tangled].tolist())
    s = np.concatenate([offs[keep], np.array(lo, np.int64)])
    n = np.concatenate([lens[keep], np.array(n, np.int64)])
    f = np.concatenate([fposs[keep], np.array(fp, np.int64)])
    order = np.argsort(s, kind="stable")
    return s[order], n[order], f[order]


def _sweep(offs, lens, fposs):
    """The visible pieces of overlapping records given in write order (lists)."""
    order = sorted(range(len(offs)), key=lambda k: offs[k])
    bounds = sorted({b for off, n in zip(offs, lens) for b in (off, off + n)})
    pieces, heap, j = [], [], 0
    for lo, hi in zip(bounds, bounds[1:]):
        while j < len(order) and offs[order[j]] <= lo:
            k = order[j]
            heapq.heappush(heap, (-k, offs[k] + lens[k]))
            j += 1
        while heap and heap[0][1] <= lo:
            heapq.heappop(heap)
        if not heap:
            continue
        k = -heap[0][0]
        if pieces and pieces[-1][3] == k and pieces[-1][0] + pieces[-1][1] == lo:
            pieces[-1] = (pieces[-1][0], pieces[-1][1] + hi - lo, pieces[-1][2], k)
        else:
            pieces.append((lo, hi - lo, fposs[k] + lo - offs[k], k))
    return [p[0] for p in pieces], [p[1] for p in pieces], [p[2] for p in pieces]
