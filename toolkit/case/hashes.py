"""The evidence hashes a case records, and its hash cache.

Every evidence file is hashed before and after analysis, and each hash is a
custody event. An audit may spare re-reading a file whose device, inode,
size and mtime match the case's hash cache (``derived/cache/evidence-hashes.json``);
the "after" hashes are always read from the bytes.

Example::

    before = hash_evidence(case_dir, {"/ev/mem.elf": {"format": "elf"}}, "before")
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import threading
from pathlib import Path

from toolkit.case import custody
from toolkit.case.store import atomic_write_bytes
from toolkit.hashing import sha256_file


def _no_progress(description, completed=None, total=None):
    pass


def stat_key(path: str) -> str:
    """A file's identity for the hash cache: device, inode, size, mtime."""
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def hash_cache_path(case_dir: Path) -> Path:
    return case_dir / "derived" / "cache" / "evidence-hashes.json"


def load_hash_cache(case_dir: Path) -> dict:
    """{resolved path: {"key": stat_key, "sha256": ...}} from the case's hash cache ({} if none)."""
    cache_file = hash_cache_path(case_dir)
    return json.loads(cache_file.read_text()) if cache_file.exists() else {}


def hash_evidence(
    case_dir: Path,
    files: dict[str, dict],
    phase: str,
    progress=_no_progress,
    *,
    io_slots: int = 1,
    use_cache: bool = False,
) -> dict[str, str]:
    """Hash every evidence file once and log each hash in custody; returns {path: sha256}.

    ``io_slots`` bounds how many files are read at once (a host's storage is
    shared). With ``use_cache`` (audits, phase "before" only) a file whose
    device, inode, size and mtime match the case's hash cache is not re-read;
    the "after" hashes are always read from the bytes.
    """
    cache_file = hash_cache_path(case_dir)
    cache = load_hash_cache(case_dir) if use_cache else {}
    total = sum(Path(p).stat().st_size for p in files)
    done, lock = 0, threading.Lock()

    def tick(n):
        nonlocal done
        with lock:
            done += n
            progress(f"hashing evidence ({phase})", done, total)

    def work(path):
        st = os.stat(path)
        key = stat_key(path)
        if use_cache and cache.get(path, {}).get("key") == key:
            tick(st.st_size)
            return path, cache[path]["sha256"], st.st_size, True, key
        return path, sha256_file(path, tick), st.st_size, False, key

    hashes = {}
    with cf.ThreadPoolExecutor(max_workers=max(1, io_slots)) as pool:
        for path, digest, size, cached, key in pool.map(work, list(files)):
            hashes[path] = digest
            cache[path] = {"key": key, "sha256": digest}
            custody.append_event(
                case_dir,
                action=f"evidence.hash.{phase}",
                path=path,
                sha256=digest,
                size=size,
                detail={"format": files[path].get("format"), "cached": cached},
            )
    atomic_write_bytes(cache_file, json.dumps(cache, indent=1).encode())
    return hashes
