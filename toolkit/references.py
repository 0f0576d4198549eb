"""Finding the files that evidence names: backing files, disks of a domain XML, VMDK extents.

A name inside evidence comes from a hostile file and often records a path on
another host (``/var/lib/libvirt/images/base.qcow2``). It is only ever looked
up as a path, in a fixed order that prefers what was shipped with the evidence
over the analyst's own machine; whatever is found is identified by content
like any input.

Example::

    >>> resolve("/var/lib/libvirt/images/base.qcow2", Path("/cases/web01"))   # doctest: +SKIP
    PosixPath('/cases/web01/base.qcow2')
"""

from __future__ import annotations

import os
from pathlib import Path


def resolve_reference(recorded: str, referrer_dir: Path, search_paths=()) -> tuple[Path | None, str, list[str]]:
    """Find the file a recorded (often absolute, host-side) path means on this machine.

    Order, evidence first: the recorded path relative to the referring file;
    its base name beside the referring file; each search path (the recorded
    relative path, then the base name); last, the absolute path as recorded
    (it may be an unrelated file of the analyst's own host, so it loses to
    anything shipped with the evidence). Returns (path or None, how, tried).

    >>> resolve_reference("/var/lib/libvirt/images/base.qcow2", Path("case"), ["/mnt"])  # doctest: +SKIP
    (PosixPath('case/base.qcow2'), 'basename-beside', [...])
    """
    rec = Path(recorded)
    candidates: list[tuple[Path, str]] = []
    if not rec.is_absolute():
        candidates.append((referrer_dir / rec, "relative"))
    candidates.append((referrer_dir / rec.name, "basename-beside"))
    for sp in search_paths:
        sp = Path(sp)
        if not rec.is_absolute():
            candidates.append((sp / rec, f"search-path:{sp}"))
        candidates.append((sp / rec.name, f"search-path:{sp}"))
    if rec.is_absolute():
        candidates.append((rec, "as-recorded"))
    tried = []
    for cand, how in candidates:
        tried.append(str(cand))
        if cand.is_file():
            return cand, how, tried
    return None, "missing", tried


def resolve(ref: str | None, base: Path, search_paths=()) -> Path | None:
    """The file evidence names as ``ref`` (see :func:`resolve_reference`), or None."""
    if not ref or "\0" in ref:
        return None
    found, _how, _tried = resolve_reference(ref, base, search_paths)
    return Path(os.path.abspath(found)) if found is not None else None
