"""Hash-chained, append-only custody log (``custody.jsonl`` in a case).

Every evidence access and every derived artefact is one JSON line. Each line
carries the hash of the previous line (``prev``) and its own ``hash`` over its
canonical JSON without that field, so editing, deleting or reordering any line
breaks the chain at a point :func:`verify` names.

The chain head (last ``seq`` and ``hash``) is also kept in ``case.json``,
rewritten atomically with every append: lines removed from the end of the log
leave a chain that still links, but no longer ends where ``case.json`` says.

A crash or a full disk can leave a torn last line. The next append moves the
torn bytes to ``custody.jsonl.torn-<time>``, truncates the log to its last
whole line and logs a ``custody.repair`` event naming them, so one bad write
never breaks the runs after it. If the log ends *before* the head case.json
records, lines were lost: the append logs a ``custody.gap`` event first, which
:func:`verify` reports for good.

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
import stat
from pathlib import Path

from toolkit.case.store import manifest_path, read_custody_head, set_custody_head
from toolkit.errors import CaseError

LOG_NAME = "custody.jsonl"
TORN_PREFIX = LOG_NAME + ".torn-"
GENESIS = "0" * 64
# Events that record a damaged log: a repair is a note (a crash happened, the chain is whole),
# a gap a problem (lines the chain head counted are gone).
REPAIR, GAP = "custody.repair", "custody.gap"


def _line_hash(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _parse(line: bytes) -> dict | None:
    """The record on one line, or None when the line is not a JSON object with a seq and hash."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if isinstance(record, dict) and isinstance(record.get("seq"), int) and isinstance(record.get("hash"), str):
        return record
    return None


def _tail(fh) -> tuple[dict | None, int, int]:
    """(last whole record, where the bytes after it start, file size).

    Reads backwards from the end. Bytes after the last line that parses as a
    record (no newline yet, NULs a crash left, a half-written line) are the
    torn tail; everything before that point is left to :func:`verify`.
    """
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    end = size
    block = 65536
    while end > 0:
        start = max(0, end - block)
        fh.seek(start)
        chunk = fh.read(end - start)
        cut = chunk.rfind(b"\n", 0, len(chunk) - 1 if chunk.endswith(b"\n") else len(chunk))
        if cut < 0 and start > 0:
            block *= 4  # one line longer than the block: read further back
            continue
        line_start = start + cut + 1 if cut >= 0 else 0
        line = chunk[line_start - start :]
        record = _parse(line) if line.endswith(b"\n") else None
        if record is not None:
            return record, end, size
        end = line_start  # this line is torn: look at the one before it
    return None, 0, size


def _quarantine(case_dir: Path, fh, keep: int, size: int) -> dict:
    """Move the log's bytes after ``keep`` to a torn-<time> file and truncate; what was moved."""
    fh.seek(keep)
    torn = fh.read(size - keep)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    target = Path(case_dir) / f"{TORN_PREFIX}{stamp}"
    with open(target, "xb") as out:
        out.write(torn)
        out.flush()
        os.fsync(out.fileno())
    fh.truncate(keep)
    fh.flush()
    os.fsync(fh.fileno())
    return {"quarantined": target.name, "bytes": len(torn), "sha256": hashlib.sha256(torn).hexdigest()}


def _open_log(case_dir: Path, *, create: bool = False, write: bool = True):
    """The case's log opened safely (see :func:`_open_path`)."""
    return _open_path(Path(case_dir) / LOG_NAME, create=create, write=write)


def _open_path(path: Path, *, create: bool = False, write: bool = True):
    """The log opened (for update unless ``write`` is False), never through a symbolic link and only
    as a regular file: a repair truncates what it opens, and a case copied from elsewhere could hold
    a custody.jsonl linking to any file on this host, or a FIFO that blocks whoever reads it."""
    flags = (os.O_RDWR if write else os.O_RDONLY) | os.O_NOFOLLOW | os.O_NONBLOCK | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if path.is_symlink():
            raise CaseError(f"{path}: is a symbolic link; a custody log is a file of the case") from None
        raise CaseError(f"{path}: cannot open the custody log ({exc.strerror or exc})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CaseError(f"{path}: is not a regular file; a custody log is a file of the case")
    return os.fdopen(fd, "r+b" if write else "rb")


def _write(fh, last: dict | None, action: str, path=None, sha256=None, size=None, detail=None) -> dict:
    """Write one record after ``last`` (the caller fsyncs)."""
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
    return record


def _repair(case_dir: Path, fh) -> tuple[dict | None, list[dict]]:
    """Quarantine a torn tail and log a gap below case.json's head; (last record, events written)."""
    last, keep, size = _tail(fh)
    ended = _head_of(last) or {"seq": 0, "hash": GENESIS}  # where the log ended before any repair
    written = []
    if keep < size:
        moved = _quarantine(case_dir, fh, keep, size)
        why = "a write that did not finish (a crash or a full disk)"
        last = _write(fh, last, REPAIR, None, moved["sha256"], moved["bytes"], {**moved, "why": why})
        written.append(last)
    head = read_custody_head(case_dir)
    # Behind the head is normal after a crash between the two writes; ahead of it, or at it with
    # another line, means lines the head counted are gone.
    if head and (
        head.get("seq", 0) > ended["seq"] or (head.get("seq") == ended["seq"] and head.get("hash") != ended["hash"])
    ):
        why = "lines the chain head counted are missing or were replaced"
        detail = {"recorded_head": head, "log_ended_at": ended["seq"], "why": why}
        last = _write(fh, last, GAP, None, None, None, detail)
        written.append(last)
    if written:
        fh.flush()
        os.fsync(fh.fileno())
    return last, written


def append_event(
    case_dir: Path | str,
    *,
    action: str,
    path: str | None = None,
    sha256: str | None = None,
    size: int | None = None,
    detail: dict | None = None,
) -> dict:
    """Append one event and move case.json's chain head to it; safe across processes.

    An exclusive lock guards the tail. A torn last line is quarantined first
    (a ``custody.repair`` event), lines missing below the recorded head are
    logged (``custody.gap``); see the module doc.
    """
    event = {"action": action, "path": path, "sha256": sha256, "size": size, "detail": detail}
    return append_events(case_dir, [event])[0]


def append_events(case_dir: Path | str, events: list[dict]) -> list[dict]:
    """Append several events (dicts of :func:`append_event`'s arguments) under one lock, one fsync
    and one head update: thousands of spooled streams cost one case.json write, not thousands.

    Example: ``append_events(case, [{"action": "derived.write", "path": "derived/a", "sha256": "..."}])``
    """
    case_dir = Path(case_dir)
    records = []
    with _open_log(case_dir, create=True) as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            last, _ = _repair(case_dir, fh)
            for event in events:
                last = _write(fh, last, **event)
                records.append(last)
            fh.flush()
            os.fsync(fh.fileno())
            if records and manifest_path(case_dir).is_file():
                set_custody_head(case_dir, _head_of(last))
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    return records


def repair_torn_tail(case_dir: Path | str) -> list[dict]:
    """Quarantine a torn tail (and log a gap) now, without another event; the events written.

    The run path calls it first, so a repair is reported at the start of the
    run that made it. Example: ``[e["detail"]["quarantined"] for e in repair_torn_tail(case)]``.
    """
    case_dir = Path(case_dir)
    log = case_dir / LOG_NAME
    if not log.exists():
        return []
    with _open_log(case_dir) as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            last, written = _repair(case_dir, fh)
            if written and manifest_path(case_dir).is_file():
                set_custody_head(case_dir, _head_of(last))
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    return written


def read_events(case_dir: Path | str) -> list[dict]:
    """Every whole record in order; a torn tail (see the module doc) is left out.

    Raises ValueError on a line that is not JSON in the middle of the log:
    that is damage :func:`verify` reports, not a crash.
    """
    log = Path(case_dir) / LOG_NAME
    if not log.exists():
        return []
    with _open_log(case_dir, write=False) as fh:
        _last, keep, _size = _tail(fh)
        fh.seek(0)
        body = fh.read(keep)
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def verify_log(case_dir: Path | str) -> dict:
    """Walk the chain and compare its end with case.json's head.

    Returns {"problems": [...], "notes": [...], "events": n, "head": {seq, hash} or None}:
    problems (altered or missing lines, a gap, a head that does not match)
    fail verification; notes (a torn tail, earlier repairs) do not.

    Example: ``verify_log("case")["problems"]``  ->  ``[]``
    """
    case_dir = Path(case_dir)
    log = case_dir / LOG_NAME
    if not log.exists():
        return {"problems": [f"{log}: no custody log"], "notes": [], "events": 0, "head": None}
    problems, notes = [], []
    with _open_log(case_dir, write=False) as fh:
        _last, keep, size = _tail(fh)
        fh.seek(0)
        body = fh.read(keep)
    if keep < size:
        notes.append(
            f"{size - keep} bytes after the last whole line are a torn write (a crash or a full disk); "
            f"the next run moves them to {TORN_PREFIX}<time>"
        )
    walked, walk_notes, count, last = _walk_chain(body)
    problems += walked
    notes += walk_notes
    problems += _head_problems(case_dir, last)
    return {"problems": problems, "notes": notes, "events": count, "head": _head_of(last)}


def _walk_chain(body: bytes) -> tuple[list[str], list[str], int, dict | None]:
    """Check every line's hash, link and sequence: (problems, notes, lines, last record)."""
    problems, notes = [], []
    prev, expected_seq, last, count = GENESIS, 1, None, 0
    for number, line in enumerate(body.splitlines(), start=1):
        record = _parse(line)
        if record is None:
            problems.append(f"line {number}: not valid JSON")
            prev = None
            continue
        count += 1
        if record.get("prev") != prev:
            problems.append(f"line {number}: chain broken (prev does not match line {number - 1}'s hash)")
        if record.get("hash") != _line_hash(record):
            problems.append(f"line {number}: content altered (hash mismatch)")
        if record.get("seq") != expected_seq:
            problems.append(f"line {number}: sequence {record.get('seq')} where {expected_seq} expected")
        if record.get("action") == REPAIR:
            detail = record.get("detail") or {}
            notes.append(
                f"line {number}: a torn write of {detail.get('bytes')} bytes was moved to {detail.get('quarantined')}"
            )
        elif record.get("action") == GAP:
            detail = record.get("detail") or {}
            head = detail.get("recorded_head") or {}
            problems.append(
                f"line {number}: lines were missing from the log before this run: case.json's chain head was "
                f"line {head.get('seq')}, the log ended at line {detail.get('log_ended_at')}"
            )
        expected_seq = record["seq"] + 1  # _parse admits only records with an int seq
        prev, last = record.get("hash"), record
    return problems, notes, count, last


def verify_file(log: Path) -> list[str]:
    """The chain of a log file by path (an acquisition's log a case keeps beside its own): one message
    per problem. It has no head in case.json to compare with; its end is checked by the adoption."""
    log = Path(log)
    if not log.exists():
        return [f"{log}: no custody log"]
    with _open_path(log, write=False) as fh:
        body = fh.read()
    return _walk_chain(body)[0]


def _head_of(record: dict | None) -> dict | None:
    return {"seq": record["seq"], "hash": record["hash"]} if record else None


def _head_problems(case_dir: Path, last: dict | None) -> list[str]:
    if not manifest_path(case_dir).is_file():
        return []
    head = read_custody_head(case_dir)
    ends = last["seq"] if last else 0
    if not head:
        return ["case.json records no custody chain head: lines removed from the end could not be detected"]
    if head.get("seq") == ends and head.get("hash") == (last or {}).get("hash"):
        return []
    if head.get("seq", 0) > ends:
        return [
            f"lines removed from the end of the log: case.json's chain head is line {head.get('seq')}, "
            f"the log ends at line {ends}"
        ]
    if head.get("seq", 0) < ends:
        return [
            f"the log goes on past case.json's chain head (line {head.get('seq')}) to line {ends}: "
            "lines written without updating case.json (a run that crashed there) or appended since"
        ]
    return [f"line {ends} is not the line case.json's chain head records (its hash differs)"]


def verify(case_dir: Path | str) -> list[str]:
    """Walk the chain; return one message per problem (empty list: intact). See :func:`verify_log`."""
    return verify_log(case_dir)["problems"]


def chain_head(case_dir: Path | str) -> dict | None:
    """{seq, hash} of the log's last whole line (None for an empty log): what a seal signs."""
    log = Path(case_dir) / LOG_NAME
    if not log.exists():
        return None
    with _open_log(case_dir, write=False) as fh:
        return _head_of(_tail(fh)[0])
