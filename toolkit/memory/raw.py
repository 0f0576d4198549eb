"""Raw physical images (the file *is* the address space) and LiME dumps.

LiME: repeated 32-byte headers (``EMiL`` magic as little-endian u32
0x4C694D45, u32 version 1, u64 start, u64 end inclusive, 8 reserved bytes),
each followed by end-start+1 bytes of memory.

>>> lime_detect(b"EMiL\\x01\\x00\\x00\\x00")
True
"""

from __future__ import annotations

import struct

from toolkit.errors import MemoryFormatError
from toolkit.memory.image import FileSource, MemoryImage
from toolkit.schemas import diagnostic

LIME_MAGIC = b"EMiL"
MAX_LIME_RANGES = 1 << 20


def raw_detect(head):
    return True  # raw is the fallback: anything is a physical image


def raw_probe(path):
    src = FileSource(path)
    try:
        return {"format": "raw", "ram_bytes": src.size}
    finally:
        src.close()


def raw_open(path, **_opts):
    """The file bytes at offset N are guest-physical address N.

    >>> with raw_open("guest.raw") as img:  # doctest: +SKIP
    ...     img.runs
    """
    src = FileSource(path)
    seg = {"gpa": 0, "length": src.size, "read": lambda o, n: src.pread(o, n), "runs": None}
    return MemoryImage(format="raw", path=path, info={"ram_bytes": src.size}, segments=[seg], closers=[src.close])


def lime_detect(head):
    return head[:4] == LIME_MAGIC


def _lime_ranges(src, path):
    ranges, diags, pos = [], [], 0
    while pos < src.size:
        hdr = src.pread(pos, 32)
        if len(hdr) < 32:
            diags.append(
                diagnostic(
                    "warning", "trailing bytes", f"{path}@{pos:#x}", "fewer than 32 bytes after the last LiME range"
                )
            )
            break
        magic, version, start, end = struct.unpack_from("<4sIQQ", hdr)
        if magic != LIME_MAGIC:
            raise MemoryFormatError(path, pos, f"LiME header magic {magic!r} is not b'EMiL'")
        if version != 1 or end < start:
            raise MemoryFormatError(path, pos, f"LiME header version {version} / range {start:#x}-{end:#x} is invalid")
        length = end - start + 1
        have = min(length, src.size - pos - 32)
        if have < length:
            diags.append(
                diagnostic(
                    "error",
                    "memory range missing",
                    f"{path}@{src.size:#x}",
                    "file truncated inside a LiME range",
                    missing=[(start + have, length - have)],
                )
            )
        ranges.append((start, have, pos + 32))
        if len(ranges) > MAX_LIME_RANGES:
            raise MemoryFormatError(path, pos, "implausibly many LiME ranges")
        pos += 32 + length
    return ranges, diags


def lime_probe(path):
    src = FileSource(path)
    try:
        ranges, _ = _lime_ranges(src, path)
        return {"format": "lime", "ranges": len(ranges), "ram_bytes": sum(r[1] for r in ranges)}
    finally:
        src.close()


def lime_open(path, **_opts):
    """Open a LiME dump; each range maps to its recorded physical address.

    >>> with lime_open("guest.lime") as img:  # doctest: +SKIP
    ...     img.runs[0]
    (0, 655360)
    """
    src = FileSource(path)
    try:
        ranges, diags = _lime_ranges(src, path)
    except BaseException:
        src.close()
        raise
    segs = [
        {"gpa": start, "length": n, "runs": None, "read": (lambda base: lambda o, k: src.pread(base + o, k))(off)}
        for start, n, off in ranges
    ]
    return MemoryImage(
        format="lime", path=path, info={"ranges": len(ranges)}, segments=segs, diagnostics=diags, closers=[src.close]
    )
