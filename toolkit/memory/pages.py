"""Per-page location index shared by the page-oriented readers (migration
stream, kdump, mapped-ram).

Why an index and not a copy: a guest of N GiB has N*262144 pages; one int64
per page (8 bytes, so 2 MiB per GiB of guest RAM) says where each page lives,
and page bytes stay in the evidence file until someone reads them.

Why sparse: the RAM size comes from a header, and headers are hostile. The
index is a table of 512-page *chunks* (4 KiB of index each), created when a
record first lands in one, so a stream that declares 1 TiB and sends three
pages costs three chunks; every computation over the index (runs, missing
ranges, extents) walks the chunks that exist, a bounded group at a time. A
chunk set wholesale to one value (mapped-ram's zero pages) is stored as that
value. What chunks cost is charged to an :class:`IndexBudget`.

Encoding of entries (int64)::

    0                       page absent (never written / not dumped)
    (KIND << 56) | value    KIND_SRC: raw page at source offset `value`
                            KIND_FILL: page filled with byte `value & 0xff`
                            KIND_SPILL: raw page at offset `value` of the spill file
                            KIND_DESC: format-specific record number `value`

>>> pm = PageMap(1 << 28)   # 1 TiB of 4 KiB pages, declared
>>> pm.set_one(1, enc(KIND_FILL, 0)); pm.runs(), len(pm.chunks)
([(4096, 4096)], 1)
"""

from __future__ import annotations

import numpy as np

from toolkit.errors import MemoryFormatError
from toolkit.limits import INDEX_PER_EVIDENCE_BYTE, env_name, human, limit

ABSENT = 0
KIND_SRC, KIND_FILL, KIND_SPILL, KIND_DESC = 1, 2, 3, 4
EXT_ZERO, EXT_READ = -1, -2  # PageMap.extents: zeros / read through the reader
_SHIFT = 56
_VALUE_MASK = (1 << _SHIFT) - 1
CHUNK_BITS = 9
CHUNK = 1 << CHUNK_BITS  # index entries per chunk: 4 KiB of index, 2 MiB of 4 KiB pages
_IN_CHUNK = CHUNK - 1
_GROUP = 1024  # chunks per step when computing runs: a few MiB of temporaries
MAX_STRIDE_GAP = 256  # bytes between strided source pages read at once (a record header, a block name)


def enc(kind, value):
    return (kind << _SHIFT) | value


def _key_runs(numbers):
    """(start, stop) rows of runs of consecutive integers in a sorted array.

    >>> _key_runs(np.array([1, 2, 3, 7])).tolist()
    [[1, 4], [7, 8]]
    """
    if not len(numbers):
        return np.empty((0, 2), dtype=np.int64)
    cuts = np.flatnonzero(numbers[1:] != numbers[:-1] + 1) + 1
    return np.stack([numbers[np.r_[0, cuts]], numbers[np.r_[cuts - 1, len(numbers) - 1]] + 1], axis=1)


class IndexBudget:
    """Index memory one reader may spend: ``limits.index_floor`` plus
    INDEX_PER_EVIDENCE_BYTE bytes per byte of evidence read so far.

    A dense index costs 8 bytes per page and the smallest record that makes a
    page present is 9 bytes (a migration ZERO record), so real evidence never
    comes near it; records scattered one per chunk over a declared terabyte do.
    ``consumed()`` is how much evidence has been read (a stream position, a
    file size); ``charge`` raises MemoryFormatError naming the file and offset.

    >>> b = IndexBudget("x.qevm", lambda: 0); b.charge(4096); b.used
    4096
    """

    def __init__(self, path, consumed):
        self.path = str(path)
        self.consumed = consumed
        self.used = 0
        self.floor = limit("index_floor")

    def charge(self, nbytes, at=None):
        self.used += nbytes
        read = self.consumed()
        if self.used > self.floor + INDEX_PER_EVIDENCE_BYTE * read:
            raise MemoryFormatError(
                self.path,
                read if at is None else at,
                f"page index needs more than {human(self.used)} for {human(read)} of evidence: records "
                f"are scattered over far more RAM than they hold (raise {env_name('index_floor')} if this is real)",
            )


class PageMap:
    """Where each page of one linear range (a RAM block, a PFN space) lives.

    ``chunks``: {chunk number: int64 array of CHUNK entries, or one int for
    every entry}; absent chunks are absent pages. ``budget``: an IndexBudget
    charged for every chunk array created (None: not charged).
    """

    def __init__(self, npages, page_size=4096, budget=None):
        self.npages = int(npages)
        self.page_size = page_size
        self.budget = budget
        self.path = budget.path if budget is not None else "page index"
        self.chunks = {}
        self._consts = {}
        self._order = None  # sorted chunk numbers, rebuilt after one is added
        self._runs = None  # cached present runs, dropped on every write

    # ------------------------------------------------------------ writes
    def _writable(self, c, at=None):
        self._runs = None
        cur = self.chunks.get(c)
        if isinstance(cur, np.ndarray):
            return cur
        if self.budget is not None:
            self.budget.charge(CHUNK * 8, at)
        if cur is None:
            self._order = None
        arr = self.chunks[c] = np.full(CHUNK, cur or ABSENT, dtype=np.int64)
        return arr

    def set_one(self, page, value, at=None):
        """Entry ``page`` becomes ``value``."""
        self._writable(page >> CHUNK_BITS, at)[page & _IN_CHUNK] = value

    def set(self, pages, values, at=None):
        """Entries ``pages`` (< npages) become ``values``; of a repeated page the last wins.

        >>> pm = PageMap(8); pm.set([3, 1, 3], [7, 8, 9]); pm.get(3), pm.get(1)
        (9, 8)
        """
        pages = np.asarray(pages, dtype=np.int64)
        if not len(pages):
            return
        values = np.broadcast_to(np.asarray(values, dtype=np.int64), pages.shape)
        if len(pages) > 1 and not (pages[1:] > pages[:-1]).all():
            # numpy does not promise which of repeated stores wins: keep each page's last
            uniq, last_rev = np.unique(pages[::-1], return_index=True)
            pages, values = uniq, values[::-1][last_rev]
        cids = pages >> CHUNK_BITS
        cuts = np.flatnonzero(cids[1:] != cids[:-1]) + 1
        for lo, hi in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(pages)].tolist()):
            self._writable(int(cids[lo]), at)[pages[lo:hi] & _IN_CHUNK] = values[lo:hi]

    def put_range(self, first, values, at=None):
        """Entries [first, first + len(values)) become ``values`` (a dense block,
        e.g. a mapped-ram bitmap); a whole chunk of one value is kept as that value."""
        values = np.asarray(values, dtype=np.int64)
        stop = first + len(values)
        lo = min(-(-first // CHUNK) * CHUNK, stop)  # first whole chunk
        hi = max(stop // CHUNK * CHUNK, lo)  # end of the last whole chunk
        for a, b in ((first, lo), (hi, stop)):  # the partial chunks at either end
            if a < b:
                self._put_partial(a, values[a - first : b - first], at)
        if hi > lo:
            rows = values[lo - first : hi - first].reshape(-1, CHUNK)
            uniform = (rows == rows[:, :1]).all(axis=1)
            numbers = np.arange(lo >> CHUNK_BITS, hi >> CHUNK_BITS)
            self._put_consts(numbers[uniform], rows[uniform, 0])
            for c, row in zip(numbers[~uniform].tolist(), rows[~uniform]):
                self._writable(c, at)[:] = row

    def fill(self, first, stop, value, at=None):
        """Entries [first, stop) become ``value`` without building them: whole chunks hold the value itself."""
        lo = min(-(-first // CHUNK) * CHUNK, stop)
        hi = max(stop // CHUNK * CHUNK, lo)
        for a, b in ((first, lo), (hi, stop)):
            if a < b:
                self._put_partial(a, np.full(b - a, value, dtype=np.int64), at)
        if hi > lo:
            numbers = np.arange(lo >> CHUNK_BITS, hi >> CHUNK_BITS)
            self._put_consts(numbers, np.full(len(numbers), value, dtype=np.int64))

    def _put_partial(self, first, values, at):
        self._writable(first >> CHUNK_BITS, at)[first & _IN_CHUNK : (first & _IN_CHUNK) + len(values)] = values

    def _put_consts(self, numbers, values):
        self._runs, self._order = None, None
        for c, v in zip(numbers.tolist(), values.tolist()):
            if v == ABSENT:
                self.chunks.pop(c, None)
            else:
                self.chunks[c] = self._consts.setdefault(v, v)  # one int object per distinct fill

    # ------------------------------------------------------------ reads
    def get(self, page):
        """Entry ``page`` (ABSENT when no record set it)."""
        cur = self.chunks.get(page >> CHUNK_BITS)
        if cur is None:
            return ABSENT
        return int(cur[page & _IN_CHUNK]) if isinstance(cur, np.ndarray) else cur

    def _sorted_chunks(self):
        if self._order is None:
            self._order = np.array(sorted(self.chunks), dtype=np.int64)
        return self._order

    def window(self, first, stop):
        """Entries [first, stop) as a new dense int64 array (absent = 0)."""
        out = np.zeros(max(stop - first, 0), dtype=np.int64)
        if stop <= first:
            return out
        lo_c, hi_c = first >> CHUNK_BITS, (stop - 1) >> CHUNK_BITS
        if hi_c - lo_c < 64:
            numbers = range(lo_c, hi_c + 1)
        else:  # a long window over a sparse map: only the chunks that exist
            order = self._sorted_chunks()
            numbers = order[np.searchsorted(order, lo_c) : np.searchsorted(order, hi_c, "right")].tolist()
        for c in numbers:
            cur = self.chunks.get(c)
            if cur is None:
                continue
            base = c << CHUNK_BITS
            lo, hi = max(first, base), min(stop, base + CHUNK)
            out[lo - first : hi - first] = cur[lo - base : hi - base] if isinstance(cur, np.ndarray) else cur
        return out

    def _entries(self, first, stop):
        """Entries [first, stop) as a list of ints: what a reader walks. Within one
        chunk (a page read, the common case) without building an array first."""
        c = first >> CHUNK_BITS
        if (stop - 1) >> CHUNK_BITS != c:
            return self.window(first, stop).tolist()
        cur = self.chunks.get(c)
        if cur is None:
            return [ABSENT] * (stop - first)
        if isinstance(cur, np.ndarray):
            return cur[first & _IN_CHUNK : ((stop - 1) & _IN_CHUNK) + 1].tolist()
        return [cur] * (stop - first)

    def page_runs(self, data_only=False):
        """(first page, stop page) runs of present pages, in order; with
        ``data_only``, leaving out pages known to be zero (nothing to scan there).

        Chunks holding one value count whole; chunks holding arrays are
        examined ``_GROUP`` at a time, so temporaries stay a few MiB whatever
        the declared size. At most ``limits.max_runs`` runs.
        """
        if self._runs is not None and data_only in self._runs:
            return self._runs[data_only]
        zero = enc(KIND_FILL, 0)
        order = self._sorted_chunks()
        values = [self.chunks[c] for c in order.tolist()]
        whole = np.fromiter((not isinstance(v, np.ndarray) for v in values), bool, len(order))
        counted = whole
        if data_only:  # a chunk holding the zero fill holds nothing to scan
            counted = np.fromiter((not isinstance(v, np.ndarray) and v != zero for v in values), bool, len(order))
        pieces = [_key_runs(order[counted]) << CHUNK_BITS]
        arrays = order[~whole]
        for g in range(0, len(arrays), _GROUP):
            keys = arrays[g : g + _GROUP]
            rows = np.stack([self.chunks[c] for c in keys.tolist()])
            keep = (rows != ABSENT) & (rows != zero) if data_only else rows != ABSENT
            pieces.append(_key_runs(((keys[:, None] << CHUNK_BITS) + np.arange(CHUNK))[keep]))
        runs = np.concatenate(pieces)
        runs = runs[np.argsort(runs[:, 0], kind="stable")]
        runs[:, 1] = np.minimum(runs[:, 1], self.npages)
        runs = runs[runs[:, 0] < runs[:, 1]]
        if len(runs):  # join runs that touch (across chunk and group boundaries)
            new = np.r_[True, runs[1:, 0] > runs[:-1, 1]]
            runs = np.stack([runs[new, 0], np.maximum.reduceat(runs[:, 1], np.flatnonzero(new))], axis=1)
        cap = limit("max_runs")
        if len(runs) > cap:
            raise MemoryFormatError(
                self.path,
                "page index",
                f"more than {cap} separate ranges of memory (raise {env_name('max_runs')} if this is real)",
            )
        self._runs = self._runs or {}
        self._runs[data_only] = [tuple(r) for r in runs.tolist()]
        return self._runs[data_only]

    def runs(self):
        """(offset, length) ranges of pages that are present (data or zero)."""
        ps = self.page_size
        return [(s * ps, (e - s) * ps) for s, e in self.page_runs()]

    def data_runs(self):
        """(offset, length) ranges of present pages that are not known to be zero.

        >>> pm = PageMap(4); pm.set([0, 1, 2], [enc(KIND_FILL, 0), enc(KIND_SRC, 8192), enc(KIND_FILL, 7)])
        >>> pm.runs(), pm.data_runs()
        ([(0, 12288)], [(4096, 8192)])
        """
        ps = self.page_size
        return [(s * ps, (e - s) * ps) for s, e in self.page_runs(data_only=True)]

    def missing(self):
        """(offset, length) ranges of absent pages."""
        ps, out, pos = self.page_size, [], 0
        for s, e in self.page_runs():
            if s > pos:
                out.append((pos * ps, (s - pos) * ps))
            pos = e
        if pos < self.npages:
            out.append((pos * ps, (self.npages - pos) * ps))
        return out

    def extents(self, offset, length):
        """[offset, offset+length) as (rel, n, where) rows for a bulk copier.

        ``where`` >= 0: n bytes at that source offset (pages contiguous in the
        source are one piece); EXT_ZERO: zeros (absent or zero-fill pages);
        EXT_READ: anything else (spill, descriptors, fill bytes, a partial
        page), to be read through ``reader``. Computed with numpy on the index
        so that a copier does no per-page Python work beyond one piece each.

        Returned as a (pieces, 3) int64 array: building a list of tuples for
        2048 pages costs more than the copy it describes.

        >>> pm = PageMap(4); pm.set([1, 2], [enc(KIND_SRC, 100), enc(KIND_SRC, 4196)])
        >>> pm.extents(0, 4 * 4096).tolist()
        [[0, 4096, -1], [4096, 8192, 100], [12288, 4096, -1]]
        """
        ps = self.page_size
        if offset % ps or length % ps or length <= 0:
            return np.array([(0, length, EXT_READ)] if length > 0 else [], dtype=np.int64).reshape(-1, 3)
        loc = self.window(offset // ps, (offset + length) // ps)
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

    def reader(self, fetch, batched_records: bool = False, read_source=None):
        """A segment ``read(offset, length)`` over this map.

        ``fetch(kind, value, page_no) -> bytes`` returns one page for a present
        entry; consecutive KIND_SRC pages that are contiguous in the source are
        fetched with one call to ``fetch(KIND_SRC, offset, page_no, n_pages)``
        because that is the common case for ELF-like and mapped-ram layouts.
        With ``batched_records``, consecutive KIND_DESC pages whose record
        numbers follow each other are fetched with one call too
        (``fetch(KIND_DESC, first record, page_no, n_pages)``: a kdump's
        descriptors and compressed pages lie in page order, read at once).
        With ``read_source(offset, n_bytes)``, KIND_SRC pages that lie at a
        fixed stride a little over a page (a migration stream: each page after
        its 8-byte header) are read with one call and cut out of it.
        """
        ps = self.page_size

        def read(offset, length):
            first = offset // ps
            last = (offset + length - 1) // ps
            # Preallocated and zero: absent and zero pages cost nothing. One
            # conversion to Python ints per call, since indexing numpy scalars
            # page by page costs more than the page copies themselves.
            out = bytearray((last - first + 1) * ps)
            locs = self._entries(first, last + 1)
            i, count = 0, len(locs)
            while i < count:
                v = locs[i]
                kind = v >> _SHIFT
                if kind == KIND_SRC:
                    n = 1
                    while i + n < count and locs[i + n] == v + n * ps:
                        n += 1
                    stride = locs[i + 1] - v if n == 1 and i + 1 < count else 0
                    if read_source is not None and ps < stride <= ps + MAX_STRIDE_GAP:
                        n = 2
                        while i + n < count and locs[i + n] == v + n * stride:
                            n += 1
                        want = (n - 1) * stride + ps
                        span = np.frombuffer(read_source(v & _VALUE_MASK, want), np.uint8)
                        if len(span) < want:  # the source ends early: the rest reads as zeros
                            span = np.concatenate([span, np.zeros(want - len(span), np.uint8)])
                        pages = np.lib.stride_tricks.as_strided(span, shape=(n, ps), strides=(stride, 1))
                        np.frombuffer(out, np.uint8)[i * ps : (i + n) * ps].reshape(n, ps)[:] = pages
                        i += n
                        continue
                    out[i * ps : (i + n) * ps] = fetch(KIND_SRC, v & _VALUE_MASK, first + i, n)
                    i += n
                    continue
                if kind == KIND_DESC and batched_records:
                    n = 1
                    while i + n < count and locs[i + n] == v + n:
                        n += 1
                    out[i * ps : (i + n) * ps] = fetch(KIND_DESC, v & _VALUE_MASK, first + i, n)
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

    # ------------------------------------------------------------ persistence
    def export(self):
        """The chunks as arrays for ``np.savez`` (see :meth:`restore`)."""
        arrays = sorted((c, v) for c, v in self.chunks.items() if isinstance(v, np.ndarray))
        fills = sorted((c, v) for c, v in self.chunks.items() if not isinstance(v, np.ndarray))
        return {
            "keys": np.array([c for c, _ in arrays], dtype=np.int64),
            "data": np.array([v for _, v in arrays], dtype=np.int64).reshape(-1, CHUNK),
            "fill_keys": np.array([c for c, _ in fills], dtype=np.int64),
            "fill_values": np.array([v for _, v in fills], dtype=np.int64),
        }

    @classmethod
    def restore(cls, npages, page_size, arrays):
        """A PageMap from :meth:`export`'s arrays.

        >>> pm = PageMap(1024); pm.set_one(600, 5); PageMap.restore(1024, 4096, pm.export()).get(600)
        5
        """
        pm = cls(npages, page_size)
        pm.chunks = {int(c): row.copy() for c, row in zip(arrays["keys"], arrays["data"])}
        pm.chunks.update(zip(arrays["fill_keys"].tolist(), arrays["fill_values"].tolist()))
        return pm
