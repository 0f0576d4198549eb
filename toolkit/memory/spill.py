"""Where the pages of a stream that cannot be read in place are kept: the spill.

A compressed stream cannot be seeked, so the bytes of its pages (and of
XBZRLE/COMPRESS pages in any stream) are written to a file under the case's
``derived/`` once and read from there. The spill is bounded by construction
(one slot per page of the declared RAM) and by the ceilings in
``toolkit.limits`` (``max_spill``, ``min_free_disk``).

>>> import tempfile
>>> Spill(tempfile.TemporaryFile()).put(b"x" * 4096)
0
"""

from __future__ import annotations

import os

from toolkit.errors import MemoryFormatError
from toolkit.limits import env_name, human, limit


class Spill:
    """Page store for pages that cannot be read in place (a decompressed
    stream's pages, XBZRLE and COMPRESS results): one slot per page.

    A page sent again overwrites its own slot (``put(page, slot)``), so the
    file never holds more than one copy of each page of the declared RAM:
    a stream resending one page forever grows nothing. Writing past ``cap``
    bytes, past ``limits.max_spill``, or leaving less than
    ``limits.min_free_disk`` on the file's filesystem stops the index with a
    MemoryFormatError naming the stream and offset (the case disk is not
    filled to the last byte first).

    >>> import tempfile; sp = Spill(tempfile.TemporaryFile())
    >>> a = sp.put(b"x" * 4096); b = sp.put(b"y" * 4096, slot=a); (a, b, sp.size)
    (0, 0, 4096)
    """

    FREE_CHECK_EVERY = 64 << 20  # bytes appended between two free-space checks

    def __init__(self, fileobj, path="spill", cap=None):
        self.f = fileobj
        self.f.seek(0, 2)
        self.size = self.f.tell()
        self.path = str(path)
        self.cap = min(cap, limit("max_spill")) if cap is not None else limit("max_spill")
        self.min_free = limit("min_free_disk")
        self._unchecked = self.FREE_CHECK_EVERY  # check before the first append
        self._dirty = False

    def put(self, page, slot=None, at=None):
        """Store ``page`` in ``slot`` (an offset put() returned before) or a new slot; returns the offset."""
        if slot is not None:
            if self._dirty:
                self.f.flush()
                self._dirty = False
            os.pwrite(self.f.fileno(), page, slot)
            return slot
        if self.size + len(page) > self.cap:
            raise MemoryFormatError(
                self.path,
                "spill" if at is None else at,
                f"decompressed pages would exceed {human(self.cap)} (the RAM the stream declares, or "
                f"{env_name('max_spill')})",
            )
        self._unchecked += len(page)
        if self._unchecked >= self.FREE_CHECK_EVERY:
            self._check_free(at)
        off = self.size
        self.f.write(page)
        self.size += len(page)
        self._dirty = True
        return off

    def _check_free(self, at):
        self._unchecked = 0
        try:
            st = os.fstatvfs(self.f.fileno())
        except OSError:  # not a filesystem that says (a pipe, some FUSE): the cap still holds
            return
        free = st.f_bavail * st.f_frsize
        if free < self.min_free + self.FREE_CHECK_EVERY:
            raise MemoryFormatError(
                self.path,
                "spill" if at is None else at,
                f"only {human(free)} left where decompressed pages are written; stopped before the disk "
                f"fills (keeps {human(self.min_free)} free: {env_name('min_free_disk')})",
            )

    def pread(self, offset, n):
        if self._dirty:
            self.f.flush()
            self._dirty = False
        return os.pread(self.f.fileno(), n, offset)

    def close(self):
        self.f.close()
