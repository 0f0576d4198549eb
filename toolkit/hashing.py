"""Streaming file hashes (never a whole file in RAM)."""
from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 4 * 1024 * 1024


def sha256_file(path: Path | str, progress=None) -> str:
    """sha256 hex of a file, read in 4 MiB chunks; ``progress(n_bytes)`` after each.

    Example: ``sha256_file("memory.elf")``.
    """
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            if progress:
                progress(len(chunk))
    return digest.hexdigest()
