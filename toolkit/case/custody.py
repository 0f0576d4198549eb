"""Hash-chained, append-only custody log (``custody.jsonl`` in a case).

Every evidence access and every derived artefact is one JSON line. Each line
carries the hash of the previous line (``prev``) and its own ``hash`` over its
canonical JSON without that field, so editing, deleting or reordering any line
breaks the chain at a point :func:`verify` names.

Example::

    append_event(case_dir, action="evidence.hash", path="/ev/mem.elf",
                 sha256="ab..", size=123)
    problems = verify(case_dir)   # [] when intact
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
from pathlib import Path

LOG_NAME = "custody.jsonl"
GENESIS = "0" * 64


def _line_hash(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _last_record(fh) -> dict | None:
    fh.seek(0, os.SEEK_END)
    end = fh.tell()
    if end == 0:
        return None
    # Read backwards just far enough to find the last complete line.
    block = min(end, 65536)
    while True:
        fh.seek(end - block)
        tail = fh.read(block)
        lines = tail.rstrip(b"\n").split(b"\n")
        if len(lines) > 1 or block == end:
            return json.loads(lines[-1])
        block = min(end, block * 4)


def append_event(
    case_dir: Path | str,
    *,
    action: str,
    path: str | None = None,
    sha256: str | None = None,
    size: int | None = None,
    detail: dict | None = None,
) -> dict:
    """Append one event; safe across processes (an exclusive lock guards the tail)."""
    log = Path(case_dir) / LOG_NAME
    with open(log, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            last = _last_record(fh)
            record = {
                "seq": (last["seq"] + 1) if last else 1,
                "ts": dt.datetime.now(dt.UTC).isoformat(),
                "action": action,
                "path": None if path is None else str(path),
                "sha256": sha256,
                "size": size,
                "detail": detail or {},
                "prev": last["hash"] if last else GENESIS,
            }
            record["hash"] = _line_hash(record)
            fh.seek(0, os.SEEK_END)
            fh.write((json.dumps(record, sort_keys=True, ensure_ascii=True) + "\n").encode())
            fh.flush()
            os.fsync(fh.fileno())
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    return record


def read_events(case_dir: Path | str) -> list[dict]:
    """All events in order (raises ValueError on a line that is not JSON)."""
    log = Path(case_dir) / LOG_NAME
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def verify(case_dir: Path | str) -> list[str]:
    """Walk the chain; return one message per problem (empty list: intact)."""
    return verify_file(Path(case_dir) / LOG_NAME)


def verify_file(log: Path) -> list[str]:
    """:func:`verify` for a log file by path (an acquisition's log a case keeps beside its own)."""
    log = Path(log)
    if not log.exists():
        return [f"{log}: no custody log"]
    problems = []
    prev = GENESIS
    expected_seq = 1
    for number, line in enumerate(log.read_text().splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            problems.append(f"line {number}: not valid JSON")
            prev = None
            continue
        if record.get("prev") != prev:
            problems.append(f"line {number}: chain broken (prev does not match line {number - 1}'s hash)")
        if record.get("hash") != _line_hash(record):
            problems.append(f"line {number}: content altered (hash mismatch)")
        if record.get("seq") != expected_seq:
            problems.append(f"line {number}: sequence {record.get('seq')} where {expected_seq} expected")
        expected_seq = (record.get("seq") or expected_seq) + 1
        prev = record.get("hash")
    return problems
