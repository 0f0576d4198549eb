"""A sequential reader with an absolute position over a seekable source or a
plain stream (a decompressor), shared by the QEVM readers.

>>> import io
>>> c = Cursor("mem", stream=io.BytesIO(b"QEVM\\x00\\x00\\x00\\x03"))
>>> c.read(4), c.be32(), c.tell()
(b'QEVM', 3, 8)
"""

from __future__ import annotations

from toolkit.errors import MemoryFormatError


class Cursor:
    """Sequential reads with an absolute position over a seekable source
    (``pread``) or a plain stream (``read``), raising MemoryFormatError with the
    offset when the data ends early.

    >>> import io
    >>> c = Cursor("mem", stream=io.BytesIO(b"QEVM\\x00\\x00\\x00\\x03"))
    >>> c.read(4), c.be32(), c.tell()
    (b'QEVM', 3, 8)
    """

    def __init__(self, path, *, source=None, stream=None, start=0, bufsize=1 << 20, cap=None):
        self.path = path
        self.source = source
        self.stream = stream
        self.seekable = source is not None
        self._buf = b""
        self._bpos = 0
        self._base = start  # absolute offset of _buf[0]
        self._bufsize = bufsize
        # cap() -> (bytes a stream may yield, why): decompressors are checked
        # as they go, so a small file cannot inflate without end.
        self.cap = cap

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
        if self.cap is not None:
            most, why = self.cap()
            if self._base + len(self._buf) + len(more) > most:
                raise MemoryFormatError(self.path, most, why)
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
