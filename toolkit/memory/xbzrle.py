"""XBZRLE, QEMU's delta encoding of a page against its previous content.

>>> xbzrle_decode(bytes([1, 2]) + b"XY", b"abcd")
b'aXYd'
"""

from __future__ import annotations

from toolkit.errors import MemoryFormatError


def xbzrle_decode(src, old, path="", at=0):
    """Apply an XBZRLE delta: (unchanged-run, changed-run, bytes) pairs, ULEB128 lengths.

    >>> xbzrle_decode(bytes([1, 2]) + b"XY", b"abcd")
    b'aXYd'
    """
    out = bytearray(old)
    i = d = 0

    def uleb():
        nonlocal i
        val = shift = 0
        for _ in range(3):
            if i >= len(src):
                break
            b = src[i]
            i += 1
            val |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return val
        raise MemoryFormatError(path, at, "XBZRLE run length malformed")

    while i < len(src):
        d += uleb()
        n = uleb()
        if n == 0 or d + n > len(out) or i + n > len(src):
            raise MemoryFormatError(path, at, "XBZRLE run overflows the page")
        out[d : d + n] = src[i : i + n]
        d += n
        i += n
    return bytes(out)
