"""``case verify`` as a library call: custody chain and head, evidence re-hashed, derived files, the seal.

Checks, in order: the custody chain links and ends where case.json's head
says (lines removed from the end, altered or replaced lines); every evidence
file in case.json is re-hashed and compared with its recorded sha256
(``quick`` skips this, the long part); an evidence hash that changed between
before and after an analysis; every derived file against the custody line
that logged it; with a public key, the seal (see toolkit.case.seal).

A copy received from someone else seldom comes with the evidence: with a
public key, an evidence file absent here is a note, not a failure.

Example::

    report = verify_case(Path("case"))
    report["problems"]      # [] when everything verifies
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from toolkit.case import custody
from toolkit.case.adopt import verify_adopted
from toolkit.case.derived import derived_problems
from toolkit.case.seal import check_seal, read_seal
from toolkit.case.store import load_manifest
from toolkit.hashing import sha256_file


def _evidence_problems(manifest: dict, *, received: bool) -> tuple[list[str], list[str], int]:
    problems, notes, checked = [], [], 0
    for path, entry in sorted((manifest.get("evidence") or {}).items()):
        try:
            st = os.stat(path)
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            (notes if received else problems).append(f"{path}: evidence file not found here; not re-hashed")
            continue
        # A copied case.json names paths on this host: a size that differs settles it without reading
        # a byte (a crafted entry naming a huge or endless file costs nothing).
        if isinstance(entry.get("size"), int) and st.st_size != entry["size"]:
            problems.append(f"{path}: evidence changed since it was analysed (size {entry['size']} -> {st.st_size})")
            continue
        digest = sha256_file(path)
        checked += 1
        if digest != entry.get("sha256"):
            recorded = entry.get("sha256")
            problems.append(f"{path}: evidence changed since it was analysed (sha256 {recorded} -> {digest})")
    return problems, notes, checked


def _before_after(events: list[dict]) -> list[str]:
    before = {e["path"]: e["sha256"] for e in events if e.get("action") == "evidence.hash.before"}
    after = {e["path"]: e["sha256"] for e in events if e.get("action") == "evidence.hash.after"}
    return [
        f"{path}: evidence hash changed during analysis"
        for path, digest in after.items()
        if before.get(path) not in (None, digest)
    ]


def verify_case(case_dir: Path, *, quick: bool = False, public_key: Path | None = None) -> dict:
    """Everything ``snapscope case verify`` checks; {"problems", "notes", "events", "evidence_checked", "seal"}.

    ``quick`` skips re-hashing evidence and derived files (sizes are still
    compared); ``public_key`` also checks the seal against that key.
    """
    case_dir = Path(case_dir)
    manifest = load_manifest(case_dir)
    log = custody.verify_log(case_dir)
    problems, notes = list(log["problems"]), list(log["notes"])
    problems += verify_adopted(case_dir)  # the acquisitions' own logs the case continues
    try:
        events = custody.read_events(case_dir)
    except ValueError:
        events = []  # a line in the middle is not JSON: the chain walk above named it
    problems += _before_after(events)
    checked = 0
    if not quick:
        found, missing, checked = _evidence_problems(manifest, received=public_key is not None)
        problems += found
        notes += missing
    found, unlogged = derived_problems(case_dir, events, quick=quick)
    problems += found
    notes += unlogged
    seal = None
    if public_key is not None:
        seal = check_seal(case_dir, public_key)
        problems += seal["problems"]
    elif read_seal(case_dir) is not None:
        notes.append("the case is sealed: pass --pubkey to check the seal")
    return {"problems": problems, "notes": notes, "events": log["events"], "evidence_checked": checked, "seal": seal}
