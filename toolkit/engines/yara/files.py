"""YARA over files (disk images' files, plain paths) and reassembled network streams.

Files are read through their openers in windows like memory (``scan.scan_range``);
a file's rows are cached by (content sha256, rule set, window sizes) so the
same bytes on another clone or the base image are not scanned twice.

Example::

    rows, diags = scan_files(rules, [{"path": "/usr/bin/x", "size": 4096, "sha256": "ab..", "open": opener}],
                             cache_dir=Path("case/derived/cache"))
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from toolkit.engines.yara.scan import CHUNK_SIZE, MATCH_DATA_CAP, MAX_FILE_SIZE, OVERLAP, scan_range
from toolkit.schemas import diagnostic


def _file_source(item):
    """(display path, size, opener) for a path or a {path, size?, open?} dict."""
    if isinstance(item, dict):
        path = str(item["path"])
        opener = item.get("open") or (lambda: open(path, "rb"))
        size = item.get("size")
        return path, size, opener
    path = str(item)
    return path, None, lambda: open(path, "rb")


def _scan_file(rules: dict, item, *, max_file_size, chunk_size, overlap, target):
    """(rows, diagnostics, sha256 of the bytes scanned or None when the file was not scanned)."""
    path, size, opener = _file_source(item)
    diagnostics: list = []
    try:
        fh = opener()
        try:
            if size is None:
                size = fh.seek(0, 2)
            if max_file_size is not None and size > max_file_size:
                diagnostics.append(
                    diagnostic(
                        "warning",
                        f"file of {size} bytes not scanned",
                        path,
                        f"larger than max_file_size ({max_file_size}); raise it to scan",
                    )
                )
                return [], diagnostics, None
            digest = hashlib.sha256()

            def read(offset, length):
                fh.seek(offset)
                return fh.read(length)

            where = {"target": target, "path": path}
            rows = list(
                scan_range(
                    rules,
                    read,
                    0,
                    size,
                    where,
                    diagnostics,
                    chunk_size=chunk_size,
                    overlap=overlap,
                    on_owned=digest.update,
                )
            )
        finally:
            fh.close()
    except OSError as exc:
        diagnostics.append(
            diagnostic("warning", "file not scanned", path, f"{type(exc).__name__}: {exc.strerror or exc}")
        )
        return [], diagnostics, None
    sha = digest.hexdigest()
    for row in rows:
        row["sha256"] = sha
    return rows, diagnostics, sha


def scan_file(
    rules: dict,
    item,
    *,
    max_file_size: int | None = MAX_FILE_SIZE,
    chunk_size: int = CHUNK_SIZE,
    overlap: int = OVERLAP,
    target: str = "file",
):
    """Scan one file (a path, or ``{"path", "size", "open"}`` for files inside a disk image).

    Returns ``(match_rows, diagnostic_rows)``; rows carry the file's sha256,
    computed in the same pass. Files over ``max_file_size`` (None: no limit)
    are skipped with a diagnostic. Example: ``scan_file(rules, "/tmp/x.elf")``
    """
    rows, diagnostics, _ = _scan_file(
        rules, item, max_file_size=max_file_size, chunk_size=chunk_size, overlap=overlap, target=target
    )
    return rows, diagnostics


# Per-content cache of file matches. Linked clones hold the same files as their
# base, so the same bytes under the same rules are scanned once per cache_dir.
# What decides a file's rows: its bytes (sha256), the compiled rule set (its
# key covers engine versions and every rule file's content) and the windowing.
FILE_CACHE_VERSION = 1


def file_cache_dir(cache_dir, rules: dict, chunk_size: int, overlap: int) -> Path | None:
    """``<cache_dir>/yara-files/<key>`` for this rule set and windowing, or None (no cache)."""
    if not cache_dir or not rules.get("key"):
        return None
    blob = json.dumps(
        {
            "v": FILE_CACHE_VERSION,
            "rules": rules["key"],
            "chunk": chunk_size,
            "overlap": overlap,
            "cap": MATCH_DATA_CAP,
        },
        sort_keys=True,
    )
    return Path(cache_dir).expanduser() / "yara-files" / hashlib.sha256(blob.encode()).hexdigest()[:32]


def _cached_rows(folder: Path, sha: str, path: str, target: str) -> list[dict] | None:
    try:
        stored = json.loads((folder / sha[:2] / f"{sha}.json").read_text())
    except (OSError, ValueError):
        return None  # absent or broken: scan
    return [
        {
            "target": target,
            "path": path,
            **{k: (bytes.fromhex(v) if k == "matched" else v) for k, v in r.items()},
            "sha256": sha,
        }
        for r in stored
    ]


def _store_rows(folder: Path, sha: str, rows: list[dict]) -> None:
    dest = folder / sha[:2] / f"{sha}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    keep = [
        {k: (v.hex() if k == "matched" else v) for k, v in r.items() if k not in ("target", "path", "sha256")}
        for r in rows
    ]
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(keep))
    os.replace(tmp, dest)  # atomic: parallel audit workers share the cache


def scan_files(
    rules: dict,
    items,
    *,
    cache_dir=None,
    max_file_size: int | None = MAX_FILE_SIZE,
    chunk_size: int = CHUNK_SIZE,
    overlap: int = OVERLAP,
    target: str = "file",
):
    """Scan many files; see :func:`scan_file`. Example: ``scan_files(rules, Path("x").rglob("*"))``

    With ``cache_dir``, items that state their content (``{"path", "size",
    "sha256", "open"}``, as the disk engine offers them) reuse the rows of an
    earlier scan of the same bytes with the same rules instead of being read.
    """
    rows, diagnostics = [], []
    folder = file_cache_dir(cache_dir, rules, chunk_size, overlap)
    hits = 0
    for item in items:
        if not isinstance(item, dict) and not Path(item).is_file():
            continue
        known = item.get("sha256") if isinstance(item, dict) else None
        size = item.get("size") if isinstance(item, dict) else None
        if folder is not None and known and size is not None and (max_file_size is None or size <= max_file_size):
            cached = _cached_rows(folder, known, str(item["path"]), target)
            if cached is not None:
                rows += cached
                hits += 1
                continue
        r, d, sha = _scan_file(
            rules, item, max_file_size=max_file_size, chunk_size=chunk_size, overlap=overlap, target=target
        )
        if folder is not None and sha is not None and not d:  # only complete, clean scans are reusable
            _store_rows(folder, sha, r)
        rows += r
        diagnostics += d
    if hits:
        diagnostics.append(
            diagnostic(
                "info",
                f"{hits} files not rescanned",
                str(folder),
                "same content (sha256) already scanned with the same rules: matches reused",
            )
        )
    return rows, diagnostics


STREAM_KEYS = ("flow_id", "src_ip", "src_port", "dst_ip", "dst_port", "proto", "direction")


def scan_streams(rules: dict, streams, *, chunk_size: int = CHUNK_SIZE, overlap: int = OVERLAP):
    """Scan reassembled payload streams spooled to files by the network engine.

    Each stream is ``{"path", flow_id, src_ip, src_port, dst_ip, dst_port, proto,
    direction}`` (the flow's 5-tuple with the initiator as src; ``direction``
    says which side sent these bytes). Offsets are stream offsets.
    Example: ``scan_streams(rules, iter_streams(tables["network/flows"]))``
    """
    rows, diagnostics = [], []
    for stream in streams:
        r, d = scan_file(
            rules, stream["path"], max_file_size=None, chunk_size=chunk_size, overlap=overlap, target="stream"
        )
        for row in r:
            row.update({k: stream.get(k) for k in STREAM_KEYS})
            row["path"] = None  # the spool file is ours, not evidence: keep `path` for guest files
            row["sha256"] = None
        rows += r
        diagnostics += d
    return rows, diagnostics
