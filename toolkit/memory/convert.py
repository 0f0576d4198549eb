"""Write any memory artefact as a standard ELF64 core that Volatility 3 and
pakunoda open directly.

Layout: ELF header, program headers (one PT_NOTE when the source carried ELF
notes — the QEMU per-vCPU and VMCOREINFO notes — then one PT_LOAD per run
with p_paddr = guest-physical address, p_vaddr = 0, p_filesz = p_memsz since
Volatility's ELF layer skips segments where they differ), the notes, then
page-aligned segment data. All-zero pages are not written: the output seeks
over them, so the file is sparse on filesystems that support holes.

Volatility reads e_phnum directly (no PN_XNUM), so runs are coalesced over
small gaps until fewer than 0xFFFF segments remain.

>>> to_elf("vm.save", "vm.elf", derived_dir="case/derived")["runs"]  # doctest: +SKIP
3
"""
from __future__ import annotations

import hashlib
import os
import struct

import numpy as np

from toolkit.memory import open_image

CHUNK = 1 << 20
PAGE = 4096
MAX_LOADS = 0xFFFE - 1  # leaves room for the PT_NOTE below PN_XNUM
ZERO_PAGE = bytes(PAGE)


def _coalesce(runs, limit=MAX_LOADS):
    gap = PAGE
    while len(runs) > limit:
        merged = []
        for start, n in runs:
            if merged and start - (merged[-1][0] + merged[-1][1]) <= gap:
                merged[-1] = (merged[-1][0], start + n - merged[-1][0])
            else:
                merged.append((start, n))
        runs, gap = merged, gap * 4
    return runs


def file_sha256(path, progress=None):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def to_elf(src, dst, *, snapshot=None, derived_dir=None, progress=None, image=None):
    """Convert ``src`` (any supported format) into an ELF64 core at ``dst``.

    ``progress(done_bytes, total_bytes)`` is called as data is written.
    Returns {src_sha256, dst_sha256, runs, bytes, format, diagnostics}.

    >>> r = to_elf("guest.kdump", "guest.elf")  # doctest: +SKIP
    >>> r["bytes"] == sum(n for _, n in r["ranges"])  # doctest: +SKIP
    True
    """
    src_sha = file_sha256(src)
    own = image is None
    img = image or open_image(src, snapshot=snapshot, derived_dir=derived_dir)
    try:
        runs = _coalesce(list(img.runs))
        notes = img.notes or b""
        nph = len(runs) + (1 if notes else 0)
        off = 64 + 56 * nph
        note_off = off
        off += len(notes)
        loads = []
        for gpa, n in runs:
            off = (off + PAGE - 1) & ~(PAGE - 1)
            loads.append((off, gpa, n))
            off += n
        total_out = off
        header = _ehdr(nph)
        if notes:
            header += struct.pack("<IIQQQQQQ", 4, 0, note_off, 0, 0, len(notes), len(notes), 4)
        for foff, gpa, n in loads:
            header += struct.pack("<IIQQQQQQ", 1, 7, foff, 0, gpa, n, n, PAGE)
        header += notes
        h = hashlib.sha256()
        total = sum(n for _, n in runs)
        done = 0
        with open(dst, "wb") as out:
            out.write(header)
            h.update(header)
            pos = len(header)
            for foff, gpa, n in loads:
                h.update(bytes(foff - pos))
                out.seek(foff)
                for rel in range(0, n, CHUNK):
                    data = img.read(gpa + rel, min(CHUNK, n - rel))
                    h.update(data)
                    _write_sparse(out, data)
                    done += len(data)
                    if progress:
                        progress(done, total)
                pos = foff + n
            out.truncate(total_out)  # a trailing hole still counts as file length
        return {"src_sha256": src_sha, "dst_sha256": h.hexdigest(), "runs": len(runs), "path": str(dst),
                "bytes": total, "ranges": runs, "format": img.format,
                "diagnostics": list(img.diagnostics)}
    finally:
        if own:
            img.close()


def _write_sparse(out, data):
    """Write ``data`` at the current position, seeking over all-zero pages."""
    n = len(data)
    full = n // PAGE
    if full == 0:
        out.write(data)
        return
    nonzero = np.frombuffer(data, dtype=np.uint64, count=full * PAGE // 8) \
        .reshape(full, PAGE // 8).any(axis=1)
    mv = memoryview(data)
    edges = np.flatnonzero(np.diff(np.concatenate(([False], nonzero, [False])).astype(np.int8)))
    pos = 0
    for start, stop in zip(edges[0::2].tolist(), edges[1::2].tolist()):
        if start * PAGE > pos:
            out.seek(start * PAGE - pos, os.SEEK_CUR)
        out.write(mv[start * PAGE:stop * PAGE])
        pos = stop * PAGE
    tail_at = full * PAGE
    if tail_at > pos:
        out.seek(tail_at - pos, os.SEEK_CUR)
    if n > tail_at:
        out.write(mv[tail_at:])


def _ehdr(nph):
    ident = b"\x7fELF\x02\x01\x01" + bytes(9)
    return ident + struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, 64, 0, 0, 64, 56, nph, 0, 0, 0)
