"""The one shape every memory format is turned into: a guest-physical address space.

A reader module builds a list of *segments* (plain dicts) and hands them to
:class:`MemoryImage`; nothing else about a format leaks out::

    {"gpa": 0x0, "length": 0xA0000, "read": fn(offset, length) -> bytes,
     "runs": [(offset, length), ...] or None}   # None: the whole segment has data

``"runs_merged": True`` says a lone segment's runs are sorted and merged already.

Example::

    >>> img = MemoryImage(format="raw", path="x", info={}, segments=[
    ...     {"gpa": 0x1000, "length": 4, "read": lambda o, n: b"abcd"[o:o + n], "runs": None}])
    >>> img.read(0xFFE, 4)
    b'\\x00\\x00ab'
    >>> img.runs
    [(4096, 4)]
"""

from __future__ import annotations

import bisect
import os

from toolkit.errors import MemoryFormatError


class FileSource:
    """Positional reads on a read-only file descriptor (no shared seek state).

    >>> import tempfile; f = tempfile.NamedTemporaryFile(); _ = f.write(b"hello"); f.flush()
    >>> FileSource(f.name).pread(1, 3)
    b'ell'
    """

    def __init__(self, path):
        self.path = str(path)
        self.fd = os.open(self.path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size

    def pread(self, offset, length):
        return os.pread(self.fd, length, offset) if length > 0 else b""

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def merge_runs(runs):
    """Sort and coalesce (start, length) ranges that touch or overlap."""
    out = []
    for start, length in sorted(r for r in runs if r[1] > 0):
        if out and start <= out[-1][0] + out[-1][1]:
            prev_start, prev_len = out[-1]
            out[-1] = (prev_start, max(prev_len, start + length - prev_start))
        else:
            out.append((start, length))
    return out


class MemoryImage:
    """A guest-physical address space backed by one memory artefact.

    Attributes: ``format``, ``path``, ``info`` (JSON-able facts), ``runs``
    (sorted, non-overlapping (gpa, length) ranges whose content is known —
    data or known-zero pages), ``diagnostics`` (list of dicts), ``notes`` (raw
    ELF note bytes to carry into a converted core, or b"").

    >>> with MemoryImage(format="raw", path="x", info={}, segments=[]) as img:
    ...     img.read(0, 2)
    b'\\x00\\x00'
    """

    def __init__(self, *, format, path, info, segments, diagnostics=None, notes=b"", closers=()):
        self.format = format
        self.path = str(path)
        self.info = info
        # Kept as the same list object: readers append to it when a page turns out
        # corrupt at read time.
        self.diagnostics = diagnostics if isinstance(diagnostics, list) else list(diagnostics or [])
        self.notes = notes
        self._closers = list(closers)
        segs = sorted((s for s in segments if s["length"] > 0), key=lambda s: s["gpa"])
        for a, b in zip(segs, segs[1:]):
            if a["gpa"] + a["length"] > b["gpa"]:
                raise MemoryFormatError(path, "segment table", f"overlapping ranges at gpa {b['gpa']:#x}")
        self._segs = segs
        self._starts = [s["gpa"] for s in segs]
        self._data_runs = None
        if len(segs) == 1 and segs[0].get("runs_merged"):
            # One segment whose runs are already sorted and merged (an ELF core's
            # loads): kept as they are, not copied three times over.
            s = segs[0]
            self.runs = s["runs"] if s["gpa"] == 0 else [(s["gpa"] + o, n) for o, n in s["runs"]]
        else:
            runs = []
            for s in segs:
                if s.get("runs") is None:
                    runs.append((s["gpa"], s["length"]))
                else:
                    runs.extend((s["gpa"] + o, n) for o, n in s["runs"])
            self.runs = merge_runs(runs)

    @property
    def data_runs(self):
        """The runs less what is known to be zero (zero pages, an ELF load's
        zero tail): what a scanner needs to read. A segment may say it with
        ``"data_runs"`` (relative ranges, or a callable giving them); else all
        its runs hold data.

        >>> MemoryImage(format="raw", path="x", info={}, segments=[{"gpa": 0, "length": 8192,
        ...     "read": None, "runs": None, "data_runs": [(4096, 4096)]}]).data_runs
        [(4096, 4096)]
        """
        if self._data_runs is None:
            runs = []
            for s in self._segs:
                rel = s.get("data_runs", s.get("runs"))
                rel = rel() if callable(rel) else rel
                if rel is None:
                    runs.append((s["gpa"], s["length"]))
                else:
                    runs.extend((s["gpa"] + o, n) for o, n in rel)
            self._data_runs = merge_runs(runs)
        return self._data_runs

    @property
    def size(self):
        """One past the highest guest-physical address with known content."""
        return self.runs[-1][0] + self.runs[-1][1] if self.runs else 0

    def read(self, gpa, length):
        """Bytes at [gpa, gpa+length); zeros where the artefact holds nothing."""
        if gpa < 0 or length < 0:
            raise ValueError("negative address or length")
        end = gpa + length
        i = max(bisect.bisect_right(self._starts, gpa) - 1, 0)
        s = self._segs[i] if i < len(self._segs) else None
        if s is not None and s["gpa"] <= gpa and end <= s["gpa"] + s["length"]:
            # inside one segment (nearly every read): its bytes as they come, no zeroed copy to fill
            data = s["read"](gpa - s["gpa"], length)
            if len(data) == length and type(data) is bytes:
                return data
            return bytes(data[:length]) + bytes(length - min(len(data), length))
        out = bytearray(length)
        while i < len(self._segs):
            s = self._segs[i]
            if s["gpa"] >= end:
                break
            lo = max(gpa, s["gpa"])
            hi = min(end, s["gpa"] + s["length"])
            if lo < hi:
                data = s["read"](lo - s["gpa"], hi - lo)
                out[lo - gpa : lo - gpa + len(data)] = data
            i += 1
        return bytes(out)

    def close(self):
        while self._closers:
            self._closers.pop()()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<MemoryImage {self.format} {self.path} runs={len(self.runs)} size={self.size:#x}>"
