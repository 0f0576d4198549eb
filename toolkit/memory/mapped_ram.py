"""QEMU mapped-ram (``-capability mapped-ram``, QEMU 9+): each RAM block's
pages at fixed offsets of the file, a bitmap saying which were written.

The block header after a RAM block's name: be32 version (1), be64 page size,
be64 bitmap offset, be64 pages offset; page N of the block lies at pages
offset + N * page size when bit N is set, and is a zero page otherwise.
The index is built a bounded piece of the bitmap at a time, and a piece with
no bit set costs one value per 512 pages (``PageMap.fill``).
"""

from __future__ import annotations

import numpy as np

from toolkit.errors import MemoryFormatError
from toolkit.memory.pages import KIND_FILL, KIND_SRC, enc
from toolkit.schemas import diagnostic


def index_block(cur, st, name, length, pm):
    at = cur.tell()
    version = cur.be32()
    page_size, bitmap_off, pages_off = cur.be64(), cur.be64(), cur.be64()
    if version != 1 or page_size != pm.page_size:
        raise MemoryFormatError(
            cur.path, at, f"mapped-ram header version {version} / page size {page_size} unsupported"
        )
    src = st["source"]
    nbytes = (pm.npages + 63) // 64 * 8
    if bitmap_off + nbytes > src.size:
        raise MemoryFormatError(cur.path, at + 12, f"mapped-ram bitmap at {bitmap_off:#x} lies past the end")
    beyond = False
    step = 1 << 20  # pages per piece: the index is built a bounded piece at a time
    for first in range(0, pm.npages, step):
        n = min(step, pm.npages - first)
        raw = src.pread(bitmap_off + first // 8, (n + 7) // 8)
        if raw.count(0) == len(raw):  # no page written in this piece: all zero pages
            pm.fill(first, first + n, enc(KIND_FILL, 0), at)
            continue
        bits = np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")[:n].astype(bool)
        offs = pages_off + np.arange(first, first + n, dtype=np.int64) * page_size
        outside = bits & (offs + page_size > src.size)
        beyond |= bool(outside.any())
        # A clear bit is a zero page; a set bit whose page lies past the end is absent.
        pm.put_range(first, np.where(bits, np.where(outside, 0, enc(KIND_SRC, 0) | offs), enc(KIND_FILL, 0)), at)
    if beyond:
        st["diagnostics"].append(
            diagnostic(
                "error",
                "memory range missing",
                f"{cur.path}@{src.size:#x}",
                f"mapped-ram pages of block {name!r} lie past the end of the file",
            )
        )
    # QEMU continues the stream after the block's page area.
    cur.seek(pages_off + length)
