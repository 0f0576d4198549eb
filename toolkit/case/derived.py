"""Custody for derived artefacts: every file under a case's ``derived/`` is logged with its sha256.

Converted memory images, ISF copies, spooled network streams, decompressed
stream spills and the caches are written by engines, possibly in worker
processes. Rather than trusting every writer to remember a custody line,
:func:`record_derived` compares ``derived/`` with what custody last logged
for each file and logs the difference: ``derived.write`` for a new or changed
file (sha256, size, and the file's device/inode/size/mtime so an unchanged
file is not hashed again), ``derived.remove`` for one that is gone. Paths are
relative to the case, so a copied case still verifies.

Files still being written (``*.part``, ``*.tmp``), lock files and hidden
scratch directories (``.isf-build-*``: the temporary ELF a symbol build
needs, gone when it ends) are not artefacts and are skipped.

Example::

    record_derived(case_dir, reason="snapshot web01")   # [events written]
    derived_problems(case_dir)                          # [] when every logged file is as logged
"""

from __future__ import annotations

import os
from pathlib import Path

from toolkit.case import custody
from toolkit.hashing import sha256_file

DERIVED = "derived"
WRITE, REMOVE = "derived.write", "derived.remove"
SKIPPED_SUFFIXES = (".part", ".tmp", ".lock")


def _stat_key(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def derived_files(case_dir: Path) -> dict[str, Path]:
    """{path relative to the case: path} of every artefact file under derived/ (symlinks not followed)."""
    case_dir = Path(case_dir)
    found = {}
    for root, dirs, files in os.walk(case_dir / DERIVED):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # scratch directories of work in progress
        for name in files:
            path = Path(root) / name
            if name.endswith(SKIPPED_SUFFIXES) or path.is_symlink() or not path.is_file():
                continue
            found[path.relative_to(case_dir).as_posix()] = path
    return found


def logged_derived(events: list[dict]) -> dict[str, dict]:
    """{relative path: its last derived.write event} for files not removed since."""
    state: dict[str, dict] = {}
    for event in events:
        if event.get("action") == WRITE:
            state[event["path"]] = event
        elif event.get("action") == REMOVE:
            state.pop(event["path"], None)
    return state


def record_derived(case_dir: Path | str, *, reason: str = "") -> list[dict]:
    """Log every derived file that is new or changed since custody last saw it, and every one removed.

    ``reason`` (e.g. the snapshot just analysed) goes into each event's detail.
    Returns the events written.
    """
    case_dir = Path(case_dir)
    logged = logged_derived(custody.read_events(case_dir))
    events = []
    present = derived_files(case_dir)
    for rel, path in sorted(present.items()):
        try:
            st = path.stat()
            key = _stat_key(st)
            if (logged.get(rel) or {}).get("detail", {}).get("stat") == key:
                continue
            digest = sha256_file(path)
        except FileNotFoundError:  # removed while we looked: the next sweep logs it
            continue
        detail = {"stat": key, "reason": reason}
        events.append({"action": WRITE, "path": rel, "sha256": digest, "size": st.st_size, "detail": detail})
    for rel in sorted(set(logged) - set(present)):
        events.append({"action": REMOVE, "path": rel, "detail": {"reason": reason}})
    return custody.append_events(case_dir, events) if events else []


def derived_problems(case_dir: Path | str, events: list[dict], *, quick: bool = False) -> tuple[list[str], list[str]]:
    """(problems, notes) comparing derived/ with custody's last word on each file.

    A logged file that is missing or whose bytes differ is a problem (with
    ``quick`` only its size is compared); a file custody never logged is a note
    (a run that stopped before its sweep).
    """
    case_dir = Path(case_dir)
    logged = logged_derived(events)
    present = derived_files(case_dir)
    problems, notes = [], []
    for rel, event in sorted(logged.items()):
        path = present.get(rel)
        if path is None:
            problems.append(f"{rel}: derived file logged in custody (line {event['seq']}) is missing")
            continue
        size = path.stat().st_size
        if size != event.get("size") or (not quick and sha256_file(path) != event.get("sha256")):
            problems.append(f"{rel}: derived file differs from the one custody logged (line {event['seq']})")
    for rel in sorted(set(present) - set(logged)):
        notes.append(f"{rel}: derived file not in custody (written by a run that did not finish?)")
    return problems, notes
