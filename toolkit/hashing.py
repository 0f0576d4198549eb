"""The one way snapscope hashes bytes: sha256, streamed, never a whole file in RAM.

Example::

    sha256_file("memory.elf")                     # evidence, ISFs, converted images
    sha256_copy(fifo.read, out.write)             # acquisition: hashed as it is written
    with fs.path("/usr/bin/ls").open("rb") as fh:
        sha256_stream(fh, max_size=64 << 20)      # files inside a disk image
"""

from __future__ import annotations

import hashlib
import mmap
import os
from pathlib import Path

CHUNK = 4 * 1024 * 1024


def sha256_file(path: Path | str, progress=None) -> str:
    """sha256 hex of a file, read with preadv into one page-aligned 4 MiB buffer;
    ``progress(n_bytes)`` after each read.

    Example: ``sha256_file("memory.elf")``.
    """
    digest = hashlib.sha256()
    buf = mmap.mmap(-1, CHUNK)
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY)
    try:
        offset = 0
        while n := os.preadv(fd, [view], offset):
            digest.update(view[:n])
            offset += n
            if progress:
                progress(n)
    finally:
        os.close(fd)
        view.release()
        buf.close()
    return digest.hexdigest()


def sha256_stream(fh, max_size: int | None = None) -> str | None:
    """sha256 hex of an open binary file object, or None when it holds more than ``max_size`` bytes."""
    digests = stream_digests(fh, max_size, ("sha256",))
    return digests and digests["sha256"]


def stream_digests(fh, max_size: int | None = None, algorithms=("sha256", "md5")) -> dict[str, str] | None:
    """Several digests of an open binary file object in one read, or None past ``max_size`` bytes.

    md5 is here only to compare with what package databases record (dpkg's md5sums); sha256
    is the identity snapscope uses everywhere else.

    Example: ``stream_digests(fh)`` -> ``{"sha256": "...", "md5": "..."}``.
    """
    digests = {name: hashlib.new(name) for name in algorithms}
    total = 0
    while chunk := fh.read(1 << 20):
        total += len(chunk)
        if max_size is not None and total > max_size:
            return None
        for digest in digests.values():
            digest.update(chunk)
    return {name: digest.hexdigest() for name, digest in digests.items()}


def sha256_copy(read, write, *, chunk: int = CHUNK, progress=None) -> tuple[str, int]:
    """Copy a stream while hashing it: ``read(n)`` until it returns b"", every chunk
    handed to ``write``; returns (sha256 hex, bytes copied), the hash of exactly
    the bytes written. ``progress(n_bytes)`` after each chunk.

    Example: ``with open(src, "rb") as s, open(dst, "wb") as d: sha256_copy(s.read, d.write)``
    """
    digest = hashlib.sha256()
    total = 0
    while data := read(chunk):
        write(data)
        digest.update(data)
        total += len(data)
        if progress:
            progress(len(data))
    return digest.hexdigest(), total
