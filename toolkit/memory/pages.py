"""Per-page location index and a sequential cursor, shared by the page-oriented
readers (migration stream, kdump, mapped-ram).

Why an index and not a copy: a guest of N GiB has N*262144 pages; one int64
per page (8 bytes, so 2 MiB per GiB of guest RAM) says where each page lives,
and page bytes stay in the evidence file until someone reads them.

Encoding of ``PageMap.loc`` entries (int64)::

    0                       page absent (never written / not dumped)
    (KIND << 56) | value    KIND_SRC: raw page at source offset `value`
                            KIND_FILL: page filled with byte `value & 0xff`
                            KIND_SPILL: raw page at offset `value` of the spill file
                            KIND_DESC: format-specific record number `value`

>>> pm = PageMap(4)
>>> pm.loc[1] = enc(KIND_FILL, 0); pm.runs()
[(4096, 4096)]
"""

from __future__ import annotations

import numpy as np

from toolkit.errors import MemoryFormatError

# Absent is 0 so that a fresh index is np.zeros: the kernel hands out untouched
# zero pages lazily, so the index of a huge, mostly absent guest costs no RSS.
ABSENT = 0
KIND_SRC, KIND_FILL, KIND_SPILL, KIND_DESC = 1, 2, 3, 4
EXT_ZERO, EXT_READ = -1, -2  # PageMap.extents: zeros / read through the reader
_SHIFT = 56
_VALUE_MASK = (1 << _SHIFT) - 1


def enc(kind, value):
    return (kind << _SHIFT) | value


class PageMap:
    """Where each page of one linear range (a RAM block, a PFN space) lives."""

    def __init__(self, npages, page_size=4096):
        self.page_size = page_size
        self.loc = np.zeros(npages, dtype=np.int64)

    @property
    def npages(self):
        return len(self.loc)

    def runs(self):
        """(offset, length) ranges of pages that are present (data or zero)."""
        present = self.loc != ABSENT
        return _bool_runs(present, self.page_size)

    def missing(self):
        """(offset, length) ranges of absent pages."""
        return _bool_runs(self.loc == ABSENT, self.page_size)

    def extents(self, offset, length):
        """[offset, offset+length) as (rel, n, where) rows for a bulk copier.

        ``where`` >= 0: n bytes at that source offset (pages contiguous in the
        source are one piece); EXT_ZERO: zeros (absent or zero-fill pages);
        EXT_READ: anything else (spill, descriptors, fill bytes, a partial
        page), to be read through ``reader``. Computed with numpy on the index
        so that a copier does no per-page Python work beyond one piece each.

        Returned as a (pieces, 3) int64 array: building a list of tuples for
        2048 pages costs more than the copy it describes.

        >>> pm = PageMap(4); pm.loc[1:3] = [enc(KIND_SRC, 100), enc(KIND_SRC, 4196)]
        >>> pm.extents(0, 4 * 4096).tolist()
        [[0, 4096, -1], [4096, 8192, 100], [12288, 4096, -1]]
        """
        ps = self.page_size
        if offset % ps or length % ps or length <= 0:
            return np.array([(0, length, EXT_READ)] if length > 0 else [], dtype=np.int64).reshape(-1, 3)
        loc = self.loc[offset // ps : (offset + length) // ps]
        where = np.where(
            loc >> _SHIFT == KIND_SRC,
            loc & _VALUE_MASK,
            np.where((loc == ABSENT) | (loc == enc(KIND_FILL, 0)), EXT_ZERO, EXT_READ),
        )
        # A piece continues while the source stays contiguous (src) or the kind repeats.
        prev, cur = where[:-1], where[1:]
        joins = np.where(cur >= 0, (prev >= 0) & (cur == prev + ps), cur == prev)
        starts = np.flatnonzero(np.concatenate(([True], ~joins)))
        sizes = np.diff(np.append(starts, len(where))) * ps
        return np.stack([starts * ps, sizes, where[starts]], axis=1)

    def reader(self, fetch):
        """A segment ``read(offset, length)`` over this map.

        ``fetch(kind, value, page_no) -> bytes`` returns one page for a present
        entry; consecutive KIND_SRC pages that are contiguous in the source are
        fetched with one call to ``fetch(KIND_SRC, offset, page_no, n_pages)``
        because that is the common case for ELF-like and mapped-ram layouts.
        """
        ps = self.page_size
        loc = self.loc

        def read(offset, length):
            first = offset // ps
            last = (offset + length - 1) // ps
            # Preallocated and zero: absent and zero pages cost nothing. One
            # conversion to Python ints per call, since indexing numpy scalars
            # page by page costs more than the page copies themselves.
            out = bytearray((last - first + 1) * ps)
            locs = loc[first : last + 1].tolist()
            i, count = 0, len(locs)
            while i < count:
                v = locs[i]
                kind = v >> _SHIFT
                if kind == KIND_SRC:
                    n = 1
                    while i + n < count and locs[i + n] == v + n * ps:
                        n += 1
                    out[i * ps : (i + n) * ps] = fetch(KIND_SRC, v & _VALUE_MASK, first + i, n)
                    i += n
                    continue
                if kind == KIND_FILL:
                    if v & 0xFF:
                        out[i * ps : (i + 1) * ps] = bytes([v & 0xFF]) * ps
                elif v != ABSENT:
                    out[i * ps : (i + 1) * ps] = fetch(kind, v & _VALUE_MASK, first + i, 1)
                i += 1
            skip = offset - first * ps
            if skip == 0 and length == len(out):
                return bytes(out)
            return bytes(out[skip : skip + length])

        return read


def _bool_runs(mask, page_size):
    if not len(mask):
        return []
    m = np.concatenate(([False], mask, [False]))
    edges = np.flatnonzero(m[1:] != m[:-1])
    starts, ends = edges[0::2], edges[1::2]
    return [(int(s) * page_size, int(e - s) * page_size) for s, e in zip(starts, ends)]


class Cursor:
    """Sequential reads with an absolute position over a seekable source
    (``pread``) or a plain stream (``read``), raising MemoryFormatError with the
    offset when the data ends early.

    >>> import io
    >>> c = Cursor("mem", stream=io.BytesIO(b"QEVM\\x00\\x00\\x00\\x03"))
    >>> c.read(4), c.be32(), c.tell()
    (b'QEVM', 3, 8)
    """

    def __init__(self, path, *, source=None, stream=None, start=0, bufsize=1 << 20):
        self.path = path
        self.source = source
        self.stream = stream
        self.seekable = source is not None
        self._buf = b""
        self._bpos = 0
        self._base = start  # absolute offset of _buf[0]
        self._bufsize = bufsize

    def tell(self):
        return self._base + self._bpos

    def seek(self, offset):
        if not self.seekable:
            raise MemoryFormatError(self.path, self.tell(), "cannot seek in a compressed stream")
        self._buf, self._bpos, self._base = b"", 0, offset

    def _fill(self, need):
        have = len(self._buf) - self._bpos
        want = max(need - have, self._bufsize)
        if self.seekable:
            # Re-read from the current position instead of joining the unread
            # tail to new bytes: one copy of the buffer per fill, not three.
            self._base += self._bpos
            self._buf, self._bpos = self.source.pread(self._base, max(need, self._bufsize)), 0
            return
        parts, got = [], 0
        while got < need - have:  # decompressors may return short reads
            try:
                piece = self.stream.read(want)
            except MemoryFormatError:
                raise
            except Exception as exc:  # noqa: BLE001 - codecs raise assorted types
                # gzip/bz2/lzma/zstd raise these for corrupt or cut-off data.
                raise MemoryFormatError(
                    self.path, self.tell() + have + got, f"compressed stream unreadable: {exc}"
                ) from None
            if not piece:
                break
            parts.append(piece)
            got += len(piece)
        more = b"".join(parts)
        self._base += self._bpos
        self._buf = self._buf[self._bpos :] + more
        self._bpos = 0

    def read(self, n):
        if len(self._buf) - self._bpos < n:
            self._fill(n)
            if len(self._buf) - self._bpos < n:
                raise MemoryFormatError(
                    self.path,
                    self.tell(),
                    f"truncated: needed {n} bytes, file ends at {self._base + len(self._buf):#x}",
                )
        b = self._buf[self._bpos : self._bpos + n]
        self._bpos += n
        return b

    def skip(self, n):
        if n <= len(self._buf) - self._bpos:
            self._bpos += n  # the hot path: skipping a page already buffered
        elif self.seekable:
            target = self.tell() + n
            if self.source.size is not None and target > self.source.size:
                raise MemoryFormatError(
                    self.path, self.tell(), f"truncated: {n} bytes announced, file ends at {self.source.size:#x}"
                )
            self.seek(target)
        else:
            while n > 0:  # a stream: read through in bounded pieces
                step = min(n, self._bufsize)
                self.read(step)
                n -= step

    def peek(self, n=1):
        """Up to n bytes without consuming them (b'' at end of data)."""
        if len(self._buf) - self._bpos < n:
            self._fill(n)
        return self._buf[self._bpos : self._bpos + n]

    def u8(self):
        return self.read(1)[0]

    def be16(self):
        return int.from_bytes(self.read(2), "big")

    def be32(self):
        return int.from_bytes(self.read(4), "big")

    def be64(self):
        return int.from_bytes(self.read(8), "big")
